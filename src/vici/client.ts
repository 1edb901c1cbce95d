// VICI client: unix-socket connections to charon, length framing over partial reads, one request in flight per
// connection (VICI has no sequence numbers, README "Commands"), streamed commands, event subscriptions on their
// own connection, per-call timeouts, and reconnect with bounded backoff when charon goes away.
// Spec: strongSwan's vici plugin README (src/libcharon/plugins/vici/README.md); byte layout in ./codec.ts.
import { EventEmitter } from 'node:events'
import net from 'node:net'
import {
  DEFAULT_MAX_FRAME_BYTES,
  FrameReader,
  decodePacket,
  encodeFrame,
  type ViciInput,
  type ViciMessage,
  type ViciPacket,
  type ViciPacketInput,
} from './codec.js'
import { ViciError, type ViciErrorCode } from './errors.js'

export const DEFAULT_VICI_URI = 'unix:///var/run/charon.vici'

export interface ReconnectOptions {
  /** Delay before the first attempt after a loss (ms). Default 50. */
  initialDelayMs?: number
  /** Upper bound of the doubling delay (ms). Default 2000. */
  maxDelayMs?: number
  /** Attempts before giving up with `reconnect-failed`. Default unlimited. */
  maxAttempts?: number
}

export interface ViciClientOptions {
  /** `unix:///path` or a plain path. Default `unix:///var/run/charon.vici`. */
  uri?: string
  /**
   * Largest frame sent or accepted (bytes, after the length prefix). Default 512 KiB, charon's own
   * VICI_MESSAGE_SIZE_MAX (see DEFAULT_MAX_FRAME_BYTES): a bigger request is refused with `frame-too-large`
   * before it is sent, the connection stays usable; a bigger incoming frame resets the connection. Raise it
   * only for a charon built with a bigger limit.
   */
  maxFrameBytes?: number
  /** Default per-call timeout (ms), covering queueing and the answer. Default 30000. */
  timeoutMs?: number
  /**
   * How long the late answer of a sent call that timed out is still waited for (answers pair by order), in ms.
   * After that the connection is reset (`disconnected` with `timeout`, calls queued behind it reject) instead of
   * blocking every later call. Default `timeoutMs`; `Infinity` waits for ever.
   */
  lateAnswerMs?: number
  /** Bound on opening the socket (ms). Default 5000. */
  connectTimeoutMs?: number
  /** Reconnect after charon goes away; `false` leaves reconnecting to the caller. Default on. */
  reconnect?: ReconnectOptions | false
  /** Deliver subscribed event values as Buffers instead of strings. Default false. */
  buffers?: boolean
}

export interface CallOptions {
  timeoutMs?: number
  /** Decode this response (and stream events) with Buffer values, e.g. for DER certificate data. */
  buffers?: boolean
}

export interface StreamOptions extends CallOptions {
  /**
   * Called with each streamed event as it is decoded, instead of collecting the events: the caller keeps only what
   * it needs of each one, so a listing of 10,000 connections is never held whole. An exception thrown here rejects
   * the stream (once charon has answered, so the connection stays in step) and later events are skipped.
   */
  onEvent?: (message: ViciMessage) => void
}

export type ViciEventHandler = (event: string, message: ViciMessage) => void

export interface ViciClientEvents {
  /** The connection to charon was lost; pending calls have already been rejected with this error. */
  disconnected: [err: ViciError]
  /** Connected again after a loss, subscriptions re-registered. charon may have restarted: resync state. */
  reconnected: []
  /** Reconnecting gave up after `maxAttempts`; the next call tries to connect again. */
  'reconnect-failed': [err: ViciError]
}

