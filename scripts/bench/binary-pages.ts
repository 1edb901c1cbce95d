// Which pages of the node binary a process holds resident, by ELF section and symbol (issue 13: the edge's RSS is
// mostly the node binary's file pages). Reads /proc/<pid>/maps and /proc/<pid>/pagemap (root), maps each resident
// page back to its file offset, then to the binary's section and the symbol covering it (`nm -n -S`, demangled).
// Standalone: node --import tsx scripts/bench/binary-pages.ts PID [PID2]   (PID2: a baseline, e.g. an idle node)
// Pages are counted where they are mapped into the process: the kernel maps a file's cached pages 64 KiB around
// each one touched (fault-around), so one touched page can bring 16.
import { spawnSync } from 'node:child_process'
import { closeSync, openSync, readFileSync, readSync, readlinkSync } from 'node:fs'
import { fileURLToPath } from 'node:url'

const PAGE = 4096

interface Sym { start: number; end: number; name: string }
interface Sec { name: string; addr: number; off: number; size: number }

let cache: { bin: string; syms: Sym[]; secs: Sec[] } | undefined

function load(bin: string): { syms: Sym[]; secs: Sec[] } {
  if (cache?.bin === bin) return cache
  const secs: Sec[] = []
  const out = spawnSync('readelf', ['-S', '-W', bin], { encoding: 'utf8' }).stdout
  // readelf -W puts one section per line: [Nr] Name Type Address Off Size ...
  for (const line of out.split('\n')) {
    const m = /^\s*\[\s*\d+\]\s+(\S+)\s+\S+\s+([0-9a-f]+)\s+([0-9a-f]+)\s+([0-9a-f]+)/.exec(line)
    if (m) secs.push({ name: m[1]!, addr: parseInt(m[2]!, 16), off: parseInt(m[3]!, 16), size: parseInt(m[4]!, 16) })
  }
  const syms: Sym[] = []
  const nm = spawnSync('nm', ['-n', '-S', '-C', bin], { encoding: 'utf8', maxBuffer: 1 << 30 }).stdout
  for (const line of nm.split('\n')) {
    const m = /^([0-9a-f]+) ([0-9a-f]+) \S (.*)$/.exec(line)
    if (!m) continue
    const start = parseInt(m[1]!, 16)
    const size = parseInt(m[2]!, 16)
    if (size > 0) syms.push({ start, end: start + size, name: m[3]! })
  }
  syms.sort((a, b) => a.start - b.start)
  cache = { bin, syms, secs }
  return cache
}

/** Resident pages of the executable's mappings, as file offsets. */
function residentOffsets(pid: number, bin: string): number[] {
  const offs: number[] = []
  const fd = openSync(`/proc/${pid}/pagemap`, 'r')
  try {
    for (const line of readFileSync(`/proc/${pid}/maps`, 'utf8').split('\n')) {
      const m = /^([0-9a-f]+)-([0-9a-f]+) \S+ ([0-9a-f]+) \S+ \S+\s+(.*)$/.exec(line)
      if (!m || m[4] !== bin) continue
      const lo = parseInt(m[1]!, 16)
      const hi = parseInt(m[2]!, 16)
      const fileOff = parseInt(m[3]!, 16)
      const n = (hi - lo) / PAGE
      const buf = Buffer.alloc(n * 8)
      readSync(fd, buf, 0, buf.length, (lo / PAGE) * 8)
      for (let i = 0; i < n; i++) {
        if (buf.readBigUInt64LE(i * 8) & (1n << 63n)) offs.push(fileOff + i * PAGE)
      }
    }
  } finally {
    closeSync(fd)
  }
  return offs
}

