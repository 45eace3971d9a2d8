"""RFC 6455 / RFC 7692 conformance of the gateway's server side, modelled on
the case classes of the Autobahn testsuite (1 framing, 2 ping/pong, 3 reserved
bits, 4 opcodes, 5 fragmentation, 6 UTF-8, 7 close, 9 limits, 12/13
permessage-deflate), against the echo route /probe/ws."""

import os
import re
import struct
import time
import zlib

import pytest

import wsraw
from wsraw import OP_BINARY, OP_CLOSE, OP_CONT, OP_PING, OP_PONG, OP_TEXT, build_frame

SNAKE = re.compile(r"^[a-z][a-z0-9_]*$")
MIB = 1024 * 1024


# ------------------------------------------------------------ helpers

def check_server_frame(f):
    assert not f.masked, f"server frame masked: {f}"
    assert not f.rsv2 and not f.rsv3, f"server frame with RSV2/3: {f}"


def expect_echo(w, opcode, payload, timeout=10.0, inflate=None):
    """The next message is the echo: same opcode and payload, one frame."""
    op, data, frames = w.recv_message(timeout=timeout, answer_pings=False, inflate=inflate)
    for f in frames:
        check_server_frame(f)
    assert len(frames) == 1 and frames[0].fin, f"echo fragmented: {frames}"
    assert op == opcode, (op, opcode)
    assert data == payload, f"echo mismatch: got {len(data)} bytes {data[:60]!r}, want {len(payload)} {payload[:60]!r}"
    return frames[0]


def expect_fail(w, code, reason=None, timeout=5.0):
    """The gateway fails the connection: Close with that code and an error
    code text as reason, then TCP closes (after our Close reply)."""
    f = w.expect_close(timeout=timeout)
    check_server_frame(f)
    assert f.close_code == code, f"want close {code}, got {f.close_code} {f.close_reason!r}"
    assert SNAKE.match(f.close_reason), f"close reason not an error code: {f.close_reason!r}"
    if reason is not None:
        assert f.close_reason == reason, f.close_reason
    try:
        w.send_close(code)
    except OSError:
        pass
    assert w.wait_closed(3.0), "TCP not closed after failing the connection"
    return f


def expect_no_frame(w, wait=0.3):
    try:
        f = w.recv_frame(timeout=wait)
    except wsraw.Timeout:
        return
    raise AssertionError(f"unexpected frame {f}")


def clean_close(w, code=1000):
    w.send_close(code)
    f = w.expect_close()
    assert f.close_code == code
    assert w.wait_closed(3.0)


@pytest.fixture
def ws(gateway):
    w = gateway.ws()
    yield w
    w.close()


@pytest.fixture
def wsd(gateway):
    """A connection with permessage-deflate negotiated."""
    w = gateway.ws(extensions="permessage-deflate; client_max_window_bits")
    assert w.deflate, w.response
    yield w
    w.close()


# ------------------------------------------------------------ 1 framing

LENGTHS = [0, 1, 125, 126, 127, 128, 1000, 65535, 65536, 100000]


