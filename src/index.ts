// Public entry of the `fabtunnel` package: the FabEdge config model (parse and validate `tunnels.yaml`, with
// file/line/field errors) and the pure desired-state functions the agent runs (connections, routes, sets).
// The VICI client and netlink bindings have their own entry points (`fabtunnel/vici`, `fabtunnel/netlink`).
export { VERSION } from './version.js'
export { loadConfig, parseConfig, MAX_CONFIG_BYTES, type LoadResult } from './config/load.js'
export { ConfigError, formatIssue, type ConfigIssue, type ConfigErrorCode, type Severity } from './config/errors.js'
export type { Endpoint, EndpointType, LocalEndpoint, PeerEndpoint, TunnelConfig } from './config/schema.js'
export * from './desired/index.js'
