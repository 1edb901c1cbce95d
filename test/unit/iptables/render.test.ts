import t from 'tap'
import { renderRuleset } from '../../../src/iptables/render.js'
import { IptablesError } from '../../../src/iptables/errors.js'

t.test('connector, IPv4: whole payload', async (t) => {
  t.equal(
    renderRuleset({ role: 'connector', family: 4, localPodCidrs: [] }),
    `*filter
:FABEDGE-INPUT - [0:0]
:FABEDGE-FORWARD - [0:0]
-A FABEDGE-INPUT -p udp -m udp --dport 500 -j ACCEPT
-A FABEDGE-INPUT -p udp -m udp --dport 4500 -j ACCEPT
-A FABEDGE-INPUT -p esp -j ACCEPT
-A FABEDGE-INPUT -p ah -j ACCEPT
-A FABEDGE-FORWARD -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
-A FABEDGE-FORWARD -m set --match-set FABEDGE-LOCAL-POD-CIDR src -j ACCEPT
-A FABEDGE-FORWARD -m set --match-set FABEDGE-LOCAL-POD-CIDR dst -j ACCEPT
-A FABEDGE-FORWARD -m set --match-set FABEDGE-LOCAL-NODE-CIDR src -j ACCEPT
-A FABEDGE-FORWARD -m set --match-set FABEDGE-LOCAL-NODE-CIDR dst -j ACCEPT
COMMIT
*nat
:FABEDGE-POSTROUTING - [0:0]
-A FABEDGE-POSTROUTING -m set --match-set FABEDGE-LOCAL-POD-CIDR src -m set --match-set FABEDGE-REMOTE-POD-CIDR dst -j ACCEPT
-A FABEDGE-POSTROUTING -m set --match-set FABEDGE-REMOTE-POD-CIDR src -m set --match-set FABEDGE-LOCAL-POD-CIDR dst -j ACCEPT
-A FABEDGE-POSTROUTING -m set --match-set FABEDGE-LOCAL-POD-CIDR src -m set --match-set FABEDGE-REMOTE-NODE-CIDR dst -j ACCEPT
-A FABEDGE-POSTROUTING -m set --match-set FABEDGE-REMOTE-POD-CIDR src -m set --match-set FABEDGE-LOCAL-NODE-CIDR dst -j MASQUERADE
-A FABEDGE-POSTROUTING -m set --match-set FABEDGE-REMOTE-NODE-CIDR src -m set --match-set FABEDGE-LOCAL-POD-CIDR dst -j MASQUERADE
COMMIT
`,
  )
})

t.test('connector, IPv6: the 6 sets, and AH as an extension match (ip6tables never matches -p ah)', async (t) => {
  t.equal(
    renderRuleset({ role: 'connector', family: 6, localPodCidrs: ['fd00::/64'] }),
    `*filter
:FABEDGE-INPUT - [0:0]
:FABEDGE-FORWARD - [0:0]
-A FABEDGE-INPUT -p udp -m udp --dport 500 -j ACCEPT
-A FABEDGE-INPUT -p udp -m udp --dport 4500 -j ACCEPT
-A FABEDGE-INPUT -p esp -j ACCEPT
-A FABEDGE-INPUT -m ah -j ACCEPT
-A FABEDGE-FORWARD -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
-A FABEDGE-FORWARD -m set --match-set FABEDGE-LOCAL-POD-CIDR6 src -j ACCEPT
-A FABEDGE-FORWARD -m set --match-set FABEDGE-LOCAL-POD-CIDR6 dst -j ACCEPT
-A FABEDGE-FORWARD -m set --match-set FABEDGE-LOCAL-NODE-CIDR6 src -j ACCEPT
-A FABEDGE-FORWARD -m set --match-set FABEDGE-LOCAL-NODE-CIDR6 dst -j ACCEPT
COMMIT
*nat
:FABEDGE-POSTROUTING - [0:0]
-A FABEDGE-POSTROUTING -m set --match-set FABEDGE-LOCAL-POD-CIDR6 src -m set --match-set FABEDGE-REMOTE-POD-CIDR6 dst -j ACCEPT
-A FABEDGE-POSTROUTING -m set --match-set FABEDGE-REMOTE-POD-CIDR6 src -m set --match-set FABEDGE-LOCAL-POD-CIDR6 dst -j ACCEPT
-A FABEDGE-POSTROUTING -m set --match-set FABEDGE-LOCAL-POD-CIDR6 src -m set --match-set FABEDGE-REMOTE-NODE-CIDR6 dst -j ACCEPT
-A FABEDGE-POSTROUTING -m set --match-set FABEDGE-REMOTE-POD-CIDR6 src -m set --match-set FABEDGE-LOCAL-NODE-CIDR6 dst -j MASQUERADE
-A FABEDGE-POSTROUTING -m set --match-set FABEDGE-REMOTE-NODE-CIDR6 src -m set --match-set FABEDGE-LOCAL-POD-CIDR6 dst -j MASQUERADE
COMMIT
`,
  )
})

