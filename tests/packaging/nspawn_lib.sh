# A real systemd for the packaging tests (sourced after lib.sh, not run). Needs root,
# systemd-nspawn (systemd-container) and debootstrap.
#
# PID 1 on the CI machines is not systemd, so the package is tested inside a Debian
# bookworm container booted with `systemd-nspawn -b`. The recipe and the reasons for each
# flag are in the project's notes on running a real systemd (nspawn needs --keep-unit
# --register=no because the host has no system bus, --private-network so that the
# container holds CAP_NET_ADMIN, and cgroup folders of its own so that it leaves nothing
# at the host's cgroup roots).
#
#   ensure_systemd_root_cache         debootstrap once into target/pkgtest/bookworm-systemd
#   ct_boot NAME                      fresh copy of the cache, booted; sets CT_ROOT, CT_PID
#   in_ct CMD...                      run CMD inside the container (all namespaces)
#   in_ct_bounded SECONDS CMD...      the same, killed after SECONDS
#   in_ct_net CMD...                  run a HOST program in the container's network only
#   ct_cleanup                        stop and remove everything ct_boot made

SYSTEMD_ROOT_CACHE=$PKGTEST_DIR/bookworm-systemd
# What the container needs beyond minbase: a booting systemd with its bus, iproute2 for the
# veth "ENIs", adduser for the package's postinst, and ca-certificates, which every real
# host has: without a CA store the daemon cannot build its HTTPS client at all (reqwest's
# platform verifier finds no roots: "building the HTTPS client: builder error"), even
# for plain-http endpoints. No curl: the host's tools, run in the container's network
# namespace, do the HTTP.
SYSTEMD_ROOT_PACKAGES=systemd,systemd-sysv,dbus,iproute2,adduser,ca-certificates

CT_NAME=
CT_ROOT=
CT_PID=
CT_NSPAWN_PID=
CT_CGROUP=
DEBOOTSTRAP_SECONDS=

