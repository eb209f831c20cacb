#!/usr/bin/env bash
# The binary runs on glibc >= 2.28 (EL8 and newer): no symbol version above GLIBC_2.28,
# no other shared library than glibc's own. With a path argument, checks that file
# (e.g. the binary extracted from the .deb); else the zigbuild output.
set -euo pipefail
cd "$(dirname "$0")/../.."
bin=${1:-target/x86_64-unknown-linux-gnu/release/enisync}
floor=2.28
fail() { echo "FAIL: $*" >&2; exit 1; }
[ -f "$bin" ] || fail "$bin not found"

if ! readelf -d "$bin" | grep >/dev/null '(NEEDED)'; then
    echo "glibc_floor: ok ($bin is static)"
    exit 0
fi
# Every version the binary needs from glibc (readelf -V: .gnu.version_r), and the
# versions of its dynamic symbols (objdump -T), must be numbered ones up to the floor.
# A GLIBC_ABI_* need (e.g. GLIBC_ABI_DT_RELR, glibc 2.36) fails the test as well.
needs=$( { readelf -V "$bin"; objdump -T "$bin"; } | grep -oE 'GLIBC_[A-Z0-9_.]+' | sort -u)
odd=$(grep -vE '^GLIBC_[0-9]+(\.[0-9]+)*$' <<<"$needs" || true)
[ -z "$odd" ] || fail "$bin needs non-numbered glibc versions: $odd"
highest=$(sed 's/GLIBC_//' <<<"$needs" | sort -uV | tail -n1)
[ -n "$highest" ] || fail "no GLIBC symbol versions found in $bin"
top=$(printf '%s\n%s\n' "$highest" "$floor" | sort -V | tail -n1)
[ "$top" = "$floor" ] || fail "$bin needs GLIBC_$highest, above the $floor floor"

# Only glibc's libraries may be needed (nothing the target might lack).
others=$(readelf -d "$bin" | sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p' |
    grep -vxE 'libc\.so\.6|libm\.so\.6|libpthread\.so\.0|libdl\.so\.2|librt\.so\.1|ld-linux-x86-64\.so\.2' || true)
[ -z "$others" ] || fail "$bin needs non-glibc libraries: $others"
echo "glibc_floor: ok ($bin needs at most GLIBC_$highest)"
