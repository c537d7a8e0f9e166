// The yrelay demo: a collaborative code editor on the official yjs + y-websocket clients,
// CodeMirror 6 and y-codemirror.next. Everything shared lives in one Y.Doc per room:
//   Y.Text  'code'      the document being edited
//   Y.Map   'meta'      { language }
//   Y.Array 'chat'      [{ name, color, text, time }]
// Presence (names, colours, cursors, selections) travels as awareness.
import './style.css'
import * as Y from 'yjs'
import { WebsocketProvider } from 'y-websocket'
import { yCollab, yUndoManagerKeymap } from 'y-codemirror.next'
import { basicSetup } from 'codemirror'
import { EditorView, keymap } from '@codemirror/view'
import { EditorState, Compartment } from '@codemirror/state'
import { javascript } from '@codemirror/lang-javascript'
import { python } from '@codemirror/lang-python'
import { rust } from '@codemirror/lang-rust'
import { html } from '@codemirror/lang-html'
import { css } from '@codemirror/lang-css'

const LANGUAGES = {
  javascript: () => javascript(),
  typescript: () => javascript({ typescript: true }),
  python: () => python(),
  rust: () => rust(),
  html: () => html(),
  css: () => css()
}
const COLORS = ['#e6194b', '#3cb44b', '#4363d8', '#f58231', '#911eb4', '#008080', '#9a6324', '#800000']

const params = new URLSearchParams(location.search)
const room = params.get('room') || 'demo'
const token = params.get('token') || ''
const name = params.get('name') || `guest-${Math.floor(Math.random() * 9000 + 1000)}`
const color = COLORS[Math.floor(Math.random() * COLORS.length)]
const $ = (id) => document.getElementById(id)

$('room-label').textContent = `room “${room}”`
document.title = `${room} — yrelay editor`

const roomPath = `/v1/rooms/${encodeURIComponent(room)}`
const authHeaders = token ? { Authorization: `Bearer ${token}` } : {}

async function api (path, options = {}) {
  const res = await fetch(roomPath + path, {
    ...options,
    headers: { ...authHeaders, ...(options.headers || {}) }
  })
  const body = res.headers.get('content-type')?.includes('json') ? await res.json() : await res.text()
  if (!res.ok) throw new Error(body?.error || `${res.status} ${body}`)
  return body
}

/** The role a token carries (its payload is plain base64url JSON); owner when auth is off. */
function tokenRole () {
  if (!token) return null
  try {
    const payload = token.split('.')[1].replace(/-/g, '+').replace(/_/g, '/')
    return JSON.parse(atob(payload)).role || null
  } catch {
    return null
  }
}

