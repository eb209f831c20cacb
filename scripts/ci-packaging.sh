#!/usr/bin/env bash
# Packaging CI: installs what it needs, builds the .deb and .rpm (scripts/package.sh), and
# runs every packaging check in tests/packaging/. Exits non-zero if any check fails.
# Needs root (network namespaces, chroot, debootstrap). The first run debootstraps a
# minimal bookworm root into target/pkgtest/ (a few minutes); later runs reuse it.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR=never
start=$(date +%s)

[ "$(id -u)" -eq 0 ] || { echo "ci-packaging.sh: must run as root" >&2; exit 1; }

# Tools from Debian: lintian, rpm (+rpmbuild-free inspection), rpmlint, debootstrap,
# systemd-analyze, objdump/readelf, ip, systemd-nspawn, curl, jq.
need_apt=()
command -v lintian >/dev/null || need_apt+=(lintian)
command -v rpm >/dev/null || need_apt+=(rpm)
command -v rpmlint >/dev/null || need_apt+=(rpmlint)
command -v debootstrap >/dev/null || need_apt+=(debootstrap)
command -v systemd-analyze >/dev/null || need_apt+=(systemd)
command -v objdump >/dev/null || need_apt+=(binutils)
command -v ip >/dev/null || need_apt+=(iproute2)
command -v gzip >/dev/null || need_apt+=(gzip)
# The real-systemd test: a booted bookworm container, the fake cloud's JSON read with curl/jq.
command -v systemd-nspawn >/dev/null || need_apt+=(systemd-container)
command -v nsenter >/dev/null || need_apt+=(util-linux)
command -v curl >/dev/null || need_apt+=(curl)
command -v jq >/dev/null || need_apt+=(jq)
if [ ${#need_apt[@]} -gt 0 ]; then
    echo "==> apt-get install ${need_apt[*]}" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi

echo "==> building the packages" >&2
scripts/package.sh
# The same package with a higher revision, for the upgrade tests.
DEB_REVISION=2 RPM_RELEASE=2 scripts/package.sh --no-build

passed=0
failed=0
failures=()
run() {
    local name=$1
    shift
    echo "==> $name" >&2
    local t0=$(date +%s)
    if "$@"; then
        passed=$((passed + 1))
        echo "    $name passed in $(($(date +%s) - t0))s" >&2
    else
        failed=$((failed + 1))
        failures+=("$name")
        echo "    $name FAILED" >&2
    fi
}

run config bash tests/packaging/config.sh
run glibc_floor bash tests/packaging/glibc_floor.sh
run unit bash tests/packaging/unit.sh
run flush_routing bash tests/packaging/flush_routing.sh
run inspect bash tests/packaging/inspect.sh
run deb_install bash tests/packaging/deb_install.sh
run rpm_install bash tests/packaging/rpm_install.sh
# The operator's path under a real systemd (systemd-nspawn): about 1.5 minutes with a
# cached root, plus about 40 s for the first debootstrap.
run systemd_real bash tests/packaging/systemd_real.sh

echo "==> packages:" >&2
ls -l target/packages/*.deb target/packages/*.rpm >&2
echo "==> took $(($(date +%s) - start))s" >&2
[ $failed -eq 0 ] || echo "failed: ${failures[*]}" >&2
echo "packaging: $passed passed, $failed failed"
[ $failed -eq 0 ]
