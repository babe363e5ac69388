#!/usr/bin/env bash
# The profiles no trait measures, with the text block on (the defaults since the 2x2): adapters alone (the novel
# protocol), then as served (personal best-of-4), each paired with the same run of the traits-only defaults.
set -x
cd /work/main
. .venv/bin/activate
export ASSISTANT_DEV_MODE=1 ASSISTANT_DATA_DIR=/work/safety-data HF_HUB_OFFLINE=1
date -u
time assistant protocol novel --name text --out docs/results/2026-12-06-novel-text --keep-adapters
date -u
assistant protocol compare docs/results/2026-12-06-novel-text docs/results/2026-12-06-novel-safe > docs/results/2026-12-06-novel-text/compare-traits-only.md
touch /work/runs/novel-done
sh docs/results/2026-12-06-novel-text-served/run.sh
assistant protocol compare docs/results/2026-12-06-novel-text-served docs/results/2026-12-06-novel-safe-served > docs/results/2026-12-06-novel-text-served/compare-traits-only.md
date -u
touch /work/runs/served-done
