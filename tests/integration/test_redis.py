"""The Redis backend (DESIGN.md sections 1, 2, 10) against a real
redis-server (redisfix.py): fail-fast startup, tokens shared by three
processes, Redis killed and restarted, Redis frozen (SIGSTOP)."""

import hashlib
import json
import re
import time

import pytest

import gw
import redisfix
import wsraw
from test_terminal import SECRET, WEB_DIR, Agent, connect, mint, read_until, refused, token_for


def start_fails(env):
    """Runs `wsgate serve` that must refuse to start: (status, its log lines)."""
    full = {"GATEWAY_PUBLIC_HTTP_ADDR": f"127.0.0.1:{gw.free_port()}", "GATEWAY_LOG_FORMAT": "json"}
    full.update(env)
    r = gw.run_cli(["serve"], env=full, timeout=30)
    lines = [json.loads(l) for l in r.stderr.decode().splitlines() if l.startswith("{")]
    return r.returncode, lines


def health(g):
    r = g.get("/health")
    assert r.status == 200, r
    return json.loads(r.body)["backend"]


def healthy_metric(g, backend="redis"):
    return g.metric("wsgate_backend_healthy", backend=backend)


@pytest.fixture
def agents():
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


def term_env(r, **extra):
    e = {"GATEWAY_AGENT_SECRET": SECRET, "GATEWAY_TERMINAL_WEB_DIR": WEB_DIR}
    e.update(r.env(**extra))
    return e


# ------------------------------------------------------------------ startup

def test_dead_address_stops_the_start():
    port = gw.free_port()  # nothing listens there
    t0 = time.monotonic()
    rc, lines = start_fails({"GATEWAY_REDIS_MASTER_ADDR": f"127.0.0.1:{port}"})
    assert rc == 2
    assert len(lines) == 1, lines
    assert lines[0]["level"] == "error"
    assert f"GATEWAY_REDIS_MASTER_ADDR: 127.0.0.1:{port} does not answer" in lines[0]["error"], lines
    assert time.monotonic() - t0 < 10


def test_silent_address_stops_the_start_within_the_timeout(redis_server):
    """A Redis that accepts but never answers (frozen) is a failed start after
    GATEWAY_STORE_TIMEOUT, not a hang."""
    redis_server.freeze()
    try:
        t0 = time.monotonic()
        rc, lines = start_fails(redis_server.env(GATEWAY_STORE_TIMEOUT="1s"))
        took = time.monotonic() - t0
    finally:
        redis_server.thaw()
    assert rc == 2 and len(lines) == 1, lines
    assert "AUTH failed" in lines[0]["error"], lines
    assert took < 8, took


def test_trickling_peer_stops_the_start_within_the_timeout():
    """A peer answering a byte every 0.2 s (every read gets something) is a
    failed start within GATEWAY_STORE_TIMEOUT overall, not per read."""
    t = redisfix.Trickler()
    try:
        t0 = time.monotonic()
        rc, lines = start_fails({"GATEWAY_REDIS_MASTER_ADDR": f"127.0.0.1:{t.port}", "GATEWAY_STORE_TIMEOUT": "1s"})
        took = time.monotonic() - t0
    finally:
        t.stop()
    assert rc == 2 and len(lines) == 1, lines
    assert "SELECT failed (no answer within GATEWAY_STORE_TIMEOUT)" in lines[0]["error"], lines
    assert took < 3, took


@pytest.mark.parametrize("env,want", [
    ({"GATEWAY_REDIS_PASSWORD": "wrong"}, "AUTH failed"),
    ({"GATEWAY_REDIS_PASSWORD": ""}, "failed (NOAUTH"),
    ({"GATEWAY_REDIS_DB": "99999"}, "SELECT failed"),
])
def test_bad_credentials_or_db_stop_the_start(redis_server, env, want):
    e = redis_server.env()
    e.update(env)
    rc, lines = start_fails(e)
    assert rc == 2 and len(lines) == 1, lines
    assert want in lines[0]["error"], lines
    assert redis_server.password not in json.dumps(lines)


