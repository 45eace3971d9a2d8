"""WebSocket relay through "proxy" routes (DESIGN.md sections 3 and 8).

The upstreams are real WebSocket servers (python3-websockets 10.4, legacy
API) run as separate processes by this very file (`python3 test_relay.py
ws-upstream ...`, see the bottom): they report what they see (request path and
headers, close codes, message counts) as JSON lines, and obey text commands
sent through the relay ("cmd:close 4002 y", "cmd:exit", "cmd:flood N SIZE",
...). Every close cause is produced for real and checked in the "ws close" log
line and in wsgate_ws_closes_total.
"""

import asyncio
import json
import os
import re
import select
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import uuid
import zlib

import pytest
import websockets

import gw
import wsraw
import zlib
from wsraw import OP_BINARY, OP_CLOSE, OP_TEXT

PY = "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else sys.executable
HERE = os.path.abspath(__file__)
TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CLOSES = "wsgate_ws_closes_total"


# ============================================================ helpers

def cid(tag="c"):
    return f"relay-{tag}-{uuid.uuid4().hex[:16]}"


def start_ws_upstream(name, protocols=None, unix=None, deflate=False):
    port = gw.free_port()
    argv = [PY, HERE, "ws-upstream", "--port", str(port), "--name", name]
    if protocols:
        argv += ["--protocols", ",".join(protocols)]
    if unix:
        argv += ["--unix", unix]
    if deflate:
        argv += ["--deflate"]
    up = gw.Upstream(argv)
    up.port = port
    up.url = f"http://127.0.0.1:{port}"
    return up


def closed_port():
    """A loopback port nobody listens on (connection refused)."""
    return gw.free_port()


def opened(up, c, timeout=5.0):
    return up.wait_event(lambda e: e.get("ev") == "open" and e.get("cid") == c, timeout, what=f"open {c}")[0]


def up_closed(up, c, timeout=5.0):
    return up.wait_event(lambda e: e.get("ev") == "close" and e.get("cid") == c, timeout, what=f"close {c}")[0]


def hdr(event, name):
    vals = [v for k, v in event["headers"] if k.lower() == name.lower()]
    return vals[0] if len(vals) == 1 else (vals or None)


def closes(g, route, cause):
    return gw.metric_value(g.metrics(), CLOSES, route=route, cause=cause)


def envelope(r, status, code):
    assert r.status == status, r
    body = json.loads(r.body)
    assert body["code"] == code, body
    assert body["correlation_id"] == r.header("X-Correlation-ID"), r
    assert body["details"]["trace_id"] == r.header("X-Trace-ID"), r
    return body


def check_close_line(line, cause, route="/app/", user="-", upstream=None, closed_first=None):
    assert line["cause"] == cause, line
    assert line["route"] == route, line
    assert line["user"] == user, line
    assert line["ip"] == "127.0.0.1", line
    assert isinstance(line["dur_ms"], int) and line["dur_ms"] >= 0, line
    if upstream is not None:
        assert line["upstream"] == upstream, line
    if closed_first is not None:
        assert line["closed_first"] == closed_first, line


def relay_close(g, c, timeout=5.0):
    """The one "ws close" line of a relayed connection, after checking it
    also logged exactly one "ws open" (with the upstream)."""
    line = g.ws_close_log(c, timeout=timeout)
    opens = [l for l in g.logs() if l.get("msg") == "ws open" and l.get("correlation_id") == c]
    assert len(opens) == 1, opens
    assert opens[0]["route"] == line["route"] and opens[0]["upstream"] == line["upstream"], (opens, line)
    return line


def echo_ok(w, text="ping"):
    w.send_text(text)
    op, data, _ = w.recv_message(timeout=5)
    assert (op, data) == (OP_TEXT, text.encode()), (op, data)


def client_proc(port, path, c, headers=None):
    """A websockets-library client in its own process: connects through the
    gateway, checks one echo, prints "ready", then sleeps (its library still
    answers pings until the process is stopped)."""
    argv = [PY, HERE, "ws-client", "--url", f"ws://127.0.0.1:{port}{path}", "--cid", c]
    for k, v in (headers or {}).items():
        argv += ["--header", f"{k}: {v}"]
    p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
    line = p.stdout.readline().decode().strip()
    if line != "ready":
        p.kill()
        p.wait()
        raise AssertionError(f"client did not start: {line!r} {p.stderr.read()!r}")
    return p


def kill_proc(p):
    if p.poll() is None:
        os.kill(p.pid, signal.SIGKILL)
    p.wait(timeout=10)
    p.stdout.close()
    p.stderr.close()


# ============================================================ fixtures

@pytest.fixture(scope="module")
def ups():
    d = tempfile.mkdtemp(prefix="wsgate-relay-")
    a = start_ws_upstream("A", protocols=["chat.v1", "chat.v2"], unix=os.path.join(d, "a.sock"))
    b = start_ws_upstream("B")
    a.sock = os.path.join(d, "a.sock")
    yield {"A": a, "B": b, "dir": d}
    a.stop()
    b.stop()
    for f in os.listdir(d):
        os.unlink(os.path.join(d, f))
    os.rmdir(d)


def relay_routes(ups):
    a, b = ups["A"], ups["B"]
    return [
        {"path": "/app/", "kind": "proxy", "upstream": a.url},
        {"path": "/app/deep/", "kind": "proxy", "upstream": a.url, "strip_prefix": True},
        {"path": "/sock/", "kind": "proxy", "upstream": "unix:" + a.sock},
        {"path": "/slow/", "kind": "proxy", "upstream": a.url, "connect_timeout": "1s"},
        {"path": "/down/", "kind": "proxy", "upstream": f"http://127.0.0.1:{closed_port()}"},
        {"path": "/u/", "kind": "proxy", "user_header": "X-User", "users": {"alice": a.url, "bob": b.url}},
    ]


@pytest.fixture(scope="module")
def routes_file(ups):
    path = os.path.join(ups["dir"], "routes.json")
    gw.write_routes(path, relay_routes(ups))
    return path


@pytest.fixture(scope="module")
def g(routes_file):
    gate = gw.Gateway({"GATEWAY_ROUTES_FILE": routes_file})
    yield gate
    rc = gate.stop()
    assert not gate.sanitizer_errors(), gate.stderr()[-6000:]
    assert rc == 0, gate.stderr()[-3000:]


# ============================================================ handshake

def test_upgrade_answered_after_upstream_accepts(g, ups):
    c = cid("slowok")
    t0 = time.monotonic()
    with g.ws(path="/app/slowok", headers={"X-Correlation-ID": c}) as w:
        took = time.monotonic() - t0
        assert w.response.status == 101
        assert took >= 0.9, f"101 after {took:.2f}s, before the upstream accepted (it waits 1s)"
        assert w.response.header("X-Correlation-ID") == c
        ev = opened(ups["A"], c)
        assert ev["path"] == "/app/slowok"
        echo_ok(w)
        w.send_close(1000)
        assert w.expect_close().close_code == 1000


@pytest.mark.parametrize("offer,selected", [
    (["foo", "chat.v2"], "chat.v2"),
    (["chat.v1"], "chat.v1"),
    (["foo", "bar"], None),
    (None, None),
])
def test_subprotocol_from_upstream(g, ups, offer, selected):
    c = cid("proto")
    with g.ws(path="/app/p", protocols=offer, headers={"X-Correlation-ID": c}) as w:
        assert w.subprotocol == selected, w.response
        assert len(w.response.header_all("Sec-WebSocket-Protocol")) == (1 if selected else 0)
        ev = opened(ups["A"], c)
        assert ev["subprotocol"] == selected
        offered = hdr(ev, "Sec-WebSocket-Protocol")
        if offer:
            assert [p.strip() for p in offered.split(",")] == offer, ev
        else:
            assert offered is None, ev
        echo_ok(w)


