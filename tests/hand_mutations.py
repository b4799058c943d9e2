"""One-line mutations (issue 16's; issue 11's planner and parallel code; session 17's async saves, host reads and
Slurm edges), each applied by hand to a fresh clone without ../shared, and the tests that catch it.

    python tests/hand_mutations.py [NAME-SUBSTRING ...]     (`make hand-mutations`)

Clones HEAD into a temporary folder (so no ../shared is beside it, as on a user's machine), applies one mutation at
a time, runs the named tests (the quick ones, unless an entry's 6th field is a marker expression: "" runs them all)
and prints the failing ones. A mutation that no test catches exits 1. Not collected by
pytest (the file name does not start with test_); the results are recorded in LOG.md.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
QK_BEFORE = (
    "            q, k = self.q_norm(q), self.k_norm(k)\n"
    "        q = apply_rope(q.transpose(1, 2), cos, sin)\n"
    "        k = apply_rope(k.transpose(1, 2), cos, sin)\n"
)
QK_AFTER = (
    "            pass\n"
    "        q = apply_rope(q.transpose(1, 2), cos, sin)\n"
    "        k = apply_rope(k.transpose(1, 2), cos, sin)\n"
    "        if self.q_norm is not None and self.k_norm is not None:\n"
    "            q = self.q_norm(q.transpose(1, 2)).transpose(1, 2)\n"
    "            k = self.k_norm(k.transpose(1, 2)).transpose(1, 2)\n"
)
RESAVE = (
    "        os.rename(final, old)\n"
    '        failpoint("checkpoint.resave_between_renames")\n'
    "        os.rename(tmp, final)\n"
    "        fsync_dir(root)\n"
    "        shutil.rmtree(old)\n"
)
RESAVE_DELETE_FIRST = (
    "        shutil.rmtree(final)\n"
    '        failpoint("checkpoint.resave_between_renames")\n'
    "        os.rename(tmp, final)\n"
    "        fsync_dir(root)\n"
)
# (name, file, text, replacement, tests to run)
MUTATIONS = [
    ("QK-Norm after RoPE", "src/kamado/model/transformer.py", QK_BEFORE, QK_AFTER, ["tests/model", "tests/train"]),
    (
        "trainer does not pass train.z_loss",
        "src/kamado/train/trainer.py",
        "out = self.lm_output(batch, z_loss_coef=self.cfg.train.z_loss)",
        "out = self.lm_output(batch)",
        ["tests/train"],
    ),
    (
        "skip positions not restored on resume",
        "src/kamado/train/trainer.py",
        '        self.skip_positions |= set(state["skip_positions"])\n',
        "",
        ["tests/train"],
    ),
    (
        "gradient clipping limit infinite",
        "src/kamado/train/trainer.py",
        "clip if clip > 0 else math.inf",
        "math.inf",
        ["tests/train"],
    ),
    (
        "bits/char without the extra left context",
        "src/kamado/eval/bits_per_char.py",
        "start = max(0, end - context - 1)",
        "start = scored - 1",
        ["tests/eval"],
    ),
    (
        "MinHash threshold replaced by 0",
        "src/kamado/corpus/dedup.py",
        "similarity >= self.cfg.threshold",
        "similarity >= 0",
        ["tests/corpus/test_dedup.py"],
    ),
    (
        "MinHash verification skipped",
        "src/kamado/corpus/dedup.py",
        "if self.cfg.threshold > 0:",
        "if False:",
        ["tests/corpus/test_dedup.py"],
    ),
    (
        "RNG state not restored on resume",
        "src/kamado/train/checkpoint.py",
        '    torch.set_rng_state(_load_tensors(ckpt / "rng.safetensors")["cpu"])\n',
        "",
        ["tests/train"],
    ),
    (
        "re-save deletes the old copy before renaming the new one in",
        "src/kamado/train/checkpoint.py",
        RESAVE,
        RESAVE_DELETE_FIRST,
        ["tests/train/test_checkpoint_integrity.py"],
    ),
]


# Issue 11's planner (session 12): one-line changes to `kamado plan`'s formulas, each caught by test_plan.py.
# Left out as equivalent: dropping `_meshes`' `cfg.n_layers % pp` check (`candidates` keeps only schedules whose
# stage count divides the layers, so such a pp yields nothing either way).
_PLAN, _MEMORY, _SEARCH = (f"src/kamado/parallel/{m}.py" for m in ("plan", "plan_memory", "plan_search"))
PLANNER = [
    (
        "planner: FP8 and bf16 peaks swapped",
        _PLAN,
        "linears / gpu.fp8_flops + (total - linears) / gpu.bf16_flops",
        "linears / gpu.bf16_flops + (total - linears) / gpu.fp8_flops",
    ),
    (
        "planner: output head counted at the FP8 peak",
        _PLAN,
        "matmul_params(cfg) - cfg.d_model * cfg.vocab_size)",
        "matmul_params(cfg))",
    ),
    ("planner: throughput ignores the pipeline bubble", _PLAN, "mfu * (1 - bubble) /", "mfu /"),
    (
        "planner: throughput ignores recomputation",
        _PLAN,
        "(flops_per_token(cfg, seq_len) * slowdown)",
        "flops_per_token(cfg, seq_len)",
    ),
    ("planner: ZB-V bubble-free from m >= p", _PLAN, "m >= 2 * pp:", "m >= pp:"),
    (
        "planner: zero-bubble bubble not a third of 1F1B's",
        _PLAN,
        "(pp - 1) / (3 * v * m + pp - 1)",
        "(pp - 1) / (v * m + pp - 1)",
    ),
    (
        "planner: full recompute repeats the head too",
        _PLAN,
        "blocks = total - 6.0 * cfg.d_model * cfg.vocab_size",
        "blocks = total",
    ),
    ("planner: ZB-V holds all m micro-batches", _MEMORY, "return float(min(m, p))", "return float(m)"),
    ("planner: interleaving adds no in-flight activations", _MEMORY, "held *= 1 + (p - 1) / (p * 2)", "held *= 1"),
    ("planner: pipeline stage root not kept gathered", _MEMORY, "gathered += BF16 * (embed + head)", "gathered += 0"),
    ("planner: one FSDP2 unit gathered, not two", _MEMORY, "FSDP_GATHERED_UNITS = 2", "FSDP_GATHERED_UNITS = 1"),
    (
        "planner: no float32 gradient unit before the reduce-scatter",
        _MEMORY,
        "(FSDP_GATHERED_UNITS * BF16 + FP32) * unit",
        "(FSDP_GATHERED_UNITS * BF16) * unit",
    ),
    (
        "planner: recomputed block's activations left out",
        _MEMORY,
        'activations += layer_activation_bytes(cfg, tokens, "none", tp, residual)',
        "activations += 0",
    ),
    ("planner: logits of one micro-batch only", _MEMORY, "(held * saved + LOGIT_BACKWARD)", "(saved + LOGIT_BACKWARD)"),
    (
        "planner: no bf16 logits in the distributed stage",
        _MEMORY,
        "saved = LOGIT_SAVED + (0 if single else BF16)",
        "saved = LOGIT_SAVED",
    ),
    (
        "planner: gradients overlap activations with accumulation",
        _MEMORY,
        "grads_overlap=layout.microbatches == 1",
        "grads_overlap=True",
    ),
    (
        "planner: head input left out",
        _MEMORY,
        "(residual * cfg.d_model / tp + BF16 * cfg.d_model)",
        "(residual * cfg.d_model / tp)",
    ),
    (
        "planner: last stage holds one micro-batch's head input",
        _MEMORY,
        "held = in_flight(layout, rank) if layout.pp > 1 else 1.0",
        "held = 1.0",
    ),
    (
        "planner: selective's o_proj/down_proj outputs split over tp",
        _MEMORY,
        "return tokens * (sharded / tp + 2 * BF16 * d)\n    sharded = 2",
        "return tokens * (sharded / tp)\n    sharded = 2",
    ),
    (
        "planner: embedding not vocab-parallel",
        _MEMORY,
        "embed = pc.embedding / tp if first else 0.0",
        "embed = pc.embedding if first else 0.0",
    ),
    ("planner: best pipeline rank reported, not worst", _MEMORY, "key=lambda m: m.total)", "key=lambda m: -m.total)"),
    (
        "planner: fits in 100 % of the GPU's memory",
        _SEARCH,
        "fitting = [p for p in plans if p.memory.total <= req.usable]",
        "fitting = [p for p in plans if p.memory.total <= req.gpu.memory]",
    ),
    (
        "planner: ties go to more memory",
        _SEARCH,
        "(-round(p.tokens_per_s, 3), p.memory.total)",
        "(-round(p.tokens_per_s, 3), -p.memory.total)",
    ),
    (
        "planner: pipelines with fewer micro-batches than stages",
        _SEARCH,
        "if pp > 1 and m < pp:",
        "if pp > 1 and m < 1:",
    ),
    (
        "planner: FP8 layouts without tensor parallelism",
        _SEARCH,
        "if n % tp or _tp_ok(cfg, tp) is not None:",
        'if n % tp or _tp_ok(cfg, tp) is not None or (tp > 1 and req.fp8 != "none"):',
    ),
    (
        "planner: reshard=never keeps only the blocks",
        _MEMORY,
        "gathered = BF16 * params + FP32 * unit",
        "gathered = BF16 * (params - embed - head) + FP32 * unit",
    ),
    (
        "planner: reshard=never without the gradient unit",
        _MEMORY,
        "gathered = BF16 * params + FP32 * unit",
        "gathered = BF16 * params",
    ),
    (
        "planner: reshard=always keeps the stage root",
        _MEMORY,
        'layout.pp > 1 and layout.fsdp_reshard == "default"',
        "layout.pp > 1",
    ),
    (
        "planner: reshard=never also keeps the stage root twice",
        _MEMORY,
        'layout.pp > 1 and layout.fsdp_reshard == "default"',
        'layout.pp > 1 and layout.fsdp_reshard != "always"',
    ),
    ("planner: the search ignores the reshard policy", _SEARCH, "schedule, ac, req.fsdp_reshard)", "schedule, ac)"),
]
MUTATIONS += [(name, file, a, b, ["tests/parallel/test_plan.py"]) for name, file, a, b in PLANNER]

# Session 17's code (one wait for the device per step, DCP saves in the background, resume events, the Slurm guard
# and empty extractions). Their tests are mostly `slow` (torchrun jobs): these entries run them (the 6th field).
_DCP, _PTRAIN = "src/kamado/parallel/checkpoint.py", "src/kamado/parallel/trainer.py"
_TRAIN = "src/kamado/train/trainer.py"
_ASYNC = ["tests/parallel/test_dcp.py", "-k", "async"]
SESSION17 = [
    (
        "async save: never sealed",
        _DCP,
        "_seal(root=final.parent, tmp=tmp, final=final, state=state, keep_last=keep_last)",
        "pass",
        _ASYNC,
    ),
    (
        "async save: a new save does not wait for the pending one",
        _DCP,
        "        self.finish()\n        final, tmp = _prepare(root, step)",
        "        final, tmp = _prepare(root, step)",
        _ASYNC,
    ),
    (
        "async save: sealed only when the next save starts",
        _DCP,
        "pending[0].done():\n            self.finish()",
        "pending[0].done():\n            pass",
        _ASYNC,
    ),
    (
        "async save: the newest checkpoint chosen while a save is pending",
        _PTRAIN,
        "        self.finish_saves()\n        found = [",
        "        found = [",
        ["tests/parallel/test_stability.py", *_ASYNC],
    ),
    (
        "async save: training ends without waiting for the last save",
        _TRAIN,
        "        self.finish_saves()  # the final checkpoint",
        "        pass  # the final checkpoint",
        _ASYNC,
    ),
    (
        "async save: a stop does not wait for its save",
        _TRAIN,
        '        self.finish_saves()\n        self._emit({"event": "stopped"',
        '        self._emit({"event": "stopped"',
        ["tests/parallel/test_dcp.py", "-k", "stop_signal and async"],
    ),
    (
        "one process: micro-batch metrics summed, not averaged",
        _TRAIN,
        "v) / self.cfg.train.grad_accum",
        "v)",
        ["tests/train", "tests/parallel/test_host_reads.py"],
    ),
    (
        "host_values: values paired with the wrong keys",
        _TRAIN,
        "out.update(zip(keys, torch.stack(tensors).tolist(), strict=True))",
        "out.update(zip(keys[::-1], torch.stack(tensors).tolist(), strict=True))",
        ["tests/train"],
    ),
    (
        "token_weighted: the batch CE not weighted by its tokens",
        _TRAIN,
        "torch.stack([out.ce.detach().to(torch.float64) * count, count])",
        "torch.stack([out.ce.detach().to(torch.float64), count])",
        ["tests/train", "tests/posttrain"],
    ),
    (
        "distributed: micro-batch metrics summed, not averaged",
        _PTRAIN,
        "means = torch.stack(rows).to(torch.float64).mean(0)",
        "means = torch.stack(rows).to(torch.float64).sum(0)",
        ["tests/parallel/test_parity.py", "-k", "accumulation"],
    ),
    (
        "distributed: the logged values in the wrong order",
        _PTRAIN,
        "loss, ce, z, log_z, norm_value = torch.cat(",
        "ce, loss, z, log_z, norm_value = torch.cat(",
        ["tests/parallel/test_parity.py", "-k", "fsdp2 and not never"],
    ),
    (
        "resume event: tuples listed as changes",
        _TRAIN,
        "now = json.loads(json.dumps(to_dict(self.cfg)))",
        "now = to_dict(self.cfg)",
        ["tests/train/test_trainer.py"],
    ),
    (
        "resume event: a new layout not listed",
        _PTRAIN,
        '            changed["layout"] = [state["layout"], self.layout.describe()]',
        "            pass",
        ["tests/parallel/test_dcp.py", "-k", "another_layout"],
    ),
    (
        "Slurm guard: any squeue failure read as nothing in flight",
        "src/kamado/corpus/slurm.py",
        'if r.returncode != 0 and "Invalid job id" not in r.stderr:',
        "if False:",
        ["tests/slurm/test_jobs_in_flight.py"],
    ),
    (
        "dedup: an empty extraction is an error on Slurm too",
        "src/kamado/corpus/pipeline.py",
        'empty_ok=cfg.executor == "slurm"',
        "empty_ok=False",
        ["tests/corpus/test_dedup.py", "tests/slurm/test_corpus_slurm.py"],
    ),
]
MUTATIONS += [(*m, "") for m in SESSION17]  # "": every test, slow ones too

# Session 8's mutations of the parallel code (LOG.md, 2026-12-04: all 12 caught then, by a script kept outside the
# repo), written down here so they can be run again.
_LOSS, _PAR = "src/kamado/parallel/loss.py", "src/kamado/parallel/"
_TP = ["tests/parallel/test_parity.py", "-k", "tp2 and not selective"]
_PP = ["tests/parallel/test_parity.py", "-k", "pp2-1F1B"]
PARALLEL = [
    (
        "TP loss: the sum's backward sums the gradients over the ranks again",
        _LOSS,
        "        return grad, None",
        "        grad = grad.clone()\n        dist.all_reduce(grad)\n        return grad, None",
        _TP,
    ),
    ("TP loss: every rank's vocabulary slice starts at 0", _LOSS, "lo = dist.get_rank(group) * width", "lo = 0", _TP),
    (
        "TP loss: half the Z-loss gradient",
        _LOSS,
        "    z = ((lse * lse) * valid).sum() / n",
        "    z = ((lse * lse.detach()) * valid).sum() / n",
        _TP,
    ),
    (
        "TP: a rank computes every key/value head",
        _PAR + "tensor_parallel.py",
        "cfg.n_kv_heads // tp  # the heads",
        "cfg.n_kv_heads  # the heads",
        _TP,
    ),
    (
        "TP: gate and up rows grouped the other way round",
        _PAR + "fused.py",
        "torch.stack([torch.arange(f), f + torch.arange(f)], dim=1)",
        "torch.stack([f + torch.arange(f), torch.arange(f)], dim=1)",
        ["tests/parallel/test_units.py"],
    ),
    (
        "PP: the loss not scaled by the accumulation steps",
        _PTRAIN,
        "return out.loss / (self.n_micro * self.cfg.train.grad_accum)",
        "return out.loss / self.n_micro",
        ["tests/parallel/test_parity.py", "-k", "accumulation"],
    ),
    (
        "PP: the gradient norm not summed over the pipeline ranks",
        _PAR + "clip.py",
        "        dist.all_reduce(total, group=pp_group)",
        "        pass",
        _PP,
    ),
    (
        "PP: the shape-inference run's loss record kept",
        _PTRAIN,
        "        del self._records[before : len(self._records) - (self.n_micro if self.has_last else 0)]",
        "        pass",
        _PP,
    ),
    (
        "PP: ZBV puts rank r's second stage at r + p",
        _PAR + "parallelize.py",
        "return [pp_rank, 2 * p.pp - 1 - pp_rank]",
        "return [pp_rank, pp_rank + p.pp]",
        ["tests/parallel/test_units.py", "-k", "placement"],
    ),
    (
        "PP × TP: a later stage's sequence length not times the TP degree",
        _PAR + "stage.py",
        "h.shape[1] * self.seq_shards",
        "h.shape[1]",
        ["tests/parallel/test_parity.py", "-k", "3d_mesh"],
        "",  # a slow test
    ),
    (
        "DP: the logged loss summed over the ranks, not averaged",
        _PTRAIN,
        "        return sums / self.layout.dp",
        "        return sums",
        ["tests/parallel/test_parity.py", "-k", "dp2 and not hsdp"],
    ),
    (
        "DP: every rank reads the first rows of the batch",
        _PAR + "data.py",
        "    return slice(rank * per, (rank + 1) * per)",
        "    return slice(0, per)",
        ["tests/parallel/test_parity.py", "-k", "fsdp2 and not never"],
    ),
]
MUTATIONS += PARALLEL


def main(only: list[str]) -> int:
    missed = 0
    with tempfile.TemporaryDirectory() as tmp:
        clone = Path(tmp) / "kamado"
        subprocess.run(["git", "clone", "-q", str(REPO), str(clone)], check=True)
        env = {**os.environ, "PYTHONPATH": str(clone / "src")}
        for name, file, text, replacement, tests, *marks in MUTATIONS:
            if only and not any(o.lower() in name.lower() for o in only):
                continue
            path = clone / file
            source = path.read_text()
            if source.count(text) != 1:
                print(f"## {name}: the text to mutate is not in {file} once; update this script")
                missed += 1
                continue
            path.write_text(source.replace(text, replacement))
            t0 = time.time()
            only_marks = marks[0] if marks else "not slow"
            cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", only_marks, *tests]
            r = subprocess.run(cmd, cwd=clone, env=env, capture_output=True, text=True)
            path.write_text(source)
            failed = re.findall(r"^FAILED (\S+)", r.stdout, re.M)
            print(f"## {name}: {'caught' if failed else 'NOT CAUGHT'} ({time.time() - t0:.0f} s, {' '.join(tests)})")
            for f in failed:
                print(f"   {f}")
            missed += not failed
            sys.stdout.flush()
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
