// One real charon inside a test namespace, per /work/shared/strongswan-netns.md: a private /run (bind mount in
// the namespace's own mount namespace, so the compiled-in pid file and the VICI socket are per instance), a
// per-instance strongswan.conf with the plugin list known to work on 5.9.8 (userspace ESP via kernel-libipsec),
// a file log, bounded start (socket must appear; "unable to bind socket" fails) and stop (SIGTERM, then SIGKILL).
import { spawn, type ChildProcess } from 'node:child_process'
import { existsSync } from 'node:fs'
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import type { Netns } from './netns.js'
import { Vici, type IkeSa } from '../../src/vici/index.js'

export const CHARON_BIN = '/usr/lib/ipsec/charon'

/** Order matters: kernel-libipsec before kernel-netlink; kdf is mandatory for IKE key derivation on 5.9.8. */
export const CHARON_PLUGINS =
  'random nonce kdf openssl pem pkcs1 pkcs8 x509 revocation constraints pubkey curve25519 hmac gcm ' +
  'kernel-libipsec kernel-netlink socket-default vici updown'

export interface CharonOptions {
  /** Bound on the VICI socket appearing after spawn. Default 5000 ms. */
  startTimeoutMs?: number
  /** Time SIGTERM gets before SIGKILL (a deadlocked charon ignores SIGTERM). Default 2000 ms. */
  stopGraceMs?: number
  /** Log level for every filelog subsystem. Default 1 (enough for "unable to bind socket" and SA state). */
  logLevel?: number
  /** Extra lines inside the `charon { }` section of strongswan.conf (fixed test strings only). */
  extraConf?: string
  /**
   * Start charon again whenever it exits without stop() (as systemd's Restart=always or the kubelet does for the
   * sidecar), e.g. after the agent's mediation recovery sent it SIGTERM. Default false. See `respawns`.
   */
  respawn?: boolean
}

// Paths reach `sh -c` as a positional argument, never spliced into the script; still refuse anything odd.
const SAFE_PATH = /^\/[A-Za-z0-9._/-]+$/

/** Namespaces that own a charon: a second one would silently break the first (see strongswan-netns.md). */
const owners = new Map<string, Charon>()

export class Charon {
  private child: ChildProcess | null = null
  private exited: Promise<void> = Promise.resolve()
  private stderrTail = ''
  private stopping = false
  /** Times charon was started again after exiting on its own (CharonOptions.respawn). */
  respawns = 0

  private constructor(
    readonly ns: Netns,
    /** Instance dir: strongswan.conf, charon.log, run/ (mounted as the namespace's /run). */
    readonly dir: string,
    private readonly opts: Required<Omit<CharonOptions, 'extraConf'>>,
  ) {}

  /** The VICI socket as seen from the host (and from the namespace, through the bind mount). */
  get socketPath(): string {
    return join(this.dir, 'run', 'charon.vici')
  }

  /** `unix://` URI for ViciClient and `swanctl --uri`. */
  get uri(): string {
    return `unix://${this.socketPath}`
  }

  /** One VICI request on a short-lived connection (checks of a test or the demo, not the agent's path). */
  async vici<T>(request: (v: Vici) => Promise<T>): Promise<T> {
    const v = new Vici({ uri: this.uri, reconnect: false, timeoutMs: 5_000 })
    try {
      await v.connect()
      return await request(v)
    } finally {
      await v.close()
    }
  }

  /** charon's IKE_SAs (`list-sas`). */
  listSas(): Promise<IkeSa[]> {
    return this.vici((v) => v.listSas())
  }

  get logPath(): string {
    return join(this.dir, 'charon.log')
  }

  /** charon's own pid file (compiled-in /var/run/charon.pid, inside the private /run). */
  get pidPath(): string {
    return join(this.dir, 'run', 'charon.pid')
  }

  get confPath(): string {
    return join(this.dir, 'strongswan.conf')
  }

  /** charon's pid while running (ip netns exec and sh both exec, so the spawned pid is charon's). */
  get pid(): number | undefined {
    return this.child?.pid
  }

  get running(): boolean {
    return this.child !== null && this.child.exitCode === null && this.child.signalCode === null
  }

