#!/usr/bin/env node
// The `fabtunnel` executable. Signal handlers come first, before the commands' module graph is loaded (see
// early-signals.ts); then the command runs. `fabtunnel run` (also through the FabEdge mode, which releases them
// itself when it does not end up running) takes over the signals that arrived meanwhile; any
// other command gets the default behaviour back, and a SIGTERM/SIGINT that arrived while loading ends it as usual.
import { installEarlySignals, takeEarlySignals } from './early-signals.js'

installEarlySignals()
;(await import('./heap-tuning.js')).tuneHeap()
const { main, mayRunDaemon } = await import('./commands.js')
const argv = process.argv.slice(2)
if (!mayRunDaemon(argv)) {
  for (const sig of takeEarlySignals()) if (sig !== 'SIGHUP') process.kill(process.pid, sig)
}
main(argv, {
  out: (t) => process.stdout.write(`${t}\n`),
  err: (t) => process.stderr.write(`${t}\n`),
  env: process.env,
}).then(
  (code) => {
    process.exitCode = code
  },
  (err: unknown) => {
    process.stderr.write(`fabtunnel: ${(err as Error).stack ?? String(err)}\n`)
    process.exitCode = 1
  },
)
