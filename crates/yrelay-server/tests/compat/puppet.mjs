// An official client remote-controlled by a Rust test (tests/cluster.rs; not part of the node
// suite):
//   node puppet.mjs WS_URL ROOM NAME [HEARTBEAT_MS]
// (HEARTBEAT_MS: renew the presence state this often instead of y-protocols' 15 s, for tests
// that shorten the server's awareness timeout.)
// One y-websocket v3 provider on ROOM. Reads one JSON command per line on stdin and answers
// each with one JSON line on stdout:
//   {"op":"insert","text":"..."}          append to the Y.Text root "t"        → {"ok":true}
//   {"op":"set","key":"k","value":"v"}    set a key of the Y.Map root "m"      → {"ok":true}
//   {"op":"presence","name":"alice"}      set the awareness field user.name    → {"ok":true}
//   {"op":"report"}  → {"text":..., "map":{...}, "peers":[names of other clients' presence],
//                      "status":"connected"|"connecting"|"disconnected", "synced":bool,
//                      "connects":N (how many times the socket connected)}
//   {"op":"exit"}    → destroys the provider and exits 0
import * as Y from 'yjs'
import WebSocket from 'ws'
import { WebsocketProvider } from 'y-websocket'
import { createInterface } from 'node:readline'

const [url, room, name, heartbeat] = process.argv.slice(2)
const doc = new Y.Doc()
const text = doc.getText('t')
const map = doc.getMap('m')
const provider = new WebsocketProvider(url, room, doc, {
  WebSocketPolyfill: WebSocket,
  disableBc: true,
  // Reconnect quickly after a node dies (the default backoff grows to 2.5 s).
  maxBackoffTime: 500
})
let status = 'connecting'
let connects = 0
provider.on('status', (event) => {
  status = event.status
  if (event.status === 'connected') connects += 1
})
provider.awareness.setLocalStateField('user', { name })
if (heartbeat) {
  // Setting a state again bumps its clock: a renewal, as y-protocols sends every 15 s.
  setInterval(() => {
    provider.awareness.setLocalState(provider.awareness.getLocalState())
  }, Number(heartbeat)).unref()
}

const answer = (value) => process.stdout.write(JSON.stringify(value) + '\n')
const lines = createInterface({ input: process.stdin })
lines.on('line', (line) => {
  let cmd
  try {
    cmd = JSON.parse(line)
  } catch (e) {
    answer({ error: `bad command: ${e}` })
    return
  }
  switch (cmd.op) {
    case 'insert':
      text.insert(text.length, cmd.text)
      answer({ ok: true })
      break
    case 'set':
      map.set(cmd.key, cmd.value)
      answer({ ok: true })
      break
    case 'presence':
      provider.awareness.setLocalStateField('user', { name: cmd.name })
      answer({ ok: true })
      break
    case 'report': {
      const peers = []
      provider.awareness.getStates().forEach((state, clientId) => {
        if (clientId !== doc.clientID && state.user) peers.push(state.user.name)
      })
      peers.sort()
      answer({
        text: text.toString(),
        map: map.toJSON(),
        peers,
        status,
        synced: provider.synced,
        connects
      })
      break
    }
    case 'exit':
      provider.destroy()
      answer({ ok: true })
      process.exit(0)
      break
    default:
      answer({ error: `unknown op ${cmd.op}` })
  }
})
lines.on('close', () => {
  provider.destroy()
  process.exit(0)
})
