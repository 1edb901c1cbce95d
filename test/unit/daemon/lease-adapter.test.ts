// The real LeaseApi adapter (@kubernetes/client-node's CoordinationV1Api) against an in-process HTTP double of the
// API server's Lease endpoints, with resourceVersion concurrency: the requests it sends (paths, verbs, bearer token,
// MicroTime with six fractional digits), 404 -> null, 409 -> LeaseConflict, and the election running on it.
// This is NOT an API server: the adapter is not proven against a real one (README).
import t from 'tap'
import http from 'node:http'
import type { AddressInfo } from 'node:net'
import { kubernetesLeaseApi, LeaseConflict, LeaseLeadership } from '../../../src/daemon/lease.js'

interface Req { method: string; path: string; auth: string | undefined; body: any }

async function apiDouble() {
  let lease: any = null
  let rv = 7
  const requests: Req[] = []
  const base = '/apis/coordination.k8s.io/v1/namespaces/fabedge/leases'
  const server = http.createServer((req, res) => {
    let raw = ''
    req.on('data', (c) => (raw += c))
    req.on('end', () => {
      const body = raw ? JSON.parse(raw) : undefined
      requests.push({ method: req.method!, path: req.url!, auth: req.headers.authorization, body })
      const send = (code: number, obj: unknown) => res.writeHead(code, { 'content-type': 'application/json' }).end(JSON.stringify(obj))
      const status = (code: number, reason: string) => send(code, { kind: 'Status', apiVersion: 'v1', status: 'Failure', reason, code })
      if (req.method === 'GET' && req.url === `${base}/connector`) return lease ? send(200, lease) : status(404, 'NotFound')
      if (req.method === 'POST' && req.url === base) {
        if (lease) return status(409, 'AlreadyExists')
        lease = { ...body, metadata: { ...body.metadata, resourceVersion: String(++rv) } }
        return send(201, lease)
      }
      if (req.method === 'PUT' && req.url === `${base}/connector`) {
        if (!lease || body.metadata.resourceVersion !== lease.metadata.resourceVersion) return status(409, 'Conflict')
        lease = { ...body, metadata: { ...body.metadata, resourceVersion: String(++rv) } }
        return send(200, lease)
      }
      status(404, 'NotFound')
    })
  })
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r))
  const { port } = server.address() as AddressInfo
  return {
    requests,
    get lease() { return lease },
    configure: (kc: import('@kubernetes/client-node').KubeConfig) => kc.loadFromOptions({
      clusters: [{ name: 'double', server: `http://127.0.0.1:${port}`, skipTLSVerify: true }],
      users: [{ name: 'sa', token: 'service-account-token' }],
      contexts: [{ name: 'ctx', cluster: 'double', user: 'sa' }],
      currentContext: 'ctx',
    }),
    close: () => new Promise<void>((r) => { server.closeAllConnections(); server.close(() => r()) }),
  }
}

t.test('adapter: get/create/replace with the official client; 404 is null, 409 is LeaseConflict', async (t) => {
  const api = await apiDouble()
  t.teardown(() => api.close())
  const lease = await kubernetesLeaseApi('fabedge', 'connector', api.configure)
  t.equal(await lease.get(), null, '404: no Lease yet')
  const spec = { holderIdentity: 'node-a', leaseDurationSeconds: 15, acquireTime: Date.UTC(2026, 11, 2, 4, 0, 0, 123), renewTime: Date.UTC(2026, 11, 2, 4, 0, 0, 123), leaseTransitions: 0 }
  const created = await lease.create(spec)
  t.same(created, { resourceVersion: '8', spec })
  const post = api.requests.find((r) => r.method === 'POST')!
  t.equal(post.path, '/apis/coordination.k8s.io/v1/namespaces/fabedge/leases')
  t.equal(post.auth, 'Bearer service-account-token', 'the service account token')
  t.match(post.body, { apiVersion: 'coordination.k8s.io/v1', kind: 'Lease', metadata: { name: 'connector', namespace: 'fabedge' } })
  t.equal(post.body.spec.renewTime, '2026-12-02T04:00:00.123000Z', 'MicroTime: six fractional digits')
  await t.rejects(lease.create(spec), LeaseConflict, 'create on an existing Lease: conflict')
  const renewed = await lease.replace('8', { ...spec, renewTime: spec.renewTime + 2000 })
  t.equal(renewed.resourceVersion, '9')
  t.equal(api.requests.at(-1)!.body.metadata.resourceVersion, '8', 'replace carries the resourceVersion read')
  await t.rejects(lease.replace('8', spec), LeaseConflict, 'a stale resourceVersion: conflict')
  t.same(await lease.get(), { resourceVersion: '9', spec: { ...spec, renewTime: spec.renewTime + 2000 } }, 'read back')
})

t.test('the election over the adapter: acquire, renew, release (real clock, short timings)', async (t) => {
  const api = await apiDouble()
  t.teardown(() => api.close())
  const lease = await kubernetesLeaseApi('fabedge', 'connector', api.configure)
  const a = new LeaseLeadership(lease, { namespace: 'fabedge', name: 'connector', identity: 'node-a', leaseDurationMs: 3000, renewDeadlineMs: 2000, retryPeriodMs: 100 })
  const promoted = new Promise<void>((r) => a.onChange((l) => { if (l) r() }))
  await a.start()
  await promoted
  t.equal(api.lease.spec.holderIdentity, 'node-a')
  const rv = Number(api.lease.metadata.resourceVersion)
  await new Promise<void>((r) => {
    const check = setInterval(() => {
      if (Number(api.lease.metadata.resourceVersion) > rv) {
        clearInterval(check)
        r()
      }
    }, 20)
  })
  t.pass('renewed')
  await a.release()
  t.equal(a.isLeader(), false)
  t.match(api.lease.spec, { holderIdentity: '', leaseDurationSeconds: 1 }, 'released on stop')
})

t.test('in-cluster config missing: a clear error, not a client that fails forever', async (t) => {
  const saved = { host: process.env.KUBERNETES_SERVICE_HOST, port: process.env.KUBERNETES_SERVICE_PORT }
  delete process.env.KUBERNETES_SERVICE_HOST
  delete process.env.KUBERNETES_SERVICE_PORT
  t.teardown(() => {
    if (saved.host !== undefined) process.env.KUBERNETES_SERVICE_HOST = saved.host
    if (saved.port !== undefined) process.env.KUBERNETES_SERVICE_PORT = saved.port
  })
  await t.rejects(kubernetesLeaseApi('fabedge'), /needs in-cluster config: KUBERNETES_SERVICE_HOST\/PORT are not set/)
})
