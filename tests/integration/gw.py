"""gw: starts and stops real wsgate processes for the integration tests.

Each Gateway runs the binary from WSGATE_BIN (default build/wsgate) on free
loopback ports, with stderr captured to a temp file so tests can assert on
logs, and is stopped by PID with SIGTERM. Every process a test starts must
end with the status it expects (`expect_exit`, 0 after SIGTERM): a process
still running at STOP_DEADLINE after SIGTERM is hung, is killed with SIGKILL
and fails the test (check_exit); so does a signal it did not expect.
"""

import json
import os
import re
import signal
import socket
import subprocess
import tempfile
import time

import wsraw

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
SANITIZER_PATTERNS = ("ERROR: AddressSanitizer", "ERROR: LeakSanitizer", "runtime error:")
# How long a SIGTERMed process may take to exit before it counts as hung. The
# gateway's own shutdown budget in these tests is 3 s (GATEWAY_SHUTDOWN_TIMEOUT)
# and LeakSanitizer's exit scan under ASan takes a few more: 30 s is a hang
# by a wide margin, never a slow machine.
STOP_DEADLINE = 30.0


def sanitizer_lines(text):
    return [l for l in text.splitlines() if any(p in l for p in SANITIZER_PATTERNS)]


def describe_status(rc):
    if rc is None:
        return "still running"
    if rc < 0:
        try:
            return f"killed by {signal.Signals(-rc).name}"
        except ValueError:
            return f"killed by signal {-rc}"
    return f"exit {rc}"


def wsgate_bin():
    b = os.environ.get("WSGATE_BIN", "build/wsgate")
    if not os.path.isabs(b):
        b = os.path.join(ROOT, b)
    return b


def is_sanitizer_build():
    return "/san/" in wsgate_bin() or os.environ.get("WSGATE_SAN") == "1"


def sanitizer_env():
    env = {}
    if is_sanitizer_build():
        env["ASAN_OPTIONS"] = os.environ.get("ASAN_OPTIONS", "detect_leaks=1:abort_on_error=1")
        env["UBSAN_OPTIONS"] = os.environ.get("UBSAN_OPTIONS", "print_stacktrace=1:halt_on_error=1")
    return env


# Listening ports come from below the kernel's ephemeral range (32768+ by
# default), so no outgoing connection's local port takes one, and the plain
# and the sanitizer runs (which run at the same time under `make test`) draw
# from two halves, so they never pick the same one (a port taken by bind(0)
# and released could be handed to both: "Address already in use" at start,
# seen once in several runs).
_HALF = 1 if os.environ.get("WSGATE_SAN") == "1" or "/san/" in os.environ.get("WSGATE_BIN", "") else 0
_PORT_LO = 20000 + _HALF * 6384
_PORT_HI = _PORT_LO + 6383
_next_port = _PORT_LO + (os.getpid() * 7919) % (_PORT_HI - _PORT_LO + 1)


def free_port():
    global _next_port
    span = _PORT_HI - _PORT_LO + 1
    for _ in range(span):
        port = _next_port
        _next_port = _PORT_LO + (_next_port - _PORT_LO + 1) % span
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            s.bind(("127.0.0.1", port))
            return port
        except OSError:
            continue
        finally:
            s.close()
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def base_env():
    """The environment without any GATEWAY_* variable of the caller."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    env.update(sanitizer_env())
    return env


def run_cli(args, env=None, timeout=30):
    """Runs `wsgate ARGS` to completion. A sanitizer report in its stderr or
    an end by a signal (a crash, an abort) fails the calling test here; the
    caller asserts the documented exit code."""
    e = base_env()
    e.update(env or {})
    r = subprocess.run([wsgate_bin()] + list(args), env=e, capture_output=True, timeout=timeout)
    err = r.stderr.decode("utf-8", "replace")
    bad = sanitizer_lines(err)
    assert not bad, f"sanitizer report from wsgate {' '.join(args)}:\n{err[-6000:]}"
    assert r.returncode >= 0, f"wsgate {' '.join(args)} {describe_status(r.returncode)}:\n{err[-3000:]}"
    return r


ALL = []  # every Gateway started in this pytest process (for sanitizer checks)


class LoggedProcess:
    """A process started by a test with its stderr in a file (self.proc,
    self.stderr_path): reading its log lines and ending it, shared by the
    gateway, probe and agent wrappers.

    expect_exit: the status the test expects the process to end with (0
    after SIGTERM); a test that kills it on purpose sets it (-9 for SIGKILL).
    hung: set when it outlived STOP_DEADLINE after SIGTERM."""

    expect_exit = 0
    hung = False

    def stderr(self):
        with open(self.stderr_path, "rb") as f:
            return f.read().decode("utf-8", "replace")

    def logs(self):
        out = []
        for line in self.stderr().splitlines():
            line = line.strip()
            if not line.startswith("{"):
                continue
            try:
                out.append(json.loads(line))
            except ValueError:
                pass
        return out

    def terminate(self, timeout=STOP_DEADLINE):
        """SIGTERM and wait; a process still running after timeout is hung
        (self.hung, see check_exit) and is killed. Returns the exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.hung = True
                self.proc.kill()
                self.proc.wait(timeout=10)
        return self.proc.returncode

    def check_exit(self, what="process"):
        """Problems with how the process ended (after stop/terminate), as a
        list of messages: a hang, a status other than expect_exit, or a
        sanitizer report in its stderr."""
        out = []
        tail = self.stderr()[-3000:]
        if self.hung:
            out.append(f"{what} {self.pid} hung: still running {STOP_DEADLINE:.0f}s after SIGTERM (killed)")
        elif self.proc.returncode != self.expect_exit:
            out.append(f"{what} {self.pid} ended with {describe_status(self.proc.returncode)}, "
                       f"expected {describe_status(self.expect_exit)}")
        bad = sanitizer_lines(self.stderr())
        if bad:
            out.append(f"sanitizer report in {what} {self.pid} stderr:\n" + "\n".join(bad[:20]))
        if out:
            out.append(f"{what} stderr tail:\n{tail}")
        return out


