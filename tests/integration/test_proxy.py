"""HTTP reverse proxy through "proxy" routes (DESIGN.md section 3): bodies
streamed both ways, keep-alive and pipelining toward the client, a keep-alive
pool toward the upstream, forwarded headers, hop-by-hop filtering, upstream
failures, 100-continue, request smuggling defences and timeouts.

The upstream is a small raw-asyncio HTTP/1.1 server run as a separate process
by this very file (`python3 test_proxy.py http-upstream ...`, see the bottom).
It records every request it sees (the head as soon as it arrives, then the
complete request with its body's length and SHA-256, and the client port of
its connection) as JSON lines, so tests can assert what did, and what did
not, reach it.
"""

import asyncio
import hashlib
import json
import os
import re
import socket
import sys
import tempfile
import time
import uuid

import pytest

import gw
import wsraw

PY = "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else sys.executable
HERE = os.path.abspath(__file__)
TRACE = "0af7651916cd43dd8448eb211c80319c"


# ============================================================ helpers

def start_http_upstream(port=None, unix=None):
    port = port or gw.free_port()
    argv = [PY, HERE, "http-upstream", "--port", str(port)]
    if unix:
        argv += ["--unix", unix]
    up = gw.Upstream(argv)
    up.port = port
    up.url = f"http://127.0.0.1:{port}"
    return up


def mark():
    return uuid.uuid4().hex[:12]


def reqs(up, pred=lambda e: True, ev="req"):
    return [e for e in up.events() if e.get("ev") == ev and pred(e)]


def hdr(event, name):
    vals = [v for k, v in event["headers"] if k.lower() == name.lower()]
    return vals[0] if len(vals) == 1 else (vals or None)


def envelope(r, status, code):
    assert r.status == status, r
    body = json.loads(r.body)
    assert body["code"] == code, body
    assert body["correlation_id"] == r.header("X-Correlation-ID"), r
    assert body["details"]["trace_id"] == r.header("X-Trace-ID"), r
    return body


def raw(g, data, timeout=5.0):
    """Sends raw bytes on a fresh connection; returns (conn, response or None
    when the gateway closed without answering)."""
    c = wsraw.Conn("127.0.0.1", g.port, timeout=timeout)
    c.send(data)
    try:
        return c, c.read_response(timeout=timeout)
    except wsraw.Closed:
        return c, None