/** `unix:///var/run/charon.vici` or `/var/run/charon.vici` -> the socket path. Other schemes are refused. */
export function socketPathFromUri(uri: string): string {
  if (uri.startsWith('unix://')) {
    const path = uri.slice('unix://'.length)
    if (path === '') throw new ViciError('invalid', `empty socket path in ${uri}`)
    return path
  }
  if (/^[a-z][a-z0-9+.-]*:\/\//i.test(uri)) throw new ViciError('invalid', `unsupported VICI URI scheme: ${uri}`)
  if (uri === '') throw new ViciError('invalid', 'empty VICI socket path')
  return uri
}

interface Pending {
  readonly frame: Buffer
  /** 'cmd' expects CMD_RESPONSE/CMD_UNKNOWN, 'event' expects EVENT_CONFIRM/EVENT_UNKNOWN. */
  readonly kind: 'cmd' | 'event'
  readonly name: string
  readonly buffers: boolean
  /** Event name streamed by this command; its events are collected while the command is in flight. */
  readonly collect: string | undefined
  readonly events: ViciMessage[]
  /** Instead of collecting: each streamed event as it arrives (see StreamOptions.onEvent). */
  readonly onEvent: ((message: ViciMessage) => void) | undefined
  /**
   * Sent even after its caller timed out while it was queued. For a stream's EVENT_UNREGISTER: charon keeps one
   * registration entry per EVENT_REGISTER (vici_dispatcher.c register_event appends without checking) and
   * raise_event sends the event once per entry, so a registration left behind would double every later stream.
   */
  readonly keep: boolean
  readonly resolve: (r: { packet: ViciPacket; events: ViciMessage[] }) => void
  readonly reject: (e: ViciError) => void
  /** The call's timeout; once it fired, for a sent request, the bound on waiting for the late answer. */
  timer: NodeJS.Timeout | undefined
  sent: boolean
  settled: boolean
}

function connectError(e: NodeJS.ErrnoException, path: string): ViciError {
  const known: ViciErrorCode[] = ['ECONNREFUSED', 'ENOENT', 'EACCES']
  const code = known.includes(e.code as ViciErrorCode) ? (e.code as ViciErrorCode) : 'connect'
  return new ViciError(code, `connecting to VICI socket ${path}: ${e.message}`, { cause: e })
}

function openSocket(path: string, timeoutMs: number): Promise<net.Socket> {
  return new Promise((resolve, reject) => {
    const sock = net.createConnection({ path })
    const timer = setTimeout(() => {
      sock.destroy()
      reject(new ViciError('timeout', `connecting to VICI socket ${path}: no answer in ${timeoutMs} ms`))
    }, timeoutMs)
    const onError = (e: NodeJS.ErrnoException): void => {
      clearTimeout(timer)
      reject(connectError(e, path))
    }
    sock.once('error', onError)
    sock.once('connect', () => {
      clearTimeout(timer)
      sock.off('error', onError)
      resolve(sock)
    })
  })
}

/** One socket: frames in, one request in flight, the rest queued in order. Dies on the first transport error. */
class Connection {
  private readonly reader: FrameReader
  private readonly queue: Pending[] = []
  private dead: ViciError | null = null

  constructor(
    private readonly sock: net.Socket,
    private readonly maxFrameBytes: number,
    /** How long a late answer is waited for after its call timed out, before the connection is reset. */
    private readonly lateAnswerMs: number,
    private readonly eventBuffers: boolean,
    private readonly onEvent: ViciEventHandler | null,
    private readonly onDeath: (err: ViciError) => void,
  ) {
    this.reader = new FrameReader(maxFrameBytes)
    sock.on('data', (chunk: Buffer) => this.onData(chunk))
    sock.on('error', (e) => this.kill(new ViciError('closed', `VICI socket error: ${e.message}`, { cause: e })))
    sock.on('close', () => {
      const mid = this.reader.pending > 0 ? ` with ${this.reader.pending} bytes of an unfinished frame` : ''
      this.kill(new ViciError('closed', `VICI connection closed by charon${mid}`))
    })
  }

  get alive(): boolean {
    return this.dead === null
  }

  request(
    packet: ViciPacketInput,
    kind: 'cmd' | 'event',
    name: string,
    timeoutMs: number,
    buffers: boolean,
    collect?: string,
    keep = false,
    onEvent?: (message: ViciMessage) => void,
  ): Promise<{ packet: ViciPacket; events: ViciMessage[] }> {
    if (this.dead) return Promise.reject(this.dead)
    let frame: Buffer
    try {
      frame = encodeFrame(packet, this.maxFrameBytes)
    } catch (e) {
      return Promise.reject(e)
    }
    return new Promise((resolve, reject) => {
      const p: Pending = {
        frame, kind, name, buffers, collect, events: [], onEvent, keep, resolve, reject,
        timer: undefined, sent: false, settled: false,
      }
      p.timer = setTimeout(() => this.expire(p, timeoutMs), timeoutMs)
      this.queue.push(p)
      if (this.queue.length === 1) this.sendHead()
    })
  }

  /** Ends the connection; every unanswered request rejects with err. */
  kill(err: ViciError): void {
    if (this.dead) return
    this.dead = err
    for (const p of this.queue.splice(0)) {
      clearTimeout(p.timer)
      this.settle(p, err)
    }
    this.sock.destroy()
    this.onDeath(err)
  }

  private expire(p: Pending, timeoutMs: number): void {
    p.timer = undefined
    this.settle(p, new ViciError('timeout', `${p.name}: no answer from charon in ${timeoutMs} ms`, { command: p.name }))
    // A sent request keeps its slot: its late answer must still be consumed so the next answer pairs correctly.
    if (p.sent) this.awaitLateAnswer(p)
    else if (!p.keep) this.queue.splice(this.queue.indexOf(p), 1)
  }

  /**
   * Bounds the wait for the late answer of a sent request whose caller already timed out. An answer that never
   * comes (charon discards a reply over its frame limit, see DEFAULT_MAX_FRAME_BYTES, or is wedged) would hold
   * the slot for good and time out every later call on a connection that still looks healthy: reset it instead.
   */
  private awaitLateAnswer(p: Pending): void {
    // setTimeout fires at once for delays past 2^31-1 ms: those, and Infinity, mean "wait for ever"
    if (this.lateAnswerMs > 2 ** 31 - 1) return
    p.timer = setTimeout(() => {
      const msg = `${p.name}: still no answer ${this.lateAnswerMs} ms after its timeout; connection reset`
      this.kill(new ViciError('timeout', msg, { command: p.name }))
    }, this.lateAnswerMs)
  }

  private settle(p: Pending, result: ViciError | { packet: ViciPacket; events: ViciMessage[] }): void {
    if (p.settled) return
    p.settled = true
    if (p.timer) clearTimeout(p.timer)
    if (result instanceof ViciError) p.reject(result)
    else p.resolve(result)
  }

  private sendHead(): void {
    const head = this.queue[0]
    if (!head || head.sent) return
    head.sent = true
    // a kept request whose caller timed out while it was queued (see Pending.keep)
    if (head.settled) this.awaitLateAnswer(head)
    this.sock.write(head.frame)
  }

  private onData(chunk: Buffer): void {
    if (this.dead) return
    try {
      for (const frame of this.reader.push(chunk)) {
        this.dispatch(frame)
        if (this.dead) return
      }
    } catch (e) {
      this.kill(e instanceof ViciError ? e : new ViciError('malformed', String(e), { cause: e }))
    }
  }

  private dispatch(frame: Buffer): void {
    const head = this.queue[0]
    const inFlight = head?.sent ? head : undefined
    const type = frame[0]
    // Events decode with the in-flight stream's choice (cmd connection) or the client's (event connection).
    const buffers = type === 7 && this.onEvent ? this.eventBuffers : (inFlight?.buffers ?? false)
    const packet = decodePacket(frame, { buffers })
    switch (packet.type) {
      case 'EVENT':
        if (this.onEvent) this.onEvent(packet.name, packet.message)
        else if (inFlight?.collect === packet.name && !inFlight.settled) {
          if (inFlight.onEvent) inFlight.onEvent(packet.message)
          else inFlight.events.push(packet.message)
        }
        return
      case 'CMD_RESPONSE':
      case 'CMD_UNKNOWN':
      case 'EVENT_CONFIRM':
      case 'EVENT_UNKNOWN': {
        const wants = packet.type.startsWith('CMD') ? 'cmd' : 'event'
        if (!inFlight || inFlight.kind !== wants) {
          throw new ViciError('protocol', `unexpected ${packet.type} (no matching request in flight)`)
        }
        this.queue.shift()
        clearTimeout(inFlight.timer)
        this.settle(inFlight, { packet, events: inFlight.events })
        this.sendHead()
        return
      }
      default:
        throw new ViciError('protocol', `charon sent a client-side packet ${packet.type}`)
    }
  }
}

type State = 'idle' | 'connecting' | 'open' | 'reconnecting' | 'closed'

/**
 * A VICI session with charon: a command connection (requests queued, answered in order) and, once something is
 * subscribed, an event connection, so a long command never delays an event. Emits `disconnected`,
 * `reconnected` and `reconnect-failed` (see ViciClientEvents).
 */
export class ViciClient extends EventEmitter<ViciClientEvents> {
  readonly socketPath: string
  private readonly maxFrameBytes: number
  private readonly timeoutMs: number
  private readonly lateAnswerMs: number
  private readonly connectTimeoutMs: number
  private readonly reconnectOpts: Required<ReconnectOptions> | false
  private readonly eventBuffers: boolean

  private state: State = 'idle'
  private cmd: Connection | null = null
  private evt: Connection | null = null
  private connecting: Promise<void> | null = null
  private evtConnecting: Promise<Connection> | null = null
  private reconnectTimer: NodeJS.Timeout | undefined
  private readonly subs = new Map<string, Set<ViciEventHandler>>()
  /** connect() calls made while reconnecting: settled by the reconnect outcome or close(). */
  private reconnectWaiters: Array<{ resolve: () => void; reject: (e: ViciError) => void }> = []

  constructor(opts: ViciClientOptions = {}) {
    super()
    this.socketPath = socketPathFromUri(opts.uri ?? DEFAULT_VICI_URI)
    this.maxFrameBytes = opts.maxFrameBytes ?? DEFAULT_MAX_FRAME_BYTES
    this.timeoutMs = opts.timeoutMs ?? 30_000
    this.lateAnswerMs = opts.lateAnswerMs ?? this.timeoutMs
    if (!(this.lateAnswerMs >= 0)) throw new ViciError('invalid', `lateAnswerMs must be >= 0, got ${this.lateAnswerMs}`)
    this.connectTimeoutMs = opts.connectTimeoutMs ?? 5_000
    this.eventBuffers = opts.buffers ?? false
    this.reconnectOpts =
      opts.reconnect === false
        ? false
        : {
            initialDelayMs: opts.reconnect?.initialDelayMs ?? 50,
            maxDelayMs: opts.reconnect?.maxDelayMs ?? 2_000,
            maxAttempts: opts.reconnect?.maxAttempts ?? Number.POSITIVE_INFINITY,
          }
  }

  /** True while both needed connections are up. */
  get connected(): boolean {
    return this.state === 'open'
  }

  /**
   * Opens the command connection (and the event connection if anything is subscribed). Calls connect on demand,
   * so this is only needed to fail early. While reconnecting it waits for the outcome.
   */
  connect(): Promise<void> {
    switch (this.state) {
      case 'open':
        return Promise.resolve()
      case 'closed':
        return Promise.reject(new ViciError('closed', 'VICI client is closed'))
      case 'connecting':
        return this.connecting!
      case 'reconnecting':
        return new Promise((resolve, reject) => this.reconnectWaiters.push({ resolve, reject }))
      case 'idle':
        this.state = 'connecting'
        this.connecting = this.open().then(
          () => {
            this.connecting = null
            if (this.state === 'connecting') this.state = 'open'
          },
          (e: unknown) => {
            this.connecting = null
            if (this.state === 'connecting') this.state = 'idle'
            throw e
          },
        )
        return this.connecting
    }
  }

  /**
   * Sends a command and resolves with charon's response. Rejects with ViciError: `CMD_UNKNOWN`, `failed`
   * (response had `success = no`; message is `errmsg`) or a transport code.
   */
  async call(command: string, message: ViciInput = {}, opts: CallOptions = {}): Promise<ViciMessage> {
    const conn = await this.commandConnection()
    const r = await conn.request(
      { type: 'CMD_REQUEST', name: command, message },
      'cmd',
      command,
      opts.timeoutMs ?? this.timeoutMs,
      opts.buffers ?? false,
    )
    return checkResponse(command, r.packet)
  }

  /**
   * Runs a streamed command (`list-sas` -> `list-sa`, `list-conns` -> `list-conn`, `list-certs` -> `list-cert`, ...):
   * registers for the event on the command connection, sends the command, collects the events delivered before
   * the response, unregisters. The timeout covers the whole exchange. With `opts.onEvent` each event goes to it as it
   * is decoded and `events` is empty.
   */
  async stream(
    command: string,
    event: string,
    message: ViciInput = {},
    opts: StreamOptions = {},
  ): Promise<{ events: ViciMessage[]; response: ViciMessage }> {
    const conn = await this.commandConnection()
    const timeoutMs = opts.timeoutMs ?? this.timeoutMs
    const buffers = opts.buffers ?? false
    // The consumer's exception must not reach the connection's reader (that would reset the connection): the first
    // one is kept, later events are skipped, and the stream rejects with it once charon answered.
    let failure: { error: unknown } | null = null
    const consumer = opts.onEvent
    const onEvent = consumer
      ? (m: ViciMessage): void => {
          if (failure) return
          try {
            consumer(m)
          } catch (error) {
            failure = { error }
          }
        }
      : undefined
    // Queued back to back, so nothing else runs on this connection while the stream's event is registered. The
    // unregister is kept even when the stream times out first, so no registration outlives the stream.
    const reg = conn.request({ type: 'EVENT_REGISTER', name: event }, 'event', event, timeoutMs, false)
    const cmd = conn.request({ type: 'CMD_REQUEST', name: command, message }, 'cmd', command, timeoutMs, buffers, event, false, onEvent)
    const unreg = conn.request({ type: 'EVENT_UNREGISTER', name: event }, 'event', event, timeoutMs, false, undefined, true)
    const [r, c, u] = await Promise.allSettled([reg, cmd, unreg])
    if (r.status === 'rejected') throw r.reason
    checkRegistration(event, r.value.packet)
    if (c.status === 'rejected') throw c.reason
    const response = checkResponse(command, c.value.packet)
    if (u.status === 'rejected') throw u.reason
    if (failure) throw (failure as { error: unknown }).error
    return { events: c.value.events, response }
  }

  /**
   * Calls handler(event, message) for each named event, on the event connection. Resolves once charon confirmed
   * every registration; `EVENT_UNKNOWN` for any of them undoes this call's registrations and rejects.
   * Subscriptions survive reconnects (they are re-registered before `reconnected`).
   */
  async subscribe(events: string | readonly string[], handler: ViciEventHandler): Promise<void> {
    const names = typeof events === 'string' ? [events] : [...events]
    await this.connect()
    const conn = await this.eventConnection()
    const added: string[] = []
    try {
      await Promise.all(
        names.map(async (name) => {
          let set = this.subs.get(name)
          const fresh = set === undefined
          if (!set) {
            set = new Set()
            this.subs.set(name, set)
          }
          if (set.has(handler)) return
          set.add(handler)
          added.push(name)
          if (fresh) {
            try {
              await this.register(conn, name)
            } catch (e) {
              this.subs.delete(name)
              added.splice(added.indexOf(name), 1)
              throw e
            }
          }
        }),
      )
    } catch (e) {
      await this.unsubscribe(added, handler).catch(() => undefined)
      throw e
    }
  }

  /** Removes handler (or every handler when omitted) from the events; unregisters events nobody listens to. */
  async unsubscribe(events: string | readonly string[], handler?: ViciEventHandler): Promise<void> {
    const names = typeof events === 'string' ? [events] : [...events]
    const drop: string[] = []
    for (const name of names) {
      const set = this.subs.get(name)
      if (!set) continue
      if (handler) set.delete(handler)
      else set.clear()
      if (set.size === 0) {
        this.subs.delete(name)
        drop.push(name)
      }
    }
    const conn = this.evt
    if (!conn?.alive || this.state !== 'open') return
    await Promise.all(
      drop.map(async (name) => {
        const r = await conn.request({ type: 'EVENT_UNREGISTER', name }, 'event', name, this.timeoutMs, false)
        checkRegistration(name, r.packet)
      }),
    )
  }

  /** Closes both connections; pending calls reject with `closed`. The client cannot be reused. */
  async close(): Promise<void> {
    if (this.state === 'closed') return
    this.state = 'closed'
    clearTimeout(this.reconnectTimer)
    const err = new ViciError('closed', 'VICI client closed')
    this.settleWaiters(err)
    this.cmd?.kill(err)
    this.evt?.kill(err)
    this.cmd = null
    this.evt = null
  }

  private async commandConnection(): Promise<Connection> {
    if (this.state === 'reconnecting') {
      throw new ViciError('closed', 'VICI connection lost; reconnecting (listen for "reconnected")')
    }
    if (this.state !== 'open') await this.connect()
    if (!this.cmd?.alive) throw new ViciError('closed', 'VICI connection lost')
    return this.cmd
  }

  private async register(conn: Connection, name: string): Promise<void> {
    const r = await conn.request({ type: 'EVENT_REGISTER', name }, 'event', name, this.timeoutMs, false)
    checkRegistration(name, r.packet)
  }

  private newConnection(sock: net.Socket, events: boolean): Connection {
    const conn: Connection = new Connection(
      sock,
      this.maxFrameBytes,
      this.lateAnswerMs,
      this.eventBuffers,
      events ? (name, msg) => this.deliver(name, msg) : null,
      (err) => this.lost(conn, err),
    )
    return conn
  }

  /** Opens the command connection, and the event connection with every subscription when there are any. */
  private async open(): Promise<void> {
    const sock = await openSocket(this.socketPath, this.connectTimeoutMs)
    if (this.state === 'closed') {
      sock.destroy()
      throw new ViciError('closed', 'VICI client closed while connecting')
    }
    this.cmd = this.newConnection(sock, false)
    if (this.subs.size === 0) return
    try {
      const evt = await this.openEventConnection()
      await Promise.all([...this.subs.keys()].map((name) => this.register(evt, name)))
      // either connection may have died meanwhile (lost() only forgets it before we are open): start over
      if (!this.cmd?.alive || !this.evt?.alive) throw new ViciError('closed', 'VICI connection lost while connecting')
    } catch (e) {
      const err = e instanceof ViciError ? e : new ViciError('connect', String(e), { cause: e })
      this.cmd?.kill(err)
      this.evt?.kill(err)
      throw err
    }
  }

  private async openEventConnection(): Promise<Connection> {
    const sock = await openSocket(this.socketPath, this.connectTimeoutMs)
    if (this.state === 'closed') {
      sock.destroy()
      throw new ViciError('closed', 'VICI client closed while connecting')
    }
    this.evt = this.newConnection(sock, true)
    return this.evt
  }

  private eventConnection(): Promise<Connection> {
    if (this.evt?.alive) return Promise.resolve(this.evt)
    if (!this.evtConnecting) {
      this.evtConnecting = this.openEventConnection().finally(() => {
        this.evtConnecting = null
      })
    }
    return this.evtConnecting
  }

  private deliver(name: string, msg: ViciMessage): void {
    const set = this.subs.get(name)
    if (!set) return
    for (const h of [...set]) {
      try {
        h(name, msg)
      } catch {
        // a throwing handler must not take the event connection (and every other subscriber) down with it
      }
    }
  }

  /** One of our connections died: the other goes too (charon restarted or the client is out of sync). */
  private lost(conn: Connection, err: ViciError): void {
    if (conn !== this.cmd && conn !== this.evt) return
    if (this.state !== 'open') {
      if (conn === this.cmd) this.cmd = null
      if (conn === this.evt) this.evt = null
      return
    }
    const other = conn === this.cmd ? this.evt : this.cmd
    this.cmd = null
    this.evt = null
    other?.kill(err)
    if (this.reconnectOpts === false) {
      this.state = 'idle'
      this.emit('disconnected', err)
      return
    }
    this.state = 'reconnecting'
    this.emit('disconnected', err)
    this.scheduleReconnect(0, err)
  }

  private settleWaiters(err: ViciError | null): void {
    for (const w of this.reconnectWaiters.splice(0)) {
      if (err) w.reject(err)
      else w.resolve()
    }
  }

  private scheduleReconnect(attempt: number, last: ViciError): void {
    const o = this.reconnectOpts as Required<ReconnectOptions>
    if (attempt >= o.maxAttempts) {
      this.state = 'idle'
      this.settleWaiters(last)
      this.emit('reconnect-failed', last)
      return
    }
    const delay = Math.min(o.initialDelayMs * 2 ** attempt, o.maxDelayMs)
    this.reconnectTimer = setTimeout(() => {
      this.open().then(
        () => {
          if (this.state !== 'reconnecting') return
          this.state = 'open'
          this.settleWaiters(null)
          this.emit('reconnected')
        },
        (e: unknown) => {
          if (this.state !== 'reconnecting') return
          this.scheduleReconnect(attempt + 1, e instanceof ViciError ? e : last)
        },
      )
    }, delay)
  }
}

function checkResponse(command: string, packet: ViciPacket): ViciMessage {
  if (packet.type === 'CMD_UNKNOWN') {
    throw new ViciError('CMD_UNKNOWN', `charon does not know the command ${command}`, { command })
  }
  if (packet.type !== 'CMD_RESPONSE') throw new ViciError('protocol', `${command}: got ${packet.type}`, { command })
  const m = packet.message
  const success = m.success
  if (success !== undefined && String(success) === 'no') {
    const errmsg = m.errmsg === undefined ? 'no error message' : String(m.errmsg)
    throw new ViciError('failed', `${command} failed: ${errmsg}`, { command, response: m })
  }
  return m
}

function checkRegistration(event: string, packet: ViciPacket): void {
  if (packet.type === 'EVENT_UNKNOWN') {
    throw new ViciError('EVENT_UNKNOWN', `charon has no event ${event}`, { command: event })
  }
  if (packet.type !== 'EVENT_CONFIRM') throw new ViciError('protocol', `${event} registration: got ${packet.type}`)
}
