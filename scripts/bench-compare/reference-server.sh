#!/usr/bin/env bash
# Start the reference y-websocket server (@y/websocket-server, pinned in package.json)
# on HOST:PORT, in memory (no persistence), for side-by-side benchmarks against yrelay.
#
#   npm ci --prefix scripts/bench-compare --no-audit --no-fund   # once
#   scripts/bench-compare/reference-server.sh 127.0.0.1 1234
#
# The script execs node, so its PID *is* the server's PID (measure it via /proc/PID).
# Rooms are the URL path: ws://HOST:PORT/<room>. Ready once it prints
# "running at 'HOST' on port PORT" on stdout.
set -euo pipefail

if [[ $# -ne 2 ]]; then
  echo "usage: $0 HOST PORT" >&2
  exit 2
fi
host=$1
port=$2
if ! [[ $port =~ ^[0-9]+$ ]] || ((port < 1 || port > 65535)); then
  echo "$0: PORT must be 1..65535, got '$port'" >&2
  exit 2
fi

here=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)
server=$here/node_modules/@y/websocket-server/src/server.js
if [[ ! -f $server ]]; then
  echo "$0: $server missing; run: npm ci --prefix scripts/bench-compare --no-audit --no-fund" >&2
  exit 1
fi

# Same behaviour whatever the caller's environment: YPERSISTENCE would switch on LevelDB
# persistence, CALLBACK_* an HTTP callback on every update, GC=false|0 would turn off
# Yjs garbage collection. Unset, the server keeps every room in memory, GC on (its default).
unset YPERSISTENCE CALLBACK_URL CALLBACK_OBJECTS CALLBACK_TIMEOUT \
  CALLBACK_DEBOUNCE_WAIT CALLBACK_DEBOUNCE_MAXWAIT GC
export HOST=$host PORT=$port

exec node "$server"
