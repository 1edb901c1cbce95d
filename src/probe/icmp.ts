// The real probe port: one raw ICMP socket per address family (opened on first use) through the native addon
// (native/src/icmp.c), drained by poll() (the prober's timer) instead of an event per reply. Times are the addon's:
// send time and the kernel's receive time, both on the wall clock, so RTTs do not depend on when replies are read. Echo requests carry a random identifier and token per port; replies with another identifier
// or token (someone else's ping: a raw socket sees every echo reply of the namespace) are dropped here.
import { randomBytes } from 'node:crypto'
import { loadAddon } from '../netlink/native.js'
import { addressBytes, addressText, decodeEchoReply, encodeEchoRequest, ProbeError } from './codec.js'
import type { ProbePort, ProbeReply, ProbeSend } from './port.js'

type Handle = { readonly __brand: 'fabtunnel_icmp' }
type NativeErr = Error & { code?: string; errno?: number }

export interface IcmpAddon {
  icmpOpen(family: 4 | 6, netnsPath?: string): Handle
  icmpSend(h: Handle, dst: Buffer, src: Buffer | null, packet: Buffer): number
  icmpRecv(h: Handle): Array<{ from: Buffer; data: Buffer; at: number }>
  icmpClose(h: Handle): void
}

export interface IcmpPortOptions {
  /** Open the sockets inside this network namespace (tests and benchmarks); default: the process's own. */
  netnsPath?: string
  addon?: IcmpAddon
}

export class IcmpProbePort implements ProbePort {
  private readonly addon: IcmpAddon
  private readonly socks = new Map<4 | 6, Handle>()
  readonly ident: number
  private readonly token: Buffer
  private replyFns: Array<(r: ProbeReply) => void> = []
  private errorFns: Array<(e: Error) => void> = []
  private closed = false
  /** Validated address bytes by `family/address`: the same few thousand addresses are sent to every period. */
  private readonly addrCache = new Map<string, Buffer>()

  constructor(private readonly opts: IcmpPortOptions = {}) {
    this.addon = opts.addon ?? (loadAddon() as unknown as IcmpAddon)
    const r = randomBytes(10)
    this.ident = r.readUInt16BE(0)
    this.token = r.subarray(2, 10)
  }

  private socket(family: 4 | 6): Handle {
    let h = this.socks.get(family)
    if (h) return h
    if (this.closed) throw new ProbeError('EBADF', 'probe port closed')
    try {
      h = this.addon.icmpOpen(family, this.opts.netnsPath)
    } catch (cause) {
      const c = cause as NativeErr
      throw new ProbeError(c.code ?? 'EOPEN', `cannot open a raw ICMPv${family === 4 ? '' : '6'} socket (needs CAP_NET_RAW): ${c.message}`, { cause })
    }
    this.socks.set(family, h)
    return h
  }

  /** Hands every reply queued on the sockets to the reply handlers. */
  poll(): void {
    for (const [family, h] of this.socks) {
      let replies
      try {
        replies = this.addon.icmpRecv(h)
      } catch (cause) {
        const c = cause as NativeErr
        const e = new ProbeError(c.code ?? 'ERECV', c.message, { cause })
        for (const fn of this.errorFns) fn(e)
        continue
      }
      this.dispatch(family, replies)
    }
  }

  private dispatch(family: 4 | 6, replies: Array<{ from: Buffer; data: Buffer; at: number }>): void {
    for (const r of replies) {
      const echo = decodeEchoReply(family, r.data)
      if (!echo || echo.ident !== this.ident || !echo.token.equals(this.token)) continue
      const reply: ProbeReply = { family, from: addressText(r.from), seq: echo.seq, at: r.at }
      for (const fn of this.replyFns) fn(reply)
    }
  }

  send(p: ProbeSend, seq: number): number {
    const dst = this.bytes(p.dst, p.family)
    const src = p.src === null ? null : this.bytes(p.src, p.family)
    const packet = encodeEchoRequest(p.family, { ident: this.ident, seq, token: this.token })
    const h = this.socket(p.family)
    try {
      return this.addon.icmpSend(h, dst, src, packet)
    } catch (cause) {
      const c = cause as NativeErr
      throw new ProbeError(c.code ?? 'ESEND', `echo request to ${p.dst}${p.src ? ` from ${p.src}` : ''}: ${c.message}`, { cause })
    }
  }

  private bytes(address: string, family: 4 | 6): Buffer {
    const key = `${family}/${address}`
    let b = this.addrCache.get(key)
    if (!b) {
      b = addressBytes(address, family)
      // Bounded: peers come and go; a cache of every address ever seen would only grow.
      if (this.addrCache.size >= 100_000) this.addrCache.clear()
      this.addrCache.set(key, b)
    }
    return b
  }

  onReply(fn: (r: ProbeReply) => void): void {
    this.replyFns.push(fn)
  }

  offReply(fn: (r: ProbeReply) => void): void {
    this.replyFns = this.replyFns.filter((f) => f !== fn)
  }

  onError(fn: (err: Error) => void): void {
    this.errorFns.push(fn)
  }

  close(): void {
    this.closed = true
    for (const h of this.socks.values()) this.addon.icmpClose(h)
    this.socks.clear()
  }
}
