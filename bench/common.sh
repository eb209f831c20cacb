# Shared by bench/run.sh and bench/failover.sh: sourced, not run. The caller sets
# BENCH_NAME (the prefix of its messages) and defines die().

# The tccli and SDK versions BENCHMARKS.md's tables were made with; override with
# BENCH_PIP="pkg==x …".
BENCH_PIP_PKGS=${BENCH_PIP:-"tccli==3.1.189.1 tencentcloud-sdk-python==3.1.195"}

# Installs the Debian packages given (those whose command the caller found missing).
install_missing() {
  [ $# -gt 0 ] || return 0
  command -v apt-get >/dev/null 2>&1 || die "missing $* and no apt-get to install them"
  echo "$BENCH_NAME: installing $*" >&2
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

# Puts cargo on PATH (sudo leaves the user's ~/.cargo/bin out of it), or dies.
find_cargo() {
  if ! command -v cargo >/dev/null 2>&1; then
    for dir in "$(getent passwd "${SUDO_USER:-root}" | cut -d: -f6)/.cargo/bin" /root/.cargo/bin; do
      if [ -x "$dir/cargo" ]; then PATH="$dir:$PATH"; break; fi
    done
  fi
  command -v cargo >/dev/null 2>&1 || die "cargo not found: install Rust 1.85 or newer"
}

# Makes the venv at $1 with BENCH_PIP_PKGS, unless it already has exactly those.
bench_venv() {
  local venv=$1
  if [ ! -x "$venv/bin/tccli" ] || [ "$(cat "$venv/.bench-pkgs" 2>/dev/null)" != "$BENCH_PIP_PKGS" ]; then
    echo "$BENCH_NAME: pip install $BENCH_PIP_PKGS into $venv" >&2
    python3 -m venv "$venv"
    # shellcheck disable=SC2086
    "$venv/bin/pip" install -q --disable-pip-version-check $BENCH_PIP_PKGS >&2
    echo "$BENCH_PIP_PKGS" >"$venv/.bench-pkgs"
  fi
}
