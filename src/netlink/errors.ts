// The one error class of fabtunnel/netlink. `kind` keeps "the kernel said no" (a NLMSG_ERROR reply, with its
// errno and extended-ack text) apart from "the transport broke" (socket, timeout, overrun), from "the bytes do
// not parse" and from "the caller passed something invalid", so callers never guess from a message string.
import { constants } from 'node:os'

export type NetlinkErrorKind = 'kernel' | 'transport' | 'decode' | 'input' | 'addon'

const errnoNames = new Map<number, string>()
for (const [name, num] of Object.entries(constants.errno)) if (!errnoNames.has(num)) errnoNames.set(num, name)

/** ipset's private errnos (ip_set.h `enum ipset_errno`), reported by the kernel above 4096. */
const IPSET_ERRNOS = [
  'IPSET_ERR_PRIVATE', 'IPSET_ERR_PROTOCOL', 'IPSET_ERR_FIND_TYPE', 'IPSET_ERR_MAX_SETS', 'IPSET_ERR_BUSY',
  'IPSET_ERR_EXIST_SETNAME2', 'IPSET_ERR_TYPE_MISMATCH', 'IPSET_ERR_EXIST', 'IPSET_ERR_INVALID_CIDR',
  'IPSET_ERR_INVALID_NETMASK', 'IPSET_ERR_INVALID_FAMILY', 'IPSET_ERR_TIMEOUT', 'IPSET_ERR_REFERENCED',
  'IPSET_ERR_IPADDR_IPV4', 'IPSET_ERR_IPADDR_IPV6', 'IPSET_ERR_COUNTER', 'IPSET_ERR_COMMENT',
  'IPSET_ERR_INVALID_MARKMASK', 'IPSET_ERR_SKBINFO',
]

/** Symbolic name of a positive errno, including ipset's private range; `E<number>` when unknown. */
export function errnoName(errno: number): string {
  if (errno >= 4096 && errno < 4096 + IPSET_ERRNOS.length) return IPSET_ERRNOS[errno - 4096]!
  return errnoNames.get(errno) ?? `E${errno}`
}

export interface NetlinkErrorOptions {
  errno?: number
  cause?: unknown
  extAck?: string
  syscall?: string
}

export class NetlinkError extends Error {
  /** Positive errno for kernel and socket errors (the kernel's reply carries it negated). */
  readonly errno: number | undefined
  /** Text of the kernel's extended ack (NLMSGERR_ATTR_MSG) when it sent one. */
  readonly extAck: string | undefined
  readonly syscall: string | undefined

  constructor(
    readonly kind: NetlinkErrorKind,
    readonly code: string,
    message: string,
    opts: NetlinkErrorOptions = {},
  ) {
    super(message, opts.cause === undefined ? undefined : { cause: opts.cause })
    this.name = 'NetlinkError'
    this.errno = opts.errno
    this.extAck = opts.extAck
    this.syscall = opts.syscall
  }

  /** A NLMSG_ERROR reply: the kernel refused `what`. */
  static kernel(errno: number, what: string, extAck?: string): NetlinkError {
    const code = errnoName(errno)
    const detail = extAck ? `: ${extAck}` : ''
    return new NetlinkError('kernel', code, `${what}: ${code}${detail}`, { errno, extAck })
  }

  /** Wraps an error thrown by the native addon (which carries errno, code and syscall). */
  static fromNative(err: unknown, what: string): NetlinkError {
    const e = err as { errno?: unknown; code?: unknown; syscall?: unknown; message?: unknown }
    const errno = typeof e.errno === 'number' ? e.errno : undefined
    const code = typeof e.code === 'string' ? e.code : 'EIO'
    const syscall = typeof e.syscall === 'string' ? e.syscall : undefined
    return new NetlinkError('transport', code, `${what}: ${String(e.message ?? err)}`, { errno, cause: err, syscall })
  }

  static decode(message: string): NetlinkError {
    return new NetlinkError('decode', 'EMALFORMED', message)
  }

  static input(message: string): NetlinkError {
    return new NetlinkError('input', 'EINVAL', message)
  }
}
