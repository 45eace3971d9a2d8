"""HTTP/1.1 behaviour of the public listener: built-in endpoints, headers,
error envelope, keep-alive, pipelining, malformed requests, limits and
timeouts (including slowloris)."""

import json
import re
import threading
import time

import pytest

import gw
import wsraw

HEX32 = re.compile(r"^[0-9a-f]{32}$")


def raw(port, data, timeout=5.0):
    """Sends raw bytes on a fresh connection; returns (first response,
    whether the server closed the connection afterwards). Nothing may follow
    the first response (every caller sends one request, or one whose
    Connection: close makes what follows it unread)."""
    c = wsraw.Conn("127.0.0.1", port, timeout=timeout)
    try:
        c.send(data)
        r = c.read_response(timeout=timeout)
        closed = c.wait_closed(timeout=3.0)
        assert closed.data == b"", f"bytes after the first response: {closed!r}"
        return r, closed
    finally:
        c.close()


def check_envelope(r, code=None):
    assert r.header("Content-Type", "").startswith("application/json"), r
    body = json.loads(r.body)
    assert set(["code", "message", "correlation_id", "details"]) <= set(body), body
    assert isinstance(body["code"], str) and body["code"], body
    assert isinstance(body["message"], str) and body["message"], body
    if code is not None:
        assert body["code"] == code, body
    assert body["correlation_id"] == r.header("X-Correlation-ID"), (body, r.headers)
    assert body["details"]["trace_id"] == r.header("X-Trace-ID"), (body, r.headers)
    return body


# ------------------------------------------------------------ endpoints

@pytest.mark.parametrize("path", ["/healthz", "/probe/healthz"])
def test_healthz_ok(gateway, path):
    r = gateway.get(path)
    assert r.status == 200
    assert r.body == b"ok\n"


def test_readyz_ok(gateway):
    assert gateway.get("/readyz").status == 200


def test_health_json(gateway):
    r = gateway.get("/health")
    assert r.status == 200
    assert r.header("Content-Type", "").startswith("application/json")
    body = json.loads(r.body)
    assert body["status"] == "ok"
    assert isinstance(body["uptime_s"], (int, float)) and body["uptime_s"] >= 0
    assert body["backend"]["overall"] == "healthy"


def test_health_uptime_grows(gateway):
    a = json.loads(gateway.get("/health").body)["uptime_s"]
    time.sleep(1.2)
    b = json.loads(gateway.get("/health").body)["uptime_s"]
    assert b >= a + 1, (a, b)