def test_long_subprotocol_offer_forwarded_whole(g, ups):
    """Issue 8 item 7: the client's Sec-WebSocket-Protocol offer was cut at
    1,023 bytes toward the upstream, so a protocol the upstream supports,
    offered last, was lost (and a name could be cut in two)."""
    c = cid("longproto")
    offer = [f"x-proto-{i:03d}" for i in range(150)] + ["chat.v2"]
    with g.ws(path="/app/p", protocols=offer, headers={"X-Correlation-ID": c}) as w:
        assert w.subprotocol == "chat.v2", w.response
        ev = opened(ups["A"], c)
        assert [p.strip() for p in hdr(ev, "Sec-WebSocket-Protocol").split(",")] == offer
        echo_ok(w)


def test_headers_toward_upstream(g, ups):
    c = cid("hdrs")
    key = wsraw.new_key()
    req = ("GET /app/h?x=1 HTTP/1.1\r\n"
           f"Host: front.example:{g.port}\r\n"
           "Upgrade: websocket\r\n"
           "Connection: Upgrade, X-Hop-Secret\r\n"
           f"Sec-WebSocket-Key: {key}\r\n"
           "Sec-WebSocket-Version: 13\r\n"
           "X-Hop-Secret: must-not-pass\r\n"
           "Keep-Alive: timeout=5\r\n"
           "TE: trailers\r\n"
           "Trailer: X-Sum\r\n"
           "Proxy-Authorization: Basic eDp5\r\n"
           "X-Forwarded-For: 203.0.113.7\r\n"
           f"X-Correlation-ID: {c}\r\n"
           f"traceparent: 00-{TRACE}-00f067aa0ba902b7-01\r\n"
           "Cookie: session=abc; theme=dark\r\n"
           "Authorization: Bearer end-to-end\r\n"
           "Origin: https://front.example\r\n"
           "X-Custom: kept\r\n"
           "X-Wsgate-User-Id: forged\r\n"
           "X-WSGATE-Session-Id: forged\r\n"
           "\r\n")
    conn = wsraw.Conn("127.0.0.1", g.port)
    try:
        conn.send(req.encode())
        r = conn.read_response(head_only=True)
        assert r.status == 101, r
        assert r.header("Sec-WebSocket-Accept") == wsraw.accept_key(key)
        assert r.header("X-Correlation-ID") == c
        assert r.header("X-Trace-ID") == TRACE
        ev = opened(ups["A"], c)
        assert ev["path"] == "/app/h?x=1"
        assert hdr(ev, "X-Forwarded-For") == "203.0.113.7, 127.0.0.1", ev
        assert hdr(ev, "X-Forwarded-Proto") == "http", ev
        assert hdr(ev, "X-Forwarded-Host") == f"front.example:{g.port}", ev
        assert hdr(ev, "X-Correlation-ID") == c, ev
        tp = hdr(ev, "traceparent")
        assert tp and re.match(rf"^00-{TRACE}-[0-9a-f]{{16}}-[0-9a-f]{{2}}$", tp), ev
        assert hdr(ev, "Cookie") == "session=abc; theme=dark", ev
        assert hdr(ev, "Authorization") == "Bearer end-to-end", ev
        assert hdr(ev, "Origin") == "https://front.example", ev
        assert hdr(ev, "X-Custom") == "kept", ev
        names = [k.lower() for k, _ in ev["headers"]]
        assert not [n for n in names if n.startswith("x-wsgate-")], ev
        for hop in ("keep-alive", "te", "trailer", "proxy-authorization"):
            assert hop not in names, (hop, ev["headers"])
        assert "x-hop-secret" not in (hdr(ev, "Connection") or "").lower(), ev
        # The upstream leg has its own key, not the client's.
        assert hdr(ev, "Sec-WebSocket-Key") != key
        conn.send(wsraw.build_frame(OP_CLOSE, wsraw.close_payload(1000)))
    finally:
        conn.close()


def test_connection_listed_header_not_forwarded(g, ups):
    c = cid("connhop")
    key = wsraw.new_key()
    req = ("GET /app/hop HTTP/1.1\r\n"
           f"Host: 127.0.0.1:{g.port}\r\n"
           "Upgrade: websocket\r\n"
           "Connection: Upgrade, X-Hop-Secret\r\n"
           f"Sec-WebSocket-Key: {key}\r\n"
           "Sec-WebSocket-Version: 13\r\n"
           "X-Hop-Secret: must-not-pass\r\n"
           f"X-Correlation-ID: {c}\r\n"
           "\r\n")
    conn = wsraw.Conn("127.0.0.1", g.port)
    try:
        conn.send(req.encode())
        assert conn.read_response(head_only=True).status == 101
        ev = opened(ups["A"], c)
        conn.send(wsraw.build_frame(OP_CLOSE, wsraw.close_payload(1000)))
    finally:
        conn.close()
    assert "x-hop-secret" not in [k.lower() for k, _ in ev["headers"]], ev["headers"]


def test_big_header_and_long_target_toward_upstream(g, ups):
    """Issue 8 items 7 and 8: with an 8,200-byte Cookie the upstream's request
    had no X-Forwarded-For, X-Correlation-ID nor traceparent (its headers were
    built in 8 KiB); a target over 2,047 bytes was cut. Both arrive whole, and
    dot segments are removed before routing and forwarding."""
    c = cid("bighdr")
    cookie = "s=" + "c" * 8198
    target = "/app/x/../big?pad=" + "p" * 3000 + "&admin=false"
    with g.ws(path=target, headers={"Cookie": cookie, "X-Correlation-ID": c,
                                    "traceparent": f"00-{TRACE}-00f067aa0ba902b7-01"}) as w:
        assert w.response.status == 101, w.response
        ev = opened(ups["A"], c)
        assert ev["path"] == target.replace("/x/../", "/"), ev["path"][:80] + "..." + ev["path"][-40:]
        assert hdr(ev, "Cookie") == cookie
        assert hdr(ev, "X-Forwarded-For") == "127.0.0.1", ev["headers"][-6:]
        assert hdr(ev, "X-Correlation-ID") == c
        assert (hdr(ev, "traceparent") or "").startswith(f"00-{TRACE}-")
        echo_ok(w)


@pytest.mark.parametrize("incoming", ["bad id with spaces", "x" * 300, None])
def test_correlation_id_generated(g, ups, incoming):
    marker = uuid.uuid4().hex
    headers = {"X-Marker": marker}
    if incoming is not None:
        headers["X-Correlation-ID"] = incoming
    with g.ws(path="/app/gen", headers=headers) as w:
        mine = w.response.header("X-Correlation-ID")
        assert mine and mine != incoming and re.match(r"^[A-Za-z0-9._-]{8,128}$", mine), w.response
        ev = ups["A"].wait_event(lambda e: e.get("ev") == "open" and hdr(e, "X-Marker") == marker)[0]
        assert hdr(ev, "X-Correlation-ID") == mine, ev
        tp = hdr(ev, "traceparent")
        assert tp and re.match(r"^00-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$", tp), ev
        assert tp.split("-")[1] == w.response.header("X-Trace-ID")


def test_strip_prefix_and_longest_match(g, ups):
    for path, seen in [("/app/deep/z?q=1", "/z?q=1"), ("/app/deeper", "/app/deeper"), ("/app", "/app"),
                       ("/app/deep", "/")]:
        c = cid("strip")
        with g.ws(path=path, headers={"X-Correlation-ID": c}) as w:
            assert opened(ups["A"], c)["path"] == seen, path
            echo_ok(w)


def test_echo_route_still_there(g):
    with g.ws(path="/probe/ws") as w:
        echo_ok(w, "probe")


