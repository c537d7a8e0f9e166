// Drives the demo in headless Chromium (Debian's /usr/bin/chromium, through playwright-core;
// no browser download). Run by crates/yrelay-server/tests/web_editor.rs:
//   node test/browser.mjs '{"base":"http://127.0.0.1:PORT","room":"r","screenshot":"out.png",
//                          "authBase":"http://127.0.0.1:PORT2","viewerToken":"…","authRoom":"r2"}'
// Prints one line per step; exits 1 with the reason on the first failure.
import { chromium } from 'playwright-core'

const cfg = JSON.parse(process.argv[2])
const step = (msg) => console.log(`ok: ${msg}`)
const fail = (msg) => { throw new Error(msg) }
const TIMEOUT = 20000

const browser = await chromium.launch({
  executablePath: cfg.chromium || '/usr/bin/chromium',
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync']
})

async function openPage (url) {
  const context = await browser.newContext({ viewport: { width: 900, height: 560 } })
  const page = await context.newPage()
  page.on('pageerror', (e) => console.log(`page error: ${e.message}`))
  await page.goto(url)
  return page
}

const text = (page) => page.evaluate(() => window.__demo.ytext.toString())
const status = (page) => page.locator('#status').getAttribute('data-status')

async function waitFor (what, fn) {
  const deadline = Date.now() + TIMEOUT
  let last
  while (Date.now() < deadline) {
    last = await fn()
    if (last === true) return
    await new Promise((resolve) => setTimeout(resolve, 100))
  }
  fail(`timed out waiting for ${what} (last: ${JSON.stringify(last)})`)
}

async function typeAtEnd (page, s) {
  await page.locator('.cm-content').click()
  await page.keyboard.press('Control+End')
  await page.keyboard.type(s)
}

