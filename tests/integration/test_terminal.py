"""Terminal gateway: one-time tokens, refusals, the PTY agent, relay, resize,
exit status, re-attach with scrollback, agent death, no zombies.

Real processes on free loopback ports: a gateway (gw.Gateway) and one or
more `wsgate agent` processes running /bin/sh on real PTYs.
"""

import json
import os
import re
import signal
import socket
import stat
import subprocess
import tempfile
import threading
import time

import pytest

import gw
import wsraw

SECRET = "agent-secret-for-tests-0123456789"
SUBPROTO = "wsgate.terminal.v1"
WEB_DIR = os.path.join(gw.ROOT, "web")


# ------------------------------------------------------------------ helpers

class Agent(gw.LoggedProcess):
    """A `wsgate agent` process on a free port (or a unix socket)."""

    def __init__(self, secret=SECRET, grace="60s", scrollback="64KiB", listen=None, cmd=("/bin/sh",),
                 extra_env=None, pass_fds=(), umask=-1):
        self.port = gw.free_port()
        self.listen = listen or f"127.0.0.1:{self.port}"
        env = gw.base_env()
        env.update({"GATEWAY_LOG_FORMAT": "json", "PS1": "$ ", "ENV": ""})
        if secret is not None:
            env["GATEWAY_AGENT_SECRET"] = secret
        env.update(extra_env or {})
        fd, self.stderr_path = tempfile.mkstemp(prefix="wsgate-agent-", suffix=".log")
        os.close(fd)
        self._err = open(self.stderr_path, "ab")
        self.proc = subprocess.Popen([gw.wsgate_bin(), "agent", "--listen", self.listen, "--grace", grace,
                                      "--scrollback", scrollback, "--"] + list(cmd),
                                     env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=self._err, pass_fds=pass_fds, umask=umask)
        self.pid = self.proc.pid
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"agent exited {self.proc.returncode}:\n{self.stderr()}")
            if "agent listening" in self.stderr():
                return
            time.sleep(0.05)
        raise RuntimeError("agent not listening:\n" + self.stderr())

    @property
    def url(self):
        if self.listen.startswith("unix:"):
            return self.listen
        return f"ws://127.0.0.1:{self.port}/"

    def stop(self):
        self.terminate()
        self._err.close()
        return self.proc.returncode

    def children(self):
        """(pid, state) of every process whose parent is the agent."""
        out = []
        for d in os.listdir("/proc"):
            if not d.isdigit():
                continue
            try:
                with open(f"/proc/{d}/stat") as f:
                    st = f.read()
            except OSError:
                continue
            rest = st[st.rindex(")") + 2:].split()
            if int(rest[1]) == self.pid:
                out.append((int(d), rest[0]))
        return out


@pytest.fixture
def agent():
    made = []

    def factory(**kw):
        a = Agent(**kw)
        made.append(a)
        return a

    yield factory
    for a in made:
        a.stop()
    problems = []
    for a in made:
        problems += a.check_exit("agent")
    assert not problems, "\n".join(problems)


@pytest.fixture(scope="module")
def tgw():
    g = gw.Gateway(env={"GATEWAY_AGENT_SECRET": SECRET, "GATEWAY_TERMINAL_WEB_DIR": WEB_DIR})
    yield g
    rc = g.stop()
    assert not g.sanitizer_errors(), g.stderr()[-6000:]
    assert rc == 0, g.stderr()[-3000:]


@pytest.fixture(scope="module", params=["embedded", "redis"])
def tokgw(request):
    """A terminal gateway on each backend: the token tests run on both (the
    behaviour is the same); "redis" uses the session's real redis-server."""
    env = {"GATEWAY_AGENT_SECRET": SECRET, "GATEWAY_TERMINAL_WEB_DIR": WEB_DIR}
    if request.param == "redis":
        env.update(request.getfixturevalue("redis_server").env(GATEWAY_REDIS_KEY_PREFIX="tokgw:"))
    g = gw.Gateway(env=env)
    assert json.loads(g.get("/health").body)["backend"]["kind"] == request.param
    yield g
    rc = g.stop()
    assert not g.sanitizer_errors(), g.stderr()[-6000:]
    assert rc == 0, g.stderr()[-3000:]


def mint(g, alloc, upstream, user="alice", raw=None, headers=None, **extra):
    body = raw if raw is not None else json.dumps(dict(allocation_id=alloc, upstream=upstream, user_id=user,
                                                       **extra)).encode()
    h = {"Content-Type": "application/json"}
    h.update(headers or {})
    return wsraw.http_request(g.admin_port, "POST", "/v1/terminal/tokens", headers=h, body=body)


def token_for(g, alloc, upstream, **kw):
    r = mint(g, alloc, upstream, **kw)
    assert r.status == 201, r
    return r.json()


def connect(g, alloc, token, v1=True, path=None, expect_101=False):
    protos = [SUBPROTO, token] if v1 else [token]
    return g.ws(path=path or f"/ws/terminal/{alloc}", protocols=protos if token else ([SUBPROTO] if v1 else None),
                expect_101=expect_101, headers={"X-Correlation-ID": "term-" + os.urandom(6).hex()})


def read_until(ws, pattern, timeout=5.0):
    """Reads binary messages until pattern (bytes regex) matches the
    accumulated output; returns the output."""
    buf = b""
    deadline = time.monotonic() + timeout
    rx = re.compile(pattern)
    while not rx.search(buf):
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"{pattern!r} not seen; got {buf[-800:]!r}")
        try:
            op, payload, _ = ws.recv_message(timeout=left)
        except wsraw.Timeout:
            continue
        if op == wsraw.OP_BINARY:
            buf += payload
    return buf


def events(g, outcome, reason):
    return g.metric("terminal_gateway_ws_events_total", outcome=outcome, reason=reason)


def corr_of(ws):
    return ws.response.header("X-Correlation-ID")


# ------------------------------------------------------------------ minting

def test_mint_answer_shape(tokgw):
    r = mint(tokgw, "alloc-1", "ws://127.0.0.1:1/", user="bob@example.com", region="uae-north", tenant_id="t1",
             project_id="p1", ttl_s=30)
    assert r.status == 201, r
    j = r.json()
    assert re.fullmatch(r"[A-Za-z0-9_-]{43}", j["token"])
    assert j["subprotocol"] == SUBPROTO
    assert j["url"] == "/ws/terminal/alloc-1"  # same origin without GATEWAY_PUBLIC_WS_BASE_URL
    assert j["ttl_s"] == 30
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", j["expires_at"])
    assert abs(j["expires_at_ms"] / 1000 - (time.time() + 30)) < 5
    assert re.fullmatch(r"[0-9a-f]{32}", j["session_id"])  # generated when absent
    assert j["allocation_id"] == "alloc-1"
    # The minted token is never logged.
    line = tokgw.wait_log(lambda l: l.get("msg") == "terminal token minted" and l.get("allocation_id") == "alloc-1")[0]
    assert line["resource_name"] == "core42:aicloud:uae-north:t1:p1:gpuaas/allocation:alloc-1"
    assert j["token"] not in tokgw.stderr()


