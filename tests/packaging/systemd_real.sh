#!/usr/bin/env bash
# The operator's path under a real systemd.
#
# Boots Debian bookworm with `systemd-nspawn -b` (own network namespace), installs the
# freshly built .deb with `dpkg -i`, and walks what an operator does, against the fake
# Tencent Cloud listening on 127.0.0.1 inside the container's network namespace:
# install on a host without metadata, credentials through LoadCredential=, arm by
# reload, a release, pause across a restart, kill -9 in a grace period, reload while
# waiting for metadata, a broken reload, the hardening as enforced, an upgrade with a
# pending release, remove and purge. Each step is a check that can fail; the run goes on
# after a failure and ends with "systemd_real: N passed, M failed".
#
#   tests/packaging/systemd_real.sh [V1.deb V2.deb]   (V2: same package, higher revision)
#
# Needs root, systemd-nspawn (systemd-container), debootstrap, curl and jq on the host, and
# cargo (it builds target/debug/fakecloud). The first run debootstraps a root into
# target/pkgtest/bookworm-systemd (about 40 s); later runs copy it. After a failed check
# the container's journal and the fake's log stay in target/pkgtest/systemd-real.*
# (KEEP_LOGS=1: after a passing run too).
set -uo pipefail
cd "$(dirname "$0")/../.."
. tests/packaging/lib.sh
. tests/packaging/nspawn_lib.sh

T_START=$(date +%s)

# ---- the scene -----------------------------------------------------------------------
# The fake listens here inside the container's network namespace (nothing on the host).
PORT=18080
FAKE=http://127.0.0.1:$PORT
METRICS=127.0.0.1:9469
ENI=eni-sr0001
# Static API keys, handed to the daemon as systemd credentials; the instance has no CAM
# role, so a release signed with this id proves the credentials path.
AKID=AKIDsystemdreal000000000000000000000
SECRET_KEY=srSecretKey-do-not-log-0123456789ab
# Aux IPs on eth1: one per step that releases, so the steps do not depend on each other's
# leftovers (c: .12, f: .13, i: .14, j: .15).
AUX_IPS="10.0.1.11 10.0.1.12 10.0.1.13 10.0.1.14 10.0.1.15 10.0.1.16"
CONF=/etc/enisync/enisync.toml
MARKER="# edited by tests/packaging/systemd_real.sh (an operator's edit: upgrades keep it)"

JOURNAL_LOG=$PKGTEST_DIR/systemd-real.journal
FAKE_LOG=$PKGTEST_DIR/systemd-real.fakecloud.log
FAKE_PID=
WORK=
SETUP_DONE=
CHECK_PID=

deb1=${1:-$(ls target/packages/enisync_*-1_amd64.deb 2>/dev/null | tail -n1)}
deb2=${2:-$(ls target/packages/enisync_*-2_amd64.deb 2>/dev/null | tail -n1)}
[ -n "$deb1" ] && [ -f "$deb1" ] && [ -n "$deb2" ] && [ -f "$deb2" ] ||
    fail "need two .debs (revisions 1 and 2) in target/packages/: run scripts/package.sh and DEB_REVISION=2 scripts/package.sh --no-build"
v1=$(dpkg-deb -f "$deb1" Version)
v2=$(dpkg-deb -f "$deb2" Version)
dpkg --compare-versions "$v2" gt "$v1" || fail "$deb2 ($v2) must be newer than $deb1 ($v1)"
[ "$(id -u)" -eq 0 ] || fail "must run as root (systemd-nspawn, network namespaces)"
for tool in systemd-nspawn nsenter setsid curl jq; do
    command -v "$tool" >/dev/null || fail "$tool is not installed (systemd-container, util-linux, curl, jq)"
done

# ---- cleanup on every way out ----------------------------------------------------------

cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    [ -n "$SETUP_DONE" ] || echo "systemd_real: setup failed, no check ran" >&2
    if [ -n "$CHECK_PID" ]; then
        echo "systemd_real: interrupted" >&2
        kill -TERM "$CHECK_PID" 2>/dev/null || true
        wait "$CHECK_PID" 2>/dev/null || true
    fi
    # The container's journal, for a look after a failure (like deb-install.log).
    [ -z "$CT_PID" ] || in_ct journalctl -b --no-pager -o short-precise >"$JOURNAL_LOG" 2>&1 || true
    if [ -n "$FAKE_PID" ]; then
        kill -TERM "$FAKE_PID" 2>/dev/null || true
        wait_for 5 exited "$FAKE_PID" || kill -KILL "$FAKE_PID" 2>/dev/null || true
        wait "$FAKE_PID" 2>/dev/null || true
    fi
    # The fake ran in the container's network namespace, which goes with the container.
    ct_cleanup
    [ -z "$WORK" ] || rm -rf "$WORK"
    [ "$rc" != 0 ] || [ "${KEEP_LOGS:-0}" = 1 ] || rm -f "$JOURNAL_LOG" "$FAKE_LOG"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ---- small helpers ---------------------------------------------------------------------

now() { date +%s.%N; }
secs_since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }

