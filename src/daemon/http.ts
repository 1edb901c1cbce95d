// HTTP endpoints on --listen (127.0.0.1:30306 by default, FabEdge's port): /healthz, /readyz, /is-leader
// (keepalived polls it and expects the body `true` on the active connector), /metrics (Prometheus), /status (JSON).
import http from 'node:http'
import type { AddressInfo } from 'node:net'
import type { Registry } from 'prom-client'
import { httpDate } from '../iso-time.js'

export interface HttpHandlers {
  healthy(): boolean
  /** Stopping (SIGTERM): /healthz answers 503 `draining` so keepalived's check moves the VIP at once. */
  draining?(): boolean
  ready(): boolean
  leader(): boolean
  status(): unknown
  registry: Registry
}

export interface ListenAddress {
  host: string
  port: number
}

/** Parses `host:port`, `[v6]:port` or `:port` (all interfaces, only when asked for explicitly). */
export function parseListen(text: string): ListenAddress {
  const m = /^(?:\[([0-9a-fA-F:.]+)\]|([^:[\]]*)):(\d{1,5})$/.exec(text.trim())
  if (!m) throw new TypeError(`--listen must be host:port or [ipv6]:port, got "${text}"`)
  const port = Number(m[3])
  if (port > 65535) throw new TypeError(`--listen port out of range: ${port}`)
  const host = m[1] ?? (m[2] === '' ? '0.0.0.0' : m[2]!)
  return { host, port }
}

export async function startHttp(addr: ListenAddress, h: HttpHandlers): Promise<{ server: http.Server; address: AddressInfo; close(): Promise<void> }> {
  const server = http.createServer((req, res) => {
    const url = (req.url ?? '/').split('?')[0]
    const send = (code: number, body: string, type = 'text/plain; charset=utf-8') => {
      // RFC 9110 §15.5.6: a 405 must say which methods are allowed. The Date header is ours: Node's is written
      // with Date's toUTCString, which loads ICU's time zone data for good (src/iso-time.ts).
      res.sendDate = false
      res.writeHead(code, { date: httpDate(Date.now()), 'content-type': type, 'cache-control': 'no-store', ...(code === 405 ? { allow: 'GET, HEAD' } : {}) })
      res.end(req.method === 'HEAD' ? undefined : body)
    }
    if (req.method !== 'GET' && req.method !== 'HEAD') return send(405, 'method not allowed\n')
    try {
      switch (url) {
        case '/healthz':
          if (h.draining?.()) return send(503, 'draining\n')
          return h.healthy() ? send(200, 'ok\n') : send(503, 'unhealthy\n')
        case '/readyz':
          return h.ready() ? send(200, 'ready\n') : send(503, 'not ready\n')
        case '/is-leader':
          return send(200, h.leader() ? 'true' : 'false')
        case '/status':
          return send(200, `${JSON.stringify(h.status(), null, 2)}\n`, 'application/json')
        case '/metrics':
          h.registry.metrics().then(
            (text) => send(200, text, h.registry.contentType),
            (err: unknown) => send(500, `metrics failed: ${(err as Error).message}\n`),
          )
          return
        default:
          return send(404, 'not found: try /healthz /readyz /is-leader /metrics /status\n')
      }
    } catch (err) {
      return send(500, `internal error: ${(err as Error).message}\n`)
    }
  })
  server.keepAliveTimeout = 5_000
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject)
    server.listen(addr.port, addr.host, () => {
      server.off('error', reject)
      resolve()
    })
  })
  return {
    server,
    address: server.address() as AddressInfo,
    close: () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections()
        server.close(() => resolve())
      }),
  }
}
