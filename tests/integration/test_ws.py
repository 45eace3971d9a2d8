"""WebSocket behaviour of the echo route /probe/ws beyond frame conformance:
the handshake checks, subprotocol and extension negotiation, a real client
library (python3-websockets 10.4), open/close logs and causes, heartbeats and
the echo idle limit."""

import asyncio
import json
import re
import socket
import time

import pytest
import websockets

import gw
import wsraw
from wsraw import OP_BINARY, OP_CLOSE, OP_PING, OP_PONG, OP_TEXT

ECHO_PROTO = "wsgate.echo.v1"
SNAKE = re.compile(r"^[a-z][a-z0-9_]*$")


def refused(gateway, **kw):
    w = gateway.ws(expect_101=False, **kw)
    w.close()
    assert w.response.status != 101, w.response
    return w.response


def envelope(r, code):
    body = json.loads(r.body)
    assert body["code"] == code, body
    assert body["correlation_id"] == r.header("X-Correlation-ID")
    assert body["details"]["trace_id"] == r.header("X-Trace-ID")
    return body


# ------------------------------------------------------------ handshake

def test_handshake_ok(gateway):
    with gateway.ws() as w:
        r = w.response
        assert r.status == 101
        assert r.header("Upgrade", "").lower() == "websocket"
        assert "upgrade" in r.header("Connection", "").lower()
        assert r.header("X-Correlation-ID")
        assert w.subprotocol is None
        w.send_text("hi")
        op, data, frames = w.recv_message()
        assert (op, data) == (OP_TEXT, b"hi")
        assert not frames[0].masked


@pytest.mark.parametrize("version", ["12", "8", "14", "13, 8", "abc", None])
def test_bad_version_426(gateway, version):
    r = refused(gateway, version=version)
    assert r.status == 426, r
    assert r.header("Sec-WebSocket-Version") == "13", r
    envelope(r, "unsupported_websocket_version")


@pytest.mark.parametrize("key", [
    False,  # missing
    "",
    "abc",
    "AAAAAAAAAAAAAAAAAAAAAAA=",  # 17 bytes? no: 23 chars + pad -> 17 bytes
    "AAAAAAAAAAAAAAAAAAAA",  # 15 bytes
    "AAAAAAAAAAAAAAAAAAAAAAAAAAAA",  # 21 bytes
    "!!!!!!!!!!!!!!!!!!!!!!==",
    "dGhlIHNhbXBsZSBub25jZQ",  # 16 bytes but unpadded
])
def test_bad_key_400(gateway, key):
    r = refused(gateway, key=key)
    assert r.status == 400, r
    envelope(r, "invalid_websocket_key")


def test_plain_get_426(gateway):
    r = gateway.get("/probe/ws")
    assert r.status == 426, r
    envelope(r, "websocket_upgrade_required")


def test_post_with_upgrade_405(gateway):
    c = wsraw.Conn("127.0.0.1", gateway.port)
    try:
        c.send(("POST /probe/ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                f"Sec-WebSocket-Key: {wsraw.new_key()}\r\nSec-WebSocket-Version: 13\r\n"
                "Content-Length: 0\r\n\r\n").encode())
        r = c.read_response()
        assert r.status == 405, r
        assert "GET" in (r.header("Allow") or "")
    finally:
        c.close()


def test_correlation_id_in_101_and_logs(gateway):
    cid = "ws-corr-abc123"
    with gateway.ws(headers={"X-Correlation-ID": cid}) as w:
        assert w.response.header("X-Correlation-ID") == cid
        opened = gateway.wait_log(lambda l: l.get("msg") == "ws open" and l.get("correlation_id") == cid)
        assert len(opened) == 1
        o = opened[0]
        assert o["route"] == "/probe/ws" and o["user"] == "-" and o["ip"] == "127.0.0.1"
        assert o["service"] == "wsgate"
        w.send_close(1000)
        assert w.expect_close().close_code == 1000


def test_traceparent_on_upgrade(gateway):
    trace = "0af7651916cd43dd8448eb211c80319c"
    with gateway.ws(headers={"traceparent": f"00-{trace}-b7ad6b7169203331-01"}) as w:
        assert w.response.header("X-Trace-ID") == trace


# ------------------------------------------------------------ subprotocols

