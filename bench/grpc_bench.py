#!/usr/bin/python3
"""grpc_bench.py: the gRPC surface's two numbers (bench/README.md, "gRPC").

1. ExecuteCommand latency added by the gateway: the same downstream (a
   Python HTTP/1.1 server on loopback) called at a fixed rate RATE/s for
   SECONDS, once directly (a new connection per call, as the gateway does)
   and once through the gateway with a grpcio client; p50/p99 of both and the
   difference.
2. SubscribeEvents fan-out CPU: N subscribers of one user (grpc.aio streams,
   then /ws/events WebSockets in the same harness), EVENTS/s published for
   SECONDS; gateway CPU (utime+stime, /proc/PID/stat) per delivery
   (wsgate_push_deliveries_total).

Usage: /usr/bin/python3 bench/grpc_bench.py [RATE] [SECONDS] [N] [EVENTS]
"""

import asyncio
import hashlib
import http.client
import http.server
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

import grpc
import grpc.aio
import websockets

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
GEN = tempfile.mkdtemp(prefix="wsgate-bench-py-")
subprocess.run(["protoc", f"--proto_path={ROOT}/proto", f"--python_out={GEN}", "wsgate/v1/edge_gateway.proto"],
               check=True)
sys.path.insert(0, GEN)
from wsgate.v1 import edge_gateway_pb2 as pb  # noqa: E402

RATE = int(sys.argv[1]) if len(sys.argv) > 1 else 200
SECONDS = float(sys.argv[2]) if len(sys.argv) > 2 else 10
N = int(sys.argv[3]) if len(sys.argv) > 3 else 200
EVENTS = int(sys.argv[4]) if len(sys.argv) > 4 else 20
TOKEN = "bench-admin"


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *a):
        pass

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def pct(v, p):
    v = sorted(v)
    return v[min(len(v) - 1, int(len(v) * p))] * 1000


def paced(fn):
    lat = []
    t0 = time.monotonic()
    i = 0
    while True:
        at = t0 + i / RATE
        if at - t0 >= SECONDS:
            break
        d = at - time.monotonic()
        if d > 0:
            time.sleep(d)
        s = time.monotonic()
        fn()
        lat.append(time.monotonic() - s)
        i += 1
    return lat


def cpu_ticks(pid):
    with open(f"/proc/{pid}/stat") as f:
        parts = f.read().rsplit(")", 1)[1].split()
    return int(parts[11]) + int(parts[12])


def metric(aport, name):
    body = urllib.request.urlopen(f"http://127.0.0.1:{aport}/metrics").read().decode()
    for line in body.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return 0.0


