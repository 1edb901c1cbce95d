// The daemon's monotonic clock, in milliseconds (libuv's hrtime). Not the `performance` global: its first use loads
// Node's perf_hooks modules (~0.85 MiB of RSS on an edge, docs/footprint.md), which nothing else the daemon does
// needs (test/unit/iso-time.test.ts's source scan keeps `performance` out of src/).
export function monotonicMs(): number {
  return Number(process.hrtime.bigint()) / 1e6
}
