#!/bin/sh
# Personal best-of-n's serving cost at n = 4 (the default) and n = 8, back to back in one hour: each is
# `assistant bench serve --api` with best-of-n off then on (two real servers, 16 users each on a random adapter with a
# stored reward; the first choice over 1 token, then every 16).
set -eu
HERE=$(cd "$(dirname "$0")" && pwd)
for n in 4 8; do
  ASSISTANT_DEV_MODE=1 HF_HUB_OFFLINE=1 assistant bench serve --api --best-of-n $n --best-of-block 16 --best-of-first-block 1 \
    --out "$HERE/bench-n$n.json" > "$HERE/bench-n$n.log" 2>&1
done
