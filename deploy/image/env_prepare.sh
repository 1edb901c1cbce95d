#!/bin/sh
# The init container of FabEdge's edge agent pod (`environment-prepare`, privileged, hostNetwork, hostPath mounts
# /etc/cni/net.d, /opt/cni/bin, /var/lib/cni/cache). The operator runs it as `env_prepare.sh` (v1.0.0, from PATH) or
# `/plugins/env_prepare.sh` (later), so the image has it at both. Same steps as FabEdge's script
# (FabEdge/plugins scripts/env_prepare.sh), with one deliberate difference:
#
#   FabEdge runs `iptables -t nat -F POSTROUTING`, which also wipes every other tool's rules there (kube-proxy's
#   jump to KUBE-POSTROUTING, Docker's masquerade, ...). This script only removes flannel's own leftovers from
#   nat POSTROUTING: rules with the comment "flanneld masq" or jumping to FLANNEL-POSTRTG, then that chain
#   itself; in both iptables backends that are present. Everything else in POSTROUTING is left alone.
#
# Like FabEdge, no step's failure stops the next one and the script exits 0 (an absent cni0 is the normal case);
# unlike FabEdge's `set -x`, each step logs what it did or why it failed.

CNI_CONF_DIR=/etc/cni/net.d
CNI_BIN_DIR=/opt/cni/bin
PLUGIN_DIR=/plugins/bin
PLUGINS="bridge host-local loopback portmap bandwidth"

log() { echo "env_prepare: $*" >&2; }

# 1. Only FabEdge's CNI config may remain: another one (flannel's 10-flannel.conflist, ...) would win by name order.
if [ -d "$CNI_CONF_DIR" ]; then
  find "$CNI_CONF_DIR" -type f -not -name fabedge.conflist | while IFS= read -r f; do
    if rm -f "$f"; then log "removed CNI config $f"; else log "could not remove CNI config $f"; fi
  done
else
  log "no $CNI_CONF_DIR"
fi

# 2. The plugins fabedge.conflist chains, onto the host.
mkdir -p "$CNI_BIN_DIR" || log "could not create $CNI_BIN_DIR"
for p in $PLUGINS; do
  if cp -f "$PLUGIN_DIR/$p" "$CNI_BIN_DIR/$p"; then log "copied $p to $CNI_BIN_DIR"; else log "could not copy $p to $CNI_BIN_DIR"; fi
done

# 3. Flannel's bridge and VXLAN device, and the routes through them.
for link in cni0 flannel.1; do
  if ip link show "$link" >/dev/null 2>&1; then
    if ip link delete "$link"; then log "deleted link $link"; else log "could not delete link $link"; fi
  else
    log "no link $link"
  fi
done
ip route show table main | grep flannel | while IFS= read -r route; do
  # The route as `ip route show` prints it is a valid selector for `ip route del` (word splitting intended).
  # shellcheck disable=SC2086
  if ip route del $route; then log "deleted route $route"; else log "could not delete route $route"; fi
done

# 4. Flannel's nat POSTROUTING rules (not a flush, see the top of this file).
for backend in nft legacy; do
  command -v "iptables-$backend-save" >/dev/null 2>&1 || continue
  saved=$("iptables-$backend-save" -t nat 2>/dev/null) || { log "iptables-$backend: no nat table"; continue; }
  rules=$(printf '%s\n' "$saved" | grep -E '^-A POSTROUTING .*(--comment "?flanneld masq"?|-j FLANNEL-POSTRTG)' | sed 's/^-A /-D /')
  chain=$(printf '%s\n' "$saved" | grep -c '^:FLANNEL-POSTRTG ')
  if [ -z "$rules" ] && [ "$chain" -eq 0 ]; then
    log "iptables-$backend: no flannel rules in nat POSTROUTING"
    continue
  fi
  {
    echo '*nat'
    [ -n "$rules" ] && printf '%s\n' "$rules"
    [ "$chain" -gt 0 ] && printf '%s\n' '-F FLANNEL-POSTRTG' '-X FLANNEL-POSTRTG'
    echo 'COMMIT'
  } | if "iptables-$backend-restore" --noflush; then
    log "iptables-$backend: removed flannel's nat POSTROUTING rules ($(printf '%s\n' "$rules" | grep -c .) rules, chain FLANNEL-POSTRTG: $chain)"
  else
    log "iptables-$backend: could not remove flannel's nat POSTROUTING rules"
  fi
done

exit 0
