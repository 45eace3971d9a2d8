"""Upstream names are looked up off the worker loops (net/resolve.c): a DNS
answer that takes seconds delays only the connections that need that name,
never the other connections of the worker; answers and failures are cached.

DNS is played by an LD_PRELOAD getaddrinfo (shim/resolver_shim.c, built
here): *.slow.test answers 127.0.0.1 after SHIM_DELAY_MS, *.gone.test does
not exist, and every lookup of a .test name is logged to SHIM_LOG."""

import os
import subprocess
import threading
import time

import pytest

import gw
import wsraw

HERE = os.path.dirname(os.path.abspath(__file__))


@pytest.fixture(scope="module")
def shim(tmp_path_factory):
    so = tmp_path_factory.mktemp("shim") / "resolver_shim.so"
    subprocess.run(["cc", "-shared", "-fPIC", "-O1", "-o", str(so), os.path.join(HERE, "shim", "resolver_shim.c"),
                    "-ldl"], check=True)
    return str(so)


def shim_env(shim, log, delay_ms=1500):
    env = {"LD_PRELOAD": shim, "SHIM_LOG": str(log), "SHIM_DELAY_MS": str(delay_ms)}
    if gw.is_sanitizer_build():
        # the preloaded library comes before the ASan runtime
        env["ASAN_OPTIONS"] = os.environ.get("ASAN_OPTIONS", "detect_leaks=1:abort_on_error=1") + \
            ":verify_asan_link_order=0"
    return env


def lookups(log, name):
    if not os.path.exists(log):
        return 0
    with open(log) as f:
        return sum(1 for line in f if line.split()[0] == name)


def gateway_with(make_gateway, tmp_path, shim, routes, delay_ms=1500, **env):
    path = gw.write_routes(str(tmp_path / "routes.json"), routes)
    log = tmp_path / "shim.log"
    e = dict(shim_env(shim, log, delay_ms), GATEWAY_ROUTES_FILE=path, GATEWAY_WORKERS="1")
    e.update(env)
    return make_gateway(env=e), str(log)


def test_slow_name_does_not_stall_the_worker(make_gateway, tmp_path, shim):
    """One worker; a relayed WebSocket whose upstream name takes 1.5 s to
    resolve. While it waits, /healthz and an echo on the same worker answer
    at once (before: getaddrinfo on the worker held both for 1.5 s); then
    the relay works, and the next connection uses the cached answer."""
    up = make_gateway()  # the upstream: its /probe/ws echoes
    g, log = gateway_with(make_gateway, tmp_path, shim, [
        {"path": "/s/", "kind": "proxy", "upstream": f"http://echo.slow.test:{up.port}", "strip_prefix": True}])
    got = {}

    def relayed():
        try:
            w = wsraw.WS(g.port, path="/s/probe/ws", timeout=10)
            w.send_text("through a slow name")
            got["echo"] = w.recv_message(timeout=10)[1].decode()
            w.close()
        except Exception as e:  # reported below
            got["error"] = repr(e)
    t = threading.Thread(target=relayed)
    t.start()
    gw.wait_until(lambda: lookups(log, "echo.slow.test") == 1, timeout=5, what="the lookup started")
    t0 = time.monotonic()
    assert g.get("/healthz").status == 200
    w = wsraw.WS(g.port, path="/probe/ws")
    w.send_text("meanwhile")
    assert w.recv_message()[1] == b"meanwhile"
    w.close()
    elapsed = time.monotonic() - t0
    assert "echo" not in got, "the lookup was not slow: nothing measured"
    assert elapsed < 0.75, f"the worker was held {elapsed:.2f} s by a lookup of 1.5 s"
    t.join(15)
    assert got.get("echo") == "through a slow name", got
    # cached: the next connection and an HTTP request make no lookup
    w = wsraw.WS(g.port, path="/s/probe/ws")
    w.send_text("again")
    assert w.recv_message()[1] == b"again"
    w.close()
    assert g.get("/s/healthz").status == 200
    assert lookups(log, "echo.slow.test") == 1


def test_http_proxy_waits_for_the_name_without_stalling(make_gateway, tmp_path, shim):
    """The pooled HTTP client: a request whose upstream name is slow is
    answered once it resolves; other requests on the worker do not wait."""
    up = make_gateway()
    g, log = gateway_with(make_gateway, tmp_path, shim, [
        {"path": "/h/", "kind": "proxy", "upstream": f"http://api.slow.test:{up.port}", "strip_prefix": True}])
    got = {}
    t = threading.Thread(target=lambda: got.update(r=g.get("/h/healthz", timeout=10)))
    t.start()
    gw.wait_until(lambda: lookups(log, "api.slow.test") == 1, timeout=5, what="the lookup started")
    t0 = time.monotonic()
    assert g.get("/healthz").status == 200
    elapsed = time.monotonic() - t0
    assert "r" not in got, "the lookup was not slow: nothing measured"
    assert elapsed < 0.75, f"the worker was held {elapsed:.2f} s"
    t.join(15)
    assert got["r"].status == 200, got["r"]


def test_unknown_name_is_a_502_and_the_failure_is_cached(make_gateway, tmp_path, shim):
    g, log = gateway_with(make_gateway, tmp_path, shim, [
        {"path": "/g/", "kind": "proxy", "upstream": "http://nohost.gone.test:9", "strip_prefix": True}])
    for _ in range(3):
        r = g.get("/g/x")
        assert r.status == 502 and r.json()["code"] == "upstream_unavailable", r
    w = wsraw.WS(g.port, path="/g/probe/ws", expect_101=False)
    assert w.response.status == 502, w.response
    # one lookup for the four requests (failures are kept GW_RESOLVE_NEG_TTL_MS)
    assert lookups(log, "nohost.gone.test") == 1
    g.wait_log(lambda l: l.get("msg") == "upstream unreachable" and "nohost.gone.test" in l.get("error", ""))


def test_lookup_counts_toward_the_connect_timeout(make_gateway, tmp_path, shim):
    """A name slower than the route's connect_timeout: 504 for HTTP, the
    relay's timeout for a WebSocket, both at the deadline, not after the
    lookup; the gateway stops cleanly with the lookup still running."""
    up = make_gateway()
    g, log = gateway_with(make_gateway, tmp_path, shim, [
        {"path": "/t/", "kind": "proxy", "upstream": f"http://late.slow.test:{up.port}", "strip_prefix": True,
         "connect_timeout": "1s"}], delay_ms=4000)
    t0 = time.monotonic()
    r = g.get("/t/healthz", timeout=10)
    assert r.status == 504 and r.json()["code"] == "upstream_timeout", r
    assert time.monotonic() - t0 < 3.5
    w = wsraw.WS(g.port, path="/t/probe/ws", expect_101=False, timeout=10)
    assert w.response.status == 504, w.response
