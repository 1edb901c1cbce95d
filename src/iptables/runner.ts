// Runs the iptables tools: binary discovery, backend detection (nft vs legacy, the way kube-proxy's
// iptables-wrapper decides), `iptables-save -t <table>` reads and `iptables-restore -w 5 --noflush` writes, for
// both families. Argument arrays only, never a shell; the exec function is injectable so unit tests use a fake.
// Counts every read and write so the daemon and tests can assert that a converged pass writes nothing.
import { readFile } from 'node:fs/promises'
import { spawn } from 'node:child_process'
import { accessSync, constants } from 'node:fs'
import { delimiter, join } from 'node:path'
import type { Family } from '../fabedge.js'
import { IptablesError, type RestoreFailure } from './errors.js'

export type Backend = 'nft' | 'legacy'

export interface ExecResult {
  code: number | null
  signal: NodeJS.Signals | null
  stdout: string
  stderr: string
}

/** Runs argv (no shell) with optional stdin; resolves whatever the exit code; rejects only if it cannot run. */
export type ExecFn = (argv: readonly string[], opts: { input?: string; timeoutMs: number }) => Promise<ExecResult>

/**
 * The environment the tools run with: this process's, copied once. Without `env`, every spawn copies process.env
 * entry by entry through its native accessors (~1 ms of CPU per spawn; a cold start runs six).
 */
let toolEnv: NodeJS.ProcessEnv | undefined

export const execSpawn: ExecFn = (argv, opts) =>
  new Promise((resolve, reject) => {
    toolEnv ??= { ...process.env }
    // No stdin pipe without input (iptables-save): each pipe is a socket to set up and tear down.
    const child = spawn(argv[0]!, argv.slice(1), { stdio: [opts.input === undefined ? 'ignore' : 'pipe', 'pipe', 'pipe'], env: toolEnv })
    const out: Buffer[] = []
    const err: Buffer[] = []
    child.stdout!.on('data', (b: Buffer) => out.push(b))
    child.stderr!.on('data', (b: Buffer) => err.push(b))
    const timer = setTimeout(() => {
      child.kill('SIGKILL')
      reject(new IptablesError('timeout', `${argv[0]} did not finish within ${opts.timeoutMs} ms`))
    }, opts.timeoutMs)
    child.on('error', (e: NodeJS.ErrnoException) => {
      clearTimeout(timer)
      reject(
        e.code === 'ENOENT'
          ? new IptablesError('ENOENT', `${argv[0]} not found`, { cause: e })
          : new IptablesError('exec-failed', `cannot run ${argv[0]}: ${e.message}`, { cause: e }),
      )
    })
    child.on('close', (code, signal) => {
      clearTimeout(timer)
      resolve({ code, signal, stdout: Buffer.concat(out).toString('utf8'), stderr: Buffer.concat(err).toString('utf8') })
    })
    if (opts.input !== undefined) {
      child.stdin!.on('error', () => {})
      child.stdin!.end(opts.input)
    }
  })

export interface BackendInfo {
  backend: Backend
  /** One sentence for status and logs: why this backend. */
  reason: string
}

export interface IptablesCounters {
  /** iptables-save runs. */
  saves: number
  /** Real iptables-restore runs (writes). A converged pass adds 0. */
  restores: number
  /** `iptables-restore --test` dry runs that precede each write. */
  tests: number
  /** Jump rules inserted or deleted. */
  jumpWrites: number
  /** Own chains replaced, flushed or deleted. */
  chainWrites: number
  /** Writes iptables-restore rejected. */
  failures: number
}

export interface IptablesRunnerOptions {
  exec?: ExecFn
  /** Where binaries are looked for; default $PATH then /usr/sbin, /sbin, /usr/bin, /bin (daemons often lack sbin). */
  searchPath?: string[]
  /** Use this backend instead of detecting one. */
  backend?: Backend
  /** Seconds iptables-restore waits for the xtables lock (`-w`). */
  waitSeconds?: number
  timeoutMs?: number
  /**
   * Names of the legacy (x_tables) tables in use in this network namespace, as /proc/net/ip_tables_names and
   * ip6_tables_names list them. Injected by tests; the default reads /proc.
   */
  legacyTables?: () => Promise<string[]>
}

/** Legacy tables exist in a namespace only once iptables-legacy has been used there (nft never creates them). */
async function procLegacyTables(): Promise<string[]> {
  const read = (f: string): Promise<string> => readFile(f, 'utf8').catch(() => '')
  const text = (await read('/proc/net/ip_tables_names')) + (await read('/proc/net/ip6_tables_names'))
  return text.split('\n').filter(Boolean)
}

