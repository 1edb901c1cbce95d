// Benchmark of fabtunnel/vici against swanctl, measured in the same run on real charons in namespaces.
//   1. load 1,000 connections (3 children each) into one charon: our load-conn calls over one session vs
//      `swanctl --load-conns --file <swanctl.conf with the same 1,000 conns>` (one swanctl process, which also
//      speaks VICI). Median of ROUNDS, each into a freshly restarted charon.
//   2. bring up 100 CHILD_SAs (100 connections with one child each, PSK, between two charons): async initiates
//      (`timeout = -1`) + child-updown events vs sequential `swanctl --initiate --child X --ike Y` processes.
// Run as root: node --import tsx scripts/bench/vici.ts   (env SWANCTL_SAMPLE=n to time only n swanctl initiates
// and extrapolate to 100; the default times all 100).
import { mkdtemp, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { Vici, type ViciInput } from '../../src/vici/index.js'
import { Charon } from '../../test/harness/charon.js'
import { exec } from '../../test/harness/exec.js'
import { Netns, isRoot, teardownOnSignals, vethPair } from '../../test/harness/netns.js'

const LOAD_CONNS = 1000
const CHILD_SAS = 100
const ROUNDS = 3
const SWANCTL_SAMPLE = Math.min(CHILD_SAS, Number(process.env.SWANCTL_SAMPLE ?? CHILD_SAS))
const IKE_A = '192.168.72.1'
const IKE_B = '192.168.72.2'
// Many IKE_SAs from one peer address is a benchmark artifact (real peers have their own addresses): lift the
// per-peer half-open limits so neither client is throttled by them.
const RESPONDER_CONF = '  block_threshold = 1000\n  cookie_threshold = 1000\n  cookie_threshold_ip = 1000\n'

const now = (): number => performance.now()
const median = (xs: number[]): number => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!

// ---- workload 1: 1,000 conns with 3 children ----

function loadConnSpec(i: number): ViciInput {
  const net = (side: number, c: number): string => `10.${side}.${Math.floor(i / 64)}.${(i % 64) * 4 + c}/32`
  const children: Record<string, ViciInput> = {}
  for (const c of [0, 1, 2]) children[`c${c}`] = { local_ts: [net(50, c)], remote_ts: [net(51, c)], start_action: 'none' }
  return {
    version: '2',
    local_addrs: [IKE_A],
    remote_addrs: [IKE_B],
    local: { auth: 'psk', id: `load-a-${i}@bench` },
    remote: { auth: 'psk', id: `load-b-${i}@bench` },
    children,
  }
}

/** The same connections as swanctl.conf text (lists as comma-separated values). */
function swanctlConf(n: number, spec: (i: number) => ViciInput, name: (i: number) => string): string {
  const render = (m: ViciInput, indent: string): string =>
    Object.entries(m)
      .map(([k, v]) => {
        if (typeof v === 'string') return `${indent}${k} = ${v}\n`
        if (Array.isArray(v)) return `${indent}${k} = ${v.join(',')}\n`
        return `${indent}${k} {\n${render(v as ViciInput, indent + '  ')}${indent}}\n`
      })
      .join('')
  let out = 'connections {\n'
  for (let i = 0; i < n; i++) out += `  ${name(i)} {\n${render(spec(i), '    ')}  }\n`
  return out + '}\n'
}

async function benchLoad(charon: Charon, dir: string): Promise<{ ours: number[]; swanctl: number[] }> {
  const name = (i: number): string => `load${String(i).padStart(4, '0')}`
  const confPath = join(dir, 'swanctl-load.conf')
  await writeFile(confPath, swanctlConf(LOAD_CONNS, loadConnSpec, name))
  const ours: number[] = []
  const swanctl: number[] = []
  for (let r = 0; r < ROUNDS; r++) {
    await charon.restart()
    const v = new Vici({ uri: charon.uri })
    await v.connect()
    const specs = Array.from({ length: LOAD_CONNS }, (_, i) => loadConnSpec(i))
    let t0 = now()
    await Promise.all(specs.map((s, i) => v.loadConn(name(i), s)))
    ours.push(now() - t0)
    if ((await v.getConns()).length !== LOAD_CONNS) throw new Error('fabtunnel/vici: not all conns loaded')

    await charon.restart()
    const v2 = new Vici({ uri: charon.uri })
    t0 = now()
    await exec(['swanctl', '--load-conns', '--file', confPath, '--uri', charon.uri], { timeoutMs: 120_000 })
    swanctl.push(now() - t0)
    if ((await v2.getConns()).length !== LOAD_CONNS) throw new Error('swanctl: not all conns loaded')
    await Promise.all([v.close(), v2.close()])
  }
  return { ours, swanctl }
}

// ---- workload 2: 100 CHILD_SAs between two charons ----

const podA = (i: number): string => `10.60.${i}.0/24`
const podB = (i: number): string => `10.61.${i}.0/24`

function childConn(i: number, side: 'a' | 'b'): ViciInput {
  const [local, remote] = side === 'a' ? [IKE_A, IKE_B] : [IKE_B, IKE_A]
  const [lts, rts] = side === 'a' ? [podA(i), podB(i)] : [podB(i), podA(i)]
  const other = side === 'a' ? 'b' : 'a'
  return {
    version: '2',
    local_addrs: [local],
    remote_addrs: [remote],
    local: { auth: 'psk', id: `${side}-${i}@bench` },
    remote: { auth: 'psk', id: `${other}-${i}@bench` },
    children: { [`child${i}`]: { local_ts: [lts], remote_ts: [rts], start_action: 'none' } },
  }
}

async function addrBatch(ns: Netns, addr: (i: number) => string): Promise<void> {
  let batch = 'link add podbr type bridge\nlink set podbr up\n'
  for (let i = 0; i < CHILD_SAS; i++) batch += `addr add ${addr(i).replace('.0/24', '.1/24')} dev podbr\n`
  await ns.run(['ip', '-batch', '-'], { input: batch })
}

/** Resolves once every CHILD_SA on a is gone (both sides), bounded. */
async function waitNoSas(vs: Vici[], timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs
  for (;;) {
    const counts = await Promise.all(vs.map(async (v) => (await v.listSas()).length))
    if (counts.every((c) => c === 0)) return
    if (Date.now() > deadline) throw new Error(`SAs still up after ${timeoutMs} ms: ${counts.join(', ')}`)
    await new Promise((r) => setTimeout(r, 50))
  }
}

async function terminateAll(a: Vici, b: Vici): Promise<void> {
  await Promise.all((await a.listSas()).map((sa) => a.terminate({ ikeId: sa.uniqueid })))
  await waitNoSas([a, b], 20_000)
}

async function benchChildSas(charonA: Charon, charonB: Charon): Promise<{ ours: number; swanctl: number; sampled: number }> {
  const a = new Vici({ uri: charonA.uri })
  const b = new Vici({ uri: charonB.uri })
  try {
    for (const v of [a, b]) await v.loadShared({ data: 'fabtunnel-bench-psk-0123456789' })
    for (let i = 0; i < CHILD_SAS; i++) {
      await a.loadConn(`bench${i}`, childConn(i, 'a'))
      await b.loadConn(`bench${i}`, childConn(i, 'b'))
    }

    const up = new Set<string>()
    let allUp: (() => void) | undefined
    const done = new Promise<void>((r) => (allUp = r))
    await a.client.subscribe('child-updown', (_, m) => {
      if (m.up !== 'yes') return
      for (const k of Object.keys(m)) if (k.startsWith('bench')) up.add(k)
      if (up.size === CHILD_SAS) allUp?.()
    })
    const t0 = now()
    await Promise.all(Array.from({ length: CHILD_SAS }, (_, i) => a.initiate({ child: `child${i}`, ike: `bench${i}` })))
    await Promise.race([
      done,
      new Promise((_, rej) => setTimeout(() => rej(new Error(`only ${up.size}/${CHILD_SAS} CHILD_SAs up after 30 s`)), 30_000)),
    ])
    const ours = now() - t0
    const installed = (await a.listSas()).filter((s) => s.children.some((c) => c.state === 'INSTALLED')).length
    if (installed !== CHILD_SAS) throw new Error(`fabtunnel/vici: ${installed}/${CHILD_SAS} installed`)
    await terminateAll(a, b)

    const t1 = now()
    for (let i = 0; i < SWANCTL_SAMPLE; i++) {
      await exec(['swanctl', '--initiate', '--child', `child${i}`, '--ike', `bench${i}`, '--uri', charonA.uri], { timeoutMs: 30_000 })
    }
    const sampleMs = now() - t1
    const installed2 = (await a.listSas()).filter((s) => s.children.some((c) => c.state === 'INSTALLED')).length
    if (installed2 !== SWANCTL_SAMPLE) throw new Error(`swanctl: ${installed2}/${SWANCTL_SAMPLE} installed`)
    await terminateAll(a, b)
    return { ours, swanctl: (sampleMs / SWANCTL_SAMPLE) * CHILD_SAS, sampled: SWANCTL_SAMPLE }
  } finally {
    await Promise.all([a.close(), b.close()])
  }
}

async function main(): Promise<void> {
  if (!isRoot) throw new Error('the VICI benchmark needs root (network namespaces, charon)')
  teardownOnSignals()
  const dir = await mkdtemp(join(tmpdir(), 'ft-bench-vici-'))
  const nsA = await Netns.create('bv')
  const nsB = await Netns.create('bv')
  try {
    const [ifA, ifB] = await vethPair(nsA, nsB)
    await nsA.run(['ip', 'addr', 'add', `${IKE_A}/24`, 'dev', ifA])
    await nsB.run(['ip', 'addr', 'add', `${IKE_B}/24`, 'dev', ifB])
    await addrBatch(nsA, podA)
    await addrBatch(nsB, podB)
    const charonA = await Charon.start(nsA, { extraConf: RESPONDER_CONF })
    const charonB = await Charon.start(nsB, { extraConf: RESPONDER_CONF })

    const load = await benchLoad(charonA, dir)
    await charonA.restart()
    const sas = await benchChildSas(charonA, charonB)

    const oursLoad = median(load.ours)
    const swLoad = median(load.swanctl)
    const fmt = (ms: number): string => `${ms.toFixed(0)} ms`
    const rows: string[][] = [
      ['workload', 'fabtunnel/vici', 'baseline (swanctl)', 'ratio'],
      [
        `load ${LOAD_CONNS} conns x 3 children (median of ${ROUNDS})`,
        fmt(oursLoad),
        `${fmt(swLoad)} (one swanctl --load-conns)`,
        `${(swLoad / oursLoad).toFixed(2)}x`,
      ],
      [
        `${CHILD_SAS} CHILD_SAs up (initiate -> INSTALLED)`,
        `${fmt(sas.ours)} (async + events)`,
        `${fmt(sas.swanctl)} (${CHILD_SAS} sequential swanctl --initiate${sas.sampled < CHILD_SAS ? `, extrapolated from ${sas.sampled}` : ''})`,
        `${(sas.swanctl / sas.ours).toFixed(1)}x`,
      ],
    ]
    const widths = rows[0]!.map((_, c) => Math.max(...rows.map((r) => r[c]!.length)))
    for (const r of rows) console.log(r.map((cell, c) => cell.padEnd(widths[c]!)).join('  '))
    console.log(`all rounds, load (ms): ours ${load.ours.map((x) => x.toFixed(0)).join(' ')}; swanctl ${load.swanctl.map((x) => x.toFixed(0)).join(' ')}`)
    console.log(`targets: ${LOAD_CONNS} load-conn < 1000 ms: ${oursLoad < 1000 ? 'met' : 'MISSED'}; ${CHILD_SAS} CHILD_SAs >= 10x swanctl: ${sas.swanctl / sas.ours >= 10 ? 'met' : 'MISSED'}`)
  } finally {
    await nsA.destroy()
    await nsB.destroy()
    await rm(dir, { recursive: true, force: true })
  }
}

await main()