@pytest.mark.parametrize("offer,expected", [
    ([ECHO_PROTO], ECHO_PROTO),
    (["foo", ECHO_PROTO], ECHO_PROTO),
    ([ECHO_PROTO, "bar"], ECHO_PROTO),
    (["foo", "bar"], None),
    (["wsgate.echo.v2"], None),
    (None, None),
])
def test_subprotocol(gateway, offer, expected):
    with gateway.ws(protocols=offer) as w:
        assert w.response.status == 101
        assert w.subprotocol == expected
        assert len(w.response.header_all("Sec-WebSocket-Protocol")) == (1 if expected else 0)
        w.send_text("x")
        assert w.recv_message()[1] == b"x"


def test_subprotocol_in_several_headers(gateway):
    hdrs = [("Sec-WebSocket-Protocol", "foo"), ("Sec-WebSocket-Protocol", f"bar, {ECHO_PROTO}")]
    with gateway.ws(headers=hdrs) as w:
        assert w.subprotocol == ECHO_PROTO


# ------------------------------------------------------------ extensions

@pytest.mark.parametrize("offer", [
    "permessage-deflate",
    "permessage-deflate; client_max_window_bits",
    "permessage-deflate; client_max_window_bits=15; server_no_context_takeover",
    "x-unknown-ext, permessage-deflate",
])
def test_deflate_negotiated(gateway, offer):
    with gateway.ws(extensions=offer) as w:
        assert w.deflate, w.response
        assert len(w.response.header_all("Sec-WebSocket-Extensions")) == 1
        assert "x-unknown-ext" not in w.response.header("Sec-WebSocket-Extensions")
        if "server_no_context_takeover" in offer:
            assert "server_no_context_takeover" in w.deflate_params


def test_no_deflate_without_offer(gateway):
    with gateway.ws() as w:
        assert w.response.header("Sec-WebSocket-Extensions") is None


def test_unknown_extension_ignored(gateway):
    with gateway.ws(extensions="x-webkit-foo; bar=1") as w:
        assert w.response.header("Sec-WebSocket-Extensions") is None
        w.send_text("ok")
        assert w.recv_message()[1] == b"ok"


def test_deflate_off_by_config(make_gateway):
    g = make_gateway({"GATEWAY_WS_DEFLATE": "off"})
    with g.ws(extensions="permessage-deflate; client_max_window_bits") as w:
        assert w.response.header("Sec-WebSocket-Extensions") is None
        w.send_text("a" * 200)
        f = w.recv_frame()
        assert f.opcode == OP_TEXT and not f.rsv1 and f.payload == b"a" * 200
        # RSV1 is now a protocol error: no extension was negotiated.
        w.send_frame(OP_TEXT, wsraw.deflate_message(b"hello"), rsv1=True)
        assert w.expect_close().close_code == 1002


# ------------------------------------------------------------ real client library

def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 30))


@pytest.mark.parametrize("compression", [None, "deflate"])
def test_websockets_library_echo(gateway, compression):
    async def main():
        uri = f"ws://127.0.0.1:{gateway.port}/probe/ws"
        async with websockets.connect(uri, compression=compression, subprotocols=[ECHO_PROTO],
                                      max_size=None, ping_interval=None) as ws:
            assert ws.subprotocol == ECHO_PROTO
            assert ws.response_headers.get("X-Correlation-ID")
            names = [e.name for e in ws.extensions]
            assert names == (["permessage-deflate"] if compression else [])
            for msg in ["hello", "", "ünïcödé ✓ 𝄞", "x" * 5000, b"\x00\x01\xff" * 100, b"", bytes(range(256)) * 300]:
                await ws.send(msg)
                echo = await asyncio.wait_for(ws.recv(), 5)
                assert echo == msg and type(echo) is type(msg)
            pong = await ws.ping(b"lib-ping")
            await asyncio.wait_for(pong, 5)
            await ws.close(code=1000, reason="bye")
            assert ws.close_code == 1000
    run(main())


def test_websockets_library_close_codes(gateway):
    async def main():
        for code in (1000, 1001, 3000, 4000, 4999):
            async with websockets.connect(f"ws://127.0.0.1:{gateway.port}/probe/ws", ping_interval=None) as ws:
                await ws.close(code=code, reason=f"r{code}")
                assert ws.close_code == code
    run(main())


# ------------------------------------------------------------ close logs and causes

def corr(w):
    return w.response.header("X-Correlation-ID")


def check_close_log(line, cause):
    assert line["cause"] == cause, line
    assert line["route"] == "/probe/ws"
    assert line["user"] == "-"
    assert line["ip"] == "127.0.0.1"
    assert isinstance(line["dur_ms"], int) and line["dur_ms"] >= 0, line
    assert line["service"] == "wsgate"


