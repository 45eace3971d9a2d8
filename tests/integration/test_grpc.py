"""gRPC surface (DESIGN.md section 6): wsgate.v1.EdgeGateway over HTTP/2 with
real python3-grpcio clients (generic unary_unary / unary_stream calls with the
protobuf classes protoc --python_out makes from proto/ at test time), raw
HTTP/2 (python3-h2) for the abuse cases, and signatures checked with the key
GET /v1/signing-key serves (python3-cryptography)."""

import hashlib
import http.server
import json
import os
import signal
import socket
import ssl
import stat
import subprocess
import sys
import tempfile
import threading
import time

import grpc
import h2.config
import h2.errors
import h2.connection
import h2.events
import h2.exceptions
import h2.settings
import pytest
from cryptography.hazmat.primitives.serialization import load_pem_public_key

import gw
import wsraw

ADMIN = "admin-token-for-grpc-tests"
GEN = tempfile.mkdtemp(prefix="wsgate-grpc-py-")
subprocess.run(["protoc", f"--proto_path={gw.ROOT}/proto", f"--python_out={GEN}",
                "wsgate/v1/edge_gateway.proto"], check=True)
# The reflection messages, from a copy outside a "grpc/" folder (a generated
# grpc package would hide grpcio's).
os.makedirs(f"{GEN}/wsreflect", exist_ok=True)
with open(f"{gw.ROOT}/proto/grpc/reflection/v1alpha/reflection.proto") as f_in, \
        open(f"{GEN}/wsreflect/reflection.proto", "w") as f_out:
    f_out.write(f_in.read())
subprocess.run(["protoc", f"--proto_path={GEN}", f"--python_out={GEN}", "wsreflect/reflection.proto"], check=True)
sys.path.insert(0, GEN)
from wsgate.v1 import edge_gateway_pb2 as pb  # noqa: E402
from wsreflect import reflection_pb2 as rpb  # noqa: E402
from google.protobuf import descriptor_pb2  # noqa: E402

EXEC = "/wsgate.v1.EdgeGateway/ExecuteCommand"
SUB = "/wsgate.v1.EdgeGateway/SubscribeEvents"
HEALTH = "/grpc.health.v1.Health/Check"


# ------------------------------------------------------------------ helpers

@pytest.fixture(scope="module")
def key():
    d = tempfile.mkdtemp(prefix="wsgate-key-")
    r = gw.run_cli(["keygen", "--out", f"{d}/signer"])
    assert r.returncode == 0, r
    return f"{d}/signer"


