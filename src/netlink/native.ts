// Loads the native addon (native/src/netlink.c): netlink sockets only, no message knowledge. A missing build is
// reported with what to run instead of a bare "Cannot find module".
import { createRequire } from 'node:module'
import { existsSync } from 'node:fs'
import { fileURLToPath } from 'node:url'
import { NetlinkError } from './errors.js'
import { PACKAGE_ROOT } from '../package-root.js'

/** Opaque socket handle owned by the addon. */
export type NativeHandle = { readonly __brand: 'fabtunnel_netlink' }

export interface NativeAddon {
  open(protocol: number, netnsPath?: string): NativeHandle
  portid(h: NativeHandle): number
  addMembership(h: NativeHandle, group: number): void
  setOption(h: NativeHandle, name: 'rcvbuf' | 'sndbuf' | 'extAck' | 'capAck' | 'strictCheck' | 'noEnobufs', value: number): number
  send(h: NativeHandle, data: Buffer): number
  start(h: NativeHandle, cb: (err: (Error & { code?: string; errno?: number }) | null, datagrams: Buffer[]) => void): void
  ref(h: NativeHandle, on: boolean): void
  close(h: NativeHandle): void
  /** glibc malloc_trim(0) (native/src/memory.c): whether memory was released; false without glibc. */
  mallocTrim(): boolean
}

// From the package root, so tsx (src/), tsc's dist/ and the bundle (dist/cli.js) all find it.
const addonPath = fileURLToPath(new URL('native/build/Release/fabtunnel_netlink.node', PACKAGE_ROOT))

let cached: NativeAddon | undefined

/** The addon, loaded once. `path` is for tests of the not-built message. */
export function loadAddon(path = addonPath): NativeAddon {
  if (cached && path === addonPath) return cached
  if (!existsSync(path)) {
    throw new NetlinkError(
      'addon',
      'ENOADDON',
      `fabtunnel netlink addon not built (${path} missing). Run scripts/setup, or ` +
        '`npm run build:native` (needs make, a C compiler and python3: apt-get install make g++ python3; ' +
        'with npm_config_nodedir=/usr when Node headers come from the distribution).',
    )
  }
  let addon: NativeAddon
  try {
    addon = createRequire(import.meta.url)(path) as NativeAddon
  } catch (cause) {
    throw new NetlinkError('addon', 'ENOADDON', `cannot load ${path}; rebuild it with \`npm run build:native\``, {
      cause,
    })
  }
  if (path === addonPath) cached = addon
  return addon
}
