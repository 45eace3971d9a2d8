// Integration tests of the wsgate echo route with the Node `ws` client.
// Starts its own gateway (WSGATE_BIN, default ../../build/wsgate) on free ports.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import WebSocket from 'ws';
import { startGateway, sleep } from './gateway.mjs';

let gw;
let url;
const httpGet = (path) => gw.get(path);

before(async () => {
  gw = await startGateway();
  url = gw.url;
});

after(async () => {
  if (!gw) return;
  const res = await gw.stop();
  assert.equal(res.code, 0, `gateway exit ${JSON.stringify(res)}`);
});

// Opens a client; resolves with it once open. ws.upgradeHeaders holds the
// headers of the 101 answer, ws.closedP resolves with {code, reason}.
function open(opts = {}, protocols = undefined) {
  return new Promise((res, rej) => {
    const ws = new WebSocket(url, protocols, { perMessageDeflate: false, ...opts });
    ws.closedP = new Promise((r) => ws.once('close', (code, reason) => r({ code, reason: reason.toString() })));
    ws.once('upgrade', (resp) => { ws.upgradeHeaders = resp.headers; });
    ws.once('open', () => res(ws));
    ws.once('error', rej);
  });
}

function nextMessage(ws) {
  return new Promise((res, rej) => {
    const t = setTimeout(() => rej(new Error('no echo in 10s')), 10000);
    ws.once('message', (data, isBinary) => { clearTimeout(t); res({ data, isBinary }); });
  });
}

function closed(ws) {
  return ws.closedP;
}

test('health endpoints answer', async () => {
  const r = await httpGet('/healthz');
  assert.equal(r.status, 200);
  assert.equal(r.body, 'ok\n');
  assert.ok(r.headers['x-correlation-id']);
  const n = await httpGet('/nope');
  assert.equal(n.status, 404);
  assert.equal(JSON.parse(n.body).code, 'not_found');
});

test('text and binary echo', async () => {
  const ws = await open();
  for (const msg of ['hello', '', 'ünïcödé ✓ 😀', 'x'.repeat(70000)]) {
    const p = nextMessage(ws);
    ws.send(msg);
    const { data, isBinary } = await p;
    assert.equal(isBinary, false);
    assert.equal(data.toString('utf8'), msg);
  }
  for (const len of [0, 1, 125, 126, 65535, 65536, 300000]) {
    const buf = Buffer.alloc(len);
    for (let i = 0; i < len; i++) buf[i] = (i * 31) & 0xff;
    const p = nextMessage(ws);
    ws.send(buf);
    const { data, isBinary } = await p;
    assert.equal(isBinary, true);
    assert.ok(Buffer.compare(data, buf) === 0, `binary echo of ${len} bytes differs`);
  }
  const c = closed(ws);
  ws.close(1000, 'done');
  assert.equal((await c).code, 1000);
});

test('ping gets pong with the same payload', async () => {
  const ws = await open();
  const pong = new Promise((res) => ws.once('pong', res));
  ws.ping(Buffer.from('node-ping'));
  assert.equal((await pong).toString(), 'node-ping');
  ws.close();
  await closed(ws);
});

test('permessage-deflate negotiated and echo works', async () => {
  const ws = await open({ perMessageDeflate: { threshold: 0, clientNoContextTakeover: false } });
  assert.match(ws.extensions, /permessage-deflate/);
  assert.match(ws.upgradeHeaders['sec-websocket-extensions'], /^permessage-deflate/);
  const msgs = ['compress me '.repeat(500), 'a', JSON.stringify({ k: 'v'.repeat(1000), n: [1, 2, 3] })];
  for (const msg of msgs) {
    const p = nextMessage(ws);
    ws.send(msg);
    assert.equal((await p).data.toString(), msg);
  }
  const big = Buffer.alloc(512 * 1024, 7);
  const p = nextMessage(ws);
  ws.send(big);
  const { data, isBinary } = await p;
  assert.ok(isBinary && Buffer.compare(data, big) === 0);
  ws.close(1000);
  await closed(ws);
});

test('permessage-deflate with no context takeover', async () => {
  const ws = await open({ perMessageDeflate: { threshold: 0, clientNoContextTakeover: true, serverNoContextTakeover: true } });
  assert.match(ws.extensions, /permessage-deflate/);
  assert.match(ws.upgradeHeaders['sec-websocket-extensions'], /server_no_context_takeover/);
  for (let i = 0; i < 10; i++) {
    const msg = `message ${i} `.repeat(50);
    const p = nextMessage(ws);
    ws.send(msg);
    assert.equal((await p).data.toString(), msg);
  }
  ws.close(1000);
  await closed(ws);
});

test('subprotocol selection', async () => {
  const a = await open({}, ['wsgate.echo.v1']);
  assert.equal(a.protocol, 'wsgate.echo.v1');
  a.close();
  const b = await open({}, ['other', 'wsgate.echo.v1']);
  assert.equal(b.protocol, 'wsgate.echo.v1');
  b.close();
  const c = await open();
  assert.equal(c.protocol, '');
  c.close();
  // Offering only unsupported protocols: the gateway answers without one,
  // which the ws client treats as a failed handshake.
  await assert.rejects(open({}, ['nope.v1']));
  await Promise.all([closed(a), closed(b), closed(c)]);
});

test('50 concurrent clients', async () => {
  const clients = await Promise.all(Array.from({ length: 50 }, () => open()));
  await Promise.all(clients.map(async (ws, i) => {
    for (let j = 0; j < 20; j++) {
      const msg = `c${i}-m${j}`;
      const p = nextMessage(ws);
      ws.send(msg);
      assert.equal((await p).data.toString(), msg);
    }
  }));
  await Promise.all(clients.map((ws) => { const c = closed(ws); ws.close(1000); return c; }));
});

test('close codes are echoed', async () => {
  for (const code of [1000, 1001, 3000, 4000, 4999]) {
    const ws = await open();
    const c = closed(ws);
    ws.close(code, `reason ${code}`);
    assert.equal((await c).code, code);
  }
});

test('invalid UTF-8 text is closed with 1007', async () => {
  const ws = await open();
  const c = closed(ws);
  ws.send(Buffer.from([0x61, 0xff, 0x62]), { binary: false });
  const { code, reason } = await c;
  assert.equal(code, 1007);
  assert.equal(reason, 'invalid_utf8');
});

test('handshake refusals', async () => {
  const r = await httpGet('/probe/ws');
  assert.equal(r.status, 426);
  assert.equal(JSON.parse(r.body).code, 'websocket_upgrade_required');
  await assert.rejects(open({ protocolVersion: 8 }), /426/);
});

test('ws open and close are logged', async () => {
  const ws = await open({ headers: { 'X-Correlation-ID': 'node-log-1' } });
  const c = closed(ws);
  ws.close(1000);
  await c;
  let lines = [];
  for (let i = 0; i < 50; i++) {
    lines = gw.logs()
      .filter((l) => l.correlation_id === 'node-log-1');
    if (lines.some((l) => l.msg === 'ws close')) break;
    await sleep(50);
  }
  assert.equal(lines.filter((l) => l.msg === 'ws open').length, 1);
  const close = lines.filter((l) => l.msg === 'ws close');
  assert.equal(close.length, 1);
  assert.equal(close[0].cause, 'graceful');
  assert.equal(close[0].route, '/probe/ws');
  assert.ok(Number.isInteger(close[0].dur_ms));
});