class Gateway(LoggedProcess):
    def __init__(self, env=None, args=("serve",), tls=None, start=True, ready_timeout=15.0):
        self.port = free_port()
        self.admin_port = free_port()
        self.env = base_env()
        self.env.update({
            "GATEWAY_PUBLIC_HTTP_ADDR": f"127.0.0.1:{self.port}",
            "GATEWAY_ADMIN_HTTP_ADDR": f"127.0.0.1:{self.admin_port}",
            "GATEWAY_AUTHENTICATED_GRPC_ADDR": "",
            "GATEWAY_LOG_FORMAT": "json",
            "GATEWAY_SHUTDOWN_TIMEOUT": "3s",
            "GATEWAY_DRAIN_DELAY": "0s",  # drain tests set their own
        })
        self.tls = tls
        if tls:
            self.env["GATEWAY_TLS_CERT_PATH"] = tls[0]
            self.env["GATEWAY_TLS_KEY_PATH"] = tls[1]
        self.env.update(env or {})
        self.args = list(args)
        self.proc = None
        fd, self.stderr_path = tempfile.mkstemp(prefix="wsgate-stderr-", suffix=".log")
        os.close(fd)
        self.ready_timeout = ready_timeout
        self.returncode = None
        ALL.append(self)
        if start:
            self.start()

    # -- lifecycle
    def start(self):
        self._err = open(self.stderr_path, "ab")
        self.proc = subprocess.Popen([wsgate_bin()] + self.args, env=self.env, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=self._err)
        self.pid = self.proc.pid
        deadline = time.monotonic() + self.ready_timeout
        last = None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"wsgate exited with {self.proc.returncode} during start:\n{self.stderr()}")
            try:
                r = self.get("/readyz", timeout=1.0)
                if r.status == 200:
                    return self
                last = r
            except (OSError, wsraw.Timeout, wsraw.Closed) as e:
                last = e
            time.sleep(0.05)
        self.kill()
        self.expect_exit = 0  # (a gateway that never got ready is a failure, not a kill on purpose)
        raise RuntimeError(f"wsgate not ready in {self.ready_timeout}s ({last!r}):\n{self.stderr()}")

    def signal(self, sig):
        if self.proc and self.proc.poll() is None:
            os.kill(self.pid, sig)

    def wait(self, timeout):
        try:
            self.returncode = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None
        return self.returncode

    def stop(self, timeout=STOP_DEADLINE):
        """SIGTERM and wait; still running after the timeout means hung
        (self.hung) and SIGKILL. Returns the exit status."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.signal(signal.SIGTERM)
            if self.wait(timeout) is None:
                self.hung = True
                self.kill()
        self.returncode = self.proc.returncode
        self._err.close()
        return self.returncode

    def kill(self):
        """SIGKILL on purpose: the status expected from now on is that kill."""
        if self.proc and self.proc.poll() is None:
            self.expect_exit = -signal.SIGKILL
            os.kill(self.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)

    @property
    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    # -- output
    def sanitizer_errors(self):
        return sanitizer_lines(self.stderr())

    def new_sanitizer_errors(self):
        """Sanitizer lines written since the previous call (cheap to call
        after every test: reads only the new part of the stderr file)."""
        pos = getattr(self, "_scan_pos", 0)
        with open(self.stderr_path, "rb") as f:
            f.seek(pos)
            data = f.read()
        # Scan whole lines only; an unfinished last line is read next time.
        end = data.rfind(b"\n") + 1
        self._scan_pos = pos + end
        return sanitizer_lines(data[:end].decode("utf-8", "replace"))

    def wait_log(self, pred, timeout=5.0, what="log line"):
        deadline = time.monotonic() + timeout
        while True:
            hits = [l for l in self.logs() if pred(l)]
            if hits:
                return hits
            if time.monotonic() > deadline:
                raise AssertionError(f"no {what} within {timeout}s; stderr tail:\n{self.stderr()[-3000:]}")
            time.sleep(0.05)

    def ws_close_log(self, correlation_id, timeout=5.0):
        """The single 'ws close' line of the connection with that id."""
        hits = self.wait_log(lambda l: l.get("msg") == "ws close" and l.get("correlation_id") == correlation_id,
                             timeout, what=f"ws close for {correlation_id}")
        time.sleep(0.05)
        hits = [l for l in self.logs() if l.get("msg") == "ws close" and l.get("correlation_id") == correlation_id]
        assert len(hits) == 1, hits
        return hits[0]

    # -- clients
    def tls_ctx(self):
        if not self.tls:
            return None
        import ssl
        ctx = ssl.create_default_context(cafile=self.tls[0])
        return ctx

    def get(self, path, timeout=5.0, headers=None, method="GET"):
        return wsraw.http_request(self.port, method, path, headers=headers, timeout=timeout, tls_ctx=self.tls_ctx())

    def admin_get(self, path, timeout=5.0):
        return wsraw.http_request(self.admin_port, "GET", path, timeout=timeout)

    def ws(self, **kw):
        kw.setdefault("tls_ctx", self.tls_ctx())
        return wsraw.WS(self.port, **kw)

    def metrics(self):
        r = self.admin_get("/metrics")
        assert r.status == 200, r
        return parse_metrics(r.body.decode())

    def metric(self, name, **labels):
        return metric_value(self.metrics(), name, **labels)


_LINE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})?\s+(\S+)')
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def parse_metrics(text):
    """Prometheus text -> {(name, frozenset(labels.items())): float}."""
    out = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = _LINE.match(line)
        assert m, f"bad metrics line: {line!r}"
        labels = frozenset(_LABEL.findall(m.group(3) or ""))
        out[(m.group(1), labels)] = float(m.group(4))
    return out


def metric_value(metrics, name, **labels):
    """Value of the series with exactly those labels; 0 when absent."""
    return metrics.get((name, frozenset(labels.items())), 0.0)


def wait_until(fn, timeout=5.0, interval=0.05, what="condition"):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = fn()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"{what} not met within {timeout}s (last: {last!r})")


def make_cert(tmpdir):
    """Self-signed certificate for localhost/127.0.0.1 via the openssl CLI."""
    cert = os.path.join(tmpdir, "cert.pem")
    key = os.path.join(tmpdir, "key.pem")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", cert,
                    "-days", "2", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
                   check=True, capture_output=True, timeout=60)
    return cert, key


# ---------------------------------------------------------------- relay helpers

def write_routes(path, routes):
    """Writes a GATEWAY_ROUTES_FILE ({"routes": [...]}) atomically (rename),
    so a SIGHUP never sees half a file."""
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump({"routes": routes}, f)
    os.replace(tmp, path)
    return path


def vm_rss_kb(pid):
    """Resident set size of a process in KiB (VmRSS from /proc/PID/status)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError(f"no VmRSS for pid {pid}")