# wait_for SECONDS CMD...: poll CMD until it succeeds; 1 if the deadline passes first.
wait_for() {
    local limit=$1 end
    shift
    end=$(awk -v n="$(now)" -v l="$limit" 'BEGIN { printf "%.3f", n + l }')
    while :; do
        "$@" && return 0
        awk -v n="$(now)" -v e="$end" 'BEGIN { exit !(n >= e) }' && return 1
        sleep 0.2
    done
}

# holds SECONDS CMD...: CMD stays true on every poll for SECONDS; 1 at the first miss.
holds() {
    local limit=$1 end
    shift
    end=$(awk -v n="$(now)" -v l="$limit" 'BEGIN { printf "%.3f", n + l }')
    while :; do
        "$@" || return 1
        awk -v n="$(now)" -v e="$end" 'BEGIN { exit !(n >= e) }' && return 0
        sleep 0.2
    done
}

# bounded SECONDS LOG CMD...: CMD inside the container (output to LOG), killed after
# SECONDS. Exit status of CMD, or 124 on timeout.
bounded() {
    local limit=$1 log=$2
    shift 2
    in_ct_bounded "$limit" "$@" >"$log" 2>&1
}

# The operator's commands (they talk to the daemon over its control socket), bounded.
cli() { in_ct_bounded 20 enisync "$@"; }

unit_prop() { in_ct systemctl show -p "$1" --value enisync.service 2>/dev/null; }
main_pid() { unit_prop MainPID; }
is_active() { [ "$(in_ct systemctl is-active enisync.service 2>/dev/null)" = active ]; }

# The journal. A mark is the wall clock in microseconds (the container shares the host's
# clock); a check reads only the daemon's records after its mark. Not journalctl's
# --after-cursor: combined with field matches, systemd 252 returned nothing at all.
jmark() { date +%s%6N; }
# daemon_records_since MARK [MATCH...]: the daemon's own records (not systemd's lines about
# the unit) after MARK, one JSON object per line.
daemon_records_since() {
    local mark=$1
    shift
    in_ct journalctl -q --no-pager -o json --since "@$((mark / 1000000 - 1))" \
        _SYSTEMD_UNIT=enisync.service "$@" 2>/dev/null |
        jq -c --argjson m "$mark" 'select((.__REALTIME_TIMESTAMP | tonumber) > $m)'
}
# daemon_said_since MARK REGEX: some record after MARK has a FIELD=value matching REGEX.
daemon_said_since() {
    local fields
    fields=$(daemon_records_since "$1" | jq -r 'to_entries[] | "\(.key)=\(.value)"')
    grep -Eq -- "$2" <<<"$fields"
}
# The last MESSAGEs after MARK, on one line, for failure messages.
daemon_messages_since() {
    daemon_records_since "$1" | jq -r '.MESSAGE // empty' | tail -n "${2:-8}" | tr '\n' '|'
}

# ---- the fake cloud ----------------------------------------------------------------------

fake_get() { in_ct_net curl -sf --noproxy '*' --max-time 5 "$FAKE$1"; }
fake_calls() { fake_get /_fake/calls; }
# unassign_calls IP: the UnassignPrivateIpAddresses calls naming IP, as compact JSON lines.
unassign_calls() {
    fake_calls | jq -c --arg ip "$1" \
        '.[] | select(.action == "UnassignPrivateIpAddresses" and ((.ips // []) | index($ip)))'
}
unassign_count() { unassign_calls "$1" | grep -c . || true; }
unassigned_once() { [ "$(unassign_count "$1")" -ge 1 ]; }
# exactly_one_unassign IP: one call, answered Success, signed with the credential's id.
exactly_one_unassign() {
    local calls n
    calls=$(unassign_calls "$1")
    n=$(grep -c . <<<"$calls" || true)
    [ "$n" = 1 ] || fail "expected exactly one UnassignPrivateIpAddresses for $1, the fake saw $n: $calls"
    jq -e --arg id "$AKID" --arg eni "$ENI" \
        '.answer == "Success" and .secret_id == $id and .eni == $eni' <<<"$calls" >/dev/null ||
        fail "the UnassignPrivateIpAddresses for $1 was not a Success on $ENI signed with $AKID: $calls"
}

write_scenario() {
    cat >"$WORK/scenario.json" <<EOF
{
  "task_duration_ms": 1500,
  "keys": [{"secret_id": "$AKID", "secret_key": "$SECRET_KEY"}],
  "instances": [{"id": "ins-sr000001", "region": "ap-guangzhou", "zone": "ap-guangzhou-3"}],
  "enis": [
    {"id": "eni-sr0000", "mac": "52:54:00:00:00:01", "vpc_id": "vpc-sr000001",
     "subnet_id": "subnet-sr0000", "subnet_cidr": "10.0.0.0/24", "primary": true,
     "instance_id": "ins-sr000001", "device_index": 0, "primary_ip": "10.0.0.10"},
    {"id": "$ENI", "mac": "52:54:00:12:34:56", "vpc_id": "vpc-sr000001",
     "subnet_id": "subnet-sr0001", "subnet_cidr": "10.0.1.0/24", "primary": false,
     "instance_id": "ins-sr000001", "device_index": 1, "primary_ip": "10.0.1.10",
     "secondary_ips": [$(printf '"%s",' $AUX_IPS | sed 's/,$//')]}
  ]
}
EOF
}

