import t, { type Test } from 'tap'
import { spawn } from 'node:child_process'
import http from 'node:http'
import { connect, type Socket } from 'node:net'
import { keepsAlive, listenHttp, parseHead, renderResponse, type HttpHandler, type HttpRequest } from '../../../src/daemon/http-server.js'

const head = (s: string) => parseHead(Buffer.from(s, 'latin1'))

t.test('parseHead: request line, fields, line ends, what is incomplete', async (t) => {
  const p = head('GET /status?x=1 HTTP/1.1\r\nHost: a\r\nAccept: */*\r\naccept: text/plain\r\nX-Pad:  v  \r\n\r\nGET / HTTP/1.1')
  t.equal(p.kind, 'request')
  if (p.kind !== 'request') return
  t.same({ ...p.req, headers: Object.fromEntries(p.req.headers) }, { method: 'GET', target: '/status?x=1', version: '1.1', headers: { host: 'a', accept: '*/*, text/plain', 'x-pad': 'v' } }, 'names lower-cased, repeats joined, values trimmed')
  t.equal(p.headBytes, 'GET /status?x=1 HTTP/1.1\r\nHost: a\r\nAccept: */*\r\naccept: text/plain\r\nX-Pad:  v  \r\n\r\n'.length, 'the head ends at its empty line; what follows is the next request')
  t.equal(p.hasBody, false)
  const lf = head('GET /a HTTP/1.1\nHost: a\n\n')
  t.match(lf, { kind: 'request', req: { target: '/a' }, headBytes: 'GET /a HTTP/1.1\nHost: a\n\n'.length }, 'bare LF line ends (RFC 9112 §2.2)')
  t.match(head('\r\n\r\nGET /b HTTP/1.0\r\n\r\n'), { kind: 'request', req: { target: '/b', version: '1.0' }, headBytes: 'GET /b HTTP/1.0\r\n\r\n'.length + 4 }, 'empty lines before the request line are skipped; HTTP/1.0 needs no Host')
  for (const partial of ['', 'GET / HTTP/1.1', 'GET / HTTP/1.1\r\nHost: a\r\n', '\r\n']) t.same(head(partial), { kind: 'incomplete' }, JSON.stringify(partial))
})

t.test('parseHead: what it refuses, with the status it answers', async (t) => {
  const cases: Array<[string, number, RegExp]> = [
    ['GET /\r\n\r\n', 400, /request line/],
    ['GET  / HTTP/1.1\r\nHost: a\r\n\r\n', 400, /request line/],
    ['GET / HTTP/1.1 extra\r\nHost: a\r\n\r\n', 400, /request line/],
    ['G(T / HTTP/1.1\r\nHost: a\r\n\r\n', 400, /request line/],
    ['GET /\x7f HTTP/1.1\r\nHost: a\r\n\r\n', 400, /request line/],
    ['GET / HTTP/2.0\r\nHost: a\r\n\r\n', 505, /HTTP\/2\.0/],
    ['GET / HTTP/1.1\r\n\r\n', 400, /without Host/],
    ['GET / HTTP/1.1\r\nHost : a\r\n\r\n', 400, /malformed header/],
    ['GET / HTTP/1.1\r\nHost: a\r\n folded\r\n\r\n', 400, /malformed header/],
    ['GET / HTTP/1.1\r\nHost: a\r\nnocolon\r\n\r\n', 400, /malformed header/],
    ['GET / HTTP/1.1\r\nHost: a\r\nX: a\x00b\r\n\r\n', 400, /invalid characters in header field x/],
    ['GET / HTTP/1.1\r\nHost: a\r\nContent-Length: -1\r\n\r\n', 400, /Content-Length/],
    ['GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 1, 2\r\n\r\n', 400, /Content-Length/],
    [`GET / HTTP/1.1\r\nHost: a\r\nX: ${'a'.repeat(9000)}\r\n\r\n`, 431, /larger than 8192/],
    [`GET / HTTP/1.1\r\nHost: a\r\nX: ${'a'.repeat(9000)}`, 431, /larger than 8192/],
  ]
  for (const [text, status, reason] of cases) t.match(head(text), { kind: 'error', status, reason }, JSON.stringify(text.slice(0, 60)))
  t.match(head('POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc'), { kind: 'request', hasBody: true })
  t.match(head('POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n'), { kind: 'request', hasBody: true })
  t.match(head('GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n'), { kind: 'request', hasBody: false })
})

