import t from 'tap'
import { join } from 'node:path'
import { loadConfig } from '../../../src/config/load.js'
import { desiredConns } from '../../../src/desired/conns.js'
import {
  attemptKey, backoffDelay, connDiffers, isOwnConn, isOwnSa, listedFromSection, planTunnels, sectionHash, type InitiateAttempt, type ListedConn, type ObservedIkeSa, type TunnelPlanInput,
} from '../../../src/reconcile/tunnels.js'

const FIX = new URL('../../fixtures/config/', import.meta.url).pathname

/** What charon 5.9.8's list-conns prints for a section (captured shape; see test/fixtures/vici). */
function listed(section: any): ListedConn {
  const children: Record<string, unknown> = {}
  for (const [n, c] of Object.entries<any>(section.children ?? {})) {
    children[n] = { mode: 'TUNNEL', rekey_time: '3600', dpd_action: c.dpd_action === 'clear' ? 'none' : c.dpd_action, close_action: 'none', 'local-ts': c.local_ts, 'remote-ts': c.remote_ts }
  }
  const out: ListedConn = {
    local_addrs: ['%any'], remote_addrs: section.remote_addrs ?? ['%any'], version: 'IKEv2', reauth_time: '0', rekey_time: '14400', unique: 'UNIQUE_NO',
    'local-1': { id: section.local.id, class: 'public key', groups: [], certs: [] },
    'remote-1': section.remote ? { id: section.remote.id, class: 'public key', groups: [], certs: [] } : { groups: [], certs: [] },
    children,
  }
  if (section.dpd_delay) out.dpd_delay = String(parseInt(section.dpd_delay, 10))
  return out
}

const up = (conn: string, children: string[], ike = '1'): ObservedIkeSa => ({
  name: conn, uniqueid: ike, state: 'ESTABLISHED', children: children.map((c, i) => ({ name: c, uniqueid: `${ike}${i}`, state: 'INSTALLED' })),
})

async function edge() {
  const { config } = await loadConfig(join(FIX, 'edge.yaml'))
  return desiredConns(config, { datapath: 'libipsec' })
}

function input(desired: Awaited<ReturnType<typeof edge>>, over: Partial<TunnelPlanInput> = {}): TunnelPlanInput {
  return { desired, observed: { conns: new Map(), sas: [] }, loaded: new Map(), attempts: new Map(), now: 1_000_000, ...over }
}

t.test('cold start: load everything, initiate the mediator first and wait with mediated peers', async (t) => {
  const d = await edge()
  const { ops, waiting } = planTunnels(input(d))
  t.same(ops.map((o) => `${o.op} ${o.conn}${'child' in o ? ` ${o.child}` : ''}`), [
    'load mediator', 'load beijing.connector', 'load beijing.edge2',
    'initiate-ike mediator',
    'initiate-child beijing.connector beijing.connector-p2p', 'initiate-child beijing.connector beijing.connector-n2p', 'initiate-child beijing.connector beijing.connector-p2n',
  ])
  t.match(waiting, [{ conn: 'beijing.edge2', reason: /mediator/ }])
})

t.test('converged: no ops at all, also right after an agent restart (empty memory)', async (t) => {
  const d = await edge()
  const conns = new Map(Object.entries(d.conns).map(([n, s]) => [n, listed(s)]))
  const sas = [up('mediator', []), up('beijing.connector', d.initiateChildren['beijing.connector']!, '2'), up('beijing.edge2', d.initiateChildren['beijing.edge2']!, '3')]
  t.same(planTunnels(input(d, { observed: { conns, sas } })).ops, [], 'adopted without writes')
  const loaded = new Map(Object.entries(d.conns).map(([n, s]) => [n, sectionHash(s)]))
  t.same(planTunnels(input(d, { observed: { conns, sas }, loaded })).ops, [])
})

