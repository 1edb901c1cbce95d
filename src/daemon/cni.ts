// The edge node's CNI network config: `<dir>/<network name>.conflist` (FabEdge: /etc/cni/net.d/fabedge.conflist),
// which kubelet/edgecore hands to the bridge + host-local plugins to give edge pods their addresses. Owns that one
// file and nothing else in the directory.
//
// Content is byte-identical to FabEdge's: pkg/agent/manager.go `generateCNIConfig` marshals the structs of
// pkg/agent/types.go (`CNINetConf`, `BridgeConfig`, `IPAMConfig`, `RangeSet`, `Range`, `CapbilitiesConfig`) with
// `json.MarshalIndent(cni, "", "  ")` and writes it with `ioutil.WriteFile(filename, data, 0644)` (no trailing
// newline), one `ranges` entry per subnet of the local endpoint (FabEdge v1.0.0, 534028fcfe79).
// FabEdge writes it on every pass after `ensureConnections` succeeds; here it is written after a pass in which the
// tunnels subsystem did not fail, and only when the file on disk differs from the wanted content (so never on an
// unrelated config change, never on restart), atomically (temp file in the same directory, fsync, rename).
import { randomBytes } from 'node:crypto'
import { mkdir, open, readFile, rename, unlink } from 'node:fs/promises'
import { dirname, join } from 'node:path'
import { isoTime } from '../iso-time.js'

export interface CniOptions {
  /** Directory of the conflist; empty: the conflist is not managed. */
  confDir: string
  networkName: string
  bridgeName: string
  mtu: number
  hairpinMode: boolean
  cniVersion: string
}

export const CNI_DEFAULTS = {
  networkName: 'fabedge',
  bridgeName: 'br-fabedge',
  mtu: 1400,
  hairpinMode: true,
  cniVersion: '0.3.1',
} as const

export class CniError extends Error {
  override readonly name = 'CniError'
  constructor(readonly code: 'EINVAL' | 'EREAD' | 'EWRITE', readonly path: string, message: string, options?: { cause?: unknown }) {
    super(message, options)
  }
}

/** CNI spec network-name syntax (also keeps the file name inside the directory). */
const NETWORK_NAME = /^[a-zA-Z0-9][a-zA-Z0-9_.-]*$/
/** Linux interface names: at most 15 bytes, no '/', whitespace or ':'. */
const IFNAME = /^[a-zA-Z0-9_.-]{1,15}$/
const VERSION = /^\d+\.\d+\.\d+$/

/** Checks the options before anything reaches the filesystem; throws CniError('EINVAL') naming the flag. */
export function validateCniOptions(o: CniOptions): void {
  const bad = (flag: string, why: string) => new CniError('EINVAL', o.confDir, `--${flag}: ${why}`)
  if (o.confDir !== '' && !o.confDir.startsWith('/')) throw bad('cni-conf-path', `must be an absolute directory, got "${o.confDir}"`)
  if (!NETWORK_NAME.test(o.networkName)) throw bad('cni-network-name', `must match ${NETWORK_NAME.source}, got "${o.networkName}"`)
  if (!IFNAME.test(o.bridgeName) || o.bridgeName === '.' || o.bridgeName === '..') throw bad('cni-bridge-name', `must be a Linux interface name (1-15 of [a-zA-Z0-9_.-]), got "${o.bridgeName}"`)
  if (!Number.isInteger(o.mtu) || o.mtu < 0 || o.mtu > 65535) throw bad('network-plugin-mtu', `must be 0..65535 (0 leaves mtu out), got "${o.mtu}"`)
  if (!VERSION.test(o.cniVersion)) throw bad('cni-version', `must look like 0.3.1, got "${o.cniVersion}"`)
}

export function conflistPath(o: CniOptions): string {
  return join(o.confDir, `${o.networkName}.conflist`)
}

/**
 * Go's encoding/json escapes <, >, & and U+2028/U+2029 inside strings (HTMLEscape); JSON.stringify does not.
 * Outside strings JSON text never holds these characters, so replacing them everywhere is exact.
 */
function goEscape(json: string): string {
  return json.replace(/[<>&\u2028\u2029]/g, (c) => `\\u${c.charCodeAt(0).toString(16).padStart(4, '0')}`)
}

/**
 * The conflist FabEdge writes for these subnets and options: the structs' field order, `omitempty` honoured
 * (`isGateway` is never set; `hairpinMode` false and `mtu` 0 are left out; empty `cniVersion`/`name` too), a nil
 * `ranges` slice (no subnets) marshals as null.
 */