@pytest.mark.parametrize("var", ["GATEWAY_REDIS_TLS_ENABLED", "GATEWAY_REDIS_USERNAME"])
def test_removed_variables_refused(redis_server, var):
    e = redis_server.env()
    e[var] = "x"
    rc, lines = start_fails(e)
    assert rc == 2 and len(lines) == 1, lines
    assert var in lines[0]["error"]


def test_unreadable_values_refused():
    for var, val in (("GATEWAY_REDIS_MASTER_ADDR", "not an address"), ("GATEWAY_REDIS_DB", "-1"),
                     ("GATEWAY_REDIS_DB", "zero")):
        rc, lines = start_fails({var: val})
        assert rc == 2 and len(lines) == 1, (var, val, lines)
        assert var in lines[0]["error"], lines


def test_not_reported_as_unbuilt(make_gateway, redis_server):
    g = make_gateway(env=redis_server.env())
    assert not [l for l in g.logs() if "not built" in json.dumps(l).lower()]
    started = g.wait_log(lambda l: l.get("msg") == "gateway started")[0]
    assert started["backend"] == "redis"
    assert health(g) == {"overall": "healthy", "kind": "redis"}
    assert healthy_metric(g) == 1


def test_embedded_health(make_gateway):
    g = make_gateway()
    assert health(g) == {"overall": "healthy", "kind": "embedded"}
    assert healthy_metric(g, "embedded") == 1


# ------------------------------------------------------------------ three processes

def test_mint_consume_replay_across_three_processes(make_gateway, redis_server, agents):
    prefix = "three-" + str(time.monotonic_ns()) + ":"
    a = agents()
    g1, g2, g3 = (make_gateway(env=term_env(redis_server, GATEWAY_REDIS_KEY_PREFIX=prefix)) for _ in range(3))
    minted = token_for(g1, "alloc-3p", a.url)
    tok = minted["token"]
    ws = connect(g2, "alloc-3p", tok)
    assert ws.response.status == 101, ws.response
    ws.send_binary(b"echo three-$((1+2))\n")
    read_until(ws, rb"three-3")
    refused(g3, connect(g3, "alloc-3p", tok), 403, "token_replayed")
    refused(g1, connect(g1, "alloc-3p", tok), 403, "token_replayed")
    # An unknown token is told apart from a replay on every process.
    refused(g3, connect(g3, "alloc-3p", "B" * 42 + "A"), 401, "unknown_token")
    ws.close()
    # Only the SHA-256 of the token is in Redis: the key, never the text.
    keys = redis_server.cli("--scan", "--pattern", prefix + "*").split()
    assert keys == [prefix + "tok:" + hashlib.sha256(tok.encode()).hexdigest()], keys
    dump = redis_server.cli("HGETALL", keys[0])
    assert tok not in dump
    assert re.search(r"^s\nused\n", dump, re.M), dump  # a tombstone
    ttl = int(redis_server.cli("PTTL", keys[0]))
    assert 0 < ttl <= (minted["ttl_s"] + 300) * 1000


def test_concurrent_consume_exactly_once(make_gateway, redis_server, agents):
    """Ten tokens, each offered to all three processes at once: exactly one
    101 per token."""
    a = agents()
    gs = [make_gateway(env=term_env(redis_server, GATEWAY_REDIS_KEY_PREFIX="race:")) for _ in range(3)]
    import threading
    for i in range(10):
        tok = token_for(gs[i % 3], f"race-{i}", a.url)["token"]
        results = [None] * 3
        def go(k):
            results[k] = connect(gs[k], f"race-{i}", tok)
        ts = [threading.Thread(target=go, args=(k,)) for k in range(3)]
        for t in ts:
            t.start()
        for t in ts:
            t.join(10)
        statuses = sorted(w.response.status for w in results)
        assert statuses == [101, 403, 403], statuses
        for w in results:
            if w.response.status == 101:
                w.close()


# ------------------------------------------------------------------ failures

