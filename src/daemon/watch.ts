// Watches the directories holding the config and the credentials. Kubelet updates a ConfigMap or Secret mount by
// swapping the `..data` symlink, and editors save by rename, so watching a file's inode loses it after the first
// update (FabEdge's edge agent has exactly that bug): we watch the directory and let the content hash decide.
import { dirname } from 'node:path'
import chokidar, { type FSWatcher } from 'chokidar'

export interface DirWatch {
  close(): Promise<void>
}

/** Calls `onChange(kind)` for any change in the directory of any of the files; `kind` names which file's dir. */
export function watchFiles(files: Array<{ path: string; kind: string }>, onChange: (kind: string) => void, onError: (err: unknown) => void): DirWatch {
  const byDir = new Map<string, Set<string>>()
  for (const f of files) {
    const d = dirname(f.path)
    if (!byDir.has(d)) byDir.set(d, new Set())
    byDir.get(d)!.add(f.kind)
  }
  const watchers: FSWatcher[] = []
  for (const [dir, kinds] of byDir) {
    const w = chokidar.watch(dir, { depth: 0, ignoreInitial: true, followSymlinks: false, persistent: true })
    w.on('all', () => {
      for (const k of kinds) onChange(k)
    })
    w.on('error', onError)
    watchers.push(w)
  }
  return {
    close: async () => {
      await Promise.all(watchers.map((w) => w.close()))
    },
  }
}