type Tool = 'save' | 'restore'
const TABLE_NAME = /^(filter|nat|mangle|raw|security)$/
const HINT_CHAINS = /^:(KUBE-IPTABLES-HINT|KUBE-KUBELET-CANARY) /m

function familyCmd(family: Family): string {
  if (family !== 4 && family !== 6) throw new IptablesError('bad-input', `bad family ${String(family)}`)
  return family === 6 ? 'ip6tables' : 'iptables'
}

/** Lines a save output holds that are rules (`-A ...`), the measure iptables-wrapper compares. */
function ruleCount(save: string): number {
  let n = 0
  for (const line of save.split('\n')) if (line.startsWith('-')) n++
  return n
}

/** The failing line iptables-restore named, with two lines of context either side from our payload. */
export function restoreFailure(payload: string, stderr: string): RestoreFailure {
  const m = /Error occurred at line: (\d+)/.exec(stderr) ?? /line (\d+) failed/.exec(stderr)
  if (!m) return { stderr: stderr.trim() }
  const line = Number(m[1])
  const lines = payload.split('\n')
  const ctx: string[] = []
  for (let n = Math.max(1, line - 2); n <= Math.min(lines.length, line + 2); n++) {
    if (n === lines.length && lines[n - 1] === '') break
    ctx.push(`${n === line ? '>' : ' '} ${n}: ${lines[n - 1]}`)
  }
  return { line, context: ctx.join('\n'), stderr: stderr.trim() }
}

export class IptablesRunner {
  readonly counters: IptablesCounters = { saves: 0, restores: 0, tests: 0, jumpWrites: 0, chainWrites: 0, failures: 0 }
  private readonly queues = new Map<Family, Promise<unknown>>()

  private constructor(
    readonly info: BackendInfo,
    private readonly exec: ExecFn,
    private readonly binaries: Map<string, string>,
    private readonly waitSeconds: number,
    private readonly timeoutMs: number,
  ) {}

  /** Finds the binaries and picks the backend. Throws ENOENT when no iptables-restore exists at all. */
  static async create(opts: IptablesRunnerOptions = {}): Promise<IptablesRunner> {
    const exec = opts.exec ?? execSpawn
    const timeoutMs = opts.timeoutMs ?? 30_000
    const dirs = opts.searchPath ?? [...(process.env.PATH ?? '').split(delimiter), '/usr/sbin', '/sbin', '/usr/bin', '/bin']
    const find = (name: string): string | null => {
      for (const d of dirs) {
        if (!d) continue
        const p = join(d, name)
        try {
          accessSync(p, constants.X_OK)
          return p
        } catch {
          // not in this directory
        }
      }
      return null
    }
    const binaries = new Map<string, string>()
    const has: Record<Backend, boolean> = { nft: false, legacy: false }
    for (const backend of ['nft', 'legacy'] as const) {
      for (const fam of ['iptables', 'ip6tables']) {
        for (const tool of ['save', 'restore'] as const) {
          const p = find(`${fam}-${backend}-${tool}`)
          if (p) binaries.set(`${backend} ${fam}-${tool}`, p)
        }
      }
      has[backend] = binaries.has(`${backend} iptables-restore`) && binaries.has(`${backend} iptables-save`)
    }
    let info: BackendInfo
    if (opts.backend) {
      info = { backend: opts.backend, reason: `${opts.backend} chosen by configuration` }
    } else if (has.nft && has.legacy) {
      // No legacy table in this namespace: nothing can live there, so no save needs to run (4 process spawns
      // saved at every start). Otherwise compare both backends like kube-proxy's iptables-wrapper.
      const legacyTables = await (opts.legacyTables ?? procLegacyTables)()
      info = legacyTables.length === 0
        ? { backend: 'nft', reason: 'no legacy xtables table in this network namespace; nft is the default' }
        : await detect(exec, binaries, timeoutMs)
    } else if (has.nft || has.legacy) {
      const b: Backend = has.nft ? 'nft' : 'legacy'
      info = { backend: b, reason: `only iptables-${b} is installed` }
    } else {
      // Before iptables 1.8 there were no -nft/-legacy names: the plain tools are the legacy backend.
      const plain = find('iptables-restore')
      if (!plain) {
        throw new IptablesError(
          'ENOENT',
          `iptables-restore not found (looked for iptables-nft-restore, iptables-legacy-restore and iptables-restore in ${dirs.filter(Boolean).join(':')}); install the iptables package`,
        )
      }
      const v = await exec([plain, '--version'], { timeoutMs })
      const b: Backend = /nf_tables/.test(v.stdout + v.stderr) ? 'nft' : 'legacy'
      for (const fam of ['iptables', 'ip6tables']) {
        for (const tool of ['save', 'restore'] as const) {
          const p = find(`${fam}-${tool}`)
          if (p) binaries.set(`${b} ${fam}-${tool}`, p)
        }
      }
      info = { backend: b, reason: `plain iptables-restore reports the ${b} backend` }
    }
    return new IptablesRunner(info, exec, binaries, opts.waitSeconds ?? 5, timeoutMs)
  }

