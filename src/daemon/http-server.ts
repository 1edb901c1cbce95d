// A small HTTP/1.1 server over node:net for the agent's own endpoints (src/daemon/http.ts): GET and HEAD of a path,
// no request bodies, short text answers. Why not node:http: on a one-peer edge its modules (the server, the client
// and agent `require('http')` brings along, the llhttp parser) are ~0.9 MiB of the agent's RSS 30 s after ready
// (scripts/bench/footprint.ts, docs/footprint.md), a fifth of what separates the agent from the 50 MB target of
// issue 13, for endpoints that read one line and a few headers.
//
// What it accepts (RFC 9112), and what it does with the rest:
// - a request head of at most MAX_HEAD_BYTES: request line `METHOD SP target SP HTTP/1.x`, header fields
//   `name: value`; CRLF or bare LF line ends (RFC 9112 §2.2 lets a recipient accept LF). Anything else is a 400
//   (a larger head 431, another HTTP version 505), answered and the connection closed;
// - no body is read: a request announcing one (Content-Length > 0 or Transfer-Encoding) is answered and the
//   connection closed, since what follows the head is not a next request (§9.3);
// - persistent connections (HTTP/1.1 unless `Connection: close`; HTTP/1.0 always closes) and pipelining: requests
//   on a connection are answered in order, one at a time;
// - time: a connection idle for IDLE_TIMEOUT_MS between requests is closed (Prometheus and kubelet reconnect), and
//   a request head must arrive whole within HEAD_TIMEOUT_MS of its first byte (408 otherwise), so a client that
//   trickles bytes cannot hold a connection; at most MAX_CONNECTIONS at once (net.Server's maxConnections).
// Every answer has Content-Length and Date (src/iso-time.ts); HEAD gets the headers of GET without the body.
import { createServer, type AddressInfo, type Server, type Socket } from 'node:net'
import { httpDate } from '../iso-time.js'

export const MAX_HEAD_BYTES = 8192
export const HEAD_TIMEOUT_MS = 10_000
export const IDLE_TIMEOUT_MS = 5_000
export const MAX_CONNECTIONS = 64

export interface HttpRequest {
  method: string
  /** The request target as sent (`/status?x=1`). */
  target: string
  version: '1.0' | '1.1'
  /** Field names lower-cased; a repeated field's values joined with ", " (RFC 9110 §5.3). */
  headers: Map<string, string>
}

export interface HttpResponse {
  status: number
  body: string
  /** Header fields besides date, content-length and connection (lower-case names). */
  headers?: Record<string, string>
}

export type HttpHandler = (req: HttpRequest) => HttpResponse | Promise<HttpResponse>

export type ParsedHead =
  | { kind: 'incomplete' }
  | { kind: 'request'; req: HttpRequest; headBytes: number; hasBody: boolean }
  | { kind: 'error'; status: 400 | 431 | 505; reason: string }