def test_close_graceful_log(gateway):
    w = gateway.ws()
    time.sleep(0.3)
    w.send_text("one")
    w.recv_message()
    w.send_close(1000, "done")
    f = w.expect_close()
    assert f.close_code == 1000 and not f.masked
    assert w.wait_closed(3)
    w.close()
    line = gateway.ws_close_log(corr(w))
    check_close_log(line, "graceful")
    assert line["close_code_received"] == 1000
    assert line["close_code_sent"] == 1000
    assert line["dur_ms"] >= 250


def test_close_vanish_log(gateway):
    w = gateway.ws()
    w.send_text("x")
    w.recv_message()
    w.close()
    line = gateway.ws_close_log(corr(w))
    check_close_log(line, "downstream_closed")
    assert "close_code_received" not in line or line["close_code_received"] in (None, 1006), line


def test_close_reset_log(gateway):
    w = gateway.ws()
    w.send_text("x")
    w.recv_message()
    w.reset()
    check_close_log(gateway.ws_close_log(corr(w)), "downstream_closed")


def test_close_reset_mid_frame_log(gateway):
    w = gateway.ws()
    w.send_raw(wsraw.build_frame(OP_BINARY, b"z" * 1000)[:300])
    time.sleep(0.1)
    w.reset()
    check_close_log(gateway.ws_close_log(corr(w)), "downstream_closed")


def test_close_protocol_error_log(gateway):
    w = gateway.ws()
    w.send_frame(OP_TEXT, b"unmasked", mask=False)
    f = w.expect_close()
    assert f.close_code == 1002 and SNAKE.match(f.close_reason), f
    assert w.wait_closed(3)
    w.close()
    line = gateway.ws_close_log(corr(w))
    check_close_log(line, "protocol_error")
    assert line["close_code_sent"] == 1002


def test_one_close_log_per_connection(gateway):
    ws = [gateway.ws() for _ in range(10)]
    for i, w in enumerate(ws):
        if i % 3 == 0:
            w.send_close(1000)
            w.expect_close()
        elif i % 3 == 1:
            w.send_frame(OP_PING, b"p" * 126)
            w.expect_close()
        w.close()
    for w in ws:
        gateway.ws_close_log(corr(w))  # asserts exactly one
        opens = [l for l in gateway.logs() if l.get("msg") == "ws open" and l.get("correlation_id") == corr(w)]
        assert len(opens) == 1


@pytest.fixture(scope="module")
def small_gateway():
    g = gw.Gateway({"GATEWAY_WS_MAX_MESSAGE_BYTES": "64KiB"})
    yield g
    assert g.stop() == 0
    assert not g.sanitizer_errors()


def test_too_large_log(small_gateway):
    w = small_gateway.ws()
    w.send_binary(b"a" * (64 * 1024))  # exactly the limit: echoed
    assert w.recv_message(timeout=10)[1] == b"a" * (64 * 1024)
    w.send_binary(b"a" * (64 * 1024 + 1))
    f = w.expect_close()
    assert f.close_code == 1009 and f.close_reason == "message_too_large"
    w.close()
    line = small_gateway.ws_close_log(corr(w))
    check_close_log(line, "too_large")
    assert line["close_code_sent"] == 1009


def test_too_large_fragments(small_gateway):
    w = small_gateway.ws()
    for _ in range(4):
        w.send_frame(OP_BINARY if _ == 0 else 0, b"b" * 16384, fin=False)
    w.send_frame(0, b"b", fin=True)
    f = w.expect_close()
    assert f.close_code == 1009
    w.close()


def test_too_large_detected_from_header(small_gateway):
    # A frame header announcing more than the limit is refused before the payload.
    w = small_gateway.ws()
    hdr = wsraw.build_frame(OP_BINARY, b"q" * (1 << 20))[:14]
    w.send_raw(hdr)
    f = w.expect_close(timeout=3)
    assert f.close_code == 1009
    w.close()


def test_text_log_format(make_gateway):
    g = make_gateway({"GATEWAY_LOG_FORMAT": "text"})
    w = g.ws()
    w.send_close(1000)
    w.expect_close()
    w.close()
    w2 = g.ws()
    w2.close()
    pat = re.compile(r"^ws close user=- ip=127\.0\.0\.1 dur_ms=\d+ cause=(graceful|downstream_closed)$")
    lines = gw.wait_until(lambda: [l for l in g.stderr().splitlines() if pat.match(l)] if
                          len([l for l in g.stderr().splitlines() if pat.match(l)]) >= 2 else None,
                          what="two text ws close lines")
    causes = sorted(pat.match(l).group(1) for l in lines)
    assert causes == ["downstream_closed", "graceful"], g.stderr()
    assert not any(l.startswith("{") for l in g.stderr().splitlines())


