"""The status page on the admin listener: /status.json's shape and numbers
(against /metrics, exact), the per-second rings, the admin token, secrets
redacted, and the page's files served from the binary with a CSP."""

import json
import re

import gw
import wsraw

TOKEN = "status-admin-token-9f3e"
SECRETS = {"GATEWAY_ADMIN_TOKEN": TOKEN, "GATEWAY_AGENT_SECRET": "agent-secret-77aa",
           "GATEWAY_REDIS_PASSWORD": "redis-pass-31cc"}


def status(g, token=None):
    h = {"Authorization": f"Bearer {token}"} if token else None
    return wsraw.http_request(g.admin_port, "GET", "/status.json", headers=h)


def test_status_json_shape_and_numbers_match_metrics(make_gateway):
    g = make_gateway(env={"GATEWAY_WORKERS": "2"})
    r = status(g)  # no token configured on a loopback admin listener: open
    assert r.status == 200 and r.header("Content-Type") == "application/json"
    d = r.json()
    assert set(d) >= {"version", "pid", "uptime_s", "started_ms", "now_ms", "draining", "config", "connections",
                      "totals", "series", "push", "backend", "tls", "routes", "workers"}
    assert d["pid"] == g.pid and d["draining"] is False and d["version"]
    assert d["backend"] == {"kind": "embedded", "healthy": True, "reason": None}
    assert d["tls"] == {"enabled": False}
    assert [w["id"] for w in d["workers"]] == [0, 1]
    assert d["series"]["capacity"] == 900 and d["series"]["interval_s"] == 1
    assert set(d["push"]) == {"subscribers", "deliveries", "overflows"}

    socks = [g.ws() for _ in range(3)]
    try:
        for i, w in enumerate(socks):
            for k in range(5):
                w.send_text(f"m{i}.{k}")
                assert w.recv_message()[1] == f"m{i}.{k}".encode()
        d = status(g).json()
        m = g.metrics()
        assert d["connections"]["by_route"]["/probe/ws"] == 3 == \
            gw.metric_value(m, "wsgate_ws_connections", route="/probe/ws")
        assert d["connections"]["websockets"] == 3 == gw.metric_value(m, "ws_connections")
        assert d["totals"]["handshakes"]["ok"] == 3
        # The workers' client counts (published each second) add up.
        gw.wait_until(lambda: sum(w["clients"] for w in status(g).json()["workers"]) == 3, timeout=10,
                      what="worker load")
        for w in socks[:2]:
            w.send_close(1000)
            assert w.expect_close().close_code == 1000
            w.close()
        gw.wait_until(lambda: status(g).json()["connections"]["by_route"]["/probe/ws"] == 1, timeout=10)
    finally:
        for w in socks:
            w.close()

    # The rings add up to the totals once the last second is sampled: 3
    # handshakes, 2 graceful closes, 30 messages (15 in, 15 echoed) + the
    # third socket's close; every per-second value is a count.
    def settled():
        d = status(g).json()
        m = g.metrics()
        s = d["series"]
        return (sum(s["handshakes"]) == 3 and sum(s["closes"].get("graceful", [])) == 2 and
                sum(s["messages"]) == d["totals"]["messages"] ==
                sum(v for (n, _), v in m.items() if n == "wsgate_ws_messages_total") == 30) and d
    d = gw.wait_until(settled, timeout=15, what="rings settled")
    s = d["series"]
    assert len(s["handshakes"]) == len(s["messages"]) <= 900
    assert all(isinstance(v, int) and v >= 0 for v in s["handshakes"] + s["messages"])
    assert d["totals"]["closes"]["graceful"] == 2


def test_status_needs_the_admin_token_and_redacts_secrets(make_gateway):
    g = make_gateway(env=dict(SECRETS))
    r = status(g)
    assert r.status == 401 and r.json()["code"] == "unauthorized"
    assert r.header("WWW-Authenticate") == "Bearer"
    assert status(g, "wrong-token").status == 401
    r = status(g, TOKEN)
    assert r.status == 200
    text = r.body.decode()
    for v in SECRETS.values():
        assert v not in text
    cfg = r.json()["config"]
    assert cfg["admin_token"] == cfg["agent_secret"] == cfg["redis_password"] == "(redacted)"
    # Metrics stay as they were (scrapes need no token).
    assert g.admin_get("/metrics").status == 200
    # The status data is not on the public listener.
    assert g.get("/status.json").status == 404


def test_status_page_files_from_the_binary_with_csp(make_gateway):
    g = make_gateway(env={"GATEWAY_ADMIN_TOKEN": TOKEN})
    want = {"/status": "text/html; charset=utf-8", "/status/status.js": "text/javascript; charset=utf-8",
            "/status/status.css": "text/css; charset=utf-8"}
    bodies = {}
    for path, ctype in want.items():
        r = g.admin_get(path)  # the page carries no data: no token needed
        assert r.status == 200 and r.header("Content-Type") == ctype, (path, r)
        csp = r.header("Content-Security-Policy")
        assert "default-src 'none'" in csp and "script-src 'self'" in csp and "connect-src 'self'" in csp
        assert r.header("X-Content-Type-Options") == "nosniff"
        bodies[path] = r.body.decode()
    # Byte for byte the files in web/status/, and nothing from another origin.
    import os
    web = os.path.join(os.path.dirname(__file__), "..", "..", "web", "status")
    for path, name in (("/status", "index.html"), ("/status/status.js", "status.js"),
                       ("/status/status.css", "status.css")):
        with open(os.path.join(web, name)) as f:
            assert bodies[path] == f.read()
        assert not re.search(r"(https?:)?//[a-z0-9]", re.sub(r"//[^\n]*\n", "", bodies[path]).replace(
            "Bearer ", "")), path
    assert g.admin_get("/status/nope.js").status == 404
    assert json.loads(status(g, TOKEN).body)["version"]
