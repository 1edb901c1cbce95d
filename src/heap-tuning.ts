// V8 settings the daemon applies to itself, so the plain `fabtunnel run` keeps an edge-sized footprint without
// NODE_OPTIONS (issue 13; figures in docs/footprint.md).
//
// The young generation stays at its initial size (two 1 MiB semi-spaces) instead of growing to V8's 2 x 16 MiB
// under the allocation bursts of a pass: RSS with 1,000 peers 72 MiB instead of 85 MiB, with no measurable CPU
// cost. `--max-semi-space-size` only counts when the heap is set up, before any JavaScript runs, so it would need
// NODE_OPTIONS or a re-exec; the growth factor is read each time the new space would grow, so setting it from
// here works. A user who sizes the young generation with node flags keeps their setting.
//
// When: once the daemon starts, not when the executable starts. V8 accepts a code cache only under the flags it was
// made with, and that holds for Node's own: every built-in module (http, net, crypto, child_process, ...) is
// compiled from the code cache embedded in the node binary, made under the default flags. After any flag change,
// V8 rejects it and each built-in module loaded later is compiled from its source (measured: +21 ms of CPU and
// +0.9 MiB RSS for the daemon's modules). So the executable's bundle is compiled under the default flags (its own
// code cache is made under them at build time), the daemon's modules are loaded, the built-in modules Node itself
// loads later on first use are loaded ahead (DAEMON_LATE_BUILTINS), and only then are the flags set.
import { createRequire } from 'node:module'
import { daemonFlags } from './v8-flags.js'

export const YOUNG_GENERATION_FLAG = '--semi-space-growth-factor=1'

/**
 * Built-in modules the daemon uses that Node loads only on first use, after start-up: `cluster` at the first
 * `listen`, `dns` and `dgram` through `net` and `child_process` (the HTTP endpoints do not use `node:http`:
 * src/daemon/http-server.ts). Loaded before the flags change, they keep Node's code cache (see above);
 * test/integration/daemon/shutdown.test.ts checks that Node rejects its cache for no module a daemon loads (lease
 * mode's Kubernetes client, loaded later, is compiled from source). Not here: what only the first /metrics scrape
 * needs (prom-client's process metrics: `perf_hooks`, `process`), which an unscraped edge does not pay for; the
 * scrape loads them under V8's default flags (src/v8-flags.ts), so with Node's cache too. Nor does the daemon use
 * the `performance` global (src/clock.ts): its first use loads perf_hooks' modules.
 */
export const DAEMON_LATE_BUILTINS: readonly string[] = ['node:cluster', 'node:dns', 'node:dgram', 'node:child_process', 'node:net']

/** A built-in module by name: `process.getBuiltinModule` from Node 20.16, `require` before it (engines: >=20). */
function builtin(id: string): unknown {
  return typeof process.getBuiltinModule === 'function' ? process.getBuiltinModule(id) : createRequire(import.meta.url)(id)
}

/** Loads the built-in modules named (see DAEMON_LATE_BUILTINS); returns how many it loaded. */
export function preloadBuiltins(names: readonly string[] = DAEMON_LATE_BUILTINS, load: (id: string) => unknown = builtin): number {
  let n = 0
  for (const id of names) if (load(id) !== undefined) n++
  return n
}

/** Configs with at most this many peers run without V8's optimizing and baseline compilers (see OptimizingCompiler). */
export const SMALL_CONFIG_PEERS = 32

/**
 * V8's optimizing compiler (TurboFan) and baseline compiler (Sparkplug) off while the config in force is small, on
 * again once it is not.
 *
 * On an edge (one connector, a few community peers) nothing runs long enough to need compiled code: a pass is a few
 * milliseconds in V8's interpreter. But over minutes of probes, log lines and passes some function (on an edge:
 * Node's own argument validators) gets hot, TurboFan compiles it (~30 ms of CPU) and its own code, ~3.4 MiB of the
 * node binary, becomes resident: an idle edge measured 50.3 MiB after 30 s with it off, 54 MiB with it on
 * (docs/footprint.md). Sparkplug's machine code for the functions that ran a few times, and the compiler's own
 * pages, are ~0.3 MiB more of private memory on an edge 30 s after ready (docs/footprint.md, 2026-12-02). A
 * connector with thousands of peers needs both: its passes walk every peer. V8 reads the flags each time it decides
 * to compile, so setting them at run time works both ways (test/unit/heap-tuning.test.ts); functions already
 * compiled stay so until their code is flushed. Node flags that choose compilers (`--turbofan`, `--no-opt`,
 * `--max-opt`, `--sparkplug`, `--jitless`, `--lite-mode`) win: the daemon then sets neither.
 */
export class OptimizingCompiler {
  private on = true
  private readonly userChose: boolean

  constructor(
    private readonly set: (flag: string) => void = (f) => daemonFlags.set(f),
    nodeFlags = `${process.env.NODE_OPTIONS ?? ''} ${process.execArgv.join(' ')}`,
    private readonly smallPeers = SMALL_CONFIG_PEERS,
  ) {
    this.userChose = /--(no[-_])?(turbofan|opt|sparkplug)\b|--max[-_]opt\b|--jitless\b|--lite[-_]mode\b/.test(nodeFlags)
  }

  /** Sets the compilers for a config of `peers` peers; returns the change made, or null when there was none. */
  forPeers(peers: number): 'on' | 'off' | null {
    if (this.userChose) return null
    const on = peers > this.smallPeers
    if (on === this.on) return null
    this.set(on ? '--turbofan' : '--no-turbofan')
    this.set(on ? '--sparkplug' : '--no-sparkplug')
    this.on = on
    return on ? 'on' : 'off'
  }
}

/** Applies the young-generation setting unless node's own flags already size it; returns whether it did. */
export function tuneHeap(nodeOptions = process.env.NODE_OPTIONS ?? '', execArgv: readonly string[] = process.execArgv, set: (flag: string) => void = (f) => daemonFlags.set(f)): boolean {
  if (/semi[-_]space/.test(`${nodeOptions} ${execArgv.join(' ')}`)) return false
  set(YOUNG_GENERATION_FLAG)
  return true
}
