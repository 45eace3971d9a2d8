// The status page in a real browser: Debian's chromium (never a downloaded
// one) driven by playwright-core opens /status on a real gateway's admin
// listener with GATEWAY_ADMIN_TOKEN set. The page asks for the token once,
// keeps it in sessionStorage, and shows numbers that must match /metrics
// while WebSockets (opened by another page of the same browser) open and
// close. No request leaves the admin origin and the CSP reports nothing. A
// screenshot is saved as build/status-page.png.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdirSync } from 'node:fs';
import { join, resolve, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';
import { startGateway } from '../node/gateway.mjs';
import { launchChromium, skip } from './chromium.mjs';

const here = dirname(fileURLToPath(import.meta.url));
const buildDir = resolve(here, '..', '..', 'build');
const TOKEN = 'status-page-admin-token';

let gw, ctx, browser;

before(async () => {
  if (skip) return;
  gw = await startGateway({ env: { GATEWAY_ADMIN_TOKEN: TOKEN, GATEWAY_WORKERS: '2' } });
  browser = await launchChromium({ viewport: { width: 1280, height: 1000 } });
  ctx = browser.ctx;
});

after(async () => {
  if (skip) return;
  await browser?.close();
  const res = await gw?.stop();
  if (gw) assert.deepEqual(res, { code: 0, sig: null }, `gateway exit ${JSON.stringify(res)}`);
});

// metric name{labels} -> value, from the admin listener's /metrics.
async function metrics() {
  const r = await gw.get('/metrics', gw.adminPort);
  assert.equal(r.status, 200);
  const out = new Map();
  for (const line of r.body.split('\n')) {
    const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*(?:\{[^}]*\})?) (\S+)$/.exec(line);
    if (m) out.set(m[1], Number(m[2]));
  }
  return out;
}

async function shown(page, sel) {
  return page.evaluate((s) => document.querySelector(s)?.textContent ?? null, sel);
}

// Waits until the page shows want at sel and /metrics has want at name.
async function agree(page, sel, name, want, ms = 15000) {
  const deadline = Date.now() + ms;
  let last;
  for (;;) {
    const [text, m] = [await shown(page, sel), await metrics()];
    last = { page: text, metric: m.get(name) };
    if (text === String(want) && m.get(name) === want) return;
    if (Date.now() > deadline) assert.fail(`${sel} / ${name}: wanted ${want}, last ${JSON.stringify(last)}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

test('status page: token asked once, numbers match /metrics, nothing from another origin', { skip, timeout: 90000 },
  async () => {
    const origin = `http://127.0.0.1:${gw.adminPort}`;
    const page = await ctx.newPage();
    const foreign = [], problems = [];
    page.on('request', (r) => { if (!r.url().startsWith(origin + '/')) foreign.push(r.url()); });
    page.on('pageerror', (e) => problems.push(`pageerror: ${e.message}`));
    page.on('console', (m) => { if (m.type() === 'error' && !/401/.test(m.text())) problems.push(m.text()); });

    await page.goto(`${origin}/status?interval=300`);
    // No token yet: the page asks for it (the data answered 401).
    await page.waitForSelector('#auth:not([hidden])', { timeout: 10000 });
    assert.equal(await page.evaluate(() => document.getElementById('main').hidden), true);
    await page.fill('#token', 'wrong-token');
    await page.click('#auth button');
    await page.waitForFunction(() => document.getElementById('auth-error').textContent.includes('refused'));
    await page.fill('#token', TOKEN);
    await page.click('#auth button');
    await page.waitForSelector('#main:not([hidden])', { timeout: 10000 });
    assert.equal(await page.isVisible('#auth'), false, 'the token form is gone once the token works');
    assert.equal(await page.evaluate(() => sessionStorage.getItem('wsgate.adminToken')), TOKEN);

    // WebSockets from another page of the same browser.
    const clients = await ctx.newPage();
    await clients.goto(`http://127.0.0.1:${gw.port}/healthz`); // a same-origin page for the sockets
    await clients.evaluate(async (url) => {
      window.socks = [];
      for (let i = 0; i < 3; i++) {
        const ws = new WebSocket(url);
        await new Promise((res, rej) => { ws.onopen = res; ws.onerror = rej; });
        ws.send('hello ' + i);
        await new Promise((res) => { ws.onmessage = res; });
        window.socks.push(ws);
      }
    }, `ws://127.0.0.1:${gw.port}/probe/ws`);

    await agree(page, 'td[data-route="/probe/ws"]', 'wsgate_ws_connections{route="/probe/ws"}', 3);
    await agree(page, '#ws-open', 'ws_connections', 3);
    // Public TCP connections: the 3 sockets and the client page's own
    // keep-alive connection (whatever the browser keeps open): page == metric.
    const pub = (await metrics()).get('wsgate_connections{listener="public"}');
    assert.ok(pub >= 3, `public connections ${pub}`);
    await agree(page, '#conn-public', 'wsgate_connections{listener="public"}', pub);
    assert.equal(await shown(page, '#version'), (await page.evaluate(() => fetch('/status.json',
      { headers: { Authorization: 'Bearer ' + sessionStorage.getItem('wsgate.adminToken') } })
      .then((r) => r.json()))).version);

    // Two close cleanly: the page follows.
    await clients.evaluate(async () => {
      for (const ws of window.socks.slice(0, 2)) {
        await new Promise((res) => { ws.onclose = res; ws.close(1000); });
      }
    });
    await agree(page, 'td[data-route="/probe/ws"]', 'wsgate_ws_connections{route="/probe/ws"}', 1);
    await agree(page, '#ws-open', 'ws_connections', 1);
    await agree(page, 'td[data-cause="graceful"]', 'wsgate_ws_closes_total{route="/probe/ws",cause="graceful"}', 2);
    // The plots have data: the last 15 minutes' handshakes add up to 3 once
    // the current second is sampled.
    await page.waitForFunction(() => fetch('/status.json', {
      headers: { Authorization: 'Bearer ' + sessionStorage.getItem('wsgate.adminToken') },
    }).then((r) => r.json()).then((d) => d.series.handshakes.reduce((a, b) => a + b, 0) === 3),
    null, { timeout: 10000, polling: 200 });
    const workers = await page.$$eval('#workers tbody tr', (trs) => trs.length);
    assert.equal(workers, 2);

    mkdirSync(buildDir, { recursive: true });
    await page.screenshot({ path: join(buildDir, 'status-page.png'), fullPage: true });

    // A reload keeps the token (asked once per tab).
    await page.reload();
    await page.waitForSelector('#main:not([hidden])', { timeout: 10000 });
    assert.equal(await page.isVisible('#auth'), false);

    assert.deepEqual(foreign, [], 'requests to another origin');
    assert.deepEqual(problems, [], 'page errors or CSP reports');
    await clients.evaluate(() => window.socks[2].close(1000));
    await clients.close();
    await page.close();
  });
