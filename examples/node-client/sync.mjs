// Two official y-websocket clients share one document through yrelay.
//
//   cargo run --release -p yrelay-server -- serve        # in one terminal
//   npm ci && node sync.mjs [ws://127.0.0.1:1234] [room] # in another
//
// Alice types, Bob sees it; both show who is online (awareness). Exits 0 once Bob has
// Alice's text and Alice has Bob's reply, 1 if that takes longer than 10 s.

import * as Y from 'yjs'
import { WebsocketProvider } from 'y-websocket'
import WebSocket from 'ws'

const url = process.argv[2] ?? 'ws://127.0.0.1:1234'
const room = process.argv[3] ?? `example-${Date.now()}`

function join (name) {
  const doc = new Y.Doc()
  const provider = new WebsocketProvider(url, room, doc, { WebSocketPolyfill: WebSocket, disableBc: true })
  provider.awareness.setLocalStateField('user', { name })
  return { name, doc, provider, text: doc.getText('content') }
}

const until = (what, ok) => new Promise((resolve, reject) => {
  const started = Date.now()
  const timer = setInterval(() => {
    if (ok()) { clearInterval(timer); resolve() } else if (Date.now() - started > 10_000) {
      clearInterval(timer); reject(new Error(`timed out waiting for ${what}`))
    }
  }, 20)
})

const alice = join('alice')
const bob = join('bob')
try {
  await until('both clients to sync', () => alice.provider.synced && bob.provider.synced)
  alice.text.insert(0, 'Hello from Alice. ')
  await until('Bob to see Alice', () => bob.text.toString().includes('Alice'))
  bob.text.insert(bob.text.length, 'Hi Alice, Bob here.')
  await until('Alice to see Bob', () => alice.text.toString().includes('Bob here'))
  const online = [...alice.provider.awareness.getStates().values()].map((s) => s.user?.name).sort()
  console.log(`room ${room} on ${url}`)
  console.log(`text:   ${alice.text.toString()}`)
  console.log(`online: ${online.join(', ')}`)
} catch (err) {
  console.error(err.message)
  process.exitCode = 1
} finally {
  for (const c of [alice, bob]) {
    c.provider.destroy()
    c.doc.destroy() // also stops the awareness timer, so the process can exit
  }
}
