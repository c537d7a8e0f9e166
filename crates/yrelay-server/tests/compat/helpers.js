// Shared helpers for the yrelay compatibility suite.
//
// The suite drives a real `yrelay` binary (path in $YRELAY_BIN) with the official
// npm client libraries: `y-websocket` v3 and v2 (aliased as `y-websocket-v2`).
// Everything here fails with a message that says what was expected and what was
// seen, and every wait has a deadline, so a broken server never hangs the suite.

import { spawn } from 'node:child_process'
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { randomBytes } from 'node:crypto'
import { setTimeout as sleep } from 'node:timers/promises'
import { isDeepStrictEqual } from 'node:util'

import * as Y from 'yjs'
import WebSocket from 'ws'
import { WebsocketProvider as WebsocketProviderV3 } from 'y-websocket'
import { WebsocketProvider as WebsocketProviderV2 } from 'y-websocket-v2'

export { sleep }

/** Client library versions under test, by short name. */
export const CLIENT_VERSIONS = /** @type {const} */ (['v3', 'v2'])

const PROVIDERS = {
  v3: WebsocketProviderV3,
  v2: WebsocketProviderV2
}

/** Per-test timeout (ms) used by every test in the suite. */
export const TEST_TIMEOUT = 20_000

/** Default deadline (ms) for a single wait inside a test. */
export const WAIT_TIMEOUT = 8_000

const LISTEN_LINE = /^yrelay listening on (wss?):\/\/127\.0\.0\.1:(\d+)\s*$/
const VERBOSE = process.env.YRELAY_COMPAT_VERBOSE === '1'

/** Every server process this test file started, so none outlives it. */
const liveChildren = new Set()
process.on('exit', () => {
  for (const child of liveChildren) {
    try { child.kill('SIGKILL') } catch {}
  }
})

/** A random room name, unique per call; `label` helps reading server logs. */
export const roomName = (label = 'room') =>
  `compat-${label}-${randomBytes(6).toString('hex')}`

/**
 * Polls `predicate` until it returns a truthy value.
 *
 * @template T
 * @param {string} what description of the awaited condition (used in the error)
 * @param {() => T} predicate
 * @param {{ timeout?: number, interval?: number, seen?: () => string }} [opts]
 *   `seen` describes the current state for the failure message
 * @returns {Promise<T>}
 */
export async function waitFor (what, predicate, { timeout = WAIT_TIMEOUT, interval = 10, seen } = {}) {
  const start = Date.now()
  for (;;) {
    const v = predicate()
    if (v) return v
    if (Date.now() - start > timeout) {
      let detail = ''
      if (seen) {
        try { detail = `; seen: ${seen()}` } catch (e) { detail = `; (describing state failed: ${e})` }
      }
      throw new Error(`timed out after ${timeout} ms waiting for ${what}${detail}`)
    }
    await sleep(interval)
  }
}

/** Shortens a value for failure messages. */
export function brief (value, max = 300) {
  let s
  try { s = JSON.stringify(value) } catch { s = String(value) }
  if (s === undefined) s = String(value)
  return s.length > max ? `${s.slice(0, max)}… (${s.length} chars)` : s
}

/** Hex dump of the first bytes of a buffer, for failure messages. */
export function hex (buf, max = 48) {
  const b = Buffer.from(buf.buffer ? buf.buffer.slice(buf.byteOffset, buf.byteOffset + buf.byteLength) : buf)
  const h = b.subarray(0, max).toString('hex').replace(/(..)/g, '$1 ').trim()
  return b.length > max ? `${h} … (${b.length} bytes)` : `${h} (${b.length} bytes)`
}

/** Returns true when two Uint8Arrays hold the same bytes. */
export const bytesEqual = (a, b) => Buffer.compare(Buffer.from(a), Buffer.from(b)) === 0

// ---------------------------------------------------------------------------
// Server process
// ---------------------------------------------------------------------------

/** A running (or stopped) yrelay server process. */
export class Server {
  /**
   * @param {string} dataDir
   * @param {{ env?: Record<string, string> }} [opts] extra environment (e.g. YRELAY_JWT_SECRET)
   */
  constructor (dataDir, { env = {} } = {}) {
    this.dataDir = dataDir
    this.extraEnv = env
    this.port = 0
    this.scheme = 'ws'
    /** @type {import('node:child_process').ChildProcess | null} */
    this.child = null
    this.stderrTail = ''
    this.exit = null
  }