start_fake() {
    local bin=${CARGO_TARGET_DIR:-$PWD/target}/debug/fakecloud
    write_scenario
    # nsenter itself (not the in_ct_net function, which would run in a subshell) so that $!
    # is the fake's own pid: nsenter execs it after entering the network namespace.
    nsenter -t "$CT_PID" -n "$bin" --listen "127.0.0.1:$PORT" --scenario "$WORK/scenario.json" \
        >"$FAKE_LOG" 2>&1 </dev/null &
    FAKE_PID=$!
    wait_for 10 grep -q '^fakecloud: listening' "$FAKE_LOG" ||
        { cat "$FAKE_LOG" >&2; fail "fakecloud did not start in the container's network namespace"; }
}

build_fake() {
    if ! command -v cargo >/dev/null 2>&1; then
        local dir
        for dir in "$(getent passwd "${SUDO_USER:-root}" | cut -d: -f6)/.cargo/bin" /root/.cargo/bin; do
            [ -x "$dir/cargo" ] && PATH="$dir:$PATH" && break
        done
    fi
    command -v cargo >/dev/null || fail "cargo not found (needed to build target/debug/fakecloud)"
    cargo build --locked -q -p enisync-fakecloud --bin fakecloud >"$WORK/build.log" 2>&1 ||
        { tail -n 30 "$WORK/build.log" >&2; fail "cargo build of fakecloud failed"; }
}

# ---- the container's "ENIs" and the operator's files ---------------------------------------

# eth0 = the primary ENI, eth1 = a secondary ENI with aux IPs, MACs as in the scenario.
# The veth peers stay in the container and are up, so the "ENIs" have carrier.
make_enis() {
    {
        echo "link add eth0 address 52:54:00:00:00:01 type veth peer name peer0"
        echo "link set peer0 up"
        echo "link set eth0 up"
        echo "addr add 10.0.0.10/24 dev eth0"
        echo "link add eth1 address 52:54:00:12:34:56 type veth peer name peer1"
        echo "link set peer1 up"
        echo "link set eth1 up"
        echo "addr add 10.0.1.10/24 dev eth1"
        local ip
        for ip in $AUX_IPS; do echo "addr add $ip/24 dev eth1"; done
    } | in_ct ip -batch - || fail "could not create the veth ENIs in the container"
}