def test_unix_socket_upstream(g, ups):
    c = cid("unix")
    with g.ws(path="/sock/x", headers={"X-Correlation-ID": c}) as w:
        assert opened(ups["A"], c)["path"] == "/sock/x"
        echo_ok(w, "over unix")
        w.send_binary(b"\x00\xff" * 40000)
        assert w.recv_message()[1] == b"\x00\xff" * 40000


# ============================================================ refusals

def test_upstream_http_refusal_passed_back(g, ups):
    c = cid("refuse")
    before = closes(g, "/app/", "upstream_closed")
    r = g.ws(path="/app/refuse", headers={"X-Correlation-ID": c}, expect_101=False).response
    assert r.status == 403, r
    assert r.header("X-Refuse-Reason") == "nope", r
    assert r.header("Set-Cookie") == "r=1", r
    assert r.header("Keep-Alive") is None, r
    assert r.header("Upgrade") is None, r
    assert r.body == b"refused by upstream\n", r
    line = g.ws_close_log(c)
    check_close_line(line, "upstream_closed", upstream=ups["A"].url)
    assert line["level"] == "warn", line
    assert line.get("upstream_result"), line
    assert line.get("upstream_status") == 403, line
    assert closes(g, "/app/", "upstream_closed") == before + 1
    assert not [l for l in g.logs() if l.get("msg") == "ws open" and l.get("correlation_id") == c]


def test_upstream_connection_refused_502(g):
    c = cid("down")
    before = closes(g, "/down/", "upstream_closed")
    r = g.ws(path="/down/x", headers={"X-Correlation-ID": c}, expect_101=False).response
    envelope(r, 502, "upstream_unavailable")
    line = g.ws_close_log(c)
    check_close_line(line, "upstream_closed", route="/down/")
    assert line["level"] == "warn" and line.get("upstream_result"), line
    assert closes(g, "/down/", "upstream_closed") == before + 1


@pytest.mark.parametrize("path,status", [("/down/x", 502), ("/slow/hang", 504)])
def test_relay_error_keeps_client_ids(g, path, status):
    c = cid("ids")
    r = g.ws(path=path, headers={"X-Correlation-ID": c, "traceparent": f"00-{TRACE}-00f067aa0ba902b7-01"},
             expect_101=False, timeout=8).response
    assert r.status == status, r
    body = json.loads(r.body)
    assert (r.header("X-Correlation-ID"), body["correlation_id"]) == (c, c), r
    assert (r.header("X-Trace-ID"), body["details"]["trace_id"]) == (TRACE, TRACE), r


def test_upstream_upgrade_timeout_504(g):
    c = cid("hang")
    before = closes(g, "/slow/", "upstream_closed")
    t0 = time.monotonic()
    r = g.ws(path="/slow/hang", headers={"X-Correlation-ID": c}, expect_101=False, timeout=8).response
    took = time.monotonic() - t0
    envelope(r, 504, "upstream_timeout")
    assert 0.8 <= took < 4, took
    line = g.ws_close_log(c)
    check_close_line(line, "upstream_closed", route="/slow/")
    assert closes(g, "/slow/", "upstream_closed") == before + 1


# ============================================================ messages

def test_messages_both_ways(g, ups):
    c = cid("msgs")
    with g.ws(path="/app/m", headers={"X-Correlation-ID": c}) as w:
        msgs = [(OP_TEXT, b"hello"), (OP_TEXT, b""), (OP_TEXT, "ünïcödé ✓ 𝄞".encode()),
                (OP_BINARY, bytes(range(256)) * 300), (OP_BINARY, b""),
                (OP_BINARY, os.urandom(900_000)), (OP_TEXT, b"t" * 300_000)]
        for op, data in msgs:
            w.send_frame(op, data)
            got = w.recv_message(timeout=10)
            assert (got[0], got[1]) == (op, data), (op, len(data), got[0], len(got[1]))
        # Fragmented from the client: reassembled by the time the upstream sees it.
        w.send_frame(OP_TEXT, b"frag-", fin=False)
        w.send_frame(0, b"men-", fin=False)
        w.send_frame(0, b"ted", fin=True)
        assert w.recv_message()[1] == b"frag-men-ted"
        # Upstream-initiated messages too.
        w.send_text("cmd:send from upstream")
        assert w.recv_message()[1] == b"from upstream"
        w.send_close(1000)
        assert w.expect_close().close_code == 1000


@pytest.mark.parametrize("compression", [None, "deflate"])
def test_library_client_through_relay(g, ups, compression):
    c = cid("lib")

    async def main():
        async with websockets.connect(f"ws://127.0.0.1:{g.port}/app/lib", compression=compression,
                                      subprotocols=["chat.v1"], extra_headers={"X-Correlation-ID": c},
                                      max_size=None, ping_interval=None) as ws:
            assert ws.subprotocol == "chat.v1"
            assert [e.name for e in ws.extensions] == (["permessage-deflate"] if compression else [])
            for msg in ["hello", "x" * 70000, b"\x00" * 200_000, os.urandom(50_000), "ü" * 1000, ""]:
                await ws.send(msg)
                echo = await asyncio.wait_for(ws.recv(), 10)
                assert echo == msg and type(echo) is type(msg)
            await ws.close(1000, "bye")
    asyncio.run(asyncio.wait_for(main(), 30))
    ev = opened(ups["A"], c)
    # Negotiated per leg: the upstream (no compression) never saw an extension.
    assert ev["extensions"] == [], ev
    assert up_closed(ups["A"], c)["code"] == 1000


def test_raw_deflate_client_plain_upstream(g, ups):
    c = cid("pmd")
    with g.ws(path="/app/pmd", extensions="permessage-deflate; client_max_window_bits",
              headers={"X-Correlation-ID": c}) as w:
        assert w.deflate, w.response
        assert opened(ups["A"], c)["extensions"] == []
        data = b"compressible " * 5000
        w.send_frame(OP_TEXT, wsraw.deflate_message(data), rsv1=True)
        d = zlib.decompressobj(-15)  # the gateway keeps its context (takeover)
        op, got, frames = w.recv_message(timeout=5, inflate=d)
        assert (op, got) == (OP_TEXT, data)
        # The upstream's answer reaches the deflate client compressed (the
        # relay forwards upstream frames as they came only to clients
        # without compression): a burst of them too.
        assert frames[0].rsv1 and sum(len(f.payload) for f in frames) < len(data) // 10
        for i in range(20):
            w.send_frame(OP_BINARY, b"%02d" % i + b"z" * 3000)
        for i in range(20):
            op, got, frames = w.recv_message(timeout=5, inflate=d)
            assert (op, got) == (OP_BINARY, b"%02d" % i + b"z" * 3000) and frames[0].rsv1, (i, len(got))


# ============================================================ close causes (one test each)

def test_cause_graceful_client_first(g, ups):
    c = cid("gd")
    before = closes(g, "/app/", "graceful")
    w = g.ws(path="/app/gd", headers={"X-Correlation-ID": c})
    echo_ok(w)
    gw.wait_until(lambda: [l for l in g.logs() if l.get("msg") == "ws open" and l.get("correlation_id") == c],
                  what="ws open")
    o = [l for l in g.logs() if l.get("msg") == "ws open" and l.get("correlation_id") == c][0]
    assert o["route"] == "/app/" and o["user"] == "-" and o["ip"] == "127.0.0.1", o
    w.send_close(4001, "x")
    f = w.expect_close()
    assert f.close_code == 4001, f
    assert w.wait_closed(5)
    w.close()
    ue = up_closed(ups["A"], c)
    assert (ue["code"], ue["reason"]) == (4001, "x"), ue
    line = relay_close(g, c)
    check_close_line(line, "graceful", upstream=ups["A"].url, closed_first="downstream")
    assert line["downstream_code"] == 4001, line
    assert line["close_code_sent"] == 4001, line
    assert closes(g, "/app/", "graceful") == before + 1