t.test('content, not names: a changed peer is reloaded and its changed children re-established', async (t) => {
  const d = await edge()
  const conns = new Map(Object.entries(d.conns).map(([n, s]) => [n, listed(s)]))
  const sas = [up('mediator', []), up('beijing.connector', d.initiateChildren['beijing.connector']!, '2'), up('beijing.edge2', d.initiateChildren['beijing.edge2']!, '3')]
  // charon holds an older version of the connector peer: one subnet fewer on the remote side of p2p.
  const stale = listed(d.conns['beijing.connector'])
  ;(stale.children as any)['beijing.connector-p2p']['remote-ts'] = ['10.233.0.0/18']
  conns.set('beijing.connector', stale)
  t.ok(connDiffers(d.conns['beijing.connector']!, stale))
  const { ops } = planTunnels(input(d, { observed: { conns, sas } }))
  t.same(ops.map((o) => `${o.op} ${'child' in o ? o.child : o.conn}`), [
    'load beijing.connector',
    'terminate-child beijing.connector-p2p',
    'initiate-child beijing.connector-p2p',
  ], 'only the changed child is replaced; n2p/p2n keep running')
  // A field list-conns does not show (the remote port) changes: our loaded-hash memory catches it.
  const loaded = new Map(Object.entries(d.conns).map(([n, s]) => [n, sectionHash(s)]))
  loaded.set('beijing.edge2', 'older-hash')
  const ops2 = planTunnels(input(d, { observed: { conns: new Map(Object.entries(d.conns).map(([n, s]) => [n, listed(s)])), sas }, loaded })).ops
  t.same(ops2.map((o) => o.op), ['load'], 'reload without touching established children whose selectors did not change')
})

t.test('stale connections: ours are unloaded then terminated, foreign ones never touched', async (t) => {
  const d = await edge()
  const conns = new Map(Object.entries(d.conns).map(([n, s]) => [n, listed(s)]))
  conns.set('beijing.edge9', { children: { 'beijing.edge9-p2p': {}, 'beijing.edge9-n2p': {} } })
  conns.set('operator-vpn', { children: { office: {} } })
  const sas = [up('mediator', []), up('beijing.connector', d.initiateChildren['beijing.connector']!, '2'), up('beijing.edge2', d.initiateChildren['beijing.edge2']!, '3'), up('beijing.edge9', ['beijing.edge9-p2p'], '9'), up('operator-vpn', ['office'], '7')]
  const { ops } = planTunnels(input(d, { observed: { conns, sas } }))
  t.same(ops, [{ op: 'unload', conn: 'beijing.edge9' }, { op: 'terminate-ike', conn: 'beijing.edge9', ikeId: '9' }])
  const orphan = planTunnels(input(d, { observed: { conns: new Map(Object.entries(d.conns).map(([n, s]) => [n, listed(s)])), sas: [...sas, up('beijing.edge8', ['beijing.edge8-p2p'], '8'), up('stranger', ['x'], '6')] } }))
  t.same(orphan.ops.filter((o) => o.conn === 'beijing.edge8' || o.conn === 'stranger'), [{ op: 'terminate-ike', conn: 'beijing.edge8', ikeId: '8' }], 'SAs of our unloaded connection are ended, a stranger is not')
  t.ok(isOwnConn('mediator', {}))
  t.notOk(isOwnConn('operator-vpn', { children: { office: {} } }))
  t.notOk(isOwnConn('x', { children: { 'x-p2p': {}, other: {} } }), 'one foreign child makes it foreign')
  const me = { ids: new Set(['C=CN,O=fabedge.io,CN=beijing.edge1']), loaded: new Set<string>() }
  t.ok(isOwnConn('edge9', { 'local-1': { id: 'C=CN, O=fabedge.io, CN=beijing.edge1' }, children: {} }, me), 'our id without children: ours')
  t.notOk(isOwnConn('office', { 'local-1': { id: 'C=CN, O=fabedge.io, CN=beijing.edge1' }, children: { office: {} } }, me), 'our id with a foreign child: foreign')
  t.ok(isOwnConn('office', { children: { office: {} } }, { ...me, loaded: new Set(['office']) }), 'loaded by us: ours')
  t.ok(isOwnSa({ name: 'edge9', uniqueid: '1', state: 'ESTABLISHED', localId: 'C=CN, O=fabedge.io, CN=beijing.edge1', children: [] }, me))
  t.notOk(isOwnSa({ name: 'office', uniqueid: '1', state: 'ESTABLISHED', localId: 'C=CN, O=fabedge.io, CN=beijing.edge1', children: [{ name: 'office', uniqueid: '2', state: 'INSTALLED' }] }, me))
})

