// The address ranges of a config's endpoints, kept sorted and disjoint, so a one-peer change is checked for overlaps
// against the others in O(log n) instead of comparing it with every other endpoint (issue 13: 10,000 peers).
import { cidrRange, type Cidr } from './cidr.js'

type Bound = number | string
interface Span {
  s: Bound
  e: Bound
  owner: object
}

/**
 * An owner's CIDRs as ranges without the ones nested in another of its own (prefixes are nested or disjoint, so
 * what is left is disjoint), per family, sorted by start.
 */
function maximal(cidrs: readonly Cidr[], owner: object): [Span[], Span[]] {
  const out: [Span[], Span[]] = [[], []]
  for (const family of [4, 6] as const) {
    const xs = cidrs.filter((c) => c.family === family).map((c) => {
      const [s, e] = cidrRange(c)
      return { s, e, owner }
    })
    xs.sort((a, b) => (a.s < b.s ? -1 : a.s > b.s ? 1 : a.e > b.e ? -1 : a.e < b.e ? 1 : 0))
    const kept = out[family === 4 ? 0 : 1]
    for (const x of xs) {
      const last = kept[kept.length - 1]
      if (last && x.e <= last.e) continue
      kept.push(x)
    }
  }
  return out
}

/** Index of the last span whose start is at most `at`, or -1. */
function lastStartingBy(list: readonly Span[], at: Bound): number {
  let lo = 0
  let hi = list.length
  while (lo < hi) {
    const mid = (lo + hi) >>> 1
    if (list[mid]!.s <= at) lo = mid + 1
    else hi = mid
  }
  return lo - 1
}

/**
 * Disjoint address ranges, each tagged with the endpoint it belongs to. An endpoint's own nested CIDRs are kept as
 * the one containing them (an overlap with the inner one is an overlap with the outer one).
 */
export class SpanIndex {
  private readonly lists: [Span[], Span[]] = [[], []]

  /** The index of these endpoints, or null when two of them overlap (then it cannot answer in O(log n)). */
  static build(owners: Iterable<{ owner: object; cidrs: readonly Cidr[] }>): SpanIndex | null {
    const ix = new SpanIndex()
    for (const { owner, cidrs } of owners) {
      const [v4, v6] = maximal(cidrs, owner)
      ix.lists[0].push(...v4)
      ix.lists[1].push(...v6)
    }
    for (const list of ix.lists) {
      list.sort((a, b) => (a.s < b.s ? -1 : a.s > b.s ? 1 : 0))
      for (let i = 1; i < list.length; i++) if (list[i]!.s <= list[i - 1]!.e) return null
    }
    return ix
  }

  /** Whether any of `cidrs` overlaps a range in the index (an endpoint already added is compared with itself too). */
  overlaps(cidrs: readonly Cidr[]): boolean {
    for (const c of cidrs) {
      const [s, e] = cidrRange(c)
      const list = this.lists[c.family === 4 ? 0 : 1]
      // The ranges are disjoint, so among those starting by `e` the last one also ends last.
      const i = lastStartingBy(list, e)
      if (i >= 0 && list[i]!.e >= s) return true
    }
    return false
  }

  /** Adds an endpoint's ranges; false (and nothing added) when one overlaps a range already there. */
  add(owner: object, cidrs: readonly Cidr[]): boolean {
    if (this.overlaps(cidrs)) return false
    const spans = maximal(cidrs, owner)
    for (let f = 0; f < 2; f++) {
      const list = this.lists[f]!
      for (const x of spans[f]!) list.splice(lastStartingBy(list, x.s) + 1, 0, x)
    }
    return true
  }

  /** Removes an endpoint's ranges; false when one of them is not there (the index no longer matches the config). */
  remove(owner: object, cidrs: readonly Cidr[]): boolean {
    const spans = maximal(cidrs, owner)
    for (let f = 0; f < 2; f++) {
      const list = this.lists[f]!
      for (const x of spans[f]!) {
        const i = lastStartingBy(list, x.s)
        if (i < 0 || list[i]!.s !== x.s || list[i]!.owner !== owner) return false
        list.splice(i, 1)
      }
    }
    return true
  }

  get size(): number {
    return this.lists[0].length + this.lists[1].length
  }
}
