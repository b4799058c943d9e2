"""Decode throughput: kamado's serving engine against Hugging Face `generate`, on the same weights, in one run.

The `small` preset shape with random weights (fixed seed) is exported to `Qwen3ForCausalLM` by `kamado export hf`
(`kamado.serve.export_hf`) and loaded by stock `transformers`; the two are checked to give the same logits in
float32 before anything is timed. Both then get the same B prompts of --prompt-len random
tokens and generate --new-tokens greedy tokens each, with no early stop (HF: `min_new_tokens`; kamado: no end of
text). Measured per run, for both alike:
- TTFT: time from the call until every row of the batch has its first new token (HF: a logits processor notes
  the time of every step; kamado: `Request.first_token_at`);
- decode tokens/s: the tokens produced after that moment, over the time they took (kamado: from the end of the
  engine step in which the last row got its first token; the bench drives `Engine.step` itself);
- end-to-end tokens/s: B x new tokens over the whole call.
kamado's engine runs its own schedule (one prompt chunk per step, decoding the running rows meanwhile), so its
rows start at different times; HF prefills the whole batch in one forward.

The machine may be shared: runs are interleaved (HF, kamado, HF, ... in alternating order), every figure is a
median over --rounds, and the share of the CPUs that other processes used during each run is printed.

    .venv/bin/python bench/decode_throughput.py                     # small preset, batches 1,8,32, engine in bf16
    .venv/bin/python bench/decode_throughput.py --batches 1 --rounds 3 --dtype float32
    python bench/decode_throughput.py --device cuda                 # also HF with a static cache + torch.compile
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import resource
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from kamado.config import ModelConfig, TokenizerConfig, load_config
from kamado.data.jsonl import iter_texts
from kamado.model.transformer import Transformer
from kamado.serve.engine import Engine, GenParams
from kamado.serve.export_hf import export_hf
from kamado.tokenizer import Tokenizer
from kamado.tokenizer.train import train_tokenizer

ROOT = Path(__file__).resolve().parents[1]
Run = Callable[[list[list[int]], int], tuple[float, float, float]]  # (ttft s, decode tok/s, end-to-end tok/s)


# --------------------------------------------------------------------------------------------- the same weights
def exported_to_hf(model: Transformer, tokenizer_dir: Path, dtypes: list[str]) -> dict[str, Any]:
    """{dtype: kamado's weights exported by `kamado export hf` and loaded by stock `transformers`}."""
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    out = tokenizer_dir.parent / "hf"
    export_hf(model, tokenizer_dir, out)
    return {dt: AutoModelForCausalLM.from_pretrained(out, dtype=getattr(torch, dt)).eval() for dt in dtypes}


def random_model(cfg: ModelConfig, seed: int) -> Transformer:
    """Random weights; norm weights away from 1, so that a norm in the wrong place would show in the logit check."""
    torch.manual_seed(seed)
    model = Transformer(cfg)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 1:
                p.uniform_(0.5, 1.5)
    return model.eval()


def bench_tokenizer(vocab_size: int, folder: Path) -> Tokenizer:
    """A byte-level BPE learned from the repo's Aozora sample (a few seconds), with end of text turned off: the
    engine then never stops early, as HF's `min_new_tokens` does not."""
    texts = list(iter_texts(ROOT / "samples" / "ja_aozora.jsonl.gz"))
    train_tokenizer(texts, folder, TokenizerConfig(vocab_size=vocab_size, min_frequency=1))
    tok = Tokenizer.load(folder)
    tok.eos_id = -1  # no token id is -1: nothing ends a request but its length
    return tok


# --------------------------------------------------------------------------------------------------- the runs
def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def hf_runner(hf: torch.nn.Module, device: torch.device, static: bool) -> Run:
    from transformers import LogitsProcessor, LogitsProcessorList

    class StepClock(LogitsProcessor):
        """Called once per generated position, after its forward pass: notes the time."""

        def __init__(self) -> None:
            self.times: list[float] = []

        def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
            sync(device)
            self.times.append(time.perf_counter())
            return scores

    def run(prompts: list[list[int]], n: int) -> tuple[float, float, float]:
        x = torch.tensor(prompts, device=device)
        clock = StepClock()
        extra = {"cache_implementation": "static"} if static else {}
        sync(device)
        t0 = time.perf_counter()
        with torch.inference_mode():
            out = hf.generate(  # type: ignore[operator]
                input_ids=x,
                attention_mask=torch.ones_like(x),
                max_new_tokens=n,
                min_new_tokens=n,
                do_sample=False,
                pad_token_id=0,
                logits_processor=LogitsProcessorList([clock]),
                **extra,
            )
        sync(device)
        t1 = time.perf_counter()
        assert out.shape == (len(prompts), len(prompts[0]) + n)
        B = len(prompts)
        return clock.times[0] - t0, B * (n - 1) / (t1 - clock.times[0]), B * n / (t1 - t0)

    return run


def kamado_runner(engine: Engine) -> Run:
    def run(prompts: list[list[int]], n: int) -> tuple[float, float, float]:
        params = GenParams(max_tokens=n, temperature=0)
        sync(engine.device)
        t0 = time.perf_counter()
        reqs = [engine.submit(p, params) for p in prompts]
        first, made = 0.0, 0
        while not all(r.done for r in reqs):
            engine.step()
            if not first and all(r.token_ids for r in reqs):  # decode rate: from the end of this step on
                first, made = time.perf_counter(), sum(len(r.token_ids) for r in reqs)
        t1 = time.perf_counter()  # the engine has read every token back: the device is done
        assert all(len(r.token_ids) == n for r in reqs)
        total = len(prompts) * n
        ttft = max(r.first_token_at or t1 for r in reqs) - t0  # when the last row's first token was emitted
        return ttft, (total - made) / (t1 - first), total / (t1 - t0)

    return run


def cpu_seconds() -> tuple[float, float]:
    """(CPU seconds all processes spent busy, CPU seconds this process spent), for the foreign-load share."""
    with open("/proc/stat") as f:
        ticks = [int(v) for v in f.readline().split()[1:8]]
    busy = (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")
    own = resource.getrusage(resource.RUSAGE_SELF)
    return busy, own.ru_utime + own.ru_stime


def timed(run: Run, prompts: list[list[int]], n: int) -> tuple[tuple[float, float, float], float]:
    """(the run's figures, the share of the CPUs other processes used meanwhile)."""
    busy0, own0 = cpu_seconds()
    t0 = time.perf_counter()
    figures = run(prompts, n)
    dt = time.perf_counter() - t0
    busy1, own1 = cpu_seconds()
    return figures, max(0.0, ((busy1 - busy0) - (own1 - own0)) / (dt * (os.cpu_count() or 1)))


# ------------------------------------------------------------------------------------------------ the machine
def machine(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)}, torch {torch.__version__}"
    name = platform.processor() or "?"
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        for line in subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout.splitlines():
            if line.startswith("Model name:"):
                name = line.split(":", 1)[1].strip()
    flags = Path("/proc/cpuinfo").read_text().split("flags", 1)[-1].split("\n", 1)[0].split()
    isa = ",".join(f for f in ("avx512_bf16", "amx_bf16", "amx_tile") if f in flags) or "no bf16/AMX flags"
    return (
        f"{name} ({os.cpu_count()} CPUs, {isa}), torch {torch.__version__}, {torch.get_num_threads()} torch threads, "
        f"load average {os.getloadavg()[0]:.2f}"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default=str(ROOT / "recipes/small.toml"))
    ap.add_argument("--batches", default="1,8,32")
    ap.add_argument("--prompt-len", type=int, default=128)
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=3, help="timed runs of each configuration per batch size")
    ap.add_argument("--dtype", default="bfloat16", help="kamado engine's weights and cache")
    ap.add_argument("--prefill-chunk", type=int, default=256, help="kamado engine's prompt tokens per step")
    ap.add_argument("--hf-dtypes", default="float32,bfloat16", help="HF configurations to time")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    cfg = load_config(args.preset).model
    batches = [int(b) for b in args.batches.split(",")]
    print(f"machine: {machine(device)}")
    print(
        f"shape {Path(args.preset).stem}: d={cfg.d_model} L={cfg.n_layers} heads={cfg.n_heads}/{cfg.n_kv_heads} "
        f"ffn={cfg.ffn_hidden} vocab={cfg.vocab_size}; prompt {args.prompt_len} + {args.new_tokens} greedy tokens; "
        f"kamado engine {args.dtype}, max_batch = the batch, prefill_chunk {args.prefill_chunk}"
    )

    model = random_model(cfg, args.seed).to(device)
    hf_dtypes = args.hf_dtypes.split(",")
    with tempfile.TemporaryDirectory() as tmp:
        tok = bench_tokenizer(cfg.vocab_size, Path(tmp) / "tokenizer")
        hf_models = exported_to_hf(model, Path(tmp) / "tokenizer", sorted({"float32", *hf_dtypes}))
    hf_models = {dt: m.to(device) for dt, m in hf_models.items()}

    # the same function: logits in float32, then greedy tokens of the engine (float32 and --dtype) against HF's
    g = torch.Generator().manual_seed(args.seed)
    x = torch.randint(7, cfg.vocab_size, (2, 64), generator=g).to(device)
    with torch.inference_mode():
        ours, theirs = model(x), hf_models["float32"](input_ids=x).logits
        diff = float((ours - theirs).abs().max())
        print(
            f"HF model from kamado.serve.export_hf; logits kamado vs HF in float32: max |diff| {diff:.1e}, "
            f"max |logit| {float(ours.abs().max()):.2f}"
        )
        assert diff <= 1e-4, "the HF model does not compute kamado's function: timing them would not be fair"
        hf_tokens = (
            hf_models["float32"]
            .generate(input_ids=x[:1], max_new_tokens=32, min_new_tokens=32, do_sample=False, pad_token_id=0)[0, 64:]
            .tolist()
        )
    for name in sorted({"float32", args.dtype}):
        engine = Engine(model, tok, max_batch=1, dtype=getattr(torch, name))
        got = engine.generate(x[:1].tolist(), GenParams(max_tokens=32, temperature=0))[0].token_ids
        same = next((i for i, (a, b) in enumerate(zip(got, hf_tokens, strict=True)) if a != b), 32)
        print(f"greedy tokens, kamado engine in {name} vs HF in float32: the first {same} of 32 are identical")

    runs: dict[str, Run] = {}
    for dt in hf_dtypes:
        runs[f"HF {dt}"] = hf_runner(hf_models[dt], device, False)
        if device.type == "cuda":
            runs[f"HF {dt} static+compile"] = hf_runner(hf_models[dt], device, True)
    kamado_name = f"kamado {args.dtype}"

    table = []
    for B in batches:
        prompts = torch.randint(7, cfg.vocab_size, (B, args.prompt_len), generator=g).tolist()
        engine = Engine(model, tok, max_batch=B, prefill_chunk=args.prefill_chunk, dtype=getattr(torch, args.dtype))
        configs = {**runs, kamado_name: kamado_runner(engine)}
        for name, run in configs.items():  # warm-up, not timed (compiled: the full length, the cache's shape)
            t0 = time.perf_counter()
            run(prompts, args.new_tokens if "compile" in name else min(8, args.new_tokens))
            print(f"B={B:3d} {name:28s} warm-up {time.perf_counter() - t0:6.1f} s", flush=True)
        results: dict[str, list[tuple[float, float, float]]] = {k: [] for k in configs}
        worst = 0.0
        for r in range(args.rounds):
            order = list(configs) if r % 2 == 0 else list(reversed(configs))
            for name in order:
                figures, foreign = timed(configs[name], prompts, args.new_tokens)
                results[name].append(figures)
                worst = max(worst, foreign)
        print(f"B={B:3d} {args.rounds} rounds; other processes used up to {100 * worst:.0f}% of the CPUs during a run")
        for name, rs in results.items():
            ttft, dec, e2e = (statistics.median(v) for v in zip(*rs, strict=True))
            spread = f"{min(r[1] for r in rs):.0f}-{max(r[1] for r in rs):.0f}"
            table.append((B, name, dec, spread, ttft, e2e))
            print(
                f"B={B:3d} {name:28s} decode {dec:8.1f} tok/s ({spread})  TTFT {ttft * 1e3:8.1f} ms  "
                f"e2e {e2e:8.1f} tok/s"
            )
        for name in runs:  # per-round ratios, then their median
            ratio = statistics.median(k[1] / h[1] for k, h in zip(results[kamado_name], results[name], strict=True))
            table.append((B, f"ratio {kamado_name} / {name}", ratio, "", 0.0, 0.0))
        del engine

    print("\n| batch | configuration | decode tok/s (min-max) | TTFT ms | end-to-end tok/s |\n|---|---|---|---|---|")
    for B, name, dec, spread, ttft, e2e in table:
        if name.startswith("ratio"):
            print(f"| {B} | **{name}** | **{dec:.2f}x** | | |")
        else:
            print(f"| {B} | {name} | {dec:.1f} ({spread}) | {ttft * 1e3:.1f} | {e2e:.1f} |")
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
