// ConfigParser.parseBytes (the agent's path: a one-peer change found by comparing the file's bytes with the last
// ones) against parseConfig over a random walk of edits that are valid, invalid and odd: lines inserted, removed and
// changed anywhere in the text, peers duplicated, overlapping, renamed, comments, anchors, tabs, document markers,
// keys at the wrong indent. After every edit the result, or the error and its issues, must be exactly parseConfig's.
import t from 'tap'
import { ConfigError } from '../../../src/config/errors.js'
import { ConfigParser, commonPrefix, commonSuffix, parseConfig } from '../../../src/config/load.js'

function peerLines(i: number, sub = 0): string[] {
  return [
    `    - id: C=CN, O=fabedge.io, CN=e${i}`, `      name: e${i}`, '      publicAddresses:', `        - 172.20.0.${i}`,
    '      subnets:', `        - 10.100.${i}.${sub}/28`, '      nodeSubnets:', `        - 172.21.0.${i}`, '      type: EdgeNode',
  ]
}

const HEAD = [
  'id: C=CN, O=fabedge.io, CN=conn', 'name: conn', 'publicAddresses:', '    - 172.19.0.1', 'subnets:', '    - 10.96.0.0/16',
  'nodeSubnets:', '    - 172.19.0.1', 'type: Connector', 'peers:',
]

const ODD = [
  '', '# a comment', '    # an indented comment', 'peers:', 'foo: bar', '  - id: x', '    -', '    - ', '\t- a', '---', '...',
  '    - &a', '      name: *a', '  x: y', '      subnets:', '      extra: 1', '    - id: lone', 'mediator:', '  name: m',
  '    - id: C=CN, CN=dup', '      name: e3', '      type: EdgeNode', '        - 10.100.3.0/24', '        - 10.96.1.0/24',
  '      name: conn', '      name: mediator', '      type: Connector', '      publicAddresses: []', '        - fd00::/64',
  '    - {id: f, name: f, type: EdgeNode}', '      subnets: [10.100.9.0/24]', '      name: "e5"', "      'name': e6",
]

type Outcome = { ok: unknown } | { error: string; issues: unknown }

function outcome(f: () => unknown): Outcome {
  try {
    return { ok: f() }
  } catch (err) {
    if (!(err instanceof ConfigError)) throw err
    return { error: err.message, issues: err.errors }
  }
}

for (const seed of [1, 2, 3]) {
  t.test(`random edits (seed ${seed}): parseBytes == parseConfig, for valid and invalid texts`, async (t) => {
    let s = seed
    const rand = (): number => ((s = (s * 1103515245 + 12345) % 2 ** 31) / 2 ** 31)
    const pick = <T>(xs: readonly T[]): T => xs[Math.floor(rand() * xs.length)]!
    let next = 40
    let peers = Array.from({ length: 30 }, (_, i) => peerLines(i))
    let lines = [...HEAD, ...peers.flat(), 'mediator:', '  id: C=CN, CN=m', '  name: mediator', '  publicAddresses:', '    - 172.19.0.9', '']
    let good = lines
    const parser = new ConfigParser()
    let patched = 0
    let invalid = 0
    for (let step = 0; step < 300; step++) {
      const r = rand()
      const inBlock = HEAD.length + Math.floor(rand() * (lines.length - HEAD.length))
      lines = [...lines]
      if (r < 0.2) {
        // A valid peer added, removed or changed, as the operator does.
        peers = [...peers]
        const k = Math.floor(rand() * peers.length)
        const q = rand()
        if (q < 0.4) peers.splice(k, 0, peerLines(next++ % 250))
        else if (q < 0.7 && peers.length > 1) peers.splice(k, 1)
        else peers[k] = peerLines(Number(/e(\d+)$/.exec(peers[k]![1]!)![1]), pick([0, 16, 32]))
        lines = [...HEAD, ...peers.flat(), 'mediator:', '  id: C=CN, CN=m', '  name: mediator', '  publicAddresses:', '    - 172.19.0.9', '']
      } else if (r < 0.55) {
        lines.splice(rand() < 0.9 ? inBlock : Math.floor(rand() * lines.length), 0, pick(ODD))
      } else if (r < 0.7) {
        lines.splice(inBlock, 1)
      } else if (r < 0.85) {
        // A character of a line changed.
        const l = lines[inBlock] ?? ''
        const at = Math.floor(rand() * (l.length + 1))
        lines[inBlock] = l.slice(0, at) + pick(['1', '0', ' ', '-', ':', 'x', '#', '']) + l.slice(at + 1)
      } else if (r < 0.87) {
        // A peer renamed to another one's name (different text, same name).
        const k = lines.findIndex((l, x) => x > inBlock && /^ {6}name: e\d+$/.test(l))
        const other = lines.find((l, x) => x !== k && /^ {6}name: e\d+$/.test(l))
        if (k !== -1 && other) lines[k] = other
      } else if (r < 0.9) {
        // A whole peer duplicated (same name twice).
        const from = HEAD.length + 9 * Math.floor(rand() * 5)
        lines.splice(from, 0, ...lines.slice(from, from + 9))
      } else {
        lines = good
      }
      const text = lines.join('\n')
      const want = outcome(() => parseConfig(text))
      const got = outcome(() => parser.parseBytes(Buffer.from(text)))
      t.same(got, want, `step ${step}`)
      if (parser.last.bytes && 'ok' in got) patched++
      // As the agent does after a pass: the index of the next change's checks built ahead of it.
      if (rand() < 0.3) parser.prepare()
      if ('error' in want) {
        invalid++
        // Mostly back to the last good text, as the operator fixing a mistake; sometimes on from the broken one.
        if (rand() < 0.7) lines = good
      } else {
        good = lines
      }
    }
    t.ok(patched > 30, `the byte-level path was taken (${patched})`)
    t.ok(invalid > 30, `invalid texts were among the edits (${invalid})`)
  })
}

t.test('commonPrefix and commonSuffix', async (t) => {
  const b = (x: string): Buffer => Buffer.from(x)
  const long = 'x'.repeat(1000)
  for (const [a, c, p, sfx] of [
    ['', '', 0, 0], ['abc', 'abc', 3, 0], ['abc', 'abd', 2, 0], ['abc', 'xbc', 0, 2], ['ab', 'abc', 2, 0],
    [`${long}a${long}`, `${long}b${long}`, 1000, 1000], [`${long}a`, `${long}`, 1000, 0], [`a${long}`, long, 0, 1000],
  ] as const) {
    t.equal(commonPrefix(b(a), b(c)), p, `prefix of ${a.length}/${c.length}`)
    t.equal(commonSuffix(b(a), b(c), Math.min(a.length, c.length) - commonPrefix(b(a), b(c))), sfx, `suffix of ${a.length}/${c.length}`)
  }
  t.equal(commonSuffix(b('abcabc'), b('abcabc'), 2), 2, 'bounded by max')
})