export function renderConflist(o: Omit<CniOptions, 'confDir'>, subnets: readonly string[]): string {
  const bridge: Record<string, unknown> = { type: 'bridge', bridge: o.bridgeName, isDefaultGateway: true, forceAddress: true }
  if (o.hairpinMode) bridge.hairpinMode = true
  if (o.mtu !== 0) bridge.mtu = o.mtu
  bridge.ipam = { type: 'host-local', ranges: subnets.length ? subnets.map((subnet) => [{ subnet }]) : null }
  const conf: Record<string, unknown> = {}
  if (o.cniVersion !== '') conf.cniVersion = o.cniVersion
  if (o.networkName !== '') conf.name = o.networkName
  conf.plugins = [bridge, { type: 'portmap', capabilities: { portMappings: true } }, { type: 'bandwidth', capabilities: { bandwidth: true } }]
  return goEscape(JSON.stringify(conf, null, 2))
}

/** The filesystem as the conflist needs it (the real one below; unit tests use a fake for every fault path). */
export interface CniFs {
  /** The file's content, or null when it does not exist. */
  read(path: string): Promise<string | null>
  /** Replaces the file atomically with `content`, mode `mode`, creating the directory when missing. */
  writeAtomic(path: string, content: string, mode: number): Promise<void>
}

export const realCniFs: CniFs = {
  async read(path) {
    try {
      return await readFile(path, 'utf8')
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return null
      throw err
    }
  },
  async writeAtomic(path, content, mode) {
    const dir = dirname(path)
    await mkdir(dir, { recursive: true, mode: 0o755 })
    // A dot-name without the .conflist/.conf/.json suffix: the container runtime never loads a half-written temp.
    const tmp = join(dir, `.${randomBytes(6).toString('hex')}.fabtunnel-tmp`)
    const fh = await open(tmp, 'wx', mode)
    try {
      await fh.writeFile(content)
      await fh.chmod(mode) // the umask must not narrow 0644
      await fh.sync()
    } catch (err) {
      await fh.close().catch(() => undefined)
      await unlink(tmp).catch(() => undefined)
      throw err
    }
    await fh.close()
    try {
      await rename(tmp, path)
    } catch (err) {
      await unlink(tmp).catch(() => undefined)
      throw err
    }
    // The rename itself survives a crash only once the directory is synced.
    const d = await open(dir, 'r')
    try {
      await d.sync()
    } finally {
      await d.close()
    }
  },
}

export interface CniStatus {
  path: string
  /** When this process last wrote the file (null: not yet, or the file on disk was already right). */
  writtenAt: string | null
  /** When the file on disk last matched the wanted content. */
  inSyncAt: string | null
  subnets: string[]
  writes: number
  error: string | null
}

/** Keeps the conflist equal to the wanted content; `sync` runs after each pass whose tunnels did not fail. */
export class CniConflist {
  private readonly state: CniStatus

  constructor(private readonly o: CniOptions, private readonly fs: CniFs = realCniFs, private readonly now: () => number = Date.now) {
    validateCniOptions(o)
    this.state = { path: conflistPath(o), writtenAt: null, inSyncAt: null, subnets: [], writes: 0, error: null }
  }

  get status(): CniStatus {
    return { ...this.state, subnets: [...this.state.subnets] }
  }

  /**
   * Makes the file hold the conflist for `subnets`. Resolves with whether it wrote; throws CniError (also kept in
   * `status.error` until a later sync succeeds).
   */
  async sync(subnets: readonly string[]): Promise<boolean> {
    const path = this.state.path
    const content = renderConflist(this.o, subnets)
    this.state.subnets = [...subnets]
    let onDisk: string | null
    try {
      onDisk = await this.fs.read(path)
    } catch (err) {
      throw this.fail(new CniError('EREAD', path, `cannot read ${path}: ${(err as Error).message}`, { cause: err }))
    }
    const at = isoTime(this.now())
    if (onDisk === content) {
      this.state.inSyncAt = at
      this.state.error = null
      return false
    }
    try {
      await this.fs.writeAtomic(path, content, 0o644)
    } catch (err) {
      throw this.fail(new CniError('EWRITE', path, `cannot write ${path}: ${(err as Error).message}`, { cause: err }))
    }
    this.state.writtenAt = at
    this.state.inSyncAt = at
    this.state.writes++
    this.state.error = null
    return true
  }

  private fail(err: CniError): CniError {
    this.state.error = err.message
    return err
  }
}
