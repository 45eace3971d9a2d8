"""Push events (DESIGN.md section 5): /ws/events subscriptions authenticated by
the session bearer, events published with POST /v1/events (or XADD on Redis),
targeting, ordering, resume with a cursor (same process, another process,
a too-old cursor), overflow, revocation, shutdown, malformed entries; both
backends, real websockets clients."""

import asyncio
import hashlib
import json
import os
import signal

import pytest
import websockets

import gw
import wsraw

ADMIN = "admin-token-for-push-tests"


def snap(sid, user, version=1, status="active"):
    return {"device_session_id": sid, "user_id": user, "status": status, "version": version,
            "token_sha256": hashlib.sha256(f"bearer-{sid}".encode()).hexdigest()}


def admin_post(g, path, body):
    return wsraw.http_request(g.admin_port, "POST", path, body=json.dumps(body).encode(),
                              headers={"Content-Type": "application/json", "Authorization": f"Bearer {ADMIN}"})


def session(g, sid, user, **kw):
    r = admin_post(g, "/v1/sessions", snap(sid, user, **kw))
    assert r.status == 202, r
    want = kw.get("status", "active")

    def applied():
        v = wsraw.http_request(g.admin_port, "GET", f"/v1/sessions/{sid}",
                               headers={"Authorization": f"Bearer {ADMIN}"})
        return v.status == 200 and json.loads(v.body)["status"] == want
    gw.wait_until(applied, what=f"session {sid} {want}")


def publish(g, user, typ, payload=None, dev=None):
    body = {"user_id": user, "type": typ, "payload": payload if payload is not None else {"n": 0}}
    if dev:
        body["device_session_id"] = dev
    r = admin_post(g, "/v1/events", body)
    assert r.status == 201, r
    return json.loads(r.body)["id"]


def url(g, cursor=None):
    return f"ws://127.0.0.1:{g.port}/ws/events" + (f"?cursor={cursor}" if cursor else "")


async def connect(g, sid, cursor=None, header=False, **kw):
    if header:
        return await websockets.connect(url(g, cursor), extra_headers={"Authorization": f"Bearer bearer-{sid}"},
                                        ping_interval=None, **kw)
    return await websockets.connect(url(g, cursor), subprotocols=[f"bearer-{sid}"], ping_interval=None, **kw)


async def recv_json(ws, timeout=5):
    return json.loads(await asyncio.wait_for(ws.recv(), timeout))


async def subscribe(g, sid, **kw):
    ws = await connect(g, sid, **kw)
    first = await recv_json(ws)
    assert first["type"] == "gateway.server_time" and isinstance(first["payload"]["server_time_ms"], int)
    return ws


def run(coro):
    return asyncio.run(coro)


@pytest.fixture(params=["embedded", "redis"])
def backend(request):
    if request.param == "embedded":
        return {}
    r = request.getfixturevalue("redis_server")
    tag = os.urandom(4).hex()
    return r.env(GATEWAY_SESSION_EVENTS_REDIS_STREAM=f"sess-{tag}", GATEWAY_CLIENT_EVENTS_REDIS_STREAM=f"ev-{tag}")


def gateway(make_gateway, backend, **env):
    return make_gateway(env=dict(backend, GATEWAY_ADMIN_TOKEN=ADMIN, GATEWAY_WORKERS="2", **env))


def test_targeting_and_order(make_gateway, backend):
    g = gateway(make_gateway, backend)
    session(g, "pa1", "alice")
    session(g, "pa2", "alice")
    session(g, "pb1", "bob")

    async def body():
        a1 = await subscribe(g, "pa1")
        a2 = await subscribe(g, "pa2", header=True)
        b1 = await subscribe(g, "pb1")
        ids = [publish(g, "alice", "note", {"n": i}) for i in range(20)]
        only = publish(g, "alice", "direct", {"to": "pa2"}, dev="pa2")
        bid = publish(g, "bob", "hello", json.dumps("text"))  # a string payload field holds JSON text
        for ws in (a1, a2):
            got = [await recv_json(ws) for _ in range(20)]
            assert [e["id"] for e in got] == ids
            assert [e["payload"]["n"] for e in got] == list(range(20))
            assert all(e["type"] == "note" and e["created_at_ms"] == int(e["id"].split("-")[0]) for e in got)
        e = await recv_json(a2)
        assert e["id"] == only and e["type"] == "direct"
        e = await recv_json(b1)
        assert e == {"id": bid, "type": "hello", "payload": "text", "created_at_ms": int(bid.split("-")[0])}
        # a1 got nothing else (the direct event was for pa2 only)
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(a1.recv(), 0.5)
        for ws in (a1, a2, b1):
            await ws.close()
    run(body())
    gw.wait_until(lambda: g.metric("wsgate_push_deliveries_total") == 42, what="deliveries counted")