  /** Starts charon in ns; it is stopped (and its dir removed) by ns.destroy(). */
  static async start(ns: Netns, opts: CharonOptions = {}): Promise<Charon> {
    if (owners.has(ns.name)) throw new Error(`namespace ${ns.name} already runs a charon`)
    const dir = await mkdtemp(join(tmpdir(), 'ft-charon-'))
    if (!SAFE_PATH.test(dir)) throw new Error(`unsafe temp dir path ${dir}`)
    const c = new Charon(ns, dir, {
      startTimeoutMs: opts.startTimeoutMs ?? 5_000,
      stopGraceMs: opts.stopGraceMs ?? 2_000,
      logLevel: opts.logLevel ?? 1,
      respawn: opts.respawn ?? false,
    })
    owners.set(ns.name, c)
    ns.onDestroy(async () => {
      await c.stop()
      owners.delete(ns.name)
      await rm(dir, { recursive: true, force: true })
    })
    try {
      await mkdir(join(dir, 'run'), { recursive: true })
      await writeFile(c.confPath, renderConf(dir, c.opts.logLevel, opts.extraConf ?? ''))
      await c.spawn()
    } catch (e) {
      // spawn() already stopped whatever it started; the namespace is free for another attempt
      owners.delete(ns.name)
      throw e
    }
    return c
  }

  /** Current log text. */
  log(): Promise<string> {
    return readFile(this.logPath, 'utf8').catch(() => '')
  }

  /** SIGTERM, SIGKILL after the grace period; resolves once charon is gone. Idempotent. */
  async stop(): Promise<void> {
    const child = this.child
    if (!child) return
    this.stopping = true
    if (this.running) {
      child.kill('SIGTERM')
      const graceful = await Promise.race([
        this.exited.then(() => true),
        new Promise<boolean>((r) => setTimeout(() => r(false), this.opts.stopGraceMs).unref()),
      ])
      if (!graceful && this.running) child.kill('SIGKILL')
      await Promise.race([this.exited, new Promise((r) => setTimeout(r, 5_000).unref())])
    }
    this.child = null
    this.stopping = false
  }

  /** stop() then start again with the same config and dir (charon forgets everything loaded over VICI). */
  async restart(): Promise<void> {
    await this.stop()
    await this.spawn()
  }

  private async spawn(): Promise<void> {
    const run = join(this.dir, 'run')
    // A SIGKILLed charon leaves its socket and pid file behind; charon refuses a stale pid file.
    await rm(this.socketPath, { force: true })
    await rm(join(run, 'charon.pid'), { force: true })
    const logBefore = (await this.log()).length
    const child = spawn(
      'ip',
      ['netns', 'exec', this.ns.name, 'sh', '-c', `mount --bind "$0" /run && exec ${CHARON_BIN}`, run],
      { env: { ...process.env, STRONGSWAN_CONF: this.confPath }, stdio: ['ignore', 'ignore', 'pipe'] },
    )
    this.child = child
    this.stderrTail = ''
    child.stderr!.on('data', (b: Buffer) => {
      this.stderrTail = (this.stderrTail + b.toString('utf8')).slice(-4096)
    })
    this.exited = new Promise((resolve) => child.once('exit', () => resolve()))
    child.once('exit', () => {
      if (!this.opts.respawn || this.stopping || this.child !== child) return
      // A supervisor's restart: shortly after, with the same config; a failed start leaves it down (tests see it).
      setTimeout(() => {
        if (this.stopping || this.child !== child) return
        this.respawns++
        void this.spawn().catch(() => undefined)
      }, 200).unref()
    })
    const deadline = Date.now() + this.opts.startTimeoutMs
    for (;;) {
      if (!this.running) throw new Error(`charon in ${this.ns.name} exited during start: ${this.stderrTail.trim()}`)
      if (existsSync(this.socketPath)) break
      if (Date.now() > deadline) {
        await this.stop()
        throw new Error(`charon in ${this.ns.name}: no VICI socket after ${this.opts.startTimeoutMs} ms`)
      }
      await new Promise((r) => setTimeout(r, 20))
    }
    const log = (await this.log()).slice(logBefore)
    if (/unable to bind socket/.test(log)) {
      await this.stop()
      throw new Error(`charon in ${this.ns.name} could not bind its IKE ports (another charon there?)`)
    }
  }
}

function renderConf(dir: string, level: number, extra: string): string {
  return `charon {
  load = ${CHARON_PLUGINS}
  plugins {
    vici {
      socket = unix://${join(dir, 'run', 'charon.vici')}
    }
  }
  filelog {
    main {
      path = ${join(dir, 'charon.log')}
      time_format = %T
      default = ${level}
      flush_line = yes
    }
  }
${extra}
}
`
}
