// Containers from locally built images, run the way a kubelet would start them but without a container engine
// daemon: `buildah from` makes a working container (own overlay rootfs) and `buildah run --isolation chroot` runs a
// process in it, inside a test network namespace (`ip netns exec NS buildah run --network host ...`: the
// container shares the namespace the way a hostNetwork pod shares the node's), with host directories bind-mounted
// as the pod's volumes. Like a kubelet, the process is the image's ENTRYPOINT followed by the pod's args (or the
// image's CMD when there are none), unless a command replaces the ENTRYPOINT.
// Every process is tracked and killed by Container.remove() (SIGTERM to `buildah run` takes its whole tree down;
// SIGKILL after a grace period), and every working container is removed: also after a failure (ns.onDestroy).
import { spawn, type ChildProcess } from 'node:child_process'
import { once } from 'node:events'
import { open } from 'node:fs/promises'
import { exec, execCapture, type ExecResult } from './exec.js'
import type { Netns } from './netns.js'

const SAFE_PATH = /^\/[A-Za-z0-9._/-]+$/
const IMAGE = /^localhost\/[a-z0-9._/-]+:[A-Za-z0-9._-]+$/
const ENV = /^[A-Z_][A-Z0-9_]*=[A-Za-z0-9._/:=,-]*$/

/**
 * What `privileged: true` gives a pod and the agent, init container and charon use: netlink, iptables and raw
 * sockets, TUN, /proc/sys, modules. (A literal `--cap-add ALL` fails where the test runner's own bounding set
 * lacks one, e.g. CAP_SYS_RESOURCE.)
 */
export const PRIVILEGED_CAPS = ['CAP_NET_ADMIN', 'CAP_NET_RAW', 'CAP_NET_BIND_SERVICE', 'CAP_SYS_ADMIN', 'CAP_SYS_MODULE']

export interface Mount {
  host: string
  container: string
  readOnly?: boolean
}

export interface RunSpec {
  /** Replaces the image's ENTRYPOINT (a pod's `command`); without it the ENTRYPOINT runs. */
  command?: string[]
  /** A pod's `args`: replace the image's CMD. */
  args?: string[]
  mounts?: Mount[]
  /** KEY=value pairs (test plumbing only, see the callers). */
  env?: string[]
}

export interface ImageConfig {
  entrypoint: string[]
  cmd: string[]
  user: string
  labels: Record<string, string>
}

/** ENTRYPOINT, CMD, USER and labels of a local image. */
export async function imageConfig(image: string): Promise<ImageConfig> {
  if (!IMAGE.test(image)) throw new Error(`not a local image name: ${image}`)
  const out = await exec(['buildah', 'inspect', '--type', 'image', image], { timeoutMs: 30_000 })
  const c = (JSON.parse(out) as { OCIv1: { config: { Entrypoint?: string[] | null; Cmd?: string[] | null; User?: string; Labels?: Record<string, string> | null } } }).OCIv1.config
  return { entrypoint: c.Entrypoint ?? [], cmd: c.Cmd ?? [], user: c.User ?? '', labels: c.Labels ?? {} }
}

let seq = 0

export class Container {
  private readonly procs = new Set<ChildProcess>()
  private removed = false

  private constructor(
    readonly name: string,
    readonly image: string,
    readonly config: ImageConfig,
    readonly ns: Netns,
  ) {}

  /** `buildah from` the image; the container (and its processes) go when ns is destroyed, or by remove(). */
  static async create(image: string, ns: Netns, role: string): Promise<Container> {
    if (!/^[a-z][a-z0-9-]{0,20}$/.test(role)) throw new Error(`bad role ${role}`)
    const config = await imageConfig(image)
    const name = `fabtunnel-test-${process.pid}-${seq++}-${role}`
    await exec(['buildah', 'from', '--quiet', '--pull=never', '--name', name, image], { timeoutMs: 120_000 })
    const c = new Container(name, image, config, ns)
    ns.onDestroy(() => c.remove())
    return c
  }

  /** The process a kubelet would start for this spec. */
  argv(spec: RunSpec): string[] {
    const entry = spec.command ?? this.config.entrypoint
    const rest = spec.args ?? (spec.command ? [] : this.config.cmd)
    return [...entry, ...rest]
  }

