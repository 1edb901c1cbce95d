// Hand-built VICI requests for tests at the wire's edges: a request of an exact frame size, and frames carrying
// bytes our encoder refuses to write (to show what charon itself does with them).
import { encodeFrame, type ViciInput, type ViciPacketInput } from '../../src/vici/codec.js'

/**
 * A CMD_REQUEST whose packet (the frame body, as VICI_MESSAGE_SIZE_MAX counts it) is exactly `size` bytes:
 * 2 + name bytes of type and name, then KEY_VALUE elements `a`, `b`, ... of 5 bytes overhead each (type, name
 * length, name, value length).
 */
export function requestOfSize(name: string, size: number): Extract<ViciPacketInput, { type: 'CMD_REQUEST' }> & { message: Record<string, string> } {
  const message: Record<string, string> = {}
  let left = size - 2 - Buffer.byteLength(name)
  for (let i = 0; left > 0; i++) {
    const elem = Math.min(left, 5 + 0xffff)
    if (elem < 5 || (left - elem > 0 && left - elem < 5)) throw new Error(`cannot build a request of ${size} bytes`)
    message[String.fromCharCode(0x61 + i)] = 'v'.repeat(elem - 5)
    left -= elem
  }
  return { type: 'CMD_REQUEST', name, message }
}

/**
 * The frame of a request in which every occurrence of `placeholder` (in names or values) is replaced by `bytes`
 * of the same length, e.g. a key with a control byte that encodeMessage would refuse.
 */
export function frameWith(name: string, message: ViciInput, placeholder: string, bytes: Buffer): Buffer {
  const from = Buffer.from(placeholder, 'latin1')
  if (from.length !== bytes.length) throw new Error('placeholder and replacement differ in length')
  const frame = encodeFrame({ type: 'CMD_REQUEST', name, message })
  let at = frame.indexOf(from)
  if (at < 0) throw new Error(`placeholder ${placeholder} not in the frame`)
  for (; at >= 0; at = frame.indexOf(from, at + bytes.length)) bytes.copy(frame, at)
  return frame
}