class Downstream:
    """A plain HTTP/1.1 command downstream: records what it got."""

    def __init__(self):
        self.seen = []
        outer = self

        class H(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                outer.seen.append((self.path, dict(self.headers), body))
                if self.path.endswith("/slow"):
                    time.sleep(2)
                code = {"/commands/fail": 500, "/commands/busy": 503}.get(self.path, 200)
                out = b"ok:" + body
                self.send_response(code)
                self.send_header("Content-Length", str(len(out)))
                self.end_headers()
                try:
                    self.wfile.write(out)
                except OSError:
                    pass

        self.srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.srv.daemon_threads = True
        self.port = self.srv.server_address[1]
        threading.Thread(target=self.srv.serve_forever, daemon=True).start()

    def close(self):
        self.srv.shutdown()
        self.srv.server_close()


@pytest.fixture
def downstream():
    d = Downstream()
    yield d
    d.close()


def routes_file(ds_port):
    dead = gw.free_port()  # nothing listens there
    routes = {"routes": [
        {"path": f"/commands/{name}", "kind": "command", "upstream": f"http://127.0.0.1:{port}"}
        for name, port in (("echo", ds_port), ("slow", ds_port), ("fail", ds_port), ("busy", ds_port),
                           ("down", dead))]}
    fd, path = tempfile.mkstemp(suffix=".json")
    with os.fdopen(fd, "w") as f:
        json.dump(routes, f)
    return path


def gateway(make_gateway, key, ds=None, **env):
    port = gw.free_port()
    e = {"GATEWAY_ADMIN_TOKEN": ADMIN, "GATEWAY_WORKERS": "2",
         "GATEWAY_AUTHENTICATED_GRPC_ADDR": f"127.0.0.1:{port}",
         "GATEWAY_RESPONSE_SIGNER_PRIVATE_KEY_PEM_PATH": f"{key}.key"}
    if ds:
        e["GATEWAY_ROUTES_FILE"] = routes_file(ds.port)
    e.update(env)
    g = make_gateway(env=e)
    g.grpc_port = port
    return g


def admin_post(g, path, body):
    return wsraw.http_request(g.admin_port, "POST", path, body=json.dumps(body).encode(),
                              headers={"Content-Type": "application/json", "Authorization": f"Bearer {ADMIN}"})


def session(g, sid, user, version=1, status="active"):
    r = admin_post(g, "/v1/sessions", {"device_session_id": sid, "user_id": user, "status": status,
                                       "version": version,
                                       "token_sha256": hashlib.sha256(f"bearer-{sid}".encode()).hexdigest()})
    assert r.status == 202, r

    def applied():
        v = wsraw.http_request(g.admin_port, "GET", f"/v1/sessions/{sid}",
                               headers={"Authorization": f"Bearer {ADMIN}"})
        return v.status == 200 and json.loads(v.body)["status"] == status
    gw.wait_until(applied, what=f"session {sid} {status}")


def publish(g, user, typ, payload=None, dev=None):
    body = {"user_id": user, "type": typ, "payload": payload if payload is not None else {"n": 0}}
    if dev:
        body["device_session_id"] = dev
    r = admin_post(g, "/v1/events", body)
    assert r.status == 201, r
    return json.loads(r.body)["id"]


def channel(g):
    return grpc.insecure_channel(f"127.0.0.1:{g.grpc_port}")


def auth(sid):
    return [("authorization", f"Bearer bearer-{sid}"), ("x-correlation-id", f"corr-{sid}")]


def execute(ch, command, payload=b"", sid=None, timeout=5, request_id="req-1"):
    f = ch.unary_unary(EXEC, request_serializer=pb.ExecuteCommandRequest.SerializeToString,
                       response_deserializer=pb.ExecuteCommandResponse.FromString)
    return f(pb.ExecuteCommandRequest(request_id=request_id, command=command, payload=payload),
             metadata=auth(sid) if sid else None, timeout=timeout)


def subscribe(ch, sid, cursor="", timeout=20):
    f = ch.unary_stream(SUB, request_serializer=pb.SubscribeEventsRequest.SerializeToString,
                        response_deserializer=pb.Event.FromString)
    return f(pb.SubscribeEventsRequest(cursor=cursor), metadata=auth(sid) if sid else None, timeout=timeout)


def health(ch):
    f = ch.unary_unary(HEALTH, request_serializer=lambda b: b, response_deserializer=lambda b: b)
    r = f(b"", timeout=5)
    return {b"\x08\x01": "SERVING", b"\x08\x02": "NOT_SERVING"}.get(r, r)


def status_of(fn):
    with pytest.raises(grpc.RpcError) as e:
        fn()
    return e.value.code(), e.value.details()


# -------------------------------------------------------------- auth, routes

def test_statuses_auth_and_routing(make_gateway, key, downstream):
    g = gateway(make_gateway, key, downstream)
    session(g, "ga1", "alice")
    session(g, "ga2", "alice", status="revoked")
    with channel(g) as ch:
        assert status_of(lambda: execute(ch, "echo")) == (
            grpc.StatusCode.UNAUTHENTICATED, "missing authorization: Bearer metadata")
        assert status_of(lambda: execute(ch, "echo", sid="nobody")) == (
            grpc.StatusCode.UNAUTHENTICATED, "the bearer is not a known device session")
        assert status_of(lambda: execute(ch, "echo", sid="ga2")) == (
            grpc.StatusCode.FAILED_PRECONDITION, "device session is revoked")
        assert status_of(lambda: next(subscribe(ch, "ga2"))) == (
            grpc.StatusCode.FAILED_PRECONDITION, "device session is revoked")
        assert status_of(lambda: execute(ch, "nope", sid="ga1")) == (
            grpc.StatusCode.UNIMPLEMENTED, "no route for command nope")
        assert status_of(lambda: execute(ch, "bad name", sid="ga1"))[0] == grpc.StatusCode.INVALID_ARGUMENT
        f = ch.unary_unary("/wsgate.v1.EdgeGateway/Nope", request_serializer=lambda b: b,
                           response_deserializer=lambda b: b)
        assert status_of(lambda: f(b"", timeout=5))[0] == grpc.StatusCode.UNIMPLEMENTED
        assert status_of(lambda: next(subscribe(ch, "ga1", cursor="garbage")))[0] == grpc.StatusCode.INVALID_ARGUMENT
        assert health(ch) == "SERVING"
    assert downstream.seen == []  # nothing refused reached the downstream
    lines = [l for l in g.logs() if l.get("msg") == "grpc call"]
    assert any(l["code"] == "FAILED_PRECONDITION" and l["correlation_id"] == "corr-ga2" for l in lines), lines
    assert g.metric("wsgate_grpc_calls_total", code="UNAUTHENTICATED") == 2


def test_execute_signed_and_passed_on(make_gateway, key, downstream):
    g = gateway(make_gateway, key, downstream)
    session(g, "ge1", "erin")
    with channel(g) as ch:
        rs = execute(ch, "echo", b"\x00payload\xff", sid="ge1", request_id="rid-42")
    assert rs.payload == b"ok:\x00payload\xff" and rs.downstream_status == 200
    assert rs.request_id == "rid-42" and rs.command == "echo"
    assert abs(rs.server_time_ms - time.time() * 1000) < 60000
    path, headers, body = downstream.seen[0]
    assert path == "/commands/echo" and body == b"\x00payload\xff"
    assert headers["X-Wsgate-User-Id"] == "erin" and headers["X-Wsgate-Session-Id"] == "ge1"
    assert headers["X-Correlation-ID"] == "corr-ge1" and headers["X-Wsgate-Request-Id"] == "rid-42"
    assert headers["X-Wsgate-Command"] == "echo"
    # The signature verifies with the key the admin listener serves.
    r = wsraw.http_request(g.admin_port, "GET", "/v1/signing-key")
    assert r.status == 200
    pub = load_pem_public_key(r.body)
    raw = pub.public_bytes(encoding=__import__("cryptography.hazmat.primitives.serialization",
                                               fromlist=["Encoding"]).Encoding.Raw,
                           format=__import__("cryptography.hazmat.primitives.serialization",
                                             fromlist=["PublicFormat"]).PublicFormat.Raw)
    key_id = hashlib.sha256(raw).hexdigest()[:16]
    assert rs.signature.algorithm == "ed25519" and rs.signature.key_id == key_id
    with open(f"{key}.pub", "rb") as f:
        assert f.read() == r.body  # the same key keygen wrote
    canonical = (f"wsgate.v1.ExecuteCommand\nrid-42\necho\n{rs.server_time_ms}\n"
                 f"{hashlib.sha256(rs.payload).hexdigest()}\n{key_id}").encode()
    pub.verify(rs.signature.signature, canonical)  # raises InvalidSignature when wrong
    with pytest.raises(Exception):
        pub.verify(rs.signature.signature, canonical.replace(b"rid-42", b"rid-43"))


def test_execute_downstream_failures(make_gateway, key, downstream):
    g = gateway(make_gateway, key, downstream)
    session(g, "gf1", "fay")
    with channel(g) as ch:
        assert status_of(lambda: execute(ch, "down", sid="gf1")) == (
            grpc.StatusCode.UNAVAILABLE, "the command's downstream is unavailable")
        assert status_of(lambda: execute(ch, "busy", sid="gf1")) == (
            grpc.StatusCode.UNAVAILABLE, "the command's downstream is unavailable")
        assert status_of(lambda: execute(ch, "fail", sid="gf1")) == (
            grpc.StatusCode.INTERNAL, "the command's downstream failed")
        t0 = time.monotonic()
        code, _ = status_of(lambda: execute(ch, "slow", sid="gf1", timeout=0.5))
        assert code == grpc.StatusCode.DEADLINE_EXCEEDED and time.monotonic() - t0 < 1.9
        # the deadline was passed on to the downstream
        slow = [h for p, h, _ in downstream.seen if p == "/commands/slow"][0]
        assert 0 < int(slow["X-Wsgate-Deadline-Ms"]) <= 600  # grpc-timeout as the client rounded it
        assert execute(ch, "echo", b"x", sid="gf1").payload == b"ok:x"  # still serving


def test_dot_segment_commands_refused(make_gateway, key, downstream):
    # A catch-all command route with strip_prefix and a base path: "." and
    # ".." would leave /api/cmd downstream; they are refused before routing.
    fd, routes = tempfile.mkstemp(suffix=".json")
    with os.fdopen(fd, "w") as f:
        json.dump({"routes": [{"path": "/commands/", "kind": "command", "strip_prefix": True,
                               "upstream": f"http://127.0.0.1:{downstream.port}/api/cmd"}]}, f)
    g = gateway(make_gateway, key, GATEWAY_ROUTES_FILE=routes)
    session(g, "gd1", "dora")
    with channel(g) as ch:
        for cmd in (".", ".."):
            code, details = status_of(lambda: execute(ch, cmd, b"x", sid="gd1"))
            assert code == grpc.StatusCode.INVALID_ARGUMENT and "not . or .." in details, (cmd, code, details)
        assert execute(ch, "status", b"x", sid="gd1").downstream_status == 200
        assert execute(ch, "a..b", b"x", sid="gd1").downstream_status == 200
    assert [p for p, _, _ in downstream.seen] == ["/api/cmd/status", "/api/cmd/a..b"]


def test_oversized_message(make_gateway, key, downstream):
    g = gateway(make_gateway, key, downstream)
    session(g, "go1", "olga")
    with grpc.insecure_channel(f"127.0.0.1:{g.grpc_port}",
                               options=[("grpc.max_send_message_length", 8 << 20)]) as ch:
        code, details = status_of(lambda: execute(ch, "echo", b"x" * (1024 * 1024 + 100), sid="go1"))
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and "larger than 1048576" in details
        assert execute(ch, "echo", b"y" * 1000, sid="go1").payload == b"ok:" + b"y" * 1000
    assert downstream.seen[-1][0] == "/commands/echo" and len(downstream.seen) == 1


# ------------------------------------------------------------ SubscribeEvents

def test_subscribe_order_resume_and_revocation(make_gateway, key):
    g = gateway(make_gateway, key)
    session(g, "gs1", "sam")
    session(g, "gs2", "sam")
    with channel(g) as ch:
        call = subscribe(ch, "gs1")
        first = next(call)
        assert first.type == "gateway.server_time" and first.id == ""
        assert abs(json.loads(first.payload)["server_time_ms"] - time.time() * 1000) < 60000
        ids = [publish(g, "sam", "note", {"n": i}) for i in range(5)]
        other = publish(g, "sam", "direct", {"to": "gs2"}, dev="gs2")
        got = [next(call) for _ in range(5)]
        assert [e.id for e in got] == ids
        assert [json.loads(e.payload)["n"] for e in got] == list(range(5))
        assert all(e.type == "note" and e.created_at_ms == int(e.id.split("-")[0]) for e in got)
        # Resume from the second event: the rest replayed, then live, no gap, no duplicate.
        again = subscribe(ch, "gs2", cursor=ids[1])
        assert next(again).type == "gateway.server_time"
        assert [next(again).id for _ in range(4)] == ids[2:] + [other]
        live = publish(g, "sam", "live")
        assert next(call).id == live and next(again).id == live
        # Revocation ends that session's stream, not the other.
        session(g, "gs2", "sam", version=2, status="revoked")
        assert status_of(lambda: next(again)) == (grpc.StatusCode.FAILED_PRECONDITION, "device session is revoked")
        last = publish(g, "sam", "after")
        assert next(call).id == last
        call.cancel()
    # A cursor older than the history: resync, never a silent gap.
    assert g.metric("wsgate_push_resumes_total", result="replayed") == 1


def test_resync_when_cursor_too_old(make_gateway, key):
    g = gateway(make_gateway, key, GATEWAY_PUSH_HISTORY_WINDOW="1s")
    session(g, "gr1", "rob")
    with channel(g) as ch:
        call = subscribe(ch, "gr1", cursor="1-0")
        assert next(call).type == "gateway.server_time"
        e = next(call)
        assert e.type == "gateway.resync_required" and json.loads(e.payload) == {"cursor": "1-0"}
        assert status_of(lambda: next(call))[0] == grpc.StatusCode.OUT_OF_RANGE


def test_drain_unavailable_and_health(make_gateway, key):
    g = gateway(make_gateway, key, GATEWAY_DRAIN_DELAY="1s", GATEWAY_SHUTDOWN_TIMEOUT="6s")
    session(g, "gd1", "dan")
    with channel(g) as ch:
        call = subscribe(ch, "gd1")
        assert next(call).type == "gateway.server_time"
        assert health(ch) == "SERVING"
        g.signal(signal.SIGTERM)
        gw.wait_until(lambda: health(ch) == "NOT_SERVING", what="NOT_SERVING while draining")
        e = next(call)
        assert e.type == "gateway.shutdown" and 500 <= json.loads(e.payload)["reconnect_delay_ms"] < 5000
        assert status_of(lambda: next(call)) == (grpc.StatusCode.UNAVAILABLE, "gateway is shutting down")
    assert g.stop() == 0


def test_reflection(make_gateway, key):
    g = gateway(make_gateway, key)
    with channel(g) as ch:
        f = ch.stream_stream("/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
                             request_serializer=rpb.ServerReflectionRequest.SerializeToString,
                             response_deserializer=rpb.ServerReflectionResponse.FromString)
        reqs = [rpb.ServerReflectionRequest(host="h", list_services=""),
                rpb.ServerReflectionRequest(file_containing_symbol="wsgate.v1.EdgeGateway"),
                rpb.ServerReflectionRequest(file_by_filename="grpc/health/v1/health.proto"),
                rpb.ServerReflectionRequest(file_containing_symbol="no.such.Service")]
        got = list(f(iter(reqs), timeout=5))
    assert len(got) == 4
    assert got[0].valid_host == "h" and got[0].original_request.list_services == ""
    assert sorted(s.name for s in got[0].list_services_response.service) == [
        "grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection", "wsgate.v1.EdgeGateway"]
    fd = descriptor_pb2.FileDescriptorProto.FromString(got[1].file_descriptor_response.file_descriptor_proto[0])
    assert fd.name == "wsgate/v1/edge_gateway.proto" and fd.package == "wsgate.v1"
    svc = {m.name: m for m in fd.service[0].method}
    assert fd.service[0].name == "EdgeGateway" and set(svc) == {"ExecuteCommand", "SubscribeEvents"}
    assert svc["SubscribeEvents"].server_streaming and not svc["ExecuteCommand"].server_streaming
    assert {m.name for m in fd.message_type} >= {"ExecuteCommandRequest", "ExecuteCommandResponse", "Event"}
    hd = descriptor_pb2.FileDescriptorProto.FromString(got[2].file_descriptor_response.file_descriptor_proto[0])
    assert hd.package == "grpc.health.v1" and hd.service[0].name == "Health"
    assert got[3].error_response.error_code == 5


# --------------------------------------------------------------- raw HTTP/2

class Raw:
    def __init__(self, port, settings=None):
        self.s = socket.create_connection(("127.0.0.1", port), timeout=5)
        self.c = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding="utf-8"))
        self.c.initiate_connection()
        if settings:
            self.c.update_settings(settings)
        self.flush()
        self.events = []

    def flush(self):
        data = self.c.data_to_send()
        if data:
            self.s.sendall(data)

    def read(self, until, timeout=10):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for e in self.events:
                if until(e):
                    return e
            try:
                data = self.s.recv(65536)
            except socket.timeout:
                continue
            except ConnectionResetError:
                data = b""
            if not data:
                return None
            self.events += self.c.receive_data(data)
            self.flush()
        raise AssertionError(f"timed out; events {self.events[-5:]}")

    def request(self, path, msg, sid=None, end=True):
        sid_ = self.c.get_next_available_stream_id()
        hdrs = [(":method", "POST"), (":scheme", "http"), (":path", path), (":authority", "x"),
                ("content-type", "application/grpc"), ("te", "trailers")]
        if sid:
            hdrs.append(("authorization", f"Bearer bearer-{sid}"))
        self.c.send_headers(sid_, hdrs)
        self.c.send_data(sid_, b"\x00" + len(msg).to_bytes(4, "big") + msg, end_stream=end)
        self.flush()
        return sid_

    def close(self):
        self.s.close()


