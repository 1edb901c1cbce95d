// Signal handlers that exist before any command is loaded. Loading the commands takes a few hundred milliseconds
// (the module graph: config, desired state, netlink, VICI, pino), and until a handler exists SIGHUP's default
// action kills the process: systemd's `ExecReload` right after start would do exactly that. The executable
// (cli.ts) installs these first, with nothing imported before them; the command that handles signals takes what
// arrived meanwhile and installs its own. This module must import nothing.
const SIGNALS = ['SIGHUP', 'SIGTERM', 'SIGINT'] as const
export type EarlySignal = (typeof SIGNALS)[number]

// The state lives on `process`, not in this module: the executable's loader (dist/cli.js) and the commands' bundle
// (dist/cli-main-*.cjs, scripts/bundle.mjs) each carry their own copy of this module, and the signals one installs
// are the ones the other takes.
interface EarlyState { pending: EarlySignal[]; handlers: Map<EarlySignal, () => void> }
const KEY = Symbol.for('fabtunnel.earlySignals')
const state: EarlyState = ((process as unknown as Record<symbol, EarlyState | undefined>)[KEY] ??= { pending: [], handlers: new Map() })
const { pending, handlers } = state

export function installEarlySignals(): void {
  for (const sig of SIGNALS) {
    if (handlers.has(sig)) continue
    const h = (): void => { pending.push(sig) }
    handlers.set(sig, h)
    process.on(sig, h)
  }
}

/** Removes the early handlers and returns the signals that arrived, in order (each once per arrival). */
export function takeEarlySignals(): EarlySignal[] {
  for (const [sig, h] of handlers) process.off(sig, h)
  handlers.clear()
  return pending.splice(0)
}