  /** `ws://127.0.0.1:PORT`, the `serverUrl` clients are given. */
  get url () { return `${this.scheme}://127.0.0.1:${this.port}` }

  /** `http://127.0.0.1:PORT`. */
  get httpUrl () { return `${this.scheme === 'wss' ? 'https' : 'http'}://127.0.0.1:${this.port}` }

  /**
   * Starts the binary and resolves once it printed its listening line.
   * On the first start the port is chosen by the OS; later starts reuse it.
   */
  async start ({ timeout = 10_000 } = {}) {
    const bin = process.env.YRELAY_BIN
    if (!bin) throw new Error('YRELAY_BIN is not set: it must name the yrelay binary under test')
    if (this.child) throw new Error('server already running')
    const args = ['serve', '--listen', `127.0.0.1:${this.port}`, '--data-dir', this.dataDir]
    const child = spawn(bin, args, {
      stdio: ['ignore', 'pipe', 'pipe'],
      env: { RUST_LOG: process.env.RUST_LOG ?? 'info', ...process.env, ...this.extraEnv }
    })
    this.child = child
    this.exit = null
    liveChildren.add(child)
    const exited = new Promise((resolve) => {
      child.on('exit', (code, signal) => {
        liveChildren.delete(child)
        this.exit = { code, signal }
        resolve(this.exit)
      })
    })
    this.exited = exited
    child.stderr.setEncoding('utf8')
    child.stderr.on('data', (chunk) => {
      this.stderrTail = (this.stderrTail + chunk).slice(-8000)
      if (VERBOSE) process.stderr.write(`[yrelay:${this.port}] ${chunk}`)
    })
    child.stdout.setEncoding('utf8')
    let stdout = ''
    const desc = `${bin} ${args.join(' ')}`
    await new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        reject(new Error(`server did not print "yrelay listening on ws://127.0.0.1:PORT" within ${timeout} ms ` +
          `(${desc}); stdout so far: ${brief(stdout)}; stderr tail: ${this.stderrTail.slice(-2000)}`))
      }, timeout)
      const onData = (chunk) => {
        stdout += chunk
        const lines = stdout.split('\n')
        for (const line of lines.slice(0, -1)) {
          const m = LISTEN_LINE.exec(line)
          if (m) {
            clearTimeout(timer)
            child.stdout.off('data', onData)
            // keep draining stdout so the child never blocks on a full pipe
            child.stdout.on('data', (c) => { if (VERBOSE) process.stderr.write(`[yrelay:${this.port} stdout] ${c}`) })
            const port = Number(m[2])
            if (this.port !== 0 && port !== this.port) {
              reject(new Error(`server was asked to listen on port ${this.port} but announced ${line}`))
              return
            }
            this.scheme = m[1]
            this.port = port
            resolve()
            return
          }
          if (line.trim() !== '') {
            clearTimeout(timer)
            reject(new Error(`unexpected stdout line before the listening line: ${brief(line)} (${desc})`))
            return
          }
        }
      }
      child.stdout.on('data', onData)
      child.on('error', (err) => { clearTimeout(timer); reject(new Error(`could not spawn ${desc}: ${err.message}`)) })
      exited.then(({ code, signal }) => {
        clearTimeout(timer)
        reject(new Error(`server exited (code ${code}, signal ${signal}) before announcing its address (${desc}); ` +
          `stdout: ${brief(stdout)}; stderr tail: ${this.stderrTail.slice(-2000)}`))
      })
    })
    return this
  }

  /**
   * Sends SIGTERM and waits for the process to exit (SIGKILL after `timeout`).
   * @returns {Promise<{ code: number | null, signal: string | null, killed: boolean }>}
   */
  async stop ({ timeout = 5_000 } = {}) {
    const child = this.child
    if (!child) return { code: null, signal: null, killed: false }
    this.child = null
    if (this.exit) return { ...this.exit, killed: false }
    child.kill('SIGTERM')
    let killed = false
    const timer = setTimeout(() => { killed = true; child.kill('SIGKILL') }, timeout)
    const result = await this.exited
    clearTimeout(timer)
    return { ...result, killed }
  }

  /** Stops the server and starts it again on the same port. */
  async restart () {
    const result = await this.stop()
    await this.start()
    return result
  }
}

/**
 * Starts a yrelay server with a fresh data directory. The server is stopped and
 * the directory removed by `cleanup`, which is returned alongside.
 */
