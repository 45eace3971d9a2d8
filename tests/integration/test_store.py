"""The asynchronous store seam: a request that needs the store waits for it
in an explicit phase with a deadline (GATEWAY_STORE_TIMEOUT). The test hook
GATEWAY_TEST_STORE_DELAY makes the embedded store answer late, as a slow
remote store would.
"""

import json
import time

import gw
import wsraw
from test_terminal import SECRET, WEB_DIR, agent, connect, events, mint, refused  # noqa: F401 (agent: fixture)


def test_waits_for_a_late_store(make_gateway, agent):  # noqa: F811
    """Answers that come within the deadline are served after the wait: a
    mint, a pipelined request behind it on the same connection, and the
    consume that lets a terminal through."""
    g = make_gateway(env={"GATEWAY_AGENT_SECRET": SECRET, "GATEWAY_TERMINAL_WEB_DIR": WEB_DIR,
                          "GATEWAY_TEST_STORE_DELAY": "300ms", "GATEWAY_STORE_TIMEOUT": "10s"})
    warns = [l for l in g.logs() if l.get("variable") == "GATEWAY_TEST_STORE_DELAY"]
    assert [(l["level"], l["delay_ms"]) for l in warns] == [("warn", 300)], warns
    a = agent()
    body = json.dumps(dict(allocation_id="late-1", upstream=a.url, user_id="alice")).encode()
    c = wsraw.Conn("127.0.0.1", g.admin_port, timeout=10)
    t0 = time.monotonic()
    c.send(b"POST /v1/terminal/tokens HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
           b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body +
           b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    r1 = c.read_response(timeout=10)
    waited = time.monotonic() - t0
    r2 = c.read_response(timeout=10)
    c.close()
    assert r1.status == 201, r1
    assert waited >= 0.3, waited
    assert r2.status == 200, r2  # the pipelined request waited in the buffer, then was served
    tok = r1.json()["token"]

    t0 = time.monotonic()
    ws = connect(g, "late-1", tok)
    assert ws.response.status == 101, ws.response
    assert time.monotonic() - t0 >= 0.3
    ws.close()
    assert g.stop() == 0, g.stderr()[-3000:]


def test_store_deadline(make_gateway):
    """A store that does not answer by the deadline: 503 service_unavailable
    in the envelope, a log line with the correlation id; the late answer is
    dropped, and a client that leaves while waiting costs nothing."""
    g = make_gateway(env={"GATEWAY_AGENT_SECRET": SECRET, "GATEWAY_TERMINAL_WEB_DIR": WEB_DIR,
                          "GATEWAY_TEST_STORE_DELAY": "1500ms", "GATEWAY_STORE_TIMEOUT": "200ms"})
    # A consume (well-formed token, so the store is asked).
    before = events(g, "rejected", "service_unavailable")
    t0 = time.monotonic()
    ws = connect(g, "dl-1", "A" * 43)
    took = time.monotonic() - t0
    refused(g, ws, 503, "service_unavailable")
    # Not before the deadline (less 10 ms: the loop's clock has millisecond
    # granularity), and well before the store's late answer at 1.5 s.
    assert 0.19 <= took < 1.4, took
    corr = ws.response.header("X-Correlation-ID")
    line = g.wait_log(lambda l: l.get("msg") == "terminal refused" and l.get("correlation_id") == corr)[0]
    assert line["reason"] == "service_unavailable", line
    assert events(g, "rejected", "service_unavailable") == before + 1

    # A mint.
    r = mint(g, "dl-2", "ws://127.0.0.1:1/", headers={"X-Correlation-ID": "mint-deadline-1"})
    assert r.status == 503, r
    j = json.loads(r.body)
    assert j["code"] == "service_unavailable" and j["correlation_id"] == "mint-deadline-1", j
    g.wait_log(lambda l: l.get("msg") == "terminal token refused" and l.get("correlation_id") == "mint-deadline-1"
               and l.get("reason") == "service_unavailable")

    # Clients that leave while their request waits (FIN, and RST).
    for leave in ("close", "reset"):
        c = wsraw.Conn("127.0.0.1", g.port, timeout=5)
        c.send(b"GET /ws/terminal/dl-3 HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
               b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
               b"Sec-WebSocket-Protocol: wsgate.terminal.v1, " + b"B" * 43 + b"\r\n\r\n")
        time.sleep(0.05)
        getattr(c, leave)()

    # The admin APIs that wait for the store (one shared wait): 503 with its
    # message at the deadline, and a client that leaves while waiting.
    sess = json.dumps({"device_session_id": "dl-s", "user_id": "u", "status": "active", "version": 1,
                       "token_sha256": "ab" * 32}).encode()
    ev = json.dumps({"user_id": "u", "type": "t"}).encode()
    for path, body, why in (("/v1/sessions", sess, "the session store did not answer in time"),
                            ("/v1/events", ev, "the event stream did not answer in time")):
        r = wsraw.http_request(g.admin_port, "POST", path, body=body, headers={"Content-Type": "application/json"})
        assert r.status == 503 and json.loads(r.body)["message"] == why, (path, r)
    r = wsraw.http_request(g.admin_port, "GET", "/v1/presence/u")
    assert r.status == 503 and json.loads(r.body)["message"] == "the store did not answer in time", r
    for leave in ("close", "reset"):
        c = wsraw.Conn("127.0.0.1", g.admin_port, timeout=5)
        c.send(b"POST /v1/sessions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
               b"Content-Length: %d\r\n\r\n" % len(sess) + sess)
        time.sleep(0.05)
        getattr(c, leave)()

    time.sleep(1.8)  # every late answer has come (and was dropped)
    assert g.get("/healthz").status == 200
    assert g.stop() == 0, g.stderr()[-3000:]
