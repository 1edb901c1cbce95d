// Which route and rule notifications start a pass (issue 12 defect 6: a default-route change is a trigger), and
// that the gateway trigger is a shallow reason.
import t from 'tap'
import { routeTrigger, ruleTrigger } from '../../../src/daemon/netlink-triggers.js'
import type { Route, Rule } from '../../../src/netlink/index.js'
import { passContext } from '../../../src/reconcile/subsystem.js'

const r = (over: Partial<Route>): Route => ({ family: 4, dst: '10.1.0.0/16', table: 220, protocol: 220, scope: 0, type: 1, ...over })

t.test('table 220: our routes new or deleted, any route deleted', async (t) => {
  t.equal(routeTrigger('new', r({})), 'netlink:route-new')
  t.equal(routeTrigger('del', r({})), 'netlink:route-del')
  t.equal(routeTrigger('del', r({ protocol: 4 })), 'netlink:route-del', 'a foreign route leaving may free a slot we want')
  t.equal(routeTrigger('new', r({ protocol: 4 })), undefined, 'a foreign route added: not ours to act on')
})

t.test('defect 6: a default route of the main table, any protocol, new or deleted, both families', async (t) => {
  for (const action of ['new', 'del'] as const) {
    t.equal(routeTrigger(action, r({ table: 254, dst: '0.0.0.0/0', protocol: 16, via: '192.0.2.1' })), 'netlink:gateway', `v4 dhcp ${action}`)
    t.equal(routeTrigger(action, r({ table: 254, dst: '0.0.0.0/0', protocol: 3 })), 'netlink:gateway', `v4 boot ${action}`)
    t.equal(routeTrigger(action, r({ family: 6, table: 254, dst: '::/0', protocol: 9 })), 'netlink:gateway', `v6 ra ${action}`)
  }
  t.equal(routeTrigger('new', r({ table: 254, dst: '10.0.0.0/8', protocol: 3 })), undefined, 'another main-table route: no')
  t.equal(routeTrigger('new', r({ table: 100, dst: '0.0.0.0/0', protocol: 3 })), undefined, 'a default route of another table: no')
})

t.test('rules: only those of table 220', async (t) => {
  const rule = (table: number): Rule => ({ family: 4, priority: 220, table, action: 1 })
  t.equal(ruleTrigger('new', rule(220)), 'netlink:rule-new')
  t.equal(ruleTrigger('del', rule(220)), 'netlink:rule-del')
  t.equal(ruleTrigger('del', rule(254)), undefined)
})

t.test('every netlink trigger is a shallow pass; an overrun is deep', async (t) => {
  for (const reason of ['netlink:gateway', 'netlink:route-new', 'netlink:route-del', 'netlink:rule-new', 'netlink:rule-del']) {
    t.equal(passContext([reason]).deep, false, reason)
  }
  t.equal(passContext(['netlink:resync']).deep, true)
  t.equal(passContext(['netlink:gateway', 'resync']).deep, true)
})
