// Leader gating of a connector's desired state (pure). With leader election, only the active connector may steer
// traffic into tunnels; a standby stays warm so that promotion is one pass with no load burst:
// - kept on a standby: credentials and every connection loaded. Connections toward edges are responder-only (they
//   never initiate); connections toward other clusters' connectors are loaded but not initiated. Edges and remote
//   connectors dial the VIP, which the standby does not hold, so nothing arrives;
// - leader-only: initiating connector<->connector tunnels, the table-220 routes, and the remote members of the
//   steering ipsets (FABEDGE-REMOTE-POD-CIDR, FABEDGE-REMOTE-NODE-CIDR): with them empty, every NAT-exemption and
//   masquerade rule of the (unchanged, so never rewritten) iptables ruleset is inert. No route may send cloud
//   traffic towards an SA that does not exist on this node, so a standby has no tunnel routes at all.
import { IPSET, ipsetName } from '../fabedge.js'
import type { Desired } from './types.js'

const LEADER_ONLY_SETS = [IPSET.remotePodCidr, IPSET.remoteNodeCidr].flatMap((base) => [ipsetName(base, 4), ipsetName(base, 6)])

/** The standby's share of a connector's desired state (the connections and rulesets are the same objects). */
export function standbyState(d: Desired): Desired {
  if (d.role !== 'connector') return d
  const ipsets: Desired['ipsets'] = {}
  for (const [name, s] of Object.entries(d.ipsets)) ipsets[name] = LEADER_ONLY_SETS.includes(name) ? { family: s.family, members: [] } : s
  return { ...d, initiate: [], initiateChildren: {}, routes: [], ipsets }
}
