// A v2 and a v3 client of the official y-websocket library in the same room.

import { test, before, after } from 'node:test'
import assert from 'node:assert/strict'
import * as Y from 'yjs'

import { TEST_TIMEOUT, harness, roomName, startServer, waitFor, waitConverged, brief, sleep } from './helpers.js'

/** @type {import('./helpers.js').Server} */
let server
before(async () => { server = await startServer() })
after(async () => { await server?.cleanup() })

test('a v2 client and a v3 client in the same room converge', { timeout: TEST_TIMEOUT }, async (t) => {
  const h = harness(t)
  const room = roomName('mixed')
  const v2 = h.client('v2', server, room)
  const v3 = h.client('v3', server, room)
  await Promise.all([v2.synced(), v3.synced()])

  // concurrent edits from both sides, crossing on the wire
  for (let i = 0; i < 100; i++) {
    const c = i % 2 === 0 ? v2 : v3
    const text = c.doc.getText('text')
    text.insert((i * 7) % (text.length + 1), `${c.version}:${i};`)
    c.doc.getArray('array').push([i])
    c.doc.getMap('map').set(`k${i % 10}`, `${c.version}-${i}`)
    if (i % 17 === 0) await sleep(1)
  }
  await waitConverged('v2 and v3 clients', [v2, v3])
  assert.equal(v2.doc.getArray('array').length, 100)
  assert.deepEqual(v2.doc.toJSON(), v3.doc.toJSON())
  assert.deepEqual(Y.encodeStateVector(v2.doc), Y.encodeStateVector(v3.doc))

  // awareness crosses versions both ways
  v2.awareness.setLocalStateField('user', { name: 'two' })
  v3.awareness.setLocalStateField('user', { name: 'three' })
  await waitFor('v3 client to see the v2 client\'s awareness',
    () => v3.awareness.getStates().get(v2.doc.clientID)?.user?.name === 'two',
    { seen: () => brief(Object.fromEntries(v3.awareness.getStates())) })
  await waitFor('v2 client to see the v3 client\'s awareness',
    () => v2.awareness.getStates().get(v3.doc.clientID)?.user?.name === 'three',
    { seen: () => brief(Object.fromEntries(v2.awareness.getStates())) })

  // late joiners of either version get the merged state
  const late2 = h.client('v2', server, room)
  const late3 = h.client('v3', server, room)
  await Promise.all([late2.synced(), late3.synced()])
  await waitConverged('late joiners of both versions', [v2, v3, late2, late3])
})
