// The V8 flags the daemon keeps set on itself (heap-tuning.ts, daemon/memory.ts), each known with V8's default, so
// that a built-in module loaded after they are set can still be compiled from Node's code cache.
//
// V8 accepts a code cache only under the flag values it was made with (it compares a hash of every flag's value),
// and Node's cache of its built-in modules is made under V8's defaults. So a module Node loads after any of these
// flags is set is compiled from its source: more CPU, and more memory than the cached code (heap-tuning.ts). The
// modules the daemon needs from its start are loaded before the flags are set (DAEMON_LATE_BUILTINS); one needed
// only later (the first /metrics scrape's process metrics: perf_hooks) is loaded inside withV8Defaults, which puts
// V8's defaults back for the duration of the load and the daemon's flags again after it. Measured: V8 then accepts
// the cache (test/integration/daemon/shutdown.test.ts: "rejected for none" with a scrape after the flags are set).
import { setFlagsFromString } from 'node:v8'

/** V8's default of each flag the daemon sets (node --v8-options, Node 20's V8 11.3), by flag name. */
export const V8_DEFAULTS: Readonly<Record<string, string>> = {
  'semi-space-growth-factor': '--semi-space-growth-factor=2',
  'heap-growing-percent': '--heap-growing-percent=0',
  turbofan: '--turbofan',
  sparkplug: '--sparkplug',
}

/** A flag's name: `--no-turbofan` and `--turbofan` are both `turbofan`; `--a_b=1` is `a-b`. */
export function flagName(flag: string): string {
  const m = /^--(?:no[-_])?([a-z0-9_-]+)(?:=.*)?$/i.exec(flag)
  if (!m) throw new RangeError(`not a V8 flag: ${JSON.stringify(flag)}`)
  return m[1]!.replace(/_/g, '-')
}

/** The flags set through this module and not back at their default, by name (what withV8Defaults undoes and redoes). */
export class DaemonFlags {
  private readonly inForce = new Map<string, string>()

  constructor(private readonly apply: (flag: string) => void = setFlagsFromString) {}

  /** Sets `flag` (one of V8_DEFAULTS's flags); its default value takes it out of the set. */
  set(flag: string): void {
    const name = flagName(flag)
    const dflt = V8_DEFAULTS[name]
    if (dflt === undefined) throw new RangeError(`${flag}: V8's default of ${name} is not known here (add it to V8_DEFAULTS)`)
    this.apply(flag)
    if (flag.replace(/_/g, '-') === dflt) this.inForce.delete(name)
    else this.inForce.set(name, flag)
  }

  /** The flags in force, as set (tests, diagnosis). */
  get flags(): string[] {
    return [...this.inForce.values()]
  }

  /** Runs `fn` under V8's default flag values (for a code cache made under them), then sets the daemon's again. */
  withV8Defaults<T>(fn: () => T): T {
    const set = [...this.inForce]
    for (const [name] of set) this.apply(V8_DEFAULTS[name]!)
    try {
      return fn()
    } finally {
      for (const [, flag] of set) this.apply(flag)
    }
  }
}

/** The process's flags (V8's flags are per process). */
export const daemonFlags = new DaemonFlags()
