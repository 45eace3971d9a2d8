"""Operations: command line (help, version), configuration errors, log
format, Prometheus metrics (exact counter deltas), drain on SIGTERM/SIGINT."""

import asyncio
import json
import os
import re
import select
import signal
import socket
import subprocess
import threading
import time

import pytest
import websockets

import gw
import wsraw
from wsraw import OP_CLOSE, OP_PING, OP_TEXT

CORE_VARS = [
    "GATEWAY_PUBLIC_HTTP_ADDR", "GATEWAY_ADMIN_HTTP_ADDR", "GATEWAY_WORKERS", "GATEWAY_LOG_FORMAT",
    "GATEWAY_LOG_LEVEL", "GATEWAY_WS_PING_INTERVAL", "GATEWAY_WS_PONG_TIMEOUT", "GATEWAY_WS_MAX_MESSAGE_BYTES",
    "GATEWAY_SHUTDOWN_TIMEOUT", "GATEWAY_TLS_CERT_PATH", "GATEWAY_TLS_KEY_PATH", "GATEWAY_HANDSHAKE_TIMEOUT",
    "GATEWAY_HTTP_IDLE_TIMEOUT", "GATEWAY_ECHO_IDLE_TIMEOUT", "GATEWAY_MAX_HEADER_BYTES",
    "GATEWAY_MAX_REQUEST_LINE_BYTES", "GATEWAY_WS_DEFLATE",
]
TS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:?\d\d)$")


# ------------------------------------------------------------ command line

@pytest.mark.parametrize("args", [["--help"], ["serve", "--help"], ["help"]])
def test_help(args):
    r = gw.run_cli(args)
    assert r.returncode == 0, r
    out = r.stdout.decode()
    assert "serve" in out and "version" in out
    missing = [v for v in CORE_VARS if v not in out]
    assert not missing, f"--help does not document {missing}"
    # The help documents exactly the variables the source reads: every
    # "GATEWAY_..." string literal under src/, and nothing else.
    read = set()
    for d, _, files in os.walk(os.path.join(gw.ROOT, "src")):
        for f in files:
            if f.endswith((".c", ".h")):
                with open(os.path.join(d, f), encoding="utf-8") as fh:
                    read |= set(re.findall(r'"(GATEWAY_[A-Z0-9_]+)"', fh.read()))
    documented = set(re.findall(r"GATEWAY_[A-Z0-9_]+", out))
    assert read - documented == set(), f"read by the source, not in --help: {sorted(read - documented)}"
    assert documented - read == set(), f"in --help, read nowhere: {sorted(documented - read)}"


# Built with gRPC (issue 12): documented, never marked.
GRPC_VARS = ["GATEWAY_AUTHENTICATED_GRPC_ADDR", "GATEWAY_RESPONSE_SIGNER_PRIVATE_KEY_PEM_PATH"]
# Built with push events (issue 11): documented, never marked.
PUSH_VARS = ["GATEWAY_PUSH_QUEUE_LIMIT", "GATEWAY_PUSH_HISTORY_WINDOW", "GATEWAY_CLIENT_EVENTS_REDIS_STREAM"]
# Built with the Redis backend (issue 10): documented, never marked.
REDIS_VARS = [
    "GATEWAY_REDIS_MASTER_ADDR", "GATEWAY_REDIS_PASSWORD", "GATEWAY_REDIS_DB", "GATEWAY_REDIS_KEY_PREFIX",
    "GATEWAY_SESSION_EVENTS_REDIS_STREAM",
]


def test_help_marks_no_unbuilt_feature():
    # Issue 8 item 19: --help describes what the binary does; no variable is
    # marked as belonging to a feature not built (the last ones, gRPC and the
    # response signer, are built now), and each is documented once.
    out = gw.run_cli(["--help"]).stdout.decode()
    lines = out.splitlines()
    assert "NOT BUILT" not in out and "Not built yet" not in out
    for v in CORE_VARS + REDIS_VARS + PUSH_VARS + GRPC_VARS:
        assert len([l for l in lines if re.match(rf"^\s+{v}\s", l)]) == 1, v


