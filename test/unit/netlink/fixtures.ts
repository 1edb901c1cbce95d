// Loads the captured kernel replies in test/fixtures/netlink (captured by scripts/netlink-capture-fixtures.ts): one datagram per hex line.
import { readFileSync } from 'node:fs'

export function fixture(name: string): Buffer[] {
  const text = readFileSync(new URL(`../../fixtures/netlink/${name}`, import.meta.url), 'utf8')
  return text.split('\n').filter((l) => l && !l.startsWith('#')).map((l) => Buffer.from(l, 'hex'))
}

/** Hex from annotated parts: [hex, why] pairs, spaces ignored. */
export function hex(...parts: Array<[string, string]>): string {
  return parts.map(([h]) => h.replace(/\s+/g, '')).join('')
}