try {
  const room = cfg.room
  const a = await openPage(`${cfg.base}/?room=${room}&name=Ann`)
  const b = await openPage(`${cfg.base}/?room=${room}&name=Bob`)
  for (const [who, page] of [['Ann', a], ['Bob', b]]) {
    await waitFor(`${who}'s page to sync`, async () => (await status(page)) === 'synced' || await status(page))
  }
  step('both pages synced')

  // Typing on both pages converges.
  await typeAtEnd(a, 'const fromAnn = 1;\n')
  await typeAtEnd(b, '// typed by Bob\n')
  await waitFor('both editors to converge', async () => {
    const [ta, tb] = [await text(a), await text(b)]
    return (ta === tb && ta.includes('const fromAnn = 1;') && ta.includes('// typed by Bob')) || [ta, tb]
  })
  const shownOnB = await b.locator('.cm-content').innerText()
  if (!shownOnB.includes('const fromAnn = 1;')) fail(`Bob's editor does not show Ann's line: ${shownOnB}`)
  step('typing on both pages converged, and the editor shows it')

  // Ann's cursor and name on Bob's page, and Ann in Bob's online list.
  await a.locator('.cm-content').click()
  await a.keyboard.press('Control+Home')
  await waitFor("Ann's remote cursor on Bob's page", async () => {
    const infos = await b.locator('.cm-ySelectionInfo').allInnerTexts()
    return infos.includes('Ann') || infos
  })
  await waitFor("Ann in Bob's online list", async () => {
    const users = await b.locator('#users').innerText()
    return (users.includes('Ann') && users.includes('Bob (you)')) || users
  })
  step("Bob's page shows Ann's remote cursor with her name, and both in the online list")

  // Chat.
  await a.fill('#chat-input', 'hello from Ann')
  await a.click('#chat-form button')
  await waitFor("Ann's chat message on Bob's page", async () => {
    const log = await b.locator('#chat-log').innerText()
    return log.includes('Ann: hello from Ann') || log
  })
  step("a chat message sent by Ann appears on Bob's page")

  // The language is shared.
  await a.selectOption('#language', 'python')
  await waitFor("Bob's page to switch to Python", async () => (await b.locator('#language').inputValue()) === 'python')
  step('switching the language on one page switches the other')

  // Offline: Bob goes offline, both edit, Bob comes back, both merge.
  await b.click('#toggle-connection')
  await waitFor("Bob's indicator to say offline", async () => (await status(b)) === 'offline' || await status(b))
  await typeAtEnd(b, '# Bob, offline\n')
  await typeAtEnd(a, '# Ann, meanwhile\n')
  await new Promise((resolve) => setTimeout(resolve, 500))
  if ((await text(a)).includes('# Bob, offline')) fail('Bob was not offline: his edit reached Ann')
  if ((await text(b)).includes('# Ann, meanwhile')) fail("Bob was not offline: Ann's edit reached him")
  step("while Bob is offline, neither sees the other's new edit")
  await b.click('#toggle-connection')
  await waitFor("Bob's page to sync again", async () => (await status(b)) === 'synced' || await status(b))
  await waitFor('the offline edit to merge', async () => {
    const [ta, tb] = [await text(a), await text(b)]
    return (ta === tb && ta.includes('# Bob, offline') && ta.includes('# Ann, meanwhile')) || [ta, tb]
  })
  step('after reconnecting, the offline edits merged on both pages')

  // A version saved from the page shows in its list, and at once on the other page: the
  // saving page announces it through awareness (not the other page's 10 s poll).
  const refreshes = (page) => page.evaluate(() => window.__demo.versionRefreshes())
  const before = (await refreshes(b)).length
  await a.fill('#version-label', 'after the demo')
  await a.click('#version-form button')
  await waitFor('the saved version in the list', async () => {
    const list = await a.locator('#versions').innerText()
    return list.includes('after the demo') || list
  })
  step('a named version saved from the page is listed')
  await waitFor("the saved version in the other page's list", async () => {
    const list = await b.locator('#versions').innerText()
    return list.includes('after the demo') || list
  })
  const since = (await refreshes(b)).slice(before)
  if (!since.includes('peer')) fail(`the other page refreshed only by ${JSON.stringify(since)}, not on the announcement`)
  step("the other page's list refreshed at once, on the saving page's announcement")

  // Screenshot: both editors side by side.
  await a.locator('.cm-content').click()
  await a.keyboard.press('Control+End')
  await b.locator('.cm-content').click()
  await b.keyboard.press('Control+Home')
  await new Promise((resolve) => setTimeout(resolve, 300))
  const shots = [await a.screenshot(), await b.screenshot()]
  const compose = await (await browser.newContext({ viewport: { width: 1816, height: 600 } })).newPage()
  await compose.setContent(`<body style="margin:0;background:#555;display:flex;gap:16px;padding:20px 0 0 0">
    ${shots.map((s, i) => `<figure style="margin:0;text-align:center;color:#fff;font:14px sans-serif">
      <img src="data:image/png;base64,${s.toString('base64')}" width="900"><figcaption>${i ? 'Bob' : 'Ann'}</figcaption></figure>`).join('')}
  </body>`)
  await compose.screenshot({ path: cfg.screenshot })
  step(`screenshot saved to ${cfg.screenshot}`)

  // With JWT on: no token → the token form; a viewer → a read-only editor.
  if (cfg.authBase) {
    const noToken = await openPage(`${cfg.authBase}/?room=${cfg.authRoom}`)
    await waitFor('the token form', async () => await noToken.locator('#token-form').isVisible())
    step('with auth on and no token, the page asks for one')
    const viewer = await openPage(`${cfg.authBase}/?room=${cfg.authRoom}&token=${cfg.viewerToken}&name=Vic`)
    await waitFor("the viewer's page to sync", async () => (await status(viewer)) === 'synced' || await status(viewer))
    const editable = await viewer.locator('.cm-content').getAttribute('contenteditable')
    if (editable !== 'false') fail(`the viewer's editor is editable (contenteditable=${editable})`)
    const badge = await viewer.locator('#role').innerText()
    if (!badge.includes('read-only')) fail(`no read-only badge: ${badge}`)
    const shown = await viewer.locator('.cm-content').innerText()
    if (!shown.includes(cfg.authText)) fail(`the viewer does not see the document: ${shown}`)
    await viewer.locator('.cm-content').click()
    await viewer.keyboard.type('viewer typing')
    if ((await text(viewer)).includes('viewer typing')) fail('the viewer could type')
    step('a viewer token opens a read-only editor that shows the document')
  }
  await browser.close()
} catch (err) {
  console.log(`FAILED: ${err.message}`)
  await browser.close()
  process.exit(1)
}
