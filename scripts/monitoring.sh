#!/usr/bin/env bash
# Checks the shipped monitoring (monitoring/): the alert rules with `promtool check rules`
# and their unit tests with `promtool test rules`, and every PromQL query of the Grafana
# dashboard by parsing it as a recording rule. Installs Debian's `prometheus` package
# (which carries promtool) when promtool is missing: --no-install-recommends keeps it to
# the one package (about 5 s to install once the index is fresh). That the metrics the
# rules and the dashboard name exist in a real scrape is tests/monitoring.rs's job.
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
command -v promtool >/dev/null 2>&1 || missing+=(prometheus)
command -v python3 >/dev/null 2>&1 || missing+=(python3)
if [ ${#missing[@]} -gt 0 ]; then
  command -v apt-get >/dev/null 2>&1 ||
    { echo "monitoring.sh: missing ${missing[*]} and no apt-get to install them" >&2; exit 1; }
  [ "$(id -u)" -eq 0 ] || { echo "monitoring.sh: missing ${missing[*]}; run as root to install" >&2; exit 1; }
  echo "monitoring.sh: installing ${missing[*]}" >&2
  apt-get update -qq
  # The package must not start a Prometheus server on the CI machine.
  own_policy=
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
    own_policy=1
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  [ -z "$own_policy" ] || rm -f /usr/sbin/policy-rc.d
fi

promtool check rules monitoring/enisync.rules.yml
(cd monitoring && promtool test rules enisync.rules.test.yml)

# The dashboard's queries, as recording rules ($job becomes a literal), through the
# same PromQL parser.
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
python3 - monitoring/enisync-fleet.dashboard.json >"$tmp/dashboard.rules.yml" <<'PY'
import json, sys
def walk(v, out):
    if isinstance(v, dict):
        for k, x in v.items():
            if k == "expr" and isinstance(x, str):
                out.append(x)
            else:
                walk(x, out)
    elif isinstance(v, list):
        for x in v:
            walk(x, out)
exprs = []
walk(json.load(open(sys.argv[1])), exprs)
if not exprs:
    sys.exit("no queries in the dashboard")
print("groups:\n  - name: dashboard\n    rules:")
for i, e in enumerate(exprs):
    print(f"      - record: dashboard:query{i}\n        expr: {json.dumps(e.replace('$job', 'enisync'))}")
PY
promtool check rules "$tmp/dashboard.rules.yml"
echo "monitoring.sh: rules, rule tests and dashboard queries OK"
