import t, { type Test } from 'tap'
import http from 'node:http'
import { Gauge, Registry, register } from 'prom-client'
import { parseListen, startHttp } from '../../../src/daemon/http.js'
import { SOLE_LEADER } from '../../../src/daemon/leader.js'
import { Metrics } from '../../../src/daemon/metrics.js'
import { daemonHandlers } from '../../../src/daemon/run.js'
import type { Agent } from '../../../src/daemon/agent.js'

t.test('/is-leader answers leadership, not convergence: true on a sole connector that is not ready', async (t) => {
  const agent = { ready: false } as unknown as Agent
  const metrics = new Metrics({ processMetrics: false })
  const server = await startHttp({ host: '127.0.0.1', port: 0 }, daemonHandlers({ agent, metrics }, SOLE_LEADER, () => ({ ok: 1 })))
  t.teardown(() => server.close())
  const base = `http://127.0.0.1:${server.address.port}`
  const leader = await fetch(`${base}/is-leader`)
  t.equal(leader.status, 200)
  t.equal(await leader.text(), 'true', 'FabEdge body: exactly `true`, no newline')
  t.equal((await fetch(`${base}/readyz`)).status, 503, 'readiness is where convergence shows')
  t.equal((await fetch(`${base}/healthz`)).status, 200)
  t.same(await (await fetch(`${base}/status`)).json(), { ok: 1 })
})

t.test('/is-leader says `false` (HTTP 200) when not leading', async (t) => {
  const agent = { ready: true } as unknown as Agent
  const server = await startHttp({ host: '127.0.0.1', port: 0 }, daemonHandlers({ agent, metrics: new Metrics({ processMetrics: false }) }, { isLeader: () => false }, () => ({})))
  t.teardown(() => server.close())
  const res = await fetch(`http://127.0.0.1:${server.address.port}/is-leader`)
  t.equal(res.status, 200)
  t.equal(await res.text(), 'false')
  const head = await fetch(`http://127.0.0.1:${server.address.port}/is-leader`, { method: 'POST' })
  t.equal(head.status, 405)
})

t.test('parseListen: host:port, [v6]:port, :port; anything else is a clear TypeError', async (t) => {
  t.same(parseListen('127.0.0.1:30306'), { host: '127.0.0.1', port: 30306 })
  t.same(parseListen(' localhost:8080\n'), { host: 'localhost', port: 8080 }, 'surrounding whitespace (an env file) is ignored')
  t.same(parseListen('[::1]:30306'), { host: '::1', port: 30306 })
  t.same(parseListen('[fd00::10.0.0.1]:1'), { host: 'fd00::10.0.0.1', port: 1 })
  t.same(parseListen(':30306'), { host: '0.0.0.0', port: 30306 }, 'all interfaces only when asked for explicitly')
  t.same(parseListen('0.0.0.0:0'), { host: '0.0.0.0', port: 0 })
  t.same(parseListen('127.0.0.1:65535'), { host: '127.0.0.1', port: 65535 })
  for (const bad of ['30306', '127.0.0.1', '127.0.0.1:', '::1:30306', '[::1]', '[::1]30306', '[::g]:1', 'host:port', '127.0.0.1:123456', '', 'a:1:2']) {
    t.throws(() => parseListen(bad), { name: 'TypeError', message: `--listen must be host:port or [ipv6]:port, got "${bad}"` }, JSON.stringify(bad))
  }
  t.throws(() => parseListen('127.0.0.1:65536'), { name: 'TypeError', message: '--listen port out of range: 65536' })
  t.throws(() => parseListen('[::1]:99999'), { name: 'TypeError', message: '--listen port out of range: 99999' })
})

interface Fake {
  healthy: boolean
  ready: boolean
  leader: boolean
  status: () => unknown
}

async function serve(t: Test, fake: Fake, registry = new Metrics({ processMetrics: false }).registry) {
  const server = await startHttp({ host: '127.0.0.1', port: 0 }, {
    healthy: () => fake.healthy, ready: () => fake.ready, leader: () => fake.leader, status: () => fake.status(), registry,
  })
  t.teardown(() => server.close())
  const base = `http://127.0.0.1:${server.address.port}`
  const get = async (path: string, init?: RequestInit) => {
    const res = await fetch(`${base}${path}`, init)
    return { status: res.status, type: res.headers.get('content-type'), headers: res.headers, body: await res.text() }
  }
  return { server, get }
}

