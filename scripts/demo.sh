#!/usr/bin/env bash
# demo.sh: starts the gateway on the embedded store with its admin listener,
# and a terminal agent (a shell on a PTY) behind it; prints the one URL to
# open for a shell in a browser, and stays in the foreground (Ctrl-C drains
# and stops both).
set -eu
cd "$(dirname "$0")/.."
PUB=${DEMO_PUBLIC_ADDR:-127.0.0.1:8080}
ADM=${DEMO_ADMIN_ADDR:-127.0.0.1:8081}
AGENT=${DEMO_AGENT_ADDR:-127.0.0.1:7681}
GRPC=${DEMO_GRPC_ADDR:-127.0.0.1:9090}
cat <<TXT

  wsgate demo (embedded store, no Redis needed)

  >>> Terminal in your browser:  http://$PUB/terminal/  <<<
      (xterm.js page -> gateway /ws/terminal/demo -> wsgate agent on $AGENT -> a shell;
       tokens come from the demo issuer, enabled only here by GATEWAY_TERMINAL_DEMO_UPSTREAM)

  Public listener  http://$PUB
    health         curl -s http://$PUB/healthz   /readyz   /health
    echo           ws://$PUB/probe/ws   (subprotocol wsgate.echo.v1, permessage-deflate)
                   /usr/bin/python3 -m websockets ws://$PUB/probe/ws
                   node -e "const W=require('./tests/node/node_modules/ws');const w=new W('ws://$PUB/probe/ws');w.on('open',()=>w.send('hi'));w.on('message',m=>{console.log(String(m));w.close()})"
  Push events      a demo device session (bearer "demo-bearer", user "demo") is recorded at start:
    subscribe      node -e "const W=require('./tests/node/node_modules/ws');const w=new W('ws://$PUB/ws/events','demo-bearer');w.on('message',m=>console.log(String(m)))"
    publish        GATEWAY_ADMIN_HTTP_ADDR=$ADM build/wsgate publish --user demo --type hello --payload '{"n":1}'
  Admin listener   http://$ADM/status    (live status page)
                   http://$ADM/metrics   (Prometheus)
  gRPC             $GRPC (h2c; a fresh Ed25519 signer key: http://$ADM/v1/signing-key)
                   grpcurl -plaintext $GRPC list    (server reflection)

  Logs are JSON lines below. Ctrl-C drains (WebSockets get 1001) and exits.

TXT
export GATEWAY_PUBLIC_HTTP_ADDR=$PUB GATEWAY_ADMIN_HTTP_ADDR=$ADM GATEWAY_AUTHENTICATED_GRPC_ADDR=$GRPC
# gRPC needs the response signer's key: a fresh one for each run.
KEYDIR=$(mktemp -d)
build/wsgate keygen --out "$KEYDIR/signer" >/dev/null
export GATEWAY_RESPONSE_SIGNER_PRIVATE_KEY_PEM_PATH=$KEYDIR/signer.key
# One secret shared by the gateway and the agent, fresh for each run.
GATEWAY_AGENT_SECRET=$(openssl rand -hex 24)
export GATEWAY_AGENT_SECRET
export GATEWAY_TERMINAL_DEMO_UPSTREAM="ws://$AGENT/"
build/wsgate agent --listen "$AGENT" &
agent_pid=$!
trap 'kill -TERM "$agent_pid" 2>/dev/null; wait "$agent_pid" 2>/dev/null; rm -rf "$KEYDIR"' EXIT
# The demo device session for push, recorded once the admin listener answers.
(
    for _ in $(seq 100); do
        curl -fs "http://$ADM/readyz" >/dev/null 2>&1 && break
        sleep 0.1
    done
    sha=$(printf '%s' demo-bearer | sha256sum | cut -d' ' -f1)
    curl -fs -X POST "http://$ADM/v1/sessions" -H 'Content-Type: application/json' \
        -d "{\"device_session_id\":\"demo-device\",\"user_id\":\"demo\",\"status\":\"active\",\"token_sha256\":\"$sha\",\"version\":1}" \
        >/dev/null || echo "demo: could not record the demo push session" >&2
) &
build/wsgate serve
