"""Device session snapshots (DESIGN.md section 5): POST /v1/sessions on the
admin listener on both backends, the session-events stream on Redis (read in
full by every process, resumed from the last entry id after a reconnect), the
highest version wins, malformed entries are logged and counted."""

import hashlib
import json
import os
import signal
import time

import pytest

import gw
import wsraw

ADMIN = "admin-token-for-session-tests"


def snap(sid, version, status="active", user="u1", bearer=None):
    return {"device_session_id": sid, "user_id": user, "status": status, "version": version,
            "token_sha256": hashlib.sha256((bearer or f"bearer-{sid}").encode()).hexdigest()}


def post(g, body, token=ADMIN):
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    h = {"Content-Type": "application/json"}
    if token:
        h["Authorization"] = f"Bearer {token}"
    return wsraw.http_request(g.admin_port, "POST", "/v1/sessions", headers=h, body=raw)


def view(g, sid):
    r = wsraw.http_request(g.admin_port, "GET", f"/v1/sessions/{sid}", headers={"Authorization": f"Bearer {ADMIN}"})
    return json.loads(r.body) if r.status == 200 else r.status


def snapshots(g, result):
    return g.metric("wsgate_session_snapshots_total", result=result)


@pytest.fixture(params=["embedded", "redis"])
def backend(request):
    if request.param == "embedded":
        return {}
    r = request.getfixturevalue("redis_server")
    return r.env(GATEWAY_SESSION_EVENTS_REDIS_STREAM=f"sess-{os.urandom(4).hex()}")


def test_post_and_highest_version_wins(make_gateway, backend):
    g = make_gateway(env=dict(backend, GATEWAY_ADMIN_TOKEN=ADMIN))
    sid = "dev-" + os.urandom(3).hex()
    assert post(g, snap(sid, 1), token=None).status == 401
    r = post(g, snap(sid, 2))
    assert r.status == 202, r
    j = r.json()
    assert j["device_session_id"] == sid and j["version"] == 2 and j["status"] == "active"
    assert (j["id"] is None) == (not backend)
    gw.wait_until(lambda: view(g, sid) != 404, what="session in the view")
    assert view(g, sid) == {"device_session_id": sid, "user_id": "u1", "status": "active", "version": 2}
    # A lower or equal version changes nothing; a higher one wins.
    assert post(g, snap(sid, 1, status="revoked")).status == 202
    assert post(g, snap(sid, 2, status="revoked")).status == 202
    assert post(g, snap(sid, 5, status="revoked")).status == 202
    gw.wait_until(lambda: view(g, sid)["version"] == 5, what="version 5 applied")
    assert view(g, sid)["status"] == "revoked"
    assert snapshots(g, "stale") == 2
    assert snapshots(g, "applied") == 2
    g.wait_log(lambda l: l.get("msg") == "device session revoked" and l.get("device_session_id") == sid)


@pytest.mark.parametrize("body,why", [
    (b"not json", "JSON object"),
    ({"user_id": "u", "status": "active", "token_sha256": "0" * 64, "version": 1}, "device_session_id"),
    ({"device_session_id": "d", "user_id": "u", "status": "gone", "token_sha256": "0" * 64, "version": 1}, "status"),
    ({"device_session_id": "d", "user_id": "u", "status": "active", "token_sha256": "xyz", "version": 1},
     "token_sha256"),
    ({"device_session_id": "d", "user_id": "u", "status": "active", "token_sha256": "0" * 64, "version": 0},
     "version"),
    ({"device_session_id": "d", "user_id": "u", "status": "active", "token_sha256": "0" * 64,
      "version": "9223372036854775808"}, "at most 9223372036854775807"),
    ({"device_session_id": "d d", "user_id": "u", "status": "active", "token_sha256": "0" * 64, "version": 1},
     "device_session_id"),
])
def test_post_malformed(make_gateway, body, why):
    g = make_gateway(env={"GATEWAY_ADMIN_TOKEN": ADMIN})
    r = post(g, body)
    assert r.status == 400, r
    j = r.json()
    assert j["code"] == "invalid_session" and why in j["message"], j
    assert view(g, "d") == 404


