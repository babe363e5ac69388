#!/bin/bash
# Full-size round 1, defaults (gate either, harm judge better-profanity): 5 tuning + 3 held-out profiles.
set -x
cd /work/main
export ASSISTANT_DEV_MODE=1 HF_HUB_OFFLINE=1 ASSISTANT_DATA_DIR=/work/run6 ASSISTANT_ADMIN_PASSWORD=change-me-admin-pass ASSISTANT_PORT=8012
A=.venv/bin/assistant
date
$A serve --no-worker > /work/run6/serve.log 2>&1 &
SP=$!
for i in $(seq 60); do curl -sf http://127.0.0.1:8012/healthz >/dev/null && break; sleep 2; done
$A simulate --base-url http://127.0.0.1:8012 --users 5 --profiles concise,detailed,bulleted,formal,enthusiastic --rounds 1 --ratings-per-round 70 --max-new-tokens 48 --no-train --no-evaluate --user-prefix sim --seed 0 --admin-password change-me-admin-pass --out /work/run6/sim-tuning.json > /work/run6/sim-tuning.log 2>&1
$A simulate --base-url http://127.0.0.1:8012 --users 3 --profiles casual,structured,curious --rounds 1 --ratings-per-round 70 --max-new-tokens 48 --no-train --no-evaluate --user-prefix held --seed 1 --admin-password change-me-admin-pass --out /work/run6/sim-heldout.json > /work/run6/sim-heldout.log 2>&1
kill $SP; wait $SP
date
$A train --now > /work/run6/training.log 2>&1
date
$A evaluate --temperature 0.7 --batch-size 32 --assign sim0-concise=concise --assign sim1-detailed=detailed --assign sim2-bulleted=bulleted --assign sim3-formal=formal --assign sim4-enthusiastic=enthusiastic --assign held0-casual=casual --assign held1-structured=structured --assign held2-curious=curious > /work/run6/evaluation.log 2>&1
date
echo done
