// TCP MSS clamping for tunnelled traffic (docs/mtu.md): the rules of our own mangle chain FABEDGE-MSS, jumped
// from mangle POSTROUTING (plan.ts JUMPS). Pure: the `--tcp-mss` value parsed and the chain's rules rendered.
//
// ESP in UDP costs 62-85 bytes a packet, so a pod with MTU 1500 sends segments the tunnel cannot carry; where ICMP
// "fragmentation needed" is filtered, its TCP connections hang after the handshake. The chain rewrites the MSS
// option of every SYN and SYN-ACK to or from a remote prefix (`--tcp-flags SYN,RST SYN` matches both), in both
// directions, so each end sends segments that fit. Match and target follow Submariner's mtuhandler
// (`-m set --match-set <set> dst|src ... -j TCPMSS --clamp-mss-to-pmtu | --set-mss N`).
import { IPSET, ipsetName, type Family } from '../fabedge.js'
import type { Role } from './render.js'

/** Our mangle chain. The FABEDGE- prefix makes it ours for the planner (plan.ts OWN_PREFIX) and for cleanup. */
export const MSS_CHAIN = 'FABEDGE-MSS'

/**
 * `pmtu`: clamp to the path MTU of the route the packet takes (minus 40 or 60 bytes of headers) and of the route
 * back to its source, whichever is smaller; `fixed`: write `mss` (never raising a smaller one); `off`: no chain.
 */
export type TcpMss = { mode: 'pmtu' } | { mode: 'off' } | { mode: 'fixed'; mss: number }

/** RFC 879's default MSS: every IPv4 host must accept it, so no smaller value is ever needed. */
export const TCP_MSS_MIN = 536
/** A jumbo-frame MTU; a larger MSS would never be a clamp. */
export const TCP_MSS_MAX = 9000
/** IPv6 links carry at least 1280 bytes (RFC 8200): MSS 1220 always fits, so the IPv6 rules never go below it. */
export const TCP_MSS_MIN_V6 = 1220

export const TCP_MSS_DEFAULT = 'pmtu'

export type TcpMssResult = { ok: true; value: TcpMss } | { ok: false; message: string }

/** Parses `--tcp-mss`: `pmtu`, `off`, or a whole number of bytes in [TCP_MSS_MIN, TCP_MSS_MAX]. */
export function parseTcpMss(text: string): TcpMssResult {
  const t = text.trim().toLowerCase()
  if (t === 'pmtu') return { ok: true, value: { mode: 'pmtu' } }
  if (t === 'off') return { ok: true, value: { mode: 'off' } }
  if (/^\d{1,5}$/.test(t)) {
    const mss = Number(t)
    if (mss >= TCP_MSS_MIN && mss <= TCP_MSS_MAX) return { ok: true, value: { mode: 'fixed', mss } }
  }
  return { ok: false, message: `--tcp-mss must be pmtu, off or a number of bytes from ${TCP_MSS_MIN} to ${TCP_MSS_MAX}, got "${text}"` }
}

/** The flag's spelling of a mode, for /status and logs: `pmtu`, `off` or the number. */
export function tcpMssText(m: TcpMss): string {
  return m.mode === 'fixed' ? String(m.mss) : m.mode
}

/**
 * The sets holding the remote prefixes of a role (src/desired/sets.ts): a connector's peers' pod CIDRs and its
 * edges' node IPs, an edge's every remote prefix, a cloud node's every prefix behind the connector.
 */
function remoteSets(role: Role): string[] {
  if (role === 'connector') return [IPSET.remotePodCidr, IPSET.remoteNodeCidr]
  if (role === 'edge') return [IPSET.remoteCidr]
  return [IPSET.remotePodCidr]
}

/**
 * The rules of FABEDGE-MSS for a role and family, in iptables-save's spelling; empty when there is nothing to clamp.
 * A cloud node gets a chain only with a fixed value: its routes to remote prefixes lead over the cluster LAN to the
 * connector, whose MTU is the pods' own, so a PMTU clamp there would never change a SYN (the connector's clamps
 * these flows where they enter the tunnel).
 */
export function mssRules(role: Role, family: Family, mss: TcpMss): string[] {
  if (mss.mode === 'off') return []
  if (mss.mode === 'pmtu' && role === 'cloud') return []
  const target = mss.mode === 'pmtu'
    ? '-j TCPMSS --clamp-mss-to-pmtu'
    : `-j TCPMSS --set-mss ${family === 6 ? Math.max(mss.mss, TCP_MSS_MIN_V6) : mss.mss}`
  const rule = (set: string, dir: 'src' | 'dst'): string =>
    `-p tcp -m set --match-set ${ipsetName(set, family)} ${dir} -m tcp --tcp-flags SYN,RST SYN ${target}`
  const sets = remoteSets(role)
  // dst: our SYNs and SYN-ACKs toward the tunnel; src: the remote end's, so our side learns the small MSS too.
  return [...sets.map((s) => rule(s, 'dst')), ...sets.map((s) => rule(s, 'src'))]
}
