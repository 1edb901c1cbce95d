import t from 'tap'
import { FrameReader, ViciError, decodeMessage, decodePacket, encodeFrame, type ViciInput } from '../../../src/vici/index.js'

// Deterministic PRNG (mulberry32) so a failure reproduces from the printed seed.
function rng(seed: number): () => number {
  let a = seed >>> 0
  return () => {
    a = (a + 0x6d2b79f5) >>> 0
    let x = Math.imul(a ^ (a >>> 15), 1 | a)
    x = (x + Math.imul(x ^ (x >>> 7), 61 | x)) ^ x
    return ((x ^ (x >>> 14)) >>> 0) / 4294967296
  }
}

const seed = Number(process.env.VICI_FUZZ_SEED ?? Date.now() % 1_000_000)
const rand = rng(seed)
const int = (n: number): number => Math.floor(rand() * n)

function randomMessage(depth: number): ViciInput {
  const m: Record<string, ViciInput[string]> = {}
  for (let i = int(5); i > 0; i--) {
    const key = `k${int(1000)}`
    const kind = int(depth > 3 ? 2 : 3)
    if (kind === 0) m[key] = Buffer.from(Array.from({ length: int(40) }, () => int(256)))
    else if (kind === 1) m[key] = Array.from({ length: int(4) }, () => `v${int(99)}`)
    else m[key] = randomMessage(depth + 1)
  }
  return m
}

/**
 * Feeds bytes to every decoding entry point; anything but success or a ViciError fails the test.
 * Returns whether decodePacket rejected them.
 */
function expectTyped(bytes: Buffer): boolean {
  let packetRejected = false
  for (const [i, fn] of [
    () => decodePacket(bytes),
    () => decodeMessage(bytes),
    () => decodeMessage(bytes, { buffers: true }),
    () => new FrameReader(64 * 1024).push(bytes).forEach((f) => decodePacket(f)),
  ].entries()) {
    try {
      fn()
    } catch (e) {
      if (!(e instanceof ViciError) || !['malformed', 'frame-too-large'].includes(e.code)) throw e
      if (i === 0) packetRejected = true
    }
  }
  return packetRejected
}

t.test(`fuzz (seed ${seed}): random, mutated and truncated frames give typed errors only`, async (t) => {
  const start = performance.now()
  let errors = 0
  let cases = 0
  let roundTripFailures = 0
  for (let i = 0; i < 3000; i++) {
    const valid = encodeFrame({ type: int(2) ? 'EVENT' : 'CMD_REQUEST', name: `n${i}`, message: randomMessage(0) })
    const body = valid.subarray(4)
    const back = decodePacket(body, { buffers: true })
    if (!encodeFrame(back).equals(valid)) roundTripFailures++
    const inputs = [
      Buffer.from(Array.from({ length: int(64) }, () => int(256))), // pure noise
      body.subarray(0, int(body.length)), // truncated packet
      valid.subarray(0, int(valid.length)), // truncated frame
      Buffer.from(body.subarray(1)), // message part, possibly cut inside the name
    ]
    const mutated = Buffer.from(body)
    for (let k = 1 + int(3); k > 0; k--) mutated[int(mutated.length)] = int(256)
    inputs.push(mutated)
    for (const b of inputs) {
      cases++
      if (expectTyped(b)) errors++
    }
  }
  const ms = performance.now() - start
  t.equal(roundTripFailures, 0, 'every valid random frame decodes and re-encodes byte-identically')
  t.ok(errors > cases / 4, `most broken inputs are rejected (${errors}/${cases})`)
  t.ok(ms < 20_000, `bounded time: ${Math.round(ms)} ms for ${cases} inputs`)
})

t.test('a huge declared length never allocates: it is rejected before the body arrives', async (t) => {
  const r = new FrameReader()
  t.throws(() => r.push(Buffer.from([0xff, 0xff, 0xff, 0xff, 0])), { code: 'frame-too-large' })
})
