// Raw y-websocket protocol checks: y-protocols/sync + lib0 encoding over a plain `ws` socket.

import { test, before, after } from 'node:test'
import assert from 'node:assert/strict'
import * as encoding from 'lib0/encoding'
import * as decoding from 'lib0/decoding'
import * as syncProtocol from 'y-protocols/sync'
import * as Y from 'yjs'

import { TEST_TIMEOUT, harness, roomName, startServer, waitFor, waitConverged, brief, hex, sleep } from './helpers.js'

const MSG_SYNC = 0
const MSG_AWARENESS = 1
const MSG_AUTH = 2
const MSG_QUERY_AWARENESS = 3
const SYNC_STEP1 = 0
const SYNC_STEP2 = 1
const SYNC_UPDATE = 2

/** @type {import('./helpers.js').Server} */
let server
before(async () => { server = await startServer() })
after(async () => { await server?.cleanup() })

/**
 * Decodes one y-websocket message and checks the frame holds nothing else.
 * @param {{ data: Uint8Array, isBinary: boolean }} frame
 * @returns {{ type: number, subtype?: number, payload?: Uint8Array, reason?: string }}
 */
function decodeFrame (frame) {
  assert.ok(frame.isBinary, `expected a binary frame, got a text frame: ${hex(frame.data)}`)
  const d = decoding.createDecoder(frame.data)
  let msg
  try {
    const type = decoding.readVarUint(d)
    switch (type) {
      case MSG_SYNC: {
        const subtype = decoding.readVarUint(d)
        assert.ok([SYNC_STEP1, SYNC_STEP2, SYNC_UPDATE].includes(subtype), `unknown sync subtype ${subtype} in ${hex(frame.data)}`)
        msg = { type, subtype, payload: decoding.readVarUint8Array(d) }
        break
      }
      case MSG_AWARENESS:
        msg = { type, payload: decoding.readVarUint8Array(d) }
        break
      case MSG_AUTH:
        msg = { type, subtype: decoding.readVarUint(d), reason: decoding.readVarString(d) }
        break
      case MSG_QUERY_AWARENESS:
        msg = { type }
        break
      default:
        assert.fail(`unknown message type ${type} in frame ${hex(frame.data)}`)
    }
  } catch (e) {
    if (e instanceof assert.AssertionError) throw e
    assert.fail(`frame does not decode as one y-websocket message (${e.message}): ${hex(frame.data)}`)
  }
  assert.equal(d.arr.length - d.pos, 0,
    `frame must hold exactly one message, but ${d.arr.length - d.pos} byte(s) remain after a ${describeMsg(msg)}: ${hex(frame.data)}`)
  return msg
}

function describeMsg (m) {
  if (m.type === MSG_SYNC) return ['SyncStep1', 'SyncStep2', 'Update'][m.subtype] + ` (${m.payload.length} bytes)`
  if (m.type === MSG_AWARENESS) return `Awareness (${m.payload.length} bytes)`
  if (m.type === MSG_AUTH) return `Auth(${m.subtype}, ${brief(m.reason)})`
  return 'QueryAwareness'
}

/** Decodes an awareness update into `Map<clientID, { clock, state }>`. */
function decodeAwareness (payload) {
  const d = decoding.createDecoder(payload)
  const out = new Map()
  const n = decoding.readVarUint(d)
  for (let i = 0; i < n; i++) {
    const client = decoding.readVarUint(d)
    const clock = decoding.readVarUint(d)
    const state = JSON.parse(decoding.readVarString(d))
    out.set(client, { clock, state })
  }
  assert.equal(d.arr.length - d.pos, 0, 'awareness update has trailing bytes')
  return out
}

function encodeAwarenessMsg (client, clock, state) {
  const inner = encoding.createEncoder()
  encoding.writeVarUint(inner, 1)
  encoding.writeVarUint(inner, client)
  encoding.writeVarUint(inner, clock)
  encoding.writeVarString(inner, JSON.stringify(state))
  const e = encoding.createEncoder()
  encoding.writeVarUint(e, MSG_AWARENESS)
  encoding.writeVarUint8Array(e, encoding.toUint8Array(inner))
  return encoding.toUint8Array(e)
}

function syncStep1Msg (doc) {
  const e = encoding.createEncoder()
  encoding.writeVarUint(e, MSG_SYNC)
  syncProtocol.writeSyncStep1(e, doc)
  return encoding.toUint8Array(e)
}

function updateMsg (update) {
  const e = encoding.createEncoder()
  encoding.writeVarUint(e, MSG_SYNC)
  syncProtocol.writeUpdate(e, update)
  return encoding.toUint8Array(e)
}

const svToObject = (sv) => Object.fromEntries(Y.decodeStateVector(sv))