def xadd(r, stream, fields):
    args = []
    for k, v in fields.items():
        args += [k, v]
    return r.cli("XADD", stream, "*", *args).strip()


def test_stream_shared_by_three_processes(make_gateway, redis_server):
    stream = "sess-three-" + os.urandom(4).hex()
    env = redis_server.env(GATEWAY_SESSION_EVENTS_REDIS_STREAM=stream, GATEWAY_ADMIN_TOKEN=ADMIN)
    g1, g2 = make_gateway(env=env), make_gateway(env=env)
    assert post(g1, snap("s-a", 1)).status == 202
    xadd(redis_server, stream, snap("s-b", 3, status="revoked"))
    # A malformed entry: logged, counted, never fatal; the next one applies.
    xadd(redis_server, stream, {"device_session_id": "s-c", "status": "maybe"})
    xadd(redis_server, stream, snap("s-d", 1))
    for g in (g1, g2):
        gw.wait_until(lambda: view(g, "s-d") != 404, what="s-d everywhere")
        assert view(g, "s-a")["version"] == 1
        assert view(g, "s-b")["status"] == "revoked"
        assert view(g, "s-c") == 404
        assert snapshots(g, "malformed") == 1
        line = g.wait_log(lambda l: l.get("msg") == "session snapshot dropped: malformed")[0]
        assert "status" in line["error"] and line["source"] == "stream"
    # A process started later reads the stream in full: the same view.
    g3 = make_gateway(env=env)
    gw.wait_until(lambda: view(g3, "s-d") != 404, what="g3 caught up")
    assert view(g3, "s-b")["status"] == "revoked" and view(g3, "s-a")["version"] == 1
    for g in (g1, g2, g3):
        assert g.alive


def test_stream_resumes_after_connection_loss(make_gateway, redis_server):
    """The gateway's connections are killed while entries keep arriving: it
    resumes from the last id it read and loses none."""
    stream = "sess-resume-" + os.urandom(4).hex()
    g = make_gateway(env=redis_server.env(GATEWAY_SESSION_EVENTS_REDIS_STREAM=stream, GATEWAY_ADMIN_TOKEN=ADMIN))
    xadd(redis_server, stream, snap("r-0", 1))
    gw.wait_until(lambda: view(g, "r-0") != 404, what="r-0")
    for i in range(1, 21):
        if i % 5 == 0:
            redis_server.cli("CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes")
        xadd(redis_server, stream, snap(f"r-{i}", 1))
    gw.wait_until(lambda: all(view(g, f"r-{i}") != 404 for i in range(21)), timeout=15, what="all 21 entries")
    g.wait_log(lambda l: l.get("msg") == "redis connected again" and l.get("connection") == "sessions")


def test_stream_across_redis_restart(make_gateway, make_redis):
    r = make_redis()
    stream = "sess-restart"
    g = make_gateway(env=r.env(GATEWAY_SESSION_EVENTS_REDIS_STREAM=stream, GATEWAY_ADMIN_TOKEN=ADMIN))
    xadd(r, stream, snap("k-1", 1))
    gw.wait_until(lambda: view(g, "k-1") != 404, what="k-1")
    r.kill()
    gw.wait_until(lambda: json.loads(g.get("/health").body)["backend"]["overall"] == "unhealthy", timeout=10,
                  what="unhealthy")
    # Publishing fails closed while Redis is down.
    assert post(g, snap("k-x", 1)).status == 503
    r.start()
    # Entries appended as soon as Redis is back, before the gateway reconnects.
    for i in range(2, 7):
        xadd(r, stream, snap(f"k-{i}", 1))
    gw.wait_until(lambda: all(view(g, f"k-{i}") != 404 for i in range(2, 7)), timeout=15, what="k-2..k-6")
    # The stream reader and the workers' connections reconnect on their own
    # back-off timers: publishing works once every connection is back.
    gw.wait_until(lambda: json.loads(g.get("/health").body)["backend"]["overall"] == "healthy", timeout=10,
                  what="healthy again")
    assert post(g, snap("k-7", 1)).status == 202
    gw.wait_until(lambda: view(g, "k-7") != 404, what="k-7 through the stream")
    assert view(g, "k-1")["version"] == 1  # the view survives the outage