class Upstream:
    """A helper process (an upstream server written in Python) that reports
    what it sees as JSON lines in an events file; started with the argument
    list `argv` plus `--events FILE`, ready once it reports {"ev":"ready"}.
    Stopped by PID (SIGTERM, then SIGKILL)."""

    def __init__(self, argv, ready_timeout=10.0):
        fd, self.events_path = tempfile.mkstemp(prefix="wsgate-upstream-", suffix=".jsonl")
        os.close(fd)
        self._err = tempfile.TemporaryFile(prefix="wsgate-upstream-err-")
        self.proc = subprocess.Popen(list(argv) + ["--events", self.events_path], stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=self._err)
        self.pid = self.proc.pid
        try:
            self.wait_event(lambda e: e.get("ev") == "ready", timeout=ready_timeout, what="upstream ready")
        except AssertionError:
            self.stop()
            raise

    def events(self):
        out = []
        with open(self.events_path, "rb") as f:
            data = f.read()
        for line in data.split(b"\n")[:-1]:  # an unfinished last line is read next time
            try:
                out.append(json.loads(line))
            except ValueError:
                pass
        return out

    def wait_event(self, pred, timeout=5.0, what="upstream event"):
        deadline = time.monotonic() + timeout
        while True:
            hits = [e for e in self.events() if pred(e)]
            if hits:
                return hits
            if self.proc.poll() is not None:
                self._err.seek(0)
                err = self._err.read().decode("utf-8", "replace")
                raise AssertionError(f"upstream exited {self.proc.returncode} waiting for {what}:\n{err[-3000:]}")
            if time.monotonic() > deadline:
                raise AssertionError(f"no {what} within {timeout}s; events: {self.events()[-20:]!r}")
            time.sleep(0.02)

    @property
    def alive(self):
        return self.proc.poll() is None

    def stop(self, timeout=5.0):
        if self.proc.poll() is None:
            os.kill(self.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.kill(self.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        self._err.close()
        try:
            os.unlink(self.events_path)
        except OSError:
            pass
        return self.proc.returncode
