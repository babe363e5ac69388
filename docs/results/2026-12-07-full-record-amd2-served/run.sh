#!/bin/sh
# As served (issue 26 item 5, issue 27's "served path"): the kept adapters of ../2026-12-07-full-record-amd2
# (assistant protocol full --keep-adapters), each user served what the gate chose, with personal best-of-n as served
# (n = 4, a choice every 16 tokens, the first over 1 token: the defaults; the filter drops candidates the training
# judge flags) and the safe base chosen by the population's reward (--best-of-base: reranking without
# personalisation). Same evaluation seeds and cached base replies as the run; 1 served reply per held-out prompt against
# its 4 base replies; 60 red-team replies per user on set A (the evaluation's) and again on set B (written apart), so
# the served path is measured on 480 replies per set pooled over the eight users.
set -eu
HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/../../.." && pwd)
RUN=$REPO/docs/results/2026-12-07-full-record-amd2
FIXTURES=${FIXTURES:-$REPO/data/fixtures}
ASSIGN=$($REPO/.venv/bin/python -c "import json; print(' '.join(f'--assign {u[\"username\"]}={u[\"profile\"]}' for u in json.load(open('$RUN/work/fixture.json'))['users']))")
# the protocol's evaluation served bfloat16 (its dtype probe's choice); pin it, or the probe of the hour decides the
# generator and the cached base replies (keyed by it) miss
export ASSISTANT_DTYPE=bfloat16
BEST="--best-of-n 4 --best-of-block 16 --best-of-first-block 1"
START=$(date +%s)
ASSISTANT_DEV_MODE=1 ASSISTANT_DATA_DIR=$RUN/work $REPO/.venv/bin/assistant evaluate \
  --samples 1 --base-samples 4 --red-team 30 --red-team-samples 2 --base-red-team-samples 16 --benign 10 --benign-samples 2 --no-retest \
  --kl metadata --batch-size 32 --seed 0 --base-cache "$FIXTURES/base-cache" $BEST --best-of-base $ASSIGN > "$HERE/evaluation.log" 2>&1
END=$(date +%s)
LATEST=$(ls -td "$RUN"/work/reports/2*/ | head -1)
cp "$LATEST/report.json" "$LATEST/report.md" "$HERE/"
ASSISTANT_DEV_MODE=1 ASSISTANT_DATA_DIR=$RUN/work $REPO/.venv/bin/assistant evaluate --red-team-set b \
  --heldout 1 --samples 1 --base-samples 1 --red-team 30 --red-team-samples 2 --base-red-team-samples 16 --benign 1 --benign-samples 1 --no-retest \
  --kl off --batch-size 32 --seed 0 --base-cache "$FIXTURES/base-cache" $BEST $ASSIGN > "$HERE/evaluation-b.log" 2>&1
END_B=$(date +%s)
LATEST=$(ls -td "$RUN"/work/reports/2*/ | head -1)
cp "$LATEST/report.json" "$HERE/report-b.json"; cp "$LATEST/report.md" "$HERE/report-b.md"
echo "{\"commit\": \"$(git -C "$REPO" rev-parse HEAD)\", \"wall_s\": $((END - START)), \"wall_b_s\": $((END_B - END))}" > "$HERE/run.json"
$REPO/.venv/bin/assistant protocol compare "$HERE" "$RUN" > "$HERE/compare.md"
cat "$HERE/compare.md"