@pytest.mark.parametrize("body,code", [
    (b"not json", "invalid_json"),
    (b"[1,2]", "invalid_json"),
    (json.dumps({"upstream": "ws://127.0.0.1:1/", "user_id": "u"}).encode(), "missing_field"),
    (json.dumps({"allocation_id": "a", "user_id": "u"}).encode(), "missing_field"),
    (json.dumps({"allocation_id": "a", "upstream": "ws://127.0.0.1:1/"}).encode(), "missing_field"),
    (json.dumps({"allocation_id": "a/b", "upstream": "ws://h:1/", "user_id": "u"}).encode(), "invalid_allocation_id"),
    (json.dumps({"allocation_id": "a", "upstream": "http://h:1/", "user_id": "u"}).encode(), "invalid_upstream"),
    (json.dumps({"allocation_id": "a", "upstream": "nonsense", "user_id": "u"}).encode(), "invalid_upstream"),
    (json.dumps({"allocation_id": "a", "upstream": "ws://h:1/", "user_id": "u\r\nX: y"}).encode(),
     "invalid_user_id"),
    (json.dumps({"allocation_id": "a", "upstream": "ws://h:1/", "user_id": "u", "session_id": "a b"}).encode(),
     "invalid_session_id"),
    (json.dumps({"allocation_id": "a", "upstream": "ws://h:1/", "user_id": "u", "ttl_s": 601}).encode(),
     "invalid_ttl"),
    (json.dumps({"allocation_id": "a", "upstream": "ws://h:1/", "user_id": "u", "ttl_s": 0}).encode(),
     "invalid_ttl"),
    (json.dumps({"allocation_id": "a", "upstream": "ws://h:1/", "user_id": "u", "ttl_s": "60"}).encode(),
     "invalid_ttl"),
])
def test_mint_bad_input(tokgw, body, code):
    r = mint(tokgw, None, None, raw=body)
    assert r.status == 400, r
    j = r.json()
    assert j["code"] == code, j
    assert j["correlation_id"] and j["details"]["trace_id"]


def test_mint_needs_admin_token(make_gateway):
    g = make_gateway(env={"GATEWAY_ADMIN_TOKEN": "adm1n"})
    r = mint(g, "a", "ws://127.0.0.1:1/")
    assert r.status == 401 and r.json()["code"] == "unauthorized"
    r = mint(g, "a", "ws://127.0.0.1:1/", headers={"Authorization": "Bearer wrong"})
    assert r.status == 401
    r = mint(g, "a", "ws://127.0.0.1:1/", headers={"Authorization": "Bearer adm1n"})
    assert r.status == 201
    # Not on the public listener at all.
    r = wsraw.http_request(g.port, "POST", "/v1/terminal/tokens", body=b"{}",
                           headers={"Authorization": "Bearer adm1n"})
    assert r.status == 404


def test_token_cli(make_gateway, agent):
    a = agent()
    g = make_gateway(env={"GATEWAY_AGENT_SECRET": SECRET, "GATEWAY_ADMIN_TOKEN": "adm1n"})
    env = {"GATEWAY_ADMIN_HTTP_ADDR": f"127.0.0.1:{g.admin_port}", "GATEWAY_ADMIN_TOKEN": "adm1n"}
    r = gw.run_cli(["token", "--allocation", "cli-1", "--upstream", a.url, "--user", "carol", "--session",
                    "cli-sess", "--ttl", "120"], env=env)
    assert r.returncode == 0, r.stderr
    j = json.loads(r.stdout)
    assert j["session_id"] == "cli-sess" and j["ttl_s"] == 120 and j["subprotocol"] == SUBPROTO
    ws = connect(g, "cli-1", j["token"])
    assert ws.response.status == 101, ws.response
    ws.send_binary(b"echo cli-$((40+2))\n")
    read_until(ws, rb"cli-42")
    ws.close()
    # Refusals exit 1 with the envelope on stderr; usage errors exit 2.
    r = gw.run_cli(["token", "--allocation", "x/y", "--upstream", a.url, "--user", "c"], env=env)
    assert r.returncode == 1 and b"invalid_allocation_id" in r.stderr
    r = gw.run_cli(["token", "--allocation", "x", "--upstream", a.url, "--user", "c"],
                   env={"GATEWAY_ADMIN_HTTP_ADDR": f"127.0.0.1:{g.admin_port}"})
    assert r.returncode == 1 and b"401" in r.stderr
    r = gw.run_cli(["token", "--allocation", "x"], env=env)
    assert r.returncode == 2


# ------------------------------------------------------------------ refusals

def refused(g, ws, status, code):
    r = ws.response
    assert r.status == status, r
    j = json.loads(r.body)
    assert j["code"] == code, j
    assert j["correlation_id"] == r.header("X-Correlation-ID")
    assert j["details"]["trace_id"] == r.header("X-Trace-ID")


def test_refusal_missing_token(tokgw):
    before = events(tokgw, "rejected", "missing_token")
    ws = connect(tokgw, "a1", None)
    refused(tokgw, ws, 401, "missing_token")
    ws = connect(tokgw, "a1", None, v1=False)  # no Sec-WebSocket-Protocol at all
    refused(tokgw, ws, 401, "missing_token")
    assert events(tokgw, "rejected", "missing_token") == before + 2


def test_refusal_unknown_token(tokgw):
    before = events(tokgw, "rejected", "unknown_token")
    ws = connect(tokgw, "a1", "A" * 43)
    refused(tokgw, ws, 401, "unknown_token")
    ws = connect(tokgw, "a1", "not-a-token")
    refused(tokgw, ws, 401, "unknown_token")
    assert events(tokgw, "rejected", "unknown_token") == before + 2


def test_refusal_expired_token(tokgw, agent):
    a = agent()
    tok = token_for(tokgw, "exp-1", a.url, ttl_s=1)["token"]
    time.sleep(1.3)
    before = events(tokgw, "rejected", "expired_token")
    ws = connect(tokgw, "exp-1", tok)
    refused(tokgw, ws, 401, "expired_token")
    assert events(tokgw, "rejected", "expired_token") == before + 1
    assert not [l for l in a.logs() if l.get("msg") == "agent session started"], "agent was dialled"


def test_refusal_replayed_token(tokgw, agent):
    a = agent()
    tok = token_for(tokgw, "rep-1", a.url)["token"]
    ws = connect(tokgw, "rep-1", tok)
    assert ws.response.status == 101
    before = events(tokgw, "rejected", "token_replayed")
    before_replay = tokgw.metric("terminal_token_replay_rejected_total")
    ws2 = connect(tokgw, "rep-1", tok)
    refused(tokgw, ws2, 403, "token_replayed")
    assert events(tokgw, "rejected", "token_replayed") == before + 1
    assert tokgw.metric("terminal_token_replay_rejected_total") == before_replay + 1
    ws.close()


def test_refusal_token_in_query(tokgw, agent):
    a = agent()
    tok = token_for(tokgw, "q-1", a.url)["token"]
    before = events(tokgw, "rejected", "token_in_query")
    for q in (f"?token={tok}", f"?access_token={tok}", f"?x=1&Token={tok}"):
        ws = connect(tokgw, "q-1", tok, path=f"/ws/terminal/q-1{q}")
        refused(tokgw, ws, 400, "token_in_query")
    assert events(tokgw, "rejected", "token_in_query") == before + 3
    # Refused, never used: the token is still good, and never logged.
    assert tok not in tokgw.stderr()
    ws = connect(tokgw, "q-1", tok)
    assert ws.response.status == 101
    ws.close()


