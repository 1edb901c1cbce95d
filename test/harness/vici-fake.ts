// A scripted fake VICI server on a real unix socket, for unit tests of the client's logic (ordering, timeouts,
// events, broken frames, reconnect). It speaks the wire format through the real codec; what it answers is up to
// the test's script. Never a stand-in for charon in integration tests.
import { mkdtemp, rm } from 'node:fs/promises'
import net from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { FrameReader, decodePacket, encodeFrame, type ViciPacket, type ViciPacketInput } from '../../src/vici/codec.js'

export interface FakeConn {
  readonly id: number
  send(p: ViciPacketInput): void
  sendRaw(b: Buffer): void
  destroy(): void
}

export type FakeScript = (conn: FakeConn, packet: ViciPacket) => void

export class FakeVici {
  /** Every packet received, in arrival order, with the id of the connection it came on. */
  readonly received: Array<{ conn: number; packet: ViciPacket }> = []
  private server: net.Server | null = null
  private readonly sockets = new Set<net.Socket>()
  private nextId = 1

  private constructor(
    private readonly dir: string,
    public script: FakeScript,
  ) {}

  static async start(script: FakeScript): Promise<FakeVici> {
    const f = new FakeVici(await mkdtemp(join(tmpdir(), 'ft-vfake-')), script)
    await f.listen()
    return f
  }

  get path(): string {
    return join(this.dir, 'charon.vici')
  }

  get uri(): string {
    return `unix://${this.path}`
  }

  /** Open connections right now. */
  get connections(): number {
    return this.sockets.size
  }

  async listen(): Promise<void> {
    await rm(this.path, { force: true })
    const server = net.createServer((sock) => this.accept(sock))
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject)
      server.listen(this.path, () => resolve())
    })
    this.server = server
  }

  /** Drops every connection and stops listening (like charon exiting); the socket path is removed. */
  async stop(): Promise<void> {
    for (const s of this.sockets) s.destroy()
    this.sockets.clear()
    const server = this.server
    this.server = null
    if (server) await new Promise<void>((r) => server.close(() => r()))
    await rm(this.path, { force: true })
  }

  async destroy(): Promise<void> {
    await this.stop()
    await rm(this.dir, { recursive: true, force: true })
  }

  private accept(sock: net.Socket): void {
    this.sockets.add(sock)
    sock.on('close', () => this.sockets.delete(sock))
    sock.on('error', () => undefined)
    const conn: FakeConn = {
      id: this.nextId++,
      send: (p) => {
        if (!sock.destroyed) sock.write(encodeFrame(p))
      },
      sendRaw: (b) => {
        if (!sock.destroyed) sock.write(b)
      },
      destroy: () => sock.destroy(),
    }
    // charon's limit (DEFAULT_MAX_FRAME_BYTES); like charon, a frame over it or bytes it cannot parse end the
    // connection (vici_socket.c do_read), never the test process.
    const reader = new FrameReader()
    sock.on('data', (chunk: Buffer) => {
      let frames: Buffer[]
      try {
        frames = reader.push(chunk)
      } catch {
        sock.destroy()
        return
      }
      for (const frame of frames) {
        const packet = decodePacket(frame)
        this.received.push({ conn: conn.id, packet })
        this.script(conn, packet)
      }
    })
  }
}

/** A script answering like charon would for registrations and unknown commands; `commands` handles the rest. */
export function charonLike(commands: Record<string, (c: FakeConn, p: Extract<ViciPacket, { type: 'CMD_REQUEST' }>) => void>, events: readonly string[] = []): FakeScript {
  return (conn, p) => {
    if (p.type === 'EVENT_REGISTER' || p.type === 'EVENT_UNREGISTER') {
      conn.send({ type: events.includes(p.name) ? 'EVENT_CONFIRM' : 'EVENT_UNKNOWN' })
    } else if (p.type === 'CMD_REQUEST') {
      const h = commands[p.name]
      if (h) h(conn, p)
      else conn.send({ type: 'CMD_UNKNOWN' })
    }
  }
}
