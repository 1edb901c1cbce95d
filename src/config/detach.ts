// Parsed YAML scalars hold on to the whole document. In V8 a substring of 13 or more characters is a slice that
// shares its parent's storage, and js-yaml takes every scalar as a substring of the file text: one peer's id keeps
// the entire tunnels.yaml alive for as long as the config is in force (2.2 MB at 10,000 peers, measured with
// scripts/bench/footprint.ts and FT_FOOTPRINT_HEAPSNAPSHOT). This copies each string once into its own storage,
// and equal strings into one copy ("EdgeNode" 10,000 times over is one string).

/**
 * Replaces every string in a parsed YAML tree (plain objects and arrays, in place) with a detached copy, and every
 * array with a copy of exactly its length (js-yaml grows them element by element: a one-element list carried 130 B
 * instead of 56 B, twice per peer). Use the returned root.
 */
export function detachStrings<T>(root: T): T {
  const copies = new Map<string, string>()
  const detach = (s: string): string => {
    let c = copies.get(s)
    if (c === undefined) {
      // Decoding bytes always builds a new string; the result is what the map keeps, never the slice.
      c = Buffer.from(s, 'utf8').toString('utf8')
      copies.set(c, c)
    }
    return c
  }
  const walk = (v: unknown): unknown => {
    if (typeof v === 'string') return detach(v)
    if (Array.isArray(v)) {
      const copy = new Array<unknown>(v.length)
      for (let i = 0; i < v.length; i++) copy[i] = walk(v[i])
      return copy
    } else if (v !== null && typeof v === 'object') {
      const o = v as Record<string, unknown>
      for (const k of Object.keys(o)) o[k] = walk(o[k])
    }
    return v
  }
  return walk(root) as T
}