def test_refusal_allocation_mismatch(tokgw, agent):
    a = agent()
    tok = token_for(tokgw, "alloc-A", a.url)["token"]
    before = events(tokgw, "rejected", "allocation_mismatch")
    ws = connect(tokgw, "alloc-B", tok)
    refused(tokgw, ws, 403, "allocation_mismatch")
    assert events(tokgw, "rejected", "allocation_mismatch") == before + 1
    # The token was burned by the mismatched use.
    ws = connect(tokgw, "alloc-A", tok)
    refused(tokgw, ws, 403, "token_replayed")
    line = tokgw.wait_log(lambda l: l.get("msg") == "terminal refused" and l.get("reason") == "allocation_mismatch")[-1]
    assert line["resource_name"].endswith("gpuaas/allocation:alloc-A")


def test_refusal_bad_path(tgw):
    ws = connect(tgw, "x", "A" * 43, path="/ws/terminal/")
    refused(tgw, ws, 400, "invalid_allocation_id")
    ws = connect(tgw, "x", "A" * 43, path="/ws/terminal/a/b")
    refused(tgw, ws, 400, "invalid_allocation_id")


def test_tokens_not_in_logs_or_metrics(tokgw, agent):
    a = agent()
    toks = [token_for(tokgw, "nolog", a.url)["token"] for _ in range(3)]
    ws = connect(tokgw, "nolog", toks[0])
    assert ws.response.status == 101
    assert ws.subprotocol == SUBPROTO
    ws.close()
    r1 = connect(tokgw, "nolog", toks[0])  # replay
    refused(tokgw, r1, 403, "token_replayed")
    r2 = connect(tokgw, "other", toks[1])  # mismatch
    refused(tokgw, r2, 403, "allocation_mismatch")
    r3 = connect(tokgw, "nolog", toks[2], path=f"/ws/terminal/nolog?token={toks[2]}")
    refused(tokgw, r3, 400, "token_in_query")
    # Every refusal has been logged before the logs are searched for tokens.
    want = {corr_of(r) for r in (r1, r2, r3)}
    gw.wait_until(lambda: want <= {l.get("correlation_id") for l in tokgw.logs() if l.get("msg") == "terminal refused"},
                  what="the three refusal lines")
    text = tokgw.stderr() + tokgw.admin_get("/metrics").body.decode()
    for t in toks:
        assert t not in text
    # Nor does the agent ever see it.
    for t in toks:
        assert t not in a.stderr()


# ------------------------------------------------------------------ agent auth

def test_agent_refuses_without_or_with_wrong_secret(agent):
    a = agent()
    ws = wsraw.WS(a.port, path="/", expect_101=False)
    assert ws.response.status == 401
    assert json.loads(ws.response.body)["code"] == "missing_agent_secret"
    ws = wsraw.WS(a.port, path="/", expect_101=False, headers={"Authorization": "Bearer nope"})
    assert ws.response.status == 403
    assert json.loads(ws.response.body)["code"] == "invalid_agent_secret"
    ws = wsraw.WS(a.port, path="/", expect_101=False, headers={"Authorization": f"Bearer {SECRET}x"})
    assert ws.response.status == 403
    ws = wsraw.WS(a.port, path="/", expect_101=False, headers={"Authorization": f"Bearer {SECRET}"})
    assert ws.response.status == 101
    # The agent serves connections in order: once the accepted one's session
    # has started, any session a refused one started would be there too.
    started = lambda: [l for l in a.logs() if l.get("msg") == "agent session started"]
    gw.wait_until(started, what="the accepted connection's session")
    ws.close()
    assert len(started()) == 1, started()
    assert len(a.children()) <= 1, a.children()  # (the one shell, or none once it ended)


def test_gateway_passes_agent_refusal(make_gateway, agent):
    a = agent()
    g = make_gateway(env={"GATEWAY_AGENT_SECRET": "wrong-secret"})
    tok = token_for(g, "wrong", a.url)["token"]
    ws = connect(g, "wrong", tok)
    assert ws.response.status == 403, ws.response
    assert json.loads(ws.response.body)["code"] == "invalid_agent_secret"
    g2 = make_gateway()  # no secret at all
    tok = token_for(g2, "none", a.url)["token"]
    ws = connect(g2, "none", tok)
    assert ws.response.status == 401, ws.response


def test_agent_tcp_needs_secret(tmp_path):
    """Issue 8 item 3: any web page can open ws://127.0.0.1:PORT, so without
    a secret the agent refuses TCP altogether, loopback included: one line,
    exit 2."""
    for addr in ("127.0.0.1:0", "[::1]:0", "localhost:0", "0.0.0.0:0", ":0", "[::]:0"):
        r = gw.run_cli(["agent", "--listen", addr])  # (base_env: no GATEWAY_AGENT_SECRET)
        assert r.returncode == 2, (addr, r)
        lines = r.stderr.decode().strip().splitlines()
        assert len(lines) == 1 and "GATEWAY_AGENT_SECRET is required" in lines[0], (addr, r.stderr)
    # The default --listen is TCP too.
    r = gw.run_cli(["agent"])
    assert r.returncode == 2 and b"GATEWAY_AGENT_SECRET is required" in r.stderr, r


def test_agent_without_secret_unix_0600(make_gateway, tmp_path):
    """Without a secret: a unix socket only this user can open (0600 even
    under a permissive umask), and it serves the gateway."""
    sock = f"{tmp_path}/agent.sock"
    a = Agent(secret=None, listen=f"unix:{sock}", umask=0)
    try:
        assert stat.S_IMODE(os.stat(sock).st_mode) == 0o600, oct(os.stat(sock).st_mode)
        assert [l for l in a.logs() if l.get("msg") == "agent listening"][0]["secret"] is False
        g = make_gateway()  # no GATEWAY_AGENT_SECRET either
        ws = connect(g, "ux0", token_for(g, "ux0", a.url)["token"])
        assert ws.response.status == 101, ws.response
        ws.send_binary(b"echo nosecret-$((6+6))\n")
        read_until(ws, rb"nosecret-12")
        ws.close()
    finally:
        assert a.stop() == 0