def test_no_unbuilt_warning(make_gateway, tmp_path):
    # The signer key set with gRPC off: loaded (served at /v1/signing-key),
    # never reported as a feature not built.
    k = tmp_path / "k"
    assert gw.run_cli(["keygen", "--out", str(k)]).returncode == 0
    g = make_gateway({"GATEWAY_PUSH_QUEUE_LIMIT": "64",
                      "GATEWAY_RESPONSE_SIGNER_PRIVATE_KEY_PEM_PATH": f"{k}.key",
                      "GATEWAY_AUTHENTICATED_GRPC_ADDR": ""})
    assert g.get("/healthz").status == 200
    assert not [l for l in g.logs() if "not built" in l.get("msg", "")]
    assert g.admin_get("/v1/signing-key").body == (tmp_path / "k.pub").read_bytes()
    assert g.stop() == 0


def test_version():
    r = gw.run_cli(["version"])
    assert r.returncode == 0
    out = r.stdout.decode()
    assert re.match(r"^wsgate \S+\n$", out), out


def test_unknown_command_fails():
    r = gw.run_cli(["no-such-command"])
    assert r.returncode == 2, r
    assert b'unknown command "no-such-command"' in r.stderr, r


def test_serve_is_default(make_gateway):
    g = make_gateway(args=())
    assert g.get("/healthz").body == b"ok\n"


# ------------------------------------------------------------ configuration errors

BAD_CONFIG = [
    ("GATEWAY_WS_PING_INTERVAL", "often"),
    ("GATEWAY_WS_PING_INTERVAL", "-1s"),
    ("GATEWAY_WS_PONG_TIMEOUT", "5 parsecs"),
    ("GATEWAY_WS_MAX_MESSAGE_BYTES", "lots"),
    ("GATEWAY_WS_MAX_MESSAGE_BYTES", "12XB"),
    ("GATEWAY_WORKERS", "abc"),
    ("GATEWAY_WORKERS", "-2"),
    ("GATEWAY_LOG_FORMAT", "xml"),
    ("GATEWAY_LOG_LEVEL", "loud"),
    ("GATEWAY_SHUTDOWN_TIMEOUT", "soon"),
    ("GATEWAY_PUBLIC_HTTP_ADDR", "127.0.0.1:99999"),
    ("GATEWAY_PUBLIC_HTTP_ADDR", "no-port-here"),
    ("GATEWAY_ADMIN_HTTP_ADDR", "127.0.0.1:notaport"),
    ("GATEWAY_HANDSHAKE_TIMEOUT", "1y"),
    ("GATEWAY_HTTP_IDLE_TIMEOUT", "x"),
    ("GATEWAY_ECHO_IDLE_TIMEOUT", "ten"),
    ("GATEWAY_MAX_HEADER_BYTES", "big"),
    ("GATEWAY_MAX_REQUEST_LINE_BYTES", "-5"),
    ("GATEWAY_WS_DEFLATE", "maybe"),
    ("GATEWAY_REDIS_TLS_ENABLED", "true"),
    ("GATEWAY_REDIS_USERNAME", "x"),
]


@pytest.mark.parametrize("var,value", BAD_CONFIG, ids=[f"{v}={x}" for v, x in BAD_CONFIG])
def test_invalid_configuration(var, value):
    env = {"GATEWAY_PUBLIC_HTTP_ADDR": f"127.0.0.1:{gw.free_port()}",
           "GATEWAY_ADMIN_HTTP_ADDR": f"127.0.0.1:{gw.free_port()}",
           "GATEWAY_AUTHENTICATED_GRPC_ADDR": "", var: value}
    t0 = time.monotonic()
    r = gw.run_cli(["serve"], env=env, timeout=10)
    assert time.monotonic() - t0 < 5
    assert r.returncode == 2, r
    lines = [l for l in r.stderr.decode().splitlines() if l.strip()]
    assert len(lines) == 1, lines
    obj = json.loads(lines[0])
    assert obj["msg"] == "invalid configuration", obj
    assert var in obj["error"], obj
    assert obj["service"] == "wsgate" and obj["level"] in ("error", "fatal")


