#!/bin/sh
# The best-of-n curve (issue 26: a missed target shows its curve): the tuning users of ../2026-12-06-full-global-not-worse
# (kept adapters) served with personal best-of-n at n = 2 and n = 8, the same blocks (16 tokens, the first 1) and filter
# as ../2026-12-06-full-global-not-worse-served (n = 4); n = 1 is the run itself (the adapters alone). 1 reply per
# held-out prompt against the 4 cached base replies, seeds paired on sample 0; harm and benign shrunk to one prompt (this
# is about win rates). Tuning profiles only: the held-out users are not assigned.
set -eu
HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/../../.." && pwd)
RUN=$REPO/docs/results/2026-12-06-full-global-not-worse
FIXTURES=${FIXTURES:-/work/safety-data/fixtures}
ASSIGN=$(python -c "import json; print(' '.join(f'--assign {u[\"username\"]}={u[\"profile\"]}' for u in json.load(open('$RUN/work/fixture.json'))['users'] if u['username'].startswith('sim')))")
export ASSISTANT_DTYPE=bfloat16
for N in 2 8; do
  START=$(date +%s)
  ASSISTANT_DEV_MODE=1 ASSISTANT_DATA_DIR=$RUN/work assistant evaluate \
    --samples 1 --base-samples 4 --red-team 1 --red-team-samples 1 --base-red-team-samples 16 --benign 1 --benign-samples 1 --no-retest \
    --kl off --batch-size 32 --seed 0 --base-cache "$FIXTURES/base-cache" --best-of-n $N --best-of-block 16 --best-of-first-block 1 \
    $ASSIGN > "$HERE/evaluation-n$N.log" 2>&1
  END=$(date +%s)
  mkdir -p "$HERE/n$N"
  LATEST=$(ls -td "$RUN"/work/reports/2*/ | head -1)
  cp "$LATEST/report.json" "$LATEST/report.md" "$HERE/n$N/"
  echo "{\"n\": $N, \"commit\": \"$(git -C "$REPO" rev-parse HEAD)\", \"wall_s\": $((END - START))}" > "$HERE/n$N/run.json"
  assistant protocol compare "$HERE/n$N" "$RUN" > "$HERE/n$N/compare-alone.md"
  assistant protocol compare "$HERE/n$N" "$REPO/docs/results/2026-12-06-full-global-not-worse-served" > "$HERE/n$N/compare-n4.md"
done
