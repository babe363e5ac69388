#!/usr/bin/env bash
set -x
cd /work/main
. .venv/bin/activate
export ASSISTANT_DEV_MODE=1 ASSISTANT_DATA_DIR=/work/safety-data
date -u; time assistant protocol quick --name safe-default-seed1 --set ASSISTANT_SEED=1 --keep-adapters; date -u
touch /work/runs/A1-done