# ------------------------------------------------------------ heartbeats and idle limit

@pytest.fixture(scope="module")
def hb_gateway():
    g = gw.Gateway({"GATEWAY_WS_PING_INTERVAL": "1s", "GATEWAY_WS_PONG_TIMEOUT": "2s"})
    yield g
    assert g.stop() == 0
    assert not g.sanitizer_errors()


def test_heartbeat_answered_stays_open(hb_gateway):
    w = hb_gateway.ws()
    pings = 0
    t0 = time.monotonic()
    while time.monotonic() - t0 < 4.5:
        try:
            f = w.recv_frame(timeout=0.5)
        except wsraw.Timeout:
            continue
        assert f.opcode == OP_PING, f
        assert not f.masked
        pings += 1
        w.send_frame(OP_PONG, f.payload)
    assert pings >= 3, pings
    w.send_text("still here")
    assert w.recv_message()[1] == b"still here"
    w.send_close(1000)
    assert w.expect_close().close_code == 1000
    w.close()


def test_heartbeat_library_client_stays_open(hb_gateway):
    async def main():
        async with websockets.connect(f"ws://127.0.0.1:{hb_gateway.port}/probe/ws", ping_interval=None) as ws:
            await asyncio.sleep(4.0)
            await ws.send("after sleep")
            assert await asyncio.wait_for(ws.recv(), 5) == "after sleep"
    run(main())


def test_heartbeat_timeout(hb_gateway):
    w = hb_gateway.ws()
    t0 = time.monotonic()
    close = None
    pings = 0
    while time.monotonic() - t0 < 8:
        try:
            f = w.recv_frame(timeout=0.5)
        except wsraw.Timeout:
            continue
        except wsraw.Closed:
            break
        if f.opcode == OP_PING:
            pings += 1  # never answered
        elif f.opcode == OP_CLOSE:
            close = f
            break
    dt = time.monotonic() - t0
    assert pings >= 1
    assert close is not None, "no Close after unanswered pings"
    assert SNAKE.match(close.close_reason) or close.close_reason == ""
    assert 1.5 <= dt <= 5.5, dt
    assert w.wait_closed(4)
    w.close()
    line = hb_gateway.ws_close_log(corr(w))
    check_close_log(line, "heartbeat_timeout")


def test_heartbeat_payloads_distinct(hb_gateway):
    w = hb_gateway.ws()
    payloads = []
    t0 = time.monotonic()
    while len(payloads) < 2 and time.monotonic() - t0 < 5:
        try:
            f = w.recv_frame(timeout=0.5)
        except wsraw.Timeout:
            continue
        if f.opcode == OP_PING:
            payloads.append(f.payload)
            w.send_frame(OP_PONG, f.payload)
    assert len(payloads) == 2, payloads
    # Each ping carries the gateway's clock in ms (8 bytes, big-endian): two
    # pings an interval apart differ, the later one larger.
    assert all(len(p) == 8 for p in payloads), payloads
    assert payloads[0] != payloads[1], payloads
    assert int.from_bytes(payloads[1], "big") > int.from_bytes(payloads[0], "big"), payloads
    w.close()


@pytest.fixture(scope="module")
def idle_gateway():
    g = gw.Gateway({"GATEWAY_ECHO_IDLE_TIMEOUT": "2s"})
    yield g
    assert g.stop() == 0
    assert not g.sanitizer_errors()


def test_idle_timeout(idle_gateway):
    w = idle_gateway.ws()
    t0 = time.monotonic()
    f = w.expect_close(timeout=6)
    dt = time.monotonic() - t0
    assert f.close_code == 1000 and f.close_reason == "idle_timeout", f
    assert 1.5 <= dt <= 4.0, dt
    w.send_close(1000)
    assert w.wait_closed(3)
    w.close()
    check_close_log(idle_gateway.ws_close_log(corr(w)), "idle_timeout")


def test_idle_reset_by_messages(idle_gateway):
    w = idle_gateway.ws()
    t0 = time.monotonic()
    while time.monotonic() - t0 < 4.0:
        w.send_text("tick")
        assert w.recv_message()[1] == b"tick"
        time.sleep(0.7)
    # Now go quiet: the limit applies from the last message.
    f = w.expect_close(timeout=5)
    assert f.close_reason == "idle_timeout"
    w.close()