def recv_head(sock):
    """Reads from sock until the end of an HTTP head; returns (head, rest)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(4096)
        if not chunk:
            break
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    return head, rest


def raw_upgrade(sock, extra_headers):
    """Sends a WebSocket upgrade over a connected socket; returns (status,
    body) of the answer."""
    head = ("GET / HTTP/1.1\r\nHost: agent\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {wsraw.new_key()}\r\nSec-WebSocket-Version: 13\r\n")
    for k, v in extra_headers:
        head += f"{k}: {v}\r\n"
    sock.sendall((head + "\r\n").encode())
    sock.settimeout(5)
    hd, body = recv_head(sock)
    n = int(re.search(rb"Content-Length: (\d+)", hd).group(1)) if b"Content-Length" in hd else 0
    while len(body) < n:
        chunk = sock.recv(4096)
        if not chunk:
            break
        body += chunk
    return int(hd.split()[1]), body


def test_agent_refuses_origin(agent, tmp_path):
    """A request with an Origin header is a web page: 403, in every mode,
    even with the right secret, and no shell is started."""
    a = agent()
    for origin in ("https://evil.example", "null", "http://127.0.0.1:8080"):
        ws = wsraw.WS(a.port, path="/", expect_101=False,
                      headers={"Authorization": f"Bearer {SECRET}", "Origin": origin})
        assert ws.response.status == 403, ws.response
        assert json.loads(ws.response.body)["code"] == "origin_refused"
    sock = f"{tmp_path}/o.sock"
    u = agent(secret=None, listen=f"unix:{sock}")
    s = socket.socket(socket.AF_UNIX)
    s.connect(sock)
    st, body = raw_upgrade(s, [("Origin", "https://evil.example")])
    s.close()
    assert st == 403 and json.loads(body)["code"] == "origin_refused", (st, body)
    s = socket.socket(socket.AF_UNIX)
    s.connect(sock)
    st, body = raw_upgrade(s, [])
    s.close()
    assert st == 101, (st, body)
    for x in (a, u):
        assert [l for l in x.logs() if l.get("msg") == "agent refused" and l.get("reason") == "origin_refused"]
    assert not [l for l in a.logs() if l.get("msg") == "agent session started"]


@pytest.mark.parametrize("headers", [
    [("Authorization", "Bearer ")],
    [("Authorization", "Bearer")],
    [("Authorization", f"Bearer {SECRET[:-1]}")],
    [("Authorization", f"Bearer {SECRET[:1]}")],
    [("Authorization", f"Bearer {SECRET.upper()}")],
    [("Authorization", f"Bearer  {SECRET}")],
    [("Authorization", f"Basic {SECRET}")],
    [("Authorization", SECRET)],
    [("Authorization", f"Bearer {SECRET}"), ("Authorization", "Bearer wrong")],
    [("Authorization", "Bearer wrong"), ("Authorization", f"Bearer {SECRET}")],
    [("Authorization", f"Bearer {SECRET}"), ("Authorization", f"Bearer {SECRET}")],
], ids=["empty", "scheme-only", "prefix", "one-char", "upper-case", "two-spaces", "basic", "no-scheme",
        "two-right-first", "two-right-second", "two-both-right"])
def test_agent_secret_edge_cases(agent, headers):
    a = agent()
    ws = wsraw.WS(a.port, path="/", expect_101=False, headers=headers)
    assert ws.response.status == 403, ws.response
    assert json.loads(ws.response.body)["code"] == "invalid_agent_secret"
    assert not [l for l in a.logs() if l.get("msg") == "agent session started"]


def test_agent_scheme_case_insensitive(agent):
    a = agent()
    ws = wsraw.WS(a.port, path="/", expect_101=False, headers={"Authorization": f"bearer {SECRET}"})
    assert ws.response.status == 101, ws.response
    ws.close()


def test_shell_has_no_inherited_fds(tgw, tmp_path):
    """Issue 8 item 17: a descriptor the agent's launcher left open (no
    close-on-exec) never reaches a shell."""
    leak = os.open(os.devnull, os.O_RDONLY)
    os.dup2(leak, 77, inheritable=True)
    os.close(leak)
    try:
        a = Agent(pass_fds=(77,))
    finally:
        os.close(77)
    try:
        assert "77" in os.listdir(f"/proc/{a.pid}/fd"), "the agent itself did inherit fd 77"
        ws = connect(tgw, "fds", token_for(tgw, "fds", a.url)["token"])
        assert ws.response.status == 101, ws.response
        ws.send_binary(b"echo FDS $(ls /proc/$$/fd | tr '\\n' ' ')END\n")
        out = read_until(ws, rb"FDS [0-9 ]*END")
        fds = re.search(rb"FDS ([0-9 ]*)END", out).group(1).split()
        assert b"77" not in fds, fds
        shell = a.children()[0][0]
        assert "77" not in os.listdir(f"/proc/{shell}/fd")
        ws.close()
    finally:
        a.stop()
    assert not a.check_exit("agent"), a.check_exit("agent")


# ------------------------------------------------------------------ sessions

def test_relay_bytes_and_headers(tokgw, agent):
    a = agent()
    j = token_for(tokgw, "relay-1", a.url, user="dave", session_id="sess-relay", region="r1", tenant_id="t",
                  project_id="p")
    ws = connect(tokgw, "relay-1", j["token"])
    assert ws.response.status == 101, ws.response
    assert ws.subprotocol == SUBPROTO
    ws.send_binary(b"echo hello-$((6*7)) $WSGATE_SESSION_ID $WSGATE_USER_ID ${GATEWAY_AGENT_SECRET:-nosecret}\n")
    out = read_until(ws, rb"hello-42 \S+ \S+ \S+")
    assert b"hello-42 sess-relay dave nosecret" in out
    line = a.logs()
    started = [l for l in line if l.get("msg") == "agent session started"][-1]
    assert started["session_id"] == "sess-relay" and started["user"] == "dave"
    assert started["allocation_id"] == "relay-1"
    assert [l for l in a.logs() if l.get("msg") == "agent session attached"][-1]["correlation_id"] == corr_of(ws)
    ws.send_close(1000)
    ws.expect_close()
    close = tokgw.ws_close_log(corr_of(ws))
    assert close["resource_name"] == "core42:aicloud:r1:t:p:gpuaas/allocation:relay-1"
    assert close["session_id"] == "sess-relay"
    opened = tokgw.wait_log(lambda l: l.get("msg") == "ws open" and l.get("correlation_id") == corr_of(ws))[0]
    assert opened["resource_name"] == close["resource_name"] and opened["session_id"] == "sess-relay"
    assert events(tokgw, "accepted", "ok") >= 1


def test_big_client_header_keeps_agent_secret(tgw, agent):
    """Issue 8 item 7: with an 8,200-byte client header the agent got no
    `Authorization` (the upstream headers were built in 8 KiB and dropped
    whole): 401 and a burned token. The agent now gets the secret, the
    session opens."""
    a = agent()
    tok = token_for(tgw, "bighdr", a.url)["token"]
    ws = tgw.ws(path="/ws/terminal/bighdr", protocols=[SUBPROTO, tok],
                headers={"X-Correlation-ID": "term-" + os.urandom(6).hex(), "X-Big": "b" * 8200})
    assert ws.response.status == 101, ws.response
    ws.send_binary(b"echo big-$((40+2))\n")
    read_until(ws, rb"big-42")
    ws.close()


def test_token_alone_selects_token(tokgw, agent):
    a = agent()
    tok = token_for(tokgw, "alone", a.url)["token"]
    ws = connect(tokgw, "alone", tok, v1=False)
    assert ws.response.status == 101
    assert ws.subprotocol == tok  # so browsers accept the 101
    ws.send_binary(b"echo alone-$((1+1))\n")
    read_until(ws, rb"alone-2")
    ws.close()


def test_resize(tgw, agent):
    a = agent()
    ws = connect(tgw, "rs", token_for(tgw, "rs", a.url)["token"])
    ws.send_text(json.dumps({"type": "resize", "cols": 123, "rows": 45}))
    ws.send_binary(b"stty size\n")
    read_until(ws, rb"45 123")
    ws.send_text(json.dumps({"type": "resize", "cols": 80, "rows": 20}))
    ws.send_text("garbage that is not json")  # ignored
    ws.send_text(json.dumps({"type": "unknown"}))  # ignored
    ws.send_binary(b"stty size\n")
    read_until(ws, rb"20 80")
    ws.close()


def test_exit_status(tgw, agent):
    a = agent()
    ws = connect(tgw, "ex", token_for(tgw, "ex", a.url)["token"])
    ws.send_binary(b"echo bye; exit 3\n")
    f = ws.expect_close()
    assert f.close_code == 1000 and f.close_reason == "exit 3", f
    ws.send_close(1000)
    close = tgw.ws_close_log(corr_of(ws))
    assert close["cause"] in ("graceful", "upstream_closed")
    gw.wait_until(lambda: [l for l in a.logs() if l.get("msg") == "agent session ended"
                           and l.get("status") == "exit 3"], what="agent logs the exit")


def test_reattach_with_scrollback(tgw, agent):
    a = agent(grace="30s")
    sid = "reattach-" + os.urandom(4).hex()
    ws = connect(tgw, "ra", token_for(tgw, "ra", a.url, session_id=sid)["token"])
    ws.send_binary(b"MYVAR=kept-$((7*6)); echo marker-$((100+23))\n")
    read_until(ws, rb"marker-123")
    shell = [p for p, _ in a.children()]
    assert len(shell) == 1
    ws.reset()  # the browser side drops without a close
    time.sleep(0.3)
    gw.wait_until(lambda: [l for l in a.logs() if l.get("msg") == "agent session detached"], what="detach")
    # A new token, same session: the same shell, its recent output first.
    ws2 = connect(tgw, "ra", token_for(tgw, "ra", a.url, session_id=sid)["token"])
    assert ws2.response.status == 101
    replay = read_until(ws2, rb"marker-123")
    assert b"MYVAR=kept" in replay  # the echoed command line is in the scrollback too
    ws2.send_binary(b"echo got=$MYVAR\n")
    read_until(ws2, rb"got=kept-42")
    assert [p for p, _ in a.children()] == shell
    assert [l for l in a.logs() if l.get("msg") == "agent session re-attached" and l.get("session_id") == sid]
    ws2.close()


def test_grace_expiry_kills_and_reaps(tgw, agent):
    a = agent(grace="1s")
    sid = "grace-" + os.urandom(4).hex()
    ws = connect(tgw, "gr", token_for(tgw, "gr", a.url, session_id=sid)["token"])
    ws.send_binary(b"GVAR=old; echo ready-$((2*2))\n")
    read_until(ws, rb"ready-4")
    pid = a.children()[0][0]
    ws.reset()
    gw.wait_until(lambda: not os.path.exists(f"/proc/{pid}"), timeout=8, what="shell killed and reaped")
    assert [l for l in a.logs() if l.get("msg") == "agent session grace expired"]
    assert a.children() == []
    # The same session id now starts a fresh shell.
    ws2 = connect(tgw, "gr", token_for(tgw, "gr", a.url, session_id=sid)["token"])
    ws2.send_binary(b"echo gvar=${GVAR:-unset}\n")
    read_until(ws2, rb"gvar=unset")
    ws2.close()


def test_agent_killed(tgw, agent):
    a = agent()
    ws = connect(tgw, "kill", token_for(tgw, "kill", a.url)["token"])
    ws.send_binary(b"echo up-$((3*3))\n")
    read_until(ws, rb"up-9")
    shell = a.children()[0][0]
    a.expect_exit = -signal.SIGKILL
    os.kill(a.pid, signal.SIGKILL)
    assert a.proc.wait(5) == -signal.SIGKILL
    f = ws.expect_close(timeout=10)
    assert f.close_code == 1014, f
    close = tgw.ws_close_log(corr_of(ws), timeout=10)
    assert close["cause"] == "upstream_closed"
    assert close["session_id"] and close["resource_name"].endswith("allocation:kill")
    # The orphaned shell gets SIGHUP from the PTY hang-up; do not leave it.
    try:
        os.kill(shell, signal.SIGKILL)
    except ProcessLookupError:
        pass


def test_agent_unreachable(tgw):
    port = gw.free_port()
    ws = connect(tgw, "down", token_for(tgw, "down", f"ws://127.0.0.1:{port}/")["token"])
    assert ws.response.status == 502, ws.response
    assert json.loads(ws.response.body)["code"] == "upstream_unavailable"


def test_no_zombies(tgw, agent):
    a = agent(grace="1s")
    socks = []
    for i in range(4):
        ws = connect(tgw, "z", token_for(tgw, "z", a.url, session_id=f"z{i}")["token"])
        ws.send_binary(b"sleep 30 & echo started-$((1+1))\n")
        read_until(ws, rb"started-2")
        socks.append(ws)
    socks[0].send_binary(b"exit 0\n")
    assert socks[0].expect_close().close_reason == "exit 0"
    socks[1].send_binary(b"kill -9 $$\n")
    assert socks[1].expect_close().close_reason == "signal 9"
    socks[2].reset()  # grace expiry
    socks[3].send_close(1000)  # clean close, then grace expiry
    socks[3].expect_close()

    def settled():
        kids = a.children()
        return all(st != "Z" for _, st in kids) and not [p for p, st in kids if st != "Z" and
                                                         open(f"/proc/{p}/cmdline").read().startswith("/bin/sh")]
    gw.wait_until(settled, timeout=10, what="no shells and no zombies under the agent")
    time.sleep(0.5)
    assert [st for _, st in a.children() if st == "Z"] == []
    # No leaked PTY master: the agent holds no /dev/ptmx descriptor now.
    fds = [os.readlink(f"/proc/{a.pid}/fd/{fd}") for fd in os.listdir(f"/proc/{a.pid}/fd")]
    assert not [f for f in fds if "ptmx" in f], fds


def test_flow_control_bounded_memory(agent):
    a = agent()

    def rss():
        with open(f"/proc/{a.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    ws = wsraw.WS(a.port, path="/", headers={"Authorization": f"Bearer {SECRET}"})
    ws.send_binary(b"echo go-$((5*5))\n")
    read_until(ws, rb"go-25")
    base = rss()
    ws.send_binary(b"yes flood-flood-flood-flood-flood-flood\n")
    shell = [p for p, _ in a.children()][0]
    kids = gw.wait_until(lambda: open(f"/proc/{shell}/task/{shell}/children").read().split(), what="yes running")

    def blocked():
        # The client reads nothing, so the agent must stop reading the PTY:
        # `yes` then sleeps (state S) with its written-bytes count frozen.
        # (An agent that kept reading lets it write at full speed forever.)
        def wchar():
            with open(f"/proc/{kids[0]}/io") as f:
                return int([l for l in f if l.startswith("wchar:")][0].split()[1])
        w0 = wchar()
        time.sleep(0.2)
        with open(f"/proc/{kids[0]}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
        return state == "S" and wchar() == w0
    gw.wait_until(blocked, timeout=20, interval=0.05, what="yes blocked on the PTY")
    grown = rss() - base
    # The bound: what the socket buffers and the agent's own queue may hold
    # is a few MiB; an agent reading `yes` unbounded passes 40 MiB in well
    # under a second.
    assert grown < 40 * 1024, f"agent RSS grew {grown} KiB while the client did not read"
    ws.reset()


def test_unix_socket_agent(tgw, agent, tmp_path):
    a = agent(listen=f"unix:{tmp_path}/a.sock")
    ws = connect(tgw, "ux", token_for(tgw, "ux", a.url)["token"])
    assert ws.response.status == 101, ws.response
    ws.send_binary(b"echo unix-$((4*4))\n")
    read_until(ws, rb"unix-16")
    ws.close()


# ------------------------------------------------------------------ issue 8: mint allowlist, credentials, binding

class HeadRecorder:
    """A fake agent on 127.0.0.1: records each request head it gets and
    refuses it (403), so a test sees exactly what the gateway sent."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.port = self.sock.getsockname()[1]
        self.heads = []
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        self.sock.settimeout(0.2)
        while not self.done.is_set():
            try:
                c, _ = self.sock.accept()
            except OSError:
                continue
            with c:
                c.settimeout(5)
                self.heads.append(recv_head(c)[0].decode())
                c.sendall(b"HTTP/1.1 403 Forbidden\r\nContent-Type: application/json\r\nContent-Length: 16\r\n"
                          b"Connection: close\r\n\r\n{\"code\":\"fake\"}")

    def headers(self, i, name):
        return [l.split(":", 1)[1].strip() for l in self.heads[i].split("\r\n")[1:]
                if l.split(":", 1)[0].strip().lower() == name.lower()]

    def close(self):
        self.done.set()
        self.thread.join(5)
        self.sock.close()