def test_redis_killed_and_restarted(make_gateway, make_redis, agents):
    r = make_redis()
    a = agents()
    g = make_gateway(env=term_env(r))
    ws = connect(g, "outage", token_for(g, "outage", a.url)["token"])
    assert ws.response.status == 101
    spare = token_for(g, "outage", a.url)["token"]  # minted before the outage, consumed after it
    ws.send_binary(b"echo before-$((2*3))\n")
    read_until(ws, rb"before-6")

    r.kill()
    gw.wait_until(lambda: health(g)["overall"] == "unhealthy", timeout=10, what="/health unhealthy")
    assert healthy_metric(g) == 0
    # The open terminal keeps working.
    ws.send_binary(b"echo during-$((3*3))\n")
    read_until(ws, rb"during-9")
    # Consumption fails closed; minting too.
    before = g.metric("terminal_gateway_ws_events_total", outcome="rejected", reason="service_unavailable")
    refused(g, connect(g, "outage", spare), 503, "service_unavailable")
    assert g.metric("terminal_gateway_ws_events_total", outcome="rejected",
                    reason="service_unavailable") == before + 1
    assert mint(g, "outage", a.url).status == 503
    assert g.get("/healthz").status == 200
    g.wait_log(lambda l: l.get("msg") == "redis unavailable; reconnecting with back-off")

    r.start()  # same port, empty (no persistence): a fresh Redis
    t0 = time.monotonic()
    gw.wait_until(lambda: health(g)["overall"] == "healthy", timeout=10, what="/health healthy again")
    back = time.monotonic() - t0
    assert back < 5, back
    assert healthy_metric(g) == 1
    # Whole again: mint and consume, with no restart.
    gw.wait_until(lambda: mint(g, "outage", a.url).status == 201, timeout=5, what="mint after restart")
    ws2 = connect(g, "outage", token_for(g, "outage", a.url)["token"])
    assert ws2.response.status == 101
    ws2.close()
    ws.send_binary(b"echo after-$((4*4))\n")
    read_until(ws, rb"after-16")
    ws.close()
    g.wait_log(lambda l: l.get("msg") == "redis connected again")


def test_frozen_redis_cannot_stall_a_worker(make_gateway, make_redis, agents):
    r = make_redis()
    a = agents()
    g = make_gateway(env=term_env(r, GATEWAY_STORE_TIMEOUT="1s", GATEWAY_WORKERS="1"))
    toks = [token_for(g, "frozen", a.url)["token"] for _ in range(2)]
    ws = connect(g, "frozen", toks[0])
    assert ws.response.status == 101
    r.freeze()
    try:
        t0 = time.monotonic()
        box = {}
        import threading
        th = threading.Thread(target=lambda: box.update(ws=connect(g, "frozen", toks[1])))
        th.start()
        # While the consume waits, the one worker keeps answering.
        time.sleep(0.2)
        for _ in range(5):
            h0 = time.monotonic()
            assert g.get("/healthz").status == 200
            assert time.monotonic() - h0 < 0.5
        ws.send_binary(b"echo frozen-$((5*5))\n")
        read_until(ws, rb"frozen-25")
        th.join(10)
        took = time.monotonic() - t0
        refused(g, box["ws"], 503, "service_unavailable")
        assert 0.9 <= took < 3, took
        gw.wait_until(lambda: health(g)["overall"] == "unhealthy", timeout=10, what="unhealthy while frozen")
        assert healthy_metric(g) == 0
        g.wait_log(lambda l: l.get("msg") == "redis unavailable; reconnecting with back-off"
                   and l.get("error") == "no answer within GATEWAY_STORE_TIMEOUT")
    finally:
        r.thaw()
    gw.wait_until(lambda: health(g)["overall"] == "healthy", timeout=10, what="healthy after SIGCONT")
    ws2 = connect(g, "frozen", token_for(g, "frozen", a.url)["token"])
    assert ws2.response.status == 101
    ws2.close()
    ws.close()


