#!/usr/bin/env bash
# Builds the .deb and the .rpm of enisync into target/packages/.
#
#   scripts/package.sh                 build the binary (glibc 2.28 floor) and both packages
#   scripts/package.sh --no-build      package the binary already built by a previous run
#   DEB_REVISION=2 RPM_RELEASE=2 ...   package revision (default 1), e.g. for upgrade tests
#
# The binary is linked against glibc 2.28 symbol versions with cargo-zigbuild (zig from
# PyPI), so the packages run on EL8-era userlands and newer; a native build on Debian 12
# would need glibc 2.34. Missing tools are installed: ziglang with pip, cargo-zigbuild,
# cargo-deb and cargo-generate-rpm with `cargo install --locked`.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR=never

TRIPLE=x86_64-unknown-linux-gnu
GLIBC_FLOOR=2.28
CARGO_DEB_VERSION=3.8.0
CARGO_GENERATE_RPM_VERSION=0.21.1
CARGO_ZIGBUILD_VERSION=0.24.1
ZIGLANG_VERSION=0.17.1
out=target/packages
gen=target/packaging

build=1
for arg in "$@"; do
    case $arg in
        --no-build) build=0 ;;
        -h | --help) sed -n '2,12p' "$0"; exit 0 ;;
        *) echo "package.sh: unknown argument $arg" >&2; exit 2 ;;
    esac
done

log() { printf '==> %s\n' "$*" >&2; }

need_cargo_tool() { # binary crate [version]
    if ! command -v "$1" >/dev/null 2>&1; then
        log "installing $2${3:+ $3}"
        cargo install --locked "$2" ${3:+--version "$3"}
    fi
}

if [ $build -eq 1 ]; then
    if ! command -v zig >/dev/null 2>&1 && ! python3 -m ziglang version >/dev/null 2>&1; then
        log "installing zig (ziglang from PyPI)"
        python3 -m pip install --quiet "ziglang==$ZIGLANG_VERSION"
    fi
    need_cargo_tool cargo-zigbuild cargo-zigbuild "$CARGO_ZIGBUILD_VERSION"
    log "building enisync for $TRIPLE with glibc $GLIBC_FLOOR symbols"
    cargo zigbuild --release --locked --target "$TRIPLE.$GLIBC_FLOOR" --bin enisync
fi
need_cargo_tool cargo-deb cargo-deb "$CARGO_DEB_VERSION"
need_cargo_tool cargo-generate-rpm cargo-generate-rpm "$CARGO_GENERATE_RPM_VERSION"

bin=target/$TRIPLE/release/enisync
[ -x "$bin" ] || { echo "package.sh: $bin missing (run without --no-build)" >&2; exit 1; }

version=$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -n1)
deb_revision=${DEB_REVISION:-1}
rpm_release=${RPM_RELEASE:-1}
# Reproducible dates: the last commit's time.
export SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null || date +%s)}

log "generating the man page and the Debian changelog in $gen/"
mkdir -p "$gen" "$out"
gzip -9n <packaging/enisync.8 >"$gen/enisync.8.gz"
cat >"$gen/changelog" <<CHANGELOG
enisync ($version-$deb_revision) unstable; urgency=medium

  * Release $version.

 -- enisync maintainers <enisync@example.invalid>  $(LC_ALL=C date -u -R -d "@$SOURCE_DATE_EPOCH")
CHANGELOG

log "building the .deb"
cargo deb --no-build --no-strip --target "$TRIPLE" --deb-revision "$deb_revision" --output "$out/" >&2

log "building the .rpm (gzip payload, readable by old rpm)"
cargo generate-rpm --target "$TRIPLE" --payload-compress gzip \
    -s "release = \"$rpm_release\"" --output "$out/"

log "packages:"
ls -l "$out"/enisync_"$version"-"$deb_revision"_*.deb "$out"/enisync-"$version"-"$rpm_release".*.rpm >&2