def admin(aport, path, obj):
    r = urllib.request.Request(f"http://127.0.0.1:{aport}{path}", data=json.dumps(obj).encode(),
                               headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"})
    return urllib.request.urlopen(r).read()


async def fanout(kind, port, gport, aport, pid):
    got = [0]
    calls = []

    async def grpc_sub(ch):
        call = ch.unary_stream("/wsgate.v1.EdgeGateway/SubscribeEvents",
                               request_serializer=pb.SubscribeEventsRequest.SerializeToString,
                               response_deserializer=pb.Event.FromString)(
            pb.SubscribeEventsRequest(), metadata=[("authorization", "Bearer bench-bearer")])
        calls.append(call)
        async for _ in call:
            got[0] += 1

    async def ws_sub():
        async with websockets.connect(f"ws://127.0.0.1:{port}/ws/events", subprotocols=["bench-bearer"],
                                      ping_interval=None, max_queue=None) as ws:
            async for _ in ws:
                got[0] += 1

    # separate connections (no shared subchannel), 50 streams each (the gateway allows 100)
    chans = [grpc.aio.insecure_channel(f"127.0.0.1:{gport}", options=[("grpc.use_local_subchannel_pool", 1)])
             for _ in range(max(1, (N + 49) // 50))]
    tasks = [asyncio.ensure_future(grpc_sub(chans[i % len(chans)]) if kind == "grpc" else ws_sub())
             for i in range(N)]
    deadline = time.monotonic() + 30
    while got[0] < N and time.monotonic() < deadline:  # every bootstrap message arrived
        await asyncio.sleep(0.05)
    print(f"# {kind}: {got[0]} of {N} bootstraps", file=sys.stderr, flush=True)
    base = got[0]
    d0 = metric(aport, "wsgate_push_deliveries_total")
    c0 = cpu_ticks(pid)
    t0 = time.monotonic()
    i = 0
    loop = asyncio.get_running_loop()
    while time.monotonic() - t0 < SECONDS:
        at = t0 + i / EVENTS
        d = at - time.monotonic()
        if d > 0:
            await asyncio.sleep(d)
        await loop.run_in_executor(None, admin, aport, "/v1/events",
                                   {"user_id": "bench-user", "type": "tick", "payload": {"i": i}})
        i += 1
    print(f"# {kind}: published {i}, received {got[0] - base}", file=sys.stderr, flush=True)
    want = base + i * N
    deadline = time.monotonic() + 30
    while got[0] < want and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    print(f"# {kind}: received {got[0] - base} of {i * N}", file=sys.stderr, flush=True)
    c1 = cpu_ticks(pid)
    d1 = metric(aport, "wsgate_push_deliveries_total")
    if kind == "ws":  # the next run's deliveries are its own
        for t in tasks:
            t.cancel()
        await asyncio.wait(tasks, timeout=5)
        deadline = time.monotonic() + 10
        while metric(aport, "wsgate_push_subscribers") and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
    hz = os.sysconf("SC_CLK_TCK")
    deliveries = d1 - d0
    return {"kind": kind, "subscribers": N, "events": i, "deliveries": int(deliveries),
            "received": got[0] - base, "gateway_cpu_us_per_delivery":
            round((c1 - c0) / hz * 1e6 / deliveries, 2) if deliveries else None}


def main():
    ds = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
    ds.daemon_threads = True
    threading.Thread(target=ds.serve_forever, daemon=True).start()
    dport = ds.server_address[1]
    kd = tempfile.mkdtemp()
    subprocess.run([f"{ROOT}/build/wsgate", "keygen", "--out", f"{kd}/k"], check=True, capture_output=True)
    routes = f"{kd}/routes.json"
    with open(routes, "w") as f:
        json.dump({"routes": [{"path": "/commands/echo", "kind": "command",
                               "upstream": f"http://127.0.0.1:{dport}"}]}, f)
    port, gport, aport = free_port(), free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    env.update({"GATEWAY_PUBLIC_HTTP_ADDR": f"127.0.0.1:{port}", "GATEWAY_ADMIN_HTTP_ADDR": f"127.0.0.1:{aport}",
                "GATEWAY_AUTHENTICATED_GRPC_ADDR": f"127.0.0.1:{gport}", "GATEWAY_ADMIN_TOKEN": TOKEN,
                "GATEWAY_RESPONSE_SIGNER_PRIVATE_KEY_PEM_PATH": f"{kd}/k.key", "GATEWAY_ROUTES_FILE": routes,
                "GATEWAY_WORKERS": "1", "GATEWAY_LOG_LEVEL": "error", "GATEWAY_WS_PING_INTERVAL": "0",
                "GATEWAY_PUSH_QUEUE_LIMIT": "100000", "GATEWAY_SHUTDOWN_TIMEOUT": "2s",
                "GATEWAY_PUSH_MAX_STREAMS_PER_SESSION": "100000"})
    p = subprocess.Popen([f"{ROOT}/build/wsgate", "serve"], env=env, stderr=subprocess.DEVNULL)
    try:
        for _ in range(100):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz")
                break
            except OSError:
                time.sleep(0.05)
        admin(aport, "/v1/sessions", {"device_session_id": "bench", "user_id": "bench-user", "status": "active",
                                      "version": 1,
                                      "token_sha256": hashlib.sha256(b"bench-bearer").hexdigest()})
        time.sleep(0.2)
        payload = b"x" * 100

        def direct():
            c = http.client.HTTPConnection("127.0.0.1", dport)
            c.request("POST", "/commands/echo", body=payload, headers={"Connection": "close"})
            c.getresponse().read()
            c.close()

        ch = grpc.insecure_channel(f"127.0.0.1:{gport}")
        ex = ch.unary_unary("/wsgate.v1.EdgeGateway/ExecuteCommand",
                            request_serializer=pb.ExecuteCommandRequest.SerializeToString,
                            response_deserializer=pb.ExecuteCommandResponse.FromString)
        md = [("authorization", "Bearer bench-bearer")]
        req = pb.ExecuteCommandRequest(request_id="b", command="echo", payload=payload)
        for _ in range(50):  # warm both paths
            direct()
            ex(req, metadata=md, timeout=5)
        a = paced(direct)
        b = paced(lambda: ex(req, metadata=md, timeout=5))
        print(json.dumps({"bench": "execute_command", "rate": RATE, "seconds": SECONDS, "calls": len(b),
                          "direct_p50_ms": round(pct(a, .5), 3), "direct_p99_ms": round(pct(a, .99), 3),
                          "gateway_p50_ms": round(pct(b, .5), 3), "gateway_p99_ms": round(pct(b, .99), 3),
                          "added_p50_ms": round(pct(b, .5) - pct(a, .5), 3),
                          "added_p99_ms": round(pct(b, .99) - pct(a, .99), 3)}))
        ch.close()
        for kind in ("ws", "grpc"):
            # the subscribers' tasks stay open (not cancelled): each run has its own loop
            loop = asyncio.new_event_loop()
            print(json.dumps(loop.run_until_complete(fanout(kind, port, gport, aport, p.pid))), flush=True)
    finally:
        p.terminate()
        p.wait(timeout=10)
    # grpc.aio's streams are left open (closing 1000s of them cleanly can stall
    # the interpreter's shutdown); the gateway has ended, so leave now.
    os._exit(0)


if __name__ == "__main__":
    main()
