"""`wsgate probe` against real gateways: every drop reason made to happen for
real (gateway killed, port closed, echo stalled by SIGSTOP, close with a
code, HTTP refusal) and read back from the probe's own /metrics and logs.

Short settings keep the module well under a minute: interval 200ms,
timeout 1s, back-off unit 200ms (so the back-off is min(0.2 x attempts, 2) s).
"""

import json
import os
import signal
import subprocess
import tempfile
import time

import pytest

import gw
import wsraw


class Probe(gw.LoggedProcess):
    def __init__(self, legs, interval="200ms", timeout="1s", backoff="200ms", env=None, extra=()):
        self.port = gw.free_port()
        args = [gw.wsgate_bin(), "probe", "--listen", f"127.0.0.1:{self.port}", "--interval", interval,
                "--timeout", timeout, "--backoff", backoff]
        for name, url in legs:
            args += ["--leg", f"{name}={url}"]
        args += list(extra)
        e = gw.base_env()
        e.update(env or {})
        fd, self.stderr_path = tempfile.mkstemp(prefix="wsgate-probe-", suffix=".log")
        os.close(fd)
        self._err = open(self.stderr_path, "ab")
        self.proc = subprocess.Popen(args, env=e, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=self._err)
        gw.wait_until(self._ready, timeout=10, what="probe metrics listener")

    def _ready(self):
        assert self.proc.poll() is None, self.stderr()
        try:
            return wsraw.http_request(self.port, "GET", "/healthz", timeout=1.0).status == 200
        except (OSError, wsraw.Timeout, wsraw.Closed):
            return False

    def metrics(self):
        r = wsraw.http_request(self.port, "GET", "/metrics", timeout=3.0)
        assert r.status == 200, r
        return gw.parse_metrics(r.body.decode())

    def value(self, name, **labels):
        return gw.metric_value(self.metrics(), name, **labels)

    def drops(self, leg, reason):
        return self.value("wsgate_probe_disconnects_total", leg=leg, reason=reason)

    def wait_value(self, name, pred, timeout=6.0, **labels):
        return gw.wait_until(lambda: pred(self.value(name, **labels)), timeout=timeout,
                             what=f"{name}{labels} condition")

    def wait_drops(self, leg, reason, at_least=1, timeout=6.0):
        gw.wait_until(lambda: self.drops(leg, reason) >= at_least, timeout=timeout,
                      what=f"{at_least} x {reason} on {leg}; stderr:\n{self.stderr()[-2000:]}")

    def wait_connected(self, leg, timeout=6.0):
        gw.wait_until(lambda: self.value("wsgate_probe_connected", leg=leg) == 1, timeout=timeout,
                      what=f"{leg} connected; stderr:\n{self.stderr()[-2000:]}")

    def stop(self):
        self.terminate()
        self._err.close()
        errs = [l for l in self.stderr().splitlines() if any(p in l for p in gw.SANITIZER_PATTERNS)]
        assert not errs, "sanitizer report in probe stderr:\n" + self.stderr()[-6000:]
        return self.proc.returncode


@pytest.fixture
def probes():
    made = []

    def factory(*a, **kw):
        p = Probe(*a, **kw)
        made.append(p)
        return p

    yield factory
    for p in made:
        rc = p.stop()
        assert rc == 0, f"probe exited {rc}:\n{p.stderr()[-3000:]}"