  private buildahArgv(spec: RunSpec): string[] {
    const argv = ['ip', 'netns', 'exec', this.ns.name, 'buildah', 'run', '--isolation', 'chroot', '--network', 'host']
    for (const cap of PRIVILEGED_CAPS) argv.push('--cap-add', cap)
    for (const e of spec.env ?? []) {
      if (!ENV.test(e)) throw new Error(`bad env ${e}`)
      argv.push('--env', e)
    }
    for (const m of spec.mounts ?? []) {
      if (!SAFE_PATH.test(m.host) || !SAFE_PATH.test(m.container)) throw new Error(`bad mount ${m.host}:${m.container}`)
      argv.push('--volume', `${m.host}:${m.container}${m.readOnly ? ':ro' : ''}`)
    }
    const cmd = this.argv(spec)
    if (cmd.length === 0) throw new Error(`${this.image}: nothing to run (no ENTRYPOINT, CMD or command)`)
    return [...argv, this.name, '--', ...cmd]
  }

  /** Runs to completion (bounded); resolves whatever the exit code. */
  async run(spec: RunSpec, timeoutMs = 60_000): Promise<ExecResult> {
    if (this.removed) throw new Error(`container ${this.name} was removed`)
    return execCapture(this.buildahArgv(spec), { timeoutMs })
  }

  /** Starts a long-running process, stdout and stderr appended to logPath. */
  async start(spec: RunSpec, logPath: string): Promise<ChildProcess> {
    if (this.removed) throw new Error(`container ${this.name} was removed`)
    const [cmd, ...args] = this.buildahArgv(spec)
    const log = await open(logPath, 'a')
    const child = spawn(cmd!, args, { stdio: ['ignore', log.fd, log.fd] })
    await log.close()
    this.procs.add(child)
    child.once('error', () => this.procs.delete(child))
    child.once('exit', () => this.procs.delete(child))
    return child
  }

  /** Kills every process started here (SIGTERM, SIGKILL after 5 s), then `buildah rm`. Idempotent, never throws. */
  async remove(): Promise<void> {
    await Promise.all([...this.procs].map((p) => stopProcess(p, 5_000)))
    if (this.removed) return
    this.removed = true
    await execCapture(['buildah', 'rm', this.name], { timeoutMs: 60_000 }).catch(() => undefined)
  }
}

/**
 * Removes working containers a killed test run left behind (`fabtunnel-test-<pid>-…` whose pid is gone). Never
 * touches containers of a live process or with other names.
 */
export async function removeStaleContainers(): Promise<string[]> {
  const r = await execCapture(['buildah', 'containers', '--format', '{{.ContainerName}}'], { timeoutMs: 30_000 })
  const stale = r.stdout.split('\n').filter((name) => {
    const m = /^fabtunnel-test-(\d+)-\d+-[a-z0-9-]+$/.exec(name.trim())
    if (!m || Number(m[1]) === process.pid) return false
    try {
      process.kill(Number(m[1]), 0)
      return false
    } catch {
      return true
    }
  })
  for (const name of stale) await execCapture(['buildah', 'rm', name.trim()], { timeoutMs: 60_000 })
  return stale
}

/** SIGTERM, then SIGKILL after graceMs; resolves when the process has exited (or after a further bound). */
export async function stopProcess(p: ChildProcess, graceMs: number): Promise<void> {
  if (p.exitCode !== null || p.signalCode !== null) return
  const exited = once(p, 'exit').catch(() => undefined)
  p.kill('SIGTERM')
  const done = await Promise.race([exited.then(() => true), new Promise<boolean>((r) => setTimeout(() => r(false), graceMs).unref())])
  if (!done) {
    p.kill('SIGKILL')
    await Promise.race([exited, new Promise((r) => setTimeout(r, 5_000).unref())])
  }
}

/**
 * Kills whatever still runs in a namespace (`ip netns pids`): a container process whose `buildah run` parent died
 * first would otherwise outlive the test. Only for namespaces the test created.
 */
export async function killNamespacePids(ns: Netns): Promise<void> {
  const r = await execCapture(['ip', 'netns', 'pids', ns.name], { timeoutMs: 10_000 })
  for (const pid of r.stdout.split(/\s+/).filter(Boolean).map(Number)) {
    try {
      process.kill(pid, 'SIGKILL')
    } catch {
      // already gone
    }
  }
}