t.test('endpoints answer with the status codes and bodies probes and operators read', async (t) => {
  const fake: Fake = { healthy: true, ready: false, leader: true, status: () => ({ node: { name: 'n1' }, peers: [] }) }
  const { get } = await serve(t, fake)
  t.match(await get('/healthz'), { status: 200, body: 'ok\n', type: 'text/plain; charset=utf-8' })
  t.equal((await get('/healthz')).headers.get('cache-control'), 'no-store', 'a proxy must never answer a probe from cache')
  // RFC 9110 §6.6.1: an origin server with a clock sends Date, once, as an IMF-fixdate of now.
  const before = Math.floor(Date.now() / 1000) * 1000
  const date = (await get('/healthz')).headers.get('date')
  t.match(date, /^(Mon|Tue|Wed|Thu|Fri|Sat|Sun), \d\d (Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec) \d{4} \d\d:\d\d:\d\d GMT$/, 'one Date header, IMF-fixdate')
  const at = Date.parse(date!)
  t.ok(at >= before && at <= Date.now(), `Date is now: ${date}`)
  t.match(await get('/readyz'), { status: 503, body: 'not ready\n' })
  fake.ready = true
  t.match(await get('/readyz?verbose=1'), { status: 200, body: 'ready\n' }, 'a query string does not change the endpoint')
  fake.healthy = false
  t.match(await get('/healthz'), { status: 503, body: 'unhealthy\n' })
  const status = await get('/status')
  t.match(status, { status: 200, type: 'application/json' })
  t.same(JSON.parse(status.body), { node: { name: 'n1' }, peers: [] })
  t.match(await get('/'), { status: 404, body: 'not found: try /healthz /readyz /is-leader /metrics /status\n' })
  t.match(await get('/healthz/'), { status: 404 }, 'no prefix matching')
})

t.test('only GET and HEAD: other methods get 405 naming the allowed ones; HEAD has headers and no body', async (t) => {
  const { get } = await serve(t, { healthy: true, ready: true, leader: true, status: () => ({}) })
  for (const method of ['POST', 'PUT', 'DELETE', 'PATCH']) {
    const r = await get('/healthz', { method })
    t.match(r, { status: 405, body: 'method not allowed\n' }, method)
    t.equal(r.headers.get('allow'), 'GET, HEAD', `${method}: RFC 9110 requires Allow on a 405`)
  }
  t.match(await get('/nowhere', { method: 'POST' }), { status: 405 }, 'the method is checked before the path')
  t.match(await get('/healthz', { method: 'HEAD' }), { status: 200, body: '', type: 'text/plain; charset=utf-8' })
  t.match(await get('/readyz', { method: 'HEAD' }), { status: 200, body: '' })
  t.match(await get('/nowhere', { method: 'HEAD' }), { status: 404, body: '' })
  const metrics = await get('/metrics', { method: 'HEAD' })
  t.match(metrics, { status: 200, body: '' })
  t.match(metrics.type, /^text\/plain; version=0\.0\.4/)
})

t.test('a handler that throws answers 500 with the reason; the server keeps serving', async (t) => {
  const fake: Fake = { healthy: true, ready: true, leader: true, status: () => { throw new Error('status document broke') } }
  const { get } = await serve(t, fake)
  t.match(await get('/status'), { status: 500, body: 'internal error: status document broke\n' })
  fake.status = () => ({ big: 1n })
  t.match(await get('/status'), { status: 500, body: /^internal error: Do not know how to serialize a BigInt/ }, 'an unserialisable document is a 500, not a crash')
  t.match(await get('/healthz'), { status: 200, body: 'ok\n' })
})

