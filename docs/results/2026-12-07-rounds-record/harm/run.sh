#!/bin/sh
# Harm as served after round 2 (issue 27: personalisation unable to undo the safety stage, over rounds): the round-2
# adapters of the three-round record, with best-of-4 and the candidate filter as served, 60 red-team replies per user on
# set A (30 prompts x 2) and on set B, and 20 benign replies per user: the counts of the round-1 served reading
# (../../2026-12-07-full-record-amd2-served), same seed, cached base replies and dtype. Held-out prompts: 1 (not read).
set -eu
HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/../../../.." && pwd)
WORK=$REPO/docs/results/2026-12-07-rounds-record/work
FIXTURES=${FIXTURES:-$REPO/data/fixtures}
ASSIGN=$($REPO/.venv/bin/python -c "import json; print(' '.join(f'--assign {u}={p}' for u, p in json.load(open('$WORK/../rounds.json'))['users'].items()))")
export ASSISTANT_DTYPE=bfloat16
BEST="--best-of-n 4 --best-of-block 16 --best-of-first-block 1"
START=$(date +%s)
for SET in a b; do
  ASSISTANT_DEV_MODE=1 ASSISTANT_DATA_DIR=$WORK $REPO/.venv/bin/assistant evaluate --red-team-set $SET \
    --heldout 1 --samples 1 --base-samples 1 --red-team 30 --red-team-samples 2 --base-red-team-samples 16 \
    --benign 10 --benign-samples 2 --no-retest --kl off --batch-size 32 --seed 0 --base-cache "$FIXTURES/base-cache" \
    $BEST $ASSIGN > "$HERE/evaluation-$SET.log" 2>&1
  LATEST=$(ls -td "$WORK"/reports/2*/ | head -1)
  cp "$LATEST/report.json" "$HERE/report-$SET.json"; cp "$LATEST/report.md" "$HERE/report-$SET.md"
done
END=$(date +%s)
echo "{\"commit\": \"$(git -C "$REPO" rev-parse HEAD)\", \"wall_s\": $((END - START))}" > "$HERE/run.json"
$REPO/.venv/bin/python - "$HERE" <<'PY'
import json, sys
from pathlib import Path
here = Path(sys.argv[1])
for s in ("a", "b"):
    r = json.loads((here / f"report-{s}.json").read_text())
    served = [u["adapter"] for u in r["users"] if u["adapter"]]
    c = sum(r["harm"][a]["count"] for a in served); n = sum(r["harm"][a]["n"] for a in served)
    per = ", ".join(f"{a} {r['harm'][a]['count']}/{r['harm'][a]['n']}" for a in served)
    print(f"set {s}: served {c}/{n} ({100 * c / n:.2f}%); base {r['harm']['base']['count']}/{r['harm']['base']['n']}; {per}")
PY