const CONNECTOR_KIDS = ['beijing.connector-p2p', 'beijing.connector-n2p', 'beijing.connector-p2n']
const memory = (conn: string, kids: string[], a: InitiateAttempt): Map<string, InitiateAttempt> => new Map(kids.map((k) => [attemptKey(conn, k), a]))

t.test('initiation: in-flight children are not doubled, failures back off, a tunnel that went down is redone at once', async (t) => {
  const d = await edge()
  const conns = new Map(Object.entries(d.conns).map(([n, s]) => [n, listed(s)]))
  const now = 1_000_000
  const med = up('mediator', [])
  const connecting: ObservedIkeSa = { name: 'beijing.connector', uniqueid: '5', state: 'CONNECTING', children: [] }
  const inflight = planTunnels(input(d, { observed: { conns, sas: [med, connecting] }, attempts: memory('beijing.connector', CONNECTOR_KIDS, { lastAttempt: now - 100, failures: 0, inflight: true }) }))
  t.notOk(inflight.ops.some((o) => o.conn === 'beijing.connector'), 'no second initiate while the first is connecting')
  t.match(inflight.waiting, [{ conn: 'beijing.connector', reason: 'initiate in flight' }])
  t.same(inflight.wakes[0], { at: now - 100 + 30_000, reason: 'backoff:beijing.connector' }, 'a wake when the in-flight window ends')

  const failed = planTunnels(input(d, { observed: { conns, sas: [med] }, attempts: memory('beijing.connector', CONNECTOR_KIDS, { lastAttempt: now - 100, failures: 3, inflight: false }) }))
  t.notOk(failed.ops.some((o) => o.conn === 'beijing.connector'), 'backing off')
  t.match(failed.waiting.find((w) => w.conn === 'beijing.connector'), { until: now - 100 + backoffDelay(3), reason: /backoff after 3/ })
  t.ok(failed.ops.some((o) => o.conn === 'beijing.edge2'), 'a failing peer does not hold back the others')

  const retry = planTunnels(input(d, { observed: { conns, sas: [med] }, attempts: memory('beijing.connector', CONNECTOR_KIDS, { lastAttempt: now - 10_000, failures: 3, inflight: false }) }))
  t.equal(retry.ops.filter((o) => o.conn === 'beijing.connector').length, 3, 'after the backoff: initiate again')

  // After a reconnect: in flight only while charon lists an IKE_SA of the connection (any state).
  const unconfirmed = memory('beijing.connector', CONNECTOR_KIDS, { lastAttempt: now - 100, failures: 0, inflight: true, unconfirmed: true })
  const busy = planTunnels(input(d, { observed: { conns, sas: [med, connecting] }, attempts: unconfirmed }))
  t.notOk(busy.ops.some((o) => o.conn === 'beijing.connector'), 'charon still negotiating: no second initiate')
  const restarted = planTunnels(input(d, { observed: { conns, sas: [med] }, attempts: unconfirmed }))
  t.equal(restarted.ops.filter((o) => o.op === 'initiate-child' && o.conn === 'beijing.connector').length, 3, 'charon forgot it: initiated at once')

  const partial = up('beijing.connector', ['beijing.connector-p2p', 'beijing.connector-n2p'], '2')
  const down = planTunnels(input(d, { observed: { conns, sas: [med, partial] } }))
  t.same(down.ops.filter((o) => o.conn === 'beijing.connector'), [{ op: 'initiate-child', conn: 'beijing.connector', child: 'beijing.connector-p2n' }], 'only the child that went down')
  t.same([1, 2, 3, 10, 30].map((n) => backoffDelay(n)), [500, 1000, 2000, 30_000, 30_000])
})

