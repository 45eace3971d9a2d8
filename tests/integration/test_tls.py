"""TLS on the public listener with a self-signed certificate made by the
openssl CLI: https health endpoints, wss:// with python websockets and the
raw client, refusal of untrusting clients, plaintext on the TLS port."""

import asyncio
import os
import signal
import ssl
import subprocess
import time
import zlib

import pytest
import websockets

import gw
import wsraw
from wsraw import OP_BINARY, OP_TEXT


@pytest.fixture(scope="module")
def tls_gateway(tls_cert):
    g = gw.Gateway(tls=tls_cert)
    yield g
    assert g.stop() == 0
    assert not g.sanitizer_errors(), g.stderr()[-4000:]


def test_https_healthz(tls_gateway):
    r = tls_gateway.get("/healthz")
    assert r.status == 200 and r.body == b"ok\n"
    r = tls_gateway.get("/nope")
    assert r.status == 404 and r.json()["code"] == "not_found"


def test_https_keepalive_pipelined(tls_gateway):
    c = wsraw.Conn("127.0.0.1", tls_gateway.port, tls_ctx=tls_gateway.tls_ctx())
    try:
        c.send(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n" * 5)
        for _ in range(5):
            assert c.read_response().body == b"ok\n"
    finally:
        c.close()


def test_curl_https(tls_gateway, tls_cert):
    r = subprocess.run(["curl", "-sS", "--cacert", tls_cert[0], f"https://localhost:{tls_gateway.port}/healthz"],
                       capture_output=True, timeout=20)
    assert r.returncode == 0, r.stderr
    assert r.stdout == b"ok\n"


def test_untrusted_client_fails_and_gateway_survives(tls_gateway):
    ctx = ssl.create_default_context()  # does not trust the self-signed cert
    with pytest.raises(ssl.SSLError):
        wsraw.Conn("127.0.0.1", tls_gateway.port, tls_ctx=ctx)
    assert tls_gateway.get("/healthz").status == 200


def test_plaintext_on_tls_port(tls_gateway):
    c = wsraw.Conn("127.0.0.1", tls_gateway.port)
    try:
        c.send(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        # What comes back is a TLS alert record or nothing, never an HTTP
        # answer, and the connection ends.
        closed = c.wait_closed(5)
        assert closed, closed
        assert closed.data == b"" or closed.data[:1] == b"\x15", closed
    finally:
        c.close()
    assert tls_gateway.get("/healthz").status == 200


def test_tls_handshake_abandoned(tls_gateway):
    for _ in range(20):
        c = wsraw.Conn("127.0.0.1", tls_gateway.port)
        c.send(b"\x16\x03\x01\x00\xc8\x01\x00\x00")  # the start of a ClientHello
        c.close()
    assert tls_gateway.get("/healthz").status == 200


def test_wss_raw_client(tls_gateway):
    w = tls_gateway.ws(extensions="permessage-deflate")
    try:
        assert w.deflate
        # The server keeps its compression context between messages (no
        # server_no_context_takeover asked): one decompressor for all of them
        # (a fresh one failed when "xxx" happened to occur in the random
        # message before, about 1 run in 500).
        dec = None if "server_no_context_takeover" in w.deflate_params else zlib.decompressobj(-15)
        # (the second message ends in x's, so the third refers back into it)
        for p in [b"hi", os.urandom(70000) + b"x" * 64, b"x" * 300000]:
            w.send_binary(p)
            op, data, _ = w.recv_message(timeout=10, inflate=dec)
            assert (op, data) == (OP_BINARY, p)
        w.send_close(1000)
        assert w.expect_close().close_code == 1000
    finally:
        w.close()


@pytest.mark.parametrize("compression", [None, "deflate"])
def test_wss_websockets_library(tls_gateway, tls_cert, compression):
    ctx = ssl.create_default_context(cafile=tls_cert[0])

    async def main():
        async with websockets.connect(f"wss://localhost:{tls_gateway.port}/probe/ws", ssl=ctx,
                                      compression=compression, subprotocols=["wsgate.echo.v1"],
                                      max_size=None, ping_interval=None) as ws:
            assert ws.subprotocol == "wsgate.echo.v1"
            for msg in ["tls text ✓", b"\x00\x01" * 40000, "y" * 100000]:
                await ws.send(msg)
                assert await asyncio.wait_for(ws.recv(), 10) == msg
            await ws.close(4000)
            assert ws.close_code == 4000
    asyncio.run(asyncio.wait_for(main(), 30))


def test_wss_concurrent(tls_gateway, tls_cert):
    ctx = ssl.create_default_context(cafile=tls_cert[0])

    async def one(i):
        async with websockets.connect(f"wss://localhost:{tls_gateway.port}/probe/ws", ssl=ctx,
                                      ping_interval=None) as ws:
            for j in range(10):
                await ws.send(f"{i}:{j}")
                assert await ws.recv() == f"{i}:{j}"

    async def main():
        await asyncio.gather(*[one(i) for i in range(30)])
    asyncio.run(asyncio.wait_for(main(), 60))


def test_wss_protocol_error_over_tls(tls_gateway):
    w = tls_gateway.ws()
    try:
        w.send_frame(OP_TEXT, b"\xff")
        f = w.expect_close()
        assert f.close_code == 1007
    finally:
        w.close()


@pytest.mark.parametrize("which", ["missing_cert", "garbage_key"])
def test_bad_tls_files_fail_startup(tmp_path, tls_cert, which):
    cert, key = tls_cert
    if which == "missing_cert":
        cert = str(tmp_path / "nope.pem")
    else:
        key = str(tmp_path / "garbage.pem")
        with open(key, "w") as f:
            f.write("-----BEGIN PRIVATE KEY-----\nnot a key\n-----END PRIVATE KEY-----\n")
    env = {"GATEWAY_PUBLIC_HTTP_ADDR": f"127.0.0.1:{gw.free_port()}", "GATEWAY_AUTHENTICATED_GRPC_ADDR": "",
           "GATEWAY_TLS_CERT_PATH": cert, "GATEWAY_TLS_KEY_PATH": key}
    t0 = time.monotonic()
    r = gw.run_cli(["serve"], env=env, timeout=10)
    assert r.returncode == 1, r  # startup failed (README "Exit status")
    assert time.monotonic() - t0 < 5
    err = r.stderr.decode()
    assert "GATEWAY_TLS" in err or "tls" in err.lower(), err


# ------------------------------------------------------------ rotation (SIGHUP)

def _make_pair(d, name, serial):
    cert, key = os.path.join(d, name + ".crt"), os.path.join(d, name + ".key")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", cert,
                    "-days", "2", "-subj", "/CN=localhost", "-set_serial", serial,
                    "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
                   check=True, capture_output=True, timeout=60)
    return cert, key


def _served_serial(port):
    """The serial number (hex, as `openssl x509 -serial` prints it) of the
    certificate a new TLS client is shown."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    c = wsraw.Conn("127.0.0.1", port, tls_ctx=ctx)
    try:
        der = c.sock.getpeercert(binary_form=True)
    finally:
        c.close()
    r = subprocess.run(["openssl", "x509", "-inform", "der", "-noout", "-serial"], input=der,
                       capture_output=True, check=True, timeout=20)
    return r.stdout.decode().strip().split("=", 1)[1].upper()


def _install(src, dst):
    tmp = dst + ".tmp"
    with open(src, "rb") as f, open(tmp, "wb") as g:
        g.write(f.read())
    os.replace(tmp, dst)  # as cert-manager's atomic symlink swap: never half a file


def test_tls_rotation_on_sighup(make_gateway, tmp_path):
    d = str(tmp_path)
    a = _make_pair(d, "a", "0xA1A1")
    b = _make_pair(d, "b", "0xB2B2")
    c = _make_pair(d, "c", "0xC3C3")
    cert, key = os.path.join(d, "tls.crt"), os.path.join(d, "tls.key")
    _install(a[0], cert)
    _install(a[1], key)
    g = make_gateway(tls=(cert, key))
    assert _served_serial(g.port) == "A1A1"
    assert g.metric("wsgate_tls_last_reload_success") == 1

    # A WebSocket opened under pair A.
    old_ctx = ssl.create_default_context(cafile=a[0])
    w = wsraw.WS(g.port, tls_ctx=old_ctx)
    try:
        w.send_text("before")
        assert w.recv_message(timeout=10)[1] == b"before"

        _install(b[0], cert)
        _install(b[1], key)
        g.signal(signal.SIGHUP)
        hits = g.wait_log(lambda l: l.get("msg") == "tls certificate reloaded", timeout=10)
        assert len(hits) == 1 and hits[0]["serial"] == "B2B2", hits
        gw.wait_until(lambda: _served_serial(g.port) == "B2B2", timeout=10, what="new serial served")
        # A client that trusts only B completes its handshake; the open one keeps working.
        w2 = wsraw.WS(g.port, tls_ctx=ssl.create_default_context(cafile=b[0]))
        w2.send_text("new")
        assert w2.recv_message(timeout=10)[1] == b"new"
        w2.close()
        w.send_text("after rotation")
        assert w.recv_message(timeout=10)[1] == b"after rotation"
        m = g.metrics()
        assert gw.metric_value(m, "wsgate_tls_reload_total", result="ok") == 1
        assert gw.metric_value(m, "wsgate_tls_reload_total", result="error") == 0

        # A mismatched pair (B's certificate, C's key) is refused: one line, B stays.
        _install(c[1], key)
        g.signal(signal.SIGHUP)
        bad = g.wait_log(lambda l: l.get("msg") == "tls reload refused; keeping the old certificate", timeout=10)
        g.wait_log(lambda l: l.get("msg") == "routes reloaded", timeout=10)
        assert len(bad) == 1 and "GATEWAY_TLS_KEY_PATH" in bad[0]["error"] and bad[0]["level"] == "error", bad
        assert _served_serial(g.port) == "B2B2"
        m = g.metrics()
        assert gw.metric_value(m, "wsgate_tls_reload_total", result="error") == 1
        assert gw.metric_value(m, "wsgate_tls_last_reload_success") == 0
        # Garbage in the certificate file: refused the same way.
        with open(cert, "w") as f:
            f.write("not a certificate\n")
        g.signal(signal.SIGHUP)
        gw.wait_until(lambda: len([l for l in g.logs() if l.get("msg", "").startswith("tls reload refused")]) == 2,
                      timeout=10, what="second refusal")
        assert _served_serial(g.port) == "B2B2"
        w.send_text("still open")
        assert w.recv_message(timeout=10)[1] == b"still open"

        # A good pair again: success is reported again.
        _install(c[0], cert)
        g.signal(signal.SIGHUP)
        gw.wait_until(lambda: _served_serial(g.port) == "C3C3", timeout=10, what="serial C")
        assert g.metric("wsgate_tls_last_reload_success") == 1
        w.send_close(1000)
        assert w.expect_close().close_code == 1000
    finally:
        w.close()