/** Coarse name for a symbol: the part that says which subsystem owns the bytes. */
function group(name: string): string {
  if (/icudt\d+_dat/.test(name)) return 'ICU data (icudt*_dat)'
  if (/embedded_blob_code/i.test(name)) return 'V8 embedded builtins code'
  if (/embedded_blob_data/i.test(name)) return 'V8 embedded builtins data'
  const ns = /^(?:[\w:<>]+?\s)?((?:v8::internal::compiler|v8::internal::maglev|v8::internal::wasm|v8::internal::Heap|v8::internal|v8|node|uv|icu_\d+|icu|ssl|ossl|EVP|OPENSSL|nghttp2|llhttp|ares|cares|simdutf|ada|brotli|zlib|deflate|inflate)[\w]*)/.exec(name)
  if (ns) {
    const n = ns[1]!
    if (n.startsWith('v8::internal::compiler')) return 'v8 compiler (TurboFan)'
    if (n.startsWith('v8::internal::maglev')) return 'v8 maglev'
    if (n.startsWith('v8::internal::wasm')) return 'v8 wasm'
    if (n.startsWith('icu')) return 'ICU code'
    if (/^(ssl|ossl|EVP|OPENSSL)/i.test(n)) return 'OpenSSL'
    if (n.startsWith('v8')) return 'v8 other'
    return n.split('::')[0]!
  }
  return name.length > 60 ? `${name.slice(0, 60)}...` : name
}

export interface BinaryPages { total: number; bySection: Map<string, number>; byGroup: Map<string, number>; bySymbol: Map<string, number> }

/** Resident pages (KiB) of the node binary in `pid`, by section, group and symbol. */
export function binaryPages(pid: number): BinaryPages {
  const bin = readlinkSync(`/proc/${pid}/exe`)
  const { syms, secs } = load(bin)
  const r: BinaryPages = { total: 0, bySection: new Map(), byGroup: new Map(), bySymbol: new Map() }
  const add = (m: Map<string, number>, k: string, v: number): void => { m.set(k, (m.get(k) ?? 0) + v) }
  for (const off of residentOffsets(pid, bin)) {
    r.total += 4
    const sec = secs.find((s) => s.size > 0 && off + PAGE > s.off && off < s.off + s.size && s.name !== '.tbss')
    add(r.bySection, sec?.name ?? '(headers/padding)', 4)
    if (!sec) continue
    const va = sec.addr + (off - sec.off)
    // Every symbol overlapping the page shares it; charge the page to the symbol at its middle, else the first.
    const mid = va + PAGE / 2
    let lo = 0
    let hi = syms.length - 1
    while (lo < hi) {
      const m = (lo + hi + 1) >> 1
      if (syms[m]!.start <= mid) lo = m
      else hi = m - 1
    }
    const s = syms[lo]
    // .rodata without a symbol is mostly Node's built-in modules: their JavaScript sources and code cache.
    const name = s && s.start <= mid && mid < s.end ? s.name : `(${sec.name}, no symbol${sec.name === '.rodata' ? ': mostly built-in modules\' sources and code cache' : ''})`
    add(r.bySymbol, name, 4)
    add(r.byGroup, s && s.start <= mid && mid < s.end ? group(name) : name, 4)
  }
  return r
}

const mib = (k: number): string => (k / 1024).toFixed(2)

export function formatDiff(a: BinaryPages, b?: BinaryPages, top = 25): string {
  const lines = [`node binary resident: ${mib(a.total)} MiB${b ? ` (baseline ${mib(b.total)} MiB)` : ''}`]
  for (const [title, key] of [['by section', 'bySection'], ['by group', 'byGroup'], ['by symbol', 'bySymbol']] as const) {
    lines.push(`  ${title}${b ? ' (extra over the baseline)' : ''}:`)
    const rows = [...a[key]].map(([k, v]) => [k, v - (b?.[key].get(k) ?? 0), v] as const).sort((x, y) => y[1] - x[1]).slice(0, top)
    for (const [k, d, v] of rows) lines.push(`    ${mib(d).padStart(7)} MiB${b ? ` of ${mib(v).padStart(6)}` : ''}  ${k}`)
  }
  return lines.join('\n')
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  const [pid, base] = process.argv.slice(2).map(Number)
  if (!pid) throw new Error('usage: binary-pages.ts PID [BASELINE_PID]')
  console.log(formatDiff(binaryPages(pid), base ? binaryPages(base) : undefined))
}