def trailers_of(raw, stream_id, timeout=10):
    e = raw.read(lambda e: isinstance(e, h2.events.TrailersReceived) and e.stream_id == stream_id
                 or isinstance(e, h2.events.ResponseReceived) and e.stream_id == stream_id
                 and any(k == "grpc-status" for k, _ in e.headers), timeout)
    return dict(e.headers) if e else None


def test_overflow_resource_exhausted(make_gateway, key):
    g = gateway(make_gateway, key, GATEWAY_PUSH_QUEUE_LIMIT="4", GATEWAY_WORKERS="1")
    session(g, "gx1", "xena")
    # A client that does not read: no window for the stream's DATA.
    raw = Raw(g.grpc_port, {h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 0})
    sid = raw.request(SUB, pb.SubscribeEventsRequest().SerializeToString(), sid="gx1")
    raw.read(lambda e: isinstance(e, h2.events.ResponseReceived) and e.stream_id == sid)
    gw.wait_until(lambda: g.metric("wsgate_push_subscribers") == 1, what="listed")
    big = {"blob": "z" * 20000}
    for _ in range(12):
        publish(g, "xena", "big", big)
    gw.wait_until(lambda: g.metric("wsgate_push_overflows_total") == 1, what="overflow")
    # Once it opens its window it gets the status, not the dropped events.
    raw.c.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 65535})
    raw.flush()
    t = trailers_of(raw, sid)
    assert t["grpc-status"] == "8" and t["grpc-message"] == "push stream overflowed", t
    raw.close()
    with channel(g) as ch:
        assert health(ch) == "SERVING"


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        return int([l for l in f if l.startswith("VmRSS:")][0].split()[1])


