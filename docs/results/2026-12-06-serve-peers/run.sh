#!/bin/sh
# Serving against llama.cpp in one run (issue 30): `assistant bench serve --peer llamacpp` with the int8 one-user
# scenario, the dtype measured as the server measures it, defaults otherwise (16 users x 16 adapters, 64 x 64,
# 64 tokens, rank 8, the naive baseline, best of 2). The served model is the safe base of /work/safety-data (the
# same weights go to llama.cpp as float32 and Q4_1 GGUFs). Nothing else may run: the ratios are one run's.
set -eu
HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/../../.." && pwd)
cd "$REPO"
[ -d .peers/llamacpp ] || make peer-llamacpp
START=$(date +%s)
ASSISTANT_DEV_MODE=1 ASSISTANT_DATA_DIR=${ASSISTANT_DATA_DIR:-/work/safety-data} .venv/bin/assistant bench serve \
  --peer llamacpp --int8-rows 1 --dtype auto --out "$HERE/bench.json" > "$HERE/bench.out" 2> "$HERE/bench.log"
END=$(date +%s)
echo "{\"commit\": \"$(git rev-parse HEAD)\", \"wall_s\": $((END - START))}" > "$HERE/run.json"
tail -12 "$HERE/bench.out"