# The operator's edits of the packaged /etc/enisync/enisync.toml, made in place: the file
# keeps its inode, so its 0600 enisync owner too, and stays the packaged file plus edits
# (what an upgrade must keep).
#   set_key SECTION KEY VALUE   KEY = VALUE (raw TOML) in [SECTION], replacing a set one
#   del_key SECTION KEY         drop KEY from [SECTION]
set_key() {
    edit_config "$1" "$2" "$3"
}
del_key() {
    edit_config "$1" "$2" ""
}
edit_config() {
    local file=$CT_ROOT$CONF text
    text=$(awk -v sec="[$1]" -v key="$2" -v val="$3" '
        function put() { if (val != "" && !done) print key " = " val; done = 1 }
        $0 == sec { print; insec = 1; put(); next }
        /^\[/ { insec = 0 }
        insec && index($0, key " = ") == 1 { next }
        { print }
        END { if (!done && val != "") { print ""; print sec; put() } }' "$file") ||
        fail "could not edit $CONF"
    printf '%s\n' "$text" >"$file"
}

# Point the packaged config at the fake and shorten the grace period (what a test needs;
# an operator on a CVM keeps the endpoints' defaults).
point_at_fake() {
    grep -qxF "$MARKER" "$CT_ROOT$CONF" || printf '\n%s\n' "$MARKER" >>"$CT_ROOT$CONF"
    set_key cloud endpoint "\"$FAKE/\""
    # The fake speaks plain http; the daemon refuses an http:// API endpoint without this.
    set_key cloud allow_plain_http true
    set_key metadata endpoint "\"$FAKE/latest/meta-data/\""
    set_key release grace '"3s"'
}

# Keys as root-only files and the drop-in from packaging/credentials.conf, uncommented.
write_credentials() {
    (umask 077 && printf %s "$AKID" >"$CT_ROOT/etc/enisync/secret_id" &&
        printf %s "$SECRET_KEY" >"$CT_ROOT/etc/enisync/secret_key")
    mkdir -p "$CT_ROOT/etc/systemd/system/enisync.service.d"
    cat >"$CT_ROOT/etc/systemd/system/enisync.service.d/credentials.conf" <<EOF
[Service]
LoadCredential=tencentcloud_secret_id:/etc/enisync/secret_id
LoadCredential=tencentcloud_secret_key:/etc/enisync/secret_key
EOF
}

readyz_ok() { [ "$(in_ct_net curl -s -o /dev/null -w '%{http_code}' --max-time 2 "http://$METRICS/readyz")" = 200 ]; }

# restart_ready: a bounded restart that ends with /readyz answering 200.
restart_ready() {
    bounded 120 "$WORK/restart.log" systemctl restart enisync.service ||
        fail "systemctl restart enisync failed or hung: $(cat "$WORK/restart.log") (state $(unit_prop ActiveState)/$(unit_prop SubState))"
    wait_for 30 readyz_ok || fail "not ready 30s after the restart (/readyz not 200; status: $(unit_prop StatusText))"
}

# reload_seen: `systemctl reload`, then wait until the daemon logs something after it (a
# reload is a signal: systemctl may return before the daemon has read the file).
reload_seen() {
    local mark
    mark=$(jmark)
    bounded 30 "$WORK/reload.log" systemctl reload enisync.service ||
        fail "systemctl reload enisync failed: $(cat "$WORK/reload.log")"
    wait_for 10 daemon_said_since "$mark" 'MESSAGE=.*[Rr]eload' ||
        fail "no reload line from the daemon within 10s of systemctl reload"
    echo "$mark"
}

# wait_pending IP CURSOR: the daemon journaled the removal of IP (its grace period runs).
wait_pending() {
    wait_for 10 pending_logged "$1" "$2" ||
        fail "no pending release of $1 logged within 10s of its removal: $(daemon_messages_since "$2")"
}
pending_logged() {
    local records
    records=$(daemon_records_since "$2" DECISION=pending)
    jq -e --arg ip "$1" 'select(.IP == $ip)' <<<"$records" >/dev/null
}

# del_addr_by_live_ip IP: `ip addr del` as an operator's shell on the host would run it,
# which enisync can name and trace to its ancestors:
# - started by the container's own systemd (systemd-run), so its ancestry lies inside the
#   container: a process entered with nsenter from the host has a parent outside the
#   container's PID namespace (ppid 0 there), and a chain that leaves the namespace is
#   unknown, so its removal would be held;
# - alive for 2 s after the deletion (ip -batch waiting on its stdin): the kernel's process
#   events, which name a one-shot `ip` that exits before its notification is read, are
#   only available in the initial network namespace, and this container has its own.
del_addr_by_live_ip() {
    in_ct systemd-run --quiet --wait --pipe --collect \
        bash -c "{ echo 'addr del $1/24 dev eth1'; sleep 2; } | ip -batch -" ||
        fail "ip addr del $1 failed"
}

rule_present() {
    local rules
    rules=$(in_ct ip -4 rule show) || return 2
    grep -qE "from ${1//./\\.}( |/32 )" <<<"$rules"
}
rule_absent() {
    local rc=0
    rule_present "$1" || rc=$?
    [ "$rc" = 1 ]
}

# Predicates for wait_for / holds.
exited() { ! kill -0 "$1" 2>/dev/null; }
status_mentions() { [[ $(unit_prop StatusText) == *"$1"* ]]; }
active_with_restarts() { [ "$(unit_prop NRestarts)" = "$1" ] && is_active; }
active_as() { [ "$(main_pid)" = "$1" ] && is_active; }
active_not_as() {
    local p
    p=$(main_pid)
    [ -n "$p" ] && [ "$p" != 0 ] && [ "$p" != "$1" ] && is_active
}
status_json_is() { [ "$(cli status --json 2>/dev/null | jq -r "$1")" = "$2" ]; }
at_most_one_unassign() { [ "$(unassign_count "$1")" -le 1 ]; }
listing_signed_with_credential() {
    local calls
    calls=$(fake_calls)
    jq -e --arg id "$AKID" \
        'any(.[]; .action == "DescribeNetworkInterfaces" and .secret_id == $id)' <<<"$calls" >/dev/null
}
released_record_with_ip() {
    [ -n "$(in_ct journalctl -q -b -u enisync DECISION=released "IP=$1" -o json 2>/dev/null)" ]
}

container_procs_named() { # NAME: pids inside the container whose comm is NAME
    in_ct bash -c 'for p in /proc/[0-9]*; do [ "$(cat $p/comm 2>/dev/null)" = "$1" ] && echo "${p#/proc/}"; done; true' _ "$1"
}

# ---- the checks --------------------------------------------------------------------------

# a. dpkg -i returns promptly on a host whose metadata service does not answer (the packaged
# config names metadata.tencentyun.com, which does not resolve in a --private-network
# container), the unit is enabled and active, and it says what it waits for.
check_a_install() {
    local t0 pid elapsed
    t0=$(now)
    # In the background, to time it and to get dpkg back if it hangs; nsenter itself, so
    # that $pid is dpkg's own process (a function would run in a subshell).
    nsenter -t "$CT_PID" -a "${CT_ENV[@]}" dpkg -i /root/v1.deb >"$WORK/dpkg-v1.log" 2>&1 </dev/null &
    pid=$!
    if ! wait_for 60 exited "$pid"; then
        # Today's failure mode: postinst's start waits forever. Do what the operator must
        # (stop the unit from another terminal) so the rest of the run can go on.
        in_ct systemctl stop --no-block enisync.service >/dev/null 2>&1
        wait_for 60 exited "$pid" || kill -KILL "$pid" 2>/dev/null
        wait "$pid" 2>/dev/null
        fail "dpkg -i was still running after 60s (it returned only after systemctl stop enisync)"
    fi
    wait "$pid" || { cat "$WORK/dpkg-v1.log" >&2; fail "dpkg -i $v1 failed"; }
    elapsed=$(secs_since "$t0")
    echo "    dpkg -i took ${elapsed}s" >&2
    [ "$(in_ct systemctl is-enabled enisync.service 2>&1)" = enabled ] ||
        fail "after dpkg -i the unit is not enabled: $(in_ct systemctl is-enabled enisync.service 2>&1)"
    wait_for 10 is_active ||
        fail "after dpkg -i the unit is $(unit_prop ActiveState)/$(unit_prop SubState), not active"
    wait_for 10 status_mentions metadata ||
        fail "systemctl status does not say it waits for the metadata service (StatusText: '$(unit_prop StatusText)')"
    echo "    StatusText: $(unit_prop StatusText)" >&2
    holds 5 active_with_restarts 0 ||
        fail "the waiting unit did not stay active without restarts (NRestarts $(unit_prop NRestarts), $(unit_prop ActiveState))"
}

# b. Credentials through the LoadCredential= drop-in, check-config, restart, ready.
check_b_configure() {
    point_at_fake
    write_credentials
    in_ct_bounded 60 systemctl daemon-reload || fail "systemctl daemon-reload failed"
    local out
    out=$(cli check-config 2>&1) || fail "enisync check-config refused the operator's config: $out"
    restart_ready
    out=$(cli status 2>&1) || fail "enisync status failed: $out"
    grep -q 'dry run' <<<"$out" || fail "enisync status does not say dry run: $(head -n1 <<<"$out")"
    out=$(cli plan 2>&1) || fail "enisync plan failed: $out"
    # The instance has no CAM role: a listing signed with the static id came from the drop-in.
    wait_for 10 listing_signed_with_credential ||
        fail "no DescribeNetworkInterfaces signed with the credential's id $AKID"
}

# c1. Arm by reload: dry_run = false and `systemctl reload`; a removal is released with one
# signed call and its stale `from <ip>/32` rule is removed.
check_c_arm_by_reload() {
    local ip=10.0.1.12 mark
    rule_present "$ip" || in_ct ip rule add from "$ip/32" lookup 3501 pref 3500 || fail "could not add the stale rule"
    # The README's words: sed, check-config, reload.
    in_ct sed -i 's/^dry_run = true/dry_run = false/' $CONF || fail "sed -i on $CONF failed"
    grep -qx 'dry_run = false' "$CT_ROOT$CONF" || fail "the packaged config has no 'dry_run = true' line to arm"
    [ "$(in_ct stat -c '%a %U' "$CONF")" = "600 enisync" ] || fail "sed -i changed the config's owner or mode: $(in_ct stat -c '%a %U' "$CONF")"
    out=$(cli check-config 2>&1) || fail "check-config refused the armed config: $out"
    reload_seen >/dev/null
    wait_for 5 status_json_is .dry_run false || fail "enisync status --json still says dry_run 5s after the reload"
    mark=$(jmark)
    del_addr_by_live_ip "$ip"
    wait_for 30 unassigned_once "$ip" ||
        fail "no UnassignPrivateIpAddresses for $ip within 30s (grace 3s) after arming by reload: $(daemon_messages_since "$mark")"
    # The rule goes once the task has ended; the task takes 1.5s at the fake.
    wait_for 15 rule_absent "$ip" ||
        fail "the stale rule 'from $ip/32 lookup 3501' is still there 15s after the release (routing did not follow the reload's dry_run = false)"
    exactly_one_unassign "$ip"
}

# c2. A reload that changes routing.mode names it as needing a restart.
check_c_restart_named() {
    local mark
    set_key routing mode '"manage"'
    mark=$(reload_seen) || exit 1 # (fail inside $(...) only ends the substitution)
    wait_for 5 daemon_said_since "$mark" 'routing\.mode' ||
        fail "the reload changing routing.mode did not name routing.mode as needing a restart: $(daemon_messages_since "$mark" 4)"
}

# d. The release is a native journal record with the IP as a field.
check_d_journal_fields() {
    local ip=10.0.1.12 any
    wait_for 10 released_record_with_ip "$ip" && return 0
    any=$(in_ct journalctl -q -b -u enisync DECISION=released -o json | head -n1)
    [ -n "$any" ] || fail "journalctl -u enisync DECISION=released finds nothing"
    fail "journalctl -u enisync DECISION=released IP=$ip finds nothing; the record's fields: $(jq -c 'with_entries(select(.key | test("^[A-Z]") and (startswith("_") | not)))' <<<"$any")"
}

# The pending record of c1's removal names the remover process, ip: under the real unit's
# hardening the daemon still reads /proc/<pid>/comm of a root process (see the unit's
# ProtectProc= note).
check_remover_named() {
    local ip=10.0.1.12 rec remover
    rec=$(in_ct journalctl -q -b -u enisync DECISION=pending -o json | grep -F "\"$ip\"" | head -n1)
    [ -n "$rec" ] || fail "no DECISION=pending record for $ip"
    remover=$(jq -r '.REMOVER // empty' <<<"$rec")
    [[ $remover =~ (^|[^a-z])ip([^a-z]|$) ]] ||
        fail "the pending record's REMOVER is '$remover', not the process name 'ip'"
}

# e. The pause survives a restart and says since when and by whom; resume clears it.
check_e_pause_restart() {
    local out
    out=$(cli pause 2>&1) || fail "enisync pause failed: $out"
    restart_ready
    out=$(cli status 2>&1) || fail "enisync status failed after the restart: $out"
    grep -q 'paused' <<<"$out" || fail "not paused after a restart: $(head -n1 <<<"$out")"
    echo "    $(grep -m1 paused <<<"$out")" >&2
    grep -q 'uid 0' <<<"$out" || fail "enisync status does not say who paused (uid 0): $(head -n3 <<<"$out" | tr '\n' '|')"
    local lines
    lines=$(grep -E 'paused|uid 0' <<<"$out")
    grep -Eq 'since|ago|[0-9]{2}:[0-9]{2}' <<<"$lines" ||
        fail "enisync status does not say since when it is paused: $(tr '\n' '|' <<<"$lines")"
    [ "$(cli status --json | jq -r .paused)" = true ] || fail "status --json: paused is not true"
    out=$(cli resume 2>&1) || fail "enisync resume failed: $out"
    [ "$(cli status --json | jq -r .paused)" = false ] || fail "still paused after resume"
}

# f. kill -9 inside a grace period: systemd restarts it, the release happens exactly once.
check_f_kill_in_grace() {
    local ip=10.0.1.13 n0 pid0 mark
    set_key release dry_run false
    set_key release grace '"8s"'
    reload_seen >/dev/null
    n0=$(unit_prop NRestarts)
    pid0=$(main_pid)
    mark=$(jmark)
    del_addr_by_live_ip "$ip"
    wait_pending "$ip" "$mark"
    [ "$(unassign_count "$ip")" = 0 ] || fail "released $ip before its 8s grace ended"
    in_ct bash -c "kill -9 $pid0" || fail "kill -9 $pid0 failed"
    wait_for 30 active_with_restarts $((n0 + 1)) ||
        fail "systemd did not restart the service after kill -9 (NRestarts $(unit_prop NRestarts), was $n0; $(unit_prop ActiveState))"
    [ "$(main_pid)" != "$pid0" ] || fail "MainPID unchanged after kill -9"
    wait_for 45 unassigned_once "$ip" ||
        fail "the pending release of $ip did not complete within 45s of the restart: $(daemon_messages_since "$mark")"
    # Exactly once: the count stays 1 while the task ends and the daemon records it.
    holds 4 at_most_one_unassign "$ip" ||
        fail "$ip was unassigned more than once"
    exactly_one_unassign "$ip"
}

# h. SIGHUP while waiting for the metadata service: it stays up (same MainPID) and says so.
check_h_reload_while_waiting() {
    local pid0 mark
    # Nothing listens on port 1: the metadata service does not answer.
    set_key metadata endpoint '"http://127.0.0.1:1/latest/meta-data/"'
    in_ct systemctl restart --no-block enisync.service || fail "systemctl restart --no-block failed"
    wait_for 20 status_mentions metadata ||
        fail "no StatusText about the metadata service 20s after pointing it at a dead port ('$(unit_prop StatusText)')"
    wait_for 10 is_active ||
        fail "while waiting for the metadata service the unit is $(unit_prop ActiveState)/$(unit_prop SubState), not active, so it cannot be reloaded"
    pid0=$(main_pid)
    mark=$(jmark)
    bounded 30 "$WORK/reload.log" systemctl reload enisync.service ||
        fail "systemctl reload while waiting failed: $(cat "$WORK/reload.log")"
    holds 4 active_as "$pid0" ||
        fail "the reload while waiting ended the daemon (MainPID $pid0 -> $(main_pid), $(unit_prop ActiveState)/$(unit_prop Result))"
    wait_for 10 daemon_said_since "$mark" 'MESSAGE=.*[Rr]eload' ||
        fail "the daemon logged nothing about the reload while waiting: $(daemon_messages_since "$mark" 4)"
}

# i. A broken file on reload: same process, the journal names the key, releases go on under
# the old configuration.
check_i_broken_reload() {
    local ip=10.0.1.14 pid0 mark
    pid0=$(main_pid)
    set_key release grace '"3s"'
    set_key release grase '"1s"'
    mark=$(jmark)
    bounded 30 "$WORK/reload.log" systemctl reload enisync.service ||
        fail "systemctl reload failed: $(cat "$WORK/reload.log")"
    wait_for 10 daemon_said_since "$mark" 'release\.grase' ||
        fail "the journal does not name release.grase after a reload with a broken file: $(daemon_messages_since "$mark" 3)"
    holds 2 active_as "$pid0" ||
        fail "the broken reload ended the daemon (MainPID $pid0 -> $(main_pid))"
    mark=$(jmark)
    del_addr_by_live_ip "$ip"
    wait_for 30 unassigned_once "$ip" ||
        fail "no release of $ip on the old configuration after the broken reload: $(daemon_messages_since "$mark")"
    exactly_one_unassign "$ip"
}

# l. The hardening as enforced on the running daemon, the online security score, and the
# secret key never in the journal or the status.
check_l_hardening() {
    local pid st uid cap score report
    pid=$(main_pid)
    [ -n "$pid" ] && [ "$pid" != 0 ] || fail "no MainPID"
    st=$(in_ct cat "/proc/$pid/status") || fail "cannot read /proc/$pid/status"
    uid=$(awk '/^Uid:/ { print $2, $3, $4, $5 }' <<<"$st")
    [[ $uid =~ ^[1-9][0-9]*\ [1-9][0-9]*\ [1-9][0-9]*\ [1-9][0-9]*$ ]] || fail "runs with Uid '$uid' (want non-root)"
    cap=$(awk '/^CapEff:/ { print $2 }' <<<"$st")
    [ "$cap" = 0000000000001000 ] || fail "CapEff $cap (want 0000000000001000, CAP_NET_ADMIN only)"
    grep -Eq '^NoNewPrivs:[[:space:]]+1$' <<<"$st" || fail "NoNewPrivs is not 1"
    grep -Eq '^Seccomp:[[:space:]]+2$' <<<"$st" || fail "no seccomp filter (Seccomp is not 2)"
    report=$(in_ct systemd-analyze security --no-pager enisync.service 2>&1)
    score=$(sed -n 's/.*Overall exposure level for enisync.service: \([0-9.]*\).*/\1/p' <<<"$report")
    [ -n "$score" ] || fail "systemd-analyze security gave no score: $(tail -n 3 <<<"$report")"
    echo "    uid $uid, CapEff $cap, exposure $score (online, in the container)" >&2
    awk -v s="$score" 'BEGIN { exit !(s <= 2.0) }' || fail "exposure $score is above 2.0"
    local journal status
    journal=$(in_ct journalctl -b -u enisync -o verbose --no-pager) || fail "journalctl failed"
    [ -n "$journal" ] || fail "journalctl -u enisync is empty"
    ! grep -qF "$SECRET_KEY" <<<"$journal" || fail "the secret key appears in journalctl -u enisync"
    status=$(cli status --json) || fail "enisync status --json failed"
    ! grep -qF "$SECRET_KEY" <<<"$status" || fail "the secret key appears in enisync status --json"
}

# j. Upgrade to revision 2 with a release pending: config kept, new binary running, the
# release completes once.
check_j_upgrade() {
    local ip=10.0.1.15 pid0 pid1 mark exe
    set_key release dry_run false
    set_key release grace '"20s"'
    reload_seen >/dev/null
    pid0=$(main_pid)
    mark=$(jmark)
    del_addr_by_live_ip "$ip"
    wait_pending "$ip" "$mark"
    bounded 120 "$WORK/dpkg-v2.log" dpkg -i /root/v2.deb </dev/null ||
        fail "dpkg -i $v2 failed or hung: $(tail -n 5 "$WORK/dpkg-v2.log" | tr '\n' '|')"
    [ "$(in_ct dpkg-query -W -f '${Version}' enisync)" = "$v2" ] || fail "dpkg-query does not show $v2"
    grep -qxF "$MARKER" "$CT_ROOT$CONF" && grep -qx 'grace = "20s"' "$CT_ROOT$CONF" ||
        fail "the upgrade did not keep the edited $CONF"
    [ "$(in_ct stat -c '%a %U' "$CONF")" = "600 enisync" ] || fail "config owner/mode after upgrade: $(in_ct stat -c '%a %U' "$CONF")"
    wait_for 60 active_not_as "$pid0" ||
        fail "the service was not restarted onto the new binary (MainPID $pid0 -> $(main_pid), $(unit_prop ActiveState))"
    pid1=$(main_pid)
    exe=$(in_ct readlink "/proc/$pid1/exe")
    [ "$exe" = /usr/bin/enisync ] || fail "the running binary is '$exe', not the installed /usr/bin/enisync"
    [ "$(unassign_count "$ip")" = 0 ] || fail "released $ip before its grace period ended (grace 20s)"
    wait_for 60 unassigned_once "$ip" ||
        fail "the release of $ip pending across the upgrade did not complete within 60s: $(daemon_messages_since "$mark")"
    holds 4 at_most_one_unassign "$ip" ||
        fail "$ip was unassigned more than once"
    exactly_one_unassign "$ip"
}

# g. The watchdog is armed and never fired over the whole run.
check_g_watchdog() {
    local wd
    wd=$(unit_prop WatchdogUSec)
    [ -n "$wd" ] && [ "$wd" != 0 ] && [ "$wd" != infinity ] || fail "WatchdogUSec is '$wd'"
    echo "    WatchdogUSec=$wd" >&2
    if in_ct journalctl -b -u enisync --no-pager -o cat | grep -i 'watchdog timeout' >&2; then
        fail "the journal has a watchdog timeout"
    fi
}

# k. Remove: stopped, nothing with protocol 212 left (what the daemon made in manage mode
# and a seeded one), other rules kept. Purge: /var/lib/enisync gone.
check_k_remove_purge() {
    local owned
    # manage mode makes the ENI's table and rules (protocol 212), for dpkg -r to remove.
    set_key routing mode '"manage"'
    restart_ready
    # Seed one rule and route of ours too, so the check has something to remove even if
    # the daemon made none, and one foreign rule that must stay.
    in_ct ip rule add pref 3600 from 10.77.0.5 lookup 3601 protocol 212
    in_ct ip route add 10.77.0.0/24 dev lo table 3601 proto 212
    in_ct ip rule add pref 3600 from 10.77.0.6 lookup 3602 protocol static
    echo "    owned before dpkg -r: $(ct_owned | tr '\n' '|')" >&2
    bounded 120 "$WORK/dpkg-r.log" dpkg -r enisync </dev/null ||
        fail "dpkg -r failed or hung: $(tail -n 5 "$WORK/dpkg-r.log" | tr '\n' '|')"
    ! is_active || fail "the service is still active after dpkg -r"
    [ -z "$(container_procs_named enisync)" ] || fail "an enisync process runs after dpkg -r"
    owned=$(ct_owned)
    [ -z "$owned" ] || fail "rules/routes with protocol 212 left after dpkg -r: $owned"
    rule_present 10.77.0.6 || fail "dpkg -r removed a rule it does not own (from 10.77.0.6 lookup 3602)"
    bounded 120 "$WORK/dpkg-P.log" dpkg -P enisync </dev/null ||
        fail "dpkg -P failed: $(tail -n 5 "$WORK/dpkg-P.log" | tr '\n' '|')"
    [ ! -e "$CT_ROOT/var/lib/enisync" ] || fail "/var/lib/enisync is still there after dpkg -P"
}
ct_owned() {
    { in_ct ip -4 rule show; in_ct ip -4 route show table all; } | grep -E 'proto (212|enisync)( |$)' || true
}

# ---- the run ------------------------------------------------------------------------------

passed=0
failed=0
failures=()
# check ID TITLE FUNCTION: one step; a failing check (fail exits its subshell) is counted
# and the run goes on.
check() {
    local id=$1 title=$2 fn=$3 t0
    step "$id: $title"
    t0=$(date +%s)
    # In the background and waited for: a signal to this script interrupts `wait` at once
    # (it would wait for a foreground subshell to finish), and cleanup ends the check.
    ("$fn") &
    CHECK_PID=$!
    if wait "$CHECK_PID"; then
        passed=$((passed + 1))
        echo "    ok ($(($(date +%s) - t0))s)" >&2
    else
        failed=$((failed + 1))
        failures+=("$id")
        echo "    FAILED ($(($(date +%s) - t0))s)" >&2
    fi
    CHECK_PID=
}

WORK=$(mktemp -d /tmp/enisync-systemd-real.XXXXXX)
build_fake
ensure_systemd_root_cache
t_boot=$(now)
ct_boot "systemd-real-$$"
echo "    container booted in $(secs_since "$t_boot")s (copy of the cached root included)" >&2
cp "$deb1" "$CT_ROOT/root/v1.deb"
cp "$deb2" "$CT_ROOT/root/v2.deb"
make_enis
start_fake
T_SETUP=$(($(date +%s) - T_START))
SETUP_DONE=1

# In the operator's order. l runs late so that its secret-key scan covers nearly the whole
# journal, and before j/k, which replace and remove the daemon; g looks back over the run.
check a "dpkg -i $v1 with no metadata service: returns promptly, enabled, active, says what it waits for" check_a_install
check b "credentials by LoadCredential= drop-in, check-config, restart, ready" check_b_configure
check c1 "arm by reload (dry_run = false): one signed unassign, stale rule removed" check_c_arm_by_reload
check c2 "reload changing routing.mode names it as needing a restart" check_c_restart_named
# c2 left routing.mode = manage in the file; back to the running mode.
set_key routing mode '"cleanup"'
in_ct_bounded 30 systemctl reload enisync.service >/dev/null 2>&1
check d "journalctl -u enisync DECISION=released IP=<ip>" check_d_journal_fields
check remover "the pending record names the remover process (ip)" check_remover_named
check e "pause survives systemctl restart, says since when and by uid 0; resume clears it" check_e_pause_restart
cli resume >/dev/null 2>&1 # whatever e found, the next steps need releases
check f "kill -9 in a grace period: restarted, released exactly once" check_f_kill_in_grace
in_ct systemctl reset-failed enisync.service >/dev/null 2>&1
check h "systemctl reload while waiting for the metadata service: same process, logged" check_h_reload_while_waiting
# Back to the fake's metadata: a full restart, ready again.
set_key metadata endpoint "\"$FAKE/latest/meta-data/\""
(restart_ready) || echo "    (could not get the service ready again after h)" >&2
check i "reload with a broken file (release.grase): stays up, names the key, old config works" check_i_broken_reload
del_key release grase
in_ct_bounded 30 systemctl reload enisync.service >/dev/null 2>&1
check l "hardening in force: non-root, CapEff = CAP_NET_ADMIN, NoNewPrivs, seccomp, exposure <= 2.0, no secret in logs" check_l_hardening
check j "upgrade to $v2 with a pending release: config kept, new binary, released once" check_j_upgrade
check g "watchdog armed (WatchdogUSec), no watchdog timeout over the run" check_g_watchdog
check k "dpkg -r: stopped, no protocol-212 rule or route left; dpkg -P: /var/lib/enisync gone" check_k_remove_purge

T_TOTAL=$(($(date +%s) - T_START))
echo "    timings: setup ${T_SETUP}s${DEBOOTSTRAP_SECONDS:+ (debootstrap ${DEBOOTSTRAP_SECONDS}s)}, total ${T_TOTAL}s" >&2
[ $failed -eq 0 ] || echo "    failed: ${failures[*]} (container journal: $JOURNAL_LOG)" >&2
echo "systemd_real: $passed passed, $failed failed"
[ $failed -eq 0 ]
