// Summarises a sampling heap profile written by sampler.mjs: allocated bytes (also of objects already collected)
// by function and by the innermost three frames of the agent's own code (dist/).
// Run: node scripts/bench/mem-probe/alloc-summary.mjs /tmp/prof-PID-0.json
import { readFileSync } from 'node:fs'
const p = JSON.parse(readFileSync(process.argv[2], 'utf8'))
const byFn = new Map(), byOwn = new Map()
let total = 0
function walk(node, stack) {
  const cf = node.callFrame
  const label = `${cf.functionName || '(anon)'} ${cf.url.replace(/^.*\/(dist|node_modules)\//, '$1/')}:${cf.lineNumber}`
  const st = [...stack, label]
  if (node.selfSize) {
    total += node.selfSize
    byFn.set(label, (byFn.get(label) ?? 0) + node.selfSize)
    const own = [...st].reverse().filter((l) => l.includes('dist/')).slice(0, 3).join(' < ') || label
    byOwn.set(own, (byOwn.get(own) ?? 0) + node.selfSize)
  }
  for (const c of node.children) walk(c, st)
}
walk(p.head, [])
const top = (m, k) => [...m].sort((a, b) => b[1] - a[1]).slice(0, k).map(([l, b]) => `${(b / 1e6).toFixed(2).padStart(8)} MB  ${l}`).join('\n')
console.log(`total sampled allocation ${(total / 1e6).toFixed(1)} MB\n-- by function\n${top(byFn, 25)}\n-- by own code (innermost 3 frames)\n${top(byOwn, 30)}`)
