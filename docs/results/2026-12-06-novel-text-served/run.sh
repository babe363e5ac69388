#!/bin/sh
# The parts apart, as served, for the profiles no trait measures (issue 26), with the text block on (the defaults since 2026-12-06), on the safe base: the kept adapters of
# ../2026-12-06-novel-text (assistant protocol novel --keep-adapters), each user's adapter with personal best-of-n as
# served (n = 4, a choice every 16 tokens, the first over 1 token: the defaults) and the safe base chosen by the
# population's reward (--best-of-base: reranking without personalisation). Same evaluation seeds and cached base
# replies as the run; 1 served reply per held-out prompt against its 4 base replies; then paired by prompt with the
# run's "adapter alone" numbers.
set -eu
HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/../../.." && pwd)
RUN=$REPO/docs/results/2026-12-06-novel-text
FIXTURES=${FIXTURES:-/work/safety-data/fixtures}
ASSIGN=$(python -c "import json; print(' '.join(f'--assign {u[\"username\"]}={u[\"profile\"]}' for u in json.load(open('$RUN/work/fixture.json'))['users']))")
START=$(date +%s)
ASSISTANT_DEV_MODE=1 ASSISTANT_DATA_DIR=$RUN/work assistant evaluate \
  --samples 1 --base-samples 4 --red-team 30 --red-team-samples 2 --base-red-team-samples 16 --benign 10 --benign-samples 2 --no-retest \
  --kl metadata --batch-size 32 --seed 0 --base-cache "$FIXTURES/base-cache" --best-of-n 4 --best-of-block 16 --best-of-first-block 1 \
  --best-of-base $ASSIGN > "$HERE/evaluation.log" 2>&1
END=$(date +%s)
LATEST=$(ls -td "$RUN"/work/reports/2*/ | head -1)
cp "$LATEST/report.json" "$LATEST/report.md" "$HERE/"
echo "{\"commit\": \"$(git -C "$REPO" rev-parse HEAD)\", \"wall_s\": $((END - START))}" > "$HERE/run.json"
assistant protocol compare "$HERE" "$RUN" > "$HERE/compare.md"
cat "$HERE/compare.md"