const TOKEN = /^[!#$%&'*+.^_`|~0-9A-Za-z-]+$/
const REQUEST_LINE = /^([!#$%&'*+.^_`|~0-9A-Za-z-]+) ([\x21-\x7e]+) HTTP\/(\d)\.(\d)$/
const FIELD_VALUE = /^[\t\x20-\x7e\x80-\xff]*$/

/** The end of a head in `buf` (the index after its empty line), or -1. */
function headEnd(buf: Buffer): number {
  const lf = buf.indexOf('\n\n', 0, 'latin1')
  const crlf = buf.indexOf('\r\n\r\n', 0, 'latin1')
  const mixed = buf.indexOf('\n\r\n', 0, 'latin1')
  const ends = [lf < 0 ? -1 : lf + 2, crlf < 0 ? -1 : crlf + 4, mixed < 0 ? -1 : mixed + 3].filter((e) => e >= 0)
  return ends.length ? Math.min(...ends) : -1
}

/** Parses the request head at the start of `buf` (pure). */
export function parseHead(buf: Buffer, maxHeadBytes = MAX_HEAD_BYTES): ParsedHead {
  // RFC 9112 §2.2: a server should ignore empty lines received before the request line.
  let start = 0
  while (start < buf.length && (buf[start] === 0x0d || buf[start] === 0x0a)) start++
  const end = headEnd(start ? buf.subarray(start) : buf)
  if (end < 0) return buf.length - start > maxHeadBytes ? { kind: 'error', status: 431, reason: `request head larger than ${maxHeadBytes} bytes` } : { kind: 'incomplete' }
  if (end > maxHeadBytes) return { kind: 'error', status: 431, reason: `request head larger than ${maxHeadBytes} bytes` }
  const lines = buf.toString('latin1', start, start + end).split('\n').map((l) => (l.endsWith('\r') ? l.slice(0, -1) : l))
  while (lines.length && lines[lines.length - 1] === '') lines.pop()
  const m = REQUEST_LINE.exec(lines[0] ?? '')
  if (!m) return { kind: 'error', status: 400, reason: 'malformed request line' }
  if (m[3] !== '1') return { kind: 'error', status: 505, reason: `HTTP/${m[3]}.${m[4]} is not served here (HTTP/1.1)` }
  const version = m[4] === '0' ? '1.0' : '1.1'
  const headers = new Map<string, string>()
  for (const line of lines.slice(1)) {
    const colon = line.indexOf(':')
    // A line starting with whitespace is an obsolete line folding (RFC 9112 §5.2): rejected.
    if (colon <= 0 || !TOKEN.test(line.slice(0, colon))) return { kind: 'error', status: 400, reason: 'malformed header field' }
    const name = line.slice(0, colon).toLowerCase()
    const value = line.slice(colon + 1).replace(/^[ \t]+|[ \t]+$/g, '')
    if (!FIELD_VALUE.test(value)) return { kind: 'error', status: 400, reason: `invalid characters in header field ${name}` }
    const prev = headers.get(name)
    headers.set(name, prev === undefined ? value : `${prev}, ${value}`)
  }
  if (version === '1.1' && !headers.has('host')) return { kind: 'error', status: 400, reason: 'HTTP/1.1 request without Host' }
  const cl = headers.get('content-length')
  if (cl !== undefined && !/^\d{1,15}$/.test(cl)) return { kind: 'error', status: 400, reason: 'invalid Content-Length' }
  const hasBody = headers.has('transfer-encoding') || (cl !== undefined && Number(cl) > 0)
  return { kind: 'request', req: { method: m[1]!, target: m[2]!, version, headers }, headBytes: start + end, hasBody }
}

/** Whether the connection stays open after answering `req` (RFC 9112 §9.3; HTTP/1.0 always closes here). */
export function keepsAlive(req: HttpRequest, hasBody: boolean): boolean {
  if (hasBody || req.version === '1.0') return false
  return !(req.headers.get('connection') ?? '').toLowerCase().split(',').some((t) => t.trim() === 'close')
}

const REASONS: Record<number, string> = {
  200: 'OK', 400: 'Bad Request', 404: 'Not Found', 405: 'Method Not Allowed', 408: 'Request Timeout',
  431: 'Request Header Fields Too Large', 500: 'Internal Server Error', 503: 'Service Unavailable', 505: 'HTTP Version Not Supported',
}

/** The bytes of an answer (pure but for the clock). `head`: without the body (HEAD). */
export function renderResponse(res: HttpResponse, o: { head: boolean; close: boolean; now?: number }): Buffer {
  const body = Buffer.from(res.body, 'utf8')
  let text = `HTTP/1.1 ${res.status} ${REASONS[res.status] ?? 'Unknown'}\r\ndate: ${httpDate(o.now ?? Date.now())}\r\n`
  for (const [k, v] of Object.entries(res.headers ?? {})) text += `${k}: ${v}\r\n`
  text += `content-length: ${body.length}\r\nconnection: ${o.close ? 'close' : 'keep-alive'}\r\n\r\n`
  const head = Buffer.from(text, 'latin1')
  return o.head ? head : Buffer.concat([head, body])
}

/** One connection: reads heads, answers them in order, enforces the time limits. */
class Connection {
  private buf: Buffer = Buffer.alloc(0)
  private busy = false
  private closing = false
  private headTimer: NodeJS.Timeout | null = null

  constructor(private readonly sock: Socket, private readonly handler: HttpHandler, private readonly limits: Limits) {
    sock.setNoDelay(true)
    sock.setTimeout(limits.idleTimeoutMs, () => sock.destroy())
    sock.on('data', (chunk: Buffer) => this.onData(chunk))
    sock.on('error', () => sock.destroy())
    sock.on('close', () => this.clearHeadTimer())
  }

  private onData(chunk: Buffer): void {
    if (this.closing) return
    this.buf = this.buf.length ? Buffer.concat([this.buf, chunk]) : chunk
    // While an answer is pending, what the client sends next is kept, up to one head's worth; then the socket is
    // not read until the answer has left (next() reads again).
    if (this.busy && this.buf.length > this.limits.maxHeadBytes) this.sock.pause()
    this.next()
  }

  private clearHeadTimer(): void {
    if (this.headTimer) clearTimeout(this.headTimer)
    this.headTimer = null
  }

  /** Answers the next complete request in the buffer, if any and none is being answered. */
  private next(): void {
    if (this.busy || this.closing) return
    if (this.sock.isPaused()) this.sock.resume()
    const p = parseHead(this.buf, this.limits.maxHeadBytes)
    if (p.kind === 'incomplete') {
      if (this.buf.length > 0 && this.headTimer === null) {
        this.headTimer = setTimeout(() => this.fail(408, 'request head not received in time'), this.limits.headTimeoutMs)
        this.headTimer.unref()
      }
      return
    }
    this.clearHeadTimer()
    if (p.kind === 'error') return this.fail(p.status, p.reason)
    this.buf = this.buf.subarray(p.headBytes)
    const close = !keepsAlive(p.req, p.hasBody)
    if (close) this.closing = true
    this.busy = true
    const head = p.req.method === 'HEAD'
    let answer: Promise<HttpResponse>
    try {
      answer = Promise.resolve(this.handler(p.req))
    } catch (err) {
      answer = Promise.reject(err)
    }
    answer.then(
      (res) => this.write(res, head, close),
      (err: unknown) => this.write({ status: 500, body: `internal error: ${(err as Error)?.message ?? String(err)}\n`, headers: { 'content-type': 'text/plain; charset=utf-8' } }, head, close),
    )
  }

  private write(res: HttpResponse, head: boolean, close: boolean): void {
    if (this.sock.destroyed) return
    const bytes = renderResponse(res, { head, close })
    if (close) {
      this.sock.end(bytes)
      return
    }
    // A client that pipelines requests without reading the answers waits: the connection stays busy until this
    // answer has left (`drain`), so what it holds in memory is one answer, not one per request.
    const done = (): void => {
      this.busy = false
      this.next()
    }
    if (this.sock.write(bytes)) done()
    else this.sock.once('drain', done)
  }

  private fail(status: 400 | 408 | 431 | 505, reason: string): void {
    this.clearHeadTimer()
    this.closing = true
    if (this.busy || this.sock.destroyed) {
      this.sock.destroy()
      return
    }
    this.sock.end(renderResponse({ status, body: `${reason}\n`, headers: { 'content-type': 'text/plain; charset=utf-8' } }, { head: false, close: true }))
  }
}

interface Limits {
  maxHeadBytes: number
  headTimeoutMs: number
  idleTimeoutMs: number
  maxConnections: number
}

export interface SmallHttpServer {
  server: Server
  address: AddressInfo
  /** Stops listening and closes every connection, idle or not. */
  close(): Promise<void>
}

/** Listens on host:port; rejects with the listen error (EADDRINUSE, EACCES, ...). */
export async function listenHttp(host: string, port: number, handler: HttpHandler, limits: Partial<Limits> = {}): Promise<SmallHttpServer> {
  const l: Limits = { maxHeadBytes: MAX_HEAD_BYTES, headTimeoutMs: HEAD_TIMEOUT_MS, idleTimeoutMs: IDLE_TIMEOUT_MS, maxConnections: MAX_CONNECTIONS, ...limits }
  const sockets = new Set<Socket>()
  const server = createServer((sock) => {
    sockets.add(sock)
    sock.on('close', () => sockets.delete(sock))
    new Connection(sock, handler, l)
  })
  server.maxConnections = l.maxConnections
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject)
    server.listen(port, host, () => {
      server.off('error', reject)
      resolve()
    })
  })
  // Errors after listen (EMFILE on accept) must not end the process; the server keeps listening.
  server.on('error', () => undefined)
  return {
    server,
    address: server.address() as AddressInfo,
    close: () =>
      new Promise<void>((resolve) => {
        server.close(() => resolve())
        for (const s of sockets) s.destroy()
      }),
  }
}
