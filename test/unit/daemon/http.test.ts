import t from 'tap'
import { startHttp } from '../../../src/daemon/http.js'
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