t.test('connector: responder to edges never initiates; removed children are terminated', async (t) => {
  const { config } = await loadConfig(join(FIX, 'connector.yaml'))
  const d = desiredConns(config, { datapath: 'libipsec' })
  const conns = new Map(Object.entries(d.conns).map(([n, s]) => [n, listed(s)]))
  const sas = [up('beijing.edge1', ['beijing.edge1-p2p', 'beijing.edge1-p2n', 'beijing.edge1-gone'], '4')]
  const { ops } = planTunnels(input(d as any, { observed: { conns, sas } }))
  t.same(ops.filter((o) => o.conn === 'beijing.edge1'), [{ op: 'terminate-child', conn: 'beijing.edge1', child: 'beijing.edge1-gone', childId: '42' }])
  t.same(ops.filter((o) => o.op.startsWith('initiate')).map((o) => o.conn), ['shanghai.connector', 'shanghai.connector', 'shanghai.connector'])
})

t.test('projection matches what real charon lists for every desired connection (captured list-conns)', async (t) => {
  for (const f of ['connector', 'edge']) {
    const { config } = await loadConfig(join(FIX, `${f}.yaml`))
    // The fixtures were captured from real charon with FabEdge's DPD interval loaded.
    const d = desiredConns(config, { datapath: 'libipsec', dpdDelay: '10s' })
    const captured = JSON.parse(await import('node:fs').then((fs) => fs.readFileSync(new URL(`../../fixtures/vici/list-conns-${f}.json`, import.meta.url), 'utf8')))
    t.same(Object.keys(captured.conns).sort(), Object.keys(d.conns).sort(), `${f}: charon lists every loaded connection`)
    for (const [name, section] of Object.entries(d.conns)) {
      t.notOk(connDiffers(section, captured.conns[name]), `${f}/${name}: a freshly loaded connection compares equal (no reload on adoption)`)
    }
    const changed = structuredClone(captured.conns)
    const some = Object.keys(changed).find((n) => Object.keys(changed[n].children).length)!
    const child = Object.keys(changed[some].children)[0]!
    changed[some].children[child]['remote-ts'] = ['192.0.2.0/24']
    t.ok(connDiffers(d.conns[some]!, changed[some]), `${f}/${some}: a changed selector is detected`)
    for (const [name, section] of Object.entries(d.conns)) {
      t.notOk(connDiffers(section, listedFromSection(section)), `${f}/${name}: the cached listing of a loaded section equals charon's`)
    }
  }
})

t.test('compactListed keeps everything the planner reads of a real list-conns entry, and little else', async (t) => {
  const { readFileSync } = await import('node:fs')
  const { compactListed: compact, projectListed: project, isOwnConn: own } = await import('../../../src/reconcile/tunnels.js')
  let n = 0
  for (const file of ['list-conns-connector.json', 'list-conns-edge.json']) {
    const raw = JSON.parse(readFileSync(new URL(`../../fixtures/vici/${file}`, import.meta.url), 'utf8')) as unknown
    const entries: Array<[string, Record<string, unknown>]> = []
    const walk = (v: unknown): void => {
      if (Array.isArray(v)) v.forEach(walk)
      else if (v && typeof v === 'object') {
        for (const [k, x] of Object.entries(v)) {
          if (x && typeof x === 'object' && !Array.isArray(x) && 'children' in x) entries.push([k, x as Record<string, unknown>])
          else walk(x)
        }
      }
    }
    walk(raw)
    for (const [name, l] of entries) {
      n++
      const c = compact(l)
      t.same(project(c), project(l), `${file} ${name}: same projection`)
      const hints = { ids: new Set(['C=CN,O=fabedge.io,CN=beijing.connector']), loaded: new Set<string>() }
      t.equal(own(name, c, hints), own(name, l, hints), `${file} ${name}: same ownership`)
      t.ok(JSON.stringify(c).length < JSON.stringify(l).length, `${file} ${name}: smaller`)
    }
  }
  t.ok(n >= 2, `entries checked: ${n}`)
})