@pytest.fixture
def recorder():
    r = HeadRecorder()
    yield r
    r.close()


@pytest.mark.parametrize("upstream", [
    "ws://attacker.example/", "wss://attacker.example:8443/x", "ws://10.0.0.1:7681/", "ws://0.0.0.0:7681/",
    "ws://[::]:7681/", "ws://169.254.169.254:80/", "ws://127.0.0.1.attacker.example:7681/", "ws://localhost.:1/",
    "ws://[::ffff:10.0.0.1]:7681/",
])
def test_mint_upstream_not_allowed(tgw, upstream):
    """Issue 8 item 4: without agent_upstreams, tokens may name loopback
    agents and unix sockets only; the rest is refused at mint time."""
    r = mint(tgw, "ssrf", upstream)
    assert r.status == 400, r
    j = r.json()
    assert j["code"] == "upstream_not_allowed" and j["correlation_id"] == r.header("X-Correlation-ID"), j
    line = tgw.wait_log(lambda l: l.get("msg") == "terminal token refused" and l.get("upstream") == upstream)[-1]
    assert line["reason"] == "upstream_not_allowed" and line["correlation_id"] == j["correlation_id"]


def test_agent_upstreams_field_and_reload(make_gateway, recorder, tmp_path):
    """A terminal route's agent_upstreams replaces the default; a token
    minted under an older table is checked again when used, and never
    dialled when the route no longer allows its agent."""
    routes = str(tmp_path / "routes.json")
    gw.write_routes(routes, [{"path": "/ws/terminal/", "kind": "terminal",
                              "agent_upstreams": [f"127.0.0.1:{recorder.port}", f"unix:{tmp_path}/ag-*.sock"]}])
    g = make_gateway(env={"GATEWAY_AGENT_SECRET": SECRET, "GATEWAY_ROUTES_FILE": routes})
    other = gw.free_port()
    r = mint(g, "al", f"ws://127.0.0.1:{other}/")
    assert r.status == 400 and r.json()["code"] == "upstream_not_allowed", r
    assert mint(g, "al", f"unix:{tmp_path}/ag-1.sock").status == 201
    assert mint(g, "al", f"unix:{tmp_path}/other.sock").status == 400
    tok = token_for(g, "al", f"ws://127.0.0.1:{recorder.port}/")["token"]
    tok2 = token_for(g, "al", f"ws://127.0.0.1:{recorder.port}/")["token"]
    # Allowed: dialled (the recorder refuses it, which the client sees).
    ws = connect(g, "al", tok)
    assert ws.response.status == 403 and json.loads(ws.response.body)["code"] == "fake", ws.response
    assert len(recorder.heads) == 1
    # The route now allows unix sockets only: the second token is refused
    # at connect time, and the recorder gets nothing.
    gw.write_routes(routes, [{"path": "/ws/terminal/", "kind": "terminal",
                              "agent_upstreams": [f"unix:{tmp_path}/ag-*.sock"]}])
    g.signal(signal.SIGHUP)
    g.wait_log(lambda l: l.get("msg") == "routes reloaded", what="routes reloaded")
    before = events(g, "rejected", "upstream_not_allowed")
    ws = connect(g, "al", tok2)
    refused(g, ws, 403, "upstream_not_allowed")
    assert events(g, "rejected", "upstream_not_allowed") == before + 1
    time.sleep(0.3)
    assert len(recorder.heads) == 1, recorder.heads
    line = g.wait_log(lambda l: l.get("msg") == "terminal refused" and l.get("reason") == "upstream_not_allowed")[-1]
    assert line["resource_name"].endswith("gpuaas/allocation:al")


