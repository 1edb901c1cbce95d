import t from 'tap'
import { setFlagsFromString } from 'node:v8'
import { runInNewContext } from 'node:vm'
import { detachStrings } from '../../../src/config/detach.js'

t.test('every string is replaced by an equal one; equal strings share one copy; other values stay', async (t) => {
  const tree = { id: 'C=CN, O=fabedge.io, CN=edge1', port: 500, ok: true, none: null, peers: [{ type: 'EdgeNode', subnets: ['10.1.0.0/24'] }, { type: 'EdgeNode', subnets: [] }] }
  const expected = structuredClone(tree)
  const out = detachStrings(tree)
  t.equal(out, tree, 'in place')
  t.same(out, expected)
  t.equal(detachStrings('plain'), 'plain')
  t.equal(detachStrings(null), null)
})

// The point of it, on V8's real heap: slices of a large text keep the text alive until detached.
t.test('detached slices no longer keep their parent text alive (and undetached ones do)', async (t) => {
  setFlagsFromString('--expose-gc')
  const gc = runInNewContext('gc') as () => void
  const MiB = 2 ** 20
  const heldAfterDropping = (detach: boolean): number => {
    // A flat 16 MiB text and 1,000 slices of it, as js-yaml's scalars are slices of the document.
    let text: string | null = Buffer.alloc(16 * MiB, 'peer-0123456789 ').toString('latin1')
    let slices: string[] = []
    for (let i = 0; i < 1000; i++) slices.push(text.slice(i * 16, i * 16 + 15 + (i % 7)))
    if (detach) slices = detachStrings(slices)
    // A text this large is an external string (Node keeps its bytes off the V8 heap): count both.
    const held = (): number => { const m = process.memoryUsage(); return m.heapUsed + m.external }
    gc()
    const before = held()
    text = null
    gc()
    gc()
    t.equal(slices.length, 1000)
    return before - held()
  }
  const freedKept = heldAfterDropping(false)
  const freedDetached = heldAfterDropping(true)
  t.ok(freedKept < 4 * MiB, `undetached: the text stays (${(freedKept / MiB).toFixed(1)} MiB freed)`)
  t.ok(freedDetached > 12 * MiB, `detached: the text is freed (${(freedDetached / MiB).toFixed(1)} MiB)`)
})
