"""In-place binary upgrade over GATEWAY_UPGRADE_SOCKET: a new `wsgate serve`
takes the running one's listening sockets (SCM_RIGHTS), serves on them, and
the old one drains as on SIGTERM and exits 0. Connection attempts in tight
loops across the hand-over: not one refused, reset or unanswered."""

import os
import signal
import socket
import stat
import subprocess
import threading
import time

import pytest

import gw
import wsraw


def _env(path, **extra):
    e = {"GATEWAY_UPGRADE_SOCKET": path, "GATEWAY_WORKERS": "2", "GATEWAY_DRAIN_DELAY": "1s",
         "GATEWAY_SHUTDOWN_TIMEOUT": "4s"}
    e.update(extra)
    return e


def _successor(make_gateway, old, env):
    """A second gateway configured with the old one's addresses."""
    e = dict(env)
    e["GATEWAY_PUBLIC_HTTP_ADDR"] = f"127.0.0.1:{old.port}"
    e["GATEWAY_ADMIN_HTTP_ADDR"] = f"127.0.0.1:{old.admin_port}"
    g = make_gateway(env=e, start=False)
    g.port, g.admin_port = old.port, old.admin_port
    return g


def listen_inodes(port):
    """Inodes of the TCP sockets listening on port (/proc/net/tcp): the same
    inodes before and after an upgrade mean the same sockets, the same
    accept queues, and no socket bound beside them."""
    out = set()
    for f in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = open(f).read().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            cols = line.split()
            if cols[3] == "0A" and int(cols[1].rsplit(":", 1)[1], 16) == port:
                out.add(int(cols[9]))
    return out


class Hammer:
    """Threads that each open a connection, send GET /healthz and read the
    200, as fast as they can, counting every attempt that did not end in a
    200 (refused, reset, closed early, timed out). Half of them open bursts
    of connections before sending anything, so that the accept queues are
    rarely empty (a queue closed with connections in it resets them)."""

    def __init__(self, port, threads=4, burst=48):
        self.port = port
        self.burst = burst
        self.stop = threading.Event()
        self.ok = 0
        self.fail = []
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self.run, args=(i % 2 == 1,), daemon=True) for i in range(threads)]
        for t in self.threads:
            t.start()

    @staticmethod
    def ask(s):
        """GET /healthz on the connected socket s: True for a 200."""
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
        return data.startswith(b"HTTP/1.1 200 ")

    def one(self):
        s = socket.create_connection(("127.0.0.1", self.port), timeout=5)
        try:
            return self.ask(s)
        finally:
            s.close()

    def many(self):
        """A burst: every connection opened first, then the requests."""
        socks, results = [], []
        try:
            for _ in range(self.burst):
                try:
                    socks.append(socket.create_connection(("127.0.0.1", self.port), timeout=5))
                except OSError as e:
                    results.append(repr(e))
            for s in socks:
                try:
                    results.append(None if self.ask(s) else "not a 200")
                except OSError as e:
                    results.append(repr(e))
        finally:
            for s in socks:
                s.close()
        return results

    def record(self, err):
        with self.lock:
            if err is None:
                self.ok += 1
            else:
                self.fail.append(err)

    def run(self, bursts=False):
        while not self.stop.is_set():
            if bursts:
                for err in self.many():
                    self.record(err)
                continue
            try:
                good = self.one()
                err = None if good else "not a 200"
            except OSError as e:
                err = repr(e)
            self.record(err)

    def count(self):
        with self.lock:
            return self.ok + len(self.fail)

    def finish(self):
        self.stop.set()
        for t in self.threads:
            t.join(timeout=15)


