#!/usr/bin/env bash
# The main job of enisync, end to end, on one machine, in about ten seconds:
#
#   a sandbox network namespace stands in for a CVM (veth "ENIs" eth0/eth1 with the demo
#   scenario's MACs, aux IPs 10.0.1.11-15 on eth1, a stale `from 10.0.1.12/32` rule),
#   the fake Tencent Cloud (`fakecloud`, built-in demo scenario) listens inside it, and the
#   real `enisync run` watches it with credentials from the fake instance's CAM role.
#   The script deletes 10.0.1.12 with `ip addr del` and shows what follows: the
#   UnassignPrivateIpAddresses call, its task confirmed, enisync's audit lines, the
#   stale rule gone and the IP gone from the cloud.
#
# Usage: sudo ./scripts/demo.sh        (root: network namespaces; no TTY needed)
# Env:   DEMO_TIMEOUT=30  seconds allowed for the release after the deletion
#        KEEP=1           keep the temp dir (logs, config, journal) for a look afterwards
#
# Exit status: 0 when the release happened and every check passed, 1 otherwise.
# Touches nothing outside its own namespace and temp dir; both go away on exit, on
# Ctrl-C and on failure.

set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"

DEMO_TIMEOUT=${DEMO_TIMEOUT:-30}
PORT=18080
ENI=eni-demo0001          # the demo scenario's secondary ENI (MAC 52:54:00:12:34:56)
VICTIM=10.0.1.12          # the aux IP the demo deletes
STARTED=$(date +%s.%N)

say() { printf '\n=== %s ===\n' "$*"; }
note() { printf '  %s\n' "$*"; }
die() { printf '\ndemo: FAILED: %s\n' "$*" >&2; exit 1; }

[ "$(id -u)" -eq 0 ] || die "run as root (sudo ./scripts/demo.sh): it creates a network namespace"

# ---- what it needs -------------------------------------------------------------------