def test_many_users_each_gets_only_its_own(make_gateway, backend):
    """Subscribers are grouped by user on each worker: 30 users with two
    streams each (spread over both workers) each get exactly their user's
    events; a user whose last stream left and who subscribes again (a new
    group) gets events again; one stream leaving keeps its sibling's."""
    g = gateway(make_gateway, backend)
    users = [f"mu{i}" for i in range(30)]
    for u in users:
        session(g, f"{u}-a", u)
        session(g, f"{u}-b", u)

    async def body():
        streams = {}
        for u in users:
            streams[u] = [await subscribe(g, f"{u}-a"), await subscribe(g, f"{u}-b")]
        ids = {u: publish(g, u, "own", {"user": u}) for u in users}
        for u in users:
            for ws in streams[u]:
                e = await recv_json(ws)
                assert e["id"] == ids[u] and e["payload"]["user"] == u, (u, e)
        # the first user's streams leave one by one
        u0 = users[0]
        await streams[u0][0].close()
        i1 = publish(g, u0, "own", {"n": 1})
        assert (await recv_json(streams[u0][1]))["id"] == i1
        await streams[u0][1].close()
        i2 = publish(g, u0, "own", {"n": 2})  # nobody listens: dropped, nothing breaks
        again = await subscribe(g, f"{u0}-a")
        i3 = publish(g, u0, "own", {"n": 3})
        # n:2 was added before this subscribe but may reach the gateway after
        # it (the stream is read asynchronously): it may come first; n:3 must.
        e = await recv_json(again)
        if e["id"] == i2:
            e = await recv_json(again)
        assert e["id"] == i3, (e, i2, i3)
        # nobody else got anything more
        for u in users[1:]:
            for ws in streams[u]:
                with pytest.raises(asyncio.TimeoutError):
                    await recv_json(ws, timeout=0.05)
                await ws.close()
        await again.close()
    run(body())


def test_refusals(make_gateway, backend):
    g = gateway(make_gateway, backend)
    session(g, "pr1", "rita")
    session(g, "pr2", "rita", status="revoked")

    async def body():
        for sid, status in (("nobody", 401), ("pr2", 403)):
            with pytest.raises(websockets.exceptions.InvalidStatusCode) as e:
                await connect(g, sid)
            assert e.value.status_code == status
    run(body())
    r = wsraw.http_request(g.port, "GET", "/ws/events", headers={
        "Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Version": "13",
        "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="})
    assert r.status == 401 and json.loads(r.body)["code"] == "missing_bearer"
    # publishing is admin only, and the fields are checked
    r = wsraw.http_request(g.admin_port, "POST", "/v1/events", body=b'{"user_id":"u","type":"t"}')
    assert r.status == 401
    assert admin_post(g, "/v1/events", {"type": "t"}).status == 400
    assert admin_post(g, "/v1/events", {"user_id": "u", "type": "t", "payload": "{not json"}).status == 400


def test_bearer_never_logged(make_gateway, backend):
    """The session bearer a stream offers (as its subprotocol or in
    Authorization) is a secret: it is echoed in the 101 (browsers need
    that) but never written to a log line, opened, refused or closed."""
    g = gateway(make_gateway, backend, GATEWAY_LOG_LEVEL="debug")
    session(g, "sec1", "sara")

    async def body():
        ws = await subscribe(g, "sec1")
        assert ws.subprotocol == "bearer-sec1"
        await ws.close()
        ws = await subscribe(g, "sec1", header=True)
        await ws.close()
        with pytest.raises(websockets.exceptions.InvalidStatusCode):
            await connect(g, "no-such-session-xyz")
    run(body())
    g.wait_log(lambda l: l.get("msg") == "ws close")
    g.wait_log(lambda l: l.get("msg") == "push subscription refused")
    text = g.stderr()
    assert "ws open" in text
    for secret in ("bearer-sec1", "bearer-no-such-session-xyz"):
        assert secret not in text, f"{secret} in the log"


