#!/usr/bin/env bash
# Issue 10 on a CUDA GPU: `kamado eval jaster` through the serving engine, which had never run on CUDA.
#   OUT=/tmp/out PYTHONPATH=src bash bench/gpu_eval.sh
# Needs (made on the CPU box, see LOG.md): .gpu/jaster (kamado eval jaster-prepare --train 4 --dev 0), .gpu/tiny (a
# run: tokenizer + a model-only checkpoint) and .gpu/ref_{alpaca,chat} (its answers on the CPU in float32, --limit 50).
set -u; OUT=${OUT:-/tmp}; export PYTHONUNBUFFERED=1
K="python3 -m kamado.cli eval jaster .gpu/tiny --data .gpu/jaster --device cuda --no-progress"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)"

same() {  # answers of two runs: how many identical, per task
python3 - "$1" "$2" <<'PY'
import json, sys, pathlib
a, b = map(pathlib.Path, sys.argv[1:])
tot = same = 0
for f in sorted(a.glob("*.jsonl")):
    x = [json.loads(l)["output"] for l in f.open()]
    y = [json.loads(l)["output"] for l in (b / f.name).open()]
    tot += len(x); same += sum(p == q for p, q in zip(x, y))
    if x != y: print(f"  {f.stem}: {sum(p == q for p, q in zip(x, y))}/{len(x)} identical")
print(f"{a} vs {b}: {same}/{tot} answers identical")
PY
}

echo "== 1. CUDA float32 vs the CPU's float32 answers (first 50 per task, both prompt styles)"
for p in alpaca chat; do
  timeout 120 $K --limit 50 --prompt $p --dtype float32 --out /tmp/f32_$p > $OUT/f32_$p.log 2>&1 || tail -5 $OUT/f32_$p.log
  same .gpu/ref_$p/tiny /tmp/f32_$p/tiny
done
echo "== 2. CUDA bfloat16 vs the CPU's float32 answers"
timeout 120 $K --limit 50 --dtype bfloat16 --out /tmp/bf16 > $OUT/bf16.log 2>&1 || tail -5 $OUT/bf16.log
same .gpu/ref_alpaca/tiny /tmp/bf16/tiny
grep -A2 "^| NLI | QA" /tmp/bf16/tiny/jaster.md .gpu/ref_alpaca/tiny/jaster.md

echo "== 3. prefix caching on CUDA (float32): same answers, time with and without"
timeout 150 python3 - <<'PY'
import time, torch
from pathlib import Path
import kamado.eval.generate as g
from kamado.eval.jaster.run import run_task, JasterSettings
from kamado.eval.jaster.v13_format import jaster_source
from kamado.serve.load import load_for_serving
model, tok, _ = load_for_serving(".gpu/tiny", device="cuda")
load, _ = jaster_source(Path(".gpu/jaster"))
d = load("jsick")
outs = {}
for minp in (16, 10**9):
    g.MIN_PREFIX = minp
    gen = g.EngineGenerator(model, tok, "tiny", torch.float32, 64, progress=False)
    torch.cuda.synchronize(); t = time.perf_counter()
    s, recs = run_task(gen, d, JasterSettings(limit=1000))
    torch.cuda.synchronize()
    outs[minp] = [r["output"] for r in recs]
    print(f"MIN_PREFIX={minp}: jsick {s['n']} prompts in {time.perf_counter() - t:.1f} s, engine steps {gen.engine.steps}")
print("identical answers:", sum(a == b for a, b in zip(*outs.values())), "of", len(outs[16]))
PY

echo "== 4. the whole jaster suite (21,390 examples, 0-shot) on CUDA, bfloat16"
TIMEFORMAT="max-batch 128: %R s wall"
time (timeout 240 $K --dtype bfloat16 --max-batch 128 --out /tmp/full > $OUT/full.log 2>&1 || tail -5 $OUT/full.log)
grep "examples in" /tmp/full/tiny/jaster.md; cp /tmp/full/tiny/jaster.md $OUT/full_jaster.md 2>/dev/null

echo "== 5. decode throughput on CUDA (bench/decode_throughput.py, never run on CUDA before)"
timeout 150 python3 bench/decode_throughput.py --device cuda --batches 1,32 --rounds 2 > $OUT/decode.log 2>&1; tail -25 $OUT/decode.log