export async function startServer (opts = {}) {
  const dataDir = mkdtempSync(join(tmpdir(), 'yrelay-compat-'))
  const server = new Server(dataDir, opts)
  try {
    await server.start()
  } catch (e) {
    await server.stop()
    rmSync(dataDir, { recursive: true, force: true })
    throw e
  }
  server.cleanup = async () => {
    await server.stop()
    rmSync(dataDir, { recursive: true, force: true })
  }
  return server
}

// ---------------------------------------------------------------------------
// Per-test resources
// ---------------------------------------------------------------------------

/**
 * Tracks everything a test creates (servers, providers, docs, raw sockets) and
 * releases it when the test ends, whether it passed, failed or timed out.
 *
 * @param {import('node:test').TestContext} t
 */
export function harness (t) {
  const h = new Harness()
  t.after(() => h.cleanup())
  return h
}

export class Harness {
  constructor () {
    this.cleanups = []
  }

  defer (fn) { this.cleanups.push(fn) }

  async cleanup () {
    const fns = this.cleanups.reverse()
    this.cleanups = []
    for (const fn of fns) {
      try { await fn() } catch (e) { console.error('cleanup failed:', e) }
    }
  }

  /** Starts a server owned by this test. */
  async server (opts = {}) {
    const s = await startServer(opts)
    this.defer(() => s.cleanup())
    return s
  }

  /**
   * Creates a Y.Doc and an official WebsocketProvider for it.
   *
   * @param {'v2' | 'v3'} version client library version
   * @param {Server | string} server server (or its ws:// URL)
   * @param {string} room
   * @param {{ connect?: boolean, doc?: Y.Doc, params?: Record<string, string> }} [opts]
   *   `params` become URL query parameters (e.g. `{ token }`)
   */
  client (version, server, room, { connect = true, doc = new Y.Doc(), params = {} } = {}) {
    const Provider = PROVIDERS[version]
    if (!Provider) throw new Error(`unknown client version ${version}`)
    const url = typeof server === 'string' ? server : server.url
    // Define the root types the tests use, so that `doc.toJSON()` includes them
    // on every client (yjs only lists root types that were defined locally).
    // Defining a root type creates no update.
    doc.getText('text')
    doc.getMap('map')
    doc.getArray('array')
    const provider = new Provider(url, room, doc, {
      connect,
      params,
      WebSocketPolyfill: WebSocket,
      disableBc: true
    })
    const client = new Client(version, doc, provider, room)
    this.defer(() => client.destroy())
    return client
  }

  /**
   * Opens a raw `ws` socket to `server`'s room and records every frame.
   * @param {Server} server
   * @param {string} room
   */
  async raw (server, room) {
    const raw = new RawSocket(`${server.url}/${room}`)
    this.defer(() => raw.close())
    await raw.opened
    return raw
  }
}

/** A Y.Doc with its provider, plus convenience waits. */
export class Client {
  constructor (version, doc, provider, room) {
    this.version = version
    this.doc = doc
    this.provider = provider
    this.room = room
    this.destroyed = false
  }

  get name () { return `${this.version} client ${this.doc.clientID} in ${this.room}` }
  get awareness () { return this.provider.awareness }

  describe () {
    const p = this.provider
    return `${this.name}: wsconnected=${p.wsconnected} wsconnecting=${p.wsconnecting} synced=${p.synced} ` +
      `doc=${brief(this.doc.toJSON())}`
  }

  /** Waits for the provider to be connected and synced with the server. */
  async synced (timeout = WAIT_TIMEOUT) {
    await waitFor(`${this.name} to connect and receive SyncStep2 (provider.synced)`,
      () => this.provider.wsconnected && this.provider.synced,
      { timeout, seen: () => this.describe() })
  }

  /** Waits until the provider reports the connection as lost. */
  async disconnected (timeout = WAIT_TIMEOUT) {
    await waitFor(`${this.name} to notice the connection is gone`,
      () => !this.provider.wsconnected,
      { timeout, seen: () => this.describe() })
  }

  /**
   * `provider.disconnect()`, then waits until the socket is fully closed.
   * (The v2 client keeps handling frames that arrive while its socket is
   * closing, so "disconnected" only means something once it is CLOSED.)
   */
  async disconnect (timeout = WAIT_TIMEOUT) {
    const ws = this.provider.ws
    this.provider.disconnect()
    await this.disconnected(timeout)
    if (ws) {
      await waitFor(`${this.name}: its socket to reach CLOSED after provider.disconnect()`,
        () => ws.readyState === WebSocket.CLOSED,
        { timeout, seen: () => `readyState=${ws.readyState}` })
    }
  }

