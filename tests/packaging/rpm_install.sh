#!/usr/bin/env bash
# Runs the .rpm's scriptlets for real: rpm --root installs, upgrades and erases the package
# in a copy of the minimal Debian root (it has /bin/sh, getent, useradd; no rpm-based root
# can be fetched here), with the systemctl stand-in recording the calls. Dependencies are
# not checked (--nodeps): the root is Debian. Needs root and rpm.
#
#   tests/packaging/rpm_install.sh [R1.rpm R2.rpm]   (R2: same package, higher release)
set -euo pipefail
cd "$(dirname "$0")/../.."
. tests/packaging/lib.sh

rpm1=${1:-$(ls target/packages/enisync-*-1.x86_64.rpm | tail -n1)}
rpm2=${2:-$(ls target/packages/enisync-*-2.x86_64.rpm | tail -n1)}
[ -f "$rpm1" ] && [ -f "$rpm2" ] || fail "need two .rpms (releases 1 and 2): $rpm1 $rpm2"

ensure_root_cache
root=$(new_root rpm-root)
ns=$(new_netns rpm)
trap 'ip netns delete "$ns" 2>/dev/null || true' EXIT
conf=$root/etc/enisync/enisync.toml
rpm_root() { ip netns exec "$ns" rpm --root "$root" --nodeps --nosignature "$@"; }
rpm --root "$root" --initdb

step "install $(basename "$rpm1")"
rpm_root -i "$rpm1" || fail "rpm -i failed"
expect_call "$root" '^systemctl daemon-reload$'
expect_call "$root" '^systemctl enable --now enisync\.service$'
refuse_call "$root" 'restart|disable|stop'
only_our_unit "$root"
in_root "$root" "$ns" getent passwd enisync | grep >/dev/null ':/var/lib/enisync:/sbin/nologin$' ||
    fail "%pre did not create the enisync user"
cstat=$(in_root "$root" "$ns" stat -c '%a %U:%G' /etc/enisync/enisync.toml)
[ "$cstat" = "600 enisync:enisync" ] || fail "config: $cstat"
[ "$(stat -c '%a' "$root/usr/bin/enisync")" = 755 ] || fail "binary mode"
[ "$(stat -c '%a' "$root/usr/lib/systemd/system/enisync.service")" = 644 ] || fail "unit mode"
in_root "$root" "$ns" runuser -u enisync -- enisync check-config --config /etc/enisync/enisync.toml |
    grep >/dev/null 'dry_run true' || fail "enisync user cannot validate the installed config"

step "local edit, then upgrade to $(basename "$rpm2")"
echo '# local edit: keep me' >>"$conf"
mkdir -p "$root/var/lib/enisync"
echo journal >"$root/var/lib/enisync/journal"
reset_calls "$root"
rpm_root -U "$rpm2" || fail "rpm -U failed"
expect_call "$root" '^systemctl try-restart enisync\.service$'
refuse_call "$root" 'enable|disable|stop'
only_our_unit "$root"
grep -q '^# local edit: keep me$' "$conf" || fail "upgrade replaced the edited config"
[ "$(rpm --root "$root" -q enisync)" = "$(basename "$rpm2" .rpm)" ] || fail "not upgraded"
[ -f "$root/var/lib/enisync/journal" ] || fail "upgrade lost the state"

step "erase"
seed_routing "$ns"
foreign_before=$(foreign_objects "$ns")
reset_calls "$root"
rpm_root -e enisync 2>"$PKGTEST_DIR/rpm-erase.log" || { cat "$PKGTEST_DIR/rpm-erase.log" >&2; fail "rpm -e failed"; }
expect_call "$root" '^systemctl disable --now enisync\.service$'
refuse_call "$root" 'restart|enable'
only_our_unit "$root"
owned=$(owned_objects "$ns")
[ -z "$owned" ] || fail "rules/routes with protocol 212 left after erase: $owned"
[ "$(foreign_objects "$ns")" = "$foreign_before" ] || fail "erase touched foreign rules or routes"
[ ! -e "$root/var/lib/enisync" ] || fail "/var/lib/enisync left after erase"
[ ! -e "$root/usr/bin/enisync" ] || fail "binary left after erase"
[ ! -e "$conf" ] || fail "config left in place after erase"
[ -f "$conf.rpmsave" ] || fail "the edited config was not saved as .rpmsave"

echo "rpm_install: ok (scriptlets: install, upgrade keeping the edited config, erase)"
