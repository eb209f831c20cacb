#!/usr/bin/env bash
# The full test suite. Integration tests need root (network namespaces); they fail, never
# skip, without it.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo test --workspace --locked --no-fail-fast "$@"
