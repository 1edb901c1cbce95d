// Preloaded into the agent for diagnosis (FT_PROBE_NODE_FLAGS="--import .../snapshot.mjs", FT_PROBE_SNAPSHOT=1):
// SIGUSR2 writes a heap snapshot to FT_SAMPLER_OUT (default /tmp). Summarise it with scripts/bench/heap-summary.ts.
import { writeHeapSnapshot } from 'node:v8'
process.on('SIGUSR2', () => {
  const f = writeHeapSnapshot(`${process.env.FT_SAMPLER_OUT ?? '/tmp'}/agent-${process.pid}.heapsnapshot`)
  console.error('heap snapshot written:', f)
})
