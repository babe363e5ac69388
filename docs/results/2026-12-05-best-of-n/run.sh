#!/bin/sh
# Personal best-of-n, measured on the adapters of one quick-protocol run (issue 26, "the parts apart").
#
# 1. assistant protocol quick --name bon-base --fixtures /work/fixtures --keep-adapters
#    (docs/results/2026-12-05-quick-bon-base: the five tuning users' adapters, each with the reward.json the
#    trainer now writes; its evaluation is "adapter alone")
# 2. this script: the same evaluation seeds and cached base replies, replies chosen by best-of-n
#    (VARIANT=whole: n=4 among whole replies, plus the base reranked by the population's reward;
#     VARIANT=block16: n=4, a choice every 16 tokens, as served by default;
#     VARIANT=first1: as block16, but the first choice is over 1 token, so the first token comes as soon
#     as without best-of-n (ASSISTANT_BEST_OF_N_FIRST_BLOCK=1); compared with block16, paired)
# 3. assistant protocol compare <this variant's folder> docs/results/2026-12-05-quick-bon-base (paired by prompt)
set -eu
VARIANT=${1:-whole}
HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/../../.." && pwd)
RUN=$REPO/docs/results/2026-12-05-quick-bon-base
FIXTURES=${FIXTURES:-/work/fixtures}
OUT=$HERE/$VARIANT
mkdir -p "$OUT"
case $VARIANT in
  whole) EXTRA="--best-of-n 4 --best-of-block 0 --best-of-base" ;;
  block16) EXTRA="--best-of-n 4 --best-of-block 16" ;;
  first1) EXTRA="--best-of-n 4 --best-of-block 16 --best-of-first-block 1" ;;
  *) echo "unknown variant $VARIANT" >&2; exit 2 ;;
esac
ASSIGN=$(python -c "import json; print(' '.join(f'--assign {u[\"username\"]}={u[\"profile\"]}' for u in json.load(open('$RUN/work/fixture.json'))['users']))")
START=$(date +%s)
ASSISTANT_DEV_MODE=1 ASSISTANT_DATA_DIR=$RUN/work assistant evaluate \
  --samples 2 --base-samples 4 --red-team 30 --red-team-samples 2 --base-red-team-samples 16 --benign 10 --benign-samples 2 --no-retest \
  --kl metadata --batch-size 32 --seed 0 --base-cache "$FIXTURES/base-cache" $EXTRA $ASSIGN > "$OUT/evaluation.log" 2>&1
END=$(date +%s)
LATEST=$(ls -td "$RUN"/work/reports/2*/ | head -1)
cp "$LATEST/report.json" "$LATEST/report.md" "$OUT/"
echo "{\"variant\": \"$VARIANT\", \"args\": \"$EXTRA\", \"commit\": \"$(git -C "$REPO" rev-parse HEAD)\", \"wall_s\": $((END - START))}" > "$OUT/run.json"
assistant protocol compare "$OUT" "$RUN" > "$OUT/compare.md"
cat "$OUT/compare.md"
if [ "$VARIANT" = first1 ]; then
  assistant protocol compare "$OUT" "$HERE/block16" > "$OUT/compare-block16.md"
  cat "$OUT/compare-block16.md"
fi