@pytest.mark.parametrize("path", ["/healthz", "/readyz", "/health", "/probe/healthz"])
def test_head_has_no_body(gateway, path):
    # HEAD then GET pipelined: if HEAD carried a body the GET response would be garbled.
    c = wsraw.Conn("127.0.0.1", gateway.port)
    try:
        host = f"127.0.0.1:{gateway.port}"
        c.send(f"HEAD {path} HTTP/1.1\r\nHost: {host}\r\n\r\nGET /healthz HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
        h = c.read_response(head_only=True)
        assert h.status == 200, h
        g = c.read_response()
        assert g.status == 200 and g.body == b"ok\n", g
    finally:
        c.close()


@pytest.mark.parametrize("path", ["/healthz", "/readyz", "/health", "/probe/healthz"])
@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE"])
def test_wrong_method_405(gateway, path, method):
    r = wsraw.http_request(gateway.port, method, path, body=b"x=1")
    assert r.status == 405, r
    allow = r.header("Allow")
    assert allow is not None, r
    allowed = {m.strip() for m in allow.split(",")}
    assert "GET" in allowed and "HEAD" in allowed and method not in allowed, allow
    check_envelope(r)


@pytest.mark.parametrize("path", ["/nope", "/healthz/x", "/probe", "/metrics", "/a/b/c?q=1"])
def test_unknown_path_404(gateway, path):
    r = gateway.get(path)
    assert r.status == 404, r
    check_envelope(r, "not_found")


# ------------------------------------------------------------ ids and envelope

@pytest.mark.parametrize("path", ["/healthz", "/readyz", "/health", "/nope"])
def test_every_response_has_ids(gateway, path):
    r = gateway.get(path)
    assert r.header("X-Correlation-ID"), r
    assert HEX32.match(r.header("X-Trace-ID") or ""), r


def test_generated_ids_are_unique(gateway):
    ids = {gateway.get("/healthz").header("X-Correlation-ID") for _ in range(20)}
    traces = {gateway.get("/healthz").header("X-Trace-ID") for _ in range(20)}
    assert len(ids) == 20 and len(traces) == 20


@pytest.mark.parametrize("hdr", ["X-Correlation-ID", "X-Request-ID"])
def test_incoming_correlation_id_echoed(gateway, hdr):
    cid = "test-corr-0123456789abcdef"
    for path in ("/healthz", "/nope"):
        r = gateway.get(path, headers={hdr: cid})
        assert r.header("X-Correlation-ID") == cid, r
    body = check_envelope(gateway.get("/nope", headers={hdr: cid}), "not_found")
    assert body["correlation_id"] == cid


@pytest.mark.parametrize("bad", ["has space", "x" * 1000, "quote\"inside", "semi;colon{}"])
def test_malformed_correlation_id_replaced(gateway, bad):
    r = gateway.get("/nope", headers={"X-Correlation-ID": bad})
    assert r.status == 404
    cid = r.header("X-Correlation-ID")
    assert cid and cid != bad, r
    assert json.loads(r.body)["correlation_id"] == cid


def test_traceparent_gives_trace_id(gateway):
    trace = "4bf92f3577b34da6a3ce929d0e0e4736"
    tp = f"00-{trace}-00f067aa0ba902b7-01"
    r = gateway.get("/healthz", headers={"traceparent": tp})
    assert r.header("X-Trace-ID") == trace
    body = check_envelope(gateway.get("/nope", headers={"traceparent": tp}))
    assert body["details"]["trace_id"] == trace


@pytest.mark.parametrize("tp", ["garbage", "00-zz-00f067aa0ba902b7-01",
                                "00-00000000000000000000000000000000-00f067aa0ba902b7-01"])
def test_bad_traceparent_generates_trace_id(gateway, tp):
    r = gateway.get("/healthz", headers={"traceparent": tp})
    t = r.header("X-Trace-ID")
    assert HEX32.match(t or "") and t != "0" * 32, r


def test_http_error_is_logged(gateway):
    cid = "log-check-7f3a9c"
    r = gateway.get("/does-not-exist", headers={"X-Correlation-ID": cid})
    assert r.status == 404
    line = gateway.wait_log(lambda l: l.get("msg") == "http error" and l.get("correlation_id") == cid)[0]
    assert line["status"] == 404
    assert line["code"] == "not_found"
    assert line["path"] == "/does-not-exist"
    assert line["ip"] == "127.0.0.1"
    assert line["service"] == "wsgate"
    assert line["level"] in ("warn", "warning", "info", "error")
    assert "ts" in line


# ------------------------------------------------------------ keep-alive, pipelining

def test_keepalive_sequential(gateway):
    c = wsraw.Conn("127.0.0.1", gateway.port)
    try:
        for path, status in [("/healthz", 200), ("/nope", 404), ("/readyz", 200), ("/health", 200)] * 3:
            c.send(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            r = c.read_response()
            assert r.status == status, (path, r)
    finally:
        c.close()


def test_pipelining_in_order(gateway):
    paths = ["/healthz", "/nope1", "/readyz", "/health", "/probe/healthz", "/nope2"] * 3
    req = b"".join(f"GET {p} HTTP/1.1\r\nHost: x\r\nX-Correlation-ID: pipe-{i}\r\n\r\n".encode()
                   for i, p in enumerate(paths))
    c = wsraw.Conn("127.0.0.1", gateway.port)
    try:
        c.send(req)
        for i, p in enumerate(paths):
            r = c.read_response()
            assert r.header("X-Correlation-ID") == f"pipe-{i}", (i, r)
            assert r.status == (404 if "nope" in p else 200), (p, r)
        # Still open for more.
        c.send(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert c.read_response().status == 200
    finally:
        c.close()


def test_pipelining_byte_by_byte(gateway):
    req = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\nGET /readyz HTTP/1.1\r\nHost: x\r\n\r\n"
    c = wsraw.Conn("127.0.0.1", gateway.port)
    try:
        c.send(req, chunk=1)
        assert c.read_response().body == b"ok\n"
        assert c.read_response().status == 200
    finally:
        c.close()


def test_connection_close_closes(gateway):
    r, closed = raw(gateway.port, b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert r.status == 200 and closed


def test_pipelined_after_connection_close_ignored(gateway):
    r, closed = raw(gateway.port, b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
                                  b"GET /readyz HTTP/1.1\r\nHost: x\r\n\r\n")
    assert r.status == 200 and closed


def test_http10_closes(gateway):
    r, closed = raw(gateway.port, b"GET /healthz HTTP/1.0\r\n\r\n")
    assert r.status == 200 and r.body == b"ok\n" and closed


def test_http10_keepalive_stays_open(gateway):
    c = wsraw.Conn("127.0.0.1", gateway.port)
    try:
        for _ in range(2):
            c.send(b"GET /healthz HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
            r = c.read_response()
            assert r.status == 200 and r.body == b"ok\n"
    finally:
        c.close()


def test_request_with_body_keepalive(gateway):
    # A body on a 404 path is consumed and the next request parses correctly.
    c = wsraw.Conn("127.0.0.1", gateway.port)
    try:
        c.send(b"GET /nope HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhelloGET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        r = c.read_response()
        assert r.status == 404
        if (r.header("Connection") or "").lower() == "close":
            # The gateway may refuse to keep a connection whose request had a
            # body, but then it says so and never parses the body as a request.
            with pytest.raises(wsraw.Closed):
                c.read_response(timeout=3.0)
        else:
            r = c.read_response()
            assert r.status == 200 and r.body == b"ok\n"
    finally:
        c.close()


# ------------------------------------------------------------ malformed requests

MALFORMED = {
    "bare_lf": b"GET /healthz HTTP/1.1\nHost: x\n\n",
    "bare_lf_in_header": b"GET /healthz HTTP/1.1\r\nHost: x\nX-A: b\r\n\r\n",
    "obs_fold": b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-A: a\r\n b\r\n\r\n",
    "obs_fold_tab": b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-A: a\r\n\tb\r\n\r\n",
    "space_before_colon": b"GET /healthz HTTP/1.1\r\nHost : x\r\n\r\n",
    "space_before_colon_other": b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-A : b\r\n\r\n",
    "ctl_in_value": b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-A: a\x01b\r\n\r\n",
    "nul_in_value": b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-A: a\x00b\r\n\r\n",
    "del_in_value": b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-A: a\x7fb\r\n\r\n",
    "missing_host": b"GET /healthz HTTP/1.1\r\nX-A: b\r\n\r\n",
    "two_hosts": b"GET /healthz HTTP/1.1\r\nHost: x\r\nHost: y\r\n\r\n",
    "cl_and_te": b"POST /nope HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "cl_alpha": b"POST /nope HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n",
    "cl_negative": b"POST /nope HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n",
    "cl_plus": b"POST /nope HTTP/1.1\r\nHost: x\r\nContent-Length: +5\r\n\r\nhello",
    "cl_trailing_junk": b"POST /nope HTTP/1.1\r\nHost: x\r\nContent-Length: 12a\r\n\r\n",
    "cl_conflicting": b"POST /nope HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
    "empty_header_name": b"GET /healthz HTTP/1.1\r\nHost: x\r\n: b\r\n\r\n",
    "no_colon": b"GET /healthz HTTP/1.1\r\nHost: x\r\nNoColonHere\r\n\r\n",
    "bad_request_line": b"GET\r\nHost: x\r\n\r\n",
    "garbage_version": b"GET /healthz FOO/1.1\r\nHost: x\r\n\r\n",
}


@pytest.mark.parametrize("name", sorted(MALFORMED))
def test_malformed_400_and_close(gateway, name):
    r, closed = raw(gateway.port, MALFORMED[name])
    assert r.status == 400, r
    check_envelope(r)
    assert closed, "connection must close after a 400"


def test_malformed_after_good_request(gateway):
    # A good response first, then the bad one gets 400 and the close.
    c = wsraw.Conn("127.0.0.1", gateway.port)
    try:
        c.send(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\nGET /healthz HTTP/1.1\r\nHost : x\r\n\r\n")
        assert c.read_response().status == 200
        assert c.read_response().status == 400
        closed = c.wait_closed(3.0)
        assert closed and closed.data == b"", closed
    finally:
        c.close()


def test_request_line_too_long_414(gateway):
    path = "/" + "a" * (9 * 1024)
    r, closed = raw(gateway.port, f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    assert r.status == 414, r
    check_envelope(r)
    assert closed


def test_request_line_just_under_limit_ok(gateway):
    path = "/" + "a" * (7 * 1024)
    r, _ = raw(gateway.port, f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
    assert r.status == 404, r


def test_header_too_large_431(gateway):
    r, closed = raw(gateway.port, b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"b" * (17 * 1024) + b"\r\n\r\n")
    assert r.status == 431, r
    check_envelope(r)
    assert closed


def test_many_headers_total_too_large_431(gateway):
    hdrs = b"".join(b"X-H%d: %s\r\n" % (i, b"v" * 100) for i in range(200))  # ~22 KiB
    r, closed = raw(gateway.port, b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + hdrs + b"\r\n")
    assert r.status == 431, r
    assert closed


def test_too_many_headers_431(gateway):
    hdrs = b"".join(b"X-H%d: 1\r\n" % i for i in range(600))  # ~6 KiB, under the byte limit
    r, closed = raw(gateway.port, b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + hdrs + b"\r\n")
    assert r.status == 431, r
    assert closed


def test_header_limit_configurable(make_gateway):
    g = make_gateway({"GATEWAY_MAX_HEADER_BYTES": "1KiB", "GATEWAY_MAX_REQUEST_LINE_BYTES": "256"})
    r, _ = raw(g.port, b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"b" * 2000 + b"\r\n\r\n")
    assert r.status == 431, r
    r, _ = raw(g.port, b"GET /" + b"a" * 400 + b" HTTP/1.1\r\nHost: x\r\n\r\n")
    assert r.status == 414, r
    r, _ = raw(g.port, b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\nX-Small: " + b"b" * 200 + b"\r\n\r\n")
    assert r.status == 200, r


@pytest.mark.parametrize("version", ["HTTP/1.2", "HTTP/2.0", "HTTP/3.0"])
def test_unsupported_version_505(gateway, version):
    r, closed = raw(gateway.port, f"GET /healthz {version}\r\nHost: x\r\n\r\n".encode())
    assert r.status == 505, r
    check_envelope(r)
    assert closed


# ------------------------------------------------------------ timeouts

@pytest.fixture(scope="module")
def timeout_gateway():
    g = gw.Gateway({"GATEWAY_HANDSHAKE_TIMEOUT": "1s", "GATEWAY_HTTP_IDLE_TIMEOUT": "2s"})
    yield g
    assert g.stop() == 0
    assert not g.sanitizer_errors(), g.stderr()[-4000:]


def test_incomplete_head_408(timeout_gateway):
    c = wsraw.Conn("127.0.0.1", timeout_gateway.port)
    try:
        t0 = time.monotonic()
        c.send(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        r = c.read_response(timeout=5.0)
        dt = time.monotonic() - t0
        assert r.status == 408, r
        check_envelope(r)
        assert 0.8 <= dt <= 3.0, dt
        closed = c.wait_closed(3.0)
        assert closed and closed.data == b"", closed
    finally:
        c.close()


def test_trickling_head_408(timeout_gateway):
    # Slowloris: a byte every 200 ms never completes the head; the deadline is
    # for the whole head, not per read.
    c = wsraw.Conn("127.0.0.1", timeout_gateway.port)
    data = b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + b"X-Slow: " + b"a" * 100
    got = []

    def reader():
        try:
            got.append(c.read_response(timeout=6.0))
        except Exception as e:  # noqa: BLE001
            got.append(e)

    t = threading.Thread(target=reader)
    t.start()
    t0 = time.monotonic()
    try:
        for b in data:
            if got or time.monotonic() - t0 > 5:
                break
            try:
                c.sock.send(bytes([b]))
            except OSError:
                break
            time.sleep(0.2)
        t.join(7)
        dt = time.monotonic() - t0
        assert got and isinstance(got[0], wsraw.HTTPResponse), got
        assert got[0].status == 408
        assert dt < 4.0, dt
    finally:
        c.close()


def test_connect_without_bytes_closed(timeout_gateway):
    c = wsraw.Conn("127.0.0.1", timeout_gateway.port)
    try:
        t0 = time.monotonic()
        assert c.wait_closed(5.0)
        assert time.monotonic() - t0 <= 3.5
    finally:
        c.close()


def test_silent_connection_closed_within_handshake_timeout(make_gateway):
    # Issue 8 item 12: a connection that never sends a byte gets the handshake
    # timeout (1 s here), not the keep-alive idle timeout (60 s here); once it
    # has been served, it idles for the keep-alive timeout.
    g = make_gateway({"GATEWAY_HANDSHAKE_TIMEOUT": "1s", "GATEWAY_HTTP_IDLE_TIMEOUT": "60s"})
    silent = wsraw.Conn("127.0.0.1", g.port)
    served = wsraw.Conn("127.0.0.1", g.port)
    try:
        t0 = time.monotonic()
        served.send(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert served.read_response().status == 200
        assert silent.wait_closed(10.0), "a silent connection was not closed"
        dt = time.monotonic() - t0
        # Not before the 1 s timeout; the margin above it is for a loaded host.
        assert 0.9 <= dt <= 3.0, dt
        # The served connection is idling under the 60 s keep-alive limit.
        served.send(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert served.read_response().status == 200
    finally:
        silent.close()
        served.close()


def test_idle_keepalive_closed(timeout_gateway):
    c = wsraw.Conn("127.0.0.1", timeout_gateway.port)
    try:
        c.send(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert c.read_response().status == 200
        t0 = time.monotonic()
        assert c.wait_closed(6.0), "idle keep-alive connection was not closed"
        dt = time.monotonic() - t0
        assert 1.5 <= dt <= 4.0, dt
    finally:
        c.close()


def test_activity_keeps_connection(timeout_gateway):
    # Requests every 0.7 s keep a connection alive past the 2 s idle limit.
    c = wsraw.Conn("127.0.0.1", timeout_gateway.port)
    try:
        for _ in range(5):
            c.send(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            assert c.read_response().status == 200
            time.sleep(0.7)
    finally:
        c.close()


def test_slowloris_does_not_delay_others(make_gateway):
    # The slow heads are held for the 20 s handshake timeout: a request that
    # waited behind them would take 20 s. Each answer must come within 5 s:
    # 4 times less than that wait, and thousands of times what a request
    # takes, so a loaded machine never trips it while a real delay does.
    g = make_gateway({"GATEWAY_HANDSHAKE_TIMEOUT": "20s"})
    slow = []
    try:
        for _ in range(30):
            c = wsraw.Conn("127.0.0.1", g.port)
            c.send(b"GET /healthz HTTP/1.1\r\nHo")
            slow.append(c)
        for _ in range(10):
            t0 = time.monotonic()
            r = wsraw.http_request(g.port, "GET", "/healthz", timeout=10.0)
            assert r.status == 200
            assert time.monotonic() - t0 < 5.0
            for c in slow:
                try:
                    c.sock.send(b"s")
                except OSError:
                    pass
            time.sleep(0.05)
    finally:
        for c in slow:
            c.close()