def test_agent_upstreams_unix_glob_stays_in_its_directory(make_gateway, tmp_path):
    """Review of issue 8, finding 1: `unix:DIR/agents/*` allowed
    `unix:DIR/agents/../evil/x.sock` (201, then dialled with the agent
    secret). A unix socket path with ".", ".." or empty segments is refused
    at mint (400 invalid_upstream), and a glob's `*` never crosses a '/'."""
    (tmp_path / "agents" / "sub").mkdir(parents=True)
    (tmp_path / "evil").mkdir()
    listeners = []
    for p in ("evil/x.sock", "agents/sub/x.sock"):
        s = socket.socket(socket.AF_UNIX)
        s.bind(str(tmp_path / p))
        s.listen(4)
        s.setblocking(False)
        listeners.append(s)
    routes = str(tmp_path / "routes.json")
    gw.write_routes(routes, [{"path": "/ws/terminal/", "kind": "terminal",
                              "agent_upstreams": [f"unix:{tmp_path}/agents/*"]}])
    g = make_gateway(env={"GATEWAY_AGENT_SECRET": SECRET, "GATEWAY_ROUTES_FILE": routes})
    try:
        for up in (f"unix:{tmp_path}/agents/../evil/x.sock", f"unix:{tmp_path}/agents/./../evil/x.sock",
                   f"unix:{tmp_path}/agents//../evil/x.sock", f"unix:{tmp_path}/agents/..",
                   f"unix:{tmp_path}/agents/../evil/x.sock:/ws/terminal/t1"):
            r = mint(g, "t1", up)
            assert r.status == 400, (up, r)
            j = r.json()
            assert j["code"] == "invalid_upstream" and "absolute path without" in j["message"], (up, j)
        up = f"unix:{tmp_path}/agents/sub/x.sock"
        r = mint(g, "t1", up)
        assert r.status == 400 and r.json()["code"] == "upstream_not_allowed", r
        g.wait_log(lambda l: l.get("msg") == "terminal token refused" and l.get("upstream") == up)
        assert mint(g, "t1", f"unix:{tmp_path}/agents/a1.sock").status == 201
        time.sleep(0.2)
        for s in listeners:
            with pytest.raises(BlockingIOError):
                s.accept()  # never dialled
    finally:
        for s in listeners:
            s.close()


@pytest.mark.parametrize("addr", ["0.0.0.0:{}", ":{}", "[::]:{}", "10.255.255.1:{}"])
def test_admin_listener_needs_token_unless_loopback(addr):
    port = gw.free_port()
    env = {"GATEWAY_PUBLIC_HTTP_ADDR": f"127.0.0.1:{gw.free_port()}", "GATEWAY_AUTHENTICATED_GRPC_ADDR": "",
           "GATEWAY_ADMIN_HTTP_ADDR": addr.format(port)}
    r = gw.run_cli(["serve"], env=env)
    assert r.returncode == 2, r
    lines = r.stderr.decode().strip().splitlines()
    assert len(lines) == 1, lines
    assert json.loads(lines[0])["error"] == (
        "GATEWAY_ADMIN_TOKEN: required when GATEWAY_ADMIN_HTTP_ADDR (\"" + addr.format(port) +
        "\") is not a loopback address or a unix socket"), lines


