// V8 heap settings the executable applies to itself, so the plain `fabtunnel run` keeps an edge-sized footprint
// without NODE_OPTIONS (issue 13; figures in docs/footprint.md).
//
// The young generation stays at its initial size (two 1 MiB semi-spaces) instead of growing to V8's 2 x 16 MiB
// under the allocation bursts of a pass: RSS with 1,000 peers 72 MiB instead of 85 MiB, with no measurable CPU
// cost. `--max-semi-space-size` only counts when the heap is set up, before any JavaScript runs, so it would need
// NODE_OPTIONS or a re-exec; the growth factor is read each time the new space would grow, so setting it from
// here works. A user who sizes the young generation with node flags keeps their setting.
import { setFlagsFromString } from 'node:v8'

export const YOUNG_GENERATION_FLAG = '--semi-space-growth-factor=1'

/** Applies the young-generation setting unless node's own flags already size it; returns whether it did. */
export function tuneHeap(nodeOptions = process.env.NODE_OPTIONS ?? '', execArgv: readonly string[] = process.execArgv, set: (flag: string) => void = setFlagsFromString): boolean {
  if (/semi[-_]space/.test(`${nodeOptions} ${execArgv.join(' ')}`)) return false
  set(YOUNG_GENERATION_FLAG)
  return true
}
