// Leadership: whether this agent is the active connector. `GET /is-leader` answers it byte-compatibly with FabEdge
// (`true`/`false`, HTTP 200 both; keepalived's check script moves the VIP on it), served from memory so it answers
// even while a pass runs. It is not readiness: a transient subsystem error must not move a VIP. Without an election
// (a single connector, or an edge node) the agent leads whenever it runs.
export interface Leadership {
  isLeader(): boolean
}

export const SOLE_LEADER: Leadership = { isLeader: () => true }