def test_cause_graceful_upstream_first(g, ups):
    c = cid("gu")
    before = closes(g, "/app/", "graceful")
    w = g.ws(path="/app/gu", headers={"X-Correlation-ID": c})
    w.send_text("cmd:close 4002 y")
    f = w.expect_close()
    assert (f.close_code, f.close_reason) == (4002, "y"), f
    w.send_close(4002, "y")
    assert w.wait_closed(5)
    w.close()
    line = relay_close(g, c)
    check_close_line(line, "graceful", upstream=ups["A"].url, closed_first="upstream")
    assert line["upstream_code"] == 4002, line
    assert line["close_code_sent"] == 4002, line
    assert up_closed(ups["A"], c)["code"] == 4002
    assert closes(g, "/app/", "graceful") == before + 1


def test_cause_downstream_closed_killed_client(g, ups):
    c = cid("kill")
    before = closes(g, "/app/", "downstream_closed")
    p = client_proc(g.port, "/app/kill", c)
    opened(ups["A"], c)
    kill_proc(p)
    line = relay_close(g, c)
    check_close_line(line, "downstream_closed", upstream=ups["A"].url, closed_first="downstream")
    ue = up_closed(ups["A"], c)
    assert ue["code"] == 1001, ue
    assert closes(g, "/app/", "downstream_closed") == before + 1


def test_cause_downstream_closed_reset(g, ups):
    c = cid("rst")
    before = closes(g, "/app/", "downstream_closed")
    w = g.ws(path="/app/rst", headers={"X-Correlation-ID": c})
    echo_ok(w)
    w.reset()
    line = relay_close(g, c)
    check_close_line(line, "downstream_closed", upstream=ups["A"].url, closed_first="downstream")
    assert up_closed(ups["A"], c)["code"] == 1001
    assert closes(g, "/app/", "downstream_closed") == before + 1


def test_cause_upstream_closed_process_exits(routes_file, make_gateway):
    up = start_ws_upstream("X")
    try:
        path = routes_file + ".exit.json"
        gw.write_routes(path, [{"path": "/app/", "kind": "proxy", "upstream": up.url}])
        gate = make_gateway({"GATEWAY_ROUTES_FILE": path})
        c = cid("exit")
        w = gate.ws(path="/app/exit", headers={"X-Correlation-ID": c})
        echo_ok(w)
        w.send_text("cmd:exit")
        f = w.expect_close()
        assert (f.close_code, f.close_reason) == (1014, "upstream_closed"), f
        w.send_close(1000)
        w.close()
        assert up.proc.wait(5) == 0
        line = relay_close(gate, c)
        check_close_line(line, "upstream_closed", upstream=up.url, closed_first="upstream")
        assert line["close_code_sent"] == 1014, line
        assert closes(gate, "/app/", "upstream_closed") == 1
        assert sum(v for (n, l), v in gate.metrics().items() if n == CLOSES and ("route", "/app/") in l) == 1
    finally:
        up.stop()


def test_cause_upstream_closed_reset(g, ups):
    c = cid("uprst")
    before = closes(g, "/app/", "upstream_closed")
    w = g.ws(path="/app/uprst", headers={"X-Correlation-ID": c})
    echo_ok(w)
    w.send_text("cmd:reset")
    f = w.expect_close()
    assert (f.close_code, f.close_reason) == (1014, "upstream_closed"), f
    w.send_close(1014)
    w.close()
    line = relay_close(g, c)
    check_close_line(line, "upstream_closed", closed_first="upstream")
    assert closes(g, "/app/", "upstream_closed") == before + 1


def test_cause_heartbeat_timeout(routes_file, make_gateway, ups):
    gate = make_gateway({"GATEWAY_ROUTES_FILE": routes_file, "GATEWAY_WS_PING_INTERVAL": "500ms",
                         "GATEWAY_WS_PONG_TIMEOUT": "1500ms"})
    c = cid("hb")
    p = client_proc(gate.port, "/app/hb", c)
    try:
        opened(ups["A"], c)
        time.sleep(2.0)  # answered pings keep it open
        assert not [l for l in gate.logs() if l.get("msg") == "ws close" and l.get("correlation_id") == c]
        os.kill(p.pid, signal.SIGSTOP)
        line = relay_close(gate, c, timeout=6)
    finally:
        kill_proc(p)
    check_close_line(line, "heartbeat_timeout", upstream=ups["A"].url, closed_first="gateway")
    ue = up_closed(ups["A"], c)
    assert ue["code"] == 1001, ue
    assert closes(gate, "/app/", "heartbeat_timeout") == 1


def test_cause_shutdown(routes_file, make_gateway, ups):
    gate = make_gateway({"GATEWAY_ROUTES_FILE": routes_file, "GATEWAY_SHUTDOWN_TIMEOUT": "10s",
                         "GATEWAY_WORKERS": "1"})
    c = cid("sd")
    w = gate.ws(path="/app/sd", headers={"X-Correlation-ID": c})
    echo_ok(w)
    # An HTTP request in flight to an upstream that answers in 30 s keeps the
    # drain (and the admin listener) going after the relay closed, so the
    # close counter can be read after the drain closed it.
    holder = wsraw.Conn("127.0.0.1", gate.port)
    holder.send(b"GET /app/hang HTTP/1.1\r\nHost: x\r\n\r\n")
    ups["A"].wait_event(lambda e: e.get("ev") == "request" and e.get("path") == "/app/hang", what="held request")
    before = closes(gate, "/app/", "shutdown")
    gate.signal(signal.SIGTERM)
    f = w.expect_close(timeout=5)
    assert (f.close_code, f.close_reason) == (1001, "gateway is shutting down"), f
    ue = up_closed(ups["A"], c)
    assert ue["code"] == 1001, ue
    line = relay_close(gate, c)
    check_close_line(line, "shutdown", upstream=ups["A"].url, closed_first="gateway")
    assert line["close_code_sent"] == 1001
    # The held request keeps the admin listener answering: the drain's close
    # moved the counter by exactly 1.
    assert before == 0
    assert closes(gate, "/app/", "shutdown") == 1
    w.send_close(1001)
    w.close()
    holder.close()
    assert gate.wait(8) == 0, gate.stderr()[-2000:]



@pytest.mark.parametrize("upstream_first", [False, True], ids=["client_answers_at_once", "upstream_answers_first"])
def test_drain_close_is_the_gateways(routes_file, make_gateway, ups, upstream_first):
    """Review finding 2: a drain close is the gateway's, whoever answers it
    first (closed_first "gateway", not the leg whose answer came first), and
    both legs are told at the same moment with the same code and reason: the
    upstream gets 1001 "gateway is shutting down" before the client answers,
    not the client's echo after it."""
    gate = make_gateway({"GATEWAY_ROUTES_FILE": routes_file, "GATEWAY_SHUTDOWN_TIMEOUT": "10s",
                         "GATEWAY_WORKERS": "1", "GATEWAY_WS_PING_INTERVAL": "0"})
    c = cid("drf" if upstream_first else "drc")
    w = gate.ws(path="/app/dr", headers={"X-Correlation-ID": c})
    echo_ok(w)
    gate.signal(signal.SIGTERM)
    f = w.expect_close(timeout=5)
    assert (f.close_code, f.close_reason) == (1001, "gateway is shutting down"), f
    if upstream_first:
        up_closed(ups["A"], c)  # the upstream was told with the client and answered: the client has not yet
    w.send_close(1001)
    assert w.wait_closed(5)
    w.close()
    ue = up_closed(ups["A"], c)
    assert (ue["code"], ue["reason"]) == (1001, "gateway is shutting down"), ue
    line = relay_close(gate, c)
    check_close_line(line, "shutdown", upstream=ups["A"].url, closed_first="gateway")
    assert (line["close_code_sent"], line["close_code_received"], line["downstream_code"]) == (1001, 1001, 1001), line
    if upstream_first:
        assert line["upstream_code"] == 1001, line
    assert gate.wait(8) == 0, gate.stderr()[-2000:]


