#!/usr/bin/env bash
# Installs, upgrades, removes and purges the .deb in a minimal Debian bookworm root and
# checks what the maintainer scripts did: systemd calls (through stand-ins), files, owners
# and modes, the conffile across an upgrade with local edits, and the cleanup of the rules
# and routes enisync owns. Needs root.
#
#   tests/packaging/deb_install.sh [V1.deb V2.deb]   (V2: same package, higher version)
set -euo pipefail
cd "$(dirname "$0")/../.."
. tests/packaging/lib.sh

deb1=${1:-$(ls target/packages/enisync_*-1_amd64.deb | tail -n1)}
deb2=${2:-$(ls target/packages/enisync_*-2_amd64.deb | tail -n1)}
[ -f "$deb1" ] && [ -f "$deb2" ] || fail "need two .debs (revisions 1 and 2): $deb1 $deb2"
v1=$(dpkg-deb -f "$deb1" Version)
v2=$(dpkg-deb -f "$deb2" Version)
dpkg --compare-versions "$v2" gt "$v1" || fail "$deb2 ($v2) must be newer than $deb1 ($v1)"

ensure_root_cache
root=$(new_root deb-root)
ns=$(new_netns deb)
trap 'ip netns delete "$ns" 2>/dev/null || true' EXIT
cp "$deb1" "$root/tmp/v1.deb"
cp "$deb2" "$root/tmp/v2.deb"
conf=$root/etc/enisync/enisync.toml

step "install $v1"
in_root "$root" "$ns" dpkg -i /tmp/v1.deb >"$PKGTEST_DIR/deb-install.log" 2>&1 ||
    { cat "$PKGTEST_DIR/deb-install.log" >&2; fail "dpkg -i failed"; }
expect_call "$root" '^deb-systemd-helper unmask enisync\.service$'
expect_call "$root" '^deb-systemd-helper enable enisync\.service$'
expect_call "$root" '^deb-systemd-invoke start enisync\.service$'
refuse_call "$root" ' (restart|stop) '
only_our_unit "$root"

version=$(in_root "$root" "$ns" enisync --version)
[ "$version" = "enisync ${v1%-*}" ] || fail "enisync --version in the chroot said: $version"
in_root "$root" "$ns" getent passwd enisync | grep >/dev/null ':/var/lib/enisync:/usr/sbin/nologin$' ||
    fail "system user enisync missing or not a nologin user"
# The service user (not just root) can read the 0600 configuration, and it is dry-run.
in_root "$root" "$ns" runuser -u enisync -- enisync check-config --config /etc/enisync/enisync.toml |
    grep >/dev/null 'dry_run true' || fail "enisync user cannot validate the installed config"
cstat=$(in_root "$root" "$ns" stat -c '%a %U:%G' /etc/enisync/enisync.toml)
[ "$cstat" = "600 enisync:enisync" ] || fail "config: $cstat"
[ "$(in_root "$root" "$ns" stat -c '%a %U' /usr/bin/enisync)" = "755 root" ] || fail "binary mode"
[ "$(stat -c '%a' "$root/usr/lib/systemd/system/enisync.service")" = 644 ] || fail "unit mode"
grep -qx 'ExecStart=/usr/bin/enisync run --config /etc/enisync/enisync.toml' \
    "$root/usr/lib/systemd/system/enisync.service" || fail "unit ExecStart"
grep -Eq '^212[[:space:]]+enisync$' "$root/etc/iproute2/rt_protos.d/enisync.conf" || fail "rt_protos"
[ -s "$root/usr/share/man/man8/enisync.8.gz" ] || fail "man page"
[ -x "$root/usr/libexec/enisync/flush-routing" ] || fail "flush helper"
in_root "$root" "$ns" dpkg-query -W -f='${Conffiles}\n' enisync | grep >/dev/null '/etc/enisync/enisync.toml' ||
    fail "config is not a conffile"