def test_valid_sizes_and_durations_accepted(make_gateway):
    g = make_gateway({"GATEWAY_WS_MAX_MESSAGE_BYTES": "2MiB", "GATEWAY_WS_PING_INTERVAL": "500ms",
                      "GATEWAY_WS_PONG_TIMEOUT": "1m", "GATEWAY_WORKERS": "1", "GATEWAY_LOG_LEVEL": "debug",
                      "GATEWAY_HTTP_IDLE_TIMEOUT": "1m30s", "GATEWAY_WS_DEFLATE": "off"})
    with g.ws() as w:
        p = b"z" * (1536 * 1024)  # over the default 1 MiB, under 2 MiB
        w.send_binary(p)
        assert w.recv_message(timeout=20)[1] == p


# ------------------------------------------------------------ logs

def test_log_lines_are_json_objects(gateway):
    w = gateway.ws(headers={"X-Correlation-ID": "logfmt-1"})
    w.send_close(1000)
    w.expect_close()
    w.close()
    gateway.get("/nope", headers={"X-Correlation-ID": "logfmt-2"})
    gateway.ws_close_log("logfmt-1")
    gateway.wait_log(lambda l: l.get("correlation_id") == "logfmt-2")
    lines = [l for l in gateway.stderr().splitlines() if l.strip()]
    assert lines
    for raw in lines:
        obj = json.loads(raw)
        keys = list(obj)
        assert keys[:4] == ["ts", "level", "service", "msg"], keys
        assert obj["service"] == "wsgate"
        assert TS.match(obj["ts"]), obj["ts"]
        assert obj["level"] in ("debug", "info", "warn", "error")
        if "correlation_id" in obj:
            assert keys[4] == "correlation_id", keys


def test_log_level_error_hides_info(make_gateway):
    g = make_gateway({"GATEWAY_LOG_LEVEL": "error"})
    w = g.ws()
    w.send_close(1000)
    w.expect_close()
    w.close()
    assert g.get("/nope").status == 404
    time.sleep(0.3)
    levels = {l["level"] for l in g.logs()}
    assert levels <= {"error"}, levels
    assert not [l for l in g.logs() if l.get("msg") in ("ws open", "ws close", "http error")]


# ------------------------------------------------------------ metrics

def metric_delta(g, before, name, **labels):
    return gw.metric_value(g.metrics(), name, **labels) - gw.metric_value(before, name, **labels)


def wait_delta(g, before, name, expected, timeout=4.0, **labels):
    deadline = time.monotonic() + timeout
    while True:
        d = metric_delta(g, before, name, **labels)
        if d == expected or time.monotonic() > deadline:
            assert d == expected, f"{name}{labels}: moved by {d}, expected {expected}"
            return
        time.sleep(0.1)


def test_metrics_format_and_names(gateway):
    r = gateway.admin_get("/metrics")
    assert r.status == 200
    assert r.header("Content-Type", "").startswith("text/plain")
    text = r.body.decode()
    m = gw.parse_metrics(text)
    names = {k[0] for k in m}
    for n in ["ws_connections", "wsgate_connections", "wsgate_ws_connections", "wsgate_build_info",
              "wsgate_http_responses_total"]:
        assert n in names, f"{n} missing from /metrics"
    assert any(k[0] == "wsgate_build_info" and dict(k[1]).get("version") for k in m)
    assert ("wsgate_connections", frozenset({("listener", "public")})) in m
    assert ("wsgate_ws_connections", frozenset({("route", "/probe/ws")})) in m
    for family in ["ws_connections", "wsgate_ws_handshakes_total", "wsgate_ws_closes_total",
                   "wsgate_ws_session_duration_seconds"]:
        assert re.search(rf"^# TYPE {family} (counter|gauge|histogram)$", text, re.M), family
    assert re.search(r"^# HELP ws_connections ", text, re.M)


