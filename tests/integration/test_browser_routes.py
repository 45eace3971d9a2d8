"""Direct-to-VM routing with control-plane fallback ("browser" routes,
DESIGN.md section 7, issue 13).

A fake control plane and fake VMs run in this test process (threaded
http.server servers). The control plane answers POST /browsers with the JSON
the test sent it (so a test decides what the gateway may learn), answers
scripted responses for (method, path) pairs, and echoes anything else as
JSON. A VM answers /s/{session}/... from a per-session script, echoes
otherwise, and speaks WebSocket (an echo) on /s/{session}/cdp. Both record
every request they see (method, target, headers), so tests assert what did
and what did not reach each of them.
"""

import hashlib
import json
import os
import signal
import struct
import tempfile
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import pytest

import gw
import wsraw

# ============================================================ fake servers

class Fake:
    """One threaded HTTP/1.1 server recording requests; `script` maps
    (method, path) or a session id to a response (status, headers, body,
    chunked) or a callable returning one."""

    def __init__(self, name):
        self.name = name
        self.lock = threading.Lock()
        self.seen = []
        self.script = {}
        fake = self

        class H(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def handle_any(self):
                n = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(n) if n else b""
                rec = {"method": self.command, "target": self.path, "headers": dict(self.headers.items()),
                       "hdr_names": [k.lower() for k in self.headers.keys()], "body": body}
                with fake.lock:
                    fake.seen.append(rec)
                if self.headers.get("Upgrade", "").lower() == "websocket":
                    return fake.websocket(self, rec)
                status, headers, out, chunked = fake.respond(rec)
                self.send_response_only(status)
                for k, v in headers:
                    self.send_header(k, v)
                if chunked == "eof":
                    self.send_header("Connection", "close")
                    self.end_headers()
                    self.wfile.write(out)
                    self.wfile.flush()
                    self.close_connection = True
                    return
                if chunked:
                    self.send_header("Transfer-Encoding", "chunked")
                    self.end_headers()
                    for i in range(0, len(out), 7000):
                        piece = out[i:i + 7000]
                        self.wfile.write(b"%x\r\n" % len(piece) + piece + b"\r\n")
                    self.wfile.write(b"0\r\n\r\n")
                else:
                    self.send_header("Content-Length", str(len(out)))
                    self.end_headers()
                    self.wfile.write(out)
                self.wfile.flush()

            do_GET = do_POST = do_DELETE = do_PUT = do_HEAD = handle_any

        self.srv = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.srv.daemon_threads = True
        self.port = self.srv.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self.srv.serve_forever, daemon=True)
        self.thread.start()

    def respond(self, rec):
        raise NotImplementedError

    def websocket(self, h, rec):
        h.send_response_only(404)
        h.send_header("Content-Length", "0")
        h.end_headers()

    def requests(self, pred=lambda r: True):
        with self.lock:
            return [r for r in self.seen if pred(r)]

    def stop(self):
        self.srv.shutdown()
        self.srv.server_close()


def jresp(status, obj, chunked=False, ctype="application/json"):
    return status, [("Content-Type", ctype)], json.dumps(obj).encode(), chunked


class ControlPlane(Fake):
    def respond(self, rec):
        path = urlsplit(rec["target"]).path
        s = self.script.get((rec["method"], path))
        if callable(s):
            return s(rec)
        if s is not None:
            return s
        if rec["method"] == "POST" and path.count("/") == 1:  # /browsers, /small, ...
            # The test's body is the answer the gateway may learn from.
            return 201, [("Content-Type", "application/json")], rec["body"], False
        return jresp(200, {"from": "control_plane", "method": rec["method"], "target": rec["target"],
                           "authorization": rec["headers"].get("Authorization")})


