// Scenarios run with the official y-websocket client, once per client version (v3 and v2).

import { describe, test, before, after } from 'node:test'
import assert from 'node:assert/strict'
import { randomBytes } from 'node:crypto'
import * as prng from 'lib0/prng'
import * as Y from 'yjs'

import {
  CLIENT_VERSIONS, TEST_TIMEOUT, harness, roomName, startServer, waitFor, waitConverged, brief, sleep
} from './helpers.js'

/** @type {import('./helpers.js').Server} */
let server
before(async () => { server = await startServer() })
after(async () => { await server?.cleanup() })

/**
 * Applies `count` random edits (text insert, map set, array push), alternating
 * between `clients` at random, without waiting for the network in between
 * except for short random pauses, so edits cross on the wire.
 * Returns what was done, to check nothing got lost.
 */
async function randomEdits (gen, clients, count) {
  const done = { textChars: 0, arrayItems: 0, mapKeys: new Set() }
  for (let i = 0; i < count; i++) {
    const c = clients[prng.int32(gen, 0, clients.length - 1)]
    const text = c.doc.getText('text')
    switch (prng.int32(gen, 0, 2)) {
      case 0: {
        const s = prng.word(gen, 1, 6)
        text.insert(prng.int32(gen, 0, text.length), s)
        done.textChars += s.length
        break
      }
      case 1: {
        const key = `k${prng.int32(gen, 0, 15)}`
        c.doc.getMap('map').set(key, { by: c.doc.clientID, i })
        done.mapKeys.add(key)
        break
      }
      default:
        c.doc.getArray('array').push([`${c.doc.clientID}:${i}`])
        done.arrayItems++
    }
    if (prng.int32(gen, 0, 9) === 0) await sleep(prng.int32(gen, 0, 3))
  }
  return done
}