def test_streams_per_session_are_capped(make_gateway, backend):
    """GATEWAY_PUSH_MAX_STREAMS_PER_SESSION (review3 F2: one session could
    open thousands of streams): one more is 429 too_many_streams with a log
    line; a stream that ends gives its place back; other sessions are not
    affected."""
    g = gateway(make_gateway, backend, GATEWAY_PUSH_MAX_STREAMS_PER_SESSION="3")
    session(g, "cap1", "carl")
    session(g, "cap2", "carl")

    async def body():
        held = [await subscribe(g, "cap1") for _ in range(3)]
        with pytest.raises(websockets.exceptions.InvalidStatusCode) as e:
            await connect(g, "cap1")
        assert e.value.status_code == 429
        other = await subscribe(g, "cap2")  # another session of the same user
        await held[0].close()

        async def again():
            try:
                return await subscribe(g, "cap1")
            except websockets.exceptions.InvalidStatusCode:
                return None
        ws = None
        for _ in range(50):  # the close is processed asynchronously
            ws = await again()
            if ws:
                break
            await asyncio.sleep(0.05)
        assert ws, "the ended stream's place was not given back"
        for w in held[1:] + [ws, other]:
            await w.close()
    run(body())
    r = wsraw.WS(g.port, path="/ws/events", protocols=["bearer-cap1"], expect_101=False)
    assert r.response.status == 101
    g.wait_log(lambda l: l.get("msg") == "push subscription refused" and l.get("reason") == "too_many_streams")


def test_resume_same_process(make_gateway, backend):
    g = gateway(make_gateway, backend)
    session(g, "pc1", "carol")

    async def body():
        ws = await subscribe(g, "pc1")
        first = publish(g, "carol", "e", {"n": 0})
        assert (await recv_json(ws))["id"] == first
        await ws.close()
        missed = [publish(g, "carol", "e", {"n": i}) for i in range(1, 6)]
        ws = await subscribe(g, "pc1", cursor=first)
        got = [(await recv_json(ws))["id"] for _ in range(5)]
        assert got == missed
        live = publish(g, "carol", "e", {"n": 6})
        assert (await recv_json(ws))["id"] == live  # no duplicate, no gap
        await ws.close()
        # Last-Event-ID works the same way
        ws = await websockets.connect(url(g), subprotocols=["bearer-pc1"], ping_interval=None,
                                      extra_headers={"Last-Event-ID": missed[-1]})
        assert (await recv_json(ws))["type"] == "gateway.server_time"
        assert (await recv_json(ws))["id"] == live
        await ws.close()
    run(body())
    assert g.metric("wsgate_push_resumes_total", result="replayed") == 2


def test_resume_while_publishing_no_gap_no_duplicate(make_gateway):
    """Streams resuming from a cursor while events are published without a
    pause: the replay and the live events meet at the high-water mark, so
    every stream gets each id exactly once, in order (an event appended
    between the replay and the stream being listed arrives both ways; the
    mark drops the second copy)."""
    import threading
    g = gateway(make_gateway, {}, GATEWAY_PUSH_QUEUE_LIMIT="100000", GATEWAY_PUSH_MAX_STREAMS_PER_SESSION="100")
    session(g, "hw1", "hank")
    first = publish(g, "hank", "e", {"n": 0})
    stop = threading.Event()
    published = [first]

    def publisher():
        n = 1
        while not stop.is_set() and n < 3000:
            published.append(publish(g, "hank", "e", {"n": n}))
            n += 1
    t = threading.Thread(target=publisher)
    t.start()

    async def body():
        streams = []
        for _ in range(24):
            streams.append(await subscribe(g, "hw1", cursor=first))
            await asyncio.sleep(0.01)
        stop.set()
        await asyncio.get_running_loop().run_in_executor(None, t.join)
        last = published[-1]
        for ws in streams:
            got = []
            while not got or got[-1] != last:
                got.append((await recv_json(ws))["id"])
            assert len(got) == len(set(got)), "a duplicate"
            assert got == published[1:], "a gap or a reordering"
            await ws.close()
    run(body())


