// Throwaway network namespaces for tests: unique names, bounded waits, teardown that never throws and also runs
// after a failure or a signal. Only objects this module created are ever deleted.
import { exec, execCapture, type ExecOptions, type ExecResult } from './exec.js'

export const isRoot = typeof process.getuid === 'function' && process.getuid() === 0

/** Reason string for tap's `skip` when a test needs root; CI runs as root so it never skips there. */
export const needsRoot: string | false = isRoot ? false : 'needs root (network namespaces); CI runs this as root'

let counter = 0
/**
 * A name unique to this process and call, short enough for an interface name (15 bytes):
 * prefix (<= 4 chars) + pid in base 36 + counter in base 36.
 */
export function uniqueName(prefix: string): string {
  if (!/^[a-z][a-z0-9]{0,3}$/.test(prefix)) throw new Error(`bad prefix ${prefix}: 1-4 lowercase letters/digits`)
  const name = `${prefix}${process.pid.toString(36)}${(counter++).toString(36)}`
  if (name.length > 15) throw new Error(`name too long: ${name}`)
  return name
}

const live = new Set<Netns>()

export class Netns {
  private destroyed = false
  private readonly cleanups: Array<() => Promise<void> | void> = []

  private constructor(readonly name: string, private readonly owned = true) {}

  /**
   * A handle on a namespace another process created (e.g. a script that re-runs itself inside it): runs
   * commands and cleanups, but destroy() leaves the namespace itself to its creator.
   */
  static adopt(name: string): Netns {
    if (!/^[a-z][a-z0-9]{0,14}$/.test(name)) throw new Error(`bad namespace name ${name}`)
    return new Netns(name, false)
  }

  /** `ip netns add <unique>`, loopback up. */
  static async create(prefix = 'ft'): Promise<Netns> {
    const ns = new Netns(uniqueName(prefix))
    await exec(['ip', 'netns', 'add', ns.name])
    live.add(ns)
    await ns.run(['ip', 'link', 'set', 'lo', 'up'])
    return ns
  }

  /** argv run inside the namespace (`ip netns exec NAME ...`), resolved whatever the exit code. */
  capture(argv: readonly string[], opts?: ExecOptions): Promise<ExecResult> {
    return execCapture(['ip', 'netns', 'exec', this.name, ...argv], opts)
  }

  /** argv run inside the namespace; a non-zero exit rejects with the command and its stderr. */
  run(argv: readonly string[], opts?: ExecOptions): Promise<string> {
    return exec(['ip', 'netns', 'exec', this.name, ...argv], opts)
  }

  /** Registers work to undo on destroy (last registered runs first), e.g. killing a process started inside. */
  onDestroy(fn: () => Promise<void> | void): void {
    this.cleanups.push(fn)
  }

  async destroy(): Promise<void> {
    if (this.destroyed) return
    this.destroyed = true
    live.delete(this)
    for (const fn of this.cleanups.reverse()) {
      try {
        await fn()
      } catch {
        // teardown keeps going: a failed cleanup must not leave the namespace behind
      }
    }
    if (this.owned) await execCapture(['ip', 'netns', 'del', this.name], { timeoutMs: 10_000 }).catch(() => undefined)
  }
}

/** Creates a veth pair between two namespaces (names unique), both ends up. Returns the two interface names. */
export async function vethPair(a: Netns, b: Netns, prefix = 've'): Promise<[string, string]> {
  const ifA = uniqueName(prefix)
  const ifB = uniqueName(prefix)
  await exec(['ip', 'link', 'add', ifA, 'netns', a.name, 'type', 'veth', 'peer', 'name', ifB, 'netns', b.name])
  await a.run(['ip', 'link', 'set', ifA, 'up'])
  await b.run(['ip', 'link', 'set', ifB, 'up'])
  return [ifA, ifB]
}

/** Runs fn with fresh namespaces and always destroys them. */
export async function withNetns<T>(count: number, fn: (...ns: Netns[]) => Promise<T>, prefix = 'ft'): Promise<T> {
  const spaces: Netns[] = []
  try {
    for (let i = 0; i < count; i++) spaces.push(await Netns.create(prefix))
    return await fn(...spaces)
  } finally {
    for (const ns of spaces) await ns.destroy()
  }
}

/** Destroys every namespace this process created and has not destroyed yet (signal and exit paths). */
export async function destroyAll(): Promise<void> {
  for (const ns of [...live]) await ns.destroy()
}

let hooked = false
/** Tears everything down on SIGINT/SIGTERM so Ctrl-C never leaves namespaces or daemons behind. */
export function teardownOnSignals(): void {
  if (hooked) return
  hooked = true
  for (const sig of ['SIGINT', 'SIGTERM'] as const) {
    process.once(sig, () => {
      void destroyAll().finally(() => process.exit(130))
    })
  }
}