// The memo keeps a hash of each projection instead of its canonical JSON: two projections must hash equal exactly
// when their canonical JSON (sorted keys, lists in order: what the memo held before) is equal. Checked over every
// captured and desired projection and single changes of each field, children given in another order, and lists
// reordered.
t.test('projection hash: equal exactly when the canonical projection is equal', async (t) => {
  const { readFileSync } = await import('node:fs')
  const { projectionHash, projectListed, projectDesired } = await import('../../../src/reconcile/tunnels.js')
  type P = ReturnType<typeof projectListed>
  const canonical = (v: unknown): string => {
    if (Array.isArray(v)) return `[${v.map(canonical).join(',')}]`
    if (v !== null && typeof v === 'object') return `{${Object.keys(v).sort().map((k) => `${JSON.stringify(k)}:${canonical((v as Record<string, unknown>)[k])}`).join(',')}}`
    return JSON.stringify(v)
  }
  const base: P[] = []
  for (const f of ['connector', 'edge']) {
    const captured = JSON.parse(readFileSync(new URL(`../../fixtures/vici/list-conns-${f}.json`, import.meta.url), 'utf8')) as { conns: Record<string, ListedConn> }
    for (const l of Object.values(captured.conns)) base.push(projectListed(l))
    const { config } = await loadConfig(join(FIX, `${f}.yaml`))
    for (const s of Object.values(desiredConns(config, { datapath: 'libipsec', dpdDelay: '10s' }).conns)) base.push(projectDesired(s))
  }
  const variants: P[] = [...base]
  for (const p of base) {
    variants.push({ ...p, remoteAddrs: [...p.remoteAddrs, '192.0.2.9'] }, { ...p, remoteAddrs: [...p.remoteAddrs].reverse() }, { ...p, dpdDelay: `${p.dpdDelay}0` },
      { ...p, localId: `${p.localId} ` }, { ...p, remoteId: 'CN=other' }, { ...p, children: Object.fromEntries(Object.entries(p.children).reverse()) })
    for (const [name, c] of Object.entries(p.children)) {
      variants.push({ ...p, children: { ...p.children, [name]: { ...c, remoteTs: [...c.remoteTs].reverse() } } }, { ...p, children: { ...p.children, [name]: { ...c, localTs: [...c.localTs, '10.9.9.0/24'] } } },
        { ...p, children: { ...p.children, [name]: { ...c, dpdAction: 'restart' } } }, { ...p, children: Object.fromEntries(Object.entries(p.children).filter(([n]) => n !== name)) },
        { ...p, children: { ...p.children, [`${name}x`]: c } })
    }
  }
  let pairs = 0
  let equalPairs = 0
  for (const a of variants) {
    for (const b of variants) {
      const same = canonical(a) === canonical(b)
      if (same !== (projectionHash(a) === projectionHash(b))) t.fail(`hash equality differs from canonical equality: ${canonical(a)} vs ${canonical(b)}`)
      pairs++
      if (same) equalPairs++
    }
  }
  t.ok(equalPairs > variants.length, `some distinct objects are equal (children reordered, equal conns): ${equalPairs} of ${pairs} pairs`)
  t.ok(pairs > 1000, `${pairs} pairs compared`)
})