def test_admin_unix_socket_without_token(make_gateway, tmp_path):
    """A unix-socket admin listener may go without a token: the mint works
    over it."""
    sock = str(tmp_path / "admin.sock")
    g = make_gateway(env={"GATEWAY_ADMIN_HTTP_ADDR": f"unix:{sock}"})
    s = socket.socket(socket.AF_UNIX)
    s.connect(sock)
    body = json.dumps({"allocation_id": "a", "upstream": "ws://127.0.0.1:1/", "user_id": "u"}).encode()
    s.sendall(b"POST /v1/terminal/tokens HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
              b"Connection: close\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
    s.settimeout(5)
    data = b""
    while True:
        chunk = s.recv(4096)
        if not chunk:
            break
        data += chunk
    s.close()
    assert data.startswith(b"HTTP/1.1 201 "), data


def _start_failure(r, what):
    """A start that failed with exactly one log line; returns its error."""
    assert r.returncode == 1, r
    lines = [json.loads(l) for l in r.stderr.decode().strip().splitlines()]
    lines = [l for l in lines if l["level"] == "error"]
    assert len(lines) == 1, lines
    j = lines[0]
    assert j["msg"] == "startup failed" and what in j["error"], j
    return j["error"]


def test_admin_unix_socket_mode_and_what_it_replaces(make_gateway, tmp_path):
    """Review of issue 8, finding 3: the admin unix socket (the mint's only
    gate without GATEWAY_ADMIN_TOKEN) is 0600 whatever the umask; at start a
    stale socket is replaced, but a live socket or a regular file at the
    path stops the start with one line and is left as it was."""
    sock = str(tmp_path / "admin.sock")
    env = {"GATEWAY_ADMIN_HTTP_ADDR": f"unix:{sock}"}
    old = os.umask(0o002)
    try:
        g = make_gateway(env=env)
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(sock).st_mode) == 0o600, oct(os.stat(sock).st_mode)
    # A second gateway on the same path: refused, the first keeps serving.
    other = {"GATEWAY_PUBLIC_HTTP_ADDR": f"127.0.0.1:{gw.free_port()}", "GATEWAY_AUTHENTICATED_GRPC_ADDR": "",
             "GATEWAY_ADMIN_HTTP_ADDR": f"unix:{sock}"}
    _start_failure(gw.run_cli(["serve"], env=other), "another process is listening on this socket")
    s = socket.socket(socket.AF_UNIX)
    s.connect(sock)
    s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    s.settimeout(5)
    assert s.recv(100).startswith(b"HTTP/1.1 200 "), "the first gateway lost its socket"
    s.close()
    g.stop()
    assert g.returncode == 0
    # Its socket is stale now: the next start replaces it.
    assert stat.S_ISSOCK(os.lstat(sock).st_mode)
    g2 = make_gateway(env=env)
    assert stat.S_IMODE(os.stat(sock).st_mode) == 0o600
    g2.stop()
    # A regular file (and a symlink to one) is never deleted.
    victim = tmp_path / "important.txt"
    victim.write_text("data\n")
    link = tmp_path / "link.sock"
    link.symlink_to(victim)
    for path in (victim, link):
        other["GATEWAY_ADMIN_HTTP_ADDR"] = f"unix:{path}"
        _start_failure(gw.run_cli(["serve"], env=other), "the path exists and is not a socket; not replacing it")
    assert victim.read_text() == "data\n" and link.is_symlink()


def test_agent_unix_listen_mode_and_what_it_replaces(tmp_path):
    """The same rules for `wsgate agent --listen unix:...` (one helper):
    0600 with a secret too, a stale socket replaced, a live socket or a file
    left alone (exit 1, one line), and a relative path refused (exit 2)."""
    sock = str(tmp_path / "agent.sock")
    a = Agent(listen=f"unix:{sock}", umask=0)
    try:
        assert stat.S_IMODE(os.stat(sock).st_mode) == 0o600, oct(os.stat(sock).st_mode)
        r = gw.run_cli(["agent", "--listen", f"unix:{sock}"], env={"GATEWAY_AGENT_SECRET": SECRET})
        assert r.returncode == 1 and r.stderr.decode().strip().splitlines() == [
            f"wsgate agent: listen unix:{sock}: another process is listening on this socket"], r
    finally:
        assert a.stop() == 0
    # A stale socket (its agent was SIGKILLed and left it) is replaced.
    a = Agent(listen=f"unix:{sock}")
    a.proc.kill()
    a.proc.wait(5)
    a.expect_exit = -9
    a._err.close()
    assert stat.S_ISSOCK(os.lstat(sock).st_mode)
    a = Agent(listen=f"unix:{sock}")
    assert a.stop() == 0
    victim = tmp_path / "notes.txt"
    victim.write_text("keep\n")
    r = gw.run_cli(["agent", "--listen", f"unix:{victim}"], env={"GATEWAY_AGENT_SECRET": SECRET})
    assert r.returncode == 1 and r.stderr.decode().strip().splitlines() == [
        f"wsgate agent: listen unix:{victim}: the path exists and is not a socket; not replacing it"], r
    assert victim.read_text() == "keep\n"
    r = gw.run_cli(["agent", "--listen", "unix:rel.sock"], env={"GATEWAY_AGENT_SECRET": SECRET})
    assert r.returncode == 2 and r.stderr.decode().strip().splitlines() == [
        "wsgate agent: --listen: \"unix:rel.sock\": a unix socket path must be absolute"], r


