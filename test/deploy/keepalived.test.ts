// deploy/keepalived: the check script's exit codes against a live HTTP server (healthy, draining, down, hung), and
// the example configuration parsed by keepalived itself (`keepalived --config-test`) inside a namespace holding
// the interfaces it names. What a user notices: a check that passes on a draining agent would keep the VIP on a
// dying connector; a config keepalived rejects would leave the cluster without a VIP.
import t from 'tap'
import http from 'node:http'
import type { AddressInfo } from 'node:net'
import { mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { execCapture } from '../harness/exec.js'
import { needsRoot, withNetns } from '../harness/netns.js'

const ROOT = new URL('../../', import.meta.url).pathname
const SCRIPT = join(ROOT, 'deploy', 'keepalived', 'check-fabtunnel.sh')
const EXAMPLE = join(ROOT, 'deploy', 'keepalived', 'keepalived.conf.example')

async function server(handler: http.RequestListener): Promise<{ url: string; close(): Promise<void> }> {
  const s = http.createServer(handler)
  await new Promise<void>((r) => s.listen(0, '127.0.0.1', r))
  const { port } = s.address() as AddressInfo
  return {
    url: `http://127.0.0.1:${port}/healthz`,
    close: () => new Promise<void>((r) => { s.closeAllConnections(); s.close(() => r()) }),
  }
}

const check = (url: string) => execCapture(['sh', SCRIPT], { env: { ...process.env, FABTUNNEL_HEALTHZ_URL: url, FABTUNNEL_CHECK_TIMEOUT: '1' }, timeoutMs: 10_000 })

t.test('check-fabtunnel.sh: 0 only while /healthz answers 200', async (t) => {
  t.ok(statSync(SCRIPT).mode & 0o100, 'executable')
  const text = readFileSync(SCRIPT, 'utf8')
  t.match(text, /127\.0\.0\.1:30306\/healthz/, 'the agent default --listen')
  t.notMatch(text.replace(/^#.*$/gm, ''), /is-leader/, 'never probes /is-leader (circular in vip mode)')
  let answer = 200
  let paths: string[] = []
  const ok = await server((req, res) => {
    paths.push(req.url ?? '')
    res.writeHead(answer).end(answer === 200 ? 'ok\n' : 'draining\n')
  })
  t.teardown(() => ok.close())
  t.equal((await check(ok.url)).code, 0, 'healthy: 0')
  t.same(paths, ['/healthz'])
  answer = 503
  t.equal((await check(ok.url)).code, 22, 'draining (503): 22, a failure for keepalived')
  const hung = await server(() => undefined)
  t.teardown(() => hung.close())
  t.equal((await check(hung.url)).code, 28, 'no answer within the timeout: 28')
  const gone = await server(() => undefined)
  const url = gone.url
  await gone.close()
  t.equal((await check(url)).code, 7, 'agent down (connection refused): 7')
})

t.test('keepalived.conf.example: keepalived accepts it; unicast peers, sync group, nopreempt, healthz script', { skip: needsRoot }, async (t) => {
  const text = readFileSync(EXAMPLE, 'utf8')
  for (const must of [/vrrp_sync_group connector/, /unicast_peer \{/, /nopreempt/, /track_script \{\s*fabtunnel_healthy/, /script "\/etc\/keepalived\/check-fabtunnel\.sh"/]) t.match(text, must)
  t.equal((text.match(/^vrrp_instance /gm) ?? []).length, 2, 'public and internal VIP instances')
  const dir = mkdtempSync(join(tmpdir(), 'ftka-'))
  t.teardown(() => rmSync(dir, { recursive: true, force: true }))
  const filled = text
    .replace(/<PUBLIC_IFACE>/g, 'kapub').replace(/<CLUSTER_IFACE>/g, 'kaclu')
    .replaceAll('<THIS_NODE_PUBLIC_IFACE_IP>', '10.0.0.1').replaceAll('<OTHER_CONNECTOR_PUBLIC_IFACE_IP>', '10.0.0.2')
    .replaceAll('<THIS_NODE_CLUSTER_IFACE_IP>', '10.1.0.1').replaceAll('<OTHER_CONNECTOR_CLUSTER_IFACE_IP>', '10.1.0.2')
    .replaceAll('<8-CHARS>', 's3cret42').replaceAll('<PUBLIC_VIP>', '10.0.0.100').replaceAll('<INTERNAL_VIP>', '10.1.0.100')
    .replace('/etc/keepalived/check-fabtunnel.sh', SCRIPT)
  t.notMatch(filled.replace(/^#.*$/gm, ''), /<[A-Z_0-9-]+>/, 'every placeholder filled')
  const conf = join(dir, 'keepalived.conf')
  writeFileSync(conf, filled)
  const broken = join(dir, 'broken.conf')
  writeFileSync(broken, filled.replace('nopreempt', 'nopreempt\n    no_such_keyword 1'))
  await withNetns(1, async (ns) => {
    for (const b of ['kapub', 'kaclu']) {
      await ns.run(['ip', 'link', 'add', b, 'type', 'bridge'])
      await ns.run(['ip', 'link', 'set', b, 'up'])
    }
    const r = await ns.capture(['keepalived', '--config-test', '-f', conf])
    t.equal(r.code, 0, `keepalived --config-test: ${r.stderr.trim() || 'clean'}`)
    t.equal(r.stderr.trim(), '', 'no warnings')
    const bad = await ns.capture(['keepalived', '--config-test', '-f', broken])
    t.not(bad.code, 0, 'the same check rejects a config with an unknown keyword (it can fail)')
  }, 'ka')
})