t.test('keepsAlive: HTTP/1.1 unless Connection: close; never HTTP/1.0 or a request with a body', async (t) => {
  const req = (version: '1.0' | '1.1', connection?: string): HttpRequest => ({ method: 'GET', target: '/', version, headers: new Map(connection ? [['connection', connection]] : []) })
  t.equal(keepsAlive(req('1.1'), false), true)
  t.equal(keepsAlive(req('1.1', 'close'), false), false)
  t.equal(keepsAlive(req('1.1', 'TE, Close'), false), false, 'a token list, any case')
  t.equal(keepsAlive(req('1.1', 'keep-alive'), true), false, 'an unread body ends the connection')
  t.equal(keepsAlive(req('1.0', 'keep-alive'), false), false)
})

t.test('renderResponse: status line, Date, the fields, Content-Length of the body even for HEAD', async (t) => {
  const res = { status: 200, body: 'héllo\n', headers: { 'content-type': 'text/plain; charset=utf-8' } }
  const now = Date.UTC(2026, 11, 2, 21, 0, 0)
  t.equal(renderResponse(res, { head: false, close: false, now }).toString('utf8'),
    'HTTP/1.1 200 OK\r\ndate: Wed, 02 Dec 2026 21:00:00 GMT\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: 7\r\nconnection: keep-alive\r\n\r\nhéllo\n')
  t.equal(renderResponse(res, { head: true, close: true, now }).toString('utf8'),
    'HTTP/1.1 200 OK\r\ndate: Wed, 02 Dec 2026 21:00:00 GMT\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: 7\r\nconnection: close\r\n\r\n')
})

const echo: HttpHandler = (req) => ({ status: 200, body: `${req.method} ${req.target}\n`, headers: { 'content-type': 'text/plain' } })

async function serve(t: Test, handler: HttpHandler = echo, limits = {}) {
  const s = await listenHttp('127.0.0.1', 0, handler, limits)
  t.teardown(() => s.close())
  return s
}

/** Writes `data` on a fresh connection and reads until the server closes it (or `ms` pass). */
async function raw(port: number, data: string | string[], ms = 3000): Promise<{ text: string; closed: boolean }> {
  const sock = connect(port, '127.0.0.1')
  let text = ''
  sock.on('data', (b: Buffer) => { text += b.toString('utf8') })
  const closed = new Promise<boolean>((resolve) => {
    sock.on('close', () => resolve(true))
    sock.on('error', () => resolve(true))
    setTimeout(() => resolve(false), ms).unref()
  })
  await new Promise((r) => sock.once('connect', r))
  for (const part of Array.isArray(data) ? data : [data]) {
    sock.write(part)
    await new Promise((r) => setTimeout(r, 20))
  }
  const c = await closed
  sock.destroy()
  return { text, closed: c }
}

const statuses = (text: string) => [...text.matchAll(/^HTTP\/1\.1 (\d{3}) /gm)].map((m) => Number(m[1]))

t.test('pipelined requests are answered in order on one connection; Connection: close ends it after its answer', async (t) => {
  let slow = true
  const s = await serve(t, async (req) => {
    // The first answer is the slow one: the second must still come after it.
    if (req.target === '/1' && slow) await new Promise((r) => setTimeout(r, 100))
    return echo(req)
  })
  const r = await raw(s.address.port, 'GET /1 HTTP/1.1\r\nHost: a\r\n\r\nHEAD /2 HTTP/1.1\r\nHost: a\r\n\r\nGET /3 HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\nGET /4 HTTP/1.1\r\nHost: a\r\n\r\n')
  slow = false
  t.equal(r.closed, true, 'closed after the request that asked')
  t.same(statuses(r.text), [200, 200, 200], 'three answers, none for the request after the close')
  t.ok(r.text.indexOf('GET /1') < r.text.indexOf('GET /3'), 'in order')
  t.notMatch(r.text, /HEAD \/2\n/, 'HEAD: no body')
  t.match(r.text, /content-length: 8\r\nconnection: keep-alive\r\n\r\nHTTP\/1\.1/, "HEAD's Content-Length is GET's")
  t.match(r.text, /connection: close\r\n\r\nGET \/3\n$/, 'the last answer says close')
})