t.test('/metrics: Prometheus text with its content type; a failing collector is a 500', async (t) => {
  const metrics = new Metrics({ processMetrics: false })
  metrics.passes.inc({ result: 'applied' })
  metrics.peers.set({ state: 'up' }, 3)
  const { get } = await serve(t, { healthy: true, ready: true, leader: true, status: () => ({}) }, metrics.registry)
  const ok = await get('/metrics')
  t.equal(ok.status, 200)
  t.equal(ok.type, metrics.registry.contentType)
  t.match(ok.body, /^fabtunnel_passes_total\{result="applied"\} 1$/m)
  t.match(ok.body, /^fabtunnel_peers\{state="up"\} 3$/m)
  t.match(ok.body, /^# HELP fabtunnel_ready 1 when the last pass converged without error$/m)

  const broken = new Registry()
  new Gauge({ name: 'broken_gauge', help: 'a collector that throws', registers: [broken], collect() { throw new Error('collector exploded') } })
  const { get: getBroken } = await serve(t, { healthy: true, ready: true, leader: true, status: () => ({}) }, broken)
  t.match(await getBroken('/metrics'), { status: 500, body: 'metrics failed: collector exploded\n', type: 'text/plain; charset=utf-8' })
  t.match(await getBroken('/healthz'), { status: 200 }, 'metrics failing does not take the probes down')
})

t.test('process metrics carry the fabtunnel_ prefix and stay in the agent\'s own registry', async (t) => {
  const a = new Metrics()
  const b = new Metrics()
  const used = process.cpuUsage()
  const text = await a.registry.metrics()
  t.match(text, /^fabtunnel_process_cpu_user_seconds_total /m)
  // Registered on this first scrape, yet counting from the process's start.
  const cpu = Number(/^fabtunnel_process_cpu_seconds_total (\S+)$/m.exec(text)?.[1])
  t.ok(cpu >= (used.user + used.system) / 1e6, `process CPU since start: ${cpu} s >= ${(used.user + used.system) / 1e6} s used before the scrape`)
  t.match(text, /^fabtunnel_nodejs_eventloop_lag_seconds /m)
  t.match(await b.registry.metrics(), /^fabtunnel_process_cpu_user_seconds_total /m, 'a second instance does not clash with the first')
  t.notMatch(await register.metrics(), /fabtunnel_/, 'nothing lands in prom-client\'s global registry')
})

t.test('startHttp: a port in use is an error, not a silent second server; close() ends keep-alive connections', async (t) => {
  const first = await startHttp({ host: '127.0.0.1', port: 0 }, { healthy: () => true, ready: () => true, leader: () => true, status: () => ({}), registry: new Registry() })
  t.teardown(() => first.close())
  await t.rejects(startHttp({ host: '127.0.0.1', port: first.address.port }, { healthy: () => true, ready: () => true, leader: () => true, status: () => ({}), registry: new Registry() }), { code: 'EADDRINUSE' })
  const agent = new http.Agent({ keepAlive: true })
  t.teardown(() => agent.destroy())
  const body = await new Promise<string>((resolve, reject) => {
    http.get({ host: '127.0.0.1', port: first.address.port, path: '/healthz', agent }, (res) => {
      let s = ''
      res.on('data', (c: Buffer) => { s += c.toString() })
      res.on('end', () => resolve(s))
    }).on('error', reject)
  })
  t.equal(body, 'ok\n')
  await first.close()
  await t.rejects(fetch(`http://127.0.0.1:${first.address.port}/healthz`), 'nothing listens after close()')
})

t.test('/healthz answers 503 `draining` once stopping (keepalived moves the VIP), /is-leader still from memory', async (t) => {
  const agent = { ready: true } as unknown as Agent
  let draining = false
  let leader = true
  const server = await startHttp({ host: '127.0.0.1', port: 0 }, daemonHandlers({ agent, metrics: new Metrics({ processMetrics: false }) }, { isLeader: () => leader }, () => ({}), () => draining))
  t.teardown(() => server.close())
  const base = `http://127.0.0.1:${server.address.port}`
  t.equal((await fetch(`${base}/healthz`)).status, 200, 'healthy before the stop')
  draining = true
  const res = await fetch(`${base}/healthz`)
  t.equal(res.status, 503)
  t.equal(await res.text(), 'draining\n')
  t.equal(await (await fetch(`${base}/is-leader`)).text(), 'true', 'leadership is its own answer')
  leader = false
  t.equal(await (await fetch(`${base}/is-leader`)).text(), 'false')
})
