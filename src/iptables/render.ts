// Pure rendering of the FabEdge ruleset (../shared/fabedge-compat.md §5) as an iptables-restore payload for
// tables filter and nat, plus our MSS clamp chain in mangle when one is wanted (mss.ts). It declares and fills
// only our own chains: with `--noflush`, a `:CHAIN - [0:0]` line flushes that chain and nothing else, so the
// whole chain is replaced atomically per table. Jumps from built-in chains are not here (`-A INPUT ...` under
// --noflush would add a duplicate each pass); plan.ts manages them.
//
// Rules are written in the exact spelling iptables-save prints (`-p udp -m udp --dport 500`, prefix lengths,
// RELATED,ESTABLISHED), so a freshly applied ruleset reads back byte-identical; parse.ts still compares semantically.
import { CHAIN, IPSET, ipsetName, type Family } from '../fabedge.js'
import { parseCidr } from '../config/cidr.js'
import { IptablesError } from './errors.js'
import { MSS_CHAIN, mssRules, type TcpMss } from './mss.js'

export type Role = 'connector' | 'edge' | 'cloud'

export interface RulesetInput {
  role: Role
  /** 4 -> iptables, sets named FABEDGE-X; 6 -> ip6tables, sets named FABEDGE-X6. */
  family: Family
  /** Edge role: own pod CIDRs of this family, canonical ("10.234.1.0/24"); connector, cloud: unused. */
  localPodCidrs: string[]
  /**
   * Connector stopping while it holds this VIP (of this family): drop new IKE_SA_INITs addressed to it, ahead of
   * the IKE accepts. See drainRules.
   */
  drainVip?: string
  /** TCP MSS clamping (mss.ts); absent or `off`: no mangle table in the payload. */
  mss?: TcpMss
}

/**
 * While a leading connector drains (SIGTERM), it sends DELETE for its IKE_SAs while the VIP is still here (once it
 * is gone the kernel refuses the VIP as a source address and the edges would never learn). The edges then
 * re-initiate at once; were their IKE_SA_INIT answered here, they would set up a tunnel with a dying node. These
 * rules drop exactly the IKE_SA_INIT requests (responder SPI zero, exchange type 34) to the VIP on 500 and, after
 * the non-ESP marker, on 4500, so the edges' retransmission reaches the next VIP holder. Everything else, the
 * DELETE exchanges included, passes. u32 offsets: IPv4 from the IHL, IPv6 assuming no extension header.
 */
export function drainRules(vip: string, family: Family): string[] {
  const ip = family === 4 ? '0x0>>0x16&0x3c@' : ''
  const at = (off: number): string => (family === 4 ? `${ip}0x${off.toString(16)}` : `0x${(40 + off).toString(16)}`)
  // IKE header right after the UDP header (8 bytes): responder SPI at +8..+16, exchange type at +18.
  const ike = (base: number): string => `${at(base + 8)}=0x0&&${at(base + 12)}=0x0&&${at(base + 15)}&0xff=0x22`
  const dst = `-d ${vip}/${family === 4 ? 32 : 128}`
  return [
    `${dst} -p udp -m udp --dport 500 -m u32 --u32 "${ike(8)}" -j DROP`,
    `${dst} -p udp -m udp --dport 4500 -m u32 --u32 "${at(8)}=0x0&&${ike(12)}" -j DROP`,
  ]
}

/**
 * IKE (500), NAT-T (4500), ESP and AH accepted on both roles. FabEdge's edge agent has no FABEDGE-INPUT, but an
 * edge is a responder too: mediated edge-to-edge tunnels and peer-initiated rekeys arrive as new inbound flows,
 * which a host firewall with a default-drop INPUT would otherwise drop. The rules only accept IPsec traffic the
 * node's charon answers anyway. ip6tables never matches `-p ah` (AH is skipped as an extension header; ip6tables
 * warns "never matched protocol"), so v6 uses the `ah` extension match instead.
 */
function inputRules(family: Family): string[] {
  return [
    '-p udp -m udp --dport 500 -j ACCEPT',
    '-p udp -m udp --dport 4500 -j ACCEPT',
    '-p esp -j ACCEPT',
    family === 6 ? '-m ah -j ACCEPT' : '-p ah -j ACCEPT',
  ]
}

function set(base: string, family: Family, dir: 'src' | 'dst'): string {
  return `-m set --match-set ${ipsetName(base, family)} ${dir}`
}

