// HTTP endpoints on --listen (127.0.0.1:30306 by default, FabEdge's port): /healthz, /readyz, /is-leader
// (keepalived polls it and expects the body `true` on the active connector), /metrics (Prometheus), /status (JSON).
import type { Registry } from 'prom-client'
import { listenHttp, type HttpHandler, type HttpResponse, type SmallHttpServer } from './http-server.js'

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

/** The endpoints' answers (a handler that throws is a 500 with its reason; the server keeps serving). */
export function route(h: HttpHandlers): HttpHandler {
  const text = (status: number, body: string, type = 'text/plain; charset=utf-8'): HttpResponse => ({
    // RFC 9110 §15.5.6: a 405 must say which methods are allowed.
    status, body, headers: { 'content-type': type, 'cache-control': 'no-store', ...(status === 405 ? { allow: 'GET, HEAD' } : {}) },
  })
  return (req) => {
    if (req.method !== 'GET' && req.method !== 'HEAD') return text(405, 'method not allowed\n')
    try {
      switch (req.target.split('?')[0]) {
        case '/healthz':
          if (h.draining?.()) return text(503, 'draining\n')
          return h.healthy() ? text(200, 'ok\n') : text(503, 'unhealthy\n')
        case '/readyz':
          return h.ready() ? text(200, 'ready\n') : text(503, 'not ready\n')
        case '/is-leader':
          return text(200, h.leader() ? 'true' : 'false')
        case '/status':
          return text(200, `${JSON.stringify(h.status(), null, 2)}\n`, 'application/json')
        case '/metrics':
          return h.registry.metrics().then(
            (body) => text(200, body, h.registry.contentType),
            (err: unknown) => text(500, `metrics failed: ${(err as Error).message}\n`),
          )
        default:
          return text(404, 'not found: try /healthz /readyz /is-leader /metrics /status\n')
      }
    } catch (err) {
      return text(500, `internal error: ${(err as Error).message}\n`)
    }
  }
}

/** The endpoints on `addr` (src/daemon/http-server.ts: a small HTTP/1.1 server, not node:http; it says why). */
export async function startHttp(addr: ListenAddress, h: HttpHandlers): Promise<SmallHttpServer> {
  return listenHttp(addr.host, addr.port, route(h))
}
