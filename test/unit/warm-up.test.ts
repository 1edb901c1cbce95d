// The code cache's build-time warm-up (src/warm-up.ts) runs the pure parts of an edge's first pass and nothing else.
import t from 'tap'
import { warmUp } from '../../src/warm-up.js'

t.test('the warm-up plans both iptables families and encodes and decodes the edge\'s connection', async (t) => {
  t.equal(await warmUp(), 4, 'two iptables plans that write (a fresh node), a tunnels plan that loads, one load-conn request read back')
  t.equal(await warmUp(), 4, 'the same again: it keeps no state')
})
