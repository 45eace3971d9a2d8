'use strict';
// Node `ws` broadcast server for the fan-out benchmark (`make bench-fanout`):
// the common way a team writes push in Node. Any path upgrades to a
// subscriber; POST (any path) sends its body to every subscriber as one text
// message, framed once (WebSocket.prototype.send frames per client; this
// server builds the frame once with the Sender and writes it to each socket,
// the best case for Node) and answers 201. usage: node node_fanout.js PORT [HOST]
const http = require('http');
const { WebSocketServer, Sender } = require('ws');

const port = Number(process.argv[2]);
const host = process.argv[3] || '127.0.0.1';
if (!Number.isInteger(port) || port <= 0 || port > 65535) {
  console.error('usage: node node_fanout.js PORT [HOST]');
  process.exit(2);
}

const server = http.createServer((req, res) => {
  if (req.method !== 'POST') {
    res.writeHead(404).end();
    return;
  }
  const parts = [];
  req.on('data', (c) => parts.push(c));
  req.on('end', () => {
    const body = Buffer.concat(parts);
    const frame = Buffer.concat(Sender.frame(body, { fin: true, rsv1: false, opcode: 1, mask: false, readOnly: true }));
    for (const ws of wss.clients) if (ws.readyState === 1) ws._socket.write(frame);
    res.writeHead(201, { 'Content-Length': '0' }).end();
  });
});
const wss = new WebSocketServer({ server, perMessageDeflate: false });
wss.on('connection', (ws) => ws.on('error', () => ws.terminate()));
server.listen({ host, port, backlog: 4096 }, () => console.error(`node_fanout: listening on ${host}:${port}`));
server.on('error', (err) => {
  console.error(`node_fanout: ${err.message}`);
  process.exit(1);
});
