#!/usr/bin/env bash
# Issue 11 on one CUDA GPU, one command (< 5 min): the distributed trainer (torchrun, FSDP2 on the one GPU,
# per-block torch.compile) on the `1b` preset — tokens/s and MFU in bf16 and in FP8 (torchao float8, tensorwise
# and rowwise) — the loss of FSDP on the GPU against the plain one-process trainer there (float32), and how often
# a step makes the host wait for the GPU (bench/cuda_syncs.py).
#   OUT=/tmp/out PYTHONPATH=src bash bench/gpu_parallel.sh      (ROWWISE=1, SWEEP=1: more runs, ~1 min each;
#   with SWEEP=1 the call takes about 8 minutes, under the device's 10-minute limit per call)
# On the lent GPU machine torchao is carried as a wheel (.whl/a: 0.18.0, .whl/b: 0.17.0, for an older torch):
#   pip download --no-deps -d .whl/a torchao==0.18.0; pip download --no-deps -d .whl/b torchao==0.17.0
# (.whl/ is git-ignored here; pass carry=[".whl"] to the device tool).
# MFU = tokens/s · flops/token (kamado.train.speed) / peak; the peak is the datasheet's dense bf16 989 TFLOP/s
# (H100/H200 SXM), stated with --train.peak_flops, so the numbers compare with torchtitan's.
set -u; OUT=${OUT:-/tmp}; export PYTHONUNBUFFERED=1 PYTHONWARNINGS=ignore OMP_NUM_THREADS=8
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
for w in a b; do
  if ls .whl/$w/*.whl >/dev/null 2>&1 && python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
      --upgrade --target /tmp/site_$w .whl/$w/*.whl && PYTHONPATH=/tmp/site_$w:$PYTHONPATH python3 -c \
      "from torchao.float8 import convert_to_float8_training" 2>/dev/null; then
    export PYTHONPATH=/tmp/site_$w:$PYTHONPATH; break
  fi
done
python3 -c "import torch, torchao; print('torch', torch.__version__, 'torchao', torchao.__version__)"

python3 - <<'PY'  # random tokens: the step's speed does not depend on them
import numpy as np
from kamado.data.shards import ShardWriter
rng = np.random.default_rng(0)
with ShardWriter("/tmp/shards", vocab_size=65536, eos_id=0, shard_tokens=1_000_000) as w:
    for _ in range(400):
        w.add_document(rng.integers(1, 65536, size=8000))
PY
for p in 1b small; do
  { cat recipes/$p.toml; printf '\n[[data.sources]]\nname = "random"\npath = "/tmp/shards"\n'; } > /tmp/$p.toml
done
COMMON="--train.device=cuda --no-progress --checkpoint.every=0 --checkpoint.keep_last=1 --stability.enabled=false --train.eval_every=0"
T="python3 -m torch.distributed.run --nproc-per-node 1 -m kamado.cli train"

mfu() {  # name, extra overrides...
  local name=$1; shift
  local t0=$SECONDS
  timeout ${LIMIT:-120} $T /tmp/1b.toml --out_dir=/dev/shm/r_$name $COMMON --data.seq_len=2048 --model.max_seq_len=2048 \
    --train.batch_size=8 --train.grad_accum=1 --train.steps=30 --train.log_every=10 --train.peak_flops=989e12 \
    --parallel.compile=true "$@" > $OUT/$name.log 2>&1 || { echo "$name failed:"; grep -v "^W" $OUT/$name.log | tail -8; }
  echo "($name: $((SECONDS - t0)) s with start-up, compilation and the final checkpoint)"
  cp /dev/shm/r_$name/metrics.jsonl $OUT/$name.jsonl 2>/dev/null; rm -rf /dev/shm/r_$name
  python3 - $OUT/$name.jsonl $name <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if "tokens_per_s" in l]
last = rows[-2:]  # steps 11-30: past compilation and warm-up
tps = sum(r["tokens_per_s"] for r in last) / len(last); mfu = sum(r["mfu"] for r in last) / len(last)
print(f"{sys.argv[2]}: {tps:,.0f} tok/s, MFU {100 * mfu:.1f}% of 989 TFLOP/s; loss {rows[0]['loss']:.3f} -> {rows[-1]['loss']:.3f}")
PY
}
echo "== 1. 1b preset, 8 x 2048 tokens a step, FSDP2 (1 GPU) + per-block compile"
mfu bf16
mfu fp8_tensorwise --parallel.fp8=tensorwise

echo "== 2. FSDP2 on the GPU vs the plain trainer, small preset, float32, 6 steps"
P="/tmp/small.toml $COMMON --model.vocab_size=65536 --train.dtype=fp32 --train.steps=6 --train.batch_size=4 --data.seq_len=512 --train.peak_flops=1e12"
timeout 90 python3 -m kamado.cli train $P --out_dir=/tmp/plain > $OUT/plain.log 2>&1 || tail -5 $OUT/plain.log
timeout 90 $T $P --out_dir=/tmp/fsdp > $OUT/fsdp.log 2>&1 || tail -5 $OUT/fsdp.log
python3 - <<'PY'
import json
a, b = ([json.loads(l) for l in open(f"/tmp/{n}/metrics.jsonl") if '"loss"' in l] for n in ("plain", "fsdp"))
for x, y in zip(a, b):
    print(f"step {x['step']}: loss {x['loss']:.6f} vs {y['loss']:.6f} (rel {abs(x['loss'] - y['loss']) / x['loss']:.1e}), "
          f"grad norm {x['grad_norm']:.6f} vs {y['grad_norm']:.6f}")
PY
echo "== 2b. host waits for the GPU per step, counted by CUDA's sync debug mode (one expected; bench/cuda_syncs.py)"
for L in "$T" "python3 -m kamado.cli train"; do
  timeout 90 ${L/-m kamado.cli/bench/cuda_syncs.py} $P --out_dir=/tmp/syncs_$RANDOM 2>&1 | grep -A8 "^host waits" || echo "failed: $L"
done
[ -n "${ROWWISE:-}" ] && { echo "== 3. FP8 rowwise"; LIMIT=100 mfu fp8_rowwise --parallel.fp8=rowwise; }
if [ -n "${SWEEP:-}" ]; then  # the levers not yet measured on a GPU (~1 min each): SWEEP=1 bash bench/gpu_parallel.sh
  # 16 x 2048 tokens a step needs ~105 GB by kamado plan's count (activations 40, logits + loss 47, state 18):
  # an H200-class card only; on an 80 GB card the levers run at 8 x 2048
  MEM=$(nvidia-smi --query-gpu=memory.total --format=csv,noheader,nounits | head -1); B=8
  [ "${MEM:-0}" -gt 100000 ] && B=16
  echo "== 4. levers at $B x 2048 tokens a step: FSDP2 keeping the gathered weights (one rank: resharding saves"
  echo "   nothing); FP8 weights gathered by FSDP2 (scales precomputed after each step) — FP8/bf16 = last row / the one before"
  [ $B = 16 ] && mfu bf16_b16 --train.batch_size=16
  mfu bf16_b${B}_never --train.batch_size=$B --parallel.fsdp_reshard=never
  mfu fp8_all_gather_b${B}_never --parallel.fp8=tensorwise --parallel.fp8_all_gather=true --train.batch_size=$B \
    --parallel.fsdp_reshard=never
fi