def test_resume_replays_only_the_subscribers_own_events(make_gateway, backend):
    """A resume replays what the cursor missed of the subscriber's own
    events only: another user's events, and events aimed at another device
    session of the same user, are never replayed (review3 F1: any bearer
    with any cursor got every user's events)."""
    g = gateway(make_gateway, backend)
    session(g, "own1", "olga")
    session(g, "own2", "olga")
    session(g, "mal1", "mallory")

    async def body():
        start = publish(g, "mallory", "mine", {"n": 0})
        mine = [publish(g, "mallory", "mine", {"n": i}) for i in range(1, 4)]
        publish(g, "olga", "secret", {"otp": "424242"})
        publish(g, "olga", "secret", {"otp": "515151"}, dev="own1")
        mine.append(publish(g, "mallory", "mine", {"n": 4}))
        aimed = publish(g, "olga", "for-own2", {"n": 5}, dev="own2")
        ws = await subscribe(g, "mal1", cursor=start)
        got = [await recv_json(ws) for _ in range(len(mine))]
        assert [e["id"] for e in got] == mine
        with pytest.raises(asyncio.TimeoutError):
            await recv_json(ws, timeout=0.3)
        await ws.close()
        # the same user's other session: its user's untargeted events and its own, not own1's
        ws = await subscribe(g, "own2", cursor=start)
        got = [(await recv_json(ws))["payload"] for _ in range(2)]
        assert got == [{"otp": "424242"}, {"n": 5}], got
        with pytest.raises(asyncio.TimeoutError):
            await recv_json(ws, timeout=0.3)
        await ws.close()
        assert aimed
    run(body())


def test_resume_replays_in_steps_to_a_slow_reader(make_gateway, backend):
    """A resume larger than GATEWAY_PUSH_QUEUE_LIMIT is replayed in steps of
    at most the limit, each once the socket took the last (review3 F5: the
    whole window sat in the subscriber's queue): a reader that does not read
    for a while is not closed for overflow by a live event published
    meanwhile, and then gets every event once, in order, the live one last."""
    g = gateway(make_gateway, backend, GATEWAY_PUSH_QUEUE_LIMIT="16")
    session(g, "slow1", "sam")
    big = "x" * 60000
    first = publish(g, "sam", "big", {"n": 0, "pad": big})
    ids = [publish(g, "sam", "big", {"n": i, "pad": big}) for i in range(1, 200)]  # 12 MB: more than the sockets hold
    w = wsraw.WS(g.port, path=f"/ws/events?cursor={first}", protocols=["bearer-slow1"], timeout=30)
    import time as _t
    _t.sleep(1.0)  # not reading: the socket fills, the replay waits
    live = publish(g, "sam", "live", {"n": 200})
    _t.sleep(0.5)
    got = []
    while True:
        op, payload, _ = w.recv_message(timeout=30)
        e = json.loads(payload)
        if e["type"] == "gateway.server_time":
            continue
        got.append(e["id"])
        if e["id"] == live:
            break
    assert got == ids + [live], (len(got), got[:3], got[-3:])
    w.close()
    assert g.metric("wsgate_push_overflows_total") == 0


def test_too_old_cursor_resync(make_gateway, backend):
    g = gateway(make_gateway, backend)
    session(g, "pd1", "dave")

    async def body():
        ws = await subscribe(g, "pd1", cursor="1-0")
        e = await recv_json(ws)
        assert e["type"] == "gateway.resync_required" and e["payload"]["cursor"] == "1-0"
        with pytest.raises(websockets.exceptions.ConnectionClosed) as cl:
            await asyncio.wait_for(ws.recv(), 5)
        assert cl.value.rcvd.code == 4409
    run(body())
    assert g.metric("wsgate_push_resumes_total", result="resync") == 1


def test_revocation_closes_streams(make_gateway, backend):
    g = gateway(make_gateway, backend)
    session(g, "pe1", "erin")

    async def body():
        s1 = await subscribe(g, "pe1")
        s2 = await subscribe(g, "pe1", header=True)
        session(g, "pe1", "erin", version=2, status="revoked")
        for ws in (s1, s2):
            with pytest.raises(websockets.exceptions.ConnectionClosed) as cl:
                while True:
                    await asyncio.wait_for(ws.recv(), 5)
            assert cl.value.rcvd.code == 1008 and cl.value.rcvd.reason == "device session is revoked"
        with pytest.raises(websockets.exceptions.InvalidStatusCode) as e:
            await connect(g, "pe1")
        assert e.value.status_code == 403
    run(body())
    g.wait_log(lambda l: l.get("msg") == "ws close" and l.get("cause") == "revoked")