def test_metrics_handshake_results(gateway):
    before = gateway.metrics()
    for _ in range(2):
        gateway.ws().close()
    gateway.ws(version="12", expect_101=False).close()
    gateway.ws(key="short", expect_101=False).close()
    gateway.ws(key="short", expect_101=False).close()
    assert gateway.get("/probe/ws").status == 426
    route = "/probe/ws"
    wait_delta(gateway, before, "wsgate_ws_handshakes_total", 2, route=route, result="ok")
    wait_delta(gateway, before, "wsgate_ws_handshakes_total", 1, route=route, result="bad_version")
    wait_delta(gateway, before, "wsgate_ws_handshakes_total", 2, route=route, result="bad_key")
    wait_delta(gateway, before, "wsgate_ws_handshakes_total", 1, route=route, result="upgrade_required")


def test_metrics_connection_gauges(gateway):
    gw.wait_until(lambda: gateway.metric("ws_connections") == 0, what="no open websockets")
    base_public = gateway.metric("wsgate_connections", listener="public")
    ws = [gateway.ws() for _ in range(5)]
    try:
        gw.wait_until(lambda: gateway.metric("ws_connections") == 5, what="ws_connections == 5")
        assert gateway.metric("wsgate_ws_connections", route="/probe/ws") == 5
        assert gateway.metric("wsgate_connections", listener="public") == base_public + 5
    finally:
        for w in ws:
            w.close()
    gw.wait_until(lambda: gateway.metric("ws_connections") == 0, what="ws_connections back to 0")
    assert gateway.metric("wsgate_ws_connections", route="/probe/ws") == 0
    gw.wait_until(lambda: gateway.metric("wsgate_connections", listener="public") == base_public,
                  what="public connections back to base")


def test_metrics_closes_by_cause(gateway):
    before = gateway.metrics()
    a = gateway.ws()
    a.send_close(1000)
    a.expect_close()
    a.close()
    b = gateway.ws()
    b.close()
    c = gateway.ws()
    c.send_frame(OP_TEXT, b"x", mask=False)
    c.expect_close()
    c.close()
    d = gateway.ws()
    d.send_binary(b"y" * (1024 * 1024 + 1))
    d.expect_close(timeout=10)
    d.close()
    for cause, n in [("graceful", 1), ("downstream_closed", 1), ("protocol_error", 1), ("too_large", 1)]:
        wait_delta(gateway, before, "wsgate_ws_closes_total", n, route="/probe/ws", cause=cause)
    wait_delta(gateway, before, "wsgate_ws_session_duration_seconds_count", 4, route="/probe/ws")
    m = gateway.metrics()
    inf = [v for k, v in m.items() if k[0] == "wsgate_ws_session_duration_seconds_bucket"
           and dict(k[1]).get("le") == "+Inf" and dict(k[1]).get("route") == "/probe/ws"]
    assert inf and inf[0] == gw.metric_value(m, "wsgate_ws_session_duration_seconds_count", route="/probe/ws")


def test_metrics_messages_and_bytes(gateway):
    before = gateway.metrics()
    sizes = [1, 10, 100, 1000, 10000]
    w = gateway.ws()
    for s in sizes:
        w.send_binary(b"m" * s)
        assert len(w.recv_message()[1]) == s
    # While open: flushed at least every second.
    wait_delta(gateway, before, "wsgate_ws_messages_total", 5, timeout=3, route="/probe/ws", direction="in")
    wait_delta(gateway, before, "wsgate_ws_messages_total", 5, timeout=3, route="/probe/ws", direction="out")
    wait_delta(gateway, before, "wsgate_ws_bytes_total", sum(sizes), timeout=3, route="/probe/ws", direction="in")
    wait_delta(gateway, before, "wsgate_ws_bytes_total", sum(sizes), timeout=3, route="/probe/ws", direction="out")
    # Then at close: the rest, exactly.
    w.send_text("tail")
    w.recv_message()
    w.send_close(1000)
    w.expect_close()
    w.close()
    gateway.ws_close_log(w.response.header("X-Correlation-ID"))
    wait_delta(gateway, before, "wsgate_ws_messages_total", 6, timeout=1, route="/probe/ws", direction="in")
    wait_delta(gateway, before, "wsgate_ws_bytes_total", sum(sizes) + 4, timeout=1, route="/probe/ws", direction="out")


