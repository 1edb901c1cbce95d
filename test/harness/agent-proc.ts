// Runs `fabtunnel run` as a real process inside a test namespace (from the TypeScript sources via tsx, so tests
// need no build), with its log in a file, bounded waits on its HTTP endpoints, and kill/restart for chaos tests.
import { spawn, type ChildProcess } from 'node:child_process'
import { createWriteStream, type WriteStream } from 'node:fs'
import { readFile } from 'node:fs/promises'
import { join } from 'node:path'
import type { Netns } from './netns.js'

const ROOT = new URL('../../', import.meta.url).pathname

export interface AgentProcOptions {
  config: string
  vici: string
  cert: string
  key: string
  ca: string
  datapath?: 'xfrm' | 'libipsec'
  listen?: string
  logLevel?: string
  resync?: string
  /** Directory for the log file. */
  dir: string
}

export class AgentProc {
  private child: ChildProcess | null = null
  private exited: Promise<number | null> = Promise.resolve(null)
  private logStream: WriteStream | null = null
  readonly logPath: string
  starts = 0

  constructor(readonly ns: Netns, readonly opts: AgentProcOptions) {
    this.logPath = join(opts.dir, 'fabtunnel.log')
    ns.onDestroy(async () => {
      await this.kill('SIGKILL')
    })
  }

  get listen(): string {
    return this.opts.listen ?? '127.0.0.1:30306'
  }

  get pid(): number | undefined {
    return this.child?.pid
  }

  start(): void {
    if (this.child) throw new Error('agent already running')
    const o = this.opts
    const argv = [
      'netns', 'exec', this.ns.name, process.execPath, '--import', 'tsx', join(ROOT, 'src/cli.ts'), 'run',
      '--config', o.config, '--vici', o.vici, '--cert', o.cert, '--key', o.key, '--ca', o.ca,
      '--datapath', o.datapath ?? 'libipsec', '--listen', this.listen, '--log-level', o.logLevel ?? 'info',
      '--resync-interval', o.resync ?? '60s',
    ]
    this.logStream ??= createWriteStream(this.logPath, { flags: 'a' })
    const child = spawn('ip', argv, { cwd: ROOT, stdio: ['ignore', 'pipe', 'pipe'] })
    child.stdout!.pipe(this.logStream, { end: false })
    child.stderr!.pipe(this.logStream, { end: false })
    this.child = child
    this.starts++
    this.exited = new Promise((resolve) => child.on('exit', (code) => {
      this.child = null
      resolve(code)
    }))
  }

  /** Sends a signal and waits (bounded) for the exit; SIGKILL after the grace period. */
  async kill(signal: NodeJS.Signals = 'SIGTERM', graceMs = 5000): Promise<number | null> {
    const child = this.child
    if (!child) return null
    child.kill(signal)
    const timer = setTimeout(() => child.kill('SIGKILL'), graceMs)
    const code = await this.exited
    clearTimeout(timer)
    return code
  }

  async stop(): Promise<void> {
    await this.kill('SIGTERM')
    this.logStream?.end()
    this.logStream = null
  }

  /** GET a path of the agent's HTTP server from inside the namespace. */
  async get(path: string, timeoutMs = 3000): Promise<{ status: number; body: string }> {
    const script = `fetch(${JSON.stringify(`http://${this.listen}${path}`)},{signal:AbortSignal.timeout(${timeoutMs})}).then(async r=>{process.stdout.write(JSON.stringify({status:r.status,body:await r.text()}))},e=>{process.stdout.write(JSON.stringify({status:0,body:String(e)}))})`
    const r = await this.ns.capture([process.execPath, '-e', script], { timeoutMs: timeoutMs + 5000 })
    try {
      return JSON.parse(r.stdout) as { status: number; body: string }
    } catch {
      return { status: 0, body: r.stderr }
    }
  }

  async status(): Promise<any> {
    const r = await this.get('/status')
    if (r.status !== 200) throw new Error(`/status answered ${r.status}: ${r.body}`)
    return JSON.parse(r.body)
  }

  /** Polls `check` every `intervalMs` until it returns a truthy value or `timeoutMs` passes. */
  async waitFor<T>(what: string, check: () => Promise<T | undefined | false>, timeoutMs = 20_000, intervalMs = 50): Promise<T> {
    const deadline = Date.now() + timeoutMs
    let last: unknown
    while (Date.now() < deadline) {
      try {
        const v = await check()
        if (v) return v
      } catch (err) {
        last = err
      }
      await new Promise((r) => setTimeout(r, intervalMs))
    }
    throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}${last ? ` (last error: ${(last as Error).message})` : ''}\n--- agent log tail ---\n${await this.logTail()}`)
  }

  async logTail(lines = 40): Promise<string> {
    return (await readFile(this.logPath, 'utf8').catch(() => '')).split('\n').slice(-lines).join('\n')
  }
}
