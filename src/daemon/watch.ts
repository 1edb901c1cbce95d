// Watches the directories holding the config and the credentials. Kubelet updates a ConfigMap or Secret mount by
// swapping the `..data` symlink, and editors save by rename, so watching a file's inode loses it after the first
// update (FabEdge's edge agent has exactly that bug): we watch the directory and let the content hash decide.
//
// One inotify watch per directory through fs.watch, no library: an event is handed on the moment the kernel reports
// it (a wrapper that waits to merge unlink+add into one change would add its window to every config change; the
// agent's content hash already makes a duplicate event free). A directory that cannot be watched (not there yet,
// removed and re-created) is retried every second, and its files count as changed once the watch is back.
import { watch, type FSWatcher } from 'node:fs'
import { basename, dirname, resolve } from 'node:path'

export interface DirWatch {
  /** Settles once every directory is watched or being retried (a change after this is never missed), or on close(). */
  ready: Promise<void>
  close(): Promise<void>
}

const RETRY_MS = 1000

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
  let closed = false
  const watchers = new Set<FSWatcher>()
  const timers = new Set<NodeJS.Timeout>()
  const arm = (dir: string, names: Map<string, Set<string>>, every: Set<string>, again: boolean): void => {
    if (closed) return
    let w: FSWatcher
    try {
      w = watch(dir, { persistent: true }, (_event, filename) => {
        const name = filename === null ? null : String(filename)
        // Kubelet's atomic writer creates `..<timestamp>/` with the new files, links `..data_tmp` to it, renames that
        // over `..data` (the instant the new content is in force) and then removes the old `..<timestamp>/`; the key
        // symlinks stay put. Only the rename is a change: a wake on the earlier steps would read the old content
        // (a whole read and hash of a 2 MB file for nothing) and hold up the pass that reads the new one.
        // No name (the kernel's queue overflowed): anything in the directory may have changed.
        const kinds = name === null || name === '..data' ? every : names.get(name)
        for (const k of kinds ?? []) onChange(k)
      })
    } catch (err) {
      if (!again) onError(err)
      const timer = setTimeout(() => {
        timers.delete(timer)
        arm(dir, names, every, true)
      }, RETRY_MS)
      timer.unref()
      timers.add(timer)
      return
    }
    watchers.add(w)
    w.on('error', (err) => {
      // The directory went away (or the watch broke): report, and watch it again once it is back.
      watchers.delete(w)
      w.close()
      onError(err)
      arm(dir, names, every, true)
    })
    // Back after a gap: whatever happened meanwhile was not seen.
    if (again) for (const k of every) onChange(k)
  }
  for (const [dir, names] of byDir) arm(dir, names, new Set([...names.values()].flatMap((k) => [...k])), false)
  return {
    ready: Promise.resolve(),
    close: async () => {
      closed = true
      for (const t of timers) clearTimeout(t)
      timers.clear()
      for (const w of watchers) w.close()
      watchers.clear()
    },
  }
}
