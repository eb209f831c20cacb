#!/usr/bin/env bash
# Static checks of the built packages: lintian and rpmlint report no errors (warnings are
# fixed or overridden with a reason), and both list the expected files with the expected
# modes, conffile flags, dependencies, scriptlets and payload compression.
#
#   tests/packaging/inspect.sh [X.deb X.rpm]
set -euo pipefail
cd "$(dirname "$0")/../.."
deb=${1:-$(ls target/packages/enisync_*-1_amd64.deb | tail -n1)}
rpm=${2:-$(ls target/packages/enisync-*-1.x86_64.rpm | tail -n1)}
fail() { echo "FAIL: $*" >&2; exit 1; }
step() { printf -- '--- %s\n' "$*" >&2; }

step "lintian $(basename "$deb")"
# --fail-on warning: a new warning must be fixed or overridden in packaging/lintian-overrides.
lintian --fail-on error,warning --pedantic --info "$deb" 2>&1 | grep -v 'running with root privileges' |
    tee target/packages/lintian.txt || true
lintian --fail-on error,warning "$deb" >/dev/null 2>&1 || fail "lintian reported errors or warnings"
if grep -E '^[EW]: ' target/packages/lintian.txt; then fail "lintian findings"; fi

step "deb contents"
listing=$(dpkg-deb -c "$deb")
has() { grep -Eq "^$1 +[0-9]+ [0-9-]+ [0-9:]+ \./$2\$" <<<"$listing" || fail "deb: $2 not $1"; }
has '-rwxr-xr-x 0/0' 'usr/bin/enisync'
has '-rw------- 0/0' 'etc/enisync/enisync.toml'
has '-rw-r--r-- 0/0' 'usr/lib/systemd/system/enisync.service'
has '-rw-r--r-- 0/0' 'etc/iproute2/rt_protos.d/enisync.conf'
has '-rwxr-xr-x 0/0' 'usr/libexec/enisync/flush-routing'
has '-rw-r--r-- 0/0' 'usr/share/man/man8/enisync.8.gz'
has '-rw-r--r-- 0/0' 'usr/share/doc/enisync/copyright'
ctl=$(mktemp -d)
trap 'rm -rf "$ctl"' EXIT
dpkg-deb -e "$deb" "$ctl"
grep -qx /etc/enisync/enisync.toml "$ctl/conffiles" || fail "deb: config is not a conffile"
grep -qx /etc/iproute2/rt_protos.d/enisync.conf "$ctl/conffiles" || fail "deb: rt_protos not a conffile"
dpkg-deb -f "$deb" Depends | grep >/dev/null 'libc6 (>= 2.28)' || fail "deb: Depends must say libc6 (>= 2.28)"
for s in postinst prerm postrm; do
    [ -x "$ctl/$s" ] || fail "deb: no $s"
    sh -n "$ctl/$s" || fail "deb: $s has a syntax error"
done
grep -q 'deb-systemd-invoke \$_dh_action enisync.service' "$ctl/postinst" || fail "deb: postinst does not start/restart"
grep -q 'flush-routing' "$ctl/prerm" || fail "deb: prerm does not remove owned routing"
grep -q 'rm -rf /var/lib/enisync' "$ctl/postrm" || fail "deb: postrm purge keeps the state"
mkdir "$ctl/x"
dpkg-deb -x "$deb" "$ctl/x"
bash tests/packaging/glibc_floor.sh "$ctl/x/usr/bin/enisync"

step "rpmlint $(basename "$rpm")"
rpmlint -c packaging/rpmlint.toml "$rpm" 2>&1 | tee target/packages/rpmlint.txt || true
grep -Eq ' 0 errors, [0-9]+ warnings' target/packages/rpmlint.txt || fail "rpmlint reported errors"

step "rpm contents"
files=$(rpm -qp --qf '[%{FILEMODES:perms} %{FILEUSERNAME}:%{FILEGROUPNAME} %{FILEFLAGS:fflags} %{FILENAMES}\n]' "$rpm")
echo "$files" >&2
rhas() { grep -Eq "^$1 $2\$" <<<"$files" || fail "rpm: $2 not '$1'"; }
rhas '-rwxr-xr-x root:root ' /usr/bin/enisync
rhas '-rw------- enisync:enisync cn' /etc/enisync/enisync.toml
rhas '-rw-r--r-- root:root ' /usr/lib/systemd/system/enisync.service
rhas '-rw-r--r-- root:root cn' /etc/iproute2/rt_protos.d/enisync.conf
rhas '-rwxr-xr-x root:root ' /usr/libexec/enisync/flush-routing
rhas '-rw-r--r-- root:root d' /usr/share/man/man8/enisync.8.gz
rpm -qpc "$rpm" | grep -x >/dev/null /etc/enisync/enisync.toml || fail "rpm: config not %config"
[ "$(rpm -qp --qf '%{PAYLOADCOMPRESSOR}' "$rpm")" = gzip ] || fail "rpm: payload is not gzip"
requires=$(rpm -qp --requires "$rpm")
if grep -E 'PayloadIsZstd|GLIBC_2\.(29|[3-9][0-9])' <<<"$requires"; then
    fail "rpm requires something an EL8 rpm/glibc lacks"
fi
scripts=$(rpm -qp --scripts "$rpm")
for s in preinstall postinstall preuninstall postuninstall; do
    grep -q "^$s scriptlet" <<<"$scripts" || fail "rpm: no $s scriptlet"
done
grep -q 'systemctl enable --now enisync.service' <<<"$scripts" || fail "rpm: %post does not enable"
grep -q 'systemctl try-restart enisync.service' <<<"$scripts" || fail "rpm: %postun does not restart"
grep -q 'systemctl disable --now enisync.service' <<<"$scripts" || fail "rpm: %preun does not stop"
grep -q 'useradd -r' <<<"$scripts" || fail "rpm: %pre does not create the user"

echo "inspect: ok (lintian clean, rpmlint 0 errors, files/modes/flags/scriptlets as expected)"
