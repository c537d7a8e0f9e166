// Post-deploy smoke test for a running yrelay, with the official Yjs client libraries.
//
//   cd deploy/smoke && npm ci
//   YRELAY_URL=https://yrelay-staging.example.com YRELAY_ADMIN_KEY=... node smoke.mjs
//
// Checks, in order, each with a deadline:
//   1. GET /healthz answers 200 (the process serves HTTP).
//   2. GET /readyz answers 200 (the store is writable and the server is not shutting down).
//   3. The admin API mints two tokens for a fresh room: an editor and a viewer.
//   4. Two `y-websocket` providers (the same library browsers use) connect over ws(s)://
//      with those tokens and finish their initial sync; the editor inserts a random text and
//      the viewer must receive exactly that text.
//   5. The room is deleted again through the admin API.
// Exit code 0 when everything passed, 1 with a line saying what failed otherwise. Used by the
// Jenkinsfile after every deploy; a failure there rolls the deploy back.
//
// Environment:
//   YRELAY_URL         base URL, http(s)://host[:port] (the WebSocket URL is derived from it)
//   YRELAY_ADMIN_KEY   the admin key of that deployment (never printed)
//   SMOKE_TIMEOUT_MS   deadline for each step, default 15000
//   SMOKE_ROOM_PREFIX  room name prefix, default "smoke-"

import { randomBytes } from 'node:crypto'
import { setTimeout as sleep } from 'node:timers/promises'

import WebSocket from 'ws'
import * as Y from 'yjs'
import { WebsocketProvider } from 'y-websocket'

const baseUrl = (process.env.YRELAY_URL || '').replace(/\/+$/, '')
const adminKey = process.env.YRELAY_ADMIN_KEY || ''
const stepTimeout = Number(process.env.SMOKE_TIMEOUT_MS || 15000)
const room = `${process.env.SMOKE_ROOM_PREFIX || 'smoke-'}${randomBytes(8).toString('hex')}`

const log = (msg) => console.log(`smoke: ${msg}`)

function fail (msg) {
  console.error(`smoke: FAILED: ${msg}`)
  process.exit(1)
}

if (!/^https?:\/\/[^/]+$/.test(baseUrl)) {
  fail('YRELAY_URL must be http(s)://host[:port], e.g. https://yrelay-staging.example.com')
}
if (!adminKey) fail('YRELAY_ADMIN_KEY is not set (the smoke test mints its tokens through the admin API)')
if (!Number.isFinite(stepTimeout) || stepTimeout <= 0) fail('SMOKE_TIMEOUT_MS must be a positive number')

const wsUrl = baseUrl.replace(/^http/, 'ws')

/** fetch with a deadline; returns the Response. */
async function request (path, { method = 'GET', headers = {}, body } = {}) {
  try {
    return await fetch(`${baseUrl}${path}`, {
      method,
      headers,
      body,
      signal: AbortSignal.timeout(stepTimeout)
    })
  } catch (e) {
    fail(`${method} ${path}: ${e.cause?.message || e.message}`)
  }
}

/** Retries `GET path` until it answers 200 or the deadline passes (a pod that just became
 * ready can take a moment to appear behind the ingress). */
async function expectOk (path) {
  const deadline = Date.now() + stepTimeout
  let last = ''
  for (;;) {
    const res = await request(path)
    const text = (await res.text()).trim().slice(0, 200)
    if (res.status === 200) {
      log(`GET ${path} -> 200 ${text}`)
      return
    }
    last = `${res.status} ${text}`
    if (Date.now() > deadline) fail(`GET ${path} answered ${last}, expected 200`)
    await sleep(500)
  }
}

async function mint (role, sub) {
  const res = await request(`/v1/rooms/${encodeURIComponent(room)}/tokens`, {
    method: 'POST',
    headers: { authorization: `Bearer ${adminKey}`, 'content-type': 'application/json' },
    body: JSON.stringify({ role, sub, ttl_secs: 300 })
  })
  const text = await res.text()
  if (res.status !== 201) fail(`minting the ${role} token answered ${res.status} ${text.slice(0, 200)}`)
  const token = JSON.parse(text).token
  if (typeof token !== 'string' || !token) fail(`minting the ${role} token: no token in the answer`)
  return token
}

/** Resolves when `predicate()` is true; fails the test with `what` after the deadline. */
async function waitFor (what, predicate, seen = () => '') {
  const deadline = Date.now() + stepTimeout
  while (!predicate()) {
    if (Date.now() > deadline) fail(`timed out after ${stepTimeout} ms waiting for ${what}${seen() ? `; seen: ${seen()}` : ''}`)
    await sleep(25)
  }
}

function connect (name, token) {
  const doc = new Y.Doc()
  const events = []
  const provider = new WebsocketProvider(wsUrl, room, doc, {
    params: { token },
    WebSocketPolyfill: WebSocket,
    // One attempt at a time, quickly retried: a failed upgrade shows in `events`.
    maxBackoffTime: 1000
  })
  provider.on('status', ({ status }) => events.push(`${name} ${status}`))
  provider.on('connection-close', (ev) => events.push(`${name} closed ${ev?.code ?? ''} ${ev?.reason ?? ''}`.trim()))
  provider.on('connection-error', () => events.push(`${name} connection error`))
  return { doc, provider, events }
}

async function main () {
  log(`target ${baseUrl}, room ${room}`)
  await expectOk('/healthz')
  await expectOk('/readyz')

  const writerToken = await mint('editor', 'smoke-writer')
  const readerToken = await mint('viewer', 'smoke-reader')
  log('minted an editor and a viewer token (5 minutes)')

  const writer = connect('writer', writerToken)
  const reader = connect('reader', readerToken)
  const seen = () => [...writer.events, ...reader.events].slice(-6).join(', ')
  try {
    await waitFor('both clients to sync', () => writer.provider.synced && reader.provider.synced, seen)
    log('both clients connected and synced')

    const expected = `smoke ${new Date().toISOString()} ${randomBytes(4).toString('hex')}`
    const started = Date.now()
    writer.doc.getText('smoke').insert(0, expected)
    const received = reader.doc.getText('smoke')
    await waitFor('the viewer to receive the editor\'s text', () => received.toString() === expected,
      () => `viewer has ${JSON.stringify(received.toString())}; ${seen()}`)
    log(`viewer received the edit in ${Date.now() - started} ms`)
  } finally {
    writer.provider.destroy()
    reader.provider.destroy()
  }

  const res = await request(`/v1/rooms/${encodeURIComponent(room)}`, {
    method: 'DELETE',
    headers: { authorization: `Bearer ${adminKey}` }
  })
  if (res.status !== 204) fail(`deleting room ${room} answered ${res.status} ${(await res.text()).slice(0, 200)}`)
  log(`deleted room ${room}`)
  log('PASSED')
}

main().then(
  () => process.exit(0),
  (e) => fail(e?.stack || String(e))
)
