// Persistence seen by the official clients: edits survive a restart even when no
// client is left to push them back, and restoring a version makes live clients
// converge to it as an ordinary edit. Run for the v3 and the v2 client.

import { describe, test } from 'node:test'
import assert from 'node:assert/strict'

import { CLIENT_VERSIONS, TEST_TIMEOUT, harness, roomName, waitFor, brief } from './helpers.js'

async function api (server, method, path, body) {
  const res = await fetch(`${server.httpUrl}${path}`, {
    method,
    headers: body === undefined ? {} : { 'content-type': 'application/json' },
    body: body === undefined ? undefined : JSON.stringify(body)
  })
  const text = await res.text()
  let json
  try { json = JSON.parse(text) } catch { json = undefined }
  return { status: res.status, json, text }
}

for (const version of CLIENT_VERSIONS) {
  describe(`y-websocket ${version} client, persistence`, () => {
    test('edits survive a restart with every client gone', { timeout: TEST_TIMEOUT }, async (t) => {
      const h = harness(t)
      const server = await h.server()
      const room = roomName(`persist-${version}`)
      const a = h.client(version, server, room)
      await a.synced()
      a.doc.getText('text').insert(0, 'kept across restarts')
      a.doc.getMap('map').set('answer', 42)
      const b = h.client(version, server, room)
      await waitFor('B to receive A\'s edits', () => b.doc.getText('text').toString() === 'kept across restarts',
        { seen: () => b.describe() })
      a.destroy()
      b.destroy()

      const stopped = await server.restart()
      assert.equal(stopped.code, 0, `exit on SIGTERM: ${JSON.stringify(stopped)}`)

      const late = h.client(version, server, room)
      await late.synced()
      assert.equal(late.doc.getText('text').toString(), 'kept across restarts')
      assert.equal(late.doc.getMap('map').get('answer'), 42)
    })

    test('a client connecting while a large room loads never sees it empty', { timeout: TEST_TIMEOUT }, async (t) => {
      const h = harness(t)
      const server = await h.server()
      const room = roomName(`large-${version}`)
      const big = 'lorem ipsum '.repeat(350_000) // ~4 MB
      const a = h.client(version, server, room)
      await a.synced()
      a.doc.getText('text').insert(0, big)
      const check = h.client(version, server, room)
      await waitFor('the large text to reach a second client', () => check.doc.getText('text').length === big.length,
        { timeout: 15_000, seen: () => check.describe() })
      a.destroy()
      check.destroy()
      await server.restart()

      // Connect at once, while the server is loading the room; record what the client holds
      // at the moment it first reports being synced.
      const late = h.client(version, server, room)
      const lengthAtSync = await new Promise((resolve) => {
        late.provider.on('sync', (synced) => { if (synced) resolve(late.doc.getText('text').length) })
      })
      assert.equal(lengthAtSync, big.length, 'synced before the room was loaded')
    })

    test('restoring a version converges two live clients to it', { timeout: TEST_TIMEOUT }, async (t) => {
      const h = harness(t)
      const server = await h.server()
      const room = roomName(`restore-${version}`)
      const a = h.client(version, server, room)
      const b = h.client(version, server, room)
      await Promise.all([a.synced(), b.synced()])
      a.doc.getText('text').insert(0, 'version one')
      a.doc.getMap('map').set('state', 'v1')
      await waitFor('B to see version one', () => b.doc.getText('text').toString() === 'version one',
        { seen: () => b.describe() })

      const saved = await api(server, 'POST', `/v1/rooms/${encodeURIComponent(room)}/versions`, { label: 'first' })
      assert.equal(saved.status, 201, saved.text)
      assert.equal(saved.json.label, 'first')

      // Both clients edit on: text replaced, a key added, an array filled.
      b.doc.getText('text').delete(0, 7)
      b.doc.getText('text').insert(0, 'changed')
      a.doc.getMap('map').set('state', 'v2')
      a.doc.getMap('map').set('extra', true)
      b.doc.getArray('array').push([1, 2, 3])
      await waitFor('both to see the later edits',
        () => a.doc.getText('text').toString() === 'changed one' && b.doc.getMap('map').get('extra') === true &&
          a.doc.getArray('array').length === 3,
        { seen: () => `${a.describe()} | ${b.describe()}` })

      const listed = await api(server, 'GET', `/v1/rooms/${encodeURIComponent(room)}/versions`)
      assert.equal(listed.status, 200, listed.text)
      assert.ok(listed.json.versions.some((v) => v.id === saved.json.id), brief(listed.json))

      const restored = await api(server, 'POST', `/v1/rooms/${encodeURIComponent(room)}/versions/${saved.json.id}/restore`)
      assert.equal(restored.status, 200, restored.text)
      assert.equal(restored.json.changed, true)

      for (const c of [a, b]) {
        await waitFor(`${c.name} to converge to the restored version`,
          () => c.doc.getText('text').toString() === 'version one' && c.doc.getMap('map').get('state') === 'v1' &&
            !c.doc.getMap('map').has('extra') && c.doc.getArray('array').length === 0,
          { seen: () => c.describe() })
      }
      assert.deepEqual(a.doc.toJSON(), b.doc.toJSON())

      const missing = await api(server, 'POST', `/v1/rooms/${encodeURIComponent(room)}/versions/999999/restore`)
      assert.equal(missing.status, 404, missing.text)
      const audit = await api(server, 'GET', `/v1/rooms/${encodeURIComponent(room)}/audit?limit=1000`)
      assert.equal(audit.status, 200, audit.text)
      assert.ok(audit.json.records.length >= 5, brief(audit.json))
      assert.ok(audit.json.records.every((r) => r.bytes > 0 && r.time_ms > 0), brief(audit.json))
      assert.ok(audit.json.records.some((r) => r.author === 'anonymous'), brief(audit.json))
      const last = audit.json.records[audit.json.records.length - 1]
      assert.equal(last.author, 'yrelay', `the restore is the newest change: ${brief(last)}`)
      assert.equal(last.origin, `restore of version ${saved.json.id}`)
    })
  })
}
