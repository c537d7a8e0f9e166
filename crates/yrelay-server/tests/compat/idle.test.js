// A lone, idle official client must not be dropped by its own 30-second
// "no message received" timer (y-websocket's messageReconnectTimeout).
// With its awareness state set to null the client sends nothing at all, so
// only the server's keepalive can keep the connection alive.

import { test, before, after } from 'node:test'
import assert from 'node:assert/strict'

import { harness, roomName, startServer, sleep } from './helpers.js'

let server
before(async () => { server = await startServer() })
after(async () => { await server?.cleanup() })

const CLIENT_TIMEOUT_MS = 30_000

test('an idle client alone in its room stays connected past its 30 s timer (v3 and v2)', { timeout: 60_000 }, async (t) => {
  const h = harness(t)
  const clients = ['v3', 'v2'].map((version) => h.client(version, server, roomName(`idle-${version}`)))
  await Promise.all(clients.map((c) => c.synced()))
  const watched = clients.map((c) => {
    // Silence the client completely: no awareness renewals every 15 s.
    c.awareness.setLocalState(null)
    const w = { client: c, socket: c.provider.ws, statusChanges: [] }
    c.provider.on('status', ({ status }) => w.statusChanges.push(status))
    return w
  })

  await sleep(CLIENT_TIMEOUT_MS + 6_000)

  for (const w of watched) {
    const p = w.client.provider
    assert.deepEqual(w.statusChanges, [], `${w.client.name}: status changed while idle`)
    assert.ok(p.wsconnected, `${w.client.name}: no longer connected`)
    assert.equal(p.ws, w.socket, `${w.client.name}: the provider replaced its socket (it reconnected)`)
    assert.equal(p.ws.readyState, 1, `${w.client.name}: socket not OPEN`)
  }
})
