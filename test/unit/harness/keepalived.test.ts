// keepalived.conf rendering for the HA harness (pure): the shape the e2e relies on (VRRPv3, unicast peers, one sync
// group, nopreempt, the agent check with weight 0) and validation of every value before it reaches the file.
import t from 'tap'
import { renderKeepalivedConf, type KeepalivedSpec } from '../../harness/keepalived.js'
import { checkScript } from '../../harness/ha.js'

const spec = (): KeepalivedSpec => ({
  routerName: 'beijing_connector-a',
  priority: 101,
  advertInt: 0.5,
  instances: [
    { name: 'public', interface: 'vu1', routerId: 51, src: '10.77.1.201', peers: ['10.77.1.202'], vip: '10.77.1.1/16' },
    { name: 'internal', interface: 'vl1', routerId: 52, src: '10.79.1.201', peers: ['10.79.1.202'], vip: '10.79.1.1/24' },
  ],
  check: { script: '/tmp/x/check-agent.sh', interval: 0.5, fall: 2, rise: 1 },
})

t.test('renders both instances in one sync group, tracking the agent check', async (t) => {
  const conf = renderKeepalivedConf(spec())
  t.match(conf, /global_defs \{\n {4}router_id beijing_connector-a\n {4}vrrp_version 3\n/)
  t.match(conf, /vrrp_script agent_check \{\n {4}script "\/tmp\/x\/check-agent.sh"\n {4}interval 0.5\n {4}timeout 2\n {4}fall 2\n {4}rise 1\n\}/)
  t.notMatch(conf, /weight/, 'weight 0 (the default): a failing check puts the node in FAULT')
  t.match(conf, /vrrp_sync_group connector \{\n {4}group \{\n {8}public\n {8}internal\n {4}\}\n\}/)
  t.equal(conf.match(/nopreempt/g)?.length, 2)
  t.match(conf, /vrrp_instance public \{[^}]*interface vu1\n {4}virtual_router_id 51\n {4}priority 101\n {4}advert_int 0.5\n {4}unicast_src_ip 10.77.1.201\n {4}unicast_peer \{\n {8}10.77.1.202\n {4}\}\n {4}virtual_ipaddress \{\n {8}10.77.1.1\/16 dev vu1\n/)
  t.match(conf, /vrrp_instance internal \{[\s\S]*10.79.1.1\/24 dev vl1[\s\S]*track_script \{\n {8}agent_check\n/)
})

t.test('refuses values that could break or inject into the file', async (t) => {
  const bad: Array<[string, (s: KeepalivedSpec) => void]> = [
    ['router name', (s) => (s.routerName = 'a b')],
    ['priority', (s) => (s.priority = 255)],
    ['advert', (s) => (s.advertInt = 0)],
    ['script path', (s) => (s.check.script = '/tmp/x"; reboot')],
    ['interval', (s) => (s.check.interval = 0)],
    ['instances', (s) => (s.instances = [])],
    ['interface', (s) => (s.instances[0]!.interface = 'eth0\n}')],
    ['router id', (s) => (s.instances[0]!.routerId = 256)],
    ['vip', (s) => (s.instances[0]!.vip = '10.77.1.1')],
    ['vip address', (s) => (s.instances[0]!.vip = '10.77.1.300/16')],
    ['peer', (s) => (s.instances[0]!.peers = ['peer'])],
    ['src', (s) => (s.instances[0]!.src = '::1')],
  ]
  for (const [what, mutate] of bad) {
    const s = spec()
    mutate(s)
    t.throws(() => renderKeepalivedConf(s), what)
  }
})

t.test('the harness runs the check script deploy/keepalived ships: /healthz, not /is-leader', async (t) => {
  t.match(checkScript(), /127\.0\.0\.1:30306\/healthz/)
  t.notMatch(checkScript(), /is-leader"/)
})