def test_idle_timeout_close_is_the_gateways(make_gateway, ups):
    """Review finding 2: a route's idle limit closes both legs at once with
    1000 "idle_timeout"; the client's answer does not make it the client's
    close (closed_first "gateway")."""
    path = os.path.join(ups["dir"], "idle-routes.json")
    gw.write_routes(path, [{"path": "/idle/", "kind": "proxy", "upstream": ups["A"].url, "idle_timeout": "1s"}])
    gate = make_gateway({"GATEWAY_ROUTES_FILE": path, "GATEWAY_WS_PING_INTERVAL": "0"})
    c = cid("idle")
    w = gate.ws(path="/idle/x", headers={"X-Correlation-ID": c})
    echo_ok(w)
    f = w.expect_close(timeout=5)
    assert (f.close_code, f.close_reason) == (1000, "idle_timeout"), f
    w.send_close(1000)
    assert w.wait_closed(5)
    w.close()
    ue = up_closed(ups["A"], c)
    assert (ue["code"], ue["reason"]) == (1000, "idle_timeout"), ue
    line = relay_close(gate, c)
    check_close_line(line, "idle_timeout", route="/idle/", upstream=ups["A"].url, closed_first="gateway")
    assert (line["close_code_sent"], line["close_code_received"], line["downstream_code"]) == (1000, 1000, 1000), line
    assert closes(gate, "/idle/", "idle_timeout") == 1

def test_text_log_close_line(routes_file, make_gateway, ups):
    gate = make_gateway({"GATEWAY_ROUTES_FILE": routes_file, "GATEWAY_LOG_FORMAT": "text"})
    w = gate.ws(path="/app/t")
    echo_ok(w)
    w.send_close(1000)
    w.expect_close()
    w.close()
    w2 = gate.ws(path="/u/t", headers={"X-User": "alice@corp"})
    echo_ok(w2)
    w2.reset()
    pat = re.compile(r"^ws close user=(\S+) ip=127\.0\.0\.1 dur_ms=\d+ cause=(\S+)$")
    hits = gw.wait_until(lambda: [pat.match(l).groups() for l in gate.stderr().splitlines() if pat.match(l)]
                         if len([l for l in gate.stderr().splitlines() if pat.match(l)]) >= 2 else None,
                         what="two text ws close lines")
    assert sorted(hits) == [("-", "graceful"), ("alice", "downstream_closed")], gate.stderr()
    assert not [l for l in gate.stderr().splitlines() if l.startswith("ws close") and not pat.match(l)]


# ============================================================ per-user upstreams

def test_per_user_upstreams(g, ups):
    for user, name, expect in [("alice@corp", "A", "alice"), ("bob", "B", "bob")]:
        c = cid("user")
        w = g.ws(path="/u/x", headers={"X-Correlation-ID": c, "X-User": user})
        ev = opened(ups[name], c)
        assert ev["name"] == name
        assert ev["path"] == "/u/x"
        echo_ok(w)
        w.send_close(1000)
        w.expect_close()
        w.close()
        o = g.wait_log(lambda l: l.get("msg") == "ws open" and l.get("correlation_id") == c)[0]
        assert o["user"] == expect and o["route"] == "/u/", o
        check_close_line(relay_close(g, c), "graceful", route="/u/", user=expect, upstream=ups[name].url)


@pytest.mark.parametrize("user", ["mallory@corp", "", None, "alice-not"])
def test_unknown_user_403(g, ups, user):
    headers = {} if user is None else {"X-User": user}
    r = g.ws(path="/u/x", headers=headers, expect_101=False).response
    envelope(r, 403, "unknown_user")
    r = g.get("/u/plain", headers=headers)
    envelope(r, 403, "unknown_user")


# ============================================================ backpressure

@pytest.fixture(scope="module")
def gnp(routes_file):
    """A gateway without heartbeats: its timer never runs the relay's backstop
    that resumes a paused leg, so a lost drain notification stalls the relay
    for good (and the test fails) instead of being rescued 25 s later."""
    gate = gw.Gateway({"GATEWAY_ROUTES_FILE": routes_file, "GATEWAY_WS_PING_INTERVAL": "0"})
    yield gate
    gate.stop()
    problems = gate.check_exit("gateway")
    assert not problems, "\n".join(problems)


def test_backpressure_client_stops_reading(gnp, ups):
    g = gnp
    n, size = 3200, 64 * 1024  # 200 MiB
    c = cid("bpd")
    w = g.ws(path="/app/bpd", headers={"X-Correlation-ID": c}, timeout=30)
    # A large receive window lets the gateway's socket take a whole queue at
    # once when the client reads again: a queue drained around its write
    # event (fd623c7 undone) then never resumes the upstream.
    w.conn.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
    echo_ok(w)
    time.sleep(0.2)
    base = gw.vm_rss_kb(g.pid)
    w.send_text(f"cmd:flood {n} {size}")
    peak = base

    def sent():
        ev = [e["n"] for e in ups["A"].events() if e.get("ev") == "sent" and e.get("cid") == c]
        return max(ev) if ev else 0

    # The upstream's sends stall: the gateway stopped reading it.
    last, since = -1, time.monotonic()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        peak = max(peak, gw.vm_rss_kb(g.pid))
        s = sent()
        if s != last:
            last, since = s, time.monotonic()
        elif time.monotonic() - since > 1.5 and s > 0:
            break
        time.sleep(0.05)
    stalled = sent()
    assert stalled < n // 2, f"upstream sent {stalled}/{n} messages to a client that reads nothing"
    growth_mib = (peak - base) / 1024
    assert growth_mib < 64, f"gateway RSS grew by {growth_mib:.1f} MiB"
    # Resume: everything arrives, in order.
    filler = b"\xab" * (size - 8)
    for i in range(n):
        op, data, _ = w.recv_message(timeout=20)
        assert op == OP_BINARY and len(data) == size, (i, op, len(data))
        seq = int.from_bytes(data[:8], "big")
        assert seq == i, (i, seq)
        assert data[8:] == filler, i
    ups["A"].wait_event(lambda e: e.get("ev") == "flood_done" and e.get("cid") == c)
    echo_ok(w, "after flood")
    w.send_close(1000)
    w.expect_close()
    w.close()


def _masked_frame(opcode, payload):
    # Mask key 0000: valid masking that costs nothing to apply.
    n = len(payload)
    if n <= 125:
        head = struct.pack("!BB", 0x80 | opcode, 0x80 | n)
    elif n <= 0xFFFF:
        head = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, n)
    else:
        head = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, n)
    return head + b"\0\0\0\0" + payload