def test_streams_that_never_read_stay_bounded(make_gateway, key):
    # 50 SubscribeEvents streams on one connection that grants every window
    # and then never reads its socket; 40 events of 60 KB each would be
    # 120 MB if the gateway buffered them. Each stream overflows instead.
    extra = {}
    if gw.is_sanitizer_build():  # ASan's quarantine keeps freed memory resident: bound the live memory only
        extra["ASAN_OPTIONS"] = os.environ.get("ASAN_OPTIONS", "detect_leaks=1") + ":quarantine_size_mb=1"
    g = gateway(make_gateway, key, GATEWAY_PUSH_QUEUE_LIMIT="4", GATEWAY_WORKERS="1",
                GATEWAY_PUSH_MAX_STREAMS_PER_SESSION="100", **extra)
    session(g, "gm1", "mia")
    raw = Raw(g.grpc_port, {h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 2**31 - 1})
    raw.c.increment_flow_control_window(2**31 - 1 - 65535)
    raw.flush()
    ids = [raw.request(SUB, pb.SubscribeEventsRequest().SerializeToString(), sid="gm1") for _ in range(50)]
    gw.wait_until(lambda: g.metric("wsgate_push_subscribers") == 50, what="50 listed")
    before = rss_kib(g.pid)
    for _ in range(40):
        publish(g, "mia", "big", {"blob": "z" * 60000})
    gw.wait_until(lambda: g.metric("wsgate_push_overflows_total") == 50, timeout=20, what="every stream overflowed")
    grown = rss_kib(g.pid) - before
    assert grown < 40 * 1024, f"RSS grew {grown} KiB"
    raw.close()
    gw.wait_until(lambda: g.metric("wsgate_grpc_streams") == 0, what="streams freed with the connection")
    assert ids


