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
