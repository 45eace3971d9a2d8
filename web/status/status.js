// The wsgate status page: polls /status.json (same origin) and draws it.
// Data is only ever written as text (textContent), never as HTML.
'use strict';
(function () {
  const KEY = 'wsgate.adminToken';
  const params = new URLSearchParams(location.search);
  const INTERVAL = Math.max(250, Number(params.get('interval')) || 2000);
  const COLORS = ['#5b9bd5', '#e5534b', '#4caf50', '#e0a030', '#b07cd8', '#46b3b3', '#d87ca8', '#9aa0a6'];
  const $ = (id) => document.getElementById(id);
  let timer = null;

  function text(id, v) { const e = $(id); if (e) e.textContent = String(v); }

  function duration(s) {
    const d = Math.floor(s / 86400), h = Math.floor(s % 86400 / 3600), m = Math.floor(s % 3600 / 60);
    return (d ? d + 'd ' : '') + (d || h ? h + 'h ' : '') + m + 'm ' + (s % 60) + 's';
  }

  function rows(tbodyId, list, attr) {
    const tb = document.querySelector('#' + tbodyId + ' tbody');
    const trs = list.map((cells) => {
      const tr = document.createElement('tr');
      cells.forEach((c, i) => {
        const td = document.createElement('td');
        td.textContent = String(c);
        if (attr && i === cells.length - 1) td.setAttribute(attr, String(cells[0]));
        tr.appendChild(td);
      });
      return tr;
    });
    tb.replaceChildren(...trs);
  }

  // A line plot of per-second values (oldest first) over the last 15 minutes.
  function plot(id, series, capacity) {
    const cv = $(id), g = cv.getContext('2d');
    const w = cv.width, h = cv.height, pad = 22;
    g.clearRect(0, 0, w, h);
    let max = 1;
    series.forEach((s) => s.values.forEach((v) => { if (v > max) max = v; }));
    g.strokeStyle = '#2a3340'; g.fillStyle = '#8a94a6'; g.font = '10px sans-serif';
    g.beginPath(); g.moveTo(pad, 4); g.lineTo(pad, h - pad); g.lineTo(w - 4, h - pad); g.stroke();
    g.fillText(String(max), 2, 12); g.fillText('0', 2, h - pad);
    g.fillText('-15m', pad, h - 6); g.fillText('now', w - 26, h - 6);
    const x = (i, n) => pad + (w - pad - 4) * (capacity - n + i) / (capacity - 1);
    const y = (v) => (h - pad) - (h - pad - 6) * v / max;
    series.forEach((s) => {
      const n = s.values.length;
      if (!n) return;
      g.strokeStyle = s.color; g.lineWidth = 1.5; g.beginPath();
      s.values.forEach((v, i) => { if (i) g.lineTo(x(i, n), y(v)); else g.moveTo(x(i, n), y(v)); });
      g.stroke();
    });
  }

  const last = (a) => (a.length ? a[a.length - 1] : 0);

  function render(d) {
    text('version', d.version); text('pid', d.pid); text('uptime', duration(d.uptime_s));
    const st = $('state');
    st.dataset.state = d.draining ? 'draining' : 'ok';
    st.textContent = d.draining ? 'draining' : 'serving';
    text('updated', new Date(d.now_ms).toLocaleTimeString());
    text('ws-open', d.connections.websockets);
    text('conn-public', d.connections.public);
    text('conn-admin', d.connections.admin);
    const be = $('backend');
    be.dataset.healthy = String(d.backend.healthy);
    be.textContent = d.backend.kind + (d.backend.healthy ? ' healthy' : ' unhealthy');
    text('backend-reason', d.backend.reason || '');
    text('push-subscribers', d.push.subscribers);
    text('push-deliveries', d.push.deliveries);
    text('push-overflows', d.push.overflows);
    text('tls', d.tls.enabled ? (d.tls.last_reload_ok ? 'on' : 'on (last reload refused)') : 'off');
    text('tls-detail', d.tls.enabled ? 'serial ' + d.tls.serial + ' · until ' + d.tls.not_after : '');

    const routes = Object.keys(d.connections.by_route).sort().map((r) => [r, d.connections.by_route[r]]);
    rows('routes', routes, 'data-route');
    const closes = Object.keys(d.totals.closes).sort().map((c) => [c, d.totals.closes[c]]);
    rows('closes', closes, 'data-cause');
    rows('workers', d.workers.map((w) => [w.id, w.clients, w.cpu_percent.toFixed(1) + '%']));
    rows('config', Object.keys(d.config).map((k) => [k, String(d.config[k])]));

    const cap = d.series.capacity;
    plot('plot-handshakes', [{ values: d.series.handshakes, color: COLORS[0] }], cap);
    plot('plot-messages', [{ values: d.series.messages, color: COLORS[2] }], cap);
    const causes = Object.keys(d.series.closes).sort();
    plot('plot-closes', causes.map((c, i) => ({ values: d.series.closes[c], color: COLORS[i % COLORS.length] })), cap);
    const legend = causes.filter((c) => d.series.closes[c].some((v) => v > 0)).map((c) => {
      const s = document.createElement('span');
      s.textContent = c;
      s.style.color = COLORS[causes.indexOf(c) % COLORS.length];
      return s;
    });
    $('legend-closes').replaceChildren(...legend);
    text('now-handshakes', last(d.series.handshakes));
    text('now-messages', last(d.series.messages));
    text('now-closes', causes.reduce((a, c) => a + last(d.series.closes[c]), 0));
    document.body.dataset.loaded = String(d.now_ms);
  }

  function askToken(message) {
    $('main').hidden = true;
    $('auth').hidden = false;
    text('auth-error', message || '');
    $('token').focus();
  }

  async function poll() {
    clearTimeout(timer);
    const token = sessionStorage.getItem(KEY);
    const headers = token ? { Authorization: 'Bearer ' + token } : {};
    try {
      const r = await fetch('/status.json', { headers, cache: 'no-store' });
      if (r.status === 401) {
        if (token) sessionStorage.removeItem(KEY);
        askToken(token ? 'That token was refused.' : '');
        return; // no polling until a token is given
      }
      if (!r.ok) throw new Error('HTTP ' + r.status);
      const d = await r.json();
      $('auth').hidden = true;
      $('main').hidden = false;
      render(d);
    } catch (e) {
      const st = $('state');
      st.dataset.state = 'error';
      st.textContent = 'unreachable (' + e.message + ')';
    }
    timer = setTimeout(poll, INTERVAL);
  }

  $('auth').addEventListener('submit', (ev) => {
    ev.preventDefault();
    const v = $('token').value.trim();
    if (!v) return;
    sessionStorage.setItem(KEY, v);
    $('token').value = '';
    poll();
  });
  poll();
})();
