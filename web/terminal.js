/* terminal.js: the browser side of the wsgate terminal.
 *
 * Finds everything at run time (nothing is baked in at build time):
 *   GET config.json -> {ws_base_url, token_url, subprotocol, demo, demo_allocation}
 *   POST token_url {allocation_id, session_id} -> {token, url, session_id}
 * then opens new WebSocket(url, ["wsgate.terminal.v1", token]): the token
 * rides in Sec-WebSocket-Protocol, never in the URL. Binary frames carry
 * terminal bytes both ways; resizes go as {"type":"resize","cols","rows"}.
 * After a drop it reconnects by itself with a fresh token and the same
 * session id, so the agent re-attaches the same shell and replays its
 * recent output. Query parameters: ?allocation=ID&session=ID. */
(function () {
  "use strict";
  const statusEl = document.getElementById("status");
  const params = new URLSearchParams(location.search);
  const enc = new TextEncoder();

  function status(state, text) {
    statusEl.dataset.state = state;
    statusEl.textContent = text || state;
  }

  function randomId() {
    const b = new Uint8Array(16);
    crypto.getRandomValues(b);
    return Array.from(b, (x) => x.toString(16).padStart(2, "0")).join("");
  }

  const term = new Terminal({ cursorBlink: true, scrollback: 5000, fontFamily: "monospace" });
  const fit = new FitAddon.FitAddon();
  term.loadAddon(fit);
  term.open(document.getElementById("terminal"));
  fit.fit();
  window.wsgateTerminal = term; /* for tests and debugging */
  /* Drops the connection as a network cut would (tests, debugging). */
  window.wsgateDrop = () => ws && ws.close(4000, "dropped");

  let cfg = null, alloc = "", sessionId = null, ws = null, attempts = 0, everOpen = false, exited = false;

  function wsUrl(answer) {
    if (answer.url && /^wss?:\/\//.test(answer.url)) return answer.url;
    const base = cfg.ws_base_url || ((location.protocol === "https:" ? "wss:" : "ws:") + "//" + location.host);
    const path = answer.url && answer.url.startsWith("/") ? answer.url : "/ws/terminal/" + encodeURIComponent(alloc);
    return base.replace(/\/+$/, "") + path;
  }

  async function freshToken() {
    /* The ids go in the query too: the gateway's demo issuer reads no body. */
    const u = new URL(cfg.token_url, location.href);
    u.searchParams.set("allocation_id", alloc);
    u.searchParams.set("session_id", sessionId);
    const r = await fetch(u.toString(), {
      method: "POST",
      credentials: "include",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ allocation_id: alloc, session_id: sessionId }),
    });
    if (!r.ok) throw new Error("token endpoint answered " + r.status);
    return r.json();
  }

  function sendResize() {
    if (ws && ws.readyState === WebSocket.OPEN)
      ws.send(JSON.stringify({ type: "resize", cols: term.cols, rows: term.rows }));
  }

  function scheduleReconnect() {
    attempts++;
    const delay = Math.min(500 * 2 ** Math.min(attempts - 1, 5), 10000);
    status("reconnecting", "reconnecting in " + (delay / 1000).toFixed(1) + "s");
    setTimeout(connect, delay);
  }

  async function connect() {
    let answer;
    try {
      answer = await freshToken();
    } catch (e) {
      status("error", String(e.message || e));
      scheduleReconnect();
      return;
    }
    if (answer.session_id) {
      sessionId = answer.session_id;
      sessionStorage.setItem("wsgate.session." + alloc, sessionId);
    }
    const sock = new WebSocket(wsUrl(answer), [cfg.subprotocol || "wsgate.terminal.v1", answer.token]);
    sock.binaryType = "arraybuffer";
    ws = sock;
    let opened = false;
    sock.onopen = () => {
      opened = true;
      attempts = 0;
      /* A re-attach replays the recent output: start from a clean screen. */
      if (everOpen) term.reset();
      everOpen = true;
      status("connected", "connected (" + alloc + ")");
      fit.fit();
      sendResize();
      term.focus();
    };
    sock.onmessage = (ev) => {
      if (typeof ev.data !== "string") term.write(new Uint8Array(ev.data));
    };
    sock.onclose = (ev) => {
      if (ws !== sock) return;
      ws = null;
      if (ev.code === 1000 && /^(exit|signal) /.test(ev.reason)) {
        exited = true;
        sessionId = null;
        sessionStorage.removeItem("wsgate.session." + alloc);
        status("exited", "session ended (" + ev.reason + "): press Enter for a new one");
        term.write("\r\n\x1b[2m[" + ev.reason + "]\x1b[0m\r\n");
        return;
      }
      if (!opened && ev.code === 1006) status("error", "connection refused");
      scheduleReconnect();
    };
  }

  term.onData((d) => {
    if (exited) {
      if (d === "\r") {
        exited = false;
        term.reset();
        connect();
      }
      return;
    }
    if (ws && ws.readyState === WebSocket.OPEN) ws.send(enc.encode(d));
  });
  term.onBinary((d) => {
    if (ws && ws.readyState === WebSocket.OPEN) ws.send(Uint8Array.from(d, (c) => c.charCodeAt(0)));
  });
  term.onResize(sendResize);
  window.addEventListener("resize", () => fit.fit());

  (async () => {
    try {
      cfg = await (await fetch("config.json", { cache: "no-store" })).json();
    } catch (e) {
      status("error", "cannot load config.json");
      return;
    }
    alloc = params.get("allocation") || cfg.demo_allocation || "";
    if (!alloc) {
      status("error", "no allocation: open /terminal/?allocation=ID");
      return;
    }
    if (!cfg.token_url) {
      status("error", "no token endpoint configured (GATEWAY_TERMINAL_TOKEN_URL)");
      return;
    }
    sessionId = params.get("session") || sessionStorage.getItem("wsgate.session." + alloc) || randomId();
    connect();
  })();
})();
