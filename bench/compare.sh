#!/usr/bin/env bash
# Compare two revisions of enisync on the benchmark, run by run, alternating.
#
# Usage: sudo bench/compare.sh REV_BEFORE REV_AFTER [RUNS] [-- bench.py options…]
#   e.g. sudo bench/compare.sh 94662da main 5 -- --phases latency,mass,load --kinds enisync
#
# Each revision is checked out in its own worktree under target/compare/ and benchmarked
# with its own bench/run.sh. Runs alternate (before, after, before, …) so that a change in
# the machine's load during the comparison falls on both sides alike. Prints, for every
# numeric figure of results.json, the median over the runs of each side and the ratio
# after / before. The raw results stay in target/compare/<side>-<n>.json.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
[ $# -ge 2 ] || { sed -n 2,11p "$0" >&2; exit 2; }
BEFORE="$1" AFTER="$2"; shift 2
RUNS=5
if [ $# -gt 0 ] && [ "$1" != "--" ]; then RUNS="$1"; shift; fi
[ "${1:-}" = "--" ] && shift
unset CARGO_TARGET_DIR  # each tree builds in its own target/
OUT="$ROOT/target/compare"
mkdir -p "$OUT"

tree_for() { # side rev: reuses the tree (and its release build) when it is at that rev
  local dir="$OUT/tree-$1" want
  want=$(git -C "$ROOT" rev-parse "$2^{commit}")
  if [ -d "$dir" ] && [ "$(git -C "$dir" rev-parse HEAD)" = "$want" ]; then echo "$dir"; return; fi
  if [ -d "$dir" ]; then git -C "$ROOT" worktree remove --force "$dir"; fi
  git -C "$ROOT" worktree add --detach -q "$dir" "$want"
  echo "$dir"
}
B_TREE="$(tree_for before "$BEFORE")"
A_TREE="$(tree_for after "$AFTER")"
echo "compare: before = $(git -C "$B_TREE" log --oneline -1)" >&2
echo "compare: after  = $(git -C "$A_TREE" log --oneline -1)" >&2

for i in $(seq 1 "$RUNS"); do
  for side in before after; do
    tree="$B_TREE"; [ "$side" = after ] && tree="$A_TREE"
    echo "compare: run $i/$RUNS, $side" >&2
    bash "$tree/bench/run.sh" "$@" >"$OUT/$side-$i.txt"
    cp "$tree/target/bench/results.json" "$OUT/$side-$i.json"
  done
done

python3 - "$OUT" "$RUNS" <<'PY'
import json, statistics, sys
out, runs = sys.argv[1], int(sys.argv[2])

def leaves(x, path=""):
    if isinstance(x, bool):
        return
    if isinstance(x, (int, float)):
        yield path, float(x)
    elif isinstance(x, dict):
        for k, v in x.items():
            yield from leaves(v, f"{path}.{k}" if path else k)
    elif isinstance(x, list) and len(x) <= 8:
        for i, v in enumerate(x):
            yield from leaves(v, f"{path}[{i}]")

sides = {}
for side in ("before", "after"):
    per = {}
    for i in range(1, runs + 1):
        with open(f"{out}/{side}-{i}.json") as f:
            for p, v in leaves(json.load(f)):
                per.setdefault(p, []).append(v)
    sides[side] = per
print(f"| figure | before (median of {runs}) | after (median of {runs}) | after / before |")
print("|---|---|---|---|")
for p in sorted(sides["before"]):
    if p.startswith(("machine", "duration", "binary")) or p not in sides["after"]:
        continue
    b = statistics.median(sides["before"][p]); a = statistics.median(sides["after"][p])
    ratio = f"{a / b:.2f}" if b else "—"
    print(f"| {p} | {b:.4g} | {a:.4g} | {ratio} |")
PY
