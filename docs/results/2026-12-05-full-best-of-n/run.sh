#!/bin/sh
# Personal best-of-n as served (n=4, a choice every 16 tokens, the first over 1 token: the defaults of
# ASSISTANT_BEST_OF_N_BLOCK and ASSISTANT_BEST_OF_N_FIRST_BLOCK), on the held-out users' adapters of the
# full protocol run of 2026-12-05 (docs/results/2026-12-05-full, --keep-adapters). The tuning users'
# served numbers were measured on a quick run's adapters (docs/results/2026-12-05-best-of-n/first1).
# Same evaluation seeds and cached base replies; then paired with the run's "adapter alone" numbers.
set -eu
HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/../../.." && pwd)
RUN=$REPO/docs/results/2026-12-05-full
FIXTURES=${FIXTURES:-/work/fixtures}
PREFIX=${PREFIX:-held}
OUT=$HERE/$PREFIX
mkdir -p "$OUT"
ASSIGN=$(python -c "import json; print(' '.join(f'--assign {u[\"username\"]}={u[\"profile\"]}' for u in json.load(open('$RUN/work/fixture.json'))['users'] if u['username'].startswith('$PREFIX')))")
START=$(date +%s)
ASSISTANT_DEV_MODE=1 ASSISTANT_DATA_DIR=$RUN/work assistant evaluate \
  --samples 2 --base-samples 4 --red-team 30 --red-team-samples 2 --base-red-team-samples 16 --benign 10 --benign-samples 2 --no-retest \
  --kl metadata --batch-size 32 --seed 0 --base-cache "$FIXTURES/base-cache" --best-of-n 4 --best-of-block 16 --best-of-first-block 1 \
  $ASSIGN > "$OUT/evaluation.log" 2>&1
END=$(date +%s)
LATEST=$(ls -td "$RUN"/work/reports/2*/ | head -1)
cp "$LATEST/report.json" "$LATEST/report.md" "$OUT/"
echo "{\"users\": \"$PREFIX*\", \"commit\": \"$(git -C "$REPO" rev-parse HEAD)\", \"wall_s\": $((END - START))}" > "$OUT/run.json"
assistant protocol compare "$OUT" "$RUN" > "$OUT/compare.md"
cat "$OUT/compare.md"
