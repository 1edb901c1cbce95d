// Kernel change notifications over rtnetlink multicast groups (routes, rules, addresses of both families),
// decoded and emitted as events. An overrun of the receive buffer (ENOBUFS) is never swallowed: it becomes a
// `resync` event, since the only safe answer to lost notifications is to re-read the kernel state.
// Spec: rtnetlink(7), linux/rtnetlink.h (RTNLGRP_*), netlink(7) on ENOBUFS.
import { EventEmitter } from 'node:events'
import { decodeMsgs, type NlMsg } from './codec.js'
import { decodeAddr, RTM_DELADDR, RTM_NEWADDR, type Addr } from './addr.js'
import { NetlinkError } from './errors.js'
import { nativeTransport, type SocketOptions, type Transport } from './socket.js'
import { decodeRoute, RTM_DELROUTE, RTM_NEWROUTE, type Route } from './route.js'
import { decodeRule, RTM_DELRULE, RTM_NEWRULE, type Rule } from './rule.js'
import { NETLINK_ROUTE } from './codec.js'

export const RTNLGRP = {
  IPV4_IFADDR: 5,
  IPV4_ROUTE: 7,
  IPV4_RULE: 8,
  IPV6_IFADDR: 9,
  IPV6_ROUTE: 11,
  IPV6_RULE: 19,
} as const

export type MonitorEvent =
  | { kind: 'route'; action: 'new' | 'del'; route: Route }
  | { kind: 'rule'; action: 'new' | 'del'; rule: Rule }
  | { kind: 'addr'; action: 'new' | 'del'; addr: Addr }

export interface MonitorEvents {
  route: [action: 'new' | 'del', route: Route]
  rule: [action: 'new' | 'del', rule: Rule]
  addr: [action: 'new' | 'del', addr: Addr]
  /** Notifications were lost (ENOBUFS): re-read the state you care about. */
  resync: [cause: NetlinkError]
  /** A notification that does not decode, or a receive error other than an overrun. */
  error: [err: NetlinkError]
}

/** Decodes one notification; undefined for kinds and families the monitor does not report. Pure. */
export function decodeEvent(m: NlMsg): MonitorEvent | undefined {
  switch (m.type) {
    case RTM_NEWROUTE:
    case RTM_DELROUTE: {
      const r = decodeRoute(m)
      if (!r || r.cloned) return undefined
      const { cloned: _cloned, ...route } = r
      return { kind: 'route', action: m.type === RTM_NEWROUTE ? 'new' : 'del', route }
    }
    case RTM_NEWRULE:
    case RTM_DELRULE: {
      const rule = decodeRule(m)
      return rule && { kind: 'rule', action: m.type === RTM_NEWRULE ? 'new' : 'del', rule }
    }
    case RTM_NEWADDR:
    case RTM_DELADDR: {
      const addr = decodeAddr(m)
      return addr && { kind: 'addr', action: m.type === RTM_NEWADDR ? 'new' : 'del', addr }
    }
    default:
      return undefined
  }
}

export interface MonitorOptions extends SocketOptions {
  /** Groups to join; default all six (v4/v6 routes, rules, addresses). */
  groups?: number[]
  /** Keep the process alive while monitoring (default true). */
  ref?: boolean
}

/**
 * CLI: `ip monitor route rule address`. Emits `route`, `rule`, `addr` (action, object), `resync` on overrun and
 * `error` on undecodable input. Close it when done.
 */
export class Monitor extends EventEmitter<MonitorEvents> {
  private closed = false

  constructor(
    private readonly transport: Transport,
    ref = true,
  ) {
    super()
    transport.start((err, datagrams) => this.onData(err, datagrams))
    transport.ref(ref)
  }

  static open(opts: MonitorOptions = {}): Monitor {
    const groups = opts.groups ?? Object.values(RTNLGRP)
    // A bigger buffer makes overruns rare during bursts (a table flush announces every route).
    const t = nativeTransport(NETLINK_ROUTE, { ...opts, rcvbuf: opts.rcvbuf ?? 4 * 1024 * 1024 })
    try {
      for (const g of groups) t.addMembership(g)
    } catch (e) {
      t.close()
      throw NetlinkError.fromNative(e, 'join netlink multicast group')
    }
    return new Monitor(t, opts.ref ?? true)
  }

  close(): void {
    if (this.closed) return
    this.closed = true
    this.transport.close()
  }

  private onData(err: NetlinkError | null, datagrams: Buffer[]): void {
    if (this.closed) return
    if (err) {
      if (err.code === 'ENOBUFS') this.emit('resync', err)
      else this.emitError(err)
      return
    }
    for (const dg of datagrams) {
      let msgs: NlMsg[]
      try {
        msgs = decodeMsgs(dg)
      } catch (e) {
        this.emitError(e as NetlinkError)
        continue
      }
      for (const m of msgs) {
        let ev: MonitorEvent | undefined
        try {
          ev = decodeEvent(m)
        } catch (e) {
          this.emitError(e as NetlinkError)
          continue
        }
        if (!ev) continue
        if (ev.kind === 'route') this.emit('route', ev.action, ev.route)
        else if (ev.kind === 'rule') this.emit('rule', ev.action, ev.rule)
        else this.emit('addr', ev.action, ev.addr)
      }
    }
  }

  // An EventEmitter throws on an unhandled 'error'; a monitor nobody listens to for errors must not crash the agent.
  private emitError(err: NetlinkError): void {
    if (this.listenerCount('error') > 0) this.emit('error', err)
  }
}