class VM(Fake):
    def respond(self, rec):
        parts = urlsplit(rec["target"]).path.split("/")
        sid = parts[2] if len(parts) > 2 and parts[1] == "s" else None
        s = self.script.get(sid)
        if callable(s):
            return s(rec)
        if s is not None:
            return s
        return jresp(200, {"from": "vm", "method": rec["method"], "target": rec["target"]})

    def websocket(self, h, rec):
        key = h.headers["Sec-WebSocket-Key"]
        acc = wsraw.accept_key(key)
        h.wfile.write(("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                       f"Sec-WebSocket-Accept: {acc}\r\n\r\n").encode())
        h.wfile.flush()
        h.close_connection = True
        r = h.rfile
        while True:
            hd = r.read(2)
            if len(hd) < 2:
                return
            op, n = hd[0] & 0x0F, hd[1] & 0x7F
            if n == 126:
                n = struct.unpack("!H", r.read(2))[0]
            elif n == 127:
                n = struct.unpack("!Q", r.read(8))[0]
            mask = r.read(4) if hd[1] & 0x80 else b"\0\0\0\0"
            data = bytes(b ^ mask[i % 4] for i, b in enumerate(r.read(n)))
            if op == 8:
                h.wfile.write(b"\x88" + bytes([len(data)]) + data)
                h.wfile.flush()
                return
            if op in (1, 2):
                reply = b"vm:" + data
                h.wfile.write(bytes([0x80 | op]) + (bytes([len(reply)]) if len(reply) < 126
                                                    else b"\x7e" + struct.pack("!H", len(reply))) + reply)
                h.wfile.flush()


# ============================================================ fixtures

@pytest.fixture(scope="module")
def env():
    cp, vm = ControlPlane("cp"), VM("vm")
    d = tempfile.mkdtemp(prefix="wsgate-browser-")
    routes = [
        {"path": "/browsers", "kind": "browser", "control_plane": cp.url,
         "subresources": ["cdp", "telemetry", "files"]},
        {"path": "/small", "kind": "browser", "control_plane": cp.url, "subresources": ["telemetry"],
         "cache_size": 2},
        {"path": "/off", "kind": "browser", "control_plane": cp.url, "subresources": []},
        {"path": "/custom", "kind": "browser", "control_plane": cp.url, "subresources": ["logs", "telemetry"],
         "fallback": [{"subresource": "logs", "suffix": ""}]},
    ]
    path = gw.write_routes(os.path.join(d, "routes.json"), routes)
    # Several workers: a route learned on one serves connections on all.
    g = gw.Gateway({"GATEWAY_ROUTES_FILE": path, "GATEWAY_LOG_LEVEL": "debug", "GATEWAY_WORKERS": "4"})
    yield {"g": g, "cp": cp, "vm": vm, "dir": d}
    g.stop()
    problems = g.check_exit("gateway")
    cp.stop()
    vm.stop()
    os.unlink(path)
    os.rmdir(d)
    assert not problems, "\n".join(problems)


def sid():
    return "s" + uuid.uuid4().hex[:12]


def call(g, method, path, headers=None, body=b""):
    h = {"Authorization": "Bearer user-token"}
    h.update(headers or {})
    return wsraw.http_request(g.port, method, path, headers=h, body=body, timeout=10.0)


def learn(e, s, prefix="/browsers", jwt=None, base=None, answer=None):
    """Creates session s at the control plane through the gateway; the
    answer (what the gateway learns from) is `answer` or a flat route."""
    jwt = jwt or "jwt-" + s
    base = base or f"{e['vm'].url}/s/{s}"
    answer = answer if answer is not None else {"session_id": s, "base_url": base, "jwt": jwt}
    r = call(e["g"], "POST", prefix, headers={"Content-Type": "application/json"},
             body=json.dumps(answer).encode())
    assert r.status == 201, r
    assert json.loads(r.body) == answer
    return jwt


def vm_reqs(e, s):
    return e["vm"].requests(lambda r: r["target"].startswith(f"/s/{s}/"))


def cp_reqs(e, s, prefix="/browsers"):
    return e["cp"].requests(lambda r: r["target"].startswith(f"{prefix}/{s}"))


def qs(rec):
    return parse_qs(urlsplit(rec["target"]).query, keep_blank_values=True)


def gone_eof():
    """browser_gone without Content-Length: the VM closes after the body."""
    return 404, [("Content-Type", "application/json")], b'{"code": "browser_gone"}', "eof"


def gone(chunked=False):
    return jresp(404, {"code": "browser_gone", "message": "the browser ended"}, chunked=chunked)


def req_metric(e, via, reason, route="/browsers"):
    return e["g"].metric("wsgate_browser_requests_total", route=route, via=via, reason=reason)


def log_for(e, corr):
    lines = gw.wait_until(lambda: [l for l in e["g"].logs() if l.get("msg") == "browser request"
                                   and l.get("correlation_id") == corr], timeout=5, what="browser request line")
    return lines[-1]


# ============================================================ positive path

def test_direct_route_jwt_added_authorization_removed(env):
    e, s = env, sid()
    jwt = learn(e, s)
    r = call(e["g"], "GET", f"/browsers/{s}/files/a/b.txt?x=1")
    assert r.status == 200, r
    body = json.loads(r.body)
    assert body["from"] == "vm"
    [rec] = vm_reqs(e, s)
    assert urlsplit(rec["target"]).path == f"/s/{s}/files/a/b.txt"
    assert qs(rec) == {"x": ["1"], "jwt": [jwt]}
    assert "authorization" not in rec["hdr_names"]
    assert cp_reqs(e, s) == []
    line = log_for(e, r.header("X-Correlation-ID"))
    assert line["route_taken"] == "direct" and line["session_id"] == s and line["status"] == 200


def test_route_shared_by_every_worker(env):
    """Learned once, on whichever worker took that connection; 24 fresh
    connections (spread over the 4 workers by SO_REUSEPORT) all go direct."""
    e, s = env, sid()
    learn(e, s)
    for _ in range(24):
        r = call(e["g"], "GET", f"/browsers/{s}/files/n")
        assert json.loads(r.body)["from"] == "vm"
    assert len(vm_reqs(e, s)) == 24 and cp_reqs(e, s) == []


def test_fallback_browser_gone(env):
    e, s = env, sid()
    learn(e, s)
    e["vm"].script[s] = gone()
    before = req_metric(e, "fallback", "browser_gone")
    ev = e["g"].metric("wsgate_browser_route_evictions_total", route="/browsers", reason="browser_gone")
    size = e["g"].metric("wsgate_browser_routes", route="/browsers")
    r = call(e["g"], "GET", f"/browsers/{s}/telemetry/events?since=5")
    assert r.status == 200, r
    body = json.loads(r.body)
    assert body["from"] == "control_plane"
    assert body["target"] == f"/browsers/{s}/telemetry/events?since=5"  # no jwt, original path and query
    assert body["authorization"] == "Bearer user-token"  # restored
    assert len(vm_reqs(e, s)) == 1 and len(cp_reqs(e, s)) == 1
    assert req_metric(e, "fallback", "browser_gone") == before + 1
    assert e["g"].metric("wsgate_browser_route_evictions_total", route="/browsers", reason="browser_gone") == ev + 1
    assert e["g"].metric("wsgate_browser_routes", route="/browsers") == size - 1
    evicted = [l for l in e["g"].logs() if l.get("msg") == "browser route evicted" and l.get("session_id") == s]
    assert evicted and evicted[0]["reason"] == "browser_gone"
    assert evicted[0]["correlation_id"] == r.header("X-Correlation-ID")
    line = log_for(e, r.header("X-Correlation-ID"))
    assert line["route_taken"] == "fallback" and line["reason"] == "browser_gone"
    # The route is gone: the next request goes to the control plane at once.
    r = call(e["g"], "GET", f"/browsers/{s}/telemetry/events")
    assert json.loads(r.body)["from"] == "control_plane"
    assert len(vm_reqs(e, s)) == 1


def test_fallback_browser_gone_chunked_404(env):
    e, s = env, sid()
    learn(e, s)
    e["vm"].script[s] = gone(chunked=True)
    r = call(e["g"], "GET", f"/browsers/{s}/telemetry/events")
    assert r.status == 200 and json.loads(r.body)["from"] == "control_plane", r


def test_fallback_on_a_keep_alive_connection(env):
    """The fallback's answer, then the next request on the same connection
    (direct again, for another session): nothing of the dropped 404 leaks."""
    e, s1, s2 = env, sid(), sid()
    learn(e, s1)
    learn(e, s2)
    e["vm"].script[s1] = gone()
    c = wsraw.Conn("127.0.0.1", e["g"].port, timeout=10)
    try:
        for path in (f"/browsers/{s1}/telemetry/events", f"/browsers/{s2}/telemetry/events",
                     f"/browsers/{s1}/telemetry/events"):
            c.send(f"GET {path} HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer user-token\r\n\r\n".encode())
        answers = [json.loads(c.read_response(timeout=10).body) for _ in range(3)]
    finally:
        c.close()
    assert [a["from"] for a in answers] == ["control_plane", "vm", "control_plane"]
    assert answers[0]["authorization"] == "Bearer user-token"
    assert len(vm_reqs(e, s1)) == 1 and len(vm_reqs(e, s2)) == 1


def test_head_and_204_on_eligible_path(env):
    e, s = env, sid()
    learn(e, s)
    e["vm"].script[s] = (204, [], b"", False)
    r = call(e["g"], "GET", f"/browsers/{s}/telemetry/events")
    assert r.status == 204 and r.body == b""
    e["vm"].script[s] = (404, [("Content-Type", "application/json")], b"", False)
    r = call(e["g"], "GET", f"/browsers/{s}/telemetry/events")  # an empty 404: not JSON, passed
    assert r.status == 404 and r.body == b""
    assert cp_reqs(e, s) == []


def test_control_plane_also_failing_no_loop(env):
    e, s = env, sid()
    learn(e, s)
    e["vm"].script[s] = gone()
    e["cp"].script[("GET", f"/browsers/{s}/telemetry/events")] = gone()
    r = call(e["g"], "GET", f"/browsers/{s}/telemetry/events")
    assert r.status == 404
    assert json.loads(r.body)["code"] == "browser_gone"
    assert len(vm_reqs(e, s)) == 1 and len(cp_reqs(e, s)) == 1
    # and a control plane that answers 500: that answer, once
    s2 = sid()
    learn(e, s2)
    e["vm"].script[s2] = gone()
    e["cp"].script[("GET", f"/browsers/{s2}/telemetry/events")] = jresp(500, {"code": "internal"})
    r = call(e["g"], "GET", f"/browsers/{s2}/telemetry/events")
    assert r.status == 500 and json.loads(r.body) == {"code": "internal"}
    assert len(vm_reqs(e, s2)) == 1 and len(cp_reqs(e, s2)) == 1


def test_control_plane_unreachable_after_fallback(make_gateway_dir):
    """A route learned, then (a reload later: the cache outlives it) the
    control plane is down: the fallback answers 502 once, the VM was asked
    once, nothing loops."""
    cp, vm = ControlPlane("cp2"), VM("vm2")
    try:
        route = {"path": "/browsers", "kind": "browser", "control_plane": cp.url, "subresources": ["telemetry"]}
        g, path = make_gateway_dir([route])
        e = {"g": g, "cp": cp, "vm": vm}
        s = sid()
        learn(e, s)
        vm.script[s] = gone()
        gw.write_routes(path, [dict(route, control_plane=f"http://127.0.0.1:{gw.free_port()}")])
        g.signal(signal.SIGHUP)
        gw.wait_until(lambda: [l for l in g.logs() if l.get("msg") == "routes reloaded"], what="reload")
        r = call(g, "GET", f"/browsers/{s}/telemetry/events")
        assert r.status == 502 and json.loads(r.body)["code"] == "upstream_unavailable", r
        assert len(vm_reqs(e, s)) == 1
        line = log_for(e, r.header("X-Correlation-ID"))
        assert line["route_taken"] == "fallback" and line["outcome"] == "upstream_unavailable"
    finally:
        cp.stop()
        vm.stop()


# ============================================================ negative cases: answer unchanged

@pytest.mark.parametrize("status", [502, 503, 504])
def test_transient_5xx_passed_unchanged(env, status):
    e, s = env, sid()
    learn(e, s)
    e["vm"].script[s] = jresp(status, {"code": "browser_gone", "transient": status})
    r = call(e["g"], "GET", f"/browsers/{s}/telemetry/events")
    assert r.status == status and json.loads(r.body) == {"code": "browser_gone", "transient": status}
    assert cp_reqs(e, s) == []
    r = call(e["g"], "GET", f"/browsers/{s}/telemetry/events")  # the route stays
    assert r.status == status and len(vm_reqs(e, s)) == 2


def test_refused_connection_not_fallen_back(env):
    e, s = env, sid()
    dead = gw.free_port()
    learn(e, s, base=f"http://127.0.0.1:{dead}/s/{s}")
    r = call(e["g"], "GET", f"/browsers/{s}/telemetry/events")
    assert r.status == 502 and json.loads(r.body)["code"] == "upstream_unavailable", r
    assert cp_reqs(e, s) == []


def test_404_without_browser_gone_passed_intact(env):
    e, s = env, sid()
    learn(e, s)
    body = {"code": "not_found", "detail": "x" * 100}
    e["vm"].script[s] = jresp(404, body)
    r = call(e["g"], "GET", f"/browsers/{s}/telemetry/events")
    assert r.status == 404 and json.loads(r.body) == body
    assert r.header("Content-Type") == "application/json"
    assert cp_reqs(e, s) == []
    # a non-JSON 404, chunked: intact too
    e["vm"].script[s] = (404, [("Content-Type", "text/plain")], b"no such thing " * 1000, True)
    r = call(e["g"], "GET", f"/browsers/{s}/telemetry/events")
    assert r.status == 404 and r.body == b"no such thing " * 1000
    # a 404 larger than the inspection bound: passed on as it is, even with browser_gone in it
    big = json.dumps({"code": "browser_gone", "pad": "y" * (70 * 1024)}).encode()
    for chunked in (True, False):
        e["vm"].script[s] = (404, [("Content-Type", "application/json")], big, chunked)
        r = call(e["g"], "GET", f"/browsers/{s}/telemetry/events")
        assert r.status == 404 and r.body == big, chunked
    assert cp_reqs(e, s) == []


def test_fallback_close_delimited_404_keeps_the_client_connection(env):
    """A 404 without a length (the VM closes after it) is read to its end and
    decided; the fallback's answer has a length, so the client's keep-alive
    connection serves the next request."""
    e, s = env, sid()
    learn(e, s)
    e["vm"].script[s] = gone_eof()
    c = wsraw.Conn("127.0.0.1", e["g"].port, timeout=10)
    try:
        answers = []
        for _ in range(2):
            c.send(f"GET /browsers/{s}/telemetry/events HTTP/1.1\r\nHost: gw\r\n"
                   "Authorization: Bearer user-token\r\n\r\n".encode())
            r = c.read_response(timeout=10)
            assert r.status == 200 and r.header("Connection") != "close", r
            answers.append(json.loads(r.body)["from"])
    finally:
        c.close()
    assert answers == ["control_plane", "control_plane"]
    assert len(vm_reqs(e, s)) == 1 and len(cp_reqs(e, s)) == 2


@pytest.mark.parametrize("status", [400, 409, 410, 429])
def test_other_4xx_passed_unchanged(env, status):
    e, s = env, sid()
    learn(e, s)
    e["vm"].script[s] = jresp(status, {"code": "browser_gone"})
    r = call(e["g"], "GET", f"/browsers/{s}/telemetry/events")
    assert r.status == status and json.loads(r.body) == {"code": "browser_gone"}
    assert cp_reqs(e, s) == []


def test_post_not_fallen_back(env):
    e, s = env, sid()
    learn(e, s)
    e["vm"].script[s] = gone()
    r = call(e["g"], "POST", f"/browsers/{s}/telemetry/events", body=b'{"a":1}',
             headers={"Content-Type": "application/json"})
    assert r.status == 404 and json.loads(r.body)["code"] == "browser_gone"
    [rec] = vm_reqs(e, s)
    assert rec["method"] == "POST" and rec["body"] == b'{"a":1}'
    assert cp_reqs(e, s) == []


def test_get_with_a_body_not_fallen_back(env):
    e, s = env, sid()
    learn(e, s)
    e["vm"].script[s] = gone()
    r = call(e["g"], "GET", f"/browsers/{s}/telemetry/events", body=b"xyz")
    assert r.status == 404 and json.loads(r.body)["code"] == "browser_gone"
    assert cp_reqs(e, s) == []
    r = call(e["g"], "GET", f"/browsers/{s}/telemetry/events")  # the route was kept
    assert len(vm_reqs(e, s)) == 2


def test_ineligible_path_not_fallen_back(env):
    e, s = env, sid()
    learn(e, s)
    e["vm"].script[s] = gone()
    r = call(e["g"], "GET", f"/browsers/{s}/files/x")  # allowlisted, not in the fallback registry
    assert r.status == 404 and json.loads(r.body)["code"] == "browser_gone"
    assert cp_reqs(e, s) == []


def test_eligible_subresource_wrong_suffix(env):
    e, s = env, sid()
    learn(e, s)
    e["vm"].script[s] = gone()
    for p in ("/telemetry/other", "/telemetry/events/x", "/telemetry"):
        r = call(e["g"], "GET", f"/browsers/{s}{p}")
        assert r.status == 404 and json.loads(r.body)["code"] == "browser_gone", p
    assert cp_reqs(e, s) == []
    assert len(vm_reqs(e, s)) == 3


def test_no_cached_route_goes_to_control_plane(env):
    e, s = env, sid()
    before = req_metric(e, "control_plane", "no_route")
    r = call(e["g"], "GET", f"/browsers/{s}/telemetry/events")
    body = json.loads(r.body)
    assert body["from"] == "control_plane" and body["authorization"] == "Bearer user-token"
    assert vm_reqs(e, s) == []
    assert req_metric(e, "control_plane", "no_route") == before + 1
    assert log_for(e, r.header("X-Correlation-ID"))["route_taken"] == "control_plane"
    # not allowlisted, and direct routing off
    learn(e, s)
    r = call(e["g"], "GET", f"/browsers/{s}/other/x")
    assert json.loads(r.body)["from"] == "control_plane"
    r = call(e["g"], "GET", f"/off/{s}/telemetry/events")
    assert json.loads(r.body)["target"] == f"/off/{s}/telemetry/events"
    assert vm_reqs(e, s) == []
    # the route path itself and the session resource go to the control plane
    for p in ("/browsers", f"/browsers/{s}"):
        r = call(e["g"], "GET", p)
        assert json.loads(r.body)["target"] == p


def test_stale_jwt_401_falls_back(env):
    e, s = env, sid()
    learn(e, s)
    e["vm"].script[s] = jresp(401, {"code": "unauthorized"})
    r = call(e["g"], "GET", f"/browsers/{s}/files/doc")
    assert r.status == 200, r
    body = json.loads(r.body)
    assert body["from"] == "control_plane" and body["authorization"] == "Bearer user-token"
    assert "jwt" not in body["target"]
    assert log_for(e, r.header("X-Correlation-ID"))["reason"] == "stale_jwt"
    assert req_metric(e, "fallback", "stale_jwt") >= 1
    assert e["g"].metric("wsgate_browser_route_evictions_total", route="/browsers", reason="stale_jwt") >= 1
    r = call(e["g"], "GET", f"/browsers/{s}/files/doc")
    assert json.loads(r.body)["from"] == "control_plane"
    assert len(vm_reqs(e, s)) == 1


def test_403_with_client_jwt_passed(env):
    e, s = env, sid()
    learn(e, s)
    e["vm"].script[s] = jresp(403, {"code": "forbidden"})
    r = call(e["g"], "GET", f"/browsers/{s}/files/doc?jwt=client-token")
    assert r.status == 403 and json.loads(r.body) == {"code": "forbidden"}
    [rec] = vm_reqs(e, s)
    assert qs(rec) == {"jwt": ["client-token"]}  # jwt present: not added, not replaced
    assert cp_reqs(e, s) == []


def test_jwt_already_in_query(env):
    e, s = env, sid()
    learn(e, s)
    r = call(e["g"], "GET", f"/browsers/{s}/files/a?a=1&jwt=mine&b=2")
    assert r.status == 200
    [rec] = vm_reqs(e, s)
    assert urlsplit(rec["target"]).query == "a=1&jwt=mine&b=2"


def test_direct_needs_the_credential_that_taught_the_route(env):
    """Review 4 F3: a cached route goes direct only for a request whose
    Authorization is the one the create request had; anyone else (none,
    another token) goes to the control plane, which decides."""
    e, s = env, sid()
    jwt = learn(e, s)  # Authorization: Bearer user-token
    before = req_metric(e, "control_plane", "credential_mismatch")
    r = wsraw.http_request(e["g"].port, "GET", f"/browsers/{s}/telemetry/events", timeout=10.0)
    body = json.loads(r.body)
    assert body["from"] == "control_plane" and body["authorization"] is None
    assert "jwt" not in body["target"]
    line = log_for(e, r.header("X-Correlation-ID"))
    assert line["route_taken"] == "control_plane" and line["reason"] == "credential_mismatch"
    r = call(e["g"], "GET", f"/browsers/{s}/telemetry/events", headers={"Authorization": "Bearer mallory"})
    body = json.loads(r.body)
    assert body["from"] == "control_plane" and body["authorization"] == "Bearer mallory"
    r = call(e["g"], "GET", f"/browsers/{s}/telemetry/events", headers={"Authorization": "bearer user-token"})
    assert json.loads(r.body)["from"] == "control_plane"  # compared as sent
    assert req_metric(e, "control_plane", "credential_mismatch") == before + 3
    # the cdp WebSocket: no credential -> the control plane (which refuses it here)
    ws = e["g"].ws(path=f"/browsers/{s}/cdp", expect_101=False)
    assert ws.response.status == 404
    ws.close()
    assert vm_reqs(e, s) == [] and len(cp_reqs(e, s)) == 4
    assert req_metric(e, "control_plane", "credential_mismatch") == before + 4
    # the owner's credential: direct
    r = call(e["g"], "GET", f"/browsers/{s}/telemetry/events")
    assert json.loads(r.body)["from"] == "vm"
    [rec] = vm_reqs(e, s)
    assert qs(rec) == {"jwt": [jwt]}


def test_route_learned_without_credential_never_direct(env):
    e, s = env, sid()
    answer = {"session_id": s, "base_url": f"{e['vm'].url}/s/{s}", "jwt": "j"}
    r = wsraw.http_request(e["g"].port, "POST", "/browsers", body=json.dumps(answer).encode(),
                           headers={"Content-Type": "application/json"}, timeout=10.0)
    assert r.status == 201
    for h in ({}, {"Authorization": "Bearer user-token"}):
        r = wsraw.http_request(e["g"].port, "GET", f"/browsers/{s}/files/a", headers=h, timeout=10.0)
        assert json.loads(r.body)["from"] == "control_plane", h
        assert log_for(e, r.header("X-Correlation-ID"))["reason"] == "credential_mismatch"
    assert vm_reqs(e, s) == []


# ============================================================ WebSocket

def test_cdp_websocket_direct(env):
    e, s = env, sid()
    jwt = learn(e, s)
    before = req_metric(e, "direct", "cached_route")
    with e["g"].ws(path=f"/browsers/{s}/cdp?trace=1", headers={"Authorization": "Bearer user-token"}) as ws:
        ws.send_text('{"id":1,"method":"Browser.getVersion"}')
        op, payload, _ = ws.recv_message(timeout=10)
        assert payload == b'vm:{"id":1,"method":"Browser.getVersion"}'
        ws.send_close(1000)
        assert ws.expect_close(timeout=10).close_code == 1000
    [rec] = vm_reqs(e, s)
    assert urlsplit(rec["target"]).path == f"/s/{s}/cdp"
    assert qs(rec) == {"trace": ["1"], "jwt": [jwt]}
    assert "authorization" not in rec["hdr_names"]
    assert cp_reqs(e, s) == []
    assert req_metric(e, "direct", "cached_route") == before + 1


def test_websocket_without_route_goes_to_control_plane(env):
    e, s = env, sid()
    ws = e["g"].ws(path=f"/browsers/{s}/cdp", expect_101=False)
    assert ws.response.status == 404  # the fake control plane refuses upgrades: passed back
    ws.close()
    [rec] = cp_reqs(e, s)
    assert rec["headers"].get("Authorization") is None and "upgrade" in rec["hdr_names"]


# ============================================================ learning and the cache

def test_learn_from_create_answer_chunked_top_level_only(env):
    """A create answer (POST /browsers) teaches its top-level route (here
    chunked); routes nested deeper, in lists, or a second one are not
    learned (review 4 F2: this test learned all of them before)."""
    e, s1, s2, s3 = env, sid(), sid(), sid()
    answer = {"session_id": s1, "base_url": f"{e['vm'].url}/s/{s1}/", "jwt": "a.b+c",
              "data": {"items": [{"session": {"session_id": s2, "base_url": f"{e['vm'].url}/s/{s2}", "jwt": "t2"}}]},
              "other": {"session_id": s3, "base_url": f"{e['vm'].url}/s/{s3}", "jwt": "t3"}}
    e["cp"].script[("POST", "/browsers")] = jresp(201, answer, chunked=True)
    try:
        r = call(e["g"], "POST", "/browsers", body=b"{}", headers={"Content-Type": "application/json"})
    finally:
        del e["cp"].script[("POST", "/browsers")]
    assert r.status == 201 and json.loads(r.body) == answer
    line = log_for(e, r.header("X-Correlation-ID"))
    assert line["learned"] == 1
    for s in (s1, s2, s3):
        call(e["g"], "GET", f"/browsers/{s}/files/x")
    [r1] = vm_reqs(e, s1)
    assert r1["target"] == f"/s/{s1}/files/x?jwt=a.b%2Bc"  # trailing '/' of base_url folded, jwt encoded
    assert vm_reqs(e, s2) == [] and vm_reqs(e, s3) == []
    assert len(cp_reqs(e, s2)) == 1 and len(cp_reqs(e, s3)) == 1


def test_learn_from_the_sessions_own_answer(env):
    """GET /browsers/{id} (an answer about that session) teaches that
    session's route, never another one named in the same answer."""
    e, s, other = env, sid(), sid()
    e["cp"].script[("GET", f"/browsers/{s}")] = jresp(200, {
        "session_id": s, "base_url": f"{e['vm'].url}/s/{s}", "jwt": "own",
        "peer": {"session_id": other, "base_url": f"{e['vm'].url}/s/{other}", "jwt": "x"}})
    assert call(e["g"], "GET", f"/browsers/{s}").status == 200
    assert json.loads(call(e["g"], "GET", f"/browsers/{s}/files/a").body)["from"] == "vm"
    assert json.loads(call(e["g"], "GET", f"/browsers/{other}/files/a").body)["from"] == "control_plane"
    assert vm_reqs(e, other) == []


def test_echoed_client_json_cannot_route_another_session(env):
    """Review 4 F2: a control plane that echoes a client's metadata must not
    let client A install (or replace) a route for session B: B's requests
    (with its own jwt and cookie) must never reach A's server."""
    e, a, b, c = env, sid(), sid(), sid()
    evil = VM("evil")
    try:
        def echo(rec):
            sess = urlsplit(rec["target"]).path.split("/")[2]
            return jresp(200, {"session_id": sess, "metadata": json.loads(rec["body"] or b"{}")})
        learn(e, c)  # victim C already has a route: it must not be replaced
        fake = lambda victim: {"session_id": victim, "base_url": f"{evil.url}/s/{victim}", "jwt": "attacker"}
        for labels in ({"x": fake(b)}, fake(b), fake(c), {"x": fake(c)}):
            e["cp"].script[("POST", f"/browsers/{a}/metadata")] = echo
            r = call(e["g"], "POST", f"/browsers/{a}/metadata", body=json.dumps(labels).encode(),
                     headers={"Content-Type": "application/json", "Authorization": "Bearer A-token"})
            assert r.status == 200 and json.loads(r.body)["metadata"] == labels
            assert log_for(e, r.header("X-Correlation-ID"))["learned"] == 0
        for victim in (b, c):
            r = call(e["g"], "GET", f"/browsers/{victim}/telemetry/events?jwt=VICTIM-SECRET",
                     headers={"Cookie": "sess=VICTIM-COOKIE"})
            assert r.status == 200, r
        assert evil.requests() == []
        assert json.loads(call(e["g"], "GET", f"/browsers/{b}/files/q").body)["from"] == "control_plane"
        [rec] = [x for x in vm_reqs(e, c) if "telemetry" in x["target"]]
        assert qs(rec) == {"jwt": ["VICTIM-SECRET"]}
    finally:
        evil.stop()


def test_one_answer_cannot_flush_the_cache(env):
    """A create answer naming many sessions teaches one route at most, so
    it cannot evict everyone else's (review 4 F2)."""
    e = env
    keep = [sid(), sid()]
    for s in keep:
        learn(e, s, prefix="/small")
    ev = e["g"].metric("wsgate_browser_route_evictions_total", route="/small", reason="lru")
    many = {"session_id": sid(), "base_url": f"{e['vm'].url}/s/x", "jwt": "t"}
    for i in range(20):
        many[f"k{i}"] = {"session_id": sid(), "base_url": f"{e['vm'].url}/s/x", "jwt": "t"}
    learn(e, "ignored", prefix="/small", answer=many)
    assert e["g"].metric("wsgate_browser_route_evictions_total", route="/small", reason="lru") == ev + 1
    assert e["g"].metric("wsgate_browser_routes", route="/small") == 2
    assert json.loads(call(e["g"], "GET", f"/small/{keep[1]}/telemetry/x").body)["from"] == "vm"


def test_learn_from_cdp_ws_url(env):
    e, s = env, sid()
    port = e["vm"].port
    learn(e, s, answer={"browser": {"session_id": s, "cdp_ws_url": f"ws://127.0.0.1:{port}/s/{s}/cdp?jwt=cdp-tok"}})
    r = call(e["g"], "GET", f"/browsers/{s}/files/y")
    assert json.loads(r.body)["from"] == "vm"
    [rec] = vm_reqs(e, s)
    assert rec["target"] == f"/s/{s}/files/y?jwt=cdp-tok"


def test_unsafe_base_urls_not_learned(env):
    e = env
    for base in ("unix:/tmp/x.sock", "ftp://127.0.0.1/x", f"http://user:pw@127.0.0.1:{e['vm'].port}/s/x",
                 f"{e['vm'].url}/s/x?y=1", "http:///nohost"):
        s = sid()
        learn(e, s, base=base)
        r = call(e["g"], "GET", f"/browsers/{s}/files/z")
        assert json.loads(r.body)["from"] == "control_plane", base
    s = sid()
    learn(e, s, answer={"session_id": "../x", "base_url": e["vm"].url, "jwt": "t"})
    assert e["vm"].requests(lambda r: "/x/" in r["target"] and "files/z" in r["target"]) == []


def test_non_json_and_non_2xx_not_learned(env):
    e, s = env, sid()
    ans = {"session_id": s, "base_url": f"{e['vm'].url}/s/{s}", "jwt": "t"}
    e["cp"].script[("GET", f"/browsers/{s}/text")] = jresp(200, ans, ctype="text/plain")
    e["cp"].script[("GET", f"/browsers/{s}/err")] = jresp(500, ans)
    call(e["g"], "GET", f"/browsers/{s}/text")
    call(e["g"], "GET", f"/browsers/{s}/err")
    r = call(e["g"], "GET", f"/browsers/{s}/files/z")
    assert json.loads(r.body)["from"] == "control_plane"


def test_large_body_passed_unlearned(env):
    e, s = env, sid()
    ans = {"session_id": s, "base_url": f"{e['vm'].url}/s/{s}", "jwt": "t", "pad": "p" * (1100 * 1024)}
    raw = json.dumps(ans).encode()
    e["cp"].script[("GET", f"/browsers/{s}/big")] = (200, [("Content-Type", "application/json")], raw, True)
    r = call(e["g"], "GET", f"/browsers/{s}/big")
    assert r.status == 200 and hashlib.sha256(r.body).digest() == hashlib.sha256(raw).digest()
    r = call(e["g"], "GET", f"/browsers/{s}/files/z")
    assert json.loads(r.body)["from"] == "control_plane"
    gw.wait_until(lambda: [l for l in e["g"].logs() if l.get("msg") == "browser learn skipped"],
                  what="learn skipped line")


def test_delete_evicts(env):
    e, s = env, sid()
    learn(e, s)
    e["cp"].script[("DELETE", f"/browsers/{s}")] = jresp(500, {"code": "internal"})
    r = call(e["g"], "DELETE", f"/browsers/{s}")
    assert r.status == 500
    assert json.loads(call(e["g"], "GET", f"/browsers/{s}/files/a").body)["from"] == "vm"  # kept
    before = e["g"].metric("wsgate_browser_route_evictions_total", route="/browsers", reason="deleted")
    # the answer names the session's route: deleted all the same, not learned again
    e["cp"].script[("DELETE", f"/browsers/{s}")] = jresp(200, {"session_id": s, "base_url": f"{e['vm'].url}/s/{s}",
                                                               "jwt": "j", "status": "deleted"})
    r = call(e["g"], "DELETE", f"/browsers/{s}")
    assert r.status == 200
    assert json.loads(call(e["g"], "GET", f"/browsers/{s}/files/a").body)["from"] == "control_plane"
    assert e["g"].metric("wsgate_browser_route_evictions_total", route="/browsers",
                         reason="deleted") == before + 1


def test_lru_eviction(env):
    e = env
    s1, s2, s3 = sid(), sid(), sid()
    ev = e["g"].metric("wsgate_browser_route_evictions_total", route="/small", reason="lru")
    ev += e["g"].metric("wsgate_browser_routes", route="/small")  # routes other tests left: evicted below
    for s in (s1, s2):
        learn(e, s, prefix="/small")
    assert e["g"].metric("wsgate_browser_routes", route="/small") == 2
    # s1 used: s2 is now the least recently used
    assert json.loads(call(e["g"], "GET", f"/small/{s1}/telemetry/x").body)["from"] == "vm"
    learn(e, s3, prefix="/small")
    assert e["g"].metric("wsgate_browser_routes", route="/small") == 2
    assert e["g"].metric("wsgate_browser_route_evictions_total", route="/small", reason="lru") == ev + 1
    assert json.loads(call(e["g"], "GET", f"/small/{s2}/telemetry/x").body)["from"] == "control_plane"
    assert json.loads(call(e["g"], "GET", f"/small/{s1}/telemetry/x").body)["from"] == "vm"
    assert json.loads(call(e["g"], "GET", f"/small/{s3}/telemetry/x").body)["from"] == "vm"


def test_custom_fallback_registry(env):
    e, s = env, sid()
    learn(e, s, prefix="/custom")
    e["vm"].script[s] = gone()
    r = call(e["g"], "GET", f"/custom/{s}/telemetry/events")  # the default entry is replaced
    assert r.status == 404
    r = call(e["g"], "GET", f"/custom/{s}/logs")
    assert json.loads(r.body)["from"] == "control_plane"


def test_authorization_never_reaches_vm(env):
    e = env
    assert e["vm"].requests(), "tests above reached the VM"
    for rec in e["vm"].requests():
        assert "authorization" not in rec["hdr_names"], rec


def test_bad_routes_refused(tmp_path):
    cases = [
        ({"path": "/b", "kind": "browser"}, "control_plane"),
        ({"path": "/b", "kind": "browser", "control_plane": "https://cp.example"}, "https"),
        ({"path": "/b", "kind": "browser", "control_plane": "http://127.0.0.1:1", "subresources": ["a/b"]},
         "subresource"),
        ({"path": "/b", "kind": "browser", "control_plane": "http://127.0.0.1:1", "fallback": [{"x": 1}]},
         "fallback"),
        ({"path": "/b", "kind": "browser", "control_plane": "http://127.0.0.1:1", "cache_size": 0}, "cache_size"),
        ({"path": "/p/", "kind": "proxy", "upstream": "http://127.0.0.1:1", "control_plane": "http://x:1"},
         "browser"),
    ]
    for route, word in cases:
        p = gw.write_routes(str(tmp_path / "r.json"), [route])
        r = gw.run_cli(["serve"], env={"GATEWAY_ROUTES_FILE": p,
                                       "GATEWAY_PUBLIC_HTTP_ADDR": f"127.0.0.1:{gw.free_port()}",
                                       "GATEWAY_ADMIN_HTTP_ADDR": f"127.0.0.1:{gw.free_port()}"}, timeout=20)
        err = r.stderr.decode()
        assert r.returncode != 0 and word in err, (route, r.returncode, err[-500:])


@pytest.fixture
def make_gateway_dir(tmp_path):
    made = []

    def make(routes):
        p = gw.write_routes(str(tmp_path / "routes.json"), routes)
        g = gw.Gateway({"GATEWAY_ROUTES_FILE": p})
        made.append(g)
        return g, p

    yield make
    for g in made:
        g.stop()
        problems = g.check_exit("gateway")
        assert not problems, "\n".join(problems)