def test_reflection_answers_not_taken_bounded(make_gateway, key):
    # No credentials, SETTINGS_INITIAL_WINDOW_SIZE=0: every reflection
    # answer stays unsent. Each stream is reset (ENHANCE_YOUR_CALM) once it
    # holds 256 KiB unsent; at 4 MiB held on the connection: GOAWAY
    # ENHANCE_YOUR_CALM. Gateway memory stays bounded.
    extra = {}
    if gw.is_sanitizer_build():  # ASan's quarantine keeps freed memory resident: bound the live memory only
        extra["ASAN_OPTIONS"] = os.environ.get("ASAN_OPTIONS", "detect_leaks=1") + ":quarantine_size_mb=1"
    g = gateway(make_gateway, key, GATEWAY_WORKERS="1", **extra)
    raw = Raw(g.grpc_port, {h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 0})
    req = rpb.ServerReflectionRequest(file_containing_symbol="wsgate.v1.EdgeGateway").SerializeToString()
    frame = b"\x00" + len(req).to_bytes(4, "big") + req
    with channel(g) as ch:
        f = ch.stream_stream("/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
                             request_serializer=lambda b: b, response_deserializer=lambda b: b)
        answer = len(list(f(iter([req]), timeout=5))[0]) + 5
    before = rss_kib(g.pid)
    resets, terminated, sent = {}, [], 0

    def take(timeout):
        raw.s.settimeout(timeout)
        try:
            data = raw.s.recv(65536)
        except socket.timeout:
            return
        except ConnectionResetError:
            data = b""
        if not data:
            terminated.append(None)
            return
        for e in raw.c.receive_data(data):
            if isinstance(e, h2.events.StreamReset):
                resets[e.stream_id] = e.error_code
            elif isinstance(e, h2.events.ConnectionTerminated):
                terminated.append(e.error_code)
        raw.flush()

    def open_stream(n):
        sid = raw.c.get_next_available_stream_id()
        raw.c.send_headers(sid, [(":method", "POST"), (":scheme", "http"), (":authority", "x"),
                                 (":path", "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"),
                                 ("content-type", "application/grpc"), ("te", "trailers")])
        raw.c.send_data(sid, frame * n)
        raw.flush()
        return sid

    # One stream past 256 KiB unsent: reset, the others untouched.
    first = open_stream(300 * 1024 // answer + 2)
    deadline = time.monotonic() + 10
    while first not in resets and time.monotonic() < deadline:
        take(1)
    assert resets == {first: h2.errors.ErrorCodes.ENHANCE_YOUR_CALM}, (resets, terminated)
    # Streams each under 256 KiB unsent: the connection reaches 4 MiB.
    for _ in range(60):
        if terminated:
            break
        open_stream(200 * 1024 // answer)
        sent += 1
        take(0.05)
    deadline = time.monotonic() + 10
    while not terminated and time.monotonic() < deadline:
        take(1)
    assert terminated and terminated[0] == h2.errors.ErrorCodes.ENHANCE_YOUR_CALM, (terminated, resets)
    assert 4 * 1024 // 200 <= sent <= 4 * 1024 // 200 + 2, sent  # GOAWAY once 4 MiB are held, not before
    grown = rss_kib(g.pid) - before
    assert grown < 24 * 1024, f"RSS grew {grown} KiB"
    raw.close()
    gw.wait_until(lambda: g.metric("wsgate_grpc_streams") == 0, what="streams freed")
    with channel(g) as ch:
        assert health(ch) == "SERVING"


def test_unfinished_requests_time_out(make_gateway, key):
    # Unauthenticated streams that never send END_STREAM: each is reset
    # (CANCEL) at GATEWAY_HANDSHAKE_TIMEOUT, and a connection without a
    # dispatched stream ends at GATEWAY_HTTP_IDLE_TIMEOUT, memory freed.
    extra = {}
    if gw.is_sanitizer_build():  # ASan's quarantine keeps freed memory resident: bound the live memory only
        extra["ASAN_OPTIONS"] = os.environ.get("ASAN_OPTIONS", "detect_leaks=1") + ":quarantine_size_mb=1"
    g = gateway(make_gateway, key, GATEWAY_WORKERS="1", GATEWAY_HANDSHAKE_TIMEOUT="1s",
                GATEWAY_HTTP_IDLE_TIMEOUT="3s", **extra)
    before = rss_kib(g.pid)
    raws = []
    for _ in range(4):
        raw = Raw(g.grpc_port)
        for _ in range(4):
            sid = raw.c.get_next_available_stream_id()
            raw.c.send_headers(sid, [(":method", "POST"), (":scheme", "http"), (":authority", "x"),
                                     (":path", EXEC), ("content-type", "application/grpc")])
            body = b"\x00" + (1024 * 1024).to_bytes(4, "big") + b"A" * (900 * 1024)
            off = 0
            while off < len(body):
                w = min(raw.c.local_flow_control_window(sid), raw.c.max_outbound_frame_size, len(body) - off)
                if w <= 0:
                    raw.read(lambda e: isinstance(e, h2.events.WindowUpdated), timeout=5)
                    raw.events.clear()
                    continue
                raw.c.send_data(sid, body[off:off + w])
                off += w
                raw.flush()
        raws.append(raw)
    t0 = time.monotonic()
    assert g.metric("wsgate_grpc_streams") >= 1
    for raw in raws:
        e = raw.read(lambda e: isinstance(e, h2.events.StreamReset), timeout=10)
        assert e is not None and e.error_code == h2.errors.ErrorCodes.CANCEL, e
    gw.wait_until(lambda: g.metric("wsgate_grpc_streams") == 0, timeout=10, what="half-open streams reset")
    for raw in raws:
        assert raw.read(lambda e: False, timeout=15) is None  # EOF: the connection was closed
        raw.close()
    assert time.monotonic() - t0 < 15
    grown = rss_kib(g.pid) - before
    assert grown < 32 * 1024, f"RSS grew {grown} KiB"
    gw.wait_until(lambda: "grpc request not complete in time" in g.stderr(), what="logged")
    # A client that keeps starting requests it never finishes cannot hold
    # the connection past the idle deadline (nothing was ever dispatched).
    raw = Raw(g.grpc_port)
    t0 = time.monotonic()
    closed = False
    while time.monotonic() - t0 < 12 and not closed:
        try:
            raw.request(EXEC, b"\x0a", end=False)
        except (OSError, h2.exceptions.ProtocolError):
            break
        try:
            closed = raw.read(lambda e: isinstance(e, h2.events.ConnectionTerminated), timeout=0.5) is not None
        except AssertionError:
            pass  # nothing yet
        except h2.exceptions.ProtocolError:
            closed = True  # GOAWAY then the streams' RST_STREAM in one read: h2 says its connection is closed
    assert closed and time.monotonic() - t0 < 8, time.monotonic() - t0
    raw.close()
    with channel(g) as ch:
        assert health(ch) == "SERVING"


@pytest.mark.parametrize("kind", ["ping", "settings", "reset"])
def test_floods_refused(make_gateway, key, kind):
    g = gateway(make_gateway, key, GATEWAY_WORKERS="1")
    raw = Raw(g.grpc_port)
    for i in range(400):
        if kind == "ping":
            raw.c.ping(i.to_bytes(8, "big"))
        elif kind == "settings":
            raw.c.update_settings({h2.settings.SettingCodes.MAX_FRAME_SIZE: 16384 + i})
        else:
            sid = raw.request(HEALTH, b"", end=False)
            raw.c.reset_stream(sid)
        raw.flush()
    e = raw.read(lambda e: isinstance(e, h2.events.ConnectionTerminated))
    assert e is not None and e.error_code == h2.errors.ErrorCodes.ENHANCE_YOUR_CALM, e
    raw.close()
    gw.wait_until(lambda: g.metric("wsgate_grpc_floods_total") >= 1, what="flood counted")
    with channel(g) as ch:
        assert health(ch) == "SERVING"


def test_malformed_frames_and_stream_limit(make_gateway, key):
    g = gateway(make_gateway, key, GATEWAY_WORKERS="1")
    # Not HTTP/2 at all: the connection ends, the gateway serves on.
    s = socket.create_connection(("127.0.0.1", g.grpc_port), timeout=5)
    s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" + b"\x00" * 100)
    got = b""
    while True:
        try:
            d = s.recv(4096)
        except ConnectionResetError:
            break
        if not d:
            break
        got += d
    s.close()
    # A frame with a bad length after a valid preface: GOAWAY (FRAME_SIZE_ERROR).
    raw = Raw(g.grpc_port)
    raw.s.sendall(b"\x00\x00\x08\x06\x00\x00\x00\x00\x00" + b"\x00" * 4)  # PING with 4 bytes, says 8... short
    raw.s.sendall(b"\xff\xff\xff\x00\x00\x00\x00\x00\x01")  # DATA of 16 MiB on stream 1 (idle)
    e = raw.read(lambda e: isinstance(e, h2.events.ConnectionTerminated))
    assert e is None or e.error_code != h2.errors.ErrorCodes.NO_ERROR
    raw.close()
    # The advertised stream limit, and streams that never read stay bounded.
    raw = Raw(g.grpc_port, {h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 0})
    raw.read(lambda e: isinstance(e, h2.events.RemoteSettingsChanged))
    assert raw.c.remote_settings.max_concurrent_streams == 100
    assert raw.c.remote_settings.max_header_list_size == 16384
    ids = [raw.request(HEALTH, b"") for _ in range(100)]
    for sid in ids:
        raw.read(lambda e, sid=sid: isinstance(e, h2.events.ResponseReceived) and e.stream_id == sid)
    raw.close()
    with channel(g) as ch:
        assert health(ch) == "SERVING"


# ------------------------------------------------------------ start, keygen

def test_start_fails_without_key(tmp_path):
    env = gw.base_env()
    env.update({"GATEWAY_PUBLIC_HTTP_ADDR": f"127.0.0.1:{gw.free_port()}",
                "GATEWAY_AUTHENTICATED_GRPC_ADDR": f"127.0.0.1:{gw.free_port()}"})
    for key in (None, str(tmp_path / "missing.key")):
        if key:
            env["GATEWAY_RESPONSE_SIGNER_PRIVATE_KEY_PEM_PATH"] = key
        r = subprocess.run([gw.wsgate_bin(), "serve"], env=env, capture_output=True, timeout=20)
        assert r.returncode == 2, r
        lines = r.stderr.decode().strip().splitlines()
        assert len(lines) == 1, lines
        assert "GATEWAY_RESPONSE_SIGNER_PRIVATE_KEY_PEM_PATH" in lines[0]
    # not an Ed25519 key
    rsa = tmp_path / "rsa.key"
    subprocess.run(["openssl", "genpkey", "-algorithm", "RSA", "-out", str(rsa)], check=True, capture_output=True)
    env["GATEWAY_RESPONSE_SIGNER_PRIVATE_KEY_PEM_PATH"] = str(rsa)
    r = subprocess.run([gw.wsgate_bin(), "serve"], env=env, capture_output=True, timeout=20)
    assert r.returncode == 2 and "is not an Ed25519 key" in r.stderr.decode(), r


def test_default_start_without_key_runs_without_grpc(make_gateway):
    """A plain start (GATEWAY_AUTHENTICATED_GRPC_ADDR not set, no key) serves
    WebSockets with gRPC off and one warning saying how to turn it on; only
    an operator who asked for gRPC explicitly gets the exit 2 above."""
    g = gw.Gateway(start=False)
    g.env.pop("GATEWAY_AUTHENTICATED_GRPC_ADDR", None)
    g.env.pop("GATEWAY_RESPONSE_SIGNER_PRIVATE_KEY_PEM_PATH", None)
    g.start()
    try:
        assert g.get("/healthz").status == 200
        line = g.wait_log(lambda l: l.get("msg") == "gRPC off: no response signer key")[0]
        assert line["level"] == "warn" and "GATEWAY_RESPONSE_SIGNER_PRIVATE_KEY_PEM_PATH" in line["hint"]
    finally:
        assert g.stop() == 0, g.stderr()[-2000:]


def test_keygen(tmp_path):
    r = gw.run_cli(["keygen", "--out", str(tmp_path / "k")])
    assert r.returncode == 0, r
    assert stat.S_IMODE(os.stat(tmp_path / "k.key").st_mode) == 0o600
    assert (tmp_path / "k.key").read_text().startswith("-----BEGIN PRIVATE KEY-----")
    assert (tmp_path / "k.pub").read_text().startswith("-----BEGIN PUBLIC KEY-----")
    again = gw.run_cli(["keygen", "--out", str(tmp_path / "k")])
    assert again.returncode != 0 and b"File exists" in again.stderr


# ------------------------------------------------------------ /v1/auth/...

def test_auth_routes_unconfigured_503(make_gateway):
    g = make_gateway()
    for method, path in (("POST", "/v1/auth/login"), ("GET", "/v1/auth/refresh?x=1")):
        r = wsraw.http_request(g.port, method, path, body=b"{}" if method == "POST" else b"",
                               headers={"X-Correlation-ID": "corr-auth"})
        assert r.status == 503, r
        body = json.loads(r.body)
        assert body["code"] == "service_unavailable" and body["message"] == "no auth upstream is configured"
        assert body["correlation_id"] == "corr-auth" == r.header("X-Correlation-ID")
        assert body["details"]["trace_id"] == r.header("X-Trace-ID")
    assert [l["path"] for l in g.logs() if l.get("msg") == "auth request refused: no auth upstream"] == [
        "/v1/auth/login", "/v1/auth/refresh"]


def test_auth_routes_proxied(make_gateway, tmp_path, downstream):
    routes = tmp_path / "routes.json"
    routes.write_text(json.dumps({"routes": [
        {"path": "/v1/auth/", "kind": "auth", "upstream": f"http://127.0.0.1:{downstream.port}"}]}))
    g = make_gateway(env={"GATEWAY_ROUTES_FILE": str(routes)})
    r = wsraw.http_request(g.port, "POST", "/v1/auth/login", body=b'{"u":1}',
                           headers={"Content-Type": "application/json", "X-Correlation-ID": "corr-login"})
    assert r.status == 200 and r.body == b'ok:{"u":1}', r
    path, headers, body = downstream.seen[0]
    assert path == "/v1/auth/login" and body == b'{"u":1}' and headers["X-Correlation-ID"] == "corr-login"
    assert headers["X-Forwarded-For"] == "127.0.0.1"


def test_tls_alpn_h2(make_gateway, key, tls_cert):
    port = gw.free_port()
    g = make_gateway(env={"GATEWAY_AUTHENTICATED_GRPC_ADDR": f"127.0.0.1:{port}",
                          "GATEWAY_RESPONSE_SIGNER_PRIVATE_KEY_PEM_PATH": f"{key}.key"}, tls=tls_cert)
    with open(tls_cert[0], "rb") as f:
        creds = grpc.ssl_channel_credentials(root_certificates=f.read())
    with grpc.secure_channel(f"localhost:{port}", creds) as ch:
        assert health(ch) == "SERVING"
    # A TLS client that does not offer h2 is refused in the handshake.
    import ssl
    ctx = ssl.create_default_context(cafile=tls_cert[0])
    ctx.set_alpn_protocols(["http/1.1"])
    with pytest.raises(ssl.SSLError) as e:
        ctx.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=5), server_hostname="localhost")
    assert "no application protocol" in str(e.value), e.value
    assert g.get("/healthz").status == 200


