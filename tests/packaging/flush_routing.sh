#!/usr/bin/env bash
# packaging/flush-routing removes every rule and route with protocol 212 and nothing else.
# Runs in a throw-away network namespace (needs root); never touches the host's routing.
set -euo pipefail
cd "$(dirname "$0")/../.."
helper=$PWD/packaging/flush-routing

ns=enisync-flush-$$
ip netns add "$ns"
trap 'ip netns delete "$ns" 2>/dev/null || true' EXIT
in_ns() { ip netns exec "$ns" "$@"; }
fail() { echo "FAIL: $*" >&2; exit 1; }

in_ns ip link set lo up
in_ns ip link add veth0 type veth peer name veth1
in_ns ip link set veth1 up
in_ns ip link set veth0 up
in_ns ip addr add 10.9.0.2/24 dev veth0

# Ours: protocol 212, in enisync's tables and elsewhere.
in_ns ip rule add pref 3500 from 10.9.0.5 lookup 3501 protocol 212
in_ns ip rule add pref 3500 from 10.9.0.6 lookup 3501 protocol 212
in_ns ip rule add pref 3501 from 10.9.0.7/32 lookup 3502 protocol 212
in_ns ip rule add pref 3600 to 10.9.9.0/24 lookup main protocol 212
in_ns ip route add default via 10.9.0.1 dev veth0 table 3501 proto 212
in_ns ip route add 10.9.0.0/24 dev veth0 table 3501 proto 212 scope link src 10.9.0.2
in_ns ip route add 10.9.5.0/24 via 10.9.0.1 proto 212

# Foreign: same selectors or tables but another protocol, or "212" elsewhere in the line.
in_ns ip rule add pref 3500 from 10.9.0.5 lookup 3501
in_ns ip rule add pref 3500 from 10.9.0.5 lookup 3501 protocol 211
in_ns ip rule add pref 100 from 10.9.0.8 lookup 100 protocol static
in_ns ip rule add pref 212 fwmark 0x212 lookup 212
in_ns ip rule add pref 3502 from 10.9.0.212 lookup 3501 protocol 3
in_ns ip route add 10.9.6.0/24 via 10.9.0.1 table 3501 proto static
in_ns ip route add 10.9.7.0/24 via 10.9.0.1 proto 211
in_ns ip route add 10.9.8.0/24 via 10.9.0.1 table 212 proto boot
in_ns ip route add 10.9.212.0/24 via 10.9.0.1 table 3502

listing() {
    in_ns ip -4 rule show
    in_ns ip -4 route show table all
}
foreign() { listing | grep -v -E 'proto (212|enisync)( |$)' | sort; }

before_all=$(listing)
before_foreign=$(foreign)
[ "$(listing | grep -c -E 'proto 212( |$)')" -eq 7 ] || fail "setup: expected 7 objects with proto 212"

# -n lists and changes nothing.
dry=$(in_ns "$helper" -n)
[ "$(grep -c '^would delete rule' <<<"$dry")" -eq 4 ] || fail "dry run lists 4 rules: $dry"
[ "$(grep -c '^would delete route' <<<"$dry")" -eq 3 ] || fail "dry run lists 3 routes: $dry"
[ "$(listing)" = "$before_all" ] || fail "dry run changed something"

in_ns "$helper" || fail "helper exited non-zero"

if listing | grep -E 'proto (212|enisync)( |$)'; then fail "objects with proto 212 left"; fi
after_foreign=$(foreign)
if [ "$after_foreign" != "$before_foreign" ]; then
    diff <(echo "$before_foreign") <(echo "$after_foreign") >&2 || true
    fail "foreign rules or routes changed"
fi

# Idempotent: a second run finds nothing and succeeds.
in_ns "$helper" || fail "second run exited non-zero"
[ "$(foreign)" = "$before_foreign" ] || fail "second run changed foreign objects"

echo "flush_routing: ok (7 owned objects removed, $(wc -l <<<"$before_foreign") foreign kept)"
