// Restarting charon as the last resort of mediation recovery (recovery.ts rule 4): the only way to clear
// strongSwan's connect_manager. The agent never starts charon; it asks the process to exit (SIGTERM, the way
// `swanctl`-less tooling and systemd stop it) and relies on its supervisor to start it again: systemd
// (`Restart=always`, deploy's unit), or the kubelet for the strongSwan sidecar, which needs
// `shareProcessNamespace: true` in the pod so the pid in charon's pid file is a pid the agent can see.
// The pid is checked to be a process named `charon` before the signal: in a pod without a shared process
// namespace the number in the file belongs to another namespace and may name one of ours (pid 1: the agent).
import { readFile } from 'node:fs/promises'

export class CharonRestartError extends Error {
  override readonly name = 'CharonRestartError'
  constructor(readonly code: 'ENOPIDFILE' | 'EBADPID' | 'ENOTCHARON' | 'EKILL', message: string, options?: { cause?: unknown }) {
    super(message, options)
  }
}

export interface CharonRestarter {
  /** Where the pid comes from, for logs. */
  readonly describe: string
  /** Asks charon to exit; resolves once the signal was sent. */
  restart(): Promise<number>
}

export interface ProcessIo {
  readFile(path: string): Promise<string>
  kill(pid: number, signal: NodeJS.Signals): void
}

const realIo: ProcessIo = { readFile: (p) => readFile(p, 'utf8'), kill: (pid, sig) => process.kill(pid, sig) }

/** A restarter that signals the pid in `pidfile` (charon's compiled-in default is /var/run/charon.pid). */
export function pidfileRestarter(pidfile: string, io: ProcessIo = realIo, procRoot = '/proc'): CharonRestarter {
  return {
    describe: `SIGTERM to the pid in ${pidfile}`,
    async restart() {
      const text = await io.readFile(pidfile).catch((err: unknown) => {
        throw new CharonRestartError('ENOPIDFILE', `cannot read charon's pid file ${pidfile}: ${(err as Error).message}`, { cause: err })
      })
      const t = text.trim()
      if (!/^[1-9][0-9]{0,9}$/.test(t)) throw new CharonRestartError('EBADPID', `${pidfile} holds no pid: "${t.slice(0, 40)}"`)
      const pid = Number(t)
      if (pid === process.pid) throw new CharonRestartError('ENOTCHARON', `${pidfile} names this agent (pid ${pid}): charon's pid namespace is not ours`)
      const comm = (await io.readFile(`${procRoot}/${pid}/comm`).catch(() => '')).trim()
      if (comm !== 'charon') {
        throw new CharonRestartError('ENOTCHARON', `pid ${pid} from ${pidfile} is ${comm ? `"${comm}"` : 'no process we can see'}, not charon (a sidecar needs shareProcessNamespace)`)
      }
      try {
        io.kill(pid, 'SIGTERM')
      } catch (err) {
        throw new CharonRestartError('EKILL', `SIGTERM to charon (pid ${pid}): ${(err as Error).message}`, { cause: err })
      }
      return pid
    },
  }
}