def test_metrics_http_responses(gateway):
    before = gateway.metrics()
    for _ in range(3):
        assert gateway.get("/nope").status == 404
    assert wsraw.http_request(gateway.port, "POST", "/healthz").status == 405
    for _ in range(2):
        assert gateway.get("/healthz").status == 200
    wait_delta(gateway, before, "wsgate_http_responses_total", 3, listener="public", code="404")
    wait_delta(gateway, before, "wsgate_http_responses_total", 1, listener="public", code="405")
    wait_delta(gateway, before, "wsgate_http_responses_total", 2, listener="public", code="200")


def test_admin_unknown_path_404(gateway):
    r = gateway.admin_get("/nope")
    assert r.status == 404
    assert json.loads(r.body)["code"] == "not_found"


# ------------------------------------------------------------ drain

def test_sigterm_idle_exits_fast(make_gateway):
    g = make_gateway()
    t0 = time.monotonic()
    g.signal(signal.SIGTERM)
    assert g.wait(5) == 0, g.stderr()
    assert time.monotonic() - t0 < 2.0


def test_sigint_exits_zero(make_gateway):
    g = make_gateway()
    w = g.ws()
    g.signal(signal.SIGINT)
    f = w.expect_close(timeout=3)
    assert f.close_code == 1001
    w.send_close(1001)
    w.close()
    assert g.wait(5) == 0


