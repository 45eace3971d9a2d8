// wss:// through a TLS gateway with a self-signed certificate (openssl CLI),
// trusted by the Node `ws` client through its `ca` option.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import WebSocket from 'ws';
import { startGateway, makeCert } from './gateway.mjs';

let gw;
let tls;

before(async () => {
  tls = makeCert();
  gw = await startGateway({ tls });
});

after(async () => {
  if (!gw) return;
  const res = await gw.stop();
  assert.equal(res.code, 0, `gateway exit ${JSON.stringify(res)}`);
});

function open(opts = {}, protocols = undefined) {
  return new Promise((res, rej) => {
    const ws = new WebSocket(gw.url, protocols, { ca: tls.ca, ...opts });
    ws.closedP = new Promise((r) => ws.once('close', (code, reason) => r({ code, reason: reason.toString() })));
    ws.once('open', () => res(ws));
    ws.once('error', rej);
  });
}

function echo(ws, msg) {
  return new Promise((res, rej) => {
    const t = setTimeout(() => rej(new Error('no echo in 10s')), 10000);
    ws.once('message', (data, isBinary) => { clearTimeout(t); res({ data, isBinary }); });
    ws.send(msg);
  });
}

test('https /healthz with the ca', async () => {
  const r = await gw.get('/healthz');
  assert.equal(r.status, 200);
  assert.equal(r.body, 'ok\n');
});

test('wss echo with and without permessage-deflate', async () => {
  for (const perMessageDeflate of [false, { threshold: 0 }]) {
    const ws = await open({ perMessageDeflate }, ['wsgate.echo.v1']);
    assert.equal(ws.protocol, 'wsgate.echo.v1');
    assert.equal(ws.extensions, perMessageDeflate ? 'permessage-deflate' : '');
    const text = 'secure ✓ '.repeat(2000);
    let r = await echo(ws, text);
    assert.equal(r.isBinary, false);
    assert.equal(r.data.toString(), text);
    const bin = Buffer.alloc(200000);
    for (let i = 0; i < bin.length; i++) bin[i] = (i * 7) & 0xff;
    r = await echo(ws, bin);
    assert.ok(r.isBinary && Buffer.compare(r.data, bin) === 0);
    ws.close(4001, 'bye');
    assert.equal((await ws.closedP).code, 4001);
  }
});

test('wss refused without the ca', async () => {
  await assert.rejects(new Promise((res, rej) => {
    const ws = new WebSocket(gw.url);
    ws.once('open', () => { ws.terminate(); res(); });
    ws.once('error', rej);
  }), /self[- ]signed|certificate/i);
  const r = await gw.get('/healthz');
  assert.equal(r.status, 200);
});

test('20 concurrent wss clients', async () => {
  const clients = await Promise.all(Array.from({ length: 20 }, () => open({ perMessageDeflate: false })));
  await Promise.all(clients.map(async (ws, i) => {
    for (let j = 0; j < 10; j++) {
      const r = await echo(ws, `tls ${i}/${j}`);
      assert.equal(r.data.toString(), `tls ${i}/${j}`);
    }
    ws.close(1000);
    assert.equal((await ws.closedP).code, 1000);
  }));
});
