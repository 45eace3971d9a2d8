// The terminal page in a real browser: Debian's chromium (never a
// downloaded one) driven by playwright-core opens /terminal/ through a real
// gateway, which relays to a real `wsgate agent` on a real PTY. The page gets
// its token from the demo issuer, offers it in Sec-WebSocket-Protocol, and
// the test types into xterm.js and reads the answer back from the screen.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdtempSync, openSync, closeSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';
import { startGateway, freePort, wsgateBin, sleep } from '../node/gateway.mjs';
import { launchChromium, skip } from './chromium.mjs';

const here = dirname(fileURLToPath(import.meta.url));
const webDir = resolve(here, '..', '..', 'web');
const SECRET = 'browser-test-agent-secret';

let agent, agentErr, gw, ctx, browser;

async function startAgent() {
  const port = await freePort();
  agentErr = join(mkdtempSync(join(tmpdir(), 'wsgate-agent-')), 'stderr.log');
  const fd = openSync(agentErr, 'a');
  const env = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith('GATEWAY_')));
  Object.assign(env, { GATEWAY_AGENT_SECRET: SECRET, GATEWAY_LOG_FORMAT: 'json', PS1: '$ ', ENV: '' });
  const proc = spawn(wsgateBin(), ['agent', '--listen', `127.0.0.1:${port}`, '--', '/bin/sh'],
    { env, stdio: ['ignore', 'ignore', fd] });
  closeSync(fd);
  for (let i = 0; i < 200 && !readFileSync(agentErr, 'utf8').includes('agent listening'); i++) await sleep(50);
  return { proc, port };
}

before(async () => {
  if (skip) return;
  agent = await startAgent();
  gw = await startGateway({
    env: {
      GATEWAY_AGENT_SECRET: SECRET,
      GATEWAY_TERMINAL_WEB_DIR: webDir,
      GATEWAY_TERMINAL_DEMO_UPSTREAM: `ws://127.0.0.1:${agent.port}/`,
    },
  });
  browser = await launchChromium();
  ctx = browser.ctx;
});

after(async () => {
  if (skip) return;
  await browser?.close();
  const res = await gw?.stop();
  if (gw) assert.deepEqual(res, { code: 0, sig: null }, `gateway exit ${JSON.stringify(res)}`);
  if (agent) {
    let st = { code: agent.proc.exitCode, sig: agent.proc.signalCode };
    if (st.code === null && st.sig === null) {
      const exited = new Promise((r) => agent.proc.once('exit', (code, sig) => r({ code, sig })));
      agent.proc.kill('SIGTERM');
      st = await exited;
    }
    const err = readFileSync(agentErr, 'utf8');
    assert.doesNotMatch(err, /ERROR: (Address|Leak)Sanitizer|runtime error:/, err.slice(-3000));
    assert.deepEqual(st, { code: 0, sig: null }, `agent exit ${JSON.stringify(st)}:\n${err.slice(-3000)}`);
  }
});

async function screenText(page) {
  return page.evaluate(() => document.querySelector('.xterm-rows')?.innerText ?? '');
}

async function waitScreen(page, re, ms = 10000) {
  const deadline = Date.now() + ms;
  let last = '';
  while (Date.now() < deadline) {
    last = await screenText(page);
    if (re.test(last)) return last;
    await sleep(100);
  }
  throw new Error(`${re} not on screen; screen:\n${last}`);
}

test('types a command into the page and reads the answer from the screen', { skip }, async () => {
  const page = await ctx.newPage();
  const problems = [];
  page.on('pageerror', (e) => problems.push(String(e)));
  await page.goto(`http://127.0.0.1:${gw.port}/terminal/`);
  await page.waitForSelector('#status[data-state="connected"]', { timeout: 10000 });
  await page.click('#terminal');
  await page.keyboard.type('echo hello-$((6*7))\n');
  const screen = await waitScreen(page, /^hello-42$/m);
  assert.match(screen, /hello-42/);
  assert.deepEqual(problems, []);

  // The window's size reaches the PTY (resize messages from the page).
  await page.setViewportSize({ width: 700, height: 400 });
  await sleep(300);
  const { cols, rows } = await page.evaluate(() => ({ cols: wsgateTerminal.cols, rows: wsgateTerminal.rows }));
  await page.keyboard.type('stty size\n');
  await waitScreen(page, new RegExp(`^${rows} ${cols}$`, 'm'));

  // The token rode in Sec-WebSocket-Protocol: the gateway's log has the
  // session, and no token ever shows up in a URL it logged.
  const opened = gw.logs().filter((l) => l.msg === 'ws open' && l.route === '/ws/terminal/');
  assert.ok(opened.length >= 1);
  assert.equal(opened[0].subprotocol, 'wsgate.terminal.v1');
  await page.close();
});

test('reconnects by itself with a fresh token and re-attaches the same shell', { skip }, async () => {
  const page = await ctx.newPage();
  await page.goto(`http://127.0.0.1:${gw.port}/terminal/`);
  await page.waitForSelector('#status[data-state="connected"]', { timeout: 10000 });
  await page.click('#terminal');
  await page.keyboard.type('KEEP=same-$((2+3)); echo set\n');
  await waitScreen(page, /^set$/m);
  // Drop the connection under the page (as a network cut would): the page
  // must fetch a fresh token and re-attach the same session by itself.
  const before = gw.logs().filter((l) => l.msg === 'terminal token minted').length;
  await page.evaluate(() => window.wsgateDrop());
  await page.waitForSelector('#status[data-state="reconnecting"]', { timeout: 5000 });
  await page.waitForSelector('#status[data-state="connected"]', { timeout: 15000 });
  await page.keyboard.type('echo kept=$KEEP\n');
  await waitScreen(page, /^kept=same-5$/m);
  assert.ok(gw.logs().filter((l) => l.msg === 'terminal token minted').length > before, 'a fresh token');
  await page.close();
});
