#!/usr/bin/env bash
# demo.sh: starts the gateway on the embedded store with its admin listener,
# prints what to open, and stays in the foreground (Ctrl-C drains and stops).
set -eu
cd "$(dirname "$0")/.."
PUB=${DEMO_PUBLIC_ADDR:-127.0.0.1:8080}
ADM=${DEMO_ADMIN_ADDR:-127.0.0.1:8081}
cat <<TXT

  wsgate demo (embedded store, no Redis needed)

  Public listener  http://$PUB
    health         curl -s http://$PUB/healthz   /readyz   /health
    echo           ws://$PUB/probe/ws   (subprotocol wsgate.echo.v1, permessage-deflate)
                   /usr/bin/python3 -m websockets ws://$PUB/probe/ws
                   node -e "const W=require('./tests/node/node_modules/ws');const w=new W('ws://$PUB/probe/ws');w.on('open',()=>w.send('hi'));w.on('message',m=>{console.log(String(m));w.close()})"
  Admin listener   http://$ADM/metrics   (Prometheus)

  Logs are JSON lines below. Ctrl-C drains (WebSockets get 1001) and exits.

TXT
export GATEWAY_PUBLIC_HTTP_ADDR=$PUB GATEWAY_ADMIN_HTTP_ADDR=$ADM
exec build/wsgate serve
