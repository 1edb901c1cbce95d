// One netlink socket with request/reply pairing by sequence number: single requests, dumps (multi-part until
// NLMSG_DONE) and batches (many requests concatenated into few sends, replies matched back by seq), each with a
// deadline. The transport (native addon or a scripted fake) is injected. Spec: netlink(7).
import { loadAddon, type NativeAddon, type NativeHandle } from './native.js'
import {
  NLM_F_ACK, NLM_F_DUMP, NLM_F_DUMP_INTR, NLM_F_REQUEST, NLMSG_DONE, NLMSG_ERROR, NLMSG_OVERRUN,
  decodeError, decodeMsgs, encodeMsg, type NlMsg,
} from './codec.js'
import { NetlinkError } from './errors.js'

/** What the socket needs from below: the native addon in production, a scripted kernel in unit tests. */
export interface Transport {
  send(data: Buffer): void
  /** Datagrams as they arrive; err for receive errors (code 'ENOBUFS' when the kernel dropped replies). */
  start(onData: (err: NetlinkError | null, datagrams: Buffer[]) => void): void
  /** Whether pending receives keep the process alive. */
  ref(on: boolean): void
  close(): void
}

export interface SocketOptions {
  /** Network namespace: a name under /var/run/netns or an absolute path (e.g. /proc/PID/ns/net). */
  netns?: string
  /** Receive buffer in bytes; ACKs of a whole batch window must fit. Default 8 MiB (forced when root). */
  rcvbuf?: number
  /** Deadline per request, dump or batch, in milliseconds. Default 10 s. */
  timeoutMs?: number
}

export interface Request {
  type: number
  /** Extra flags; NLM_F_REQUEST is always added, and NLM_F_ACK for everything that is not a dump. */
  flags?: number
  payload: Buffer
}

/** Outcome of one request in a batch: a refusal from the kernel is a value, not an exception. */
export type Outcome = { ok: true; msgs: NlMsg[] } | { ok: false; error: NetlinkError }

/** Bytes per send: the kernel processes a whole datagram of concatenated requests in one sendmsg. */
const MAX_SEND_BYTES = 64 * 1024
/** Requests in flight; bounds the ACKs queued in the receive buffer so none is dropped (ENOBUFS). */
const WINDOW = 2048
const DEFAULT_TIMEOUT_MS = 10_000
const DEFAULT_RCVBUF = 8 * 1024 * 1024
const DUMP_RETRIES = 3

export function netnsPath(netns: string): string {
  if (netns.startsWith('/')) return netns
  if (!/^[A-Za-z0-9_.-]{1,64}$/.test(netns) || netns === '.' || netns === '..') {
    throw NetlinkError.input(`invalid network namespace name ${JSON.stringify(netns)}`)
  }
  return `/var/run/netns/${netns}`
}

/** The native addon as a Transport. */
export function nativeTransport(
  protocol: number,
  opts: SocketOptions = {},
  addon: NativeAddon = loadAddon(),
): Transport & { addMembership(group: number): void } {
  let handle: NativeHandle
  try {
    handle = addon.open(protocol, opts.netns === undefined ? undefined : netnsPath(opts.netns))
  } catch (e) {
    throw e instanceof NetlinkError ? e : NetlinkError.fromNative(e, 'open netlink socket')
  }
  try {
    addon.setOption(handle, 'rcvbuf', opts.rcvbuf ?? DEFAULT_RCVBUF)
    addon.setOption(handle, 'extAck', 1)
    // Errors then echo only the request header: replies stay small, and the seq is all we match on.
    addon.setOption(handle, 'capAck', 1)
    addon.setOption(handle, 'strictCheck', 1)
    // Explicitly off: an overrun must surface as ENOBUFS (failed requests, a monitor resync), never be hidden.
    addon.setOption(handle, 'noEnobufs', 0)
  } catch (e) {
    addon.close(handle)
    throw NetlinkError.fromNative(e, 'configure netlink socket')
  }
  return {
    addMembership(group) {
      addon.addMembership(handle, group)
    },
    send(data) {
      try {
        addon.send(handle, data)
      } catch (e) {
        throw NetlinkError.fromNative(e, 'send to kernel')
      }
    },
    start(onData) {
      addon.start(handle, (err, datagrams) => onData(err ? NetlinkError.fromNative(err, 'receive from kernel') : null, datagrams))
    },
    ref(on) {
      addon.ref(handle, on)
    },
    close() {
      addon.close(handle)
    },
  }
}