t.test('a client pipelining without reading gets no more answers than the socket takes; reading resumes them', async (t) => {
  let answered = 0
  const big = 'x'.repeat(1 << 20)
  const s = await serve(t, () => (answered++, { status: 200, body: big }))
  const sock = connect(s.address.port, '127.0.0.1')
  t.teardown(() => sock.destroy())
  await new Promise((r) => sock.once('connect', r))
  sock.pause()
  sock.write('GET / HTTP/1.1\r\nHost: a\r\n\r\n'.repeat(50))
  await new Promise((r) => setTimeout(r, 300))
  t.ok(answered >= 1 && answered < 20, `${answered} of 50 answered while the client reads nothing (1 MiB each)`)
  let bytes = 0
  const all = new Promise<void>((resolve) => sock.on('data', (b: Buffer) => { bytes += b.length; if (answered === 50 && bytes >= 50 * (1 << 20)) resolve() }))
  sock.resume()
  await all
  t.equal(answered, 50, 'all answered once the client reads')
})

t.test('requests that arrive while an answer waits to drain wait too; a client that keeps writing is not read', async (t) => {
  let answered = 0
  const big = 'x'.repeat(1 << 20)
  const s = await serve(t, () => (answered++, { status: 200, body: big }))
  const sock = connect(s.address.port, '127.0.0.1')
  t.teardown(() => sock.destroy())
  await new Promise((r) => sock.once('connect', r))
  sock.pause()
  // One request at a time, each after the server had time to answer the one before.
  for (let i = 0; i < 30; i++) {
    sock.write('GET / HTTP/1.1\r\nHost: a\r\n\r\n')
    await new Promise((r) => setTimeout(r, 10))
  }
  const atRequests = answered
  // Then 32 MiB of further requests, more than the kernel's socket buffers take: the server stops reading
  // instead of holding them, so most of it stays in the client.
  sock.write(Buffer.from('GET / HTTP/1.1\r\nHost: a\r\n\r\n'.repeat(1 << 20)))
  await new Promise((r) => setTimeout(r, 300))
  t.ok(atRequests >= 1 && atRequests < 20, `${atRequests} of 30 answered while the client reads nothing`)
  t.ok(sock.writableLength > 16 << 20, `${(sock.writableLength / 2 ** 20).toFixed(1)} MiB of the flood still in the client: the server does not read it`)
  t.ok(answered < 20, `${answered} answered after the flood`)
})

t.test('a request split over many writes is answered once whole; HTTP/1.0 closes', async (t) => {
  const s = await serve(t)
  const r = await raw(s.address.port, ['GE', 'T /sp', 'lit HTTP/1.0\r', '\n\r', '\n'])
  t.equal(r.closed, true)
  t.same(statuses(r.text), [200])
  t.match(r.text, /GET \/split\n$/)
})

t.test('malformed, oversized and body-carrying requests are answered and the connection closed', async (t) => {
  const s = await serve(t)
  const bad = await raw(s.address.port, 'BAD REQUEST\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n')
  t.same(statuses(bad.text), [400], 'nothing after a malformed head is read')
  t.equal(bad.closed, true)
  t.match(bad.text, /malformed request line\n$/)
  const big = await raw(s.address.port, `GET / HTTP/1.1\r\nHost: a\r\nX: ${'a'.repeat(10_000)}`)
  t.same(statuses(big.text), [431])
  t.equal(big.closed, true, 'closed without waiting for the rest of the head')
  const v2 = await raw(s.address.port, 'GET / HTTP/2.0\r\nHost: a\r\n\r\n')
  t.same(statuses(v2.text), [505])
  const body = await raw(s.address.port, 'GET /b HTTP/1.1\r\nHost: a\r\nContent-Length: 40\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n')
  t.same(statuses(body.text), [200], 'answered, and what follows (the body) is never taken for a request')
  t.notMatch(body.text, /smuggled/)
  t.equal(body.closed, true)
})