def test_kill_refusals_closed_port_and_recovery(make_gateway, probes):
    g = make_gateway()
    closed = gw.free_port()  # nobody listens there
    p = probes([("direct", f"ws://127.0.0.1:{g.port}/probe/ws"),
                ("closedport", f"ws://127.0.0.1:{closed}/probe/ws"),
                ("notfound", f"ws://127.0.0.1:{g.port}/no/such/route"),
                ("health", f"http://127.0.0.1:{g.port}/healthz"),
                ("httpnotfound", f"http://127.0.0.1:{g.port}/no/such/page")])
    p.wait_connected("direct")
    p.wait_connected("health")
    p.wait_value("wsgate_probe_rtt_seconds_count", lambda v: v >= 3, leg="direct")
    p.wait_drops("closedport", "connect_failed", at_least=2)
    p.wait_drops("notfound", "http_404")
    p.wait_drops("httpnotfound", "http_404")
    m = p.metrics()
    assert gw.metric_value(m, "wsgate_probe_connected", leg="closedport") == 0
    assert gw.metric_value(m, "wsgate_probe_connected", leg="notfound") == 0
    assert gw.metric_value(m, "wsgate_probe_connected", leg="httpnotfound") == 0
    assert gw.metric_value(m, "wsgate_probe_rtt_seconds_count", leg="health") >= 1
    # No drop on the healthy legs so far, and never-connected legs have no age.
    assert not any(k[0] == "wsgate_probe_disconnects_total" and ("leg", "direct") in k[1] for k in m)
    assert gw.metric_value(m, "wsgate_probe_connection_age_seconds_count", leg="closedport") == 0
    # The RTT histogram is a real one: the +Inf bucket equals the count.
    assert gw.metric_value(m, "wsgate_probe_rtt_seconds_bucket", leg="direct", le="+Inf") == \
        gw.metric_value(m, "wsgate_probe_rtt_seconds_count", leg="direct")

    port = g.port
    before = time.time()
    g.kill()  # SIGKILL: the kernel resets the connection under the probe
    p.wait_drops("direct", "io_error")
    p.wait_value("wsgate_probe_connected", lambda v: v == 0, leg="direct")
    p.wait_drops("direct", "connect_failed")  # reconnect attempts while it is down
    p.wait_drops("health", "connect_failed")
    m = p.metrics()
    assert gw.metric_value(m, "wsgate_probe_connection_age_seconds_count", leg="direct") == 1
    assert gw.metric_value(m, "wsgate_probe_connection_age_seconds_sum", leg="direct") > 0.3
    ts = gw.metric_value(m, "wsgate_probe_last_disconnect_timestamp", leg="direct")
    assert before - 2 <= ts <= time.time() + 2

    # One JSON line per drop, with the fields operators read.
    lines = [l for l in p.logs() if l.get("msg") == "probe disconnect" and l.get("leg") == "direct"]
    assert lines[0]["reason"] == "io_error", lines
    assert isinstance(lines[0]["age_s"], int) and lines[0]["age_ms"] >= 300
    assert lines[0]["last_rtt_ms"] >= 0
    # Counters move before their log line is written, in the same loop turn that
    # precedes the /metrics answer: every drop counted in m has its line.
    counted = sum(v for k, v in m.items() if k[0] == "wsgate_probe_disconnects_total" and ("leg", "direct") in k[1])
    assert counted >= 2 and len(lines) >= counted, (counted, lines)
    assert {l["reason"] for l in lines} <= {"io_error", "connect_failed"}, lines

    # The gateway comes back on the same port: the leg recovers by itself.
    g2 = make_gateway(env={"GATEWAY_PUBLIC_HTTP_ADDR": f"127.0.0.1:{port}"}, start=False)
    g2.port = port
    g2.start()
    p.wait_connected("direct", timeout=8)
    p.wait_connected("health", timeout=8)
    n = p.value("wsgate_probe_rtt_seconds_count", leg="direct")
    p.wait_value("wsgate_probe_rtt_seconds_count", lambda v: v > n, leg="direct")


def test_stalled_echo_is_rtt_timeout_then_connect_timeout(make_gateway, probes):
    g = make_gateway()
    p = probes([("direct", f"ws://127.0.0.1:{g.port}/probe/ws")])
    p.wait_connected("direct")
    p.wait_value("wsgate_probe_rtt_seconds_count", lambda v: v >= 2, leg="direct")
    g.signal(signal.SIGSTOP)
    try:
        t0 = time.monotonic()
        p.wait_drops("direct", "rtt_timeout", timeout=10)
        took = time.monotonic() - t0
        # Not before the 1 s timeout of the last ping, sent at most one 200 ms
        # interval before the stop (0.1 s of slack). That the drop came from
        # the RTT timeout is its reason label; no upper window needed.
        assert took >= 0.7, took
        assert p.value("wsgate_probe_connected", leg="direct") == 0
        # While stopped, the kernel still completes TCP handshakes but nothing
        # answers the upgrade: the reconnects time out.
        p.wait_drops("direct", "connect_timeout", timeout=5)
        line = [l for l in p.logs() if l.get("msg") == "probe disconnect" and l["reason"] == "rtt_timeout"][0]
        assert line["leg"] == "direct" and line["last_rtt_ms"] >= 0
    finally:
        g.signal(signal.SIGCONT)
    p.wait_connected("direct", timeout=8)
    assert p.value("wsgate_probe_connection_age_seconds_count", leg="direct") == 1


