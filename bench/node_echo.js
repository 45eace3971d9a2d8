'use strict';
// Node `ws` echo server for the echo benchmark: the common reference point a
// reader already knows. Any path upgrades; permessage-deflate is off so that
// every server echoes the same bytes. usage: node node_echo.js PORT [HOST]
const { WebSocketServer } = require('ws');

const port = Number(process.argv[2]);
const host = process.argv[3] || '127.0.0.1';
if (!Number.isInteger(port) || port <= 0 || port > 65535) {
  console.error('usage: node node_echo.js PORT [HOST]');
  process.exit(2);
}

const wss = new WebSocketServer({
  host,
  port,
  backlog: 4096,
  perMessageDeflate: false,
  clientTracking: false,
  maxPayload: 16 * 1024 * 1024,
});

wss.on('connection', (ws) => {
  ws.on('message', (data, isBinary) => ws.send(data, { binary: isBinary }));
  ws.on('error', () => ws.terminate());
});
wss.on('listening', () => console.error(`node_echo: listening on ${host}:${port}`));
wss.on('error', (err) => {
  console.error(`node_echo: ${err.message}`);
  process.exit(1);
});
for (const sig of ['SIGTERM', 'SIGINT']) process.on(sig, () => process.exit(0));
