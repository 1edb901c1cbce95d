// The probe port: what the prober needs to send echo requests and hear replies. The real adapter is icmp.ts (raw
// ICMP sockets through the native addon); unit tests use an in-memory fake (test/unit/probe/fake-port.ts).

export interface ProbeSend {
  family: 4 | 6
  /** Source address (one of this node's, inside the local tunnel selectors); null: the kernel picks. */
  src: string | null
  dst: string
}

export interface ProbeReply {
  family: 4 | 6
  /** Canonical address the reply came from. */
  from: string
  seq: number
  /** When the reply arrived, on the clock of `send`'s result (ms). */
  at: number
}

export interface ProbePort {
  /** Sends one echo request with `seq`; returns the time of the send (ms, the port's clock). Throws ProbeError. */
  send(p: ProbeSend, seq: number): number
  /** Delivers the replies received so far to onReply (a port that delivers by itself may leave it out). */
  poll?(): void
  onReply(fn: (r: ProbeReply) => void): void
  /** Receive errors (the sockets stay open). */
  onError(fn: (err: Error) => void): void
  close(): void
}

/** Monotonic ms (src/clock.ts): the prober's clock for schedules and ages. */
export { monotonicMs } from '../clock.js'
