// Line-coverage floor for the reconcile core, from the unit tests alone: every fault path of the pass engine and
// the subsystems must stay tested with fake ports, without namespaces. Reads the json-summary that
// `tap --coverage-report=json-summary` writes, aggregates lines per gated directory (a source file no unit test
// loads counts with all its lines uncovered), prints a table, and exits 1 below the floor.
// Usage: node scripts/coverage-gate.mjs <coverage-summary.json> [floor-percent]
import { readFileSync, readdirSync } from 'node:fs'
import { join, relative, resolve } from 'node:path'

const GATED = ['src/reconcile', 'src/daemon']
const [summaryFile, floorArg = '85'] = process.argv.slice(2)
const floor = Number(floorArg)
const root = resolve(new URL('..', import.meta.url).pathname)
const summary = JSON.parse(readFileSync(summaryFile, 'utf8'))
const byFile = new Map(Object.entries(summary).filter(([k]) => k !== 'total').map(([k, v]) => [relative(root, k), v.lines]))

const countLines = (file) => readFileSync(join(root, file), 'utf8').split('\n').filter((l) => l.trim() && !/^\s*(\/\/|\*|\/\*)/.test(l)).length
let failed = false
const rows = []
for (const dir of GATED) {
  let total = 0
  let covered = 0
  for (const f of readdirSync(join(root, dir)).filter((x) => x.endsWith('.ts')).sort()) {
    const file = join(dir, f)
    const l = byFile.get(file) ?? { total: countLines(file), covered: 0 }
    total += l.total
    covered += l.covered
    rows.push(`  ${file.padEnd(40)} ${String(l.covered).padStart(5)}/${String(l.total).padEnd(5)} ${(l.total ? (100 * l.covered) / l.total : 100).toFixed(1).padStart(5)}%${byFile.has(file) ? '' : '  (no unit test loads it)'}`)
  }
  const pct = total ? (100 * covered) / total : 100
  const ok = pct >= floor
  if (!ok) failed = true
  rows.push(`${dir}: ${pct.toFixed(1)}% of ${total} lines covered by unit tests (floor ${floor}%) ${ok ? 'ok' : 'BELOW THE FLOOR'}`)
}
const all = summary.total?.lines
if (all) rows.push(`all of src/ loaded by unit tests: ${all.pct}% of ${all.total} lines`)
console.log(rows.join('\n'))
process.exit(failed ? 1 : 0)
