#!/bin/sh
# Best-of-n's choice by the user's lower bound alone (--best-of-population-weight 0) on the kept adapters of
# ../2026-12-07-full-record-amd2, otherwise exactly as ../2026-12-07-full-record-amd2-served read them at weight 1:
# best-of-4, a choice every 16 tokens, the first over 1 token, 1 reply per held-out prompt against the base's 4 cached
# replies, seed 0, bfloat16. Held-out prompts only (no harm sets). Rule: RULE.md.
set -eu
HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/../../.." && pwd)
RUN=$REPO/docs/results/2026-12-07-full-record-amd2
FIXTURES=${FIXTURES:-$REPO/data/fixtures}
ASSIGN=$($REPO/.venv/bin/python -c "import json; print(' '.join(f'--assign {u[\"username\"]}={u[\"profile\"]}' for u in json.load(open('$RUN/work/fixture.json'))['users']))")
export ASSISTANT_DTYPE=bfloat16
START=$(date +%s)
ASSISTANT_DEV_MODE=1 ASSISTANT_DATA_DIR=$RUN/work $REPO/.venv/bin/assistant evaluate \
  --samples 1 --base-samples 4 --red-team 1 --red-team-samples 1 --benign 1 --benign-samples 1 --no-retest \
  --kl metadata --batch-size 32 --seed 0 --base-cache "$FIXTURES/base-cache" \
  --best-of-n 4 --best-of-block 16 --best-of-first-block 1 --best-of-population-weight 0 $ASSIGN > "$HERE/evaluation.log" 2>&1
END=$(date +%s)
LATEST=$(ls -td "$RUN"/work/reports/2*/ | head -1)
cp "$LATEST/report.json" "$LATEST/report.md" "$HERE/"
echo "{\"commit\": \"$(git -C "$REPO" rev-parse HEAD)\", \"wall_s\": $((END - START))}" > "$HERE/run.json"
$REPO/.venv/bin/assistant protocol compare "$HERE" "$RUN-served" > "$HERE/compare.md"
cat "$HERE/compare.md"