def payload_of(n, text):
    if text:
        return (b"abcdefghijklmnopqrstuvwxyz0123456789" * (n // 36 + 1))[:n]
    return (bytes(range(256)) * (n // 256 + 1))[:n]


@pytest.mark.parametrize("n", LENGTHS)
@pytest.mark.parametrize("kind", ["text", "binary"])
def test_1_framing(ws, kind, n):
    op = OP_TEXT if kind == "text" else OP_BINARY
    p = payload_of(n, kind == "text")
    ws.send_frame(op, p)
    expect_echo(ws, op, p)
    clean_close(ws)


@pytest.mark.parametrize("n", [0, 125, 126, 127, 128, 65535, 65536])
@pytest.mark.parametrize("kind", ["text", "binary"])
def test_1_framing_chunked(ws, kind, n):
    op = OP_TEXT if kind == "text" else OP_BINARY
    p = payload_of(n, kind == "text")
    chunk = 1 if n <= 128 else 4099
    ws.send_frame(op, p, chunk=chunk)
    expect_echo(ws, op, p)


@pytest.mark.parametrize("n", [0, 125, 126, 65536])
def test_1_framing_length_boundaries_in_one_write(ws, n):
    # Several frames with different length encodings back to back.
    p = payload_of(n, False)
    ws.send_raw(build_frame(OP_BINARY, p) + build_frame(OP_TEXT, b"after") + build_frame(OP_BINARY, p))
    expect_echo(ws, OP_BINARY, p)
    expect_echo(ws, OP_TEXT, b"after")
    expect_echo(ws, OP_BINARY, p)


def test_1_header_split_everywhere(ws):
    # Each split point of a 64-bit length header, with a pause between.
    p = payload_of(70000, False)
    data = build_frame(OP_BINARY, p)
    for cut in range(1, 15):
        ws.send_raw(data[:cut])
        time.sleep(0.01)
        ws.send_raw(data[cut:])
        expect_echo(ws, OP_BINARY, p)


@pytest.mark.parametrize("op", [OP_TEXT, OP_BINARY, OP_PING, OP_CLOSE])
def test_1_unmasked_client_frame(ws, op):
    ws.send_frame(op, b"" if op == OP_CLOSE else b"hello", mask=False)
    expect_fail(ws, 1002)


def test_1_unmasked_after_valid(ws):
    ws.send_text("ok")
    expect_echo(ws, OP_TEXT, b"ok")
    ws.send_frame(OP_BINARY, b"x" * 200, mask=False)
    expect_fail(ws, 1002)


# ------------------------------------------------------------ 2 ping/pong

@pytest.mark.parametrize("n", [0, 1, 10, 124, 125])
def test_2_ping_payload(ws, n):
    p = os.urandom(n)
    ws.send_frame(OP_PING, p)
    f = ws.recv_frame()
    check_server_frame(f)
    assert f.opcode == OP_PONG and f.fin and f.payload == p


def test_2_ping_text_payload(ws):
    ws.send_frame(OP_PING, "Hello, world! ¿✓".encode())
    f = ws.recv_frame()
    assert f.opcode == OP_PONG and f.payload == "Hello, world! ¿✓".encode()


def test_2_ping_binary_payload(ws):
    p = bytes([0x00, 0xFF, 0xFE, 0xFD, 0xFC, 0xFB, 0x00, 0xFF])
    ws.send_frame(OP_PING, p)
    f = ws.recv_frame()
    assert f.opcode == OP_PONG and f.payload == p


@pytest.mark.parametrize("n", [126, 1000, 70000])
def test_2_ping_too_long(ws, n):
    ws.send_frame(OP_PING, b"\xfe" * n)
    expect_fail(ws, 1002)


def test_2_ping_chunked(ws):
    p = b"*" * 125
    ws.send_frame(OP_PING, p, chunk=1)
    f = ws.recv_frame()
    assert f.opcode == OP_PONG and f.payload == p


def test_2_unsolicited_pong_ignored(ws):
    ws.send_frame(OP_PONG, b"unsolicited pong payload")
    expect_no_frame(ws)
    ws.send_text("after pong")
    expect_echo(ws, OP_TEXT, b"after pong")


def test_2_unsolicited_empty_pong_then_ping(ws):
    ws.send_frame(OP_PONG, b"")
    ws.send_frame(OP_PING, b"ping payload")
    f = ws.recv_frame()
    assert f.opcode == OP_PONG and f.payload == b"ping payload"


def test_2_ten_pings(ws):
    payloads = [b"ping %d" % i for i in range(10)]
    ws.send_raw(b"".join(build_frame(OP_PING, p) for p in payloads))
    for p in payloads:
        f = ws.recv_frame()
        assert f.opcode == OP_PONG and f.payload == p


def test_2_ten_pings_chunked(ws):
    payloads = [os.urandom(100) for _ in range(10)]
    ws.send_raw(b"".join(build_frame(OP_PING, p) for p in payloads), chunk=7)
    for p in payloads:
        f = ws.recv_frame()
        assert f.opcode == OP_PONG and f.payload == p


def test_2_pong_too_long(ws):
    ws.send_frame(OP_PONG, b"p" * 126)
    expect_fail(ws, 1002)


# ------------------------------------------------------------ 3 reserved bits

RSV = {"rsv1": dict(rsv1=True), "rsv2": dict(rsv2=True), "rsv3": dict(rsv3=True),
       "rsv12": dict(rsv1=True, rsv2=True), "rsv23": dict(rsv2=True, rsv3=True),
       "rsv123": dict(rsv1=True, rsv2=True, rsv3=True)}
OPS = {"text": (OP_TEXT, b"Hello"), "binary": (OP_BINARY, b"\x00\xff\xfe"), "ping": (OP_PING, b"p"),
       "close": (OP_CLOSE, wsraw.close_payload(1000)), "pong": (OP_PONG, b"x")}


@pytest.mark.parametrize("rsv", sorted(RSV))
@pytest.mark.parametrize("opname", sorted(OPS))
def test_3_reserved_bits(ws, opname, rsv):
    op, p = OPS[opname]
    ws.send_frame(op, p, **RSV[rsv])
    expect_fail(ws, 1002)


@pytest.mark.parametrize("rsv", ["rsv1", "rsv2", "rsv3"])
def test_3_reserved_bits_after_valid(ws, rsv):
    # 3.2: a valid message, then one with RSV set, then a ping: echo, fail.
    ws.send_raw(build_frame(OP_TEXT, b"Hello") + build_frame(OP_TEXT, b"Hello", **RSV[rsv]) +
                build_frame(OP_PING, b""))
    expect_echo(ws, OP_TEXT, b"Hello")
    expect_fail(ws, 1002)


@pytest.mark.parametrize("rsv", ["rsv2", "rsv3"])
def test_3_rsv23_with_deflate(wsd, rsv):
    wsd.send_frame(OP_TEXT, b"Hello", **RSV[rsv])
    expect_fail(wsd, 1002)


@pytest.mark.parametrize("opname", ["ping", "close", "pong"])
def test_3_rsv1_on_control_with_deflate(wsd, opname):
    op, p = OPS[opname]
    wsd.send_frame(op, p, rsv1=True)
    expect_fail(wsd, 1002)


def test_3_rsv1_on_continuation_with_deflate(wsd):
    c = wsraw.deflate_message(b"hello hello hello")
    wsd.send_frame(OP_TEXT, c[:3], fin=False, rsv1=True)
    wsd.send_frame(OP_CONT, c[3:], fin=True, rsv1=True)
    expect_fail(wsd, 1002)


# ------------------------------------------------------------ 4 opcodes

RESERVED_OPS = [3, 4, 5, 6, 7, 0xB, 0xC, 0xD, 0xE, 0xF]


@pytest.mark.parametrize("op", RESERVED_OPS, ids=lambda o: f"op{o:x}")
def test_4_reserved_opcode(ws, op):
    ws.send_frame(op, b"")
    expect_fail(ws, 1002)


@pytest.mark.parametrize("op", RESERVED_OPS, ids=lambda o: f"op{o:x}")
def test_4_reserved_opcode_with_payload_after_valid(ws, op):
    ws.send_raw(build_frame(OP_TEXT, b"Hello") + build_frame(op, b"reserved opcode payload") +
                build_frame(OP_PING, b""))
    expect_echo(ws, OP_TEXT, b"Hello")
    expect_fail(ws, 1002)


@pytest.mark.parametrize("op", [3, 0xB], ids=lambda o: f"op{o:x}")
def test_4_reserved_opcode_inside_fragmented(ws, op):
    ws.send_frame(OP_TEXT, b"frag", fin=False)
    ws.send_frame(op, b"x")
    expect_fail(ws, 1002)


# ------------------------------------------------------------ 5 fragmentation

def test_5_ping_fragmented(ws):
    ws.send_frame(OP_PING, b"frag", fin=False)
    ws.send_frame(OP_CONT, b"ment", fin=True)
    expect_fail(ws, 1002)


def test_5_pong_fragmented(ws):
    ws.send_frame(OP_PONG, b"frag", fin=False)
    ws.send_frame(OP_CONT, b"ment", fin=True)
    expect_fail(ws, 1002)


def test_5_close_fragmented(ws):
    ws.send_frame(OP_CLOSE, wsraw.close_payload(1000), fin=False)
    expect_fail(ws, 1002)


@pytest.mark.parametrize("kind", ["text", "binary"])
@pytest.mark.parametrize("mode", ["one_write", "separate", "chunked"])
def test_5_fragmented_message(ws, kind, mode):
    op = OP_TEXT if kind == "text" else OP_BINARY
    parts = [b"frag", b"ment", b"ed ", b"", b"message"]
    frames = [build_frame(op if i == 0 else OP_CONT, p, fin=(i == len(parts) - 1)) for i, p in enumerate(parts)]
    if mode == "one_write":
        ws.send_raw(b"".join(frames))
    else:
        for fr in frames:
            ws.send_raw(fr, chunk=1 if mode == "chunked" else None)
            time.sleep(0.02)
    expect_echo(ws, op, b"".join(parts))


def test_5_many_fragments(ws):
    parts = [os.urandom(10) for _ in range(300)]
    ws.send_raw(b"".join(build_frame(OP_BINARY if i == 0 else OP_CONT, p, fin=(i == 299))
                         for i, p in enumerate(parts)))
    expect_echo(ws, OP_BINARY, b"".join(parts))


def test_5_empty_fragments(ws):
    ws.send_raw(build_frame(OP_TEXT, b"", fin=False) + build_frame(OP_CONT, b"", fin=False) +
                build_frame(OP_CONT, b"", fin=True))
    expect_echo(ws, OP_TEXT, b"")


@pytest.mark.parametrize("mode", ["one_write", "separate", "chunked"])
def test_5_ping_interleaved(ws, mode):
    frames = [build_frame(OP_TEXT, b"fragment1", fin=False), build_frame(OP_PING, b"pongme 1!"),
              build_frame(OP_CONT, b"fragment2", fin=False), build_frame(OP_PING, b"pongme 2!"),
              build_frame(OP_CONT, b"fragment3", fin=True)]
    if mode == "one_write":
        ws.send_raw(b"".join(frames))
    else:
        for fr in frames:
            ws.send_raw(fr, chunk=1 if mode == "chunked" else None)
            time.sleep(0.02)
    f1 = ws.recv_frame()
    assert f1.opcode == OP_PONG and f1.payload == b"pongme 1!"
    f2 = ws.recv_frame()
    assert f2.opcode == OP_PONG and f2.payload == b"pongme 2!"
    expect_echo(ws, OP_TEXT, b"fragment1fragment2fragment3")


def test_5_pong_interleaved_ignored(ws):
    ws.send_raw(build_frame(OP_BINARY, b"a", fin=False) + build_frame(OP_PONG, b"unsolicited") +
                build_frame(OP_CONT, b"b", fin=True))
    expect_echo(ws, OP_BINARY, b"ab")


def test_5_many_pings_interleaved(ws):
    data = build_frame(OP_TEXT, b"x", fin=False)
    for i in range(20):
        data += build_frame(OP_PING, b"%d" % i) + build_frame(OP_CONT, b"y", fin=(i == 19))
    ws.send_raw(data)
    for i in range(20):
        f = ws.recv_frame()
        assert f.opcode == OP_PONG and f.payload == b"%d" % i
    expect_echo(ws, OP_TEXT, b"x" + b"y" * 20)


@pytest.mark.parametrize("fin", [True, False])
def test_5_continuation_without_start(ws, fin):
    ws.send_frame(OP_CONT, b"non-continuation payload", fin=fin)
    expect_fail(ws, 1002)


def test_5_continuation_without_start_after_valid(ws):
    ws.send_raw(build_frame(OP_TEXT, b"Hello") + build_frame(OP_CONT, b"x", fin=True))
    expect_echo(ws, OP_TEXT, b"Hello")
    expect_fail(ws, 1002)


def test_5_continuation_after_finished_message(ws):
    # 5.17: text fin=0, cont fin=1 (message done), cont fin=1 (no start).
    ws.send_raw(build_frame(OP_TEXT, b"frag1", fin=False) + build_frame(OP_CONT, b"frag2", fin=True) +
                build_frame(OP_CONT, b"frag3", fin=True))
    expect_echo(ws, OP_TEXT, b"frag1frag2")
    expect_fail(ws, 1002)


@pytest.mark.parametrize("second", [OP_TEXT, OP_BINARY], ids=["text", "binary"])
@pytest.mark.parametrize("second_fin", [True, False])
def test_5_new_message_inside_fragmented(ws, second, second_fin):
    ws.send_frame(OP_TEXT, b"fragment1", fin=False)
    ws.send_frame(second, b"fragment2", fin=second_fin)
    expect_fail(ws, 1002)


def test_5_fragmented_then_unfragmented(ws):
    ws.send_raw(build_frame(OP_BINARY, b"ab", fin=False) + build_frame(OP_CONT, b"cd") +
                build_frame(OP_TEXT, b"next"))
    expect_echo(ws, OP_BINARY, b"abcd")
    expect_echo(ws, OP_TEXT, b"next")


# ------------------------------------------------------------ 6 UTF-8

VALID_UTF8 = {
    "ascii": b"Hello-\x40World",
    "greek_kosme": "κόσμε".encode(),
    "mixed": "Hello-µ@ßöäüàá-UTF-8!!".encode(),
    "first_1": b"\x00", "first_2": b"\xc2\x80", "first_3": b"\xe0\xa0\x80", "first_4": b"\xf0\x90\x80\x80",
    "last_1": b"\x7f", "last_2": b"\xdf\xbf", "last_3": b"\xef\xbf\xbf", "last_4": b"\xf4\x8f\xbf\xbf",
    "boundary_d7ff": b"\xed\x9f\xbf", "boundary_e000": b"\xee\x80\x80", "boundary_fffd": b"\xef\xbf\xbd",
    "noncharacter_fffe": b"\xef\xbf\xbe", "noncharacter_10ffff": b"\xf4\x8f\xbf\xbf",
    "emoji": "😀🚀 𝄞 漢字 ✓".encode(),
    "long_mixed": ("ab€𐍈ü" * 2000).encode(),
}

INVALID_UTF8 = {
    # overlong encodings
    "overlong_slash_2": b"\xc0\xaf", "overlong_slash_3": b"\xe0\x80\xaf", "overlong_slash_4": b"\xf0\x80\x80\xaf",
    "overlong_slash_5": b"\xf8\x80\x80\x80\xaf", "overlong_slash_6": b"\xfc\x80\x80\x80\x80\xaf",
    "overlong_max_2": b"\xc1\xbf", "overlong_max_3": b"\xe0\x9f\xbf", "overlong_max_4": b"\xf0\x8f\xbf\xbf",
    "overlong_nul_2": b"\xc0\x80", "overlong_nul_3": b"\xe0\x80\x80", "overlong_nul_4": b"\xf0\x80\x80\x80",
    # UTF-16 surrogates
    "surrogate_d800": b"\xed\xa0\x80", "surrogate_db7f": b"\xed\xad\xbf", "surrogate_db80": b"\xed\xae\x80",
    "surrogate_dbff": b"\xed\xaf\xbf", "surrogate_dc00": b"\xed\xb0\x80", "surrogate_df80": b"\xed\xbe\x80",
    "surrogate_dfff": b"\xed\xbf\xbf", "surrogate_pair": b"\xed\xa0\x80\xed\xb0\x80",
    "surrogate_pair_2": b"\xed\xaf\xbf\xed\xbf\xbf",
    # above U+10FFFF
    "above_110000": b"\xf4\x90\x80\x80", "above_1fffff": b"\xf7\xbf\xbf\xbf",
    "five_byte": b"\xf8\x88\x80\x80\x80", "six_byte": b"\xfc\x84\x80\x80\x80\x80",
    # lone continuation bytes and impossible bytes
    "cont_80": b"\x80", "cont_bf": b"\xbf", "cont_seq": b"\x80\xbf\x80\xbf", "byte_fe": b"\xfe", "byte_ff": b"\xff",
    "bytes_feff": b"\xfe\xfe\xff\xff", "byte_f5": b"\xf5\x80\x80\x80", "byte_c0": b"\xc0",
    # truncated sequences (at the end of the message)
    "truncated_2": b"\xc2", "truncated_3a": b"\xe0", "truncated_3b": b"\xe0\xa0", "truncated_4a": b"\xf0\x90",
    "truncated_4b": b"\xf0\x90\x80", "truncated_after_text": "κόσμε".encode() + b"\xce",
    # sequence interrupted by ASCII
    "interrupted_2": b"\xc2A", "interrupted_3": b"\xe0\xa0A", "interrupted_4": b"\xf0\x90\x80A",
    # invalid in the middle / at the end of otherwise valid text
    "middle": "κόσμε".encode() + b"\xed\xa0\x80" + b"edited",
    "end": "κόσμε".encode() + b"\xed\xa0\x80",
    "start": b"\xf4\x90\x80\x80" + "κόσμε".encode(),
    "long_then_bad": b"a" * 70000 + b"\xff",
}


def send_text_mode(w, payload, mode):
    if mode == "single":
        w.send_frame(OP_TEXT, payload)
    elif mode == "per_byte_fragments":
        n = len(payload)
        if n == 0:
            w.send_frame(OP_TEXT, b"")
            return
        if n > 64:  # keep the frame count sane for long payloads
            step = max(1, n // 64)
            parts = [payload[i:i + step] for i in range(0, n, step)]
        else:
            parts = [payload[i:i + 1] for i in range(n)]
        w.send_raw(b"".join(build_frame(OP_TEXT if i == 0 else OP_CONT, p, fin=(i == len(parts) - 1))
                            for i, p in enumerate(parts)))
    elif mode == "chunked":
        w.send_frame(OP_TEXT, payload, chunk=1 if len(payload) < 200 else 997)
    else:
        raise ValueError(mode)


MODES = ["single", "per_byte_fragments", "chunked"]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", sorted(VALID_UTF8))
def test_6_valid_utf8(ws, name, mode):
    p = VALID_UTF8[name]
    send_text_mode(ws, p, mode)
    expect_echo(ws, OP_TEXT, p)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", sorted(INVALID_UTF8))
def test_6_invalid_utf8(ws, name, mode):
    send_text_mode(ws, INVALID_UTF8[name], mode)
    expect_fail(ws, 1007, "invalid_utf8")


def test_6_invalid_utf8_binary_is_fine(ws):
    p = b"".join(INVALID_UTF8.values())
    ws.send_binary(p)
    expect_echo(ws, OP_BINARY, p)


def test_6_valid_split_across_fragments(ws):
    # Each multi-byte sequence split between two fragments at every point.
    for s in ["é", "€", "𐍈", "😀"]:
        b = s.encode()
        for cut in range(1, len(b)):
            ws.send_raw(build_frame(OP_TEXT, b"<" + b[:cut], fin=False) + build_frame(OP_CONT, b[cut:] + b">"))
            expect_echo(ws, OP_TEXT, b"<" + b + b">")


def test_6_fail_fast_across_fragments(ws):
    # 6.4.1: valid fragment, then a fragment with an invalid sequence; the
    # Close must come before the rest of the message is sent.
    ws.send_frame(OP_TEXT, "κόσμε".encode(), fin=False)
    time.sleep(0.05)
    ws.send_frame(OP_CONT, b"\xf4\x90\x80\x80", fin=False)
    expect_fail(ws, 1007, "invalid_utf8", timeout=3.0)


def test_6_fail_fast_truncated_sequence_start_in_fragment(ws):
    # 6.4.2: the invalid bytes begin in one fragment; the next proves them invalid.
    ws.send_frame(OP_TEXT, "κόσμε".encode() + b"\xf4", fin=False)
    time.sleep(0.05)
    ws.send_frame(OP_CONT, b"\x90", fin=False)
    expect_fail(ws, 1007, "invalid_utf8", timeout=3.0)


@pytest.mark.parametrize("bad", [b"\xf4\x90\x80\x80", b"\xed\xa0\x80", b"\xc0\xaf", b"\xff"],
                         ids=["above_max", "surrogate", "overlong", "ff"])
def test_6_fail_fast_mid_frame(ws, bad):
    # 6.4.3/6.4.4: one frame announcing 1000 bytes; only the first part with
    # the invalid bytes is sent. The gateway must close without waiting for
    # the rest of the frame.
    payload = "κόσμε".encode() + bad + b"x" * 1000
    frame = build_frame(OP_TEXT, payload, fin=True)
    head_len = 2 + 2 + 4
    cut = head_len + len("κόσμε".encode()) + len(bad)
    ws.send_raw(frame[:cut])
    expect_fail(ws, 1007, "invalid_utf8", timeout=3.0)


def test_6_fail_fast_mid_frame_chunked(ws):
    payload = "κόσμε".encode() + b"\xed\xa0\x80" + b"x" * 5000
    frame = build_frame(OP_TEXT, payload, fin=True)
    ws.send_raw(frame[:8 + 13], chunk=1, delay=0.005)
    expect_fail(ws, 1007, "invalid_utf8", timeout=3.0)


def test_6_invalid_across_fragments(ws):
    # 0xC2 at the end of one fragment, ASCII at the start of the next.
    ws.send_raw(build_frame(OP_TEXT, b"ab\xc2", fin=False) + build_frame(OP_CONT, b"cd", fin=True))
    expect_fail(ws, 1007, "invalid_utf8")


def test_6_truncated_at_message_end_after_fragments(ws):
    ws.send_raw(build_frame(OP_TEXT, b"ab", fin=False) + build_frame(OP_CONT, b"\xe2\x82", fin=False) +
                build_frame(OP_CONT, b"", fin=True))
    expect_fail(ws, 1007, "invalid_utf8")


# ------------------------------------------------------------ 7 close

def test_7_close_after_echo(ws):
    ws.send_text("Hello World!")
    expect_echo(ws, OP_TEXT, b"Hello World!")
    clean_close(ws)


def test_7_empty_close(ws):
    ws.send_close()
    f = ws.expect_close()
    check_server_frame(f)
    assert f.close_code in (None, 1000), f
    assert ws.wait_closed(3.0)


def test_7_close_twice(ws):
    ws.send_raw(build_frame(OP_CLOSE, wsraw.close_payload(1000)) + build_frame(OP_CLOSE, wsraw.close_payload(1000)))
    f = ws.recv_frame()
    assert f.opcode == OP_CLOSE and f.close_code == 1000
    assert ws.wait_closed(3.0)


def test_7_data_after_close_ignored(ws):
    ws.send_raw(build_frame(OP_CLOSE, wsraw.close_payload(1000)) + build_frame(OP_TEXT, b"ignored") +
                build_frame(OP_PING, b"ignored"))
    f = ws.recv_frame()
    assert f.opcode == OP_CLOSE and f.close_code == 1000, f
    try:
        extra = ws.recv_frame(timeout=2.0)
        raise AssertionError(f"frame after Close: {extra}")
    except wsraw.Closed:
        pass


def test_7_close_after_fragment_start(ws):
    ws.send_raw(build_frame(OP_TEXT, b"frag", fin=False) + build_frame(OP_CLOSE, wsraw.close_payload(1000)))
    f = ws.expect_close()
    assert f.close_code == 1000
    assert ws.wait_closed(3.0)


def test_7_close_after_large_message(ws):
    p = b"L" * 256 * 1024
    ws.send_raw(build_frame(OP_BINARY, p) + build_frame(OP_CLOSE, wsraw.close_payload(1000)))
    expect_echo(ws, OP_BINARY, p)
    f = ws.expect_close()
    assert f.close_code == 1000


VALID_CODES = [1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 3000, 3999, 4000, 4999]
INVALID_CODES = [0, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2000, 2999, 5000, 65535]


@pytest.mark.parametrize("code", VALID_CODES)
def test_7_valid_close_code(ws, code):
    ws.send_close(code, "reason")
    f = ws.expect_close()
    check_server_frame(f)
    assert f.close_code == code, f
    assert ws.wait_closed(3.0)


@pytest.mark.parametrize("code", INVALID_CODES)
def test_7_invalid_close_code(ws, code):
    ws.send_close(code)
    expect_fail(ws, 1002)


def test_7_close_one_byte_payload(ws):
    ws.send_frame(OP_CLOSE, b"\x03")
    expect_fail(ws, 1002)


def test_7_close_max_reason(ws):
    ws.send_close(1000, "*" * 123)
    f = ws.expect_close()
    assert f.close_code == 1000


def test_7_close_reason_multibyte(ws):
    ws.send_close(3000, "κόσμε ✓")
    assert ws.expect_close().close_code == 3000


def test_7_close_reason_too_long(ws):
    ws.send_frame(OP_CLOSE, wsraw.close_payload(1000, "*" * 124))
    expect_fail(ws, 1002)


@pytest.mark.parametrize("reason", [b"\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5\xed\xa0\x80edited", b"\xff", b"ab\xc2"],
                         ids=["surrogate", "ff", "truncated"])
def test_7_close_reason_invalid_utf8(ws, reason):
    ws.send_frame(OP_CLOSE, struct.pack("!H", 1000) + reason)
    expect_fail(ws, 1007)


def test_7_close_chunked(ws):
    ws.send_frame(OP_CLOSE, wsraw.close_payload(4001, "chunky"), chunk=1)
    assert ws.expect_close().close_code == 4001


# ------------------------------------------------------------ 9 limits

@pytest.mark.parametrize("kind", ["text", "binary"])
def test_9_one_mib_echoes(ws, kind):
    op = OP_TEXT if kind == "text" else OP_BINARY
    p = payload_of(MIB, kind == "text")
    ws.send_frame(op, p)
    expect_echo(ws, op, p, timeout=20)


def test_9_one_mib_in_fragments(ws):
    p = os.urandom(MIB)
    step = 16 * 1024
    ws.send_raw(b"".join(build_frame(OP_BINARY if i == 0 else OP_CONT, p[i:i + step], fin=(i + step >= MIB))
                         for i in range(0, MIB, step)))
    expect_echo(ws, OP_BINARY, p, timeout=20)


@pytest.mark.parametrize("kind", ["text", "binary"])
def test_9_over_limit_single_frame(ws, kind):
    op = OP_TEXT if kind == "text" else OP_BINARY
    ws.send_frame(op, payload_of(MIB + 1, True))
    expect_fail(ws, 1009, "message_too_large", timeout=10)


def test_9_over_limit_fragments(ws):
    step = 256 * 1024
    for i in range(4):
        ws.send_frame(OP_BINARY if i == 0 else OP_CONT, b"f" * step, fin=False)
    ws.send_frame(OP_CONT, b"f", fin=True)
    expect_fail(ws, 1009, "message_too_large", timeout=10)


@pytest.mark.parametrize("count,size", [(1000, 10), (100, 1000), (10, 100000)])
def test_9_many_messages_one_write(ws, count, size):
    msgs = [(b"%06d" % i + b"m" * size)[:max(size, 6)] for i in range(count)]
    ws.send_raw(b"".join(build_frame(OP_BINARY if i % 2 else OP_TEXT, m) for i, m in enumerate(msgs)))
    for i, m in enumerate(msgs):
        expect_echo(ws, OP_BINARY if i % 2 else OP_TEXT, m, timeout=20)


def test_9_slow_reader_gets_everything(ws):
    # The client reads only after sending 8 MiB: the gateway must buffer or
    # apply backpressure, never drop or reorder.
    msgs = [bytes([i]) * (512 * 1024) for i in range(16)]
    import threading
    err = []

    def writer():
        try:
            for m in msgs:
                ws.send_frame(OP_BINARY, m)
        except Exception as e:  # noqa: BLE001
            err.append(e)

    t = threading.Thread(target=writer)
    t.start()
    time.sleep(0.5)
    for m in msgs:
        expect_echo(ws, OP_BINARY, m, timeout=30)
    t.join(10)
    assert not err, err


# ------------------------------------------------------------ 12/13 permessage-deflate

DEFLATE_OFFERS = {
    "default": "permessage-deflate",
    "client_max_window_bits": "permessage-deflate; client_max_window_bits",
    "client_no_context_takeover": "permessage-deflate; client_no_context_takeover",
    "server_no_context_takeover": "permessage-deflate; server_no_context_takeover",
    "both_no_context_takeover": "permessage-deflate; client_no_context_takeover; server_no_context_takeover",
    "client_max_window_bits_10": "permessage-deflate; client_max_window_bits=10",
    "client_max_window_bits_12": "permessage-deflate; client_max_window_bits=12",
    "server_max_window_bits_10": "permessage-deflate; server_max_window_bits=10",
    "server_max_window_bits_15": "permessage-deflate; server_max_window_bits=15",
}

SIZES = [16, 63, 64, 128, 1024, 4096, 32768, 131072]


def pmd_contexts(w, offer):
    params = w.deflate_params
    cbits = 15
    if "client_max_window_bits" in params and params["client_max_window_bits"]:
        cbits = int(params["client_max_window_bits"])
    if "client_max_window_bits=" in offer:
        cbits = min(cbits, int(offer.split("client_max_window_bits=")[1].split(";")[0]))
    sbits = 15
    if params.get("server_max_window_bits"):
        sbits = int(params["server_max_window_bits"])
        if "server_max_window_bits=" in offer:
            assert sbits <= int(offer.split("server_max_window_bits=")[1].split(";")[0]), params
    elif "server_max_window_bits=" in offer:
        raise AssertionError(f"server_max_window_bits offered but not in the answer: {params}")
    client_takeover = "client_no_context_takeover" not in params and "client_no_context_takeover" not in offer
    server_takeover = "server_no_context_takeover" not in params
    if "server_no_context_takeover" in offer:
        assert not server_takeover, f"server_no_context_takeover offered but not accepted: {params}"
    return cbits, sbits, client_takeover, server_takeover


def message_for(size, i, text):
    base = ("The quick brown fox %d jumps over the lazy dog. " % i)
    p = (base * (size // len(base) + 1))[:size].encode()
    if not text:
        p = bytes(b ^ (i & 0x7F) for b in p)
    return p


@pytest.mark.parametrize("kind", ["text", "binary"])
@pytest.mark.parametrize("offer", sorted(DEFLATE_OFFERS))
def test_12_deflate_echo(gateway, offer, kind):
    w = gateway.ws(extensions=DEFLATE_OFFERS[offer])
    try:
        assert w.deflate, w.response
        cbits, sbits, ctake, stake = pmd_contexts(w, DEFLATE_OFFERS[offer])
        comp = zlib.compressobj(zlib.Z_DEFAULT_COMPRESSION, zlib.DEFLATED, -cbits) if ctake else None
        decomp = zlib.decompressobj(-sbits) if stake else None
        op = OP_TEXT if kind == "text" else OP_BINARY
        for i, size in enumerate(SIZES * 2):
            p = message_for(size, i, kind == "text")
            c = comp or zlib.compressobj(zlib.Z_DEFAULT_COMPRESSION, zlib.DEFLATED, -cbits)
            w.send_frame(op, wsraw.deflate_message(p, c), rsv1=True)
            f = expect_echo(w, op, p, inflate=decomp if stake else zlib.decompressobj(-sbits))
            if size >= 64:
                assert f.rsv1, f"echo of {size} bytes not compressed"
        clean_close(w)
    finally:
        w.close()


def test_12_uncompressed_messages_on_deflate_connection(wsd):
    d = zlib.decompressobj(-15)
    for p in [b"plain", b"p" * 1000, os.urandom(3000)]:
        wsd.send_frame(OP_BINARY, p)
        expect_echo(wsd, OP_BINARY, p, inflate=d)


def test_12_mixed_compressed_and_plain(wsd):
    c = zlib.compressobj(zlib.Z_DEFAULT_COMPRESSION, zlib.DEFLATED, -15)
    d = zlib.decompressobj(-15)
    for i in range(20):
        p = message_for(200 + i * 50, i, True)
        if i % 2:
            wsd.send_frame(OP_TEXT, wsraw.deflate_message(p, c), rsv1=True)
        else:
            wsd.send_frame(OP_TEXT, p)
        expect_echo(wsd, OP_TEXT, p, inflate=d)


def test_12_empty_compressed_message(wsd):
    wsd.send_frame(OP_TEXT, wsraw.deflate_message(b""), rsv1=True)
    expect_echo(wsd, OP_TEXT, b"")
    wsd.send_frame(OP_BINARY, b"\x00", rsv1=True)  # an empty stored block, as some clients send
    expect_echo(wsd, OP_BINARY, b"")


def test_12_incompressible_large(wsd):
    p = os.urandom(600 * 1024)
    wsd.send_frame(OP_BINARY, wsraw.deflate_message(p), rsv1=True)
    expect_echo(wsd, OP_BINARY, p, timeout=20)


@pytest.mark.parametrize("nfrag", [2, 3, 10])
def test_13_fragmented_compressed(wsd, nfrag):
    p = message_for(50000, 7, True)
    c = wsraw.deflate_message(p)
    step = len(c) // nfrag + 1
    parts = [c[i:i + step] for i in range(0, len(c), step)]
    wsd.send_raw(b"".join(build_frame(OP_TEXT if i == 0 else OP_CONT, x, fin=(i == len(parts) - 1), rsv1=(i == 0))
                          for i, x in enumerate(parts)))
    expect_echo(wsd, OP_TEXT, p)


def test_13_fragmented_compressed_with_ping(wsd):
    p = message_for(5000, 1, False)
    c = wsraw.deflate_message(p)
    h = len(c) // 2
    wsd.send_raw(build_frame(OP_BINARY, c[:h], fin=False, rsv1=True) + build_frame(OP_PING, b"mid") +
                 build_frame(OP_CONT, c[h:], fin=True))
    f = wsd.recv_frame()
    assert f.opcode == OP_PONG and f.payload == b"mid"
    expect_echo(wsd, OP_BINARY, p)


def test_13_too_large_after_inflate(wsd):
    bomb = wsraw.deflate_message(b"\x00" * (2 * MIB))
    assert len(bomb) < 64 * 1024
    wsd.send_frame(OP_BINARY, bomb, rsv1=True)
    expect_fail(wsd, 1009, "message_too_large", timeout=10)


def test_13_too_large_after_inflate_fragmented(wsd):
    bomb = wsraw.deflate_message(b"A" * (MIB + 100))
    h = len(bomb) // 2
    wsd.send_raw(build_frame(OP_TEXT, bomb[:h], fin=False, rsv1=True) + build_frame(OP_CONT, bomb[h:]))
    expect_fail(wsd, 1009, "message_too_large", timeout=10)


def test_13_exactly_limit_after_inflate(wsd):
    p = b"\x00" * MIB
    wsd.send_frame(OP_BINARY, wsraw.deflate_message(p), rsv1=True)
    expect_echo(wsd, OP_BINARY, p, timeout=20, inflate=zlib.decompressobj(-15))


@pytest.mark.parametrize("data", [b"\xff\xff\xff\xff", b"\x07\x00\xff\x00", b"\x00\x05\x00\x00\x00hello",
                                  b"\xec\xfd\xff\xff\xff\xff\xff\xff"],
                         ids=["reserved_btype", "reserved_btype_2", "stored_len_mismatch", "bad_huffman"])
def test_13_corrupt_deflate(wsd, data):
    wsd.send_frame(OP_BINARY, data, rsv1=True)
    f = wsd.expect_close(timeout=5)
    assert f.close_code == 1007, f
    assert SNAKE.match(f.close_reason), f


def test_13_compressed_invalid_utf8(wsd):
    wsd.send_frame(OP_TEXT, wsraw.deflate_message(b"valid then \xed\xa0\x80 invalid" * 5), rsv1=True)
    expect_fail(wsd, 1007, "invalid_utf8")


def test_13_context_takeover_required(gateway):
    # With context takeover (the default), a message referring back to the
    # previous one decompresses only if the gateway keeps its inflate context.
    w = gateway.ws(extensions="permessage-deflate")
    try:
        assert w.deflate
        c = zlib.compressobj(zlib.Z_DEFAULT_COMPRESSION, zlib.DEFLATED, -15)
        p = b"context takeover test message, repeated exactly. " * 10
        d = zlib.decompressobj(-15)
        w.send_frame(OP_TEXT, wsraw.deflate_message(p, c), rsv1=True)
        expect_echo(w, OP_TEXT, p, inflate=d)
        second = wsraw.deflate_message(p, c)
        assert len(second) < len(wsraw.deflate_message(p)) // 2  # really uses the context
        for _ in range(3):
            w.send_frame(OP_TEXT, second, rsv1=True)
            expect_echo(w, OP_TEXT, p, inflate=d)
            second = wsraw.deflate_message(p, c)
        clean_close(w)
    finally:
        w.close()