# The installed rt_protos name is used by iproute2.
in_root "$root" "$ns" ip rule add pref 3600 from 10.77.9.9 lookup 3600 protocol enisync
rules=$(in_root "$root" "$ns" ip rule show)
grep -q 'from 10.77.9.9 lookup 3600 proto enisync' <<<"$rules" ||
    fail "iproute2 does not resolve protocol 212 as enisync: $rules"

step "local edit, then upgrade to $v2"
echo '# local edit: keep me' >>"$conf"
# The service would have created its state directory.
mkdir -p "$root/var/lib/enisync"
echo journal >"$root/var/lib/enisync/journal"
in_root "$root" "$ns" chown -R enisync:enisync /var/lib/enisync
reset_calls "$root"
in_root "$root" "$ns" dpkg -i /tmp/v2.deb >"$PKGTEST_DIR/deb-upgrade.log" 2>&1 ||
    { cat "$PKGTEST_DIR/deb-upgrade.log" >&2; fail "upgrade failed"; }
expect_call "$root" '^deb-systemd-invoke restart enisync\.service$'
refuse_call "$root" ' (start|stop) enisync'
only_our_unit "$root"
[ "$(in_root "$root" "$ns" dpkg-query -W -f='${Version}' enisync)" = "$v2" ] || fail "not upgraded"
grep -q '^# local edit: keep me$' "$conf" || fail "upgrade lost the local edit of the conffile"
[ "$(in_root "$root" "$ns" stat -c '%a %U:%G' /etc/enisync/enisync.toml)" = "600 enisync:enisync" ] ||
    fail "config owner after upgrade"
[ -f "$root/var/lib/enisync/journal" ] || fail "upgrade lost the state"

step "remove"
seed_routing "$ns"
foreign_before=$(foreign_objects "$ns")
[ -n "$(owned_objects "$ns")" ] || fail "setup: no owned rules"
reset_calls "$root"
in_root "$root" "$ns" dpkg -r enisync >"$PKGTEST_DIR/deb-remove.log" 2>&1 ||
    { cat "$PKGTEST_DIR/deb-remove.log" >&2; fail "dpkg -r failed"; }
expect_call "$root" '^deb-systemd-invoke stop enisync\.service$'
expect_call "$root" '^deb-systemd-helper mask enisync\.service$'
refuse_call "$root" ' (start|restart) '
only_our_unit "$root"
[ ! -e "$root/usr/bin/enisync" ] || fail "binary left after remove"
[ ! -e "$root/usr/lib/systemd/system/enisync.service" ] || fail "unit left after remove"
grep -q '^# local edit: keep me$' "$conf" || fail "remove must keep the conffile"
[ -f "$root/var/lib/enisync/journal" ] || fail "remove must keep the state (purge removes it)"
owned=$(owned_objects "$ns")
[ -z "$owned" ] || fail "rules/routes with protocol 212 left after remove: $owned"
[ "$(foreign_objects "$ns")" = "$foreign_before" ] || fail "remove touched foreign rules or routes"
grep -q 'removed 2 rule(s) and 1 route(s)' "$PKGTEST_DIR/deb-remove.log" ||
    { cat "$PKGTEST_DIR/deb-remove.log" >&2; fail "flush helper did not report its work"; }

step "purge"
reset_calls "$root"
in_root "$root" "$ns" dpkg -P enisync >"$PKGTEST_DIR/deb-purge.log" 2>&1 ||
    { cat "$PKGTEST_DIR/deb-purge.log" >&2; fail "dpkg -P failed"; }
expect_call "$root" '^deb-systemd-helper purge enisync\.service$'
only_our_unit "$root"
for gone in /etc/enisync /var/lib/enisync /etc/iproute2/rt_protos.d/enisync.conf \
    /usr/libexec/enisync /usr/share/doc/enisync; do
    [ ! -e "$root$gone" ] || fail "$gone left after purge"
done
if in_root "$root" "$ns" dpkg-statoverride --list | grep >/dev/null enisync; then
    fail "statoverride left after purge"
fi
in_root "$root" "$ns" dpkg-query -W enisync >/dev/null 2>&1 && fail "package still known to dpkg"

echo "deb_install: ok (install $v1, upgrade to $v2 keeping local edits, remove, purge)"
