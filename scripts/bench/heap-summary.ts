// Summarises a V8 .heapsnapshot the way DevTools' "Summary" view does: shallow bytes and object counts grouped by
// constructor (objects) or by node type (strings, code, arrays, hidden). With a peer count it prints bytes per
// peer. Used on the agent's heap at 1,000 and 10,000 peers (scripts/bench/footprint.ts with FT_FOOTPRINT_HEAPSNAPSHOT)
// to find what the per-peer memory is made of.
// Run: node --import tsx scripts/bench/heap-summary.ts FILE.heapsnapshot [peers] [top=25]
import { readFileSync } from 'node:fs'

interface Snapshot {
  snapshot: { meta: { node_fields: string[]; node_types: [string[], ...unknown[]] } }
  nodes: number[]
  strings: string[]
}

export interface Group { key: string; bytes: number; count: number }

/** Shallow size and count per group: `object` nodes by constructor name, every other node type by its type. */
export function summarise(snap: Snapshot): { groups: Group[]; total: number } {
  const fields = snap.snapshot.meta.node_fields
  const types = snap.snapshot.meta.node_types[0]
  const width = fields.length
  const iType = fields.indexOf('type')
  const iName = fields.indexOf('name')
  const iSize = fields.indexOf('self_size')
  const groups = new Map<string, Group>()
  let total = 0
  for (let i = 0; i < snap.nodes.length; i += width) {
    const type = types[snap.nodes[i + iType]!]!
    const size = snap.nodes[i + iSize]!
    const key = type === 'object' || type === 'closure' ? `${type} ${snap.strings[snap.nodes[i + iName]!]}` : `(${type})`
    const g = groups.get(key) ?? { key, bytes: 0, count: 0 }
    g.bytes += size
    g.count++
    groups.set(key, g)
    total += size
  }
  return { groups: [...groups.values()].sort((a, b) => b.bytes - a.bytes), total }
}

if (process.argv[1] && import.meta.url.endsWith(process.argv[1].replace(/^.*\//, ''))) {
  const [file, peersArg, topArg] = process.argv.slice(2)
  if (!file) throw new Error('usage: heap-summary.ts FILE.heapsnapshot [peers] [top]')
  const peers = Number(peersArg ?? 0)
  const { groups, total } = summarise(JSON.parse(readFileSync(file, 'utf8')) as Snapshot)
  const mib = (b: number): string => (b / 2 ** 20).toFixed(2).padStart(8)
  console.log(`${file}: ${mib(total)} MiB shallow in total${peers ? `, ${(total / peers).toFixed(0)} B per peer` : ''}`)
  for (const g of groups.slice(0, Number(topArg ?? 25))) {
    console.log(`${mib(g.bytes)} MiB ${String(g.count).padStart(9)} objects${peers ? ` ${(g.bytes / peers).toFixed(0).padStart(7)} B/peer` : ''}  ${g.key}`)
  }
}
