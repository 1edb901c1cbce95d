// A directory laid out like a kubelet ConfigMap volume: the data lives in a timestamped `..<ts>` directory,
// `..data` points at it, and each key is a symlink `<key> -> ..data/<key>`. An update writes a new timestamped
// directory, points a temporary symlink at it and renames it over `..data` (one atomic rename), then removes the
// old directory: exactly the swap that loses a watch on the file's inode (../shared/fabedge-compat.md §1).
import { mkdir, readlink, rename, rm, symlink, writeFile } from 'node:fs/promises'
import { join } from 'node:path'

const KEY = /^[A-Za-z0-9._-]+$/

let seq = 0
function stamp(): string {
  // kubelet: `..2026_11_23_19_40_00.123456789`; the sequence keeps two updates in one millisecond apart.
  const d = new Date()
  const p = (n: number, w = 2): string => String(n).padStart(w, '0')
  const ns = `${p(d.getUTCMilliseconds(), 3)}${p(seq++ % 1_000_000, 6)}`
  return `..${d.getUTCFullYear()}_${p(d.getUTCMonth() + 1)}_${p(d.getUTCDate())}_${p(d.getUTCHours())}_${p(d.getUTCMinutes())}_${p(d.getUTCSeconds())}.${ns}`
}

export class ConfigMapDir {
  private constructor(readonly dir: string) {}

  /** Creates the directory with the given keys (file name -> content). */
  static async create(dir: string, files: Record<string, string>): Promise<ConfigMapDir> {
    await mkdir(dir, { recursive: true })
    const cm = new ConfigMapDir(dir)
    const data = await cm.writeData(files)
    await symlink(data, join(dir, '..data'))
    for (const key of Object.keys(files)) await symlink(join('..data', key), join(dir, key))
    return cm
  }

  /** Path of a key as a pod sees it (`<dir>/<key>`, through both symlinks). */
  path(key: string): string {
    return join(this.dir, key)
  }

  /** Atomically replaces the content of every key (keys must be the ones the directory was created with). */
  async update(files: Record<string, string>): Promise<void> {
    const old = await readlink(join(this.dir, '..data'))
    const data = await this.writeData(files)
    const tmp = join(this.dir, '..data_tmp')
    await rm(tmp, { force: true })
    await symlink(data, tmp)
    await rename(tmp, join(this.dir, '..data'))
    await rm(join(this.dir, old), { recursive: true, force: true })
  }

  private async writeData(files: Record<string, string>): Promise<string> {
    const name = stamp()
    await mkdir(join(this.dir, name))
    for (const [key, text] of Object.entries(files)) {
      if (!KEY.test(key) || key.startsWith('..')) throw new Error(`bad ConfigMap key ${key}`)
      await writeFile(join(this.dir, name, key), text)
    }
    return name
  }
}
