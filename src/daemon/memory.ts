// Memory given back after passes that walked every peer (issue 13; figures in docs/footprint.md).
//
// A full pass at 10,000 peers (start, the resync timer, SIGHUP) allocates a few hundred MB that die within the pass:
// decoded VICI and netlink listings, plans, intermediate lists. With the young generation kept small
// (heap-tuning.ts) much of it is promoted, and V8 collects its old space only once it reaches a limit set from the
// last full collection, several times the live heap: RSS at 10,000 peers grew from ~220 MB at start to ~500 MB
// after a few deep passes and stayed there. Once the agent is quiet after such a pass, one full collection brings
// the heap back to what is live (V8 then unmaps the freed pages) and resets that limit; then the C allocator's
// free memory is returned to the kernel (malloc_trim, through the addon).
//
// Its CPU is bounded: a release waits until no pass ran for `quietMs`, and at least `costFactor` times the last
// release's duration after it (so its CPU stays under a tenth of a core).
// Scoped passes (O(change)) never ask for one, but postpone an armed one.
//
// The first release after start also drops the bytecode of every function not running (V8's bytecode flushing,
// forced for that one collection): most of what start-up compiled (option parsing, the config's validation, the
// first render) never runs again, and V8 would otherwise keep it until the function has missed 5 full
// collections, which an idle agent may never reach. A function that does run again is recompiled from the source
// V8 keeps anyway. On a one-peer edge: 818 KB of bytecode down to 279 KB, 0.3-0.7 MiB of RSS (docs/footprint.md).
import { setFlagsFromString } from 'node:v8'
import { runInNewContext } from 'node:vm'
import { monotonicMs } from '../clock.js'
import { loadAddon } from '../netlink/native.js'
import { daemonFlags } from '../v8-flags.js'
import type { PassRecord } from '../reconcile/engine.js'

export interface MemoryReleaseOptions {
  /** One full garbage collection (see fullGc); `flushCode`: also drop the bytecode of functions not running. */
  gc: (flushCode: boolean) => void
  /** Returns the C allocator's free memory to the kernel (malloc_trim); absent: skipped. */
  trim?: (() => void) | undefined
  /** Quiet time after the last pass before a release (ms). Default 500. */
  quietMs?: number
  /** A release waits at least this many times the last release's duration after it (its CPU stays under 1/costFactor of a core). Default 10. */
  costFactor?: number
  now?: () => number
  setTimer?: (fn: () => void, ms: number) => unknown
  clearTimer?: (t: unknown) => void
  /** Called after each release with its duration (ms) and RSS before and after (bytes), for a debug log line. */
  onRelease?: (r: { ms: number; rssBefore: number; rssAfter: number }) => void
  rss?: () => number
}

export class MemoryRelease {
  private timer: unknown = null
  private armed = false
  private lastEnd = Number.NEGATIVE_INFINITY
  private lastMs = 0
  private stopped = false
  /** Releases done (tests, diagnosis). */
  releases = 0

  private readonly quietMs: number
  private readonly costFactor: number
  private readonly now: () => number
  private readonly setTimer: (fn: () => void, ms: number) => unknown
  private readonly clearTimer: (t: unknown) => void
  private readonly rss: () => number

  constructor(private readonly o: MemoryReleaseOptions) {
    this.quietMs = o.quietMs ?? 500
    this.costFactor = o.costFactor ?? 10
    this.now = o.now ?? monotonicMs
    this.setTimer = o.setTimer ?? ((fn, ms) => setTimeout(fn, ms).unref())
    this.clearTimer = o.clearTimer ?? ((t) => clearTimeout(t as NodeJS.Timeout))
    this.rss = o.rss ?? (() => process.memoryUsage.rss())
  }

  /** After every pass: a full one (no scope) arms a release; any pass postpones an armed one. */
  afterPass(record: Pick<PassRecord, 'scope'>): void {
    if (this.stopped) return
    if (record.scope === undefined) this.armed = true
    if (this.armed) this.schedule()
  }

  stop(): void {
    this.stopped = true
    this.armed = false
    if (this.timer !== null) this.clearTimer(this.timer)
    this.timer = null
  }

  private schedule(): void {
    if (this.timer !== null) this.clearTimer(this.timer)
    const now = this.now()
    const at = Math.max(now + this.quietMs, this.lastEnd + this.costFactor * this.lastMs)
    this.timer = this.setTimer(() => this.release(), at - now)
  }

  private release(): void {
    this.timer = null
    if (!this.armed || this.stopped) return
    this.armed = false
    const rssBefore = this.rss()
    const t0 = this.now()
    this.o.gc(this.releases === 0)
    this.o.trim?.()
    const end = this.now()
    this.lastEnd = end
    this.lastMs = end - t0
    this.releases++
    this.o.onRelease?.({ ms: this.lastMs, rssBefore, rssAfter: this.rss() })
  }
}

/**
 * V8's full garbage collection, compacting, as a function, without node flags. `--expose-gc` set at run time
 * exposes `gc` in contexts created afterwards, so one is created to take it from, and the flag is cleared again (no
 * later context gets a global `gc`); a `gc` node already exposes (`node --expose-gc`) is used as it is. A plain
 * full collection frees the dead objects but leaves the pages they shared with live ones in place (after deep passes
 * at 10,000 peers: 93 MB used of 241 MB committed); `--compact-on-every-full-gc`, set around this one collection,
 * moves the live objects together so the emptied pages are unmapped (test/unit/daemon/memory.test.ts measures both).
 */
export function fullGc(): (flushCode?: boolean) => void {
  const exposed = (globalThis as { gc?: () => void }).gc
  let gc: () => void
  if (typeof exposed === 'function') gc = exposed
  else {
    setFlagsFromString('--expose-gc')
    try {
      gc = runInNewContext('gc') as () => void
    } finally {
      setFlagsFromString('--no-expose-gc')
    }
  }
  return (flushCode = false) => {
    setFlagsFromString('--compact-on-every-full-gc')
    // Bytecode flushing (on by default) then takes every function not on the stack, whatever its age.
    if (flushCode) setFlagsFromString('--stress-flush-code')
    try {
      gc()
    } finally {
      setFlagsFromString('--no-compact-on-every-full-gc')
      if (flushCode) setFlagsFromString('--no-stress-flush-code')
    }
  }
}

/** glibc malloc_trim(0) through the addon (native/src/memory.c); nothing where the addon cannot do it. */
export function mallocTrim(): void {
  try {
    loadAddon().mallocTrim?.()
  } catch {
    // no addon: nothing to trim with (the daemon needs the addon anyway; this only keeps a release from failing)
  }
}

/** The old generation's growing factor the daemon sets for itself (see boundHeapGrowth). */
export const HEAP_GROWTH_FLAG = '--heap-growing-percent=50'

/**
 * Bounds the old generation between full collections to 1.5x what the last one left live, instead of V8's dynamic
 * factor (up to 4x on a machine with much memory): a deep pass at 10,000 peers then collects its promoted garbage as
 * it goes (peak RSS ~310 MB instead of ~450 MB over three deep passes) for a few more full collections. V8 reads the
 * flag at each full collection, so setting it at run time works; a `--heap-growing-percent` in node's own flags wins.
 */
export function boundHeapGrowth(nodeOptions = process.env.NODE_OPTIONS ?? '', execArgv: readonly string[] = process.execArgv, set: (flag: string) => void = (f) => daemonFlags.set(f)): boolean {
  if (/heap[-_]growing[-_]percent/.test(`${nodeOptions} ${execArgv.join(' ')}`)) return false
  set(HEAP_GROWTH_FLAG)
  return true
}