interface Pending {
  what: string
  msgs: NlMsg[]
  interrupted: boolean
  done(o: Outcome & { interrupted?: boolean }): void
}

export class NetlinkSocket {
  private readonly pending = new Map<number, Pending>()
  private seq: number
  private closed = false
  private readonly timeoutMs: number

  constructor(
    private readonly transport: Transport,
    opts: { timeoutMs?: number; firstSeq?: number } = {},
  ) {
    this.timeoutMs = opts.timeoutMs ?? DEFAULT_TIMEOUT_MS
    // A fresh socket per process start: a random start keeps stale replies of an earlier socket from matching.
    this.seq = opts.firstSeq ?? (Math.floor(Math.random() * 0x7fffffff) + 1)
    transport.start((err, datagrams) => this.onData(err, datagrams))
    transport.ref(false)
  }

  /** Opens a socket of `protocol` (NETLINK_ROUTE, NETLINK_NETFILTER) through the native addon. */
  static open(protocol: number, opts: SocketOptions = {}): NetlinkSocket {
    return new NetlinkSocket(nativeTransport(protocol, opts), opts)
  }

  /** One request; resolves with the reply messages (none for a plain ACK), rejects with the kernel's refusal. */
  async request(req: Request, what: string): Promise<NlMsg[]> {
    const [o] = await this.requestAll([req], what)
    if (!o!.ok) throw o!.error
    return o!.msgs
  }

  /**
   * A dump: every message of the multi-part reply. Retried when the kernel flags it inconsistent (DUMP_INTR).
   *
   * One dump at a time per socket: the kernel refuses to start a dump while another runs on the same socket
   * (EBUSY). Callers that share a socket (a pass reading the default routes while the datapath probes list the
   * node's addresses) queue here, each dump starting once the one before it has ended (or failed). A dump refused
   * with EBUSY anyway (the kernel still running one whose caller gave up at its deadline) is retried like an
   * interrupted one.
   */
  dump(req: Request, what: string): Promise<NlMsg[]> {
    const run = this.dumpTail.then(() => this.dumpNow(req, what))
    this.dumpTail = run.then(() => undefined, () => undefined)
    return run
  }

  /** The end of the last dump queued (dump). */
  private dumpTail: Promise<void> = Promise.resolve()

  private async dumpNow(req: Request, what: string): Promise<NlMsg[]> {
    for (let attempt = 1; ; attempt++) {
      const [o] = await this.send([{ ...req, flags: (req.flags ?? 0) | NLM_F_DUMP }], what)
      const busy = !o!.ok && o!.error.code === 'EBUSY'
      if (!o!.ok && !busy) throw o!.error
      if (o!.ok && !o!.interrupted) return o!.msgs
      if (attempt >= DUMP_RETRIES) {
        if (busy) throw o!.error
        throw new NetlinkError('transport', 'EDUMPINTR', `${what}: dump kept changing under us (${attempt} tries)`)
      }
      if (busy) await new Promise((r) => setTimeout(r, 10 * attempt))
    }
  }

  /**
   * Many requests, concatenated into as few sends as the size limit allows and pipelined within a window. The
   * kernel handles them in order; each reply is matched to its request by seq. Kernel refusals are outcomes;
   * a broken transport or the deadline rejects the whole batch.
   */
  async requestAll(reqs: readonly Request[], what: string): Promise<Outcome[]> {
    const out = await this.send(reqs, what)
    return out.map((o) => (o.ok ? { ok: true, msgs: o.msgs } : o))
  }

