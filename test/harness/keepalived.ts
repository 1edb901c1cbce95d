// Real keepalived (Debian's 2.2.x) inside a test namespace, moving VIPs between connector namespaces over unicast
// VRRP. Only the VRRP subsystem runs (`--vrrp`, no IPVS). keepalived's global files stay private: the namespace's
// /run is a bind mount of the instance dir (as for charon: ip netns exec gives every command its own mount
// namespace), the pid files are named explicitly inside it, logs go to the console (`--log-console --no-syslog`),
// never to the host's /dev/log. The parent forks one VRRP child; a crash kills both with SIGKILL (the child first,
// so the parent cannot hand it a graceful SIGTERM that would release the VIPs).
// renderKeepalivedConf is pure (unit-tested); Keepalived runs the process and is torn down with its namespace.
import { spawn, type ChildProcess } from 'node:child_process'
import { closeSync, openSync, readFileSync } from 'node:fs'
import { chmod, mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import type { Netns } from './netns.js'

export const KEEPALIVED_BIN = '/usr/sbin/keepalived'

export interface VrrpInstanceSpec {
  /** Instance name (keepalived identifier). */
  name: string
  interface: string
  routerId: number
  /** This node's own address on `interface` (unicast source). */
  src: string
  peers: string[]
  /** VIP with prefix, e.g. `10.77.1.1/16`. */
  vip: string
}

export interface KeepalivedSpec {
  routerName: string
  priority: number
  /** VRRPv3 advertisement interval in seconds (fractions allowed). */
  advertInt: number
  instances: VrrpInstanceSpec[]
  /** The health check: an executable run every `interval` s; `fall` failures put the node in FAULT (weight 0). */
  check: { script: string; interval: number; fall: number; rise: number }
}

const NAME = /^[A-Za-z0-9_-]{1,32}$/
const IPV4 = /^(\d{1,3})\.(\d{1,3})\.(\d{1,3})\.(\d{1,3})$/
const SAFE_PATH = /^\/[A-Za-z0-9._/-]+$/

function ipv4(a: string, what: string): string {
  const m = IPV4.exec(a)
  if (!m || m.slice(1).some((o) => Number(o) > 255)) throw new Error(`${what}: not an IPv4 address: ${a}`)
  return a
}

/**
 * keepalived.conf for one connector: one vrrp_instance per VIP (all in one sync group, so they move together), each
 * tracking the agent's health check. Every value is validated before it reaches the file.
 */
export function renderKeepalivedConf(s: KeepalivedSpec): string {
  if (!NAME.test(s.routerName)) throw new Error(`bad router name ${s.routerName}`)
  if (!Number.isInteger(s.priority) || s.priority < 1 || s.priority > 254) throw new Error(`priority must be 1..254, got ${s.priority}`)
  if (!(s.advertInt >= 0.01 && s.advertInt <= 40)) throw new Error(`advertInt must be 0.01..40 s, got ${s.advertInt}`)
  if (!SAFE_PATH.test(s.check.script)) throw new Error(`unsafe check script path ${s.check.script}`)
  for (const [k, v] of Object.entries({ interval: s.check.interval, fall: s.check.fall, rise: s.check.rise })) {
    if (!(v > 0 && v <= 3600)) throw new Error(`check ${k} out of range: ${v}`)
  }
  if (s.instances.length === 0) throw new Error('at least one VRRP instance')
  const lines = [
    'global_defs {',
    `    router_id ${s.routerName}`,
    // VRRPv3: sub-second advertisement intervals (v2 has whole seconds only).
    '    vrrp_version 3',
    '    script_user root',
    '    enable_script_security',
    // Gratuitous ARPs at once and again 1 s later: the edges' and the cloud node's ARP caches follow the VIP.
    '    vrrp_garp_master_delay 1',
    '    vrrp_garp_master_repeat 3',
    '}',
    '',
    'vrrp_script agent_check {',
    `    script "${s.check.script}"`,
    `    interval ${s.check.interval}`,
    // curl's own bound is 1 s (the check script); keepalived's is 2 s, so a slow probe fails as curl, not as a kill.
    `    timeout ${Math.max(2, Math.ceil(s.check.interval))}`,
    `    fall ${s.check.fall}`,
    `    rise ${s.check.rise}`,
    '}',
    '',
    'vrrp_sync_group connector {',
    '    group {',
    ...s.instances.map((i) => `        ${i.name}`),
    '    }',
    '}',
  ]
  for (const i of s.instances) {
    if (!NAME.test(i.name) || !NAME.test(i.interface)) throw new Error(`bad instance or interface name ${i.name}/${i.interface}`)
    if (!Number.isInteger(i.routerId) || i.routerId < 1 || i.routerId > 255) throw new Error(`routerId must be 1..255, got ${i.routerId}`)
    const [vipAddr, prefix] = i.vip.split('/')
    ipv4(vipAddr!, 'vip')
    if (!/^\d{1,2}$/.test(prefix ?? '') || Number(prefix) > 32) throw new Error(`vip needs a prefix: ${i.vip}`)
    lines.push(
      '',
      `vrrp_instance ${i.name} {`,
      // Both start as BACKUP and nopreempt: a recovered node never takes the VIP back (one failover, not two).
      '    state BACKUP',
      '    nopreempt',
      `    interface ${i.interface}`,
      `    virtual_router_id ${i.routerId}`,
      `    priority ${s.priority}`,
      `    advert_int ${s.advertInt}`,
      `    unicast_src_ip ${ipv4(i.src, 'src')}`,
      '    unicast_peer {',
      ...i.peers.map((p) => `        ${ipv4(p, 'peer')}`),
      '    }',
      '    virtual_ipaddress {',
      `        ${i.vip} dev ${i.interface}`,
      '    }',
      '    track_script {',
      '        agent_check',
      '    }',
      '}',
    )
  }
  return lines.join('\n') + '\n'
}

export class Keepalived {
  private child: ChildProcess | null = null
  private exited: Promise<void> = Promise.resolve()

  private constructor(readonly ns: Netns, readonly dir: string) {}

  get confPath(): string {
    return join(this.dir, 'keepalived.conf')
  }

  get logPath(): string {
    return join(this.dir, 'keepalived.log')
  }

  get running(): boolean {
    return this.child !== null && this.child.exitCode === null && this.child.signalCode === null
  }

  /** Writes the config (and `checkScript` as an executable, when given) and starts keepalived in ns. */
  static async start(ns: Netns, spec: KeepalivedSpec, checkScript?: string): Promise<Keepalived> {
    const dir = await mkdtemp(join(tmpdir(), 'ft-keepalived-'))
    if (!SAFE_PATH.test(dir)) throw new Error(`unsafe temp dir ${dir}`)
    const k = new Keepalived(ns, dir)
    ns.onDestroy(async () => {
      await k.stop()
      await rm(dir, { recursive: true, force: true })
    })
    await mkdir(join(dir, 'run'), { recursive: true })
    if (checkScript !== undefined) {
      await writeFile(spec.check.script, checkScript)
      await chmod(spec.check.script, 0o700)
    }
    await writeFile(k.confPath, renderKeepalivedConf(spec))
    await k.spawn()
    return k
  }

  private async spawn(): Promise<void> {
    const run = join(this.dir, 'run')
    const log = openSync(this.logPath, 'a')
    const child = spawn(
      'ip',
      [
        'netns', 'exec', this.ns.name, 'sh', '-c',
        'mount --bind "$0" /run && exec "$1" --dont-fork --log-console --no-syslog --log-detail --vrrp -f "$2" -p "$0/keepalived.pid" -r "$0/vrrp.pid"',
        run, KEEPALIVED_BIN, this.confPath,
      ],
      { stdio: ['ignore', log, log] },
    )
    closeSync(log)
    this.child = child
    this.exited = new Promise((resolve) => child.once('exit', () => resolve()))
    const deadline = Date.now() + 5_000
    while (this.vrrpPid() === null) {
      if (!this.running) throw new Error(`keepalived in ${this.ns.name} exited during start:\n${(await this.log()).slice(-1500)}`)
      if (Date.now() > deadline) throw new Error(`keepalived in ${this.ns.name}: no VRRP child after 5 s`)
      await new Promise((r) => setTimeout(r, 20))
    }
  }

  /** The VRRP child's pid from its pid file, or null. */
  vrrpPid(): number | null {
    try {
      const text = readFileSync(join(this.dir, 'run', 'vrrp.pid'), 'utf8')
      const pid = Number(text.trim())
      return Number.isInteger(pid) && pid > 1 ? pid : null
    } catch {
      return null
    }
  }

  log(): Promise<string> {
    return readFile(this.logPath, 'utf8').catch(() => '')
  }

  /** A crash: SIGKILL to the VRRP child, then the parent; no VIP is released, no priority-0 advert is sent. */
  async kill(): Promise<void> {
    const vrrp = this.vrrpPid()
    if (vrrp !== null) {
      try {
        process.kill(vrrp, 'SIGKILL')
      } catch {
        // already gone
      }
    }
    if (this.running) this.child!.kill('SIGKILL')
    await Promise.race([this.exited, new Promise((r) => setTimeout(r, 5_000).unref())])
    this.child = null
  }

  /** Graceful stop (SIGTERM: VIPs released), SIGKILL after 3 s. Idempotent. */
  async stop(): Promise<void> {
    if (!this.child) return
    if (this.running) {
      this.child.kill('SIGTERM')
      const done = await Promise.race([this.exited.then(() => true), new Promise<boolean>((r) => setTimeout(() => r(false), 3_000).unref())])
      if (!done) await this.kill()
    }
    // The child never outlives the parent in a clean stop; a stray one after a kill is ended here.
    const vrrp = this.vrrpPid()
    if (vrrp !== null) {
      try {
        process.kill(vrrp, 0)
        process.kill(vrrp, 'SIGKILL')
      } catch {
        // gone
      }
    }
    this.child = null
  }

  /** Starts keepalived again with the same config (after a crash). */
  async restart(): Promise<void> {
    await this.stop()
    await rm(join(this.dir, 'run', 'vrrp.pid'), { force: true })
    await rm(join(this.dir, 'run', 'keepalived.pid'), { force: true })
    await this.spawn()
  }
}
