import t from 'tap'
import { decodeAttrs, decodeError, decodeMsgs, encodeMsg, NLMSG_ERROR, type NlMsg } from '../../../src/netlink/codec.js'
import { NetlinkError } from '../../../src/netlink/errors.js'
import { decodeRoute, RTM_NEWROUTE } from '../../../src/netlink/route.js'
import { decodeRule, RTM_NEWRULE } from '../../../src/netlink/rule.js'
import { decodeLink, RTM_NEWLINK } from '../../../src/netlink/link.js'
import { decodeAddr, RTM_NEWADDR } from '../../../src/netlink/addr.js'
import { decodeIpsetList } from '../../../src/netlink/ipset.js'
import { decodeEvent } from '../../../src/netlink/monitor.js'
import { fixture } from './fixtures.js'

// Deterministic PRNG (mulberry32) so a failure reproduces.
function rng(seed: number): () => number {
  return () => {
    seed = (seed + 0x6d2b79f5) | 0
    let x = Math.imul(seed ^ (seed >>> 15), 1 | seed)
    x = (x + Math.imul(x ^ (x >>> 7), 61 | x)) ^ x
    return ((x ^ (x >>> 14)) >>> 0) / 4294967296
  }
}

const payloadDecoders: Array<[string, number, (m: NlMsg) => unknown]> = [
  ['route', RTM_NEWROUTE, decodeRoute],
  ['rule', RTM_NEWRULE, decodeRule],
  ['link', RTM_NEWLINK, decodeLink],
  ['addr', RTM_NEWADDR, decodeAddr],
  ['error', NLMSG_ERROR, decodeError],
  ['event', RTM_NEWROUTE, decodeEvent],
  ['ipset', (6 << 8) | 7, (m) => decodeIpsetList([m])],
]

/** Runs fn; anything thrown must be a NetlinkError of kind decode. */
function mustBeTyped(fn: () => unknown): string | undefined {
  try {
    fn()
    return undefined
  } catch (e) {
    if (e instanceof NetlinkError && e.kind === 'decode') return undefined
    return String((e as Error)?.stack ?? e)
  }
}

t.test('random, truncated and bit-flipped input gives a typed error or a value, fast', async (t) => {
  const rand = rng(0x5eed)
  const seeds = ['route-dump-table220.hex', 'rule-dump.hex', 'link-dump.hex', 'addr-dump.hex', 'ipset-list-v4.hex', 'ipset-list-v6.hex', 'error-extack.hex', 'monitor-route-del.hex']
    .flatMap(fixture)
  const inputs: Buffer[] = []
  for (let i = 0; i < 400; i++) {
    const len = Math.floor(rand() * 200)
    inputs.push(Buffer.from(Array.from({ length: len }, () => Math.floor(rand() * 256))))
  }
  for (const s of seeds) {
    for (let cut = 0; cut < s.length; cut += Math.max(1, Math.floor(s.length / 40))) inputs.push(s.subarray(0, cut))
    for (let i = 0; i < 60; i++) {
      const b = Buffer.from(s)
      for (let f = 0; f < 3; f++) b[Math.floor(rand() * b.length)] = Math.floor(rand() * 256)
      inputs.push(b)
    }
  }
  const failures: string[] = []
  const t0 = performance.now()
  for (const input of inputs) {
    const f = mustBeTyped(() => decodeMsgs(input))
    if (f) failures.push(`decodeMsgs: ${f}`)
    const a = mustBeTyped(() => decodeAttrs(input))
    if (a) failures.push(`decodeAttrs: ${a}`)
    // Every decoder also sees the bytes as a well-framed message of its own type, to reach the payload parsers.
    for (const [name, type, dec] of payloadDecoders) {
      const framed = decodeMsgs(encodeMsg(type, 0, 1, input))[0]!
      const r = mustBeTyped(() => dec(framed))
      if (r) failures.push(`${name}: ${r}`)
    }
  }
  const ms = performance.now() - t0
  t.same(failures.slice(0, 5), [], `${inputs.length} inputs, only typed errors`)
  t.ok(ms < 5000, `bounded time: ${ms.toFixed(0)} ms`)
})
