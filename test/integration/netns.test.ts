import t from 'tap'
import { Netns, needsRoot, vethPair, withNetns } from '../harness/netns.js'
import { execCapture } from '../harness/exec.js'

t.test('two namespaces joined by a veth can ping each other, and teardown removes them', { skip: needsRoot }, async (t) => {
  let names: string[] = []
  await withNetns(2, async (a, b) => {
    names = [a.name, b.name]
    const [ia, ib] = await vethPair(a, b)
    await a.run(['ip', 'addr', 'add', '10.99.0.1/30', 'dev', ia])
    await b.run(['ip', 'addr', 'add', '10.99.0.2/30', 'dev', ib])
    const r = await a.capture(['ping', '-c', '1', '-W', '2', '10.99.0.2'], { timeoutMs: 5000 })
    t.equal(r.code, 0, 'ping across the veth')
  })
  const list = (await execCapture(['ip', 'netns', 'list'])).stdout
  for (const n of names) t.notOk(list.split('\n').some((l) => l.split(' ')[0] === n), `${n} removed`)
})

t.test('destroy runs registered cleanups even when one throws', { skip: needsRoot }, async (t) => {
  const ns = await Netns.create()
  const ran: string[] = []
  ns.onDestroy(() => { ran.push('first') })
  ns.onDestroy(() => { throw new Error('boom') })
  await ns.destroy()
  t.same(ran, ['first'])
})
