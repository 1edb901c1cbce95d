// Child-process helpers for tests and harness code: argument arrays only (never a shell), every call bounded
// by a timeout, output captured. A non-zero exit is an error that carries the command line and stderr.
import { spawn } from 'node:child_process'

export interface ExecResult {
  code: number | null
  signal: NodeJS.Signals | null
  stdout: string
  stderr: string
}

export interface ExecOptions {
  timeoutMs?: number
  input?: string | Buffer
  env?: NodeJS.ProcessEnv
  cwd?: string
}

export class ExecError extends Error {
  constructor(
    message: string,
    readonly argv: readonly string[],
    readonly result: ExecResult,
  ) {
    super(message)
    this.name = 'ExecError'
  }
}

/** Runs argv[0] with the rest as arguments; resolves whatever the exit code is. */
export function execCapture(argv: readonly string[], opts: ExecOptions = {}): Promise<ExecResult> {
  const timeoutMs = opts.timeoutMs ?? 30_000
  return new Promise((resolve, reject) => {
    const child = spawn(argv[0]!, argv.slice(1), {
      stdio: ['pipe', 'pipe', 'pipe'],
      env: opts.env ?? process.env,
      cwd: opts.cwd,
    })
    const out: Buffer[] = []
    const err: Buffer[] = []
    child.stdout.on('data', (b: Buffer) => out.push(b))
    child.stderr.on('data', (b: Buffer) => err.push(b))
    const timer = setTimeout(() => {
      child.kill('SIGKILL')
      reject(new Error(`timed out after ${timeoutMs} ms: ${argv.join(' ')}`))
    }, timeoutMs)
    child.on('error', (e) => {
      clearTimeout(timer)
      reject(e)
    })
    child.on('close', (code, signal) => {
      clearTimeout(timer)
      resolve({
        code,
        signal,
        stdout: Buffer.concat(out).toString('utf8'),
        stderr: Buffer.concat(err).toString('utf8'),
      })
    })
    child.stdin.on('error', () => {})
    child.stdin.end(opts.input ?? '')
  })
}

/** Like execCapture, but a non-zero exit rejects with an ExecError naming the command and its stderr. */
export async function exec(argv: readonly string[], opts: ExecOptions = {}): Promise<string> {
  const r = await execCapture(argv, opts)
  if (r.code !== 0) {
    throw new ExecError(
      `command failed (exit ${r.code ?? r.signal}): ${argv.join(' ')}\n${r.stderr.trim()}`,
      argv,
      r,
    )
  }
  return r.stdout
}
