#!/bin/sh
# RULE.md: round 1 of the novel profiles (kept), round 1 as served, then round 2 (assistant protocol rounds).
set -eu
HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/../../.." && pwd)
cd "$REPO"
export ASSISTANT_DEV_MODE=1 HF_HUB_OFFLINE=1
RUN=$REPO/docs/results/2026-12-08-novel-record
date -u
.venv/bin/assistant protocol novel --name record --out "$RUN" --set ASSISTANT_DTYPE=bfloat16 --keep-adapters > "$HERE/protocol.log" 2>&1
date -u
ASSIGN=$(.venv/bin/python -c "import json; print(' '.join(f'--assign {u[\"username\"]}={u[\"profile\"]}' for u in json.load(open('$RUN/work/fixture.json'))['users']))")
SERVED=$(.venv/bin/python -c "from learning.sim.rounds import SERVED_EVALUATE, PERSONAL_ONLY; print(' '.join(SERVED_EVALUATE + PERSONAL_ONLY))")
START=$(date +%s)
ASSISTANT_DTYPE=bfloat16 ASSISTANT_DATA_DIR=$RUN/work .venv/bin/assistant evaluate $SERVED --seed 0 \
  --base-cache "$REPO/data/fixtures/base-cache" $ASSIGN > "$HERE/evaluation-round1.log" 2>&1
echo "{\"served_round1_s\": $(( $(date +%s) - START ))}" > "$HERE/round1-wall.json"
mkdir -p "$HERE/round1"
LATEST=$(ls -td "$RUN"/work/reports/2*/ | head -1)
cp "$LATEST/report.json" "$LATEST/report.md" "$HERE/round1/"
date -u
touch /work/runs/novel-r1-done
.venv/bin/assistant protocol rounds --from "$RUN" --out "$HERE" --sets novel --rounds 1 --set ASSISTANT_DTYPE=bfloat16 > "$HERE/rounds.log" 2>&1
date -u
touch /work/runs/novel-r2-done