def test_upgrade_hands_over_without_refusing_a_connection(make_gateway, tmp_path):
    path = str(tmp_path / "upgrade.sock")
    env = _env(path)
    old = make_gateway(env=env)
    st = os.lstat(path)
    assert stat.S_ISSOCK(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o600
    w = old.ws(headers={"X-Correlation-ID": "upgrade-old-ws"})
    w.send_text("on the old process")
    assert w.recv_message()[1] == b"on the old process"

    pub_inodes, admin_inodes = listen_inodes(old.port), listen_inodes(old.admin_port)
    assert len(pub_inodes) == 2 and len(admin_inodes) == 1  # one SO_REUSEPORT socket per worker
    h = Hammer(old.port)
    new = None
    try:
        gw.wait_until(lambda: h.count() >= 300, timeout=20, what="hammer running")
        before = h.count()
        new = _successor(make_gateway, old, env)
        new.start()
        new.wait_log(lambda l: l.get("msg") == "upgrade: took over the listeners; the old process drains",
                     timeout=15)
        # The old WebSocket gets its normal drain close; the old process exits 0.
        f = w.expect_close(timeout=15)
        assert f.close_code == 1001 and f.close_reason == "gateway is shutting down", f
        w.send_close(1001)
        assert old.wait(20) == 0, old.stderr()[-3000:]
        during = h.count() - before
        time.sleep(0.5)
    finally:
        h.finish()
        w.close()
    assert not h.fail, f"{len(h.fail)} failed attempts of {h.count()}: {h.fail[:5]}"
    assert during >= 2000, f"only {during} attempts across the hand-over"

    # The very sockets the old process listened on, and no other.
    assert listen_inodes(old.port) == pub_inodes and listen_inodes(old.admin_port) == admin_inodes
    drain = [l for l in old.logs() if l.get("msg") == "draining"]
    assert len(drain) == 1 and drain[0]["signal"] == "upgrade", drain
    handed = [l for l in old.logs() if l.get("msg") == "upgrade: the new process serves; draining"]
    assert len(handed) == 1 and handed[0]["new_pid"] == new.pid, handed
    took = new.wait_log(lambda l: l.get("msg") == "upgrade: took over the listeners; the old process drains")
    assert took[0]["old_pid"] == old.pid and took[0]["sockets"] == 3, took  # 2 public + admin
    assert old.ws_close_log("upgrade-old-ws")["cause"] == "shutdown"

    # The new process serves public and admin on the same addresses, and
    # owns the upgrade socket now (a later upgrade can take from it).
    assert new.get("/healthz").status == 200
    assert new.admin_get("/metrics").status == 200
    w2 = new.ws()
    w2.send_text("on the new process")
    assert w2.recv_message()[1] == b"on the new process"
    w2.close()
    st2 = os.lstat(path)
    assert stat.S_ISSOCK(st2.st_mode) and stat.S_IMODE(st2.st_mode) == 0o600

    # ... and a third generation takes over from the second.
    third = _successor(make_gateway, new, env)
    third.start()
    third.wait_log(lambda l: l.get("msg") == "upgrade: took over the listeners; the old process drains",
                   timeout=15)
    assert new.wait(20) == 0
    assert third.get("/healthz").status == 200


def test_upgrade_refused_when_the_old_process_does_not_answer(make_gateway, tmp_path):
    path = str(tmp_path / "upgrade.sock")
    env = _env(path)
    old = make_gateway(env=env)
    e = dict(env)
    e.update({"GATEWAY_PUBLIC_HTTP_ADDR": f"127.0.0.1:{old.port}",
              "GATEWAY_ADMIN_HTTP_ADDR": f"127.0.0.1:{old.admin_port}", "GATEWAY_LOG_FORMAT": "json"})
    os.kill(old.pid, signal.SIGSTOP)
    try:
        t0 = time.monotonic()
        r = gw.run_cli(["serve"], env=e, timeout=30)
        took = time.monotonic() - t0
    finally:
        os.kill(old.pid, signal.SIGCONT)
    assert r.returncode == 1, r.stderr
    lines = [l for l in r.stderr.decode().splitlines() if l.strip()]
    errors = [l for l in lines if '"level":"error"' in l]
    assert len(errors) == 1, lines
    assert "did not hand over its listeners (no answer in time); not starting beside it" in errors[0], errors
    assert took < 15
    # The old process serves on, alone, and still hands over later.
    assert old.get("/healthz").status == 200
    assert old.alive


def test_stale_upgrade_socket_is_replaced_and_other_files_refused(make_gateway, tmp_path):
    path = str(tmp_path / "upgrade.sock")
    s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    s.bind(path)
    s.close()  # the file stays, nobody behind it: as after a SIGKILL
    g = make_gateway(env=_env(path))
    g.wait_log(lambda l: l.get("msg") == "upgrade socket was stale (no process behind it); replaced")
    assert g.get("/healthz").status == 200
    assert stat.S_IMODE(os.lstat(path).st_mode) == 0o600
    assert g.stop() == 0
    assert not os.path.exists(path)  # a clean exit removes it

    other = str(tmp_path / "regular")
    with open(other, "w") as f:
        f.write("x")
    r = gw.run_cli(["serve"], env={"GATEWAY_UPGRADE_SOCKET": other, "GATEWAY_PUBLIC_HTTP_ADDR": "127.0.0.1:0",
                                   "GATEWAY_AUTHENTICATED_GRPC_ADDR": ""})
    assert r.returncode == 1
    assert b"the path exists and is not a socket; not replacing it" in r.stderr
    assert open(other).read() == "x"


def _start_unix(g):
    """Starts g (a public unix: listener, so the TCP readiness poll of
    Gateway.start does not apply) and waits for its start line."""
    import subprocess
    g._err = open(g.stderr_path, "ab")
    g.proc = subprocess.Popen([gw.wsgate_bin(), "serve"], env=g.env, stdin=subprocess.DEVNULL,
                              stdout=subprocess.DEVNULL, stderr=g._err)
    g.pid = g.proc.pid
    g.wait_log(lambda l: l.get("msg") == "gateway started", timeout=15)


def _unix_healthz(path):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(5)
    try:
        s.connect(path)
        return Hammer.ask(s)
    finally:
        s.close()


def test_upgrade_of_a_unix_socket_listener(make_gateway, tmp_path):
    path = str(tmp_path / "upgrade.sock")
    pub = str(tmp_path / "public.sock")
    env = _env(path, GATEWAY_PUBLIC_HTTP_ADDR=f"unix:{pub}")
    old = make_gateway(env=env, start=False)
    _start_unix(old)
    assert _unix_healthz(pub)
    ino = os.lstat(pub).st_ino
    e = dict(env)
    e["GATEWAY_ADMIN_HTTP_ADDR"] = f"127.0.0.1:{old.admin_port}"
    new = make_gateway(env=e, start=False)
    _start_unix(new)
    took = new.wait_log(lambda l: l.get("msg") == "upgrade: took over the listeners; the old process drains")
    assert took[0]["sockets"] == 3, took  # the unix listener once per worker (the same socket), and admin
    assert old.wait(20) == 0, old.stderr()[-3000:]
    assert _unix_healthz(pub) and os.lstat(pub).st_ino == ino  # the same socket file, never re-bound
    assert not [l for l in new.logs() if l.get("msg", "").startswith("upgrade: inherited listener not in")]


def test_upgrade_hands_over_the_grpc_listener(make_gateway, tmp_path):
    """The gRPC listener (one SO_REUSEPORT socket per worker) is handed over
    like the others: the new process serves HTTP/2 on the very sockets."""
    r = gw.run_cli(["keygen", "--out", str(tmp_path / "signer")])
    assert r.returncode == 0, r
    gport = gw.free_port()
    env = _env(str(tmp_path / "upgrade.sock"), GATEWAY_AUTHENTICATED_GRPC_ADDR=f"127.0.0.1:{gport}",
               GATEWAY_RESPONSE_SIGNER_PRIVATE_KEY_PEM_PATH=str(tmp_path / "signer.key"))
    old = make_gateway(env=env)
    grpc_inodes = listen_inodes(gport)
    assert len(grpc_inodes) == 2, grpc_inodes

    def h2_settings():
        s = socket.create_connection(("127.0.0.1", gport), timeout=5)
        s.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        head = b""
        while len(head) < 9:
            chunk = s.recv(9 - len(head))
            assert chunk, "closed before a frame"
            head += chunk
        s.close()
        return head[3]  # the first frame's type
    assert h2_settings() == 4  # SETTINGS
    new = _successor(make_gateway, old, env)
    new.start()
    took = new.wait_log(lambda l: l.get("msg") == "upgrade: took over the listeners; the old process drains",
                        timeout=15)
    assert took[0]["sockets"] == 5, took  # 2 public + admin + 2 gRPC
    assert old.wait(20) == 0, old.stderr()[-3000:]
    assert listen_inodes(gport) == grpc_inodes
    assert h2_settings() == 4


def _fake_old(path, handout, uid=None):
    """A process that answers a takeover on path like an old gateway, handing
    the sockets made by handout() (a list of (role, addr, fd)); run as uid
    when given (root only). Returns its pid; it exits after the exchange."""
    import array
    import json as _json
    rd, wr = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(rd)
            if uid is not None:
                os.setgid(uid)
                os.setuid(uid)
            items = handout()
            u = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            u.bind(path)
            u.listen(1)
            os.write(wr, b"1")
            u.settimeout(20)
            c, _ = u.accept()
            c.settimeout(20)
            c.recv(65536)
            hdr = {"v": 1, "op": "sockets", "pid": os.getpid(), "version": "fake",
                   "sockets": [{"role": r, "addr": a, "worker": 0} for r, a, _ in items]}
            c.sendmsg([_json.dumps(hdr).encode()])
            c.sendmsg([_json.dumps({"v": 1, "op": "fds", "n": len(items)}).encode()],
                      [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [fd for _, _, fd in items]))])
            try:
                c.recv(65536)
            except OSError:
                pass
        finally:
            os._exit(0)
    os.close(wr)
    os.read(rd, 1)
    os.close(rd)
    return pid