t.test('time limits: a head trickled in too slowly gets 408; an idle connection is closed', async (t) => {
  const s = await serve(t, echo, { headTimeoutMs: 300, idleTimeoutMs: 200 })
  const t0 = Date.now()
  // Each byte within the idle limit, the whole head never: the head limit ends it.
  const slow = await raw(s.address.port, ['G', 'E', 'T', ' ', '/', ' ', 'H', 'T', 'T', 'P'].flatMap((c) => [c, ...Array(4).fill('')]), 5000)
  t.same(statuses(slow.text), [408])
  t.equal(slow.closed, true)
  t.ok(Date.now() - t0 < 3000, 'ended by the head limit')
  const idle = await raw(s.address.port, 'GET / HTTP/1.1\r\nHost: a\r\n\r\n', 3000)
  t.same(statuses(idle.text), [200])
  t.equal(idle.closed, true, 'a kept-alive connection left idle is closed by the server')
  const control = await raw(s.address.port, 'GET / HTTP/1.1\r\nHost: a\r\n\r\n', 100)
  t.equal(control.closed, false, 'and not before its idle limit (the check can fail)')
})

t.test('a handler that throws or rejects is a 500; the connection and the server keep serving', async (t) => {
  const s = await serve(t, (req) => {
    if (req.target === '/sync') throw new Error('sync boom')
    if (req.target === '/async') return Promise.reject(new Error('async boom'))
    return echo(req)
  })
  const r = await raw(s.address.port, 'GET /sync HTTP/1.1\r\nHost: a\r\n\r\nGET /async HTTP/1.1\r\nHost: a\r\n\r\nGET /ok HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n')
  t.same(statuses(r.text), [500, 500, 200])
  t.match(r.text, /internal error: sync boom\n/)
  t.match(r.text, /internal error: async boom\n/)
})

t.test('at most maxConnections at once; close() ends idle kept-alive connections', async (t) => {
  const s = await serve(t, echo, { maxConnections: 2 })
  const open: Socket[] = []
  for (let i = 0; i < 2; i++) {
    const c = connect(s.address.port, '127.0.0.1')
    await new Promise((r) => c.once('connect', r))
    open.push(c)
  }
  await new Promise((r) => setTimeout(r, 50))
  const third = await raw(s.address.port, 'GET / HTTP/1.1\r\nHost: a\r\n\r\n', 2000)
  t.equal(third.text, '', 'the third connection is refused')
  t.equal(third.closed, true)
  const closedBy = open.map((c) => new Promise((r) => c.once('close', r)))
  await s.close()
  await Promise.all(closedBy)
  t.pass('close() closed both open connections')
})

t.test('real clients: Node\'s http with keep-alive, fetch, curl (keepalived\'s check) and wget', async (t) => {
  const s = await serve(t)
  const agent = new http.Agent({ keepAlive: true, maxSockets: 1 })
  t.teardown(() => agent.destroy())
  const get = (path: string) => new Promise<string>((resolve, reject) => {
    http.get({ host: '127.0.0.1', port: s.address.port, path, agent }, (res) => {
      let b = ''
      res.on('data', (c: Buffer) => { b += c.toString() })
      res.on('end', () => resolve(b))
    }).on('error', reject)
  })
  const sockets = new Set<unknown>()
  agent.on('free', (sock) => sockets.add(sock))
  t.same([await get('/a'), await get('/b'), await get('/c')], ['GET /a\n', 'GET /b\n', 'GET /c\n'])
  t.equal(sockets.size, 1, 'three requests over one kept-alive connection')
  t.equal(await (await fetch(`http://127.0.0.1:${s.address.port}/f`)).text(), 'GET /f\n')
  const run = (cmd: string, args: string[]) => new Promise<{ code: number | null; out: string }>((resolve) => {
    const p = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'] })
    let out = ''
    p.stdout.on('data', (b: Buffer) => { out += b.toString() })
    p.on('close', (code) => resolve({ code, out }))
  })
  const curl = await run('curl', ['--silent', '--fail', '--max-time', '5', '--noproxy', '*', `http://127.0.0.1:${s.address.port}/healthz`, `http://127.0.0.1:${s.address.port}/again`])
  t.same(curl, { code: 0, out: 'GET /healthz\nGET /again\n' }, 'curl, two URLs over one connection')
  const wget = await run('wget', ['-q', '-O', '-', '--no-proxy', '-T', '5', `http://127.0.0.1:${s.address.port}/w`])
  t.same(wget, { code: 0, out: 'GET /w\n' })
})