function connectorChains(family: Family, drainVip?: string): Chains {
  const localPod = IPSET.localPodCidr
  const localNode = IPSET.localNodeCidr
  const remotePod = IPSET.remotePodCidr
  const remoteNode = IPSET.remoteNodeCidr
  const both = (a: string, b: string, target: string): string =>
    `${set(a, family, 'src')} ${set(b, family, 'dst')} -j ${target}`
  return {
    filter: [
      [CHAIN.input, [...(drainVip ? drainRules(drainVip, family) : []), ...inputRules(family)]],
      [
        CHAIN.forward,
        [
          '-m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT',
          `${set(localPod, family, 'src')} -j ACCEPT`,
          `${set(localPod, family, 'dst')} -j ACCEPT`,
          `${set(localNode, family, 'src')} -j ACCEPT`,
          `${set(localNode, family, 'dst')} -j ACCEPT`,
        ],
      ],
    ],
    nat: [
      [
        CHAIN.postrouting,
        [
          both(localPod, remotePod, 'ACCEPT'),
          both(remotePod, localPod, 'ACCEPT'),
          both(localPod, remoteNode, 'ACCEPT'),
          both(remotePod, localNode, 'MASQUERADE'),
          both(remoteNode, localPod, 'MASQUERADE'),
        ],
      ],
    ],
  }
}

function edgeChains(family: Family, podCidrs: string[]): Chains {
  const forward: string[] = []
  const post: string[] = []
  for (const c of podCidrs) {
    forward.push(`-s ${c} -j ACCEPT`, `-d ${c} -j ACCEPT`)
    post.push(
      `-s ${c} ${set(IPSET.remoteCidr, family, 'dst')} -j RETURN`,
      `-s ${c} -d ${c} -j RETURN`,
      `-s ${c} -j MASQUERADE`,
    )
  }
  return {
    filter: [
      [CHAIN.input, inputRules(family)],
      [CHAIN.forward, forward],
    ],
    nat: [[CHAIN.postrouting, post]],
  }
}

/**
 * kube-proxy's masquerade chain. A packet kube-proxy marked for masquerade (0x4000, e.g. NodePort traffic to a
 * remote pod) must still be masqueraded although our POSTROUTING chain runs first and accepts remote traffic.
 */
export const KUBE_POSTROUTING = 'KUBE-POSTROUTING'

/**
 * A cloud node, exactly as FabEdge's cloud-agent renders it (pkg/cloud-agent/iptables.go `tmpl`, v1.0.0): forward
 * and NAT-exempt (ACCEPT before anyone's MASQUERADE) everything to or from the remote prefixes, after handing
 * kube-proxy's masquerade-marked packets to KUBE-POSTROUTING. No INPUT chain: a cloud node terminates no IPsec.
 * Where kube-proxy's chain does not exist the planner leaves its rule out (iptables/plan.ts OPTIONAL_TARGETS).
 */
function cloudChains(family: Family): Chains {
  const remote = IPSET.remotePodCidr
  return {
    filter: [
      [
        CHAIN.forward,
        [
          '-m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT',
          `${set(remote, family, 'src')} -j ACCEPT`,
          `${set(remote, family, 'dst')} -j ACCEPT`,
        ],
      ],
    ],
    nat: [
      [
        CHAIN.postrouting,
        [
          `-m mark --mark 0x4000/0x4000 -j ${KUBE_POSTROUTING}`,
          `${set(remote, family, 'dst')} -j ACCEPT`,
          `${set(remote, family, 'src')} -j ACCEPT`,
        ],
      ],
    ],
  }
}

type Chains = Record<'filter' | 'nat', Array<[chain: string, rules: string[]]>>

/** Own pod CIDRs in canonical form, deduplicated in first-seen order; anything else is a typed error. */
function podCidrsCanonical(family: Family, cidrs: string[]): string[] {
  const out: string[] = []
  for (const raw of cidrs) {
    const r = parseCidr(raw)
    if (!r.ok) throw new IptablesError('bad-input', `not a CIDR: ${JSON.stringify(raw)}`)
    const c = r.cidr
    if (c.family !== family) throw new IptablesError('bad-input', `${raw} is not an IPv${family} CIDR`)
    if (!out.includes(c.text)) out.push(c.text)
  }
  return out
}

/** The iptables-restore payload (tables filter and nat; mangle with an MSS clamp) declaring and filling only our own chains. */
export function renderRuleset(input: RulesetInput): string {
  const { role, family } = input
  if (family !== 4 && family !== 6) throw new IptablesError('bad-input', `bad family ${String(family)}`)
  let chains: Chains
  if (role === 'connector') chains = connectorChains(family, input.drainVip)
  else if (role === 'edge') chains = edgeChains(family, podCidrsCanonical(family, input.localPodCidrs))
  else if (role === 'cloud') chains = cloudChains(family)
  else throw new IptablesError('bad-input', `bad role ${String(role)}`)
  const lines: string[] = []
  for (const table of ['filter', 'nat'] as const) {
    lines.push(`*${table}`)
    for (const [chain] of chains[table]) lines.push(`:${chain} - [0:0]`)
    for (const [chain, rules] of chains[table]) for (const r of rules) lines.push(`-A ${chain} ${r}`)
    lines.push('COMMIT')
  }
  const mss = input.mss ? mssRules(role, family, input.mss) : []
  if (mss.length) lines.push('*mangle', `:${MSS_CHAIN} - [0:0]`, ...mss.map((r) => `-A ${MSS_CHAIN} ${r}`), 'COMMIT')
  return lines.join('\n') + '\n'
}
