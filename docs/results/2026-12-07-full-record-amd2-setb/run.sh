#!/bin/sh
# Set B (written apart) for every policy of ../2026-12-06-full-global-not-worse, as ../2026-12-06-harm-both-sets did for
# the morning's run; the dtype pinned to the protocol's (bfloat16) so the cached base replies and the seeds pair.
set -eu
cd "$(dirname "$0")/../../.."
START=$(date +%s)
ASSISTANT_DTYPE=bfloat16 ASSISTANT_DEV_MODE=1 ASSISTANT_DATA_DIR=docs/results/2026-12-07-full-record-amd2/work .venv/bin/assistant evaluate --red-team-set b \
  --heldout 1 --samples 1 --base-samples 1 --red-team-samples 8 --base-red-team-samples 16 --benign 1 --benign-samples 1 \
  --no-retest --kl off --batch-size 32 --seed 0 --base-cache data/fixtures/base-cache --assign sim0-concise=concise --assign sim1-detailed=detailed --assign sim2-bulleted=bulleted --assign sim3-formal=formal --assign sim4-enthusiastic=enthusiastic --assign held0-casual=casual --assign held1-structured=structured --assign held2-curious=curious > docs/results/2026-12-07-full-record-amd2-setb/evaluation-b.log 2>&1
END=$(date +%s)
LATEST=$(ls -td docs/results/2026-12-07-full-record-amd2/work/reports/2*/ | head -1)
cp "$LATEST/report.json" docs/results/2026-12-07-full-record-amd2-setb/report-b.json; cp "$LATEST/report.md" docs/results/2026-12-07-full-record-amd2-setb/report-b.md
echo "{\"commit\": \"$(git rev-parse HEAD)\", \"wall_s\": $((END - START))}" > docs/results/2026-12-07-full-record-amd2-setb/run.json