def test_grpc_certificate_rotates_on_sighup(make_gateway, key, tmp_path):
    """SIGHUP rotates the gRPC listener's certificate with the public one
    (the same files): a new h2 client sees the new serial; a broken pair
    leaves both on the old one."""
    from test_tls import _install, _make_pair

    def grpc_serial(port):
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        ctx.set_alpn_protocols(["h2"])
        with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
            with ctx.wrap_socket(raw, server_hostname="localhost") as s:
                assert s.selected_alpn_protocol() == "h2"
                der = s.getpeercert(binary_form=True)
        r = subprocess.run(["openssl", "x509", "-inform", "der", "-noout", "-serial"], input=der,
                           capture_output=True, check=True, timeout=20)
        return r.stdout.decode().strip().split("=", 1)[1].upper()
    d = str(tmp_path)
    a, b, c = _make_pair(d, "a", "0xA1A1"), _make_pair(d, "b", "0xB2B2"), _make_pair(d, "c", "0xC3C3")
    cert, kpath = os.path.join(d, "tls.crt"), os.path.join(d, "tls.key")
    _install(a[0], cert)
    _install(a[1], kpath)
    port = gw.free_port()
    g = make_gateway(env={"GATEWAY_AUTHENTICATED_GRPC_ADDR": f"127.0.0.1:{port}",
                          "GATEWAY_RESPONSE_SIGNER_PRIVATE_KEY_PEM_PATH": f"{key}.key"}, tls=(cert, kpath))
    assert grpc_serial(port) == "A1A1"
    _install(b[0], cert)
    _install(b[1], kpath)
    g.signal(signal.SIGHUP)
    g.wait_log(lambda l: l.get("msg") == "tls certificate reloaded", timeout=10)
    gw.wait_until(lambda: grpc_serial(port) == "B2B2", timeout=10, what="the gRPC listener's new serial")
    _install(c[1], kpath)  # mismatched: refused, B stays on both
    g.signal(signal.SIGHUP)
    g.wait_log(lambda l: l.get("msg") == "tls reload refused; keeping the old certificate", timeout=10)
    assert grpc_serial(port) == "B2B2"