apt_missing=()
command -v ip >/dev/null 2>&1 || apt_missing+=(iproute2)
command -v python3 >/dev/null 2>&1 || apt_missing+=(python3)
# ring (TLS, under rustls) compiles C code.
command -v cc >/dev/null 2>&1 || apt_missing+=(gcc libc6-dev)
if [ ${#apt_missing[@]} -gt 0 ]; then
  command -v apt-get >/dev/null 2>&1 || die "missing ${apt_missing[*]} and no apt-get to install them"
  echo "demo: installing ${apt_missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${apt_missing[@]}" >/dev/null
fi

# Under sudo, root's PATH rarely has the invoking user's rustup toolchain.
if ! command -v cargo >/dev/null 2>&1; then
  for dir in "$(getent passwd "${SUDO_USER:-root}" | cut -d: -f6)/.cargo/bin" /root/.cargo/bin; do
    if [ -x "$dir/cargo" ]; then PATH="$dir:$PATH"; break; fi
  done
fi
command -v cargo >/dev/null 2>&1 ||
  die "cargo not found: install Rust (1.85 or newer, e.g. with rustup: https://rustup.rs) and run again"

# ---- cleanup on every way out ---------------------------------------------------------

NS="enisync-demo-$$"
TMP=$(mktemp -d /tmp/enisync-demo.XXXXXX)
ENISYNC_PID=
FAKE_PID=
NS_CREATED=

stop_pid() { # pid: SIGTERM, then up to 5 s, then SIGKILL
  local pid=$1 i
  [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || return 0
  kill -TERM "$pid" 2>/dev/null || true
  for i in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -0 "$pid" 2>/dev/null && kill -KILL "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
}

cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  stop_pid "$ENISYNC_PID"
  stop_pid "$FAKE_PID"
  [ -z "$NS_CREATED" ] || ip netns del "$NS" 2>/dev/null || true
  if [ "${KEEP:-0}" = 1 ]; then
    echo "demo: kept $TMP (logs, config, state)"
  else
    rm -rf "$TMP"
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# --workspace: `fakecloud` lives in the workspace member tests/fakecloud, which a plain
# `cargo build --bins` at the root does not build.
say "build (cargo build --locked --workspace --bins; the first build takes a few minutes)"
BUILD_LOG=$TMP/build.log
if ! cargo build --locked --workspace --bins >"$BUILD_LOG" 2>&1; then
  tail -n 40 "$BUILD_LOG"; die "cargo build failed"
fi
tail -n 1 "$BUILD_LOG" | sed 's/^ */  /'
BIN=${CARGO_TARGET_DIR:-$ROOT/target}/debug
[ -x "$BIN/enisync" ] && [ -x "$BIN/fakecloud" ] || die "build produced no $BIN/enisync or $BIN/fakecloud"

say "sandbox: network namespace $NS"
ip netns add "$NS"
NS_CREATED=1
# eth0 = the primary ENI, eth1 = a secondary ENI, with the demo scenario's MACs. The
# peer of each veth stays in the namespace and is up, so the "ENI" has carrier.
ip -n "$NS" -batch - <<EOF
link set lo up
link add eth0 address 52:54:00:00:00:01 type veth peer name peer0
link set peer0 up
link set eth0 up
addr add 10.0.0.10/24 dev eth0
link add eth1 address 52:54:00:12:34:56 type veth peer name peer1
link set peer1 up
link set eth1 up
addr add 10.0.1.10/24 dev eth1
addr add 10.0.1.11/24 dev eth1
addr add 10.0.1.12/24 dev eth1
addr add 10.0.1.13/24 dev eth1
addr add 10.0.1.14/24 dev eth1
addr add 10.0.1.15/24 dev eth1
rule add from $VICTIM/32 lookup 3501 pref 3500
EOF
note "eth0 52:54:00:00:00:01 10.0.0.10/24; eth1 52:54:00:12:34:56 10.0.1.10/24 + aux 10.0.1.11-15"
note "a stale policy rule, as hosts often have: from $VICTIM/32 lookup 3501 pref 3500"

# ---- the fake cloud ------------------------------------------------------------------------

say "fake Tencent Cloud (fakecloud, built-in demo scenario) on 127.0.0.1:$PORT inside $NS"
ip netns exec "$NS" "$BIN/fakecloud" --listen "127.0.0.1:$PORT" >"$TMP/fakecloud.log" 2>&1 &
FAKE_PID=$!
for _ in $(seq 100); do
  grep -q '^fakecloud: listening' "$TMP/fakecloud.log" && break
  kill -0 "$FAKE_PID" 2>/dev/null || { cat "$TMP/fakecloud.log"; die "fakecloud exited"; }
  sleep 0.1
done
grep -q '^fakecloud: listening' "$TMP/fakecloud.log" || die "fakecloud did not start"
sed 's/^/  /' "$TMP/fakecloud.log"

# Reads the fake's control endpoints from inside the namespace.
fake_json() { # path python-expression-over-`d`
  ip netns exec "$NS" python3 - "$PORT" "$1" "$2" <<'PY'
import json, sys, urllib.request
port, path, expr = sys.argv[1], sys.argv[2], sys.argv[3]
opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
d = json.load(opener.open(f"http://127.0.0.1:{port}{path}", timeout=5))
out = eval(expr, {"d": d})
if isinstance(out, str):
    print(out)
else:
    for line in out:
        print(line)
PY
}
cloud_ips() {
  fake_json /_fake/state \
    "[f\"{e['id']}: \" + ', '.join(i['addr'] + (' (primary)' if i['primary'] else '') + ('' if i['state'] == 'AVAILABLE' else ' ' + i['state']) for i in e['ips']) for e in d['enis'] if e['id'] == '$ENI']"
}

# ---- enisync ---------------------------------------------------------------------------

CONFIG=$TMP/enisync.toml
umask 077
cat >"$CONFIG" <<EOF
# Written by scripts/demo.sh. No keys here: enisync takes temporary keys from the
# instance's CAM role through the metadata service, as on a real CVM.
[cloud]
endpoint = "http://127.0.0.1:$PORT/"
region = "ap-guangzhou"
# The fake serves plain HTTP; a real endpoint is https and needs no such key.
allow_plain_http = true

[metadata]
endpoint = "http://127.0.0.1:$PORT/latest/meta-data/"

[release]
grace = "2s"

[routing]
mode = "cleanup"

[state]
dir = "$TMP/state"

[control]
socket = "$TMP/enisync.sock"
EOF
chmod 600 "$CONFIG"
umask 022

say "enisync run (config $CONFIG, mode 0600)"
sed 's/^/  | /' "$CONFIG"
"$BIN/enisync" check-config --config "$CONFIG" | sed 's/^/  /'
# The credential chain would prefer systemd credentials or TENCENTCLOUD_* variables from
# this shell; clear them so the demo shows the CAM role path.
env -u CREDENTIALS_DIRECTORY -u TENCENTCLOUD_SECRET_ID -u TENCENTCLOUD_SECRET_KEY \
  -u TENCENTCLOUD_SESSION_TOKEN -u RUST_LOG \
  ip netns exec "$NS" "$BIN/enisync" run --config "$CONFIG" </dev/null >"$TMP/enisync.log" 2>&1 &
ENISYNC_PID=$!
for _ in $(seq 300); do
  grep -q 'enisync ready' "$TMP/enisync.log" && break
  kill -0 "$ENISYNC_PID" 2>/dev/null || { cat "$TMP/enisync.log"; die "enisync exited before it was ready"; }
  sleep 0.1
done
grep -q 'enisync ready' "$TMP/enisync.log" || { cat "$TMP/enisync.log"; die "enisync not ready within 30 s"; }
sed 's/^/  /' "$TMP/enisync.log"

# ---- before ------------------------------------------------------------------------------

say "BEFORE: policy rules in the sandbox (ip rule show)"
ip -n "$NS" rule show | sed 's/^/  /'
say "BEFORE: addresses on eth1"
ip -n "$NS" -4 -br addr show dev eth1 | sed 's/^/  /'
say "BEFORE: IPs the cloud binds to $ENI"
cloud_ips | sed 's/^/  /'

# ---- the event -----------------------------------------------------------------------------

say "EVENT: ip addr del $VICTIM/24 dev eth1   (grace period 2s; bound ${DEMO_TIMEOUT}s)"
fake_lines_before=$(wc -l <"$TMP/fakecloud.log")
DELETED=$(date +%s.%N)
ip -n "$NS" addr del "$VICTIM/24" dev eth1

released=
deadline=$(($(date +%s) + DEMO_TIMEOUT))
while [ "$(date +%s)" -lt "$deadline" ]; do
  if grep -q 'stale rules of released IPs removed' "$TMP/enisync.log"; then released=1; break; fi
  kill -0 "$ENISYNC_PID" 2>/dev/null || break
  sleep 0.1
done
DONE=$(date +%s.%N)

# ---- after -------------------------------------------------------------------------------

say "CLOUD CALLS after the deletion (fakecloud's log; metadata reads left out)"
tail -n +"$((fake_lines_before + 1))" "$TMP/fakecloud.log" | grep -v '^meta ' | sed 's/^/  /' || true

say "THE CALL: UnassignPrivateIpAddresses as the cloud recorded it (/_fake/calls)"
fake_json /_fake/calls \
  "[f\"#{c['seq']} {c['surface']} {c['action']} NetworkInterfaceId={c['eni']} PrivateIpAddresses={c['ips']} -> {c['answer']} task={c['task']} signed with {(c['secret_id'] or '')[:8]}... (CAM role temporary key)\" for c in d if c['action'] == 'UnassignPrivateIpAddresses']" |
  sed 's/^/  /'

say "THE TASK: confirmed by a listing that no longer shows the IP (or, if still listed, by DescribeVpcTaskResult)"
grep 'confirmed by listing' "$TMP/enisync.log" | sed 's/^/  /' || true
fake_json /_fake/calls \
  "[f\"#{c['seq']} {c['action']} task={c['task']} -> {c['task_status']}\" for c in d if c['action'] == 'DescribeVpcTaskResult']" |
  sed 's/^/  /'

say "ENISYNC AUDIT LOG (target audit)"
grep ' audit: ' "$TMP/enisync.log" | sed 's/^/  /' || note "(none)"

say "AFTER: policy rules in the sandbox"
ip -n "$NS" rule show | sed 's/^/  /'
say "AFTER: IPs the cloud binds to $ENI"
cloud_ips | sed 's/^/  /'

# ---- verdict -------------------------------------------------------------------------------

failures=()
[ -n "$released" ] || failures+=("no release within ${DEMO_TIMEOUT}s of the deletion")
calls_ok=$(fake_json /_fake/calls \
  "['ok' for c in d if c['action'] == 'UnassignPrivateIpAddresses' and c['eni'] == '$ENI' and c['ips'] == ['$VICTIM'] and c['answer'] == 'Success']")
[ "$calls_ok" = ok ] || failures+=("no successful UnassignPrivateIpAddresses($ENI, $VICTIM)")
n_unassign=$(fake_json /_fake/calls "str(sum(c['action'] == 'UnassignPrivateIpAddresses' for c in d))")
[ "$n_unassign" = 1 ] || failures+=("expected exactly one UnassignPrivateIpAddresses, saw $n_unassign")
# An IPv4 API 3.0 release is confirmed by listing (docs/design.md, "Fleet scale"); its
# task is polled only when the IP is still listed two task-times after the call.
task_ok=$(fake_json /_fake/calls "'ok' if any(c['action'] == 'DescribeVpcTaskResult' and c['task_status'] == 'SUCCESS' for c in d) else 'no'")
grep -q 'confirmed by listing' "$TMP/enisync.log" && task_ok=ok
[ "$task_ok" = ok ] || failures+=("the task was never seen ending (no confirming listing, no SUCCESS poll)")
ips_after=$(cloud_ips)
rules_after=$(ip -n "$NS" rule show)
grep -qw "${VICTIM//./\\.}" <<<"$ips_after" && failures+=("the cloud still binds $VICTIM to $ENI")
grep -qw "${VICTIM//./\\.}" <<<"$rules_after" && failures+=("the stale rule for $VICTIM is still there")
for ip in 10.0.1.11 10.0.1.13 10.0.1.14 10.0.1.15; do
  grep -qw "${ip//./\\.}" <<<"$ips_after" || failures+=("the cloud lost $ip, which was never removed")
done

elapsed() { python3 -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.1f}s')" "$1" "$2"; }
say "RESULT"
if [ ${#failures[@]} -eq 0 ]; then
  note "OK: $VICTIM returned to the VPC and its stale rule removed, $(elapsed "$DELETED" "$DONE") after 'ip addr del' (grace 2s)"
  note "demo total $(elapsed "$STARTED" "$(date +%s.%N)")"
  exit 0
fi
for f in "${failures[@]}"; do note "FAIL: $f"; done
echo
echo "enisync log:"
sed 's/^/  /' "$TMP/enisync.log"
exit 1