for (const version of CLIENT_VERSIONS) {
  describe(`y-websocket ${version} client`, () => {
    test('two clients converge under concurrent edits', { timeout: TEST_TIMEOUT }, async (t) => {
      const h = harness(t)
      const room = roomName(`converge-${version}`)
      const a = h.client(version, server, room)
      const b = h.client(version, server, room)
      await Promise.all([a.synced(), b.synced()])

      const seed = Number.parseInt(process.env.YRELAY_COMPAT_SEED ?? String(Date.now() % 1_000_000), 10)
      t.diagnostic(`random seed ${seed} (set YRELAY_COMPAT_SEED to replay)`)
      const gen = prng.create(seed)
      const done = await randomEdits(gen, [a, b], 400)
      await waitConverged(`seed ${seed}`, [a, b])

      for (const c of [a, b]) {
        assert.equal(c.doc.getText('text').length, done.textChars, `${c.name}: text length (seed ${seed})`)
        assert.equal(c.doc.getArray('array').length, done.arrayItems, `${c.name}: array length (seed ${seed})`)
        assert.deepEqual(new Set(c.doc.getMap('map').keys()), done.mapKeys, `${c.name}: map keys (seed ${seed})`)
      }
      assert.deepEqual(a.doc.toJSON(), b.doc.toJSON())
      assert.deepEqual(Y.encodeStateVector(a.doc), Y.encodeStateVector(b.doc))
    })

    test('a late joiner gets the full state', { timeout: TEST_TIMEOUT }, async (t) => {
      const h = harness(t)
      const room = roomName(`late-${version}`)
      const a = h.client(version, server, room)
      const b = h.client(version, server, room)
      await Promise.all([a.synced(), b.synced()])
      a.doc.getText('text').insert(0, 'from A ')
      b.doc.getMap('map').set('b', 'from B')
      a.doc.getArray('array').push([1, 2, 3])
      await waitConverged('A and B', [a, b])

      // The first two leave before the late joiner arrives: the server alone must provide the state.
      a.destroy()
      b.destroy()
      const late = h.client(version, server, room)
      await late.synced()
      assert.deepEqual(late.doc.toJSON(), { text: 'from A ', map: { b: 'from B' }, array: [1, 2, 3] })
      assert.equal(late.doc.getText('text').toString(), 'from A ')
      assert.equal(late.doc.getMap('map').get('b'), 'from B')
      assert.deepEqual(late.doc.getArray('array').toArray(), [1, 2, 3])

      // ... and a late joiner also sees the state while others are still connected.
      const c = h.client(version, server, room)
      await c.synced()
      await waitConverged('late joiners', [late, c])
    })

    test('awareness state set by A appears at B and is removed when A goes away', { timeout: TEST_TIMEOUT }, async (t) => {
      const h = harness(t)
      const room = roomName(`awareness-${version}`)
      const a = h.client(version, server, room)
      const b = h.client(version, server, room)
      await Promise.all([a.synced(), b.synced()])

      const user = { name: `alice-${version}`, color: '#ff8800', cursor: { anchor: 3, head: 7 } }
      a.awareness.setLocalStateField('user', user)
      const aId = a.doc.clientID
      await waitFor(`B to see A's awareness state ${brief({ user })}`,
        () => b.awareness.getStates().get(aId)?.user?.name === user.name,
        { seen: () => `B's states: ${brief(Object.fromEntries(b.awareness.getStates()))}` })
      assert.deepEqual(b.awareness.getStates().get(aId), { user })

      // An update of the state also propagates.
      a.awareness.setLocalStateField('user', { ...user, cursor: { anchor: 9, head: 9 } })
      await waitFor('B to see A\'s updated cursor',
        () => b.awareness.getStates().get(aId)?.user?.cursor?.anchor === 9,
        { seen: () => `B's states: ${brief(Object.fromEntries(b.awareness.getStates()))}` })

      // A late joiner receives A's current awareness state on connect.
      const c = h.client(version, server, room)
      await c.synced()
      await waitFor('a late joiner C to receive A\'s awareness state on connect',
        () => c.awareness.getStates().get(aId)?.user?.cursor?.anchor === 9,
        { seen: () => `C's states: ${brief(Object.fromEntries(c.awareness.getStates()))}` })

      // Graceful: A's provider is destroyed.
      a.destroy()
      for (const other of [b, c]) {
        await waitFor(`${other.name} to see A's client id ${aId} removed after A's provider was destroyed`,
          () => !other.awareness.getStates().has(aId),
          { seen: () => `states: ${brief(Object.fromEntries(other.awareness.getStates()))}` })
      }
    })

    test('awareness of a client whose connection drops abruptly is removed by the server', { timeout: TEST_TIMEOUT }, async (t) => {
      const h = harness(t)
      const room = roomName(`awareness-drop-${version}`)
      const a = h.client(version, server, room)
      const b = h.client(version, server, room)
      await Promise.all([a.synced(), b.synced()])
      a.awareness.setLocalStateField('user', { name: 'dropper' })
      const aId = a.doc.clientID
      await waitFor('B to see A\'s awareness state',
        () => b.awareness.getStates().get(aId)?.user?.name === 'dropper',
        { seen: () => `B's states: ${brief(Object.fromEntries(b.awareness.getStates()))}` })

      // No close frame and no "state = null" goodbye from A: only the server can tell B.
      a.killConnection()
      await waitFor(`B to see A's client id ${aId} removed after A's TCP connection was cut`,
        () => !b.awareness.getStates().has(aId),
        { seen: () => `B's states: ${brief(Object.fromEntries(b.awareness.getStates()))}` })
      assert.ok(b.awareness.getStates().has(b.doc.clientID) || b.awareness.getLocalState() !== null)
    })

    test('a client created offline (connect: false) merges both ways on connect', { timeout: TEST_TIMEOUT }, async (t) => {
      const h = harness(t)
      const room = roomName(`offline-new-${version}`)
      const b = h.client(version, server, room)
      await b.synced()
      b.doc.getText('text').insert(0, 'online-B;')
      b.doc.getMap('map').set('b', 1)

      const a = h.client(version, server, room, { connect: false })
      a.doc.getText('text').insert(0, 'offline-A;')
      a.doc.getMap('map').set('a', 1)
      await sleep(100)
      assert.equal(b.doc.getMap('map').has('a'), false, 'an unconnected provider must not send anything')

      a.provider.connect()
      await a.synced()
      await waitConverged('offline A and online B', [a, b])
      for (const c of [a, b]) {
        const text = c.doc.getText('text').toString()
        assert.ok(text.includes('online-B;') && text.includes('offline-A;'), `${c.name} text has both edits: ${brief(text)}`)
        assert.deepEqual(c.doc.getMap('map').toJSON(), { a: 1, b: 1 })
      }
    })

    test('a client that edited while disconnected merges both ways on reconnect', { timeout: TEST_TIMEOUT }, async (t) => {
      const h = harness(t)
      const room = roomName(`offline-${version}`)
      const a = h.client(version, server, room)
      const b = h.client(version, server, room)
      await Promise.all([a.synced(), b.synced()])
      a.doc.getArray('array').push(['base'])
      await waitConverged('before going offline', [a, b])

      await a.disconnect()
      a.doc.getArray('array').push(['offline-A'])
      a.doc.getText('text').insert(0, 'A was offline')
      b.doc.getArray('array').push(['online-B'])
      b.doc.getText('text').insert(0, 'B stayed online|')
      await sleep(100)
      assert.deepEqual(b.doc.getArray('array').toArray().includes('offline-A'), false, 'a disconnected provider must not send')
      assert.deepEqual(a.doc.getArray('array').toArray().includes('online-B'), false, 'a disconnected provider must not receive')

      a.provider.connect()
      await a.synced()
      await waitConverged('after reconnect', [a, b])
      for (const c of [a, b]) {
        const arr = c.doc.getArray('array').toArray()
        assert.equal(arr.length, 3, `${c.name} array ${brief(arr)}`)
        assert.deepEqual(new Set(arr), new Set(['base', 'offline-A', 'online-B']))
        const text = c.doc.getText('text').toString()
        assert.ok(text.includes('A was offline') && text.includes('B stayed online|'), `${c.name} text ${brief(text)}`)
      }
    })

    test('rooms are isolated', { timeout: TEST_TIMEOUT }, async (t) => {
      const h = harness(t)
      const roomX = roomName(`iso-${version}`)
      // deliberately a name that has roomX as prefix
      const roomY = `${roomX}-2`
      const x1 = h.client(version, server, roomX)
      const x2 = h.client(version, server, roomX)
      const y1 = h.client(version, server, roomY)
      const y2 = h.client(version, server, roomY)
      await Promise.all([x1, x2, y1, y2].map((c) => c.synced()))

      x1.awareness.setLocalStateField('user', { room: 'X' })
      y1.awareness.setLocalStateField('user', { room: 'Y' })
      x1.doc.getText('text').insert(0, 'only in X')
      x1.doc.getMap('map').set('room', 'X')
      y1.doc.getText('text').insert(0, 'only in Y')
      y1.doc.getMap('map').set('room', 'Y')
      await waitConverged('room X', [x1, x2])
      await waitConverged('room Y', [y1, y2])
      await waitFor('X2 to see X1\'s awareness', () => x2.awareness.getStates().has(x1.doc.clientID))
      await waitFor('Y2 to see Y1\'s awareness', () => y2.awareness.getStates().has(y1.doc.clientID))
      await sleep(150)

      for (const c of [x1, x2]) {
        assert.equal(c.doc.getText('text').toString(), 'only in X', `${c.name}`)
        assert.deepEqual(c.doc.getMap('map').toJSON(), { room: 'X' })
        for (const id of c.awareness.getStates().keys()) {
          assert.ok([x1.doc.clientID, x2.doc.clientID].includes(id), `${c.name} sees awareness of client ${id} from another room`)
        }
      }
      for (const c of [y1, y2]) {
        assert.equal(c.doc.getText('text').toString(), 'only in Y', `${c.name}`)
        assert.deepEqual(c.doc.getMap('map').toJSON(), { room: 'Y' })
        for (const id of c.awareness.getStates().keys()) {
          assert.ok([y1.doc.clientID, y2.doc.clientID].includes(id), `${c.name} sees awareness of client ${id} from another room`)
        }
      }
      // A late joiner of Y gets Y's state only.
      const y3 = h.client(version, server, roomY)
      await y3.synced()
      assert.equal(y3.doc.getText('text').toString(), 'only in Y')
    })

    test('a 5 MB update round-trips', { timeout: TEST_TIMEOUT }, async (t) => {
      const h = harness(t)
      const room = roomName(`big-${version}`)
      const a = h.client(version, server, room)
      const b = h.client(version, server, room)
      await Promise.all([a.synced(), b.synced()])

      const big = randomBytes(3_932_160).toString('base64') // 5 MiB of ASCII
      assert.equal(big.length, 5 * 1024 * 1024)
      const start = Date.now()
      a.doc.getText('big').insert(0, big)
      a.doc.getText('small').insert(0, 'after big')
      await waitFor('B to receive the 5 MiB string and the small edit after it',
        () => b.doc.getText('big').length === big.length && b.doc.getText('small').toString() === 'after big',
        { timeout: 15_000, interval: 25, seen: () => `B has big.length=${b.doc.getText('big').length} small=${brief(b.doc.getText('small').toString())} (${b.describe().slice(0, 200)})` })
      t.diagnostic(`5 MiB update arrived after ${Date.now() - start} ms`)
      const got = b.doc.getText('big').toString()
      if (got !== big) {
        let i = 0
        while (i < got.length && got[i] === big[i]) i++
        assert.fail(`B's 5 MiB text differs from what A inserted: lengths ${got.length} vs ${big.length}, first difference at index ${i}`)
      }
      // the server holds it too: a late joiner gets it
      const c = h.client(version, server, room)
      await c.synced(12_000)
      assert.equal(c.doc.getText('big').length, big.length, 'late joiner text length')
      assert.ok(c.doc.getText('big').toString() === big, 'late joiner text equals the 5 MiB string')
    })

    test('a client reconnects after a server restart and the state survives', { timeout: TEST_TIMEOUT }, async (t) => {
      const h = harness(t)
      const own = await h.server() // restarting must not disturb the other tests' server
      const room = roomName(`restart-${version}`)
      const a = h.client(version, own, room)
      const b = h.client(version, own, room)
      await Promise.all([a.synced(), b.synced()])
      a.doc.getText('text').insert(0, 'before restart;')
      b.doc.getMap('map').set('before', true)
      await waitConverged('before the restart', [a, b])

      const port = own.port
      const stopped = await own.stop()
      assert.deepEqual({ code: stopped.code, signal: stopped.signal, killed: stopped.killed },
        { code: 0, signal: null, killed: false }, 'server should exit 0 on SIGTERM')
      await Promise.all([a.disconnected(), b.disconnected()])
      // edits made while the server is down
      a.doc.getArray('array').push(['while down'])

      await own.start()
      assert.equal(own.port, port, 'restarted on the same port')
      // the providers reconnect on their own (exponential backoff, at most 2.5 s)
      await Promise.all([a.synced(10_000), b.synced(10_000)])
      await waitConverged('after the restart', [a, b])

      a.doc.getText('text').insert(a.doc.getText('text').length, 'after restart;')
      b.doc.getArray('array').push(['after restart from B'])
      await waitConverged('new edits after the restart', [a, b])
      assert.equal(b.doc.getText('text').toString(), 'before restart;after restart;')

      // The restarted server holds the whole state (rebuilt from what the clients pushed back).
      const late = h.client(version, own, room)
      await late.synced()
      assert.deepEqual(late.doc.toJSON(), a.doc.toJSON())
      assert.deepEqual(late.doc.getArray('array').toArray(), ['while down', 'after restart from B'])
      assert.deepEqual(late.doc.getMap('map').toJSON(), { before: true })
    })
  })
}
