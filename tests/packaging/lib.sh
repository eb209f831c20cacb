# Shared helpers of the install tests (sourced, not run). Needs root.
#
# A minimal Debian bookworm root made with debootstrap is cached under
# target/pkgtest/bookworm-minbase and copied afresh for each test. systemctl,
# deb-systemd-helper and deb-systemd-invoke are replaced inside the copy by stand-ins that
# append their arguments to /var/log/standin-calls and succeed, so a test can check what
# the maintainer scripts asked of systemd. Everything runs in a network namespace of its
# own, so nothing a script does can reach the host's routing.

PKGTEST_DIR=${PKGTEST_DIR:-$PWD/target/pkgtest}
ROOT_CACHE=$PKGTEST_DIR/bookworm-minbase

fail() { echo "FAIL: $*" >&2; exit 1; }
step() { printf -- '--- %s\n' "$*" >&2; }

# The Debian mirror apt uses here (first bookworm-capable URI), else deb.debian.org.
debian_mirror() {
    local uri
    uri=$(grep -hsE '^(URIs:|deb )' /etc/apt/sources.list /etc/apt/sources.list.d/*.list \
        /etc/apt/sources.list.d/*.sources 2>/dev/null |
        grep -oE 'https?://[^ ]*/debian/?( |$)' | grep -v security | head -n1 | tr -d ' ')
    echo "${uri:-http://deb.debian.org/debian}"
}

ensure_root_cache() {
    # ca-certificates: a dependency of the .deb (the API client needs the system's roots).
    [ -x "$ROOT_CACHE/usr/bin/dpkg" ] && [ -x "$ROOT_CACHE/usr/sbin/adduser" ] &&
        [ -x "$ROOT_CACHE/usr/bin/ip" -o -x "$ROOT_CACHE/bin/ip" ] &&
        [ -s "$ROOT_CACHE/etc/ssl/certs/ca-certificates.crt" ] && return 0
    command -v debootstrap >/dev/null || fail "debootstrap is not installed"
    local mirror
    mirror=$(debian_mirror)
    step "debootstrap bookworm (minbase) from $mirror into $ROOT_CACHE (first run only)"
    rm -rf "$ROOT_CACHE.tmp"
    mkdir -p "$PKGTEST_DIR"
    debootstrap --variant=minbase --include=adduser,iproute2,ca-certificates bookworm "$ROOT_CACHE.tmp" "$mirror" \
        >"$PKGTEST_DIR/debootstrap.log" 2>&1 ||
        { tail -n 20 "$PKGTEST_DIR/debootstrap.log" >&2; fail "debootstrap failed"; }
    rm -rf "$ROOT_CACHE"
    mv "$ROOT_CACHE.tmp" "$ROOT_CACHE"
}

# new_root NAME: a fresh copy of the cached root with the stand-ins; prints its path.
new_root() {
    local root=$PKGTEST_DIR/$1
    rm -rf "$root"
    cp -a "$ROOT_CACHE" "$root"
    local tool
    for tool in systemctl deb-systemd-helper deb-systemd-invoke; do
        rm -f "$root/usr/bin/$tool" "$root/bin/$tool"
        cat >"$root/usr/bin/$tool" <<EOF
#!/bin/sh
echo "$tool \$*" >>/var/log/standin-calls
exit 0
EOF
        chmod 755 "$root/usr/bin/$tool"
    done
    # The systemd snippets act only on a system booted with systemd.
    mkdir -p "$root/run/systemd/system"
    : >"$root/var/log/standin-calls"
    echo "$root"
}

# new_netns: an empty network namespace (lo up) for the chroot; prints its name.
new_netns() {
    local ns=enisync-pkgtest-$$-$1
    ip netns add "$ns"
    ip netns exec "$ns" ip link set lo up
    echo "$ns"
}

# in_root ROOT NS CMD...: run CMD in the chroot, inside the namespace, clean environment.
in_root() {
    local root=$1 ns=$2
    shift 2
    ip netns exec "$ns" env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
        LC_ALL=C DEBIAN_FRONTEND=noninteractive chroot "$root" "$@"
}

calls() { cat "$1/var/log/standin-calls"; }
reset_calls() { : >"$1/var/log/standin-calls"; }

# expect_call ROOT PATTERN: some recorded call matches the extended regex.
expect_call() { grep -qE "$2" "$1/var/log/standin-calls" || { calls "$1" >&2; fail "expected a call matching /$2/"; }; }
# refuse_call ROOT PATTERN: no recorded call matches.
refuse_call() {
    if grep -E "$2" "$1/var/log/standin-calls" >&2; then fail "unexpected call matching /$2/"; fi
}
# Every recorded call names only enisync.service (or none): nothing restarts networking.
only_our_unit() {
    if grep -vE '^(systemctl --system daemon-reload|systemctl daemon-reload)$' "$1/var/log/standin-calls" |
        grep -vE ' enisync\.service$' >&2; then
        fail "a maintainer script addressed something other than enisync.service"
    fi
    refuse_call "$1" 'network|NetworkManager|networkd|keepalived|ifup|ifdown'
}

# owned_objects NS: the IPv4 rules and routes with protocol 212 in the namespace.
owned_objects() {
    { ip netns exec "$1" ip -4 rule show; ip netns exec "$1" ip -4 route show table all; } |
        grep -E 'proto (212|enisync)( |$)' || true
}
foreign_objects() {
    { ip netns exec "$1" ip -4 rule show; ip netns exec "$1" ip -4 route show table all; } |
        grep -vE 'proto (212|enisync)( |$)' | sort
}
seed_routing() {
    local ns=$1
    ip netns exec "$ns" ip rule add pref 3500 from 10.77.0.5 lookup 3501 protocol 212
    ip netns exec "$ns" ip route add 10.77.0.0/24 dev lo table 3501 proto 212
    ip netns exec "$ns" ip rule add pref 3500 from 10.77.0.6 lookup 3501 protocol static
    ip netns exec "$ns" ip route add 10.77.1.0/24 dev lo table 3501 proto static
}