test('handshake: SyncStep1 first, SyncStep1 answered with SyncStep2, one message per frame', { timeout: TEST_TIMEOUT }, async (t) => {
  const h = harness(t)
  const room = roomName('raw-handshake')

  // An empty room: the very first frame is SyncStep1 with an empty state vector.
  {
    const raw = await h.raw(server, room)
    const m = decodeFrame(await raw.next('SyncStep1 right after the upgrade'))
    assert.equal(describeMsg(m).split(' ')[0], 'SyncStep1', `first message must be SyncStep1 (type 0, subtype 0), got ${describeMsg(m)}`)
    assert.deepEqual(svToObject(m.payload), {}, 'state vector of an empty room')
    const doc = new Y.Doc()
    raw.send(syncStep1Msg(doc))
    const reply = await raw.nextMatching('SyncStep2 in reply to our SyncStep1', (f) => {
      const r = decodeFrame(f)
      return r.type === MSG_SYNC && r.subtype === SYNC_STEP2 ? r : null
    })
    Y.applyUpdate(doc, reply.payload)
    assert.deepEqual(doc.getText('text').toString(), '')
    doc.destroy()
    raw.close()
  }

  // A room with content and a present user.
  const author = h.client('v3', server, room)
  await author.synced()
  author.doc.getText('text').insert(0, 'hello raw')
  author.awareness.setLocalStateField('user', { name: 'author' })
  await sleep(50)
  const expectedSv = svToObject(Y.encodeStateVector(author.doc))

  const raw = await h.raw(server, room)
  const first = decodeFrame(await raw.next('SyncStep1 right after the upgrade'))
  assert.ok(first.type === MSG_SYNC && first.subtype === SYNC_STEP1,
    `first message must be SyncStep1 (type 0, subtype 0), got ${describeMsg(first)}`)
  assert.deepEqual(svToObject(first.payload), expectedSv, 'server state vector in SyncStep1 equals the author\'s')

  // Current awareness states come on connect too, without asking.
  const aw = await raw.nextMatching('the current awareness states, sent on connect', (f) => {
    const r = decodeFrame(f)
    return r.type === MSG_AWARENESS ? decodeAwareness(r.payload) : null
  })
  assert.deepEqual(aw.get(author.doc.clientID)?.state, { user: { name: 'author' } }, `awareness on connect: ${brief([...aw])}`)

  const doc = new Y.Doc()
  raw.send(syncStep1Msg(doc))
  const step2 = await raw.nextMatching('SyncStep2 in reply to our SyncStep1', (f) => {
    const r = decodeFrame(f)
    return r.type === MSG_SYNC && r.subtype === SYNC_STEP2 ? r : null
  })
  Y.applyUpdate(doc, step2.payload)
  assert.equal(doc.getText('text').toString(), 'hello raw', 'SyncStep2 carries the room state')

  // SyncStep1 with our full state vector: the diff is empty but still a SyncStep2.
  raw.send(syncStep1Msg(doc))
  const step2b = await raw.nextMatching('a second SyncStep2', (f) => {
    const r = decodeFrame(f)
    return r.type === MSG_SYNC && r.subtype === SYNC_STEP2 ? r : null
  })
  const check = new Y.Doc()
  Y.applyUpdate(check, step2b.payload)
  assert.equal(check.getText('text').toString(), '', 'diff against a complete state vector adds nothing')
  check.destroy()
  doc.destroy()

  for (const f of raw.frames) decodeFrame(f)
})

test('updates are applied and broadcast to every connection of the room, sender included', { timeout: TEST_TIMEOUT }, async (t) => {
  const h = harness(t)
  const room = roomName('raw-update')
  const watcher = h.client('v3', server, room)
  await watcher.synced()
  const raw = await h.raw(server, room)
  await raw.next('SyncStep1')

  const local = new Y.Doc()
  local.getText('text').insert(0, 'from raw')
  const update = Y.encodeStateAsUpdate(local)
  raw.send(updateMsg(update))

  const echoed = await raw.nextMatching('our update echoed back (sync Update, type 0 subtype 2)', (f) => {
    const r = decodeFrame(f)
    return r.type === MSG_SYNC && r.subtype === SYNC_UPDATE ? r : null
  })
  const fromEcho = new Y.Doc()
  Y.applyUpdate(fromEcho, echoed.payload)
  assert.equal(fromEcho.getText('text').toString(), 'from raw', 'echoed update content')
  fromEcho.destroy()
  await waitFor('the official client to receive the raw update',
    () => watcher.doc.getText('text').toString() === 'from raw',
    { seen: () => watcher.describe() })

  // an edit from the official client reaches the raw socket as an Update message
  watcher.doc.getText('text').insert(0, 'client> ')
  await raw.nextMatching('the official client\'s edit as a sync Update', (f) => {
    const r = decodeFrame(f)
    if (r.type !== MSG_SYNC || r.subtype !== SYNC_UPDATE) return null
    Y.applyUpdate(local, r.payload)
    return local.getText('text').toString() === 'client> from raw'
  })
  local.destroy()
  for (const f of raw.frames) decodeFrame(f)
})

