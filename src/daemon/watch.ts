// Watches the directories holding the config and the credentials. Kubelet updates a ConfigMap or Secret mount by
// swapping the `..data` symlink, and editors save by rename, so watching a file's inode loses it after the first
// update (FabEdge's edge agent has exactly that bug): we watch the directory and let the content hash decide.
import { basename, dirname, resolve } from 'node:path'
import chokidar, { type FSWatcher } from 'chokidar'

export interface DirWatch {
  /** Settles once every directory is scanned and watched (a change after this is never missed), or on close(). */
  ready: Promise<void>
  close(): Promise<void>
}

/**
 * Calls `onChange(kind)` when one of the files changes in its directory (written, replaced by rename, removed) or
 * when kubelet swaps the directory's `..data` (then for every kind in that directory). Other entries of the
 * directory are ignored: `--config /etc/tunnels.yaml` must not wake the agent for every write to /etc.
 */
export function watchFiles(files: Array<{ path: string; kind: string }>, onChange: (kind: string) => void, onError: (err: unknown) => void): DirWatch {
  const byDir = new Map<string, Map<string, Set<string>>>()
  for (const f of files) {
    const abs = resolve(f.path)
    const names = byDir.get(dirname(abs)) ?? new Map<string, Set<string>>()
    byDir.set(dirname(abs), names)
    names.set(basename(abs), (names.get(basename(abs)) ?? new Set()).add(f.kind))
  }
  const watchers: FSWatcher[] = []
  const ready: Array<Promise<void>> = []
  let closed!: () => void
  const closing = new Promise<void>((done) => { closed = done })
  for (const [dir, names] of byDir) {
    const every = new Set([...names.values()].flatMap((k) => [...k]))
    const w = chokidar.watch(dir, { depth: 0, ignoreInitial: true, followSymlinks: false, persistent: true })
    w.on('all', (_event, path) => {
      // Kubelet's atomic writer touches only `..data`, `..data_tmp` and `..<timestamp>`; the key symlinks stay put.
      const name = basename(path)
      const kinds = name.startsWith('..') ? every : names.get(name)
      for (const k of kinds ?? []) onChange(k)
    })
    w.on('error', onError)
    ready.push(new Promise<void>((done) => {
      w.once('ready', done)
      void closing.then(done)
    }))
    watchers.push(w)
  }
  return {
    ready: Promise.all(ready).then(() => undefined),
    close: async () => {
      closed()
      await Promise.all(watchers.map((w) => w.close()))
    },
  }
}
