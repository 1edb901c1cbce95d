// The entry of the commands' bundle (scripts/bundle.mjs writes it as dist/cli-main-<hash>.cjs): what the executable
// (cli.ts) takes from it.
export { main, mayRunDaemon } from './commands.js'
export { warmUp } from './warm-up.js'
