// Public entry of `fabtunnel/vici`: a zero-dependency strongSwan VICI client (codec, client, typed commands).
// Spec: strongSwan's vici plugin README (src/libcharon/plugins/vici/README.md). Usage: docs/vici.md.
export { ViciError } from './errors.js'
export type { ViciErrorCode, ViciTransportCode, ViciDaemonCode, ViciUsageCode } from './errors.js'
export {
  DEFAULT_MAX_DEPTH,
  DEFAULT_MAX_FRAME_BYTES,
  ELEMENT_TYPES,
  FrameReader,
  PACKET_TYPES,
  decodeMessage,
  decodePacket,
  encodeFrame,
  encodeMessage,
  encodePacket,
} from './codec.js'
export type {
  DecodeOptions,
  ViciInput,
  ViciInputValue,
  ViciMessage,
  ViciPacket,
  ViciPacketInput,
  ViciPacketType,
  ViciValue,
} from './codec.js'
export { DEFAULT_VICI_URI, ViciClient, socketPathFromUri } from './client.js'
export type { CallOptions, ReconnectOptions, ViciClientEvents, ViciClientOptions, ViciEventHandler } from './client.js'
export { Vici, parseIkeSas } from './commands.js'
export type {
  CertInfo,
  ChildSa,
  ConnInfo,
  IkeSa,
  InitiateOptions,
  SaTarget,
  TerminateOptions,
  UpdownFilter,
  UpdownWatch,
  ViciOptions,
  ViciVersion,
} from './commands.js'