  get backend(): Backend {
    return this.info.backend
  }

  /** Path of the save or restore tool for a family on the chosen backend; ENOENT when it is not installed. */
  binary(family: Family, tool: Tool): string {
    const name = `${familyCmd(family)}-${tool}`
    const p = this.binaries.get(`${this.info.backend} ${name}`)
    if (!p) throw new IptablesError('ENOENT', `${familyCmd(family)}-${this.info.backend}-${tool} not found; install the iptables package`)
    return p
  }

  /**
   * Runs fn after every earlier exclusive fn of the same family has settled. A plan is only valid against the
   * state it observed: two overlapping observe-plan-apply passes would both insert a missing jump.
   */
  exclusive<T>(family: Family, fn: () => Promise<T>): Promise<T> {
    const prev = this.queues.get(family) ?? Promise.resolve()
    const run = prev.then(fn, fn)
    this.queues.set(family, run.catch(() => undefined))
    return run
  }

  /** `iptables-save [-t <table>]` (ip6tables-save for family 6); without a table, every table in one exec. */
  async save(family: Family, table?: string): Promise<string> {
    if (table !== undefined && !TABLE_NAME.test(table)) throw new IptablesError('bad-input', `bad table ${JSON.stringify(table)}`)
    const argv = [this.binary(family, 'save'), ...(table === undefined ? [] : ['-t', table])]
    const r = await this.exec(argv, { timeoutMs: this.timeoutMs })
    this.counters.saves++
    if (r.code !== 0) {
      throw new IptablesError('save-failed', `${argv.join(' ')} exited ${r.code ?? r.signal}: ${r.stderr.trim()}`)
    }
    return r.stdout
  }

  /**
   * `iptables-restore -w N --noflush [--test]` with the payload on stdin. A rejection becomes `restore-failed`
   * carrying the failing line and its context; each table in the payload is committed on its own, so callers that
   * need all-or-nothing run a `test` pass first (the kernel keeps the previous rules when the dry run fails).
   */
  async restore(family: Family, payload: string, opts: { test?: boolean } = {}): Promise<void> {
    const argv = [this.binary(family, 'restore'), '-w', String(this.waitSeconds), '--noflush']
    if (opts.test) argv.push('--test')
    const r = await this.exec(argv, { input: payload, timeoutMs: this.timeoutMs })
    if (opts.test) this.counters.tests++
    else this.counters.restores++
    if (r.code !== 0) {
      this.counters.failures++
      const failure = restoreFailure(payload, r.stderr)
      const where = failure.line ? ` at line ${failure.line}:\n${failure.context}` : ''
      throw new IptablesError('restore-failed', `${argv.join(' ')} failed${where}\n${failure.stderr}`, { restore: failure })
    }
  }
}

/**
 * kube-proxy's iptables-wrapper rule: the backend kubelet marked with its hint chains wins; otherwise the one
 * holding more rules (both families); a tie, including an empty host, means nft.
 */
async function detect(exec: ExecFn, binaries: Map<string, string>, timeoutMs: number): Promise<BackendInfo> {
  const dump = async (backend: Backend): Promise<string> => {
    let text = ''
    for (const fam of ['iptables', 'ip6tables']) {
      const p = binaries.get(`${backend} ${fam}-save`)
      if (!p) continue
      const r = await exec([p], { timeoutMs }).catch(() => null)
      if (r && r.code === 0) text += r.stdout
    }
    return text
  }
  const nft = await dump('nft')
  const legacy = await dump('legacy')
  const hintNft = HINT_CHAINS.test(nft)
  const hintLegacy = HINT_CHAINS.test(legacy)
  if (hintNft !== hintLegacy) {
    const b: Backend = hintNft ? 'nft' : 'legacy'
    return { backend: b, reason: `kubelet's hint chain is in the ${b} tables` }
  }
  const n = ruleCount(nft)
  const l = ruleCount(legacy)
  if (l > n) return { backend: 'legacy', reason: `legacy tables hold ${l} rules, nft ${n}` }
  return { backend: 'nft', reason: n > 0 ? `nft tables hold ${n} rules, legacy ${l}` : 'no rules in either backend; nft is the default' }
}
