// Public entry of the `fabtunnel` package: config model and desired-state functions.
// The VICI client and netlink bindings have their own entry points (`fabtunnel/vici`, `fabtunnel/netlink`).
export { VERSION } from './version.js'
