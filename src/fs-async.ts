// The file operations the agent awaits, as promises over `node:fs`'s callback API instead of `node:fs/promises`.
//
// Why: `node:fs/promises` is not loaded at Node's start-up, and loading it also loads readline's interface (for
// FileHandle.readLines) and more: ~0.8 MiB of resident memory kept for good (measured with scripts/bench/
// binary-pages.ts; docs/footprint.md), on an edge whose whole budget is 50 MB. `node:fs` is loaded at start-up
// anyway. Errors are the same (fs's ErrnoException: code, syscall, path).
import fs from 'node:fs'

type Cb<T> = (err: NodeJS.ErrnoException | null, value: T) => void

function call<T>(fn: (cb: Cb<T>) => void): Promise<T> {
  return new Promise<T>((resolve, reject) => fn((err, value) => (err ? reject(err) : resolve(value))))
}

export function readFile(path: string, encoding: BufferEncoding): Promise<string>
export function readFile(path: string): Promise<Buffer>
export function readFile(path: string, encoding?: BufferEncoding): Promise<string | Buffer> {
  return encoding === undefined ? call<Buffer>((cb) => fs.readFile(path, cb)) : call<string>((cb) => fs.readFile(path, encoding, cb))
}

export const writeFile = (path: string, data: string | Uint8Array): Promise<void> => call<void>((cb) => fs.writeFile(path, data, (err) => cb(err, undefined)))
export const stat = (path: string): Promise<fs.Stats> => call<fs.Stats>((cb) => fs.stat(path, cb))
export const mkdir = (path: string, options: fs.MakeDirectoryOptions & { recursive: true }): Promise<string | undefined> =>
  call<string | undefined>((cb) => fs.mkdir(path, options, cb))
export const rename = (from: string, to: string): Promise<void> => call<void>((cb) => fs.rename(from, to, (err) => cb(err, undefined)))
export const unlink = (path: string): Promise<void> => call<void>((cb) => fs.unlink(path, (err) => cb(err, undefined)))

/** A file descriptor's operations (what FileHandle gave cni.ts): open, write all of a string, chmod, fsync, close. */
export const openFd = (path: string, flags: string, mode?: number): Promise<number> => call<number>((cb) => fs.open(path, flags, mode, cb))
export const fchmod = (fd: number, mode: number): Promise<void> => call<void>((cb) => fs.fchmod(fd, mode, (err) => cb(err, undefined)))
export const fsync = (fd: number): Promise<void> => call<void>((cb) => fs.fsync(fd, (err) => cb(err, undefined)))
export const close = (fd: number): Promise<void> => call<void>((cb) => fs.close(fd, (err) => cb(err, undefined)))
/** Writes all of `data` at the descriptor's position (fs.writeFile on a descriptor loops over short writes). */
export const writeFd = (fd: number, data: string): Promise<void> => call<void>((cb) => fs.writeFile(fd, data, (err) => cb(err, undefined)))
