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

# A throwaway CA and a server certificate signed by it, valid 2 days, in dir $1 (ca.pem,
# server.pem, server.key; the PEMs world-readable): CA name $2, server address $3 (its
# CN), subjectAltName $4 (e.g. "IP:127.0.0.1,DNS:localhost").
make_test_ca() {
  local d=$1 ca_name=$2 cn=$3 san=$4
  openssl ecparam -name prime256v1 -genkey -noout -out "$d/ca.key" 2>/dev/null
  openssl req -x509 -new -key "$d/ca.key" -sha256 -days 2 -subj "/CN=$ca_name" \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
    -out "$d/ca.pem" 2>/dev/null
  openssl ecparam -name prime256v1 -genkey -noout -out "$d/server.sec1" 2>/dev/null
  openssl pkcs8 -topk8 -nocrypt -in "$d/server.sec1" -out "$d/server.key"
  openssl req -new -key "$d/server.key" -subj "/CN=$cn" -out "$d/server.csr" 2>/dev/null
  printf '%s\n' "basicConstraints=critical,CA:FALSE" "keyUsage=critical,digitalSignature" \
    "extendedKeyUsage=serverAuth" "subjectAltName=$san" >"$d/server.ext"
  openssl x509 -req -in "$d/server.csr" -CA "$d/ca.pem" -CAkey "$d/ca.key" -CAcreateserial \
    -days 2 -sha256 -extfile "$d/server.ext" -out "$d/server.pem" 2>/dev/null
  openssl verify -CAfile "$d/ca.pem" "$d/server.pem" >/dev/null
  chmod 644 "$d"/*.pem
}
