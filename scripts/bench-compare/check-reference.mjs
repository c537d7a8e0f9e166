// Smoke test for a y-websocket server (the reference @y/websocket-server or yrelay):
// two official y-websocket clients join one room; client A inserts into a Y.Text and
// sets an awareness field; client B must see both.
//
//   node scripts/bench-compare/check-reference.mjs ws://127.0.0.1:PORT [room]
//
// Exits 0 and prints "PASS ..." on success, exits 1 with "FAIL ..." otherwise.
import * as Y from 'yjs'
import { WebsocketProvider } from 'y-websocket'
import WebSocket from 'ws'

const url = process.argv[2]
const room = process.argv[3] || `check-${process.pid}-${Date.now()}`
if (!url) {
  console.error('usage: node check-reference.mjs ws://HOST:PORT [room]')
  process.exit(2)
}
const TIMEOUT_MS = 10000

const mk = () => {
  const doc = new Y.Doc()
  // disableBc: no BroadcastChannel shortcut, everything must go through the server
  const provider = new WebsocketProvider(url, room, doc, { WebSocketPolyfill: WebSocket, disableBc: true })
  return { doc, provider }
}
const waitFor = (what, pred, subscribe) => new Promise((resolve, reject) => {
  if (pred()) return resolve()
  const timer = setTimeout(() => reject(new Error(`timeout waiting for ${what}`)), TIMEOUT_MS)
  subscribe(() => { if (pred()) { clearTimeout(timer); resolve() } })
})
const synced = (p) => waitFor('sync', () => p.synced, (cb) => p.on('sync', cb))

const a = mk()
const b = mk()
try {
  await Promise.all([synced(a.provider), synced(b.provider)])
  const text = 'hello from A ' + Date.now()
  a.doc.getText('t').insert(0, text)
  await waitFor('text on B', () => b.doc.getText('t').toString() === text,
    (cb) => b.doc.on('update', cb))
  a.provider.awareness.setLocalStateField('user', { name: 'alice' })
  const seen = () => b.provider.awareness.getStates().get(a.doc.clientID)?.user?.name === 'alice'
  await waitFor('awareness on B', seen, (cb) => b.provider.awareness.on('change', cb))
  console.log(`PASS url=${url} room=${room}: text crossed (${JSON.stringify(b.doc.getText('t').toString())}), awareness crossed (B sees A=${a.doc.clientID} user.name=alice)`)
  process.exitCode = 0
} catch (e) {
  console.log(`FAIL url=${url} room=${room}: ${e.message}`)
  process.exitCode = 1
} finally {
  a.provider.destroy(); b.provider.destroy()
  setTimeout(() => process.exit(process.exitCode), 200).unref()
}
