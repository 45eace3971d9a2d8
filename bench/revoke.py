#!/usr/bin/python3
"""revoke.py: revocation latency across processes (`make bench-revoke`, not
part of `make test`).

Starts its own redis-server (loopback, a free port, a password, no
persistence) and PROCS wsgate processes (default 3) sharing it. Records N
device sessions (default 1,000) by XADD on the session-events stream, opens
one /ws/events stream per session, spread round-robin over the processes,
then revokes the sessions one at a time: XADD of the revoked snapshot, and
the time until that stream's close frame (1008) reaches the client. Prints
one JSON line: p50/p99/max latency in ms over the N revocations, and how
many closes carried 1008 "device session is revoked" (must be N).

The client is Python asyncio: its own scheduling is part of each figure
(about 0.1 ms). Uses Debian's /usr/bin/python3 with python3-websockets.
"""
import asyncio
import hashlib
import json
import os
import socket
import subprocess
import sys
import tempfile
import time

import websockets

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WSGATE = os.path.join(ROOT, "build", "wsgate")
N = int(os.environ.get("N", "1000"))
PROCS = int(os.environ.get("PROCS", "3"))
PASSWORD = "bench-redis-pw"
STREAM = "bench:session-events"


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


class Resp:
    """A minimal RESP client: enough for AUTH and XADD."""

    def __init__(self, port):
        self.s = socket.create_connection(("127.0.0.1", port))
        self.f = self.s.makefile("rb")
        self.call("AUTH", PASSWORD)

    def call(self, *args):
        out = [f"*{len(args)}\r\n".encode()]
        for a in args:
            b = a if isinstance(a, bytes) else str(a).encode()
            out.append(f"${len(b)}\r\n".encode() + b + b"\r\n")
        self.s.sendall(b"".join(out))
        line = self.f.readline()
        if line[:1] == b"-":
            raise RuntimeError(line.decode().strip())
        if line[:1] == b"$":
            n = int(line[1:])
            return None if n < 0 else self.f.read(n + 2)[:-2]
        return line[1:].strip()


def snapshot(i, status, version):
    return ["device_session_id", f"rv-{i}", "user_id", f"user-{i % 50}", "status", status,
            "version", str(version), "token_sha256", hashlib.sha256(f"bearer-{i}".encode()).hexdigest()]


def wait_port(port, proc, what):
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            sys.exit(f"revoke: {what} exited {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    sys.exit(f"revoke: {what} does not listen on {port}")


async def run(ports, r):
    streams = []
    for i in range(N):
        ws = await websockets.connect(f"ws://127.0.0.1:{ports[i % len(ports)]}/ws/events",
                                      subprotocols=[f"bearer-{i}"], ping_interval=None, max_queue=None)
        first = json.loads(await ws.recv())
        assert first["type"] == "gateway.server_time", first
        streams.append(ws)
    lat = []
    revoked_closes = 0
    for i, ws in enumerate(streams):
        t0 = time.monotonic()
        r.call("XADD", STREAM, "*", *snapshot(i, "revoked", 2))
        try:
            await asyncio.wait_for(ws.recv(), 10)
        except websockets.exceptions.ConnectionClosed as e:
            lat.append(time.monotonic() - t0)
            if e.rcvd and e.rcvd.code == 1008 and e.rcvd.reason == "device session is revoked":
                revoked_closes += 1
            continue
        sys.exit(f"revoke: stream {i} got a message instead of its close")
    lat.sort()

    def pct(p):
        return round(lat[min(len(lat) - 1, int(p * (len(lat) - 1)))] * 1000, 3)
    print(json.dumps({"revocations": N, "processes": len(ports), "p50_ms": pct(0.5), "p99_ms": pct(0.99),
                      "max_ms": round(lat[-1] * 1000, 3), "closed_1008_revoked": revoked_closes}))


def main():
    d = tempfile.mkdtemp(prefix="wsgate-bench-revoke-")
    rport = free_port()
    procs = []
    redis = subprocess.Popen(["redis-server", "--port", str(rport), "--bind", "127.0.0.1", "--requirepass", PASSWORD,
                              "--save", "", "--appendonly", "no", "--dir", d],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    procs.append(redis)
    try:
        wait_port(rport, redis, "redis-server")
        r = Resp(rport)
        for i in range(N):
            r.call("XADD", STREAM, "*", *snapshot(i, "active", 1))
        ports = []
        for k in range(PROCS):
            port, aport = free_port(), free_port()
            env = dict(os.environ, GATEWAY_PUBLIC_HTTP_ADDR=f"127.0.0.1:{port}",
                       GATEWAY_ADMIN_HTTP_ADDR=f"127.0.0.1:{aport}", GATEWAY_REDIS_MASTER_ADDR=f"127.0.0.1:{rport}",
                       GATEWAY_REDIS_PASSWORD=PASSWORD, GATEWAY_SESSION_EVENTS_REDIS_STREAM=STREAM,
                       GATEWAY_LOG_LEVEL="warn", GATEWAY_WS_PING_INTERVAL="0", GATEWAY_WORKERS="2")
            p = subprocess.Popen([WSGATE, "serve"], env=env, stdout=subprocess.DEVNULL,
                                 stderr=open(os.path.join(d, f"wsgate{k}.log"), "wb"))
            procs.append(p)
            wait_port(port, p, f"wsgate {k}")
            ports.append(port)
        # every process has read the N active snapshots
        deadline = time.monotonic() + 30
        for port in ports:
            while True:
                s = socket.create_connection(("127.0.0.1", port))
                s.sendall(b"GET /ws/events HTTP/1.1\r\nHost: b\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                          b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                          + f"Sec-WebSocket-Protocol: bearer-{N - 1}\r\n\r\n".encode())
                head = s.recv(4096)
                s.close()
                if head.startswith(b"HTTP/1.1 101"):
                    break
                if time.monotonic() > deadline:
                    sys.exit("revoke: the sessions never reached every process")
                time.sleep(0.1)
        asyncio.run(run(ports, r))
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=40)
            except subprocess.TimeoutExpired:
                p.kill()


if __name__ == "__main__":
    main()