def test_backpressure_upstream_stops_reading(gnp, ups):
    g = gnp
    n, size = 2048, 64 * 1024  # 128 MiB
    c = cid("bpu")
    resume = os.path.join(ups["dir"], f"resume-{c}")
    w = g.ws(path="/app/bpu", headers={"X-Correlation-ID": c}, timeout=30)
    echo_ok(w)
    w.send_text("cmd:sink")
    w.send_text(f"cmd:pause_until {resume}")
    ups["A"].wait_event(lambda e: e.get("ev") == "paused" and e.get("cid") == c)
    time.sleep(0.2)
    base = gw.vm_rss_kb(g.pid)
    progress = [0]
    err = []
    filler = b"\xcd" * (size - 8)

    def sender():
        try:
            w.conn.sock.settimeout(60)
            for i in range(n):
                w.conn.sock.sendall(_masked_frame(OP_BINARY, i.to_bytes(8, "big") + filler))
                progress[0] = i + 1
        except Exception as e:  # noqa: BLE001
            err.append(e)

    t = threading.Thread(target=sender, daemon=True)
    t.start()
    peak = base
    last, since = -1, time.monotonic()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        peak = max(peak, gw.vm_rss_kb(g.pid))
        if progress[0] != last:
            last, since = progress[0], time.monotonic()
        elif time.monotonic() - since > 1.5:
            break
        time.sleep(0.05)
    stalled = progress[0]
    try:
        assert stalled < n // 2, f"the client wrote {stalled}/{n} messages while the upstream read nothing"
        growth_mib = (peak - base) / 1024
        assert growth_mib < 64, f"gateway RSS grew by {growth_mib:.1f} MiB"
    finally:
        open(resume, "w").close()
    t.join(60)
    assert not t.is_alive() and not err, err
    w.send_text("cmd:report")
    rep = ups["A"].wait_event(lambda e: e.get("ev") == "report" and e.get("cid") == c, timeout=30)[0]
    assert rep["count"] == n and rep["in_order"] and rep["bytes"] == n * size, rep
    w.send_close(1000)
    w.expect_close()
    w.close()
    os.unlink(resume)


# ============================================================ paused relays: decoding, memory, resets
#
# The upstream here answers the upgrade and then reads nothing. It listens on
# a unix socket, whose kernel buffering is one send buffer
# (/proc/sys/net/core/wmem_default), so what the gateway decoded is known
# within a few hundred KiB. The client sends compressed frames that inflate
# 1000:1 (1 MiB of zeros in ~1 KiB).

MIB = 1 << 20
GW_OUT_HIGH = MIB          # server.h: a leg whose queue passes this pauses its peer
MAX_MSG = MIB              # GATEWAY_WS_MAX_MESSAGE_BYTES default
READ_CHUNK = 64 * 1024     # one read of the worker's buffer
# Per relayed pair, from the high-water marks (README "Backpressure and
# memory"): the upstream queue (GW_OUT_HIGH plus the one message that
# crossed it, in a buffer that may double while growing) and the client's
# input buffer (one read plus one partial frame), plus zlib state.
PAIR_BOUND_KB = (2 * (GW_OUT_HIGH + MAX_MSG) + MAX_MSG + READ_CHUNK + 512 * 1024) // 1024
# Margin for the allocator, per-worker scratch buffers and thread stacks.
RSS_MARGIN_KB = 24 * 1024
BOMB = wsraw.deflate_message(bytes(MIB))


