// A live official client for tests driven from Rust (not part of the node suite):
//   node watch-text.mjs WS_URL ROOM TOKEN EXPECTED
// connects with y-websocket v3, prints "synced" once synced, then exits 0 as soon as the
// Y.Text root "t" contains EXPECTED (printing "seen: <text>"), or exits 1 after 15 s.
import * as Y from 'yjs'
import WebSocket from 'ws'
import { WebsocketProvider } from 'y-websocket'

const [url, room, token, expected] = process.argv.slice(2)
const doc = new Y.Doc()
const text = doc.getText('t')
const provider = new WebsocketProvider(url, room, doc, {
  params: { token },
  WebSocketPolyfill: WebSocket,
  disableBc: true
})
const done = (code, line) => {
  console.log(line)
  provider.destroy()
  process.exit(code)
}
setTimeout(() => done(1, `timeout: text is ${JSON.stringify(text.toString())}`), 15_000)
provider.on('sync', (synced) => {
  if (synced) console.log('synced')
})
text.observe(() => {
  if (text.toString().includes(expected)) done(0, `seen: ${text.toString()}`)
})