def test_admin_token_compare(make_gateway):
    """Issue 8 item 9 (by digest): prefixes, longer values, another case,
    an empty bearer and a second Authorization header are all refused."""
    g = make_gateway(env={"GATEWAY_ADMIN_TOKEN": "adm1n-token"})
    for h in ([("Authorization", "Bearer adm1n-toke")], [("Authorization", "Bearer adm1n-tokenx")],
              [("Authorization", "Bearer ADM1N-TOKEN")], [("Authorization", "Bearer ")],
              [("Authorization", "Bearer adm1n-token"), ("Authorization", "Bearer x")]):
        body = json.dumps({"allocation_id": "a", "upstream": "ws://127.0.0.1:1/", "user_id": "u"}).encode()
        c = wsraw.Conn("127.0.0.1", g.admin_port)
        head = "POST /v1/terminal/tokens HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
        head += "".join(f"{k}: {v}\r\n" for k, v in h)
        c.send(head.encode() + f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
        r = c.read_response()
        c.close()
        assert r.status == 401, (h, r)
    assert mint(g, "a", "ws://127.0.0.1:1/", headers={"Authorization": "bearer adm1n-token"}).status == 201


def test_client_credentials_never_reach_agent(tgw, recorder):
    """Issue 8 item 6: the client's Authorization and Cookie (and Origin)
    stay at the gateway; the agent gets exactly one Authorization, the
    gateway's."""
    tok = token_for(tgw, "cred", f"ws://127.0.0.1:{recorder.port}/")["token"]
    ws = tgw.ws(path="/ws/terminal/cred", protocols=[SUBPROTO, tok], expect_101=False,
                headers=[("Authorization", "Bearer client-credential"), ("Cookie", "sid=client-cookie"),
                         ("Cookie", "other=1"), ("Origin", "https://app.example"), ("X-Custom", "kept")])
    assert ws.response.status == 403
    assert len(recorder.heads) == 1
    assert recorder.headers(0, "Authorization") == [f"Bearer {SECRET}"], recorder.heads[0]
    assert recorder.headers(0, "Cookie") == [] and recorder.headers(0, "Origin") == [], recorder.heads[0]
    assert recorder.headers(0, "X-Custom") == ["kept"]
    assert "client-credential" not in recorder.heads[0] and "client-cookie" not in recorder.heads[0]


def test_browser_headers_to_real_agent(tgw, agent):
    """The same through a real agent: a browser's Origin, Cookie and an
    Authorization do not break the terminal (nor burn the token)."""
    a = agent()
    tok = token_for(tgw, "brw", a.url)["token"]
    ws = tgw.ws(path="/ws/terminal/brw", protocols=[SUBPROTO, tok], expect_101=False,
                headers={"Authorization": "Bearer something-else", "Cookie": "a=b", "Origin": "https://app.example"})
    assert ws.response.status == 101, ws.response
    ws.send_binary(b"echo brw-$((9*9))\n")
    read_until(ws, rb"brw-81")
    ws.close()


def test_reattach_bound_to_user_and_allocation(tgw, agent):
    """Issue 8 item 5: a token naming another user's session id gets neither
    the scrollback nor the shell (409, envelope, logged); the owner keeps it."""
    a = agent()
    sid = "bound-" + os.urandom(4).hex()
    alice = connect(tgw, "alloc-b1", token_for(tgw, "alloc-b1", a.url, user="alice", session_id=sid)["token"])
    assert alice.response.status == 101
    alice.send_binary(b"SECRETVAR=alice-$((20+22)); echo ready-$((1+2))\n")
    read_until(alice, rb"ready-3")
    accepted = events(tgw, "accepted", "ok")
    refused_before = events(tgw, "rejected", "upstream_refused")
    for user, alloc in (("mallory", "alloc-b1"), ("alice", "alloc-b2")):
        ws = connect(tgw, alloc, token_for(tgw, alloc, a.url, user=user, session_id=sid)["token"])
        r = ws.response
        assert r.status == 409, r
        j = json.loads(r.body)
        assert j["code"] == "session_conflict" and j["correlation_id"] == corr_of(ws), j
        assert b"alice-42" not in r.body
        line = [l for l in a.logs() if l.get("msg") == "agent refused" and l.get("correlation_id") == corr_of(ws)]
        assert line and line[0]["reason"] == "session_conflict" and line[0]["user"] == user, line
        assert line[0]["session_user"] == "alice" and line[0]["session_id"] == sid
    assert events(tgw, "accepted", "ok") == accepted
    assert events(tgw, "rejected", "upstream_refused") == refused_before + 2
    # Alice's shell is untouched and still hers.
    alice.send_binary(b"echo still-$SECRETVAR\n")
    read_until(alice, rb"still-alice-42")
    alice.reset()
    gw.wait_until(lambda: [l for l in a.logs() if l.get("msg") == "agent session detached"], what="detach")
    ws = connect(tgw, "alloc-b1", token_for(tgw, "alloc-b1", a.url, user="alice", session_id=sid)["token"])
    assert ws.response.status == 101
    read_until(ws, rb"ready-3")
    ws.close()


def test_events_count_agent_outcome(tgw, agent):
    """Issue 8 item 18: accepted is counted once the agent accepted; an
    unreachable agent counts as upstream_unavailable, and its refusal line
    carries resource_name."""
    a = agent()
    acc = events(tgw, "accepted", "ok")
    ws = connect(tgw, "ev", token_for(tgw, "ev", a.url)["token"])
    assert ws.response.status == 101
    assert events(tgw, "accepted", "ok") == acc + 1
    ws.close()
    port = gw.free_port()
    unav = events(tgw, "rejected", "upstream_unavailable")
    ws = connect(tgw, "ev-down", token_for(tgw, "ev-down", f"ws://127.0.0.1:{port}/", region="r9", tenant_id="t9",
                                            project_id="p9")["token"])
    assert ws.response.status == 502, ws.response
    assert events(tgw, "accepted", "ok") == acc + 1
    assert events(tgw, "rejected", "upstream_unavailable") == unav + 1
    line = tgw.wait_log(lambda l: l.get("msg") == "terminal refused" and l.get("correlation_id") == corr_of(ws))[0]
    assert line["reason"] == "upstream_unavailable"
    assert line["resource_name"] == "core42:aicloud:r9:t9:p9:gpuaas/allocation:ev-down"
    assert not [l for l in tgw.logs() if l.get("msg") == "terminal accepted" and
                l.get("correlation_id") == corr_of(ws)]


# ------------------------------------------------------------------ page

def test_page_served(tgw):
    r = tgw.get("/terminal/")
    assert r.status == 200 and b"xterm" in r.body
    assert "default-src 'self'" in r.header("Content-Security-Policy")
    for p in ("/terminal/terminal.js", "/terminal/vendor/xterm.js", "/terminal/vendor/addon-fit.js",
              "/terminal/vendor/xterm.css"):
        r = tgw.get(p)
        assert r.status == 200 and len(r.body) > 100, p
    r = tgw.get("/terminal/config.json")
    j = r.json()
    assert j == {"ws_base_url": "", "token_url": "", "subprotocol": SUBPROTO, "demo": False,
                 "demo_allocation": ""}
    assert tgw.get("/terminal/../etc/passwd").status in (400, 404)
    assert tgw.get("/terminal/nope.js").status == 404
    assert tgw.get("/terminal").status == 301
    # No demo issuer unless asked for.
    r = wsraw.http_request(tgw.port, "POST", "/terminal/demo-token", body=b"{}")
    assert r.status in (404, 405)


def test_demo_issuer(make_gateway, agent):
    a = agent()
    g = make_gateway(env={"GATEWAY_AGENT_SECRET": SECRET, "GATEWAY_TERMINAL_WEB_DIR": WEB_DIR,
                          "GATEWAY_TERMINAL_DEMO_UPSTREAM": a.url,
                          "GATEWAY_PUBLIC_WS_BASE_URL": "wss://edge.example.com/"})
    assert [l for l in g.logs() if l.get("msg") == "DEMO TOKEN ISSUER ENABLED"]
    j = g.get("/terminal/config.json").json()
    assert j["token_url"] == "/terminal/demo-token" and j["demo"] is True and j["demo_allocation"] == "demo"
    assert j["ws_base_url"] == "wss://edge.example.com"
    r = wsraw.http_request(g.port, "POST", "/terminal/demo-token?allocation_id=demo&session_id=demo-s1")
    assert r.status == 201, r
    t = r.json()
    assert t["url"] == "wss://edge.example.com/ws/terminal/demo" and t["session_id"] == "demo-s1"
    ws = connect(g, "demo", t["token"])
    assert ws.response.status == 101
    ws.send_binary(b"echo demo-$((8*8))\n")
    read_until(ws, rb"demo-64")
    ws.close()
    r = wsraw.http_request(g.port, "POST", "/terminal/demo-token?session_id=bad%20id")
    assert r.status == 400


def test_bad_demo_upstream_fails_startup():
    r = gw.run_cli(["serve"], env={"GATEWAY_TERMINAL_DEMO_UPSTREAM": "http://x/", "GATEWAY_PUBLIC_HTTP_ADDR":
                                   f"127.0.0.1:{gw.free_port()}", "GATEWAY_AUTHENTICATED_GRPC_ADDR": ""})
    assert r.returncode == 2 and b"GATEWAY_TERMINAL_DEMO_UPSTREAM" in r.stderr


def test_token_alone_not_logged(tgw, agent):
    a = agent()
    tok = token_for(tgw, "alone-log", a.url)["token"]
    ws = connect(tgw, "alone-log", tok, v1=False)
    assert ws.response.status == 101
    ws.close()
    time.sleep(0.2)
    assert tok not in tgw.stderr()