class SilentUpstream:
    """A WebSocket upstream on a unix socket: answers the upgrade, then reads
    nothing until a test calls read_until_close()."""

    def __init__(self, path):
        self.path = path
        self.lis = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.lis.bind(path)
        self.lis.listen(64)
        self.conns = {}
        self.lock = threading.Lock()
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self):
        while True:
            try:
                s, _ = self.lis.accept()
            except OSError:
                return
            head = b""
            while b"\r\n\r\n" not in head:
                chunk = s.recv(4096)
                if not chunk:
                    break
                head += chunk
            hdrs = {}
            for line in head.decode("latin-1").split("\r\n")[1:]:
                if ":" in line:
                    k, v = line.split(":", 1)
                    hdrs[k.strip().lower()] = v.strip()
            s.sendall(("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                       f"Sec-WebSocket-Accept: {wsraw.accept_key(hdrs['sec-websocket-key'])}\r\n\r\n").encode())
            with self.lock:
                self.conns[hdrs.get("x-correlation-id")] = s

    def conn(self, c, timeout=5.0):
        gw.wait_until(lambda: c in self.conns, timeout, what=f"upstream leg of {c}")
        return self.conns[c]

    def read_until_close(self, c, timeout=10.0):
        """Reads the leg's frames up to the gateway's Close; answers it and
        waits for EOF. Returns (binary message sizes, all zero?, close code,
        reason, EOF seen)."""
        s = self.conn(c)
        s.settimeout(timeout)
        buf = bytearray()

        def need(n):
            while len(buf) < n:
                d = s.recv(1 << 20)
                if not d:
                    raise EOFError
                buf.extend(d)

        sizes, zeros = [], True
        while True:
            need(2)
            b0, b1 = buf[0], buf[1]
            n, hl = b1 & 0x7F, 2
            if n == 126:
                need(4)
                n, hl = struct.unpack("!H", bytes(buf[2:4]))[0], 4
            elif n == 127:
                need(10)
                n, hl = struct.unpack("!Q", bytes(buf[2:10]))[0], 10
            assert b1 & 0x80, "frames toward the upstream are masked"
            need(hl + 4 + n)
            key = bytes(buf[hl:hl + 4])
            payload = bytes(buf[hl + 4:hl + 4 + n])
            del buf[:hl + 4 + n]
            op = b0 & 0x0F
            if op == OP_BINARY:
                sizes.append(n)
                zeros = zeros and payload == (key * (n // 4 + 1))[:n]
            elif op == OP_CLOSE:
                data = wsraw.mask_bytes(payload, key)
                code = struct.unpack("!H", data[:2])[0] if len(data) >= 2 else None
                s.sendall(wsraw.build_frame(OP_CLOSE, data[:2], mask=False))
                try:
                    eof = s.recv(1) == b""
                except OSError:
                    eof = True
                return sizes, zeros, code, data[2:].decode(), eof

    def close(self):
        self.lis.close()
        for s in self.conns.values():
            s.close()
        os.unlink(self.path)


@pytest.fixture
def silent(make_gateway):
    """A gateway with route /silent/ relaying to a SilentUpstream; the
    gateway's environment comes from the test (param)."""
    d = tempfile.mkdtemp(prefix="wsgate-silent-")
    up = SilentUpstream(os.path.join(d, "up.sock"))
    routes = gw.write_routes(os.path.join(d, "routes.json"),
                             [{"path": "/silent/", "kind": "proxy", "upstream": "unix:" + up.path}])

    def start(env):
        e = {"GATEWAY_ROUTES_FILE": routes}
        e.update(env)
        return make_gateway(e)

    yield start, up
    up.close()
    os.unlink(routes)
    os.rmdir(d)


def deflate_client(g, c):
    w = g.ws(path=f"/silent/{c}", extensions="permessage-deflate; client_max_window_bits",
             headers={"X-Correlation-ID": c}, timeout=30)
    assert w.deflate, w.response
    return w


def flood_until_stalled(clients, frame, watch_pid, max_frames=40000, stall=2.0, timeout=60):
    """Sends frame over every client socket (nonblocking, round robin) until
    none has made progress for `stall` seconds. Returns (frames fully sent per
    client, peak VmRSS of watch_pid in KiB)."""
    socks = [w.conn.sock for w in clients]
    for s in socks:
        s.setblocking(False)
    pending = [memoryview(frame) for _ in socks]
    sent = [0] * len(socks)
    peak = gw.vm_rss_kb(watch_pid)
    last = time.monotonic()
    deadline = last + timeout
    while time.monotonic() < deadline:
        progress = False
        for i, s in enumerate(socks):
            while pending[i] is not None:
                try:
                    k = s.send(pending[i])
                except BlockingIOError:
                    break
                progress = True
                pending[i] = pending[i][k:]
                if not pending[i]:
                    sent[i] += 1
                    pending[i] = memoryview(frame) if sent[i] < max_frames else None
        peak = max(peak, gw.vm_rss_kb(watch_pid))
        now = time.monotonic()
        if progress:
            last = now
        elif now - last > stall:
            return sent, peak
        select.select([], socks, [], 0.05)
    raise AssertionError(f"the clients never stalled: {sent}")


def decoded_bound_msgs():
    """Messages of 1 MiB the gateway may have decoded for one paused pair:
    the upstream queue up to GW_OUT_HIGH plus the message that crossed it,
    plus what the unix socket's kernel buffer took."""
    with open("/proc/sys/net/core/wmem_default") as f:
        wmem = int(f.read())
    return 1 + -(-(GW_OUT_HIGH + 2 * wmem) // MIB)


def test_paused_relay_decodes_nothing_more_and_memory_stays_bounded(silent):
    """Item 2 of issue 8: 1 KiB frames that inflate to 1 MiB each, toward an
    upstream that reads nothing. Once a pair is paused nothing more is decoded
    (the messages the gateway counted stay within the high-water marks), and
    the gateway's RSS stays under N pairs' bound plus a margin. The budget is
    off here (ratio 0) so only the pause bounds memory."""
    start, up = silent
    g = start({"GATEWAY_WS_MAX_INFLATE_RATIO": "0", "GATEWAY_WS_PING_INTERVAL": "60s",
               "GATEWAY_WS_PONG_TIMEOUT": "120s"})
    n = 8
    ids = [cid(f"amp{i}") for i in range(n)]
    clients = [deflate_client(g, c) for c in ids]
    for c in ids:
        up.conn(c)
    time.sleep(0.3)
    base = gw.vm_rss_kb(g.pid)
    frame = _masked_frame(OP_BINARY | 0x40, BOMB)  # RSV1: compressed
    sent, peak = flood_until_stalled(clients, frame, g.pid)
    assert all(k > 500 for k in sent), sent  # the kernel's buffers took the rest
    bound_kb = n * PAIR_BOUND_KB + RSS_MARGIN_KB
    growth = peak - base
    assert growth < bound_kb, f"RSS grew {growth} KiB for {n} paused pairs (bound {bound_kb} KiB)"
    # What was decoded: counted once a second into the metric.
    limit = decoded_bound_msgs()
    time.sleep(1.5)
    decoded = g.metric("wsgate_ws_messages_total", route="/silent/", direction="in")
    assert decoded <= n * limit, f"{decoded} messages decoded for {n} paused pairs (at most {limit} each)"
    time.sleep(1.5)
    assert g.metric("wsgate_ws_messages_total", route="/silent/", direction="in") == decoded, \
        "decoding went on while paused"
    assert gw.vm_rss_kb(g.pid) - base < bound_kb
    # Each leg carries exactly what its client's session decoded, intact.
    for w, c in zip(clients, ids):
        w.conn.sock.setblocking(True)
        w.conn.reset()
        line = relay_close(g, c, timeout=10)
        assert line["cause"] == "downstream_closed" and 1 <= line["msgs_in"] <= limit, line
        sizes, zeros, code, reason, eof = up.read_until_close(c)
        assert sizes == [MIB] * line["msgs_in"] and zeros, (len(sizes), line)
        assert (code, reason, eof) == (1001, "downstream_closed", True)


def test_reset_while_paused_noticed_at_once(silent):
    """Item 16 of issue 8: a client that resets while its leg is paused for
    backpressure ends at once (cause downstream_closed), not at the next
    heartbeat 60 s later, and the upstream leg is closed with 1001."""
    start, up = silent
    g = start({"GATEWAY_WS_PING_INTERVAL": "60s", "GATEWAY_WS_PONG_TIMEOUT": "120s"})
    c = cid("rstp")
    w = g.ws(path=f"/silent/{c}", headers={"X-Correlation-ID": c}, timeout=30)
    up.conn(c)
    frame = _masked_frame(OP_BINARY, bytes(64 * 1024))
    sent, _ = flood_until_stalled([w], frame, g.pid)
    before = closes(g, "/silent/", "downstream_closed")
    t0 = time.monotonic()
    w.conn.sock.setblocking(True)
    w.conn.reset()
    line = relay_close(g, c, timeout=10)
    took = time.monotonic() - t0
    assert took < 3, f"the reset was noticed after {took:.1f}s"
    check_close_line(line, "downstream_closed", route="/silent/", upstream="unix:" + up.path,
                     closed_first="downstream")
    assert line["dur_ms"] < 30000, line
    assert closes(g, "/silent/", "downstream_closed") == before + 1
    sizes, zeros, code, reason, eof = up.read_until_close(c)
    assert len(sizes) == line["msgs_in"] and sizes == [64 * 1024] * len(sizes) and zeros
    assert (code, reason, eof) == (1001, "downstream_closed", True)


def test_inflate_budget_closes_1008(make_gateway):
    """Item 2 of issue 8, the decompression budget: frames of ~1 KiB that
    inflate to 1 MiB each, on /probe/ws (which inflates, then deflates its
    echo). The first fits the slack; the connection then closes with 1008
    "inflate_budget_exceeded", the close line says cause inflate_budget
    with the correlation id, the metric counts it, and the gateway spent
    well under a second of CPU (4.8 s for 507 such frames before)."""
    g = make_gateway({})
    c = cid("budget")
    before = gw.metric_value(g.metrics(), CLOSES, route="/probe/ws", cause="inflate_budget")
    w = g.ws(path="/probe/ws", extensions="permessage-deflate; client_max_window_bits",
             headers={"X-Correlation-ID": c}, timeout=10)
    assert w.deflate, w.response
    cpu0 = _cpu_seconds(g.pid)
    frames = _masked_frame(OP_BINARY | 0x40, BOMB) * 507

    def send():
        try:
            w.conn.sock.sendall(frames)
        except OSError:
            pass  # the gateway may reset before taking everything

    t = threading.Thread(target=send, daemon=True)
    t.start()
    op, data, _ = w.recv_message(timeout=10)
    assert (op, len(data)) == (OP_BINARY, MIB)  # the first came back
    f = w.expect_close(timeout=10)
    assert (f.close_code, f.close_reason) == (1008, "inflate_budget_exceeded"), f
    line = g.ws_close_log(c, timeout=10)
    assert line["cause"] == "inflate_budget" and line["close_code_sent"] == 1008, line
    assert line["error"] == "inflate_budget_exceeded" and line["msgs_in"] == 1, line
    assert gw.metric_value(g.metrics(), CLOSES, route="/probe/ws", cause="inflate_budget") == before + 1
    spent = _cpu_seconds(g.pid) - cpu0
    assert spent < 1.0, f"{spent:.2f}s of CPU for 507 KiB of frames"
    t.join(10)
    assert not t.is_alive()
    w.close()


def _cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# ============================================================ reload

def test_reload_keeps_open_relays(make_gateway, ups, tmp_path):
    a, b = ups["A"], ups["B"]
    path = str(tmp_path / "routes.json")
    gw.write_routes(path, [{"path": "/app/", "kind": "proxy", "upstream": a.url}])
    gate = make_gateway({"GATEWAY_ROUTES_FILE": path})
    c1 = cid("r1")
    w1 = gate.ws(path="/app/one", headers={"X-Correlation-ID": c1})
    opened(a, c1)
    echo_ok(w1)

    gw.write_routes(path, [{"path": "/app/", "kind": "proxy", "upstream": b.url, "strip_prefix": True}])
    gate.signal(signal.SIGHUP)
    gate.wait_log(lambda l: l.get("msg") == "routes reloaded", what="routes reloaded")
    echo_ok(w1, "still relayed after reload")
    c2 = cid("r2")
    w2 = gate.ws(path="/app/two", headers={"X-Correlation-ID": c2})
    assert opened(b, c2)["path"] == "/two"
    echo_ok(w2)

    refused = lambda: [l for l in gate.logs() if l.get("msg") == "routes reload refused; keeping the old table"]
    broken = [
        "{not json",
        json.dumps({"routes": [{"path": "/app/", "kind": "proxy", "upstream": a.url, "colour": "red"}]}),
        json.dumps({"routes": [{"path": "/app/", "kind": "proxy", "upstream": "ftp://127.0.0.1:1"}]}),
        json.dumps({"routes": [{"path": "/app/", "kind": "proxy", "upstream": a.url, "connect_timeout": "soon"}]}),
        json.dumps({"routes": [{"path": "/app/", "kind": "proxy"}]}),
    ]
    for i, text in enumerate(broken):
        with open(path + ".tmp", "w") as f:
            f.write(text)
        os.replace(path + ".tmp", path)
        gate.signal(signal.SIGHUP)
        gw.wait_until(lambda: len(refused()) == i + 1, what=f"refusal {i}")
        line = refused()[i]
        assert line.get("error"), line
        assert line["level"] in ("error", "warn"), line
        # The old table (upstream B, stripped) is still in force.
        c3 = cid("r3")
        w3 = gate.ws(path="/app/three", headers={"X-Correlation-ID": c3})
        assert opened(b, c3)["path"] == "/three"
        echo_ok(w3)
        w3.send_close(1000)
        w3.expect_close()
        w3.close()
    time.sleep(0.1)
    assert len(refused()) == len(broken)
    assert len([l for l in gate.logs() if l.get("msg") == "routes reloaded"]) == 1
    echo_ok(w1, "still relayed after refused reloads")
    echo_ok(w2)
    for w in (w1, w2):
        w.send_close(1000)
        assert w.expect_close().close_code == 1000
        w.close()


@pytest.mark.parametrize("text", [
    "{not json",
    json.dumps({"routes": [{"path": "/app/", "kind": "proxy", "upstream": "http://127.0.0.1:9", "bogus": 1}]}),
    json.dumps({"routes": [{"path": "/app/", "kind": "proxy", "upstream": "gopher://x"}]}),
])
def test_broken_routes_file_at_startup(tmp_path, text):
    path = tmp_path / "routes.json"
    path.write_text(text)
    r = gw.run_cli(["serve"], env={"GATEWAY_ROUTES_FILE": str(path),
                                   "GATEWAY_PUBLIC_HTTP_ADDR": f"127.0.0.1:{gw.free_port()}",
                                   "GATEWAY_ADMIN_HTTP_ADDR": "", "GATEWAY_AUTHENTICATED_GRPC_ADDR": ""})
    assert r.returncode == 1, r  # startup failed (README "Exit status")
    lines = [json.loads(l) for l in r.stderr.decode().splitlines() if l.startswith("{")]
    assert [l for l in lines if l.get("msg") == "startup failed"], r.stderr


# ============================================================ helper processes
# `python3 test_relay.py ws-upstream ...` and `python3 test_relay.py ws-client ...`

def _ws_upstream_main(args):
    import argparse
    import http

    import websockets as wsl
    import websockets.legacy.http as wsl_http
    from websockets.exceptions import ConnectionClosed

    wsl_http.MAX_LINE = 64 * 1024  # heads as big as the gateway forwards (its default is 4,110 bytes a line)

    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--unix")
    ap.add_argument("--name", default="up")
    ap.add_argument("--protocols", default="")
    ap.add_argument("--deflate", action="store_true")
    ap.add_argument("--events", required=True)
    o = ap.parse_args(args)
    out = open(o.events, "a", buffering=1)

    def emit(**kw):
        out.write(json.dumps(kw) + "\n")
        out.flush()

    async def process_request(path, headers):
        emit(ev="request", path=path)
        if "/refuse" in path:
            return (http.HTTPStatus.FORBIDDEN, [("X-Refuse-Reason", "nope"), ("Set-Cookie", "r=1"), ("Keep-Alive", "timeout=9"),
                          ("Content-Type", "text/plain")], b"refused by upstream\n")
        if "/hang" in path:
            await asyncio.sleep(30)
        if "/slowok" in path:
            await asyncio.sleep(1.0)
        return None

    async def handler(ws, path):
        c = ws.request_headers.get("X-Correlation-ID")
        emit(ev="open", cid=c, name=o.name, path=path, headers=list(ws.request_headers.raw_items()),
             subprotocol=ws.subprotocol, extensions=[e.name for e in ws.extensions], port=ws.remote_address[1]
             if ws.remote_address else None)
        sink, count, nbytes, in_order = False, 0, 0, True
        try:
            while True:
                msg = await ws.recv()
                if isinstance(msg, str) and msg.startswith("cmd:"):
                    parts = msg.split(" ")
                    cmd = parts[0]
                    if cmd == "cmd:close":
                        await ws.close(int(parts[1]), parts[2] if len(parts) > 2 else "")
                    elif cmd == "cmd:exit":
                        out.flush()
                        os._exit(0)
                    elif cmd == "cmd:reset":
                        sock = ws.transport.get_extra_info("socket")
                        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                        ws.transport.abort()
                    elif cmd == "cmd:send":
                        await ws.send(msg[len("cmd:send "):])
                    elif cmd == "cmd:flood":
                        n, size = int(parts[1]), int(parts[2])
                        filler = b"\xab" * (size - 8)
                        for i in range(n):
                            await ws.send(i.to_bytes(8, "big") + filler)
                            if i % 16 == 15 or i == n - 1:
                                emit(ev="sent", cid=c, n=i + 1)
                        emit(ev="flood_done", cid=c)
                    elif cmd == "cmd:sink":
                        sink = True
                    elif cmd == "cmd:pause_until":
                        emit(ev="paused", cid=c)
                        while not os.path.exists(parts[1]):
                            await asyncio.sleep(0.05)
                        emit(ev="resumed", cid=c)
                    elif cmd == "cmd:report":
                        emit(ev="report", cid=c, count=count, bytes=nbytes, in_order=in_order)
                elif sink:
                    if not isinstance(msg, bytes) or int.from_bytes(msg[:8], "big") != count:
                        in_order = False
                    count += 1
                    nbytes += len(msg)
                else:
                    await ws.send(msg)
        except ConnectionClosed:
            pass
        emit(ev="close", cid=c, code=ws.close_code, reason=ws.close_reason)

    async def main():
        kw = dict(subprotocols=[p for p in o.protocols.split(",") if p] or None,
                  compression="deflate" if o.deflate else None, max_size=None, ping_interval=None,
                  process_request=process_request)
        servers = [await wsl.serve(handler, "127.0.0.1", o.port, **kw)]
        if o.unix:
            servers.append(await wsl.unix_serve(handler, o.unix, **kw))
        emit(ev="ready", port=o.port)
        stop = asyncio.get_running_loop().create_future()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, lambda: stop.done() or stop.set_result(1))
        await stop
        for s in servers:
            s.close()

    asyncio.run(main())


def _ws_client_main(args):
    import argparse
    import websockets as wsl

    ap = argparse.ArgumentParser()
    ap.add_argument("--url", required=True)
    ap.add_argument("--cid", required=True)
    ap.add_argument("--header", action="append", default=[])
    o = ap.parse_args(args)
    headers = [("X-Correlation-ID", o.cid)] + [tuple(x.strip() for x in h.split(":", 1)) for h in o.header]

    async def main():
        async with wsl.connect(o.url, extra_headers=headers, ping_interval=None) as ws:
            await ws.send("hello")
            assert await ws.recv() == "hello"
            print("ready", flush=True)
            await asyncio.sleep(3600)

    asyncio.run(main())


if __name__ == "__main__":
    if sys.argv[1] == "ws-upstream":
        _ws_upstream_main(sys.argv[2:])
    elif sys.argv[1] == "ws-client":
        _ws_client_main(sys.argv[2:])
    else:
        raise SystemExit(f"unknown helper {sys.argv[1]!r}")
