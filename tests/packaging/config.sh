#!/usr/bin/env bash
# The packaged configuration is valid, dry-run, and every default it documents in a
# comment is itself a valid setting (uncommented, the file still passes check-config).
set -euo pipefail
cd "$(dirname "$0")/../.."
bin=${ENISYNC_BIN:-target/x86_64-unknown-linux-gnu/release/enisync}
conf=packaging/enisync.toml
fail() { echo "FAIL: $*" >&2; exit 1; }

out=$("$bin" check-config --config "$conf") || fail "check-config rejected $conf"
grep -q 'dry_run true' <<<"$out" || fail "packaged config is not dry-run: $out"
grep -Eq '^dry_run = true$' "$conf" || fail "dry_run = true must be an uncommented line"

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
# Keys in a config file are accepted only at mode 0600. The [claim] header is a comment in the
# packaged file (claims are off), so it is uncommented with its keys, which otherwise
# would land in the section above it.
(umask 077 && sed -E 's/^#([a-z0-9_]+ = )/\1/; s/^#(\[\[interface\]\])$/\1/; s/^#(\[claim\])$/\1/' "$conf" >"$tmp/all.toml")
n=$(grep -cE '^[a-z0-9_]+ = ' "$tmp/all.toml")
[ "$n" -ge 35 ] || fail "expected every documented key uncommented, got $n"
"$bin" check-config --config "$tmp/all.toml" >/dev/null || fail "documented defaults do not validate"

# A typo is an error (unknown keys are refused), so this test can fail.
(umask 077 && sed 's/^dry_run = true$/dry_rn = true/' "$conf" >"$tmp/typo.toml")
if "$bin" check-config --config "$tmp/typo.toml" >/dev/null 2>&1; then
    fail "a misspelt key was accepted"
fi

grep -Eq '^212[[:space:]]+enisync$' packaging/rt_protos.d/enisync.conf || fail "rt_protos entry"
echo "config: ok ($n documented keys validate; shipped file is dry-run)"
