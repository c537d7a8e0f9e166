// Auth seen by the official clients: tokens passed with `params: { token }`, a viewer's
// edits never applied nor seen by others (the viewer is told why through the y-protocols
// auth message), an editor's applied; and the REST API used by a backend next to a live
// official client. Run for the v3 and the v2 client.

import { describe, test } from 'node:test'
import assert from 'node:assert/strict'
import { randomBytes } from 'node:crypto'

import * as Y from 'yjs'

import { CLIENT_VERSIONS, TEST_TIMEOUT, harness, roomName, waitFor, sleep } from './helpers.js'

const SECRET = randomBytes(32).toString('hex')
const ADMIN = randomBytes(24).toString('hex')
const ENV = { YRELAY_JWT_SECRET: SECRET, YRELAY_ADMIN_KEY: ADMIN }

/** Calls the REST API; `auth` is a token or the admin key. */
async function api (server, method, path, { auth, json, body } = {}) {
  const headers = {}
  if (auth) headers.authorization = `Bearer ${auth}`
  if (json !== undefined) headers['content-type'] = 'application/json'
  const res = await fetch(`${server.httpUrl}${path}`, {
    method,
    headers,
    body: json !== undefined ? JSON.stringify(json) : body
  })
  const buf = new Uint8Array(await res.arrayBuffer())
  let parsed
  try { parsed = JSON.parse(Buffer.from(buf).toString('utf8')) } catch {}
  return { status: res.status, json: parsed, bytes: buf }
}

async function mint (server, room, role, sub) {
  const res = await api(server, 'POST', `/v1/rooms/${encodeURIComponent(room)}/tokens`,
    { auth: ADMIN, json: { role, sub, ttl_secs: 600 } })
  assert.equal(res.status, 201, `minting a ${role} token: ${JSON.stringify(res.json)}`)
  return res.json.token
}

/** Collects what the provider reports through console.warn (its permission-denied handler). */
function captureWarnings () {
  const seen = []
  const original = console.warn
  console.warn = (...args) => { seen.push(args.join(' ')) }
  return { seen, restore: () => { console.warn = original } }
}

for (const version of CLIENT_VERSIONS) {
  describe(`y-websocket ${version} client, auth`, () => {
    test('a viewer\'s edit is not applied nor seen by others; an editor\'s is', { timeout: TEST_TIMEOUT }, async (t) => {
      const h = harness(t)
      const server = await h.server({ env: ENV })
      const room = roomName(`viewer-${version}`)
      const editor = h.client(version, server, room, { params: { token: await mint(server, room, 'editor', 'ed') } })
      const viewer = h.client(version, server, room, { params: { token: await mint(server, room, 'viewer', 'vi') } })
      await editor.synced()
      await viewer.synced()

      editor.doc.getText('text').insert(0, 'hello')
      await waitFor('the viewer to receive the editor\'s edit', () => viewer.doc.getText('text').toString() === 'hello',
        { seen: () => viewer.describe() })

      const warnings = captureWarnings()
      t.after(warnings.restore)
      viewer.doc.getText('text').insert(0, 'EVIL ')
      await waitFor('the viewer to be told its edit was refused',
        () => warnings.seen.some((w) => w.includes('read-only')),
        { seen: () => JSON.stringify(warnings.seen) })
      warnings.restore()
      await sleep(300)
      assert.equal(editor.doc.getText('text').toString(), 'hello', 'the editor never sees the viewer\'s edit')
      const fresh = h.client(version, server, room, { params: { token: await mint(server, room, 'viewer', 'late') } })
      await fresh.synced()
      assert.equal(fresh.doc.getText('text').toString(), 'hello', 'a new client never sees it either')
      const state = await api(server, 'GET', `/v1/rooms/${room}/json`, { auth: ADMIN })
      assert.equal(state.json.text, 'hello')

      // The viewer stays connected and keeps receiving edits.
      editor.doc.getText('text').insert(5, ' world')
      await waitFor('the viewer to receive later edits', () => viewer.doc.getText('text').toString().includes(' world'),
        { seen: () => viewer.describe() })
    })

    test('a refused token never opens a WebSocket; a room-A token cannot open room B', { timeout: TEST_TIMEOUT }, async (t) => {
      const h = harness(t)
      const server = await h.server({ env: ENV })
      const a = roomName(`a-${version}`)
      const b = roomName(`b-${version}`)
      const wrong = h.client(version, server, b, { params: { token: await mint(server, a, 'owner', 'x') } })
      const none = h.client(version, server, b)
      await sleep(800)
      assert.equal(wrong.provider.wsconnected, false)
      assert.equal(none.provider.wsconnected, false)
      assert.equal(wrong.provider.synced, false)
      wrong.destroy()
      none.destroy()
    })
  })
}

describe('REST next to a live official client', () => {
  test('an offline doc catches up with state?sv= and posts its diff; the live client sees it', { timeout: TEST_TIMEOUT }, async (t) => {
    const h = harness(t)
    const server = await h.server({ env: ENV })
    const room = roomName('rest')
    const token = await mint(server, room, 'editor', 'backend')
    const live = h.client('v3', server, room, { params: { token } })
    await live.synced()
    live.doc.getText('text').insert(0, 'live;')

    // The offline replica knew nothing; it fetches only what it lacks.
    const offline = new Y.Doc()
    offline.getText('text').insert(0, 'offline;')
    for (let i = 0; ; i++) {
      const json = await api(server, 'GET', `/v1/rooms/${room}/json`, { auth: token })
      if (json.json?.text === 'live;') break
      assert.ok(i < 200, `the live edit never reached the server: ${JSON.stringify(json.json)}`)
      await sleep(20)
    }
    const sv = Buffer.from(Y.encodeStateVector(offline)).toString('base64url')
    const diff = await api(server, 'GET', `/v1/rooms/${room}/state?sv=${sv}`, { auth: token })
    assert.equal(diff.status, 200)
    Y.applyUpdate(offline, diff.bytes)
    assert.match(offline.getText('text').toString(), /live;/)

    // It posts only what the server lacks.
    const serverSv = await api(server, 'GET', `/v1/rooms/${room}/state-vector`, { auth: token })
    const mine = Y.encodeStateAsUpdate(offline, serverSv.bytes)
    const posted = await api(server, 'POST', `/v1/rooms/${room}/update`, { auth: token, body: mine })
    assert.equal(posted.status, 200, JSON.stringify(posted.json))
    assert.equal(posted.json.changed, true)
    await waitFor('the live client to see the posted edit', () => live.doc.getText('text').toString().includes('offline;'),
      { seen: () => live.describe() })
    assert.equal(live.doc.getText('text').toString(), offline.getText('text').toString())
  })
})