  /**
   * Closes the TCP connection abruptly (no close frame, no awareness goodbye)
   * and stops the provider from reconnecting.
   */
  killConnection () {
    this.provider.shouldConnect = false
    const ws = this.provider.ws
    if (ws) ws.terminate()
  }

  destroy () {
    if (this.destroyed) return
    this.destroyed = true
    this.provider.destroy()
    // also destroys the awareness instance and its interval timer
    this.doc.destroy()
  }
}

/**
 * Waits until all docs hold the same state: equal state vectors and equal JSON.
 * @param {string} what
 * @param {Client[]} clients
 */
export async function waitConverged (what, clients, timeout = WAIT_TIMEOUT) {
  const same = () => {
    const [first, ...rest] = clients
    const sv = Y.encodeStateVector(first.doc)
    const json = first.doc.toJSON()
    // (map key order in toJSON() follows local insertion order, so compare structurally)
    return rest.every((c) => bytesEqual(Y.encodeStateVector(c.doc), sv) && isDeepStrictEqual(c.doc.toJSON(), json))
  }
  await waitFor(`${what}: all docs to converge (equal state vectors and toJSON)`, same, {
    timeout,
    seen: () => clients.map((c) => `\n  ${c.name}: sv=${brief(Object.fromEntries(Y.decodeStateVector(Y.encodeStateVector(c.doc))))} ` +
      `json=${brief(c.doc.toJSON(), 400)} (connected=${c.provider.wsconnected}, synced=${c.provider.synced})`).join('')
  })
}

// ---------------------------------------------------------------------------
// Raw protocol socket
// ---------------------------------------------------------------------------

/** A `ws` client socket that records every frame it receives. */
export class RawSocket {
  constructor (url) {
    this.url = url
    /** @type {{ data: Uint8Array, isBinary: boolean }[]} */
    this.frames = []
    this.cursor = 0
    this.closed = null
    this.ws = new WebSocket(url)
    this.ws.binaryType = 'nodebuffer'
    this.opened = new Promise((resolve, reject) => {
      this.ws.once('open', resolve)
      this.ws.once('error', (e) => reject(new Error(`raw socket to ${url} failed: ${e.message}`)))
    })
    this.ws.on('message', (data, isBinary) => {
      this.frames.push({ data: new Uint8Array(data.buffer, data.byteOffset, data.byteLength), isBinary })
    })
    this.ws.on('close', (code, reason) => { this.closed = { code, reason: reason.toString() } })
    this.ws.on('error', () => {})
  }

  send (bytes) { this.ws.send(bytes) }

  /**
   * Returns the next frame not yet taken, waiting for it if needed.
   * @param {string} what what the frame is expected to be (for the error message)
   */
  async next (what, timeout = WAIT_TIMEOUT) {
    await waitFor(`a frame from the server (${what})`, () => this.frames.length > this.cursor || this.closed, {
      timeout,
      seen: () => `${this.frames.length} frame(s) so far: ${this.frames.map((f) => hex(f.data, 12)).join(' | ')}`
    })
    if (this.frames.length <= this.cursor) {
      throw new Error(`connection closed (code ${this.closed.code}, reason ${brief(this.closed.reason)}) while waiting for ${what}`)
    }
    return this.frames[this.cursor++]
  }

  /**
   * Skips frames until `match(frame)` returns a truthy value, and returns that value.
   */
  async nextMatching (what, match, timeout = WAIT_TIMEOUT) {
    const deadline = Date.now() + timeout
    const skipped = []
    for (;;) {
      const left = deadline - Date.now()
      if (left <= 0) break
      let frame
      try {
        frame = await this.next(what, left)
      } catch (e) {
        throw new Error(`${e.message}; frames skipped meanwhile: ${skipped.join(' | ') || 'none'}`)
      }
      const v = match(frame)
      if (v) return v
      skipped.push(hex(frame.data, 12))
    }
    throw new Error(`timed out after ${timeout} ms waiting for ${what}; frames skipped: ${skipped.join(' | ') || 'none'}`)
  }

  close () {
    if (this.ws.readyState === WebSocket.OPEN || this.ws.readyState === WebSocket.CONNECTING) {
      this.ws.terminate()
    }
  }
}