def request_bytes(method, path, headers=(), body=b"", host="gw.test"):
    lines = [f"{method} {path} HTTP/1.1"]
    if host is not None:
        lines.append(f"Host: {host}")
    lines += [f"{k}: {v}" for k, v in headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def chunked(body, sizes):
    out, i = b"", 0
    for n in sizes:
        out += b"%x\r\n" % n + body[i:i + n] + b"\r\n"
        i += n
    assert i == len(body)
    return out + b"0\r\n\r\n"


# ============================================================ fixtures

@pytest.fixture(scope="module")
def env():
    d = tempfile.mkdtemp(prefix="wsgate-proxy-")
    sock = os.path.join(d, "up.sock")
    up = start_http_upstream(unix=sock)
    routes = [
        {"path": "/api/", "kind": "proxy", "upstream": up.url},
        {"path": "/strip/", "kind": "proxy", "upstream": up.url, "strip_prefix": True},
        {"path": "/hang/", "kind": "proxy", "upstream": up.url, "read_timeout": "1s"},
        {"path": "/down/", "kind": "proxy", "upstream": f"http://127.0.0.1:{gw.free_port()}"},
        {"path": "/unix/", "kind": "proxy", "upstream": "unix:" + sock},
        {"path": "/u/", "kind": "proxy", "user_header": "X-User", "users": {"alice": up.url}},
    ]
    path = gw.write_routes(os.path.join(d, "routes.json"), routes)
    g = gw.Gateway({"GATEWAY_ROUTES_FILE": path, "GATEWAY_HANDSHAKE_TIMEOUT": "1s"})
    yield {"g": g, "up": up, "dir": d, "routes": path}
    rc = g.stop()
    up.stop()
    for f in os.listdir(d):
        os.unlink(os.path.join(d, f))
    os.rmdir(d)
    assert not g.sanitizer_errors(), g.stderr()[-6000:]
    assert rc == 0, g.stderr()[-3000:]


@pytest.fixture
def g(env):
    return env["g"]


@pytest.fixture
def up(env):
    return env["up"]


# ============================================================ basics

def test_get_whole_path_forwarded(g, up):
    m = mark()
    r = g.get(f"/api/echo?m={m}&x=1")
    assert r.status == 200, r
    info = r.json()
    assert info["method"] == "GET" and info["target"] == f"/api/echo?m={m}&x=1", info
    assert r.header("X-Upstream") == "yes"
    assert len(reqs(up, lambda e: e["target"] == f"/api/echo?m={m}&x=1")) == 1


def test_strip_prefix(g, up):
    m = mark()
    r = g.get(f"/strip/echo?m={m}")
    assert r.status == 200 and r.json()["target"] == f"/echo?m={m}", r
    r = g.get("/strip")
    assert r.status == 200 and r.json()["target"] == "/", r


def test_forwarded_and_end_to_end_headers(g, up):
    m = mark()
    c = f"px-{m}"
    r = g.get(f"/api/echo?m={m}", headers={
        "X-Forwarded-For": "198.51.100.9",
        "X-Correlation-ID": c,
        "traceparent": f"00-{TRACE}-b7ad6b7169203331-01",
        "Cookie": "a=1; b=2",
        "Authorization": "Bearer e2e",
        "Origin": "https://front.test",
        "X-Custom": "kept",
        "X-Wsgate-User-Id": "forged",
    })
    assert r.status == 200, r
    assert r.header("X-Correlation-ID") == c, r
    ev = reqs(up, lambda e: e["target"] == f"/api/echo?m={m}")[0]
    assert hdr(ev, "X-Forwarded-For") == "198.51.100.9, 127.0.0.1", ev
    assert hdr(ev, "X-Forwarded-Proto") == "http", ev
    assert hdr(ev, "X-Forwarded-Host") == f"127.0.0.1:{g.port}", ev
    assert hdr(ev, "X-Correlation-ID") == c, ev
    tp = hdr(ev, "traceparent")
    assert tp and re.match(rf"^00-{TRACE}-[0-9a-f]{{16}}-[0-9a-f]{{2}}$", tp), ev
    for k, v in [("Cookie", "a=1; b=2"), ("Authorization", "Bearer e2e"), ("Origin", "https://front.test"),
                 ("X-Custom", "kept")]:
        assert hdr(ev, k) == v, (k, ev)
    assert not [k for k, _ in ev["headers"] if k.lower().startswith("x-wsgate-")], ev


def test_correlation_id_generated_when_missing(g, up):
    m = mark()
    r = g.get(f"/api/echo?m={m}")
    mine = r.header("X-Correlation-ID")
    assert mine, r
    ev = reqs(up, lambda e: e["target"] == f"/api/echo?m={m}")[0]
    assert hdr(ev, "X-Correlation-ID") == mine, ev
    assert hdr(ev, "traceparent"), ev
    assert hdr(ev, "X-Forwarded-For") == "127.0.0.1", ev


def test_hop_by_hop_dropped_toward_upstream(g, up):
    m = mark()
    data = request_bytes("GET", f"/api/echo?m={m}", [
        ("Connection", "keep-alive, X-Hop"), ("X-Hop", "secret"), ("Keep-Alive", "timeout=5"),
        ("TE", "trailers"), ("Trailer", "X-Sum"), ("Proxy-Authorization", "Basic eDp5"), ("X-End", "kept")])
    c, r = raw(g, data)
    c.close()
    assert r is not None and r.status == 200, r
    ev = reqs(up, lambda e: e["target"] == f"/api/echo?m={m}")[0]
    names = [k.lower() for k, _ in ev["headers"]]
    for h in ("keep-alive", "te", "trailer", "proxy-authorization"):
        assert h not in names, (h, ev["headers"])
    assert "x-hop" not in (hdr(ev, "Connection") or "").lower()
    assert hdr(ev, "X-End") == "kept"


def test_connection_listed_header_not_forwarded(g, up):
    m = mark()
    c, r = raw(g, request_bytes("GET", f"/api/echo?m={m}", [("Connection", "keep-alive, X-Hop"), ("X-Hop", "s")]))
    c.close()
    assert r is not None and r.status == 200, r
    ev = reqs(up, lambda e: e["target"] == f"/api/echo?m={m}")[0]
    assert "x-hop" not in [k.lower() for k, _ in ev["headers"]], ev["headers"]


@pytest.mark.parametrize("nominated", ["Host", "X-Forwarded-For", "X-Forwarded-Proto", "X-Forwarded-Host",
                                       "X-Correlation-ID", "traceparent",
                                       "Host, X-Forwarded-For, X-Forwarded-Host, X-Correlation-ID, traceparent"])
def test_connection_cannot_remove_gateway_headers(g, up, nominated):
    """Review of issue 8: `Connection: Host` dropped X-Forwarded-Host. A
    client's Connection header removes its own hop-by-hop headers, never the
    forwarding set the gateway adds."""
    m = mark()
    c, r = raw(g, request_bytes("GET", f"/api/echo?m={m}", [("Connection", f"keep-alive, {nominated}"),
                                                            ("X-Forwarded-For", "198.51.100.9"),
                                                            ("X-Correlation-ID", f"cn-{m}")]))
    c.close()
    assert r is not None and r.status == 200, r
    ev = reqs(up, lambda e: e["target"] == f"/api/echo?m={m}")[0]
    assert hdr(ev, "X-Forwarded-Host") == "gw.test", ev
    assert hdr(ev, "X-Forwarded-Proto") == "http", ev
    assert hdr(ev, "X-Forwarded-For") in ("127.0.0.1", "198.51.100.9, 127.0.0.1"), ev
    assert hdr(ev, "X-Correlation-ID") == r.header("X-Correlation-ID"), ev
    assert hdr(ev, "traceparent"), ev
    assert hdr(ev, "Host"), ev  # the upstream's own, never the client's


def test_connection_listed_response_header_not_passed(g):
    r = g.get("/api/hop")
    assert r.status == 200, r
    assert r.header("X-Up-Hop") is None, r


def test_hop_by_hop_dropped_from_response(g):
    r = g.get("/api/hop")
    assert r.status == 200, r
    assert r.header("X-End") == "kept", r
    assert r.header("Keep-Alive") is None, r
    assert "x-up-hop" not in (r.header("Connection") or "").lower(), r
    assert r.body == b"hop body"


def test_per_user_http(g, up):
    m = mark()
    r = g.get(f"/u/echo?m={m}", headers={"X-User": "alice@corp"})
    assert r.status == 200 and r.json()["target"] == f"/u/echo?m={m}", r
    envelope(g.get("/u/echo", headers={"X-User": "eve@corp"}), 403, "unknown_user")


# ============================================================ bodies

def test_request_body_content_length(g, up):
    body = os.urandom(3 * 1024 * 1024 + 17)
    r = wsraw.http_request(g.port, "POST", "/api/sum", body=body, timeout=15)
    assert r.status == 200, r
    info = r.json()
    assert info["body_len"] == len(body) and info["sha256"] == hashlib.sha256(body).hexdigest(), info


@pytest.mark.parametrize("sizes", [[1, 2, 3, 1000, 50000], [65536] * 20, [7]])
def test_request_body_chunked(g, up, sizes):
    body = os.urandom(sum(sizes))
    data = request_bytes("POST", "/api/sum", [("Transfer-Encoding", "chunked"), ("Connection", "close")],
                         chunked(body, sizes))
    c, r = raw(g, data, timeout=15)
    c.close()
    assert r is not None and r.status == 200, r
    info = r.json()
    assert info["body_len"] == len(body) and info["sha256"] == hashlib.sha256(body).hexdigest(), info


def test_request_body_chunk_extensions_and_trailers(g):
    data = request_bytes("POST", "/api/sum", [("Transfer-Encoding", "chunked"), ("Connection", "close")],
                         b"3;name=val\r\nabc\r\n2\r\nde\r\n0\r\nX-Trailer: t\r\n\r\n")
    c, r = raw(g, data)
    c.close()
    assert r is not None and r.status == 200, r
    info = r.json()
    assert info["body_len"] == 5 and info["sha256"] == hashlib.sha256(b"abcde").hexdigest(), info


def test_request_body_streamed(g, up):
    m = mark()
    body = os.urandom(2 * 1024 * 1024)
    c = wsraw.Conn("127.0.0.1", g.port, timeout=10)
    try:
        c.send(request_bytes("POST", f"/api/sum?m={m}", [("Content-Length", str(len(body)))]) + body[:4096])
        # The upstream has the head (and is reading the body) before the client sent it all.
        up.wait_event(lambda e: e.get("ev") == "head" and e["target"] == f"/api/sum?m={m}", timeout=5,
                      what="streamed request head")
        assert not reqs(up, lambda e: e["target"] == f"/api/sum?m={m}")
        c.send(body[4096:])
        r = c.read_response(timeout=10)
        assert r.status == 200 and r.json()["sha256"] == hashlib.sha256(body).hexdigest(), r
    finally:
        c.close()


def test_response_chunked(g):
    r = g.get("/api/chunked")
    assert r.status == 200, r
    assert r.body == b"hello chunked world" * 100


def test_response_close_delimited(g):
    r = g.get("/api/close")
    assert r.status == 200, r
    assert r.body == b"close-delimited body\n" * 2000


def test_response_close_delimited_keepalive_client(g):
    # A keep-alive client still gets a framed (or closed) answer it can read in full.
    c = wsraw.Conn("127.0.0.1", g.port, timeout=10)
    try:
        c.send(request_bytes("GET", "/api/close"))
        r = c.read_response(timeout=10)
        assert r.status == 200 and r.body == b"close-delimited body\n" * 2000, r
    finally:
        c.close()


def test_response_big_content_length(g):
    n = 24 * 1024 * 1024
    r = g.get(f"/api/big?n={n}", timeout=30)
    assert r.status == 200, r
    assert int(r.header("Content-Length")) == n
    assert len(r.body) == n and r.body == (b"0123456789abcdef" * (n // 16)), "body differs"


def test_response_streamed(g, tmp_path):
    # The upstream sends its second chunk only once the test has received the
    # first (it waits for the flag file): a gateway that waited for the whole
    # response would never deliver "first" and the read below would time out.
    flag = tmp_path / "drip-go"
    c = wsraw.Conn("127.0.0.1", g.port, timeout=10)
    try:
        c.send(request_bytes("GET", f"/api/drip?until={flag}", [("Connection", "close")]))
        t0 = time.monotonic()
        head = c.read_until(b"\r\n\r\n", t0 + 10)
        assert b" 200 " in head.split(b"\r\n")[0], head
        got = bytearray(c.buf)
        c.buf.clear()
        while b"first" not in got:
            c._fill(t0 + 10)
            got += c.buf
            c.buf.clear()
        assert b"second" not in got, got
        flag.touch()
        rest = c.wait_closed(10)
        assert rest, rest
        body = bytes(got) + rest.data
        assert body == b"5\r\nfirst\r\n6\r\nsecond\r\n0\r\n\r\n", body
    finally:
        c.close()


def test_head(g):
    c = wsraw.Conn("127.0.0.1", g.port)
    try:
        c.send(request_bytes("HEAD", "/api/echo?h=1"))
        r = c.read_response(head_only=True)
        assert r.status == 200, r
        assert int(r.header("Content-Length")) > 0, r
        # No body bytes follow: the next response on the connection parses.
        c.send(request_bytes("GET", "/api/echo?h=2"))
        r2 = c.read_response()
        assert r2.status == 200 and r2.json()["target"] == "/api/echo?h=2", r2
    finally:
        c.close()


@pytest.mark.parametrize("status", [204, 304])
def test_no_body_statuses(g, status):
    c = wsraw.Conn("127.0.0.1", g.port)
    try:
        c.send(request_bytes("GET", f"/api/{status}"))
        r = c.read_response()
        assert r.status == status, r
        assert r.header("Transfer-Encoding") is None, r
        assert r.header("Content-Length") in (None, "0"), r
        c.send(request_bytes("GET", "/api/echo?after=1"))
        r2 = c.read_response()
        assert r2.status == 200 and r2.json()["target"] == "/api/echo?after=1", r2
    finally:
        c.close()


# ============================================================ connections

def test_keepalive_and_pipelining(g):
    c = wsraw.Conn("127.0.0.1", g.port)
    try:
        for i in range(3):
            c.send(request_bytes("GET", f"/api/echo?seq={i}"))
            r = c.read_response()
            assert r.status == 200 and r.json()["target"] == f"/api/echo?seq={i}", r
        # Pipelined: all in one write, answers in order.
        c.send(b"".join(request_bytes("GET", f"/api/echo?pipe={i}") for i in range(5)) +
               request_bytes("POST", "/api/sum?pipe=5", [("Content-Length", "3")], b"abc"))
        for i in range(5):
            r = c.read_response()
            assert r.status == 200 and r.json()["target"] == f"/api/echo?pipe={i}", (i, r)
        r = c.read_response()
        assert r.status == 200 and r.json()["target"] == "/api/sum?pipe=5" and r.json()["body_len"] == 3, r
    finally:
        c.close()


def test_upstream_pool_reused(g, up):
    m = mark()
    c = wsraw.Conn("127.0.0.1", g.port)
    try:
        for i in range(6):
            c.send(request_bytes("GET", f"/api/echo?pool={m}&i={i}"))
            assert c.read_response().status == 200
            time.sleep(0.02)
    finally:
        c.close()
    seen = reqs(up, lambda e: f"pool={m}" in e["target"])
    assert len(seen) == 6
    ports = {e["port"] for e in seen}
    assert len(ports) == 1, f"six sequential requests used {len(ports)} upstream connections: {ports}"


def test_unix_socket_upstream(g):
    r = g.get("/unix/echo?u=1")
    assert r.status == 200 and r.json()["target"] == "/unix/echo?u=1", r
    assert r.json()["unix"] is True
    body = os.urandom(100_000)
    r = wsraw.http_request(g.port, "POST", "/unix/sum", body=body)
    assert r.status == 200 and r.json()["sha256"] == hashlib.sha256(body).hexdigest(), r


def test_expect_100_continue(g):
    body = b"x" * 5000
    c = wsraw.Conn("127.0.0.1", g.port)
    try:
        c.send(request_bytes("POST", "/api/sum", [("Content-Length", str(len(body))),
                                                  ("Expect", "100-continue")]))
        interim = c.read_response(timeout=3)
        assert interim.status == 100 and interim.version == "HTTP/1.1", interim
        c.send(body)
        r = c.read_response()
        assert r.status == 200 and r.json()["body_len"] == len(body), r
    finally:
        c.close()


# ============================================================ upstream failures

def test_upstream_down_502(g):
    envelope(g.get("/down/x"), 502, "upstream_unavailable")


def test_upstream_never_answers_504(g):
    t0 = time.monotonic()
    r = g.get("/hang/hang", timeout=10)
    took = time.monotonic() - t0
    envelope(r, 504, "upstream_timeout")
    assert 0.8 <= took < 4, took


def test_upstream_malformed_response_502(g):
    envelope(g.get("/api/malformed"), 502, "bad_upstream_response")


# ============================================================ chunked body, then a pipelined request

def _split_points(data, body_start, body_end):
    """Every split point inside the chunked body (and its edges) plus a dense
    sample of the head before and the pipelined request after it."""
    pts = set(range(body_start, body_end + 1))
    pts.update(range(1, body_start, 11))
    pts.update(range(body_end, len(data), 9))
    return sorted(p for p in pts if 0 < p < len(data))


def test_chunked_body_then_pipelined_request_every_split(g, up):
    """Issue 8 item 1: a keep-alive chunked POST followed, on the same
    connection, by a GET whose header value looks like a request line. Sent
    in two writes split at every point of the body (the last chunk alone in a
    read included): the upstream must get the POST with its body and then the
    GET exactly as sent, never a request for the "hidden" path, and the
    client gets two 200s."""
    m = mark()
    body = b"wiki" + b"pedia"
    wire = b"4\r\nwiki\r\n5;ext=1\r\npedia\r\n0\r\nX-Sum: 9\r\n\r\n"
    sha = hashlib.sha256(body).hexdigest()
    failures = []
    head = request_bytes("POST", f"/api/sum?m={m}&k=K", [("Transfer-Encoding", "chunked")])
    nxt = request_bytes("GET", f"/api/visible?m={m}&k=K", [("X-Smuggle", f"GET /api/hidden-{m} HTTP/1.1")])
    points = _split_points(head + wire + nxt, len(head), len(head) + len(wire))
    assert len(points) > 50
    for k in points:
        h = head.replace(b"k=K", b"k=%d" % k)
        n = nxt.replace(b"k=K", b"k=%d" % k)
        data = h + wire + n
        c = wsraw.Conn("127.0.0.1", g.port, timeout=10)
        try:
            c.send(data[:k])
            time.sleep(0.02)  # a separate read for the second part
            c.send(data[k:])
            r1 = c.read_response(timeout=10)
            r2 = c.read_response(timeout=10)
        except (wsraw.Closed, wsraw.Timeout) as e:
            failures.append((k, repr(e)))
            continue
        finally:
            c.close()
        if r1.status != 200 or r1.json()["sha256"] != sha or r2.status != 200 or \
                r2.json()["target"] != f"/api/visible?m={m}&k={k}":
            failures.append((k, r1.status, r1.body[:200], r2.status, r2.body[:200]))
    assert not failures, failures[:5]
    # What the upstream saw: every POST with its body, every GET as sent with
    # its header intact, never the hidden path.
    for k in points:
        posts = reqs(up, lambda e: e["target"] == f"/api/sum?m={m}&k={k}")
        gets = reqs(up, lambda e: e["target"] == f"/api/visible?m={m}&k={k}")
        assert len(posts) == 1 and posts[0]["sha256"] == sha, (k, posts)
        assert len(gets) == 1 and hdr(gets[0], "X-Smuggle") == f"GET /api/hidden-{m} HTTP/1.1", (k, gets)
    hidden = [e for e in up.events() if e.get("ev") in ("head", "req") and "hidden" in e.get("target", "")]
    assert not hidden, hidden[:3]
    assert len([e for e in up.events() if m in e.get("target", "")]) == 4 * len(points)


def test_chunked_body_last_chunk_alone_then_plain_get(g, up):
    """The report's second symptom: a plain pipelined GET after a body whose
    last chunk came in a read of its own got 400."""
    m = mark()
    c = wsraw.Conn("127.0.0.1", g.port, timeout=10)
    try:
        c.send(request_bytes("POST", f"/api/sum?m={m}", [("Transfer-Encoding", "chunked")]) + b"3\r\nabc\r\n")
        up.wait_event(lambda e: e.get("ev") == "head" and e["target"] == f"/api/sum?m={m}", timeout=5,
                      what="the POST's head upstream")
        c.send(b"0\r\n\r\n" + request_bytes("GET", f"/api/echo?m={m}&after=1"))
        r1 = c.read_response(timeout=10)
        r2 = c.read_response(timeout=10)
        assert r1.status == 200 and r1.json()["body_len"] == 3, r1
        assert r2.status == 200 and r2.json()["target"] == f"/api/echo?m={m}&after=1", r2
    finally:
        c.close()


# ============================================================ what reaches the upstream, whole

@pytest.mark.parametrize("cookie_len", [8200, "whole head at the 16 KiB limit"])
def test_big_header_forwarded_with_gateway_headers(g, up, cookie_len):
    """Issue 8 item 7: a head the gateway accepts (up to
    GATEWAY_MAX_HEADER_BYTES, 16 KiB here) goes upstream whole, with every
    forwarding header of the gateway's own (a head near the limit was
    refused with 431: the upstream head had 16 KiB of room in all)."""
    m = mark()
    corr = f"big-{m}"

    def head(cookie):
        return request_bytes("GET", f"/api/echo?m={m}", [
            ("Cookie", cookie), ("X-Correlation-ID", corr), ("traceparent", f"00-{TRACE}-b7ad6b7169203331-01"),
            ("X-After", "last")])
    if isinstance(cookie_len, str):
        cookie_len = 16384 - len(head(""))
    cookie = "s=" + "c" * (cookie_len - 2)
    data = head(cookie)
    assert len(data) <= 16384
    c, r = raw(g, data)
    c.close()
    assert r is not None and r.status == 200, r
    ev = reqs(up, lambda e: e["target"] == f"/api/echo?m={m}")[0]
    assert hdr(ev, "Cookie") == cookie
    assert hdr(ev, "X-After") == "last", ev["headers"][-8:]
    assert hdr(ev, "X-Forwarded-For") == "127.0.0.1", ev["headers"][-8:]
    assert hdr(ev, "X-Forwarded-Proto") == "http"
    assert hdr(ev, "X-Correlation-ID") == corr
    assert (hdr(ev, "traceparent") or "").startswith(f"00-{TRACE}-"), ev["headers"][-8:]


def _line_target(n, m):
    """A target of exactly n bytes under /api/echo ending in "&admin=false"."""
    head, tail = f"/api/echo?m={m}&pad=", "&admin=false"
    return head + "a" * (n - len(head) - len(tail)) + tail


def test_long_target_forwarded_whole_then_414(g, up):
    """Issue 8 item 8: a request line of exactly GATEWAY_MAX_REQUEST_LINE_BYTES
    (8 KiB) reaches the upstream whole (it was cut at 4,095 bytes); one byte
    more is refused with 414 and reaches nothing."""
    m = mark()
    limit = 8192
    target = _line_target(limit - len("GET ") - len(" HTTP/1.1"), m)
    c, r = raw(g, request_bytes("GET", target))
    c.close()
    assert r is not None and r.status == 200, r
    assert r.json()["target"] == target
    assert [e["target"] for e in reqs(up, lambda e: m in e["target"])] == [target]
    m2 = mark()
    target = _line_target(limit - len("GET ") - len(" HTTP/1.1") + 1, m2)
    c, r = raw(g, request_bytes("GET", target))
    c.close()
    envelope(r, 414, "uri_too_long")
    _assert_never_reached(g, up, m2)


@pytest.mark.parametrize("sent,seen", [
    ("/api/x/../echo?m=M", "/api/echo?m=M"),
    ("/api/./echo/./?m=M", "/api/echo/?m=M"),
    ("/api/a/b/%2e%2E/../echo?m=M&p=/../", "/api/echo?m=M&p=/../"),
    ("/api/../strip/echo?m=M", "/echo?m=M"),
    ("/strip/../api/echo?m=M", "/api/echo?m=M"),
    ("/strip/x/../../../echo/..?m=M", None),
])
def test_dot_segments_normalised(g, up, sent, seen):
    """Issue 8 item 8: dot segments are removed (RFC 3986 section 5.2.4)
    before the route is matched, so "/api/../strip/x" is a /strip/ request
    and nothing ever reaches an upstream with "/../" in its path."""
    m = mark()
    sent, seen = sent.replace("M", m), seen and seen.replace("M", m)
    c, r = raw(g, request_bytes("GET", sent))
    c.close()
    if seen is None:
        envelope(r, 404, "not_found")
        _assert_never_reached(g, up, m)
        return
    assert r is not None and r.status == 200 and r.json()["target"] == seen, r
    assert [e["target"] for e in reqs(up, lambda e: m in e["target"])] == [seen]


@pytest.mark.parametrize("sent", ["/api/../hidden-M", "/api/%2e%2e/hidden-M", "/api/./a/../../../hidden-M",
                                  "/api/..%2F..%2Fhidden-M/.."])
def test_dot_segments_cannot_escape_a_route(g, up, sent):
    m = mark()
    c, r = raw(g, request_bytes("GET", sent.replace("M", m)))
    c.close()
    if "%2F" in sent:
        # An encoded slash in the path is refused (upstream stacks differ on it).
        envelope(r, 400, "bad_request")
    else:
        envelope(r, 404, "not_found")
    _assert_never_reached(g, up, m)


@pytest.mark.parametrize("sent", [
    "/api/..;/hidden-M", "/api/..%2fhidden-M", "/api/%2e%2e%2fhidden-M", "/api/..%5chidden-M",
    "/api/..\\hidden-M", "/api/echo-M#frag", "/api/.%2e;/hidden-M", "/api/.;/hidden-M", "/api/..%3B/hidden-M",
    "/api/echo?m=M#frag", "/api/a%2Fb-M", "/api/a%5Cb-M",
])
def test_dot_segment_lookalikes_refused(g, up, sent):
    """Review of issue 8, finding 4: targets upstream stacks resolve outside
    the route ("..;" as Tomcat's path parameters, %2F/%5C decoded as
    separators, a raw backslash) and a '#' (no fragment in a request-target,
    RFC 9112 section 3.2) are 400 and never forwarded."""
    m = mark()
    c, r = raw(g, request_bytes("GET", sent.replace("M", m)))
    c.close()
    envelope(r, 400, "bad_request")
    _assert_never_reached(g, up, m)


@pytest.mark.parametrize("sent", ["/api/echo;v=1?m=M", "/api/...;x/echo?m=M", "/api/.x;y?m=M",
                                  "/api/echo?m=M&q=..;/%2F%5C\\"])
def test_dot_segment_lookalike_names_forwarded(g, up, sent):
    """Path parameters on a name, three dots, and anything the query holds
    are not dot segments: forwarded as sent."""
    m = mark()
    sent = sent.replace("M", m)
    c, r = raw(g, request_bytes("GET", sent))
    c.close()
    assert r is not None and r.status == 200 and r.json()["target"] == sent, r


def test_absolute_form_served_as_origin_form(g, up):
    """Issue 8 item 13: GET http://authority/path is served like GET /path
    (RFC 9112 section 3.2.2); the authority never makes the gateway connect
    anywhere: here it names a listener of ours, which sees no connection."""
    bait = socket.socket()
    bait.bind(("127.0.0.1", 0))
    bait.listen(8)
    bait.setblocking(False)
    bport = bait.getsockname()[1]
    try:
        m = mark()
        for scheme in ("http", "HTTPS"):
            target = f"{scheme}://127.0.0.1:{bport}/api/echo?m={m}&s={scheme}"
            c, r = raw(g, request_bytes("GET", target))
            c.close()
            assert r is not None and r.status == 200, r
            assert r.json()["target"] == f"/api/echo?m={m}&s={scheme}", r
            ev = reqs(up, lambda e: e["target"] == f"/api/echo?m={m}&s={scheme}")[0]
            assert hdr(ev, "X-Forwarded-Host") == f"127.0.0.1:{bport}", ev
        # Routing is by path only: an absolute-form path matching no route is 404.
        c, r = raw(g, request_bytes("GET", f"http://127.0.0.1:{bport}/nowhere-{m}"))
        c.close()
        envelope(r, 404, "not_found")
        # A malformed authority (userinfo) is refused.
        c, r = raw(g, request_bytes("GET", f"http://user@127.0.0.1:{bport}/api/echo?m={m}&bad=1"))
        c.close()
        assert r is not None and r.status == 400, r
        _assert_never_reached(g, up, f"m={m}&bad=1")
        # A port out of range (review of issue 8) is refused, 65535 is not.
        for port, status in ((99999, 400), (65536, 400), (65535, 200)):
            c, r = raw(g, request_bytes("GET", f"http://127.0.0.1:{port}/api/echo?m={m}&port={port}"))
            c.close()
            assert r is not None and r.status == status, (port, r)
        _assert_never_reached(g, up, f"m={m}&port=99999")
        _assert_never_reached(g, up, f"m={m}&port=65536")
        with pytest.raises(BlockingIOError):
            bait.accept()
    finally:
        bait.close()


# ============================================================ smuggling defence

HOSTILE = {
    "cl_te": ([("Content-Length", "6"), ("Transfer-Encoding", "chunked")],
              b"0\r\n\r\nGET /api/inner-clte HTTP/1.1\r\nHost: x\r\n\r\n", (400,)),
    "te_cl": ([("Transfer-Encoding", "chunked"), ("Content-Length", "3")],
              b"0\r\n\r\n", (400,)),
    "two_cl": ([("Content-Length", "5"), ("Content-Length", "6")], b"hello!", (400,)),
    "cl_plus": ([("Content-Length", "+5")], b"hello", (400,)),
    "cl_hex": ([("Content-Length", "0x5")], b"hello", (400,)),
    "cl_space": ([("Content-Length", "5 5")], b"hello", (400,)),
    "cl_negative": ([("Content-Length", "-1")], b"", (400,)),
    "cl_huge": ([("Content-Length", "99999999999999999999999")], b"", (400, 413)),
    "te_gzip_chunked": ([("Transfer-Encoding", "gzip, chunked")], b"0\r\n\r\n", (400, 501)),
    "te_unknown": ([("Transfer-Encoding", "x-custom")], b"0\r\n\r\n", (400, 501)),
    "te_chunked_twice": ([("Transfer-Encoding", "chunked, chunked")], b"0\r\n\r\n", (400, 501)),
    "te_not_last": ([("Transfer-Encoding", "chunked, gzip")], b"0\r\n\r\n", (400, 501)),
    "obs_fold": ([("X-Folded", "a\r\n continued")], b"", (400,)),
    "bare_cr": ([("X-Bad", "a\rb")], b"", (400,)),
    "ctl_in_value": ([("X-Bad", "a\x01b")], b"", (400,)),
    "nul_in_value": ([("X-Bad", "a\x00b")], b"", (400,)),
    "space_before_colon": ([("X-Spaced ", "v")], b"", (400,)),
    "space_before_colon_cl": ([("Content-Length ", "5")], b"hello", (400,)),
    "two_hosts": ([("Host", "other.test")], b"", (400,)),
}

HOSTILE_CHUNKED = {
    "chunk_size_garbage": b"zz\r\nhello\r\n0\r\n\r\n",
    "chunk_size_0x": b"0x5\r\nhello\r\n0\r\n\r\n",
    "chunk_size_negative": b"-5\r\nhello\r\n0\r\n\r\n",
    "chunk_size_overflow": b"fffffffffffffffffffff\r\nhello\r\n0\r\n\r\n",
    "chunk_missing_crlf": b"5\r\nhelloXX0\r\n\r\n",
    "chunk_size_empty": b"\r\nhello\r\n0\r\n\r\n",
    "chunk_bad_terminator": b"5\r\nhello\r\n0\r\n\rX",
}


def _assert_never_reached(g, up, tag):
    # A sentinel after the hostile request proves the upstream's log is current.
    m = mark()
    assert g.get(f"/api/echo?sentinel={m}").status == 200
    up.wait_event(lambda e: e.get("ev") == "req" and e["target"] == f"/api/echo?sentinel={m}")
    time.sleep(0.1)
    bad = [e for e in up.events() if e.get("ev") in ("head", "req") and tag in e.get("target", "")]
    assert not bad, f"hostile request reached the upstream: {bad}"
    assert not [e for e in up.events() if "inner" in e.get("target", "")]


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_request_refused(g, up, name):
    headers, body, statuses = HOSTILE[name]
    tag = f"smuggle-{name}-{mark()}"
    host = None if name == "two_hosts" else "gw.test"
    hdrs = ([("Host", "gw.test")] if name == "two_hosts" else []) + headers
    data = request_bytes("POST", f"/api/{tag}", hdrs, body, host=host)
    c, r = raw(g, data)
    try:
        assert r is not None, "closed without an answer"
        assert r.status in statuses, r
        assert c.wait_closed(3), "connection left open after a framing error"
    finally:
        c.close()
    _assert_never_reached(g, up, tag)


@pytest.mark.parametrize("name", sorted(HOSTILE_CHUNKED))
def test_malformed_chunked_body_refused(g, up, name):
    """The body is streamed, so the head may already be upstream when the
    bad chunk is seen: the request must never complete there, and that
    upstream connection must be dropped (never pooled half-written)."""
    tag = f"smuggle-{name}-{mark()}"
    data = request_bytes("POST", f"/api/{tag}", [("Transfer-Encoding", "chunked")], HOSTILE_CHUNKED[name])
    c, r = raw(g, data)
    try:
        assert r is not None, "closed without an answer"
        assert r.status == 400, r
        assert json.loads(r.body)["code"], r
        assert c.wait_closed(3)
    finally:
        c.close()
    m = mark()
    assert g.get(f"/api/echo?sentinel={m}").status == 200
    up.wait_event(lambda e: e.get("ev") == "req" and e["target"] == f"/api/echo?sentinel={m}")
    heads = [e for e in up.events() if e.get("ev") == "head" and tag in e["target"]]
    assert not reqs(up, lambda e: tag in e["target"]), "a malformed chunked request completed upstream"
    if heads:
        up.wait_event(lambda e: e.get("ev") == "aborted" and e["port"] == heads[0]["port"], timeout=3,
                      what="the upstream connection of the refused request to be dropped")


@pytest.mark.parametrize("name", ["chunk_size_garbage", "chunk_missing_crlf"])
def test_malformed_chunked_body_never_forwarded(g, up, name):
    tag = f"smuggle-{name}-{mark()}"
    data = request_bytes("POST", f"/api/{tag}", [("Transfer-Encoding", "chunked")], HOSTILE_CHUNKED[name])
    c, r = raw(g, data)
    c.close()
    assert r is not None and r.status == 400, r
    _assert_never_reached(g, up, tag)


@pytest.mark.parametrize("name,line", [
    ("missing_host", None),
    ("http10_smuggle", "HTTP/1.0"),
])
def test_missing_host_refused(g, up, name, line):
    tag = f"smuggle-{name}-{mark()}"
    if line is None:
        data = request_bytes("GET", f"/api/{tag}", [], host=None)
        c, r = raw(g, data)
        try:
            assert r is not None and r.status == 400, r
        finally:
            c.close()
    else:
        # HTTP/1.0 with Transfer-Encoding: chunked is ambiguous framing.
        data = (f"POST /api/{tag} HTTP/1.0\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n"
                "abc").encode()
        c, r = raw(g, data)
        try:
            assert r is not None and r.status == 400, r
        finally:
            c.close()
    _assert_never_reached(g, up, tag)


# ============================================================ timeouts

def test_header_timeout_408_others_served(g, up):
    tag = f"slowhead-{mark()}"
    slow = wsraw.Conn("127.0.0.1", g.port, timeout=10)
    try:
        t0 = time.monotonic()
        slow.send(f"GET /api/{tag} HTTP/1.1\r\nHost: gw.test\r\nX-Part".encode())
        time.sleep(0.3)
        for i in range(3):  # served normally meanwhile
            r = g.get(f"/api/echo?meanwhile={i}")
            assert r.status == 200, r
        r = slow.read_response(timeout=6)
        took = time.monotonic() - t0
        assert r.status == 408, r
        assert 0.8 <= took < 4, took
        assert slow.wait_closed(3)
    finally:
        slow.close()
    assert not [e for e in up.events() if tag in e.get("target", "")]


def test_stalled_body_closed_by_read_timeout(g, up):
    # On a route with read_timeout 1s a stalled body ends the exchange and
    # the connection. (Seen: 504 upstream_timeout, since the upstream timer
    # fires first; 408 request_timeout would name the culprit better.)
    tag = f"stall-{mark()}"
    c = wsraw.Conn("127.0.0.1", g.port, timeout=10)
    try:
        t0 = time.monotonic()
        c.send(request_bytes("POST", f"/hang/{tag}", [("Content-Length", "100")], b"0123456789"))
        r = c.read_response(timeout=6)
        assert r.status in (408, 504), r
        assert c.wait_closed(3)
        assert time.monotonic() - t0 < 5
    finally:
        c.close()
    time.sleep(0.2)
    assert not reqs(up, lambda e: tag in e["target"]), "the stalled request was completed upstream"


def test_stalled_body_closed(g, up):
    # The route's read_timeout is 60s: GATEWAY_HANDSHAKE_TIMEOUT (1s) bounds the stall.
    tag = f"stall-{mark()}"
    c = wsraw.Conn("127.0.0.1", g.port, timeout=10)
    try:
        t0 = time.monotonic()
        c.send(request_bytes("POST", f"/api/{tag}", [("Content-Length", "100")], b"0123456789"))
        try:
            r = c.read_response(timeout=6)
            assert r.status == 408, r
            envelope(r, 408, "request_timeout")
        except wsraw.Closed:
            pass  # closed without an answer: also acceptable
        except wsraw.Timeout:
            raise AssertionError("a request whose body stalled was left open")
        assert c.wait_closed(3), "a request whose body stalled was left open"
        took = time.monotonic() - t0
        assert took < 5, took
    finally:
        c.close()
    time.sleep(0.2)
    assert not reqs(up, lambda e: tag in e["target"]), "the stalled request was completed upstream"


@pytest.fixture(scope="module")
def slowbody(env):
    """A gateway with a short body deadline (GATEWAY_BODY_TIMEOUT 1500ms,
    GATEWAY_BODY_MIN_RATE 200 bytes/s) and a stall limit (handshake timeout)
    that a trickle never trips on its own."""
    routes = [{"path": "/api/", "kind": "proxy", "upstream": env["up"].url}]
    path = gw.write_routes(os.path.join(env["dir"], "routes-slowbody.json"), routes)
    g2 = gw.Gateway({"GATEWAY_ROUTES_FILE": path, "GATEWAY_HANDSHAKE_TIMEOUT": "3s",
                     "GATEWAY_BODY_TIMEOUT": "1500ms", "GATEWAY_BODY_MIN_RATE": "200"})
    yield g2
    rc = g2.stop()
    os.unlink(path)
    assert not g2.sanitizer_errors(), g2.stderr()[-6000:]
    assert rc == 0, g2.stderr()[-3000:]


@pytest.mark.parametrize("framing", ["length", "chunked"])
def test_slow_body_cut_off_408(slowbody, up, framing):
    """Issue 8 item 14: a body trickling in (one byte every 250 ms, never
    silent long enough for the stall limit) held the client and an upstream
    connection for as long as it went on. It is cut at its deadline with 408
    and the error envelope, the upstream connection is closed (never pooled),
    and the log line carries the correlation id."""
    m = mark()
    corr = f"slow-{m}"
    if framing == "length":
        hdrs = [("Content-Length", "1000000")]
        first, byte = b"x", b"x"
    else:
        hdrs = [("Transfer-Encoding", "chunked")]
        first, byte = b"f4240\r\nx", b"x"  # one chunk of 1,000,000 bytes, sent byte by byte
    c = wsraw.Conn("127.0.0.1", slowbody.port, timeout=10)
    try:
        t0 = time.monotonic()
        c.send(request_bytes("POST", f"/api/sum?m={m}", hdrs + [("X-Correlation-ID", corr)]) + first)
        head = up.wait_event(lambda e: e.get("ev") == "head" and e["target"] == f"/api/sum?m={m}", timeout=5,
                             what="the slow request's head upstream")[0]
        r = None
        while r is None and time.monotonic() - t0 < 8:
            time.sleep(0.25)
            try:
                c.send(byte)
            except OSError:
                pass
            try:
                r = c.read_response(timeout=0.01)
            except wsraw.Timeout:
                pass
        took = time.monotonic() - t0
        assert r is not None, "the trickling body was never cut"
        body = envelope(r, 408, "request_timeout")
        assert body["correlation_id"] == corr, body
        assert 1.3 <= took < 4, took
        assert c.wait_closed(3), "the connection stayed open after the 408"
    finally:
        c.close()
    up.wait_event(lambda e: e.get("ev") == "aborted" and e["port"] == head["port"], timeout=5,
                  what="the upstream connection of the cut request to be closed")
    assert not reqs(up, lambda e: e["target"] == f"/api/sum?m={m}")
    line = slowbody.wait_log(lambda l: l.get("correlation_id") == corr and l.get("msg") == "http proxy",
                             what="the proxy's log line")[0]
    assert line["status"] == 408 and line["outcome"] == "request_timeout", line


def test_body_faster_than_min_rate_not_cut(slowbody, up):
    """A body still arriving at its base deadline is not cut while it keeps
    above GATEWAY_BODY_MIN_RATE: 3 s at ~600 bytes/s with a 1.5 s base."""
    m = mark()
    body = os.urandom(1800)
    c = wsraw.Conn("127.0.0.1", slowbody.port, timeout=10)
    try:
        t0 = time.monotonic()
        c.send(request_bytes("POST", f"/api/sum?m={m}", [("Content-Length", str(len(body)))]))
        c.send(body, chunk=60, delay=0.1)
        r = c.read_response(timeout=10)
        assert time.monotonic() - t0 >= 2.5
        assert r.status == 200 and r.json()["sha256"] == hashlib.sha256(body).hexdigest(), r
    finally:
        c.close()


# ============================================================ the upstream process
# `python3 test_proxy.py http-upstream --port P [--unix PATH] --events FILE`

def _http_upstream_main(args):
    import argparse

    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--unix")
    ap.add_argument("--events", required=True)
    o = ap.parse_args(args)
    out = open(o.events, "a", buffering=1)

    def emit(**kw):
        out.write(json.dumps(kw) + "\n")
        out.flush()

    async def read_body(reader, headers):
        te = ",".join(v for k, v in headers if k.lower() == "transfer-encoding").lower()
        if "chunked" in te:
            body = bytearray()
            while True:
                line = await reader.readuntil(b"\r\n")
                size = int(line.split(b";")[0].strip(), 16)
                if size == 0:
                    while (await reader.readuntil(b"\r\n")) != b"\r\n":
                        pass
                    return bytes(body)
                body += await reader.readexactly(size)
                await reader.readexactly(2)
        cl = [v for k, v in headers if k.lower() == "content-length"]
        if cl:
            return await reader.readexactly(int(cl[0]))
        return b""

    def response(status, reason, headers, body=b""):
        head = f"HTTP/1.1 {status} {reason}\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers) + "\r\n"
        return head.encode("latin-1") + body

    async def handle(reader, writer, unix):
        peer = writer.get_extra_info("peername")
        port = peer[1] if isinstance(peer, tuple) else None
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                lines = head[:-4].decode("latin-1").split("\r\n")
                method, target, version = lines[0].split(" ", 2)
                headers = [(k.strip(), v.strip()) for k, v in (l.split(":", 1) for l in lines[1:])]
                emit(ev="head", port=port, method=method, target=target, headers=headers)
                try:
                    body = await read_body(reader, headers)
                except (asyncio.IncompleteReadError, ConnectionError, ValueError):
                    emit(ev="aborted", port=port, target=target)
                    return
                emit(ev="req", port=port, method=method, target=target, headers=headers, body_len=len(body),
                     sha256=hashlib.sha256(body).hexdigest())
                path = target.split("?")[0]
                last = path.rsplit("/", 1)[-1]
                close = any(k.lower() == "connection" and "close" in v.lower() for k, v in headers)
                info = json.dumps({"method": method, "target": target, "headers": headers, "body_len": len(body),
                                   "sha256": hashlib.sha256(body).hexdigest(), "unix": unix}).encode()
                base = [("X-Upstream", "yes")]
                if last == "hang":
                    await asyncio.sleep(60)
                    return
                elif last == "malformed":
                    writer.write(b"HTTP/1.1 abc OK\r\nthis is not a header\r\n\r\n")
                    await writer.drain()
                    return
                elif last == "chunked":
                    writer.write(response(200, "OK", base + [("Transfer-Encoding", "chunked")]))
                    for _ in range(100):
                        for part in (b"hello ", b"chunked ", b"world"):
                            writer.write(b"%x\r\n%s\r\n" % (len(part), part))
                    writer.write(b"0\r\n\r\n")
                elif last == "drip":
                    writer.write(response(200, "OK", base + [("Transfer-Encoding", "chunked")]))
                    writer.write(b"5\r\nfirst\r\n")
                    await writer.drain()
                    until = target.split("until=", 1)[1] if "until=" in target else None
                    for _ in range(600):  # the test's flag file, for up to 30 s
                        if until is None or os.path.exists(until):
                            break
                        await asyncio.sleep(0.05)
                    writer.write(b"6\r\nsecond\r\n0\r\n\r\n")
                elif last == "close":
                    writer.write(response(200, "OK", base + [("Connection", "close")],
                                          b"close-delimited body\n" * 2000))
                    await writer.drain()
                    return
                elif last == "204":
                    writer.write(response(204, "No Content", base))
                elif last == "304":
                    writer.write(response(304, "Not Modified", base + [("ETag", '"v1"')]))
                elif last == "hop":
                    writer.write(response(200, "OK", base + [
                        ("Connection", "X-Up-Hop"), ("X-Up-Hop", "secret"), ("Keep-Alive", "timeout=5"),
                        ("X-End", "kept"), ("Content-Length", "8")], b"hop body"))
                elif last == "big":
                    n = int(target.split("n=")[1])
                    writer.write(response(200, "OK", base + [("Content-Length", str(n))]))
                    block = b"0123456789abcdef" * 4096
                    left = n
                    while left:
                        k = min(left, len(block))
                        writer.write(block[:k])
                        left -= k
                        await writer.drain()
                else:
                    hdrs = base + [("Content-Type", "application/json"), ("Content-Length", str(len(info)))]
                    writer.write(response(200, "OK", hdrs, b"" if method == "HEAD" else info))
                await writer.drain()
                if close:
                    return
        finally:
            try:
                writer.close()
            except Exception:  # noqa: BLE001
                pass

    async def main():
        await asyncio.start_server(lambda r, w: handle(r, w, False), "127.0.0.1", o.port)
        if o.unix:
            await asyncio.start_unix_server(lambda r, w: handle(r, w, True), o.unix)
        emit(ev="ready", port=o.port)
        await asyncio.Event().wait()

    asyncio.run(main())


if __name__ == "__main__":
    if sys.argv[1] == "http-upstream":
        _http_upstream_main(sys.argv[2:])
    else:
        raise SystemExit(f"unknown helper {sys.argv[1]!r}")
