// Signal handlers that exist before any command is loaded. Loading the commands takes a few hundred milliseconds
// (the module graph: config, desired state, netlink, VICI, pino), and until a handler exists SIGHUP's default
// action kills the process: systemd's `ExecReload` right after start would do exactly that. The executable
// (cli.ts) installs these first, with nothing imported before them; the command that handles signals takes what
// arrived meanwhile and installs its own. This module must import nothing.
const SIGNALS = ['SIGHUP', 'SIGTERM', 'SIGINT'] as const
export type EarlySignal = (typeof SIGNALS)[number]

const pending: EarlySignal[] = []
const handlers = new Map<EarlySignal, () => void>()

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