def test_close_code_from_the_gateway_draining(make_gateway, probes):
    # SIGTERM: the gateway closes every WebSocket with 1001 while it drains.
    g = make_gateway(env={"GATEWAY_SHUTDOWN_TIMEOUT": "2s"})
    p = probes([("direct", f"ws://127.0.0.1:{g.port}/probe/ws")])
    p.wait_connected("direct")
    p.wait_value("wsgate_probe_rtt_seconds_count", lambda v: v >= 2, leg="direct")
    g.signal(signal.SIGTERM)
    p.wait_drops("direct", "closed_1001", timeout=5)
    m = p.metrics()
    assert gw.metric_value(m, "wsgate_probe_connection_age_seconds_count", leg="direct") == 1
    assert gw.metric_value(m, "wsgate_probe_disconnects_total", leg="direct", reason="io_error") == 0
    assert gw.metric_value(m, "wsgate_probe_disconnects_total", leg="direct", reason="rtt_timeout") == 0
    line = [l for l in p.logs() if l.get("msg") == "probe disconnect"][0]
    assert line["reason"] == "closed_1001" and line["leg"] == "direct", line
    assert g.wait(10) == 0


def test_close_code_from_the_echo_idle_limit(make_gateway, probes):
    # The echo route closes idle connections with 1000; the probe's pings
    # count as messages, so ping less often than the limit.
    g = make_gateway(env={"GATEWAY_ECHO_IDLE_TIMEOUT": "1s"})
    p = probes([("direct", f"ws://127.0.0.1:{g.port}/probe/ws")], interval="3s", timeout="2s")
    p.wait_drops("direct", "closed_1000", timeout=3)
    m = p.metrics()
    age = gw.metric_value(m, "wsgate_probe_connection_age_seconds_sum", leg="direct")
    assert 0.8 <= age <= 2.5, age
    assert gw.metric_value(m, "wsgate_probe_disconnects_total", leg="direct", reason="rtt_timeout") == 0
    p.wait_connected("direct", timeout=3)  # back after the 0.2s back-off


def test_legs_from_environment_and_bad_usage(make_gateway):
    g = make_gateway()
    port = gw.free_port()
    e = gw.base_env()
    e.update({"PROBE_LEGS": f" a=ws://127.0.0.1:{g.port}/probe/ws , b=http://127.0.0.1:{g.port}/healthz",
              "PROBE_LISTEN": f"127.0.0.1:{port}", "PROBE_INTERVAL": "200ms", "PROBE_TIMEOUT": "1s"})
    proc = subprocess.Popen([gw.wsgate_bin(), "probe"], env=e, stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        def up():
            try:
                r = wsraw.http_request(port, "GET", "/metrics", timeout=1.0)
            except (OSError, wsraw.Timeout, wsraw.Closed):
                return False
            m = gw.parse_metrics(r.body.decode())
            return all(gw.metric_value(m, "wsgate_probe_connected", leg=l) == 1 for l in ("a", "b"))
        gw.wait_until(up, timeout=8, what="legs from PROBE_LEGS up")
        assert wsraw.http_request(port, "GET", "/nope", timeout=2).status == 404
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=10)
    assert proc.returncode == 0, err.decode()[-2000:]

    for args in (["probe"], ["probe", "--leg", "x"], ["probe", "--leg", "x=ftp://h/"],
                 ["probe", "--leg", "x=ws://h/", "--interval", "soon"], ["probe", "--bogus"],
                 ["probe", "--leg", "x=ws://h/", "--leg", "x=ws://h/"]):
        r = gw.run_cli(args, env={"PROBE_LEGS": ""})
        assert r.returncode == 2, (args, r)
        assert b"wsgate probe:" in r.stderr, r.stderr
    r = gw.run_cli(["probe", "--help"])
    assert r.returncode == 0 and b"PROBE_LEGS" in r.stdout and b"closed_<code>" in r.stdout
