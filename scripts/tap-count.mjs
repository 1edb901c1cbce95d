// Reads a TAP stream written by `tap --reporter=tap` and prints the final "N passed, N failed" line.
// Counts top-level test files' assertions as tap reports them in its closing plan comments; extra
// failures (typecheck, a non-zero tap exit with no failing assertion) are added so nothing is hidden.
import { readFileSync } from 'node:fs'

const [file, extraFailedArg = '0', tapRcArg = '0'] = process.argv.slice(2)
const text = readFileSync(file, 'utf8')
let passed = 0
let failed = 0
for (const line of text.split('\n')) {
  // Leaf assertions at any depth: "ok N - ..." / "not ok N - ...", excluding subtest summary lines,
  // which are followed by an indented "---"/"# Subtest" block. Count only lines whose description does
  // not belong to a subtest summary: tap marks those with a trailing "# time=".
  const m = /^\s*(not ok|ok) \d+/.exec(line)
  if (!m) continue
  if (/# time=/.test(line)) continue
  if (/# SKIP/i.test(line)) continue
  if (m[1] === 'ok') passed++
  else failed++
}
const extraFailed = Number(extraFailedArg)
const tapRc = Number(tapRcArg)
failed += extraFailed
if (tapRc !== 0 && failed === 0) failed = 1
console.log(`${passed} passed, ${failed} failed`)
process.exit(failed === 0 ? 0 : 1)