t.test('edge, IPv4, two pod CIDRs: FORWARD accepts and POSTROUTING exempts/masquerades per CIDR', async (t) => {
  t.equal(
    renderRuleset({ role: 'edge', family: 4, localPodCidrs: ['10.234.1.0/24', '10.234.9.0/24'] }),
    `*filter
:FABEDGE-INPUT - [0:0]
:FABEDGE-FORWARD - [0:0]
-A FABEDGE-INPUT -p udp -m udp --dport 500 -j ACCEPT
-A FABEDGE-INPUT -p udp -m udp --dport 4500 -j ACCEPT
-A FABEDGE-INPUT -p esp -j ACCEPT
-A FABEDGE-INPUT -p ah -j ACCEPT
-A FABEDGE-FORWARD -s 10.234.1.0/24 -j ACCEPT
-A FABEDGE-FORWARD -d 10.234.1.0/24 -j ACCEPT
-A FABEDGE-FORWARD -s 10.234.9.0/24 -j ACCEPT
-A FABEDGE-FORWARD -d 10.234.9.0/24 -j ACCEPT
COMMIT
*nat
:FABEDGE-POSTROUTING - [0:0]
-A FABEDGE-POSTROUTING -s 10.234.1.0/24 -m set --match-set FABEDGE-REMOTE-CIDR dst -j RETURN
-A FABEDGE-POSTROUTING -s 10.234.1.0/24 -d 10.234.1.0/24 -j RETURN
-A FABEDGE-POSTROUTING -s 10.234.1.0/24 -j MASQUERADE
-A FABEDGE-POSTROUTING -s 10.234.9.0/24 -m set --match-set FABEDGE-REMOTE-CIDR dst -j RETURN
-A FABEDGE-POSTROUTING -s 10.234.9.0/24 -d 10.234.9.0/24 -j RETURN
-A FABEDGE-POSTROUTING -s 10.234.9.0/24 -j MASQUERADE
COMMIT
`,
  )
})

t.test('edge, IPv6, two pod CIDRs', async (t) => {
  t.equal(
    renderRuleset({ role: 'edge', family: 6, localPodCidrs: ['fd00:234:1::/64', 'fd00:234:9::/64'] }),
    `*filter
:FABEDGE-INPUT - [0:0]
:FABEDGE-FORWARD - [0:0]
-A FABEDGE-INPUT -p udp -m udp --dport 500 -j ACCEPT
-A FABEDGE-INPUT -p udp -m udp --dport 4500 -j ACCEPT
-A FABEDGE-INPUT -p esp -j ACCEPT
-A FABEDGE-INPUT -m ah -j ACCEPT
-A FABEDGE-FORWARD -s fd00:234:1::/64 -j ACCEPT
-A FABEDGE-FORWARD -d fd00:234:1::/64 -j ACCEPT
-A FABEDGE-FORWARD -s fd00:234:9::/64 -j ACCEPT
-A FABEDGE-FORWARD -d fd00:234:9::/64 -j ACCEPT
COMMIT
*nat
:FABEDGE-POSTROUTING - [0:0]
-A FABEDGE-POSTROUTING -s fd00:234:1::/64 -m set --match-set FABEDGE-REMOTE-CIDR6 dst -j RETURN
-A FABEDGE-POSTROUTING -s fd00:234:1::/64 -d fd00:234:1::/64 -j RETURN
-A FABEDGE-POSTROUTING -s fd00:234:1::/64 -j MASQUERADE
-A FABEDGE-POSTROUTING -s fd00:234:9::/64 -m set --match-set FABEDGE-REMOTE-CIDR6 dst -j RETURN
-A FABEDGE-POSTROUTING -s fd00:234:9::/64 -d fd00:234:9::/64 -j RETURN
-A FABEDGE-POSTROUTING -s fd00:234:9::/64 -j MASQUERADE
COMMIT
`,
  )
})

t.test('edge without pod CIDRs of the family: chains declared empty, so stale rules are flushed', async (t) => {
  t.equal(
    renderRuleset({ role: 'edge', family: 6, localPodCidrs: [] }).split('\n').filter((l) => l.startsWith('-A FABEDGE-FORWARD') || l.startsWith('-A FABEDGE-POSTROUTING')).length,
    0,
  )
})

t.test('pod CIDRs are canonicalized and deduplicated; anything else is a typed error', async (t) => {
  const out = renderRuleset({ role: 'edge', family: 6, localPodCidrs: ['FD00:234:1:0::5/64', 'fd00:234:1::/64'] })
  t.match(out, /-A FABEDGE-FORWARD -s fd00:234:1::\/64 -j ACCEPT\n-A FABEDGE-FORWARD -d fd00:234:1::\/64 -j ACCEPT\nCOMMIT/)
  for (const bad of ['10.234.1.0', '10.234.1.0/33', 'fd00::/64', '10.234.1.0/24 -j DROP', '$(reboot)', '']) {
    t.throws(() => renderRuleset({ role: 'edge', family: 4, localPodCidrs: [bad] }), IptablesError, bad)
  }
  t.throws(() => renderRuleset({ role: 'edge', family: 6, localPodCidrs: ['10.234.1.0/24'] }), { code: 'bad-input' })
  t.throws(() => renderRuleset({ role: 'gateway' as 'edge', family: 4, localPodCidrs: [] }), { code: 'bad-input' })
  t.throws(() => renderRuleset({ role: 'edge', family: 5 as 4, localPodCidrs: [] }), { code: 'bad-input' })
})
