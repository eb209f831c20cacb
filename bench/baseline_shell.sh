#!/usr/bin/env bash
# Baseline 1: how people script it today. Follow `ip monitor address`; for every IPv4
# address deleted from an ENI-backed interface, call
# `tccli vpc UnassignPrivateIpAddresses` for that one IP (no batching, no task polling).
# With a grace period, each deletion waits in a background subshell and is released only
# if the address is still absent from every interface afterwards.
#
# Run by bench/bench.py inside the benchmark's network namespace. Environment:
#   ENI_MAP       file of "ifname eni-id" lines (the ENI-backed interfaces)
#   ENDPOINT      host:port of the API 3.0 endpoint (HTTPS)
#   REGION, TENCENTCLOUD_SECRET_ID, TENCENTCLOUD_SECRET_KEY
#   TCCLI         the tccli executable
#   GRACE         seconds to wait before releasing (0: at once)
#   REQUESTS_CA_BUNDLE  the test CA (see bench/README.md for how tccli is made to use it)
set -u

declare -A ENI
while read -r ifname eni; do
  [ -n "$ifname" ] && ENI[$ifname]=$eni
done <"$ENI_MAP"

release() { # ip eni: up to 3 attempts, 1 s apart (a busy ENI answers MutexOperationTaskRunning)
  local ip=$1 eni=$2 attempt
  for attempt in 1 2 3; do
    if "$TCCLI" vpc UnassignPrivateIpAddresses --region "$REGION" --endpoint "$ENDPOINT" \
      --secretId "$TENCENTCLOUD_SECRET_ID" --secretKey "$TENCENTCLOUD_SECRET_KEY" \
      --NetworkInterfaceId "$eni" \
      --PrivateIpAddresses "[{\"PrivateIpAddress\":\"$ip\"}]" >/dev/null 2>&1; then
      echo "released $ip $eni"
      return 0
    fi
    sleep 1
  done
  echo "failed $ip $eni"
}

echo READY
# -o: one line per event, e.g.
#   Deleted 3: eth1    inet 10.0.1.12/24 scope global secondary eth1\       valid_lft ...
ip -o -4 monitor address | while read -r kind _index ifname family cidr _rest; do
  [ "$kind" = Deleted ] && [ "$family" = inet ] || continue
  eni=${ENI[$ifname]:-}
  [ -n "$eni" ] || continue
  ip=${cidr%/*}
  if [ "${GRACE:-0}" = 0 ]; then
    release "$ip" "$eni"
  else
    (
      sleep "$GRACE"
      [ -z "$(ip -o -4 addr show to "$ip/32")" ] && release "$ip" "$eni"
    ) &
  fi
done
