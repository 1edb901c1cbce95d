// Superseded by scripts/bench/scale.ts (issue 13): the agent as its own process (`fabtunnel run`, no node flags),
// observed from outside, against floors measured in the same run. This name stays for old command lines:
//   node --import tsx scripts/bench/converge.ts [peers=1000]   ==   scale.ts --peers <peers>
import { spawnSync } from 'node:child_process'
import { fileURLToPath } from 'node:url'

const peers = process.argv[2] ?? '1000'
if (process.argv.length > 4 || !/^\d+$/.test(peers)) {
  console.error('usage: node --import tsx scripts/bench/converge.ts [peers]  (see scripts/bench/scale.ts --help)')
  process.exit(2)
}
const r = spawnSync(process.execPath, ['--import', 'tsx', fileURLToPath(new URL('./scale.ts', import.meta.url)), '--peers', peers], { stdio: 'inherit' })
process.exitCode = r.status ?? 1
