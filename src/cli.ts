#!/usr/bin/env node
// The `fabtunnel` executable. Signal handlers come first, before the commands' module graph is loaded (see
// early-signals.ts); then the command runs. `fabtunnel run` (also through the FabEdge mode, which releases them
// itself when it does not end up running) takes over the signals that arrived meanwhile; any
// other command gets the default behaviour back, and a SIGTERM/SIGINT that arrived while loading ends it as usual.
//
// Built (scripts/bundle.mjs), this file is dist/cli.cjs, the package's bin (and dist/cli.js, the same as an ES
// module), and FT_MAIN_BUNDLE names the commands' bundle beside it, loaded with V8's code cache (code-cache.ts).
// From source (tsx, tsc's dist/) the commands are imported as modules. No top-level await: CommonJS has none.
import { installEarlySignals, takeEarlySignals } from './early-signals.js'

declare const FT_MAIN_BUNDLE: string | undefined
type Commands = typeof import('./main-bundle.js')

installEarlySignals()
start().then(
  (code) => {
    process.exitCode = code
  },
  (err: unknown) => {
    process.stderr.write(`fabtunnel: ${(err as Error).stack ?? String(err)}\n`)
    process.exitCode = 1
  },
)

async function start(): Promise<number> {
  // No V8 flag is set before the bundle is compiled: its code cache, and Node's for its built-in modules, were made
  // under the default flags. The daemon sets its own once it has started (heap-tuning.ts).
  let writeCodeCache: (() => Promise<number>) | null = null
  let commands: Pick<Commands, 'main' | 'mayRunDaemon'>
  if (typeof FT_MAIN_BUNDLE === 'string') {
    const { loadBundle } = await import('./code-cache.js')
    const loaded = loadBundle<Commands>(new URL(FT_MAIN_BUNDLE, import.meta.url))
    commands = loaded.exports
    writeCodeCache = async () => {
      // Two iptables plans, a tunnels plan and a VICI request: a warm-up that ran nothing would leave them uncached.
      const produced = await loaded.exports.warmUp()
      if (produced < 4) throw new Error(`code cache warm-up produced ${produced} results, expected 4`)
      return loaded.writeCodeCache()
    }
  } else {
    commands = await import('./commands.js')
  }
  const { main, mayRunDaemon } = commands
  const argv = process.argv.slice(2)
  if (!mayRunDaemon(argv)) {
    for (const sig of takeEarlySignals()) if (sig !== 'SIGHUP') process.kill(process.pid, sig)
  }
  const code = await main(argv, {
    out: (t) => process.stdout.write(`${t}\n`),
    err: (t) => process.stderr.write(`${t}\n`),
    env: process.env,
  })
  // scripts/bundle.mjs runs one command at build time with FT_WRITE_CODE_CACHE=1: the functions it and the warm-up
  // (warm-up.ts: the pure parts of an edge's first pass) compiled are the code cache every later start reads.
  if (writeCodeCache && process.env.FT_WRITE_CODE_CACHE === '1') process.stderr.write(`code cache: ${await writeCodeCache()} bytes\n`)
  return code
}