def test_handshake_that_never_answers_is_retried(make_gateway, redis_server):
    """Connect and handshake (AUTH, SELECT, SCRIPT LOAD) have a deadline:
    a reconnection accepted but never answered (a black hole) is dropped
    after twice GATEWAY_STORE_TIMEOUT and tried again, so the gateway is
    whole again soon after the path heals, idle worker connection included."""
    p = redisfix.Proxy(redis_server.port)
    try:
        g = make_gateway(env=term_env(redis_server, GATEWAY_REDIS_MASTER_ADDR=p.addr, GATEWAY_STORE_TIMEOUT="1s",
                                      GATEWAY_WORKERS="1"))
        token_for(g, "hole", "ws://127.0.0.1:1/x")  # the worker's own connection exists from here on
        assert health(g)["overall"] == "healthy"
        p.blackhole()
        gw.wait_until(lambda: health(g)["overall"] == "unhealthy", timeout=10, what="unhealthy in the black hole")
        time.sleep(1)  # reconnections are parked in the hole
        p.heal()
        t0 = time.monotonic()
        gw.wait_until(lambda: health(g)["overall"] == "healthy", timeout=15, what="healthy after the heal")
        assert time.monotonic() - t0 < 5
        assert token_for(g, "hole", "ws://127.0.0.1:1/x")["token"]
    finally:
        p.stop()


@pytest.mark.parametrize("which", ["session", "client"])
def test_unreadable_stream_is_unhealthy(make_gateway, make_redis, which):
    """XREAD answering an error (the stream's key holds a string) is an
    unhealthy backend with the reason naming the stream, logged once (not
    every retry), and healthy again once the stream can be read. Both
    readers: the session-events stream (revocations) and the client-events
    stream (push)."""
    r = make_redis()
    r.cli("SET", "bad:events", "not-a-stream")
    var = "GATEWAY_SESSION_EVENTS_REDIS_STREAM" if which == "session" else "GATEWAY_CLIENT_EVENTS_REDIS_STREAM"
    reason = ("the session-events stream cannot be read (XREAD fails): revocations are not applied"
              if which == "session" else
              "the client-events stream cannot be read (XREAD fails): push events are not delivered")
    msg = ("session-events stream unreadable; revocations are not applied" if which == "session"
           else "client-events stream unreadable; push events are not delivered")
    g = make_gateway(env=r.env(**{var: "bad:events"}))
    gw.wait_until(lambda: health(g)["overall"] == "unhealthy", timeout=10, what="unhealthy")
    h = health(g)
    assert h["reason"] == reason, h
    assert healthy_metric(g) == 0
    time.sleep(3)  # three more XREAD attempts
    lines = [l for l in g.logs() if l.get("msg") == msg]
    assert len(lines) == 1, lines
    assert lines[0]["level"] == "error" and "WRONGTYPE" in lines[0]["error"] and lines[0]["stream"] == "bad:events"
    r.cli("DEL", "bad:events")
    gw.wait_until(lambda: health(g)["overall"] == "healthy", timeout=10, what="healthy once readable")
    assert "reason" not in health(g)
    assert healthy_metric(g) == 1
    g.wait_log(lambda l: l.get("msg") == f"{which}-events stream readable again")


def test_late_consume_leaves_the_token(make_gateway, make_redis, agents):
    """A consume answered 503 (Redis frozen past GATEWAY_STORE_TIMEOUT) that
    Redis runs once thawed is "late" by Redis' clock and leaves the token
    untouched: the client's retry with the same token is accepted, not a
    replay (review2 f6)."""
    r = make_redis()
    a = agents()
    g = make_gateway(env=term_env(r, GATEWAY_STORE_TIMEOUT="1s", GATEWAY_WORKERS="1"))
    tok = token_for(g, "late", a.url)["token"]
    r.freeze()
    try:
        first = connect(g, "late", tok)
        refused(g, first, 503, "service_unavailable")
        time.sleep(0.5)  # past the deadline on every clock
    finally:
        r.thaw()
    gw.wait_until(lambda: health(g)["overall"] == "healthy", timeout=10, what="healthy after SIGCONT")
    ws = connect(g, "late", tok)
    assert ws.response.status == 101
    ws.send_binary(b"echo late-$((6*7))\n")
    read_until(ws, rb"late-42")
    ws.close()
    again = connect(g, "late", tok)
    refused(g, again, 403, "token_replayed")