ensure_systemd_root_cache() {
    # The stamp names the package list the cache was made with; a new list makes a new root.
    [ "$(cat "$SYSTEMD_ROOT_CACHE/.pkgtest-packages" 2>/dev/null)" = "$SYSTEMD_ROOT_PACKAGES" ] &&
        [ -x "$SYSTEMD_ROOT_CACHE/usr/lib/systemd/systemd" ] && return 0
    command -v debootstrap >/dev/null || fail "debootstrap is not installed"
    local mirror t0
    mirror=$(debian_mirror)
    step "debootstrap bookworm (minbase + $SYSTEMD_ROOT_PACKAGES) from $mirror into $SYSTEMD_ROOT_CACHE (first run only)"
    t0=$(date +%s)
    rm -rf "$SYSTEMD_ROOT_CACHE.tmp"
    mkdir -p "$PKGTEST_DIR"
    debootstrap --variant=minbase --include="$SYSTEMD_ROOT_PACKAGES" bookworm \
        "$SYSTEMD_ROOT_CACHE.tmp" "$mirror" >"$PKGTEST_DIR/debootstrap-systemd.log" 2>&1 ||
        { tail -n 20 "$PKGTEST_DIR/debootstrap-systemd.log" >&2; fail "debootstrap failed"; }
    # Downloaded .debs are of no use in the copies.
    rm -rf "$SYSTEMD_ROOT_CACHE.tmp"/var/cache/apt/archives/*.deb
    echo "$SYSTEMD_ROOT_PACKAGES" >"$SYSTEMD_ROOT_CACHE.tmp/.pkgtest-packages"
    rm -rf "$SYSTEMD_ROOT_CACHE"
    mv "$SYSTEMD_ROOT_CACHE.tmp" "$SYSTEMD_ROOT_CACHE"
    DEBOOTSTRAP_SECONDS=$(($(date +%s) - t0))
    echo "    debootstrap took ${DEBOOTSTRAP_SECONDS}s" >&2
}

# ct_prepare_root NAME: a fresh copy of the cached root, made bootable without a console.
ct_prepare_root() {
    CT_ROOT=$PKGTEST_DIR/$1
    rm -rf "$CT_ROOT"
    cp -a "$SYSTEMD_ROOT_CACHE" "$CT_ROOT"
    # nspawn wants a machine id; an empty file makes systemd generate a transient one.
    : >"$CT_ROOT/etc/machine-id"
    # No console: getty on the container's console would only fill the log.
    rm -f "$CT_ROOT/etc/systemd/system/getty.target.wants/"* 2>/dev/null || true
    # Persistent journal, so `journalctl` after a restart sees the whole run.
    mkdir -p "$CT_ROOT/var/log/journal"
}

# ct_boot NAME: boot the copy; CT_PID is the container's PID 1 as the host sees it.
ct_boot() {
    CT_NAME=$1
    ct_prepare_root "$1"
    # nspawn's own cgroup folders (v1 named hierarchy and the unified one), so that its
    # payload/ and supervisor/ do not land at the host's cgroup roots.
    CT_CGROUP=$CT_NAME
    local h
    for h in systemd unified; do
        [ -d /sys/fs/cgroup/$h ] && mkdir -p "/sys/fs/cgroup/$h/$CT_CGROUP"
    done
    setsid bash -c "
        for h in systemd unified; do
            [ -d /sys/fs/cgroup/\$h/$CT_CGROUP ] && echo \$\$ >/sys/fs/cgroup/\$h/$CT_CGROUP/cgroup.procs
        done
        exec systemd-nspawn -D '$CT_ROOT' -b -M '$CT_NAME' --register=no --keep-unit \
            --private-network --console=passive" >"$PKGTEST_DIR/$CT_NAME.nspawn.log" 2>&1 </dev/null &
    CT_NSPAWN_PID=$!
    local deadline=$(($(date +%s) + 30))
    while [ -z "$CT_PID" ]; do
        CT_PID=$(pgrep -P "$CT_NSPAWN_PID" -x systemd || true)
        [ -n "$CT_PID" ] && break
        kill -0 "$CT_NSPAWN_PID" 2>/dev/null ||
            { cat "$PKGTEST_DIR/$CT_NAME.nspawn.log" >&2; fail "systemd-nspawn exited before booting"; }
        [ "$(date +%s)" -lt "$deadline" ] ||
            { cat "$PKGTEST_DIR/$CT_NAME.nspawn.log" >&2; fail "no systemd in the container after 30s"; }
        sleep 0.1
    done
    # "running" or "degraded" (a unit that cannot work in a container) both mean booted.
    # Right after PID 1 appears its private bus socket may not exist yet ("Failed to connect
    # to bus"): ask again until it answers.
    local state
    deadline=$(($(date +%s) + 60))
    while :; do
        state=$(timeout 60 nsenter -t "$CT_PID" -a systemctl is-system-running --wait 2>&1 || true)
        [[ $state == *"connect to bus"* ]] && [ "$(date +%s)" -lt "$deadline" ] || break
        sleep 0.1
    done
    case $state in
        running | degraded) ;;
        *)
            cat "$PKGTEST_DIR/$CT_NAME.nspawn.log" >&2
            fail "the container did not boot (is-system-running: '${state:-no answer}')"
            ;;
    esac
}

# in_ct CMD...: CMD inside the container, with a clean environment (nsenter would pass
# the host's). Note: it keeps the host's capabilities and no seccomp filter.
in_ct() { nsenter -t "$CT_PID" -a "${CT_ENV[@]}" "$@"; }
CT_ENV=(env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
    LC_ALL=C DEBIAN_FRONTEND=noninteractive SYSTEMD_PAGER= SYSTEMD_COLORS=0 TERM=dumb)

# in_ct_bounded SECONDS CMD...: in_ct, killed after SECONDS (exit 124 then).
in_ct_bounded() {
    local limit=$1
    shift
    timeout --kill-after=5 "$limit" nsenter -t "$CT_PID" -a "${CT_ENV[@]}" "$@"
}

# in_ct_net CMD...: a host program in the container's network namespace only.
in_ct_net() { nsenter -t "$CT_PID" -n "$@"; }

ct_cleanup() {
    if [ -n "$CT_NSPAWN_PID" ] && kill -0 "$CT_NSPAWN_PID" 2>/dev/null; then
        # SIGTERM makes nspawn shut the container down (about 0.2s); SIGKILL after 10s.
        kill -TERM "$CT_NSPAWN_PID" 2>/dev/null || true
        local i
        for i in $(seq 100); do kill -0 "$CT_NSPAWN_PID" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$CT_NSPAWN_PID" 2>/dev/null || true
        wait "$CT_NSPAWN_PID" 2>/dev/null || true
    fi
    [ -z "$CT_NAME" ] || rm -rf "/run/systemd/nspawn/propagate/$CT_NAME"
    # nspawn's own output matters only when the boot fails, and was shown then.
    [ -z "$CT_NAME" ] || rm -f "$PKGTEST_DIR/$CT_NAME.nspawn.log"
    [ -z "$CT_CGROUP" ] || ct_remove_cgroups
    [ -z "$CT_ROOT" ] || [ ! -d "$CT_ROOT" ] || rm -rf "$CT_ROOT"
    CT_NSPAWN_PID= CT_PID= CT_NAME= CT_CGROUP= CT_ROOT=
}

# The cgroup folders nspawn and the container's systemd left, deepest first (rmdir only:
# a folder that still holds a process stays, and says so).
ct_remove_cgroups() {
    local h dir pids i
    # Anything still in our folders is the container's (nspawn was killed, not stopped):
    # end it, or the folders cannot go.
    for i in $(seq 50); do
        pids=$(cat $(find /sys/fs/cgroup/*/"$CT_CGROUP" -name cgroup.procs 2>/dev/null) /dev/null 2>/dev/null | sort -u)
        [ -n "$pids" ] || break
        kill -KILL $pids 2>/dev/null || true
        sleep 0.1
    done
    for h in /sys/fs/cgroup/*; do
        [ -d "$h/$CT_CGROUP" ] || continue
        find "$h/$CT_CGROUP" -depth -type d -print 2>/dev/null | while read -r dir; do
            rmdir "$dir" 2>/dev/null || echo "warning: could not remove cgroup $dir" >&2
        done
    done
}