test('every frame holds exactly one message under a burst of edits', { timeout: TEST_TIMEOUT }, async (t) => {
  const h = harness(t)
  const room = roomName('raw-burst')
  const a = h.client('v3', server, room)
  const b = h.client('v2', server, room)
  await Promise.all([a.synced(), b.synced()])
  const raw = await h.raw(server, room)
  const observer = new Y.Doc()
  raw.send(syncStep1Msg(observer))

  for (let i = 0; i < 300; i++) {
    const c = i % 2 ? a : b
    c.doc.getArray('array').push([i])
    if (i % 50 === 0) c.awareness.setLocalStateField('i', i)
  }
  await waitConverged('burst', [a, b])

  // Everything the raw observer got must decode frame by frame and rebuild the document.
  await waitFor('the raw observer to rebuild the document from the frames it received', () => {
    for (const f of raw.frames.splice(0)) {
      const m = decodeFrame(f)
      if (m.type === MSG_SYNC && m.subtype !== SYNC_STEP1) Y.applyUpdate(observer, m.payload)
    }
    return observer.getArray('array').length === 300
  }, { seen: () => `observer array length ${observer.getArray('array').length}` })
  assert.deepEqual(observer.getArray('array').toJSON(), a.doc.getArray('array').toJSON())
  observer.destroy()
})

const isStateOf = (clientId, name) => (f) => {
  const m = decodeFrame(f)
  if (m.type !== MSG_AWARENESS) return null
  const states = decodeAwareness(m.payload)
  return states.get(clientId)?.state?.user?.name === name ? states : null
}

const queryAwarenessMsg = () => {
  const q = encoding.createEncoder()
  encoding.writeVarUint(q, MSG_QUERY_AWARENESS)
  return encoding.toUint8Array(q)
}

test('awareness: broadcast to all (sender included), removed and announced when the connection drops', { timeout: TEST_TIMEOUT }, async (t) => {
  const h = harness(t)
  const room = roomName('raw-awareness')
  const r1 = await h.raw(server, room)
  const r2 = await h.raw(server, room)
  const clientId = 3_000_000_000 + Math.floor(Math.random() * 1000)

  r1.send(encodeAwarenessMsg(clientId, 1, { user: { name: 'raw one' } }))
  await r1.nextMatching('our awareness update echoed to the sender', isStateOf(clientId, 'raw one'))
  await r2.nextMatching('the awareness update broadcast to the other connection', isStateOf(clientId, 'raw one'))

  // a newcomer gets it on connect
  const r3 = await h.raw(server, room)
  await r3.nextMatching('current awareness states sent on connect', isStateOf(clientId, 'raw one'))

  // an abrupt disconnect removes the client's state, and the others are told
  r1.close()
  for (const [r, who] of [[r2, 'r2'], [r3, 'r3']]) {
    // (y-protocols accepts a null state with an equal clock as a removal; the reference
    // server sends exactly that)
    await r.nextMatching(`${who}: an awareness update removing client ${clientId} (state null, clock >= 1) after its connection closed`, (f) => {
      const m = decodeFrame(f)
      if (m.type !== MSG_AWARENESS) return null
      const s = decodeAwareness(m.payload).get(clientId)
      return s && s.state === null && s.clock >= 1
    })
  }

  // and a later newcomer does not get it any more
  const r4 = await h.raw(server, room)
  await r4.next('SyncStep1')
  await sleep(200)
  for (const f of r4.frames) {
    const m = decodeFrame(f)
    if (m.type === MSG_AWARENESS) {
      const s = decodeAwareness(m.payload).get(clientId)
      assert.ok(!s || s.state === null, `removed client ${clientId} still reported to a newcomer: ${brief(s)}`)
    }
  }
  for (const r of [r2, r3]) for (const f of r.frames) decodeFrame(f)
})

// Not implemented by the reference server of y-websocket 2.x (its message handler ignores
// type 3), but the official client answers it and our DESIGN requires the server to.
test('query awareness (type 3) is answered with all awareness states', { timeout: TEST_TIMEOUT }, async (t) => {
  const h = harness(t)
  const room = roomName('raw-query')
  const client = h.client('v3', server, room)
  await client.synced()
  client.awareness.setLocalStateField('user', { name: 'official' })
  const r1 = await h.raw(server, room)
  const clientId = 3_000_001_000 + Math.floor(Math.random() * 1000)
  r1.send(encodeAwarenessMsg(clientId, 1, { user: { name: 'raw' } }))
  await r1.nextMatching('our awareness update echoed to the sender', isStateOf(clientId, 'raw'))

  const r2 = await h.raw(server, room)
  await r2.next('SyncStep1')
  await sleep(100)
  r2.cursor = r2.frames.length // only look at what comes after the query
  r2.send(queryAwarenessMsg())
  const states = await r2.nextMatching('an awareness message answering the query, with both states', (f) => {
    const s = isStateOf(clientId, 'raw')(f)
    return s && s.get(client.doc.clientID)?.state?.user?.name === 'official' ? s : null
  })
  assert.ok(states.size >= 2, `answer holds ${states.size} state(s)`)
})

test('GET /healthz returns 200', { timeout: TEST_TIMEOUT }, async () => {
  const res = await fetch(`${server.httpUrl}/healthz`)
  assert.equal(res.status, 200)
  await res.arrayBuffer()
})