  private send(reqs: readonly Request[], what: string): Promise<Array<Outcome & { interrupted?: boolean }>> {
    if (this.closed) return Promise.reject(new NetlinkError('transport', 'ECLOSED', `${what}: socket closed`))
    const results: Array<Outcome & { interrupted?: boolean }> = new Array(reqs.length)
    if (reqs.length === 0) return Promise.resolve(results)
    return new Promise((resolve, reject) => {
      const mine = new Set<number>()
      let next = 0
      let inflight = 0
      let remaining = reqs.length
      let settled = false
      const finish = (err?: NetlinkError): void => {
        if (settled) return
        settled = true
        clearTimeout(timer)
        for (const s of mine) this.pending.delete(s)
        this.updateRef()
        if (err) reject(err)
        else resolve(results)
      }
      const timer = setTimeout(
        () => finish(new NetlinkError('transport', 'ETIMEDOUT', `${what}: no reply within ${this.timeoutMs} ms`)),
        this.timeoutMs,
      )
      const pump = (): void => {
        while (!settled && next < reqs.length && inflight < WINDOW) {
          const parts: Buffer[] = []
          let size = 0
          while (next < reqs.length && inflight < WINDOW) {
            const req = reqs[next]!
            const isDump = ((req.flags ?? 0) & NLM_F_DUMP) === NLM_F_DUMP
            const flags = NLM_F_REQUEST | (isDump ? 0 : NLM_F_ACK) | (req.flags ?? 0)
            const seq = this.nextSeq()
            const msg = encodeMsg(req.type, flags, seq, req.payload)
            if (size > 0 && size + msg.length > MAX_SEND_BYTES) break
            const idx = next++
            parts.push(msg)
            size += msg.length
            inflight++
            mine.add(seq)
            this.pending.set(seq, {
              what,
              msgs: [],
              interrupted: false,
              done: (o) => {
                this.pending.delete(seq)
                mine.delete(seq)
                results[idx] = o
                inflight--
                if (--remaining === 0) finish()
                else if (inflight <= WINDOW / 2) pump()
              },
            })
          }
          try {
            this.transport.send(parts.length === 1 ? parts[0]! : Buffer.concat(parts, size))
          } catch (e) {
            finish(e instanceof NetlinkError ? e : NetlinkError.fromNative(e, what))
            return
          }
        }
        this.updateRef()
      }
      pump()
    })
  }

  /** Closes the socket; requests still waiting reject with ECLOSED. Safe to call twice. */
  close(): void {
    if (this.closed) return
    this.closed = true
    this.failAll(new NetlinkError('transport', 'ECLOSED', 'netlink socket closed'))
    this.transport.close()
  }

  private nextSeq(): number {
    this.seq = (this.seq + 1) >>> 0
    if (this.seq === 0) this.seq = 1
    return this.seq
  }

  private updateRef(): void {
    if (!this.closed) this.transport.ref(this.pending.size > 0)
  }

  private failAll(err: NetlinkError): void {
    for (const p of [...this.pending.values()]) p.done({ ok: false, error: err })
  }

  private onData(err: NetlinkError | null, datagrams: Buffer[]): void {
    if (err) {
      // A receive error (ENOBUFS above all) means replies may be gone: no pending request can be trusted.
      this.failAll(err)
      return
    }
    for (const dg of datagrams) {
      let msgs: NlMsg[]
      try {
        msgs = decodeMsgs(dg)
      } catch (e) {
        this.failAll(e as NetlinkError)
        return
      }
      for (const m of msgs) this.onMsg(m)
    }
  }

  private onMsg(m: NlMsg): void {
    const p = this.pending.get(m.seq)
    if (!p) return // late reply to a request that timed out, or a notification: not ours to answer
    if (m.flags & NLM_F_DUMP_INTR) p.interrupted = true
    if (m.type === NLMSG_ERROR) {
      let e
      try {
        e = decodeError(m)
      } catch (err) {
        p.done({ ok: false, error: err as NetlinkError })
        return
      }
      if (e.errno === 0) p.done({ ok: true, msgs: p.msgs, interrupted: p.interrupted })
      else p.done({ ok: false, error: NetlinkError.kernel(e.errno, p.what, e.extAck) })
    } else if (m.type === NLMSG_DONE) {
      // With extended acks a dump's DONE carries the dump's own error code.
      const code = m.payload.length >= 4 ? m.payload.readInt32LE(0) : 0
      if (code < 0) p.done({ ok: false, error: NetlinkError.kernel(-code, p.what) })
      else p.done({ ok: true, msgs: p.msgs, interrupted: p.interrupted })
    } else if (m.type === NLMSG_OVERRUN) {
      p.done({ ok: false, error: new NetlinkError('transport', 'EOVERRUN', `${p.what}: kernel reported NLMSG_OVERRUN`) })
    } else {
      p.msgs.push(m)
    }
  }
}
