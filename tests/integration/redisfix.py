"""A real redis-server for the tests: a free loopback port, a password, no
persistence (--save '' --appendonly no), its own directory; stopped, frozen
(SIGSTOP), thawed and killed by its PID only. `redis-cli` reads keys back.
Installed by `make deps` (Debian's redis-server)."""

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time

import gw

PASSWORD = "redis-pw-for-tests"


class RedisServer:
    def __init__(self, port=None, password=PASSWORD):
        self.port = port or gw.free_port()
        self.password = password
        self.dir = tempfile.mkdtemp(prefix="wsgate-redis-")
        self.proc = None
        self.start()

    @property
    def addr(self):
        return f"127.0.0.1:{self.port}"

    def env(self, **extra):
        """The gateway variables that select this Redis."""
        e = {"GATEWAY_REDIS_MASTER_ADDR": self.addr, "GATEWAY_REDIS_PASSWORD": self.password}
        e.update(extra)
        return e

    def start(self, timeout=10.0):
        """Starts (or starts again, on the same port) and waits for PING."""
        self._log = open(os.path.join(self.dir, "redis.log"), "ab")
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--requirepass", self.password,
             "--save", "", "--appendonly", "no", "--dir", self.dir, "--daemonize", "no"],
            stdin=subprocess.DEVNULL, stdout=self._log, stderr=self._log)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"redis-server exited {self.proc.returncode}: {self.log()}")
            if self.ping():
                return self
            time.sleep(0.05)
        raise RuntimeError("redis-server did not answer PING: " + self.log())

    def log(self):
        with open(os.path.join(self.dir, "redis.log"), errors="replace") as f:
            return f.read()[-3000:]

    def ping(self):
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1.0) as s:
                s.sendall(f"AUTH {self.password}\r\nPING\r\n".encode())
                buf = b""
                while b"PONG" not in buf:
                    d = s.recv(256)
                    if not d:
                        return False
                    buf += d
                return True
        except OSError:
            return False

    def cli(self, *args):
        """redis-cli's answer to one command, as text."""
        r = subprocess.run(["redis-cli", "-h", "127.0.0.1", "-p", str(self.port), "--no-auth-warning", "-a",
                            self.password] + [str(a) for a in args], capture_output=True, text=True, timeout=10)
        assert r.returncode == 0, r.stderr
        return r.stdout

    def kill(self):
        """SIGKILL by PID (Redis dies as if the machine did)."""
        if self.proc and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGCONT)
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        self._log.close()

    def freeze(self):
        os.kill(self.proc.pid, signal.SIGSTOP)

    def thaw(self):
        os.kill(self.proc.pid, signal.SIGCONT)

    def stop(self):
        self.kill()
        shutil.rmtree(self.dir, ignore_errors=True)


class Proxy:
    """A TCP proxy in front of a Redis for partition tests. blackhole():
    existing connections are reset, new ones are accepted and never
    answered (held open: a connect succeeds, the handshake hangs forever);
    heal(): new connections are forwarded again (the held ones stay silent)."""

    def __init__(self, target_port):
        import threading
        self.target = target_port
        self.lsock = socket.socket()
        self.lsock.bind(("127.0.0.1", 0))
        self.lsock.listen(64)
        self.port = self.lsock.getsockname()[1]
        self.holes = False
        self.pairs, self.held = [], []
        self._threading = threading
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def addr(self):
        return f"127.0.0.1:{self.port}"

    def _accept(self):
        while True:
            try:
                c, _ = self.lsock.accept()
            except OSError:
                return
            if self.holes:
                self.held.append(c)
                continue
            u = socket.create_connection(("127.0.0.1", self.target))
            self.pairs += [c, u]
            for a, b in ((c, u), (u, c)):
                self._threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(a, b):
        try:
            while True:
                d = a.recv(65536)
                if not d:
                    break
                b.sendall(d)
        except OSError:
            pass
        for s in (a, b):
            try:
                s.close()
            except OSError:
                pass

    def blackhole(self):
        import struct
        self.holes = True
        for s in self.pairs:
            try:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self.pairs = []

    def heal(self):
        self.holes = False

    def stop(self):
        self.lsock.close()
        for s in self.held + self.pairs:
            try:
                s.close()
            except OSError:
                pass


class Trickler:
    """Not a Redis: accepts, answers every command with a bulk string sent
    one byte every 0.2 s (each read gets something; the whole never ends)."""

    def __init__(self):
        import threading
        self.lsock = socket.socket()
        self.lsock.bind(("127.0.0.1", 0))
        self.lsock.listen(8)
        self.port = self.lsock.getsockname()[1]
        self.stopped = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        import threading
        while True:
            try:
                c, _ = self.lsock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(c,), daemon=True).start()

    def _serve(self, c):
        try:
            c.recv(65536)
            c.sendall(b"$1000000\r\n")
            while not self.stopped:
                c.sendall(b"x")
                time.sleep(0.2)
        except OSError:
            pass
        c.close()

    def stop(self):
        self.stopped = True
        self.lsock.close()
