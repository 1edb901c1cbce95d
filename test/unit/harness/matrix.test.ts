// The verdicts of the namespace harness that must never pass on nothing: the underlay capture (a capture that saw
// no ESP proves nothing and fails) and the connectivity matrix (an empty matrix is not "ok").
import t from 'tap'
import { captureVerdict, classifyCapture, describeCapture, runMatrix, waitMatrix } from '../../harness/matrix.js'
import type { Topology } from '../../harness/topology.js'

const ESP = '19:40:01.1 vu1 P   IP 10.77.1.3.4500 > 10.77.1.1.4500: UDP-encap: ESP(spi=0x1,seq=0x2), length 132'
const IKE = '19:40:01.2 vu1 P   IP 10.77.1.3.500 > 10.77.1.1.500: isakmp: parent_sa ikev2_init[I]'
const ARP = '19:40:01.3 vu1 P   ARP, Request who-has 10.77.1.1 tell 10.77.1.3, length 28'
const LEAK = '19:40:01.4 vu1 P   IP 10.81.3.10 > 10.81.2.10: ICMP echo request, id 1, seq 1, length 64'

/** A report as captureUnderlay returns it: tcpdump's own count at exit matching the lines it printed. */
function complete(lines: string[]) {
  const r = classifyCapture(lines.join('\n'))
  return { ...r, captured: r.packets, dropped: 0 }
}

t.test('a capture that saw nothing fails: it proves nothing about the underlay', async (t) => {
  const empty = complete([])
  t.same({ packets: empty.packets, esp: empty.esp, plaintext: empty.plaintext }, { packets: 0, esp: 0, plaintext: [] }, 'no plaintext, but also no packet')
  const v = captureVerdict(empty)
  t.equal(v.ok, false, 'not a pass')
  t.match(v.problems, [/no UDP-encapsulated ESP seen \(0 packets\): the capture proves nothing/])
  t.match(describeCapture(empty), /^FAILED: 0 packets, 0 UDP-encapsulated ESP, 0 IKE, 0 plaintext; no UDP-encapsulated ESP seen/)
  t.notMatch(describeCapture(empty), /never crosses|encrypted only/, 'never worded as a pass')
})

t.test('IKE and link-layer chatter without ESP is still a failed capture', async (t) => {
  const v = captureVerdict(complete([IKE, ARP]))
  t.equal(v.ok, false)
  t.match(v.problems, [/no UDP-encapsulated ESP seen \(2 packets\)/])
})

t.test('the positive case: ESP seen, no plaintext, complete', async (t) => {
  const r = complete([ESP, ESP, IKE, ARP])
  t.same(captureVerdict(r), { ok: true, problems: [] })
  t.equal(describeCapture(r), 'ok: 4 packets, 2 UDP-encapsulated ESP, 1 IKE, 0 plaintext (pod traffic crossed the underlay, encrypted only)')
})

t.test('plaintext fails even with ESP', async (t) => {
  const v = captureVerdict(complete([ESP, LEAK]))
  t.equal(v.ok, false)
  t.match(v.problems, [/1 plaintext packets on the underlay/])
})

t.test('an incomplete capture fails: count missing or different, kernel drops, packet limit reached', async (t) => {
  const base = complete([ESP, ESP])
  t.match(captureVerdict({ ...base, captured: null }).problems, [/gave no packet count/])
  t.match(captureVerdict({ ...base, captured: 5 }).problems, [/captured 5 packets but printed 2/])
  t.match(captureVerdict({ ...base, dropped: 3 }).problems, [/dropped 3 packets/])
  t.match(captureVerdict({ ...base, truncated: true }).problems, [/packet limit/])
})

t.test('an empty connectivity matrix is never ok', async (t) => {
  const topo = {} as Topology
  const r = await runMatrix(topo, [])
  t.same(r.cells, [])
  t.equal(r.ok, false, 'no cell checked: not ok')
  await t.rejects(waitMatrix(topo, 1_000, []), /no checks/)
})