def test_new_bearer_or_user_ends_the_old_streams(make_gateway, backend):
    """A snapshot that rotates the session's bearer or moves it to another
    user ends the streams opened before it (1008; review3 F4: they kept
    receiving the old user's events); the old bearer opens nothing more,
    the new one does; a snapshot that changes neither leaves them open."""
    g = gateway(make_gateway, backend)
    session(g, "rot1", "alice")

    def post_snap(version, user, bearer):
        body = {"device_session_id": "rot1", "user_id": user, "status": "active", "version": version,
                "token_sha256": hashlib.sha256(bearer.encode()).hexdigest()}
        assert admin_post(g, "/v1/sessions", body).status == 202

    async def ended(ws):
        with pytest.raises(websockets.exceptions.ConnectionClosed) as e:
            while True:
                await recv_json(ws, timeout=10)
        return e.value.rcvd

    async def body():
        old = await subscribe(g, "rot1")
        post_snap(2, "alice", "bearer-rot1-b")
        rc = await ended(old)
        assert rc.code == 1008 and rc.reason == "device session credentials changed", rc
        with pytest.raises(websockets.exceptions.InvalidStatusCode) as e:
            await connect(g, "rot1")
        assert e.value.status_code == 401
        new = await websockets.connect(url(g), subprotocols=["bearer-rot1-b"], ping_interval=None)
        assert (await recv_json(new))["type"] == "gateway.server_time"
        post_snap(3, "bob", "bearer-rot1-b")  # moved to another user
        rc = await ended(new)
        assert rc.code == 1008 and rc.reason == "device session credentials changed", rc
        again = await websockets.connect(url(g), subprotocols=["bearer-rot1-b"], ping_interval=None)
        assert (await recv_json(again))["type"] == "gateway.server_time"
        post_snap(4, "bob", "bearer-rot1-b")  # nothing the stream depends on changed
        eid = publish(g, "bob", "still", {"n": 1})
        assert (await recv_json(again))["id"] == eid
        await again.close()
    run(body())


def test_overflow_then_resume(make_gateway, backend):
    g = gateway(make_gateway, backend, GATEWAY_PUSH_QUEUE_LIMIT="50")
    session(g, "pf1", "frank")
    big = "x" * 60000

    async def body():
        # a subscriber that does not read: a tiny receive buffer and no reads
        ws = await subscribe(g, "pf1", max_size=None, read_limit=2**16, max_queue=1)
        ws.transport.pause_reading()
        last_seen = None
        ids = []
        for i in range(400):
            ids.append(publish(g, "frank", "big", {"n": i, "pad": big}))
            if g.metric("wsgate_push_overflows_total") >= 1:
                break
        gw.wait_until(lambda: g.metric("wsgate_push_overflows_total") == 1, what="overflow")
        ws.transport.resume_reading()
        got = []
        with pytest.raises(websockets.exceptions.ConnectionClosed) as cl:
            while True:
                got.append(await recv_json(ws, timeout=10))
        assert cl.value.rcvd.code == 1013 and cl.value.rcvd.reason == "push stream overflowed"
        assert [e["id"] for e in got] == ids[:len(got)]
        last_seen = got[-1]["id"] if got else None
        # resume from the last event received: everything else, in order
        ws = await subscribe(g, "pf1", cursor=last_seen or "0-0", max_size=None) if last_seen else None
        if ws is None:
            return
        rest = [(await recv_json(ws, timeout=10))["id"] for _ in range(len(ids) - len(got))]
        assert rest == ids[len(got):]
        await ws.close()
    run(body())
    g.wait_log(lambda l: l.get("msg") == "ws close" and l.get("cause") == "overflow")


def test_shutdown_message_then_1001(make_gateway, backend):
    g = gateway(make_gateway, backend)
    session(g, "pg1", "gina")

    async def body():
        ws = await subscribe(g, "pg1")
        g.signal(signal.SIGTERM)
        e = await recv_json(ws, timeout=10)
        assert e["type"] == "gateway.shutdown"
        assert 500 <= e["payload"]["reconnect_delay_ms"] < 5000
        with pytest.raises(websockets.exceptions.ConnectionClosed) as cl:
            await asyncio.wait_for(ws.recv(), 10)
        assert cl.value.rcvd.code == 1001
    run(body())
    assert g.wait(10) == 0


