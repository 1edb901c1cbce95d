// The one kernel setting the edge agent owns: net.ipv4.ip_forward=1, set once at start like FabEdge's agent
// (pkg/agent/manager.go `ensureSysctlParameters` → pkg/agent/utils.go `ensureSysctl("net/ipv4/ip_forward", 1)`,
// which writes only when the value differs). /proc/sys/net is per network namespace: this is the agent's own
// namespace (the host's, for a hostNetwork pod).
import { readFile, writeFile } from 'node:fs/promises'

export const IP_FORWARD = '/proc/sys/net/ipv4/ip_forward'

export class SysctlError extends Error {
  override readonly name = 'SysctlError'
  constructor(readonly code: 'EREAD' | 'EWRITE' | 'EVERIFY', readonly path: string, message: string, options?: { cause?: unknown }) {
    super(message, options)
  }
}

export interface SysctlFs {
  read(path: string): Promise<string>
  write(path: string, value: string): Promise<void>
}

export const realSysctlFs: SysctlFs = {
  read: (path) => readFile(path, 'utf8'),
  write: (path, value) => writeFile(path, value),
}

/**
 * Ensures `path` holds `value` (a /proc/sys file): reads it, writes only when different, reads it back. Resolves
 * with the previous value when it changed it, or null when it was already set; throws SysctlError.
 */
export async function sysctlEnsure(path: string, value: string, fs: SysctlFs = realSysctlFs): Promise<string | null> {
  const read = async () => {
    try {
      return (await fs.read(path)).trim()
    } catch (err) {
      throw new SysctlError('EREAD', path, `cannot read ${path}: ${(err as Error).message}`, { cause: err })
    }
  }
  const before = await read()
  if (before === value) return null
  try {
    await fs.write(path, `${value}\n`)
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code
    const hint = code === 'EROFS' || code === 'EACCES' || code === 'EPERM' ? ' (is /proc/sys read-only? the container must be privileged or have NET_ADMIN with a writable /proc/sys)' : ''
    throw new SysctlError('EWRITE', path, `cannot set ${path} to ${value}: ${(err as Error).message}${hint}`, { cause: err })
  }
  const after = await read()
  if (after !== value) throw new SysctlError('EVERIFY', path, `${path} is ${after} after writing ${value}`)
  return before
}