def _start_refused(make_gateway, env, port):
    g = make_gateway(env=dict(env, GATEWAY_PUBLIC_HTTP_ADDR=f"127.0.0.1:{port}", GATEWAY_ADMIN_HTTP_ADDR=""),
                     start=False)
    r = subprocess.run([gw.wsgate_bin(), "serve"], env=g.env, capture_output=True, timeout=30)
    return r


def test_takeover_refuses_a_descriptor_that_is_not_the_listener(make_gateway, tmp_path):
    """The new process checks what it is handed (review4 F5): a socket that
    is not listening, or listens on another port, is refused with one line
    (exit 1), never served on."""
    path = str(tmp_path / "upgrade.sock")
    port = gw.free_port()

    def not_listening():
        a, b = socket.socketpair()
        return [("public", f"127.0.0.1:{port}", a.detach())]

    def other_port():
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        s.listen(8)
        return [("public", f"127.0.0.1:{port}", s.detach())]

    for handout in (not_listening, other_port):
        if os.path.exists(path):
            os.unlink(path)
        pid = _fake_old(path, handout)
        r = _start_refused(make_gateway, _env(path, GATEWAY_WORKERS="1"), port)
        os.waitpid(pid, 0)
        lines = r.stderr.decode().strip().splitlines()
        assert r.returncode == 1, r
        assert len(lines) == 1 and "is not a listening socket on that address" in lines[0], lines


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run the fake old process as another user")
def test_takeover_refuses_another_users_socket(make_gateway):
    """A socket at the upgrade path owned by a process of another user is
    refused (review4 F5: that user could hand us a listener it keeps a copy
    of and accept a share of our clients)."""
    import shutil
    import tempfile
    d = tempfile.mkdtemp(prefix="wsgate-upgrade-shared-")  # reachable by the other user (tmp_path is 0700)
    os.chmod(d, 0o1777)
    path = os.path.join(d, "upgrade.sock")
    port = gw.free_port()

    def own_listener():
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        s.bind(("127.0.0.1", port))
        s.listen(8)
        return [("public", f"127.0.0.1:{port}", s.detach())]
    try:
        pid = _fake_old(path, own_listener, uid=65534)
        assert os.path.exists(path), "the other user's process did not make its socket"
        r = _start_refused(make_gateway, _env(path, GATEWAY_WORKERS="1"), port)
        os.waitpid(pid, 0)
    finally:
        shutil.rmtree(d, ignore_errors=True)
    lines = r.stderr.decode().strip().splitlines()
    assert r.returncode == 1, r
    assert len(lines) == 1 and "runs as another user" in lines[0], lines