def test_malformed_entries_are_dropped(make_gateway, redis_server):
    tag = os.urandom(4).hex()
    stream = f"ev-{tag}"
    g = make_gateway(env=redis_server.env(GATEWAY_ADMIN_TOKEN=ADMIN, GATEWAY_SESSION_EVENTS_REDIS_STREAM=f"s-{tag}",
                                          GATEWAY_CLIENT_EVENTS_REDIS_STREAM=stream))
    session(g, "ph1", "hank")

    async def body():
        ws = await subscribe(g, "ph1")
        redis_server.cli("XADD", stream, "*", "type", "no-user")
        redis_server.cli("XADD", stream, "*", "user_id", "hank", "type", "t", "payload", "{bad json")
        good = redis_server.cli("XADD", stream, "*", "user_id", "hank", "type", "ok", "payload", '{"a":1}').strip()
        e = await recv_json(ws)
        assert e["id"] == good and e["payload"] == {"a": 1}
        await ws.close()
    run(body())
    assert g.metric("wsgate_push_malformed_entries_total") == 2
    assert g.alive


def test_resume_on_another_and_a_restarted_process(make_gateway, redis_server):
    tag = os.urandom(4).hex()
    env = redis_server.env(GATEWAY_ADMIN_TOKEN=ADMIN, GATEWAY_SESSION_EVENTS_REDIS_STREAM=f"s-{tag}",
                           GATEWAY_CLIENT_EVENTS_REDIS_STREAM=f"ev-{tag}")
    g1 = make_gateway(env=env)
    g2 = make_gateway(env=env)
    session(g1, "pi1", "ivy")
    gw.wait_until(lambda: wsraw.http_request(g2.admin_port, "GET", "/v1/sessions/pi1",
                                             headers={"Authorization": f"Bearer {ADMIN}"}).status == 200)

    async def body():
        ws = await subscribe(g1, "pi1")
        first = publish(g1, "ivy", "e", {"n": 0})
        assert (await recv_json(ws))["id"] == first
        await ws.close()
        missed = [publish(g1, "ivy", "e", {"n": i}) for i in range(1, 4)]
        ws = await subscribe(g2, "pi1", cursor=first)
        assert [(await recv_json(ws))["id"] for _ in range(3)] == missed
        await ws.close()
        # a process started after the events rebuilds its history from the stream
        g3 = make_gateway(env=env)
        gw.wait_until(lambda: wsraw.http_request(g3.admin_port, "GET", "/v1/sessions/pi1",
                                                 headers={"Authorization": f"Bearer {ADMIN}"}).status == 200)
        ws = await subscribe(g3, "pi1", cursor=first)
        assert [(await recv_json(ws))["id"] for _ in range(3)] == missed
        await ws.close()
    run(body())


def test_publish_cli(make_gateway, backend):
    g = gateway(make_gateway, backend)
    session(g, "pj1", "jane")
    env = {"GATEWAY_ADMIN_HTTP_ADDR": f"127.0.0.1:{g.admin_port}", "GATEWAY_ADMIN_TOKEN": ADMIN}

    async def body():
        ws = await subscribe(g, "pj1")
        r = gw.run_cli(["publish", "--user", "jane", "--type", "cli", "--payload", '{"k":[1]}', "--session", "pj1"],
                       env=env)
        assert r.returncode == 0, r.stderr
        eid = json.loads(r.stdout)["id"]
        e = await recv_json(ws)
        assert e["id"] == eid and e["type"] == "cli" and e["payload"] == {"k": [1]}
        await ws.close()
    run(body())
    r = gw.run_cli(["publish", "--user", "jane", "--type", "cli", "--payload", "{bad"], env=env)
    assert r.returncode == 1 and b"400" in r.stderr
    r = gw.run_cli(["publish", "--user", "jane"], env=env)
    assert r.returncode == 2
    r = gw.run_cli(["publish", "--user", "jane", "--type", "t"], env=dict(env, GATEWAY_ADMIN_TOKEN="wrong"))
    assert r.returncode == 1 and b"401" in r.stderr


def presence(g, user):
    r = wsraw.http_request(g.admin_port, "GET", f"/v1/presence/{user}", headers={"Authorization": f"Bearer {ADMIN}"})
    assert r.status == 200, r
    j = json.loads(r.body)
    assert j["user_id"] == user
    return j["connections"]


