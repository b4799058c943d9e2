#!/usr/bin/env bash
# The tiny recipe on a CUDA GPU (no web corpus stage: the GPU image lacks datatrove/trafilatura), then a resume
# check: 100 steps, drop the step-100 checkpoint, run again from step 50, compare the losses of steps 51-100.
#   OUT=/tmp/out PYTHONPATH=src bash bench/gpu_recipe.sh        (DEV=cpu EXTRA="--model.d_model=64 ..." to try it here)
set -u; OUT=${OUT:-/tmp}
DEV=${DEV:-cuda}; EXTRA=${EXTRA:-}
PH='--data.phases=[{start_tokens=0, weights={ja=3.0, en=1.0}}, {start_tokens=1228800, weights={ja=9.0, en=1.0}}]'
K="python3 -m kamado.cli run recipes/tiny.toml --corpus.warc_dir= --train.device=$DEV $EXTRA"
( time $K --out_dir=/tmp/tg/full "$PH" ) > $OUT/full.log 2>&1; tail -c 1500 $OUT/full.log
$K --out_dir=/tmp/tg/res "$PH" --train.steps=100 --checkpoint.every=50 > $OUT/res1.log 2>&1
cp /tmp/tg/res/metrics.jsonl /tmp/tg/first.jsonl; rm -rf /tmp/tg/res/checkpoints/step_00000100 /tmp/tg/res/summary.json
$K --out_dir=/tmp/tg/res "$PH" --train.steps=100 --checkpoint.every=50 > $OUT/res2.log 2>&1
python3 - <<'PY'
import json
def L(p): return {r["step"]: r["loss"] for r in map(json.loads, open(p)) if "loss" in r}
a, b = L("/tmp/tg/first.jsonl"), L("/tmp/tg/res/metrics.jsonl")
d = [abs(a[s] - b[s]) for s in range(51, 101)]
print("resume from step 50: steps 51-100 max |loss diff|", max(d), "identical" if max(d) == 0 else "")
PY