def test_version_bounds(make_gateway, redis_server):
    """A version above INT64_MAX (answered as a JSON integer) is refused on
    POST (400) and malformed on the stream (counted, not applied);
    INT64_MAX itself is fine and answered as it was sent."""
    stream = "sess-big-" + os.urandom(4).hex()
    g = make_gateway(env=redis_server.env(GATEWAY_SESSION_EVENTS_REDIS_STREAM=stream, GATEWAY_ADMIN_TOKEN=ADMIN))
    big = snap("big-1", 1)
    big["version"] = "9223372036854775808"
    r = post(g, big)
    assert r.status == 400 and r.json()["code"] == "invalid_session", r
    xadd(redis_server, stream, big)
    gw.wait_until(lambda: snapshots(g, "malformed") == 1, what="the stream entry counted malformed")
    line = g.wait_log(lambda l: l.get("msg") == "session snapshot dropped: malformed")[0]
    assert "at most 9223372036854775807" in line["error"] and line["source"] == "stream"
    assert view(g, "big-1") == 404
    assert post(g, snap("big-1", 9223372036854775807)).status == 202
    gw.wait_until(lambda: view(g, "big-1") != 404, what="INT64_MAX applied")
    assert view(g, "big-1")["version"] == 9223372036854775807


def test_no_bearer_served_before_the_view_is_complete(make_gateway, make_redis):
    """A process starting on a long session-events stream is not ready and
    answers no bearer until it has read what the stream held when it
    started (review3 F7: a bearer revoked long ago looked active while the
    process caught up, and got its 101 and events). During the catch-up
    /readyz is 503 catching_up; lookups wait (within GATEWAY_STORE_TIMEOUT)
    and then answer from the complete view: the revoked bearer 403, a
    session recorded last 101."""
    import subprocess
    r = make_redis()
    stream = "sess-catchup"
    xadd(r, stream, snap("old1", 1, user="victim"))
    fill = "".join(f"XADD {stream} * device_session_id f{i} user_id u{i} status active token_sha256 "
                   f"{'ab' * 32} version 1\n" for i in range(60000))
    subprocess.run(["redis-cli", "-p", str(r.port), "-a", r.password, "--no-auth-warning"], input=fill.encode(),
                   stdout=subprocess.DEVNULL, check=True, timeout=120)
    xadd(r, stream, snap("old1", 2, status="revoked", user="victim"))
    xadd(r, stream, snap("last1", 1, user="late"))
    g = make_gateway(env=r.env(GATEWAY_SESSION_EVENTS_REDIS_STREAM=stream, GATEWAY_STORE_TIMEOUT="10s"),
                     start=False)
    g._err = open(g.stderr_path, "ab")
    g.proc = subprocess.Popen([gw.wsgate_bin()] + list(g.args), env=g.env, stdin=subprocess.DEVNULL,
                              stdout=subprocess.DEVNULL, stderr=g._err)
    g.pid = g.proc.pid
    seen_ready, statuses, catching_up = False, [], 0
    deadline = time.monotonic() + 60
    while not seen_ready and time.monotonic() < deadline:
        try:
            rz = g.get("/readyz", timeout=2)
        except (OSError, wsraw.Timeout, wsraw.Closed):
            time.sleep(0.01)
            continue
        if rz.status == 503 and rz.json()["code"] == "catching_up":
            catching_up += 1
        seen_ready = rz.status == 200
        w = wsraw.WS(g.port, path="/ws/events", protocols=["bearer-old1"], expect_101=False, timeout=15)
        statuses.append(w.response.status)
        w.close()
    assert seen_ready, "never ready"
    assert catching_up >= 1, "the catch-up window was not observed (stream too short for this machine?)"
    assert 101 not in statuses, f"the revoked bearer was served while catching up: {statuses}"
    assert set(statuses) == {403}, statuses
    w = wsraw.WS(g.port, path="/ws/events", protocols=["bearer-last1"])
    w.close()
    g.wait_log(lambda l: l.get("msg", "").startswith("store caught up"))
