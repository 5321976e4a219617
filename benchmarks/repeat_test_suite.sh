#!/bin/bash
# `make test` N times in a row (default 10), each in a fresh clone of this repository's HEAD with ../shared beside
# it, no stdin, and no .venv carried over (issue 12: "make test is green on a clean clone 10 times in a row").
# One JSON line per run is appended to $OUT (default benchmarks/work/repeat_test_suite.jsonl):
#   {"run", "commit", "rc", "seconds", "summary" (pytest's last line), "ended"}
# Usage: bash benchmarks/repeat_test_suite.sh [N] [OUT]
set -u
ROOT=$(cd "$(dirname "$0")/.." && pwd)
N=${1:-10}
OUT=${2:-$ROOT/benchmarks/work/repeat_test_suite.jsonl}
SHARED=$(cd "$ROOT/../shared" && pwd)
COMMIT=$(git -C "$ROOT" rev-parse HEAD)
mkdir -p "$(dirname "$OUT")"
for i in $(seq 1 "$N"); do
  d=$(mktemp -d /tmp/aemia_repeat.XXXXXX)
  git clone -q "$ROOT" "$d/aemia" && git -C "$d/aemia" checkout -q "$COMMIT"
  ln -s "$SHARED" "$d/shared"
  t0=$(date +%s)
  (cd "$d/aemia" && timeout 5400 make test < /dev/null > "$d/make_test.log" 2>&1); rc=$?
  t1=$(date +%s)
  summary=$(grep -E "[0-9]+ (passed|failed)" "$d/make_test.log" | tail -1 | tr -d '"=')
  echo "{\"run\": $i, \"commit\": \"$COMMIT\", \"rc\": $rc, \"seconds\": $((t1 - t0)), \"summary\": \"$summary\", \"ended\": \"$(date -u +%FT%TZ)\"}" >> "$OUT"
  if [ "$rc" -ne 0 ]; then cp "$d/make_test.log" "$OUT.run$i.log"; fi
  rm -rf "$d"
done