def test_drain_readyz_503_on_keepalive(make_gateway):
    g = make_gateway({"GATEWAY_SHUTDOWN_TIMEOUT": "3s"})
    keep = wsraw.Conn("127.0.0.1", g.port)
    try:
        keep.send(b"GET /readyz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert keep.read_response().status == 200
        w = g.ws()  # keeps the gateway draining for a while
        g.signal(signal.SIGTERM)
        time.sleep(0.1)
        keep.send(b"GET /readyz HTTP/1.1\r\nHost: x\r\n\r\n")
        r = keep.read_response()
        assert r.status == 503, r
        body = json.loads(r.body)
        assert body["code"] == "draining"
        assert body["correlation_id"] == r.header("X-Correlation-ID")
        w.close()
        assert g.wait(5) == 0
    finally:
        keep.close()


def test_drain(make_gateway):
    g = make_gateway({"GATEWAY_SHUTDOWN_TIMEOUT": "3s"})
    polite = g.ws(headers={"X-Correlation-ID": "drain-polite"})
    rude = g.ws(headers={"X-Correlation-ID": "drain-rude"})
    lib_result = {}

    async def lib_client():
        async with websockets.connect(f"ws://127.0.0.1:{g.port}/probe/ws", ping_interval=None) as ws:
            lib_result["ready"] = True
            try:
                await asyncio.wait_for(ws.recv(), 10)
            except websockets.ConnectionClosed:
                pass
            lib_result["code"] = ws.close_code
            lib_result["reason"] = ws.close_reason

    t = threading.Thread(target=lambda: asyncio.run(lib_client()))
    t.start()
    gw.wait_until(lambda: lib_result.get("ready"), what="library client connected")
    gw.wait_until(lambda: g.metric("ws_connections") == 3, what="3 websockets open")

    t0 = time.monotonic()
    g.signal(signal.SIGTERM)

    # The listener is closed: new connections are refused.
    gw.wait_until(lambda: _refused(g.port), timeout=2, what="public listener closed")

    for w in (polite, rude):
        f = w.expect_close(timeout=3)
        assert f.close_code == 1001 and f.close_reason == "gateway is shutting down", f
    polite.send_close(1001)
    assert polite.wait_closed(3)
    # rude never answers; the process must still exit within the budget.
    rc = g.wait(6)
    dt = time.monotonic() - t0
    assert rc == 0, g.stderr()[-3000:]
    assert dt <= 4.5, f"exit took {dt:.1f}s with a 3s budget"
    t.join(5)
    assert lib_result.get("code") == 1001 and lib_result.get("reason") == "gateway is shutting down", lib_result
    for cid in ("drain-polite", "drain-rude"):
        line = g.ws_close_log(cid)
        assert line["cause"] == "shutdown", line
        assert line["close_code_sent"] == 1001
    rude.close()


def _refused(port):
    """True when a connection to port is refused. A reset is not: it comes
    from a listener in the middle of closing (a connection queued in its
    backlog), so the caller asks again."""
    try:
        s = socket.create_connection(("127.0.0.1", port), timeout=1)
    except ConnectionRefusedError:
        return True
    except ConnectionResetError:
        return False
    s.close()
    return False


def test_drain_sequence_for_load_balancers(make_gateway):
    # Issue 8 item 11. With GATEWAY_DRAIN_DELAY=2s and a budget of 8s:
    # - for 2 s after SIGTERM /readyz answers 503 while the listener keeps
    #   serving (new connections, requests and upgrades are accepted);
    # - then the listener closes (refused);
    # - then the WebSocket closes (1001) are spread over half of what remains
    #   (8 - 2) / 2 = 3 s, so they cannot all come at once;
    # - the process exits 0 within the budget.
    # Margins: events are timed on this side, after the gateway acted, so
    # "not before" bounds are exact (50 ms for clock granularity); "not after"
    # bounds get 1 s for a loaded 2-core host (or the sanitizer build).
    delay, budget = 2.0, 8.0
    window = (budget - delay) / 2
    g = make_gateway({"GATEWAY_SHUTDOWN_TIMEOUT": "8s", "GATEWAY_DRAIN_DELAY": "2s", "GATEWAY_WORKERS": "2"})
    closes = {}

    def reader(name, w):
        try:
            f = w.expect_close(timeout=budget + 2)
            closes[name] = (time.monotonic(), f.close_code, f.close_reason)
            w.send_close(1001)
        finally:
            w.close()

    threads = []

    def watch(name, w):
        t = threading.Thread(target=reader, args=(name, w))
        t.start()
        threads.append(t)

    for i in range(8):
        watch(f"ws{i}", g.ws(headers={"X-Correlation-ID": f"spread-{i}"}))
    gw.wait_until(lambda: g.metric("ws_connections") == 8, what="8 websockets open")

    t0 = time.monotonic()
    g.signal(signal.SIGTERM)
    # During the delay: not ready, but serving.
    gw.wait_until(lambda: g.get("/readyz").status == 503, timeout=1, what="/readyz 503")
    r = g.get("/readyz")  # a new connection, accepted and answered
    assert r.status == 503 and json.loads(r.body)["code"] == "draining", r
    assert g.admin_get("/readyz").status == 503
    assert g.get("/healthz").status == 200
    watch("late", g.ws(headers={"X-Correlation-ID": "spread-late"}))  # an upgrade is still served
    during = time.monotonic() - t0
    assert during < delay, f"the checks above took {during:.2f}s, past the delay: the host is too slow"
    assert not closes, f"a WebSocket was closed during the delay: {closes}"

    # After the delay: the listener is closed.
    gw.wait_until(lambda: _refused(g.port), timeout=delay + 3, interval=0.02, what="public listener closed")
    assert time.monotonic() - t0 >= delay - 0.05

    for t in threads:
        t.join(budget + 3)
    assert len(closes) == 9, closes
    for name, (_, code, reason) in closes.items():
        assert code == 1001 and reason == "gateway is shutting down", (name, code, reason)
    times = sorted(at - t0 for at, _, _ in closes.values())
    assert times[0] >= delay - 0.05, f"first close at {times[0]:.2f}s, before the {delay}s delay"
    assert times[-1] <= delay + window + 1.0, f"last close at {times[-1]:.2f}s, past the close window"
    # Spread: 9 closes over a 3 s window are at least 1.5 s apart end to end,
    # and no quarter second holds half of them (all at once would be 9).
    assert times[-1] - times[0] >= window / 2, times
    busiest = max(sum(1 for u in times if t <= u < t + 0.25) for t in times)
    assert busiest <= 4, times
    rc = g.wait(budget + 3)
    dt = time.monotonic() - t0
    assert rc == 0, g.stderr()[-3000:]
    assert dt <= budget + 0.5, f"exit took {dt:.1f}s with an {budget}s budget"
    line = g.wait_log(lambda l: l.get("msg") == "draining")[0]
    assert line["drain_delay_ms"] == 2000
    for i in range(8):
        assert g.ws_close_log(f"spread-{i}")["cause"] == "shutdown"


def test_drain_waits_for_nothing_when_all_answer(make_gateway):
    # With a 10 s budget the 5 closes are spread over the first 5 s; once the
    # last one is answered the process exits without waiting for the rest.
    g = make_gateway({"GATEWAY_SHUTDOWN_TIMEOUT": "10s"})
    ws = [g.ws() for _ in range(5)]
    t0 = time.monotonic()
    g.signal(signal.SIGTERM)
    pending = list(ws)
    while pending:
        got = [w for w in pending if _readable(w)]
        for w in got:
            f = w.expect_close(timeout=1)
            assert f.close_code == 1001
            w.send_close(1001)
            w.close()  # and ends TCP, as a client does after the handshake
            pending.remove(w)
        assert time.monotonic() - t0 < 8.0, "closes did not come within the close window"
        time.sleep(0.01)
    last = time.monotonic()
    assert g.wait(5) == 0
    assert time.monotonic() - last < 1.5, "drain must end as soon as every connection closed"
    assert last - t0 < 7.0
    for w in ws:
        w.close()


def _readable(w):
    r, _, _ = select.select([w.conn.sock], [], [], 0)
    return bool(r)


# ------------------------------------------------------------ connection limits

def _served(port):
    """A keep-alive connection that got a 200 for /healthz (so it is accepted
    and counted), or None when the gateway closed it without an answer."""
    c = wsraw.Conn("127.0.0.1", port)
    try:
        c.send(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        r = c.read_response(timeout=5.0)
    except (wsraw.Closed, OSError):
        c.close()
        return None
    assert r.status == 200, r
    return c


def test_admin_and_public_connection_limits_are_separate(make_gateway):
    # Issue 8 item 15: idle admin connections must not use up the public
    # limit (55 of them made the public /healthz get a reset), and the admin
    # listener has a limit of its own.
    g = make_gateway({"GATEWAY_MAX_CONNECTIONS": "4", "GATEWAY_ADMIN_MAX_CONNECTIONS": "3",
                      "GATEWAY_HANDSHAKE_TIMEOUT": "30s", "GATEWAY_HTTP_IDLE_TIMEOUT": "60s"})
    conns = []
    try:
        admin = [_served(g.admin_port) for _ in range(3)]
        conns += [c for c in admin if c]
        assert all(admin), "the first 3 admin connections are served"
        extra = _served(g.admin_port)
        conns += [extra] if extra else []
        assert extra is None, "a 4th admin connection is refused (GATEWAY_ADMIN_MAX_CONNECTIONS=3)"
        # The admin connections take nothing from the public limit.
        public = [_served(g.port) for _ in range(4)]
        conns += [c for c in public if c]
        assert all(public), "4 public connections are served while 3 admin connections are open"
        extra = _served(g.port)
        conns += [extra] if extra else []
        assert extra is None, "a 5th public connection is refused (GATEWAY_MAX_CONNECTIONS=4)"
        # The counts, read on an admin connection already open.
        admin[0].send(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        r = admin[0].read_response()
        assert r.status == 200
        m = gw.parse_metrics(r.body.decode())
        assert gw.metric_value(m, "wsgate_connections_rejected_total", reason="admin_max_connections") == 1
        assert gw.metric_value(m, "wsgate_connections_rejected_total", reason="max_connections") == 1
        assert gw.metric_value(m, "wsgate_connections", listener="admin") == 3
        assert gw.metric_value(m, "wsgate_connections", listener="public") == 4
        # A freed admin slot is usable again.
        admin[1].close()
        gw.wait_until(lambda: _keep(conns, _served(g.admin_port)), what="admin slot reused")
    finally:
        for c in conns:
            c.close()
    assert g.stop() == 0


def _keep(conns, c):
    if c:
        conns.append(c)
    return c is not None