def test_presence(make_gateway, backend):
    g = gateway(make_gateway, backend)
    session(g, "pk1", "kim")
    session(g, "pk2", "kim")

    async def body():
        assert presence(g, "kim") == {}
        s1 = await subscribe(g, "pk1")
        s2 = await subscribe(g, "pk2")
        gw.wait_until(lambda: len(presence(g, "kim")) == 2, what="two connections present")
        for field, v in presence(g, "kim").items():
            assert field.startswith(v["instance_id"] + ":")
            assert v["instance_id"].endswith(f"-{g.pid}")
            assert v["connected_at_ms"] <= v["last_seen_ms"]
        await s1.close()
        gw.wait_until(lambda: len(presence(g, "kim")) == 1, what="one connection left")
        await s2.close()
        gw.wait_until(lambda: presence(g, "kim") == {}, what="none left")
    run(body())


def test_presence_refresh_is_constant_work_on_redis(make_gateway, make_redis):
    """Refreshing N connections' presence is N O(1) calls: no pass over the
    user's hash (HGETALL) per refresh (review3 F2: each refresh decoded
    every field, N^2 per round on the Redis all processes share). A get
    still prunes and lists."""
    r = make_redis()
    g = make_gateway(env=r.env(GATEWAY_ADMIN_TOKEN=ADMIN, GATEWAY_TEST_PRESENCE_TTL="1500ms",
                               GATEWAY_PUSH_MAX_STREAMS_PER_SESSION="100"))
    session(g, "pp1", "pam")

    def hgetall_calls():
        for line in r.cli("INFO", "commandstats").splitlines():
            if line.startswith("cmdstat_hgetall:"):
                return int(line.split("calls=")[1].split(",")[0])
        return 0

    async def body():
        streams = [await subscribe(g, "pp1") for _ in range(70)]
        gw.wait_until(lambda: len(presence(g, "pam")) == 70, what="70 connections present")
        r.cli("CONFIG", "RESETSTAT")
        await asyncio.sleep(2.0)  # about four refresh rounds: 280 presence writes
        calls = hgetall_calls()
        assert calls == 0, f"{calls} passes over the hash during refreshes"
        assert len(presence(g, "pam")) == 70
        assert hgetall_calls() == 1  # the get prunes and lists
        for ws in streams:
            await ws.close()
    run(body())


def test_presence_of_a_dead_process_expires(make_gateway, redis_server):
    tag = os.urandom(4).hex()
    env = redis_server.env(GATEWAY_ADMIN_TOKEN=ADMIN, GATEWAY_SESSION_EVENTS_REDIS_STREAM=f"s-{tag}",
                           GATEWAY_CLIENT_EVENTS_REDIS_STREAM=f"ev-{tag}", GATEWAY_REDIS_KEY_PREFIX=f"p{tag}:",
                           GATEWAY_TEST_PRESENCE_TTL="1500ms")
    g1 = make_gateway(env=env)
    g2 = make_gateway(env=env)
    session(g1, "pl1", "lee")
    gw.wait_until(lambda: wsraw.http_request(g2.admin_port, "GET", "/v1/sessions/pl1",
                                             headers={"Authorization": f"Bearer {ADMIN}"}).status == 200)

    async def body():
        ws1 = await subscribe(g1, "pl1")
        ws2 = await subscribe(g2, "pl1")
        gw.wait_until(lambda: len(presence(g2, "lee")) == 2, what="both processes' connections")
        # The refresh timer keeps entries alive past the TTL.
        await asyncio.sleep(2.0)
        assert len(presence(g2, "lee")) == 2
        g1.kill()
        # g1's entry is no longer refreshed: it goes; g2's stays.
        gw.wait_until(lambda: len(presence(g2, "lee")) == 1, timeout=6, what="the dead process's entry expired")
        (v,) = presence(g2, "lee").values()
        assert v["instance_id"].endswith(f"-{g2.pid}")
        # Every process dead: nobody prunes, the key's TTL ends it.
        g2.kill()
        assert redis_server.cli("EXISTS", f"p{tag}:presence:lee").strip() == "1"
        gw.wait_until(lambda: redis_server.cli("EXISTS", f"p{tag}:presence:lee").strip() == "0", timeout=6,
                      what="the key expired")
        ws1.transport.abort()
        ws2.transport.abort()
    run(body())
