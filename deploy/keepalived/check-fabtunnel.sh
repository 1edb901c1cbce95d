#!/bin/sh
# keepalived vrrp_script for connectors running `fabtunnel run --leader-election vip`.
#
# Probes the agent's /healthz, NOT /is-leader: in vip mode the agent leads *because* this node holds the VIP, so a
# check on /is-leader could never let a node acquire it (circular). /healthz fails when the agent is not running
# or not answering, and answers 503 "draining" from the moment the agent receives SIGTERM, so the VIP moves before
# the agent is gone (docs/deploy.md, "High availability").
#
# Exit status (keepalived counts any non-zero status as a failure):
#   0   healthy: this node may hold the VIP
#   22  the agent answered with an HTTP error (503 draining / unhealthy)
#   7   nothing listens (agent down)
#   28  no answer within FABTUNNEL_CHECK_TIMEOUT seconds (agent hung)
#   other curl exit codes as documented in curl(1)
#
# Environment (keepalived runs scripts with a minimal environment; set these in the script line if needed):
#   FABTUNNEL_HEALTHZ_URL   default http://127.0.0.1:30306/healthz (the agent's --listen)
#   FABTUNNEL_CHECK_TIMEOUT default 1 (seconds; keep it below the vrrp_script interval)
url="${FABTUNNEL_HEALTHZ_URL:-http://127.0.0.1:30306/healthz}"
timeout="${FABTUNNEL_CHECK_TIMEOUT:-1}"
exec curl --silent --fail --output /dev/null --max-time "$timeout" --noproxy '*' "$url"