async function start () {
  // Is a token needed (JWT on) and is ours accepted? The REST API answers the same way the
  // WebSocket upgrade would.
  const probe = await fetch(`${roomPath}/state-vector`, { headers: authHeaders })
  if (probe.status === 401 || probe.status === 403) {
    const reason = (await probe.json().catch(() => ({}))).error
    $('token-form').hidden = false
    $('app').hidden = true
    if (token) $('token-reason').textContent = `The token was refused: ${reason || probe.status}`
    $('token-form').addEventListener('submit', (e) => {
      e.preventDefault()
      const next = new URLSearchParams(location.search)
      next.set('token', $('token-input').value.trim())
      location.search = next.toString()
    })
    return
  }
  const role = tokenRole() || (token ? 'editor' : 'owner')
  const readOnly = role === 'viewer'
  $('role').textContent = token ? role : 'auth off'
  if (readOnly) {
    $('role').textContent = 'viewer: read-only'
    $('role').classList.add('readonly')
  }

  const doc = new Y.Doc()
  const ytext = doc.getText('code')
  const meta = doc.getMap('meta')
  const chat = doc.getArray('chat')
  const serverUrl = `${location.protocol === 'https:' ? 'wss' : 'ws'}://${location.host}`
  const provider = new WebsocketProvider(serverUrl, room, doc, {
    params: token ? { token } : {},
    disableBc: true
  })
  provider.awareness.setLocalStateField('user', { name, color, colorLight: color + '33' })

  // Connection indicator: offline / connecting / online (connected, catching up) / synced.
  const setStatus = (s) => {
    $('status').textContent = s
    $('status').dataset.status = s
    $('status').className = `status ${s}`
  }
  provider.on('status', ({ status }) => {
    if (status === 'connected') setStatus(provider.synced ? 'synced' : 'online')
    else if (status === 'connecting') setStatus('connecting')
    else setStatus('offline')
  })
  provider.on('sync', (synced) => { if (synced && provider.wsconnected) setStatus('synced') })
  $('toggle-connection').addEventListener('click', () => {
    if (provider.shouldConnect) {
      provider.disconnect()
      $('toggle-connection').textContent = 'Go online'
    } else {
      provider.connect()
      $('toggle-connection').textContent = 'Go offline'
    }
  })

  // The editor.
  const language = new Compartment()
  const undoManager = new Y.UndoManager(ytext)
  const view = new EditorView({
    parent: $('editor'),
    state: EditorState.create({
      doc: ytext.toString(),
      extensions: [
        keymap.of(yUndoManagerKeymap),
        basicSetup,
        language.of(LANGUAGES[meta.get('language')]?.() || LANGUAGES.javascript()),
        yCollab(ytext, provider.awareness, { undoManager }),
        EditorState.readOnly.of(readOnly),
        EditorView.editable.of(!readOnly),
        EditorView.theme({ '&': { height: '100%' }, '.cm-scroller': { fontFamily: 'ui-monospace, monospace' } })
      ]
    })
  })

  // Language: shared, so every page switches together.
  const applyLanguage = () => {
    const lang = meta.get('language') || 'javascript'
    $('language').value = lang
    view.dispatch({ effects: language.reconfigure((LANGUAGES[lang] || LANGUAGES.javascript)()) })
  }
  meta.observe(applyLanguage)
  $('language').disabled = readOnly
  $('language').addEventListener('change', (e) => meta.set('language', e.target.value))

  // Who is online.
  const renderUsers = () => {
    const items = []
    provider.awareness.getStates().forEach((state, clientId) => {
      if (!state.user) return
      const li = document.createElement('li')
      li.textContent = state.user.name + (clientId === doc.clientID ? ' (you)' : '')
      li.style.borderLeft = `6px solid ${state.user.color}`
      items.push(li)
    })
    $('users').replaceChildren(...items)
  }
  provider.awareness.on('change', renderUsers)
  renderUsers()

  // Chat: a Y.Array in the same document, so it is offline-first and persisted like the code.
  const renderChat = () => {
    const items = chat.toArray().slice(-100).map((m) => {
      const li = document.createElement('li')
      const who = document.createElement('b')
      who.textContent = m.name + ': '
      who.style.color = m.color
      li.append(who, document.createTextNode(m.text))
      return li
    })
    $('chat-log').replaceChildren(...items)
    $('chat-log').scrollTop = $('chat-log').scrollHeight
  }
  chat.observe(renderChat)
  renderChat()
  $('chat-input').disabled = readOnly
  $('chat-form').addEventListener('submit', (e) => {
    e.preventDefault()
    const text = $('chat-input').value.trim()
    if (!text || readOnly) return
    chat.push([{ name, color, text, time: Date.now() }])
    $('chat-input').value = ''
  })

  // Versions, through the REST API (list: viewer; save: editor; restore: owner). A page that
  // saves or restores one says so in its awareness state (`versions`: a stamp), so the other
  // pages on the room refresh their lists at once; versions made elsewhere (the API, the CLI,
  // the server's automatic ones) show within the 10 s poll.
  const versionStamps = new Map()
  const refreshes = [] // why each successful refresh happened (for the browser test)
  const renderVersions = async (reason) => {
    try {
      const { versions } = await api('/versions')
      $('versions').replaceChildren(...versions.map((v) => {
        const li = document.createElement('li')
        const when = new Date(v.created_ms).toLocaleTimeString()
        li.textContent = `#${v.id} ${v.label || v.kind.toLowerCase()} · ${when} `
        if (role === 'owner') {
          const b = document.createElement('button')
          b.type = 'button'
          b.textContent = 'Restore'
          b.addEventListener('click', async () => {
            try {
              await api(`/versions/${v.id}/restore`, { method: 'POST' })
              $('version-error').textContent = ''
              announceVersions()
            } catch (err) { $('version-error').textContent = err.message }
          })
          li.append(b)
        }
        return li
      }))
      $('version-error').textContent = ''
      refreshes.push(reason)
    } catch (err) {
      $('version-error').textContent = err.message
    }
  }
  $('version-form').querySelector('button').disabled = readOnly
  $('version-form').addEventListener('submit', async (e) => {
    e.preventDefault()
    try {
      await api('/versions', {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ label: $('version-label').value.trim() || undefined })
      })
      $('version-label').value = ''
      announceVersions()
    } catch (err) {
      $('version-error').textContent = err.message
    }
    renderVersions('self')
  })
  const announceVersions = () => provider.awareness.setLocalStateField('versions', Date.now())
  provider.awareness.on('change', () => {
    let changed = false
    provider.awareness.getStates().forEach((state, clientId) => {
      if (clientId === doc.clientID || state.versions === undefined) return
      if (versionStamps.get(clientId) !== state.versions) {
        changed = true
        versionStamps.set(clientId, state.versions)
      }
    })
    if (changed) renderVersions('peer')
  })
  renderVersions('load')
  setInterval(() => renderVersions('poll'), 10000)

  // For the browser test and for curious people in the devtools console.
  window.__demo = { doc, provider, ytext, chat, meta, view, room, name, versionRefreshes: () => refreshes.slice() }
}

start()
