"""Training-step throughput and MFU: kamado vs Hugging Face transformers' Qwen3ForCausalLM, same shape.

Both models get the same batch, bf16 autocast, fused AdamW and grad clipping; both run eager and under
torch.compile, all in this one process, and the bf16 matmul peak used for MFU is measured in the same run.
kamado's step includes its Z-loss (Qwen3's is plain cross-entropy), so the comparison does not favour kamado.

    .venv/bin/python bench/train_throughput.py            # the `small` preset, batch 4 × 1024
    .venv/bin/python bench/train_throughput.py --steps 3 --modes eager
"""

from __future__ import annotations

import argparse
import gc
import time
from collections.abc import Callable
from pathlib import Path

import torch

from kamado.config import load_config
from kamado.model.transformer import Transformer
from kamado.train.speed import flops_per_token, measure_matmul_peak

ROOT = Path(__file__).resolve().parents[1]


def hf_qwen3(cfg) -> torch.nn.Module:
    from transformers import Qwen3Config, Qwen3ForCausalLM

    hf_cfg = Qwen3Config(
        vocab_size=cfg.vocab_size,
        hidden_size=cfg.d_model,
        intermediate_size=cfg.ffn_hidden,
        num_hidden_layers=cfg.n_layers,
        num_attention_heads=cfg.n_heads,
        num_key_value_heads=cfg.n_kv_heads,
        head_dim=cfg.head_dim,
        max_position_embeddings=cfg.max_seq_len,
        rms_norm_eps=cfg.norm_eps,
        rope_theta=cfg.rope_theta,
        tie_word_embeddings=False,
        attention_dropout=0.0,
        use_cache=False,
    )
    hf_cfg._attn_implementation = "sdpa"
    return Qwen3ForCausalLM(hf_cfg)


def make_step(model: torch.nn.Module, kind: str, compile_: bool, z_loss: float) -> Callable:
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    fwd = torch.compile(model) if compile_ else model

    def step(x: torch.Tensor, y: torch.Tensor) -> float:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            # HF shifts its labels internally; kamado takes next-token targets
            loss = fwd(x, y, z_loss_coef=z_loss).loss if kind == "kamado" else fwd(input_ids=x, labels=x).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return float(loss)

    return step


def time_steps(step: Callable, x, y, warmup: int, steps: int) -> float:
    for _ in range(warmup):
        step(x, y)
    t0 = time.perf_counter()
    for _ in range(steps):
        step(x, y)
    return (time.perf_counter() - t0) / steps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default=str(ROOT / "recipes/small.toml"))
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=1024)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--modes", default="eager,compile")
    ap.add_argument("--models", default="hf,kamado")
    args = ap.parse_args()

    cfg = load_config(args.preset).model
    torch.manual_seed(0)
    x = torch.randint(0, cfg.vocab_size, (args.batch, args.seq))
    y = torch.roll(x, -1, dims=1)
    tokens = args.batch * args.seq
    fpt = flops_per_token(cfg, args.seq)
    peak = measure_matmul_peak(torch.bfloat16, seconds=2.0)
    print(f"threads={torch.get_num_threads()} shape d={cfg.d_model} L={cfg.n_layers} vocab={cfg.vocab_size}")
    print(
        f"batch {args.batch}x{args.seq}, model FLOPs/token {fpt / 1e6:.1f} M, bf16 matmul peak {peak / 1e9:.1f} GFLOP/s"
    )
    results: dict[str, float] = {}
    for mode in args.modes.split(","):
        for kind in args.models.split(","):
            torch.manual_seed(0)
            model = hf_qwen3(cfg) if kind == "hf" else Transformer(cfg)
            step = make_step(model, kind, mode == "compile", 1e-4)
            warm = args.warmup + (1 if mode == "compile" else 0)
            sec = time_steps(step, x, y, warm, args.steps)
            tps = tokens / sec
            results[f"{kind}-{mode}"] = tps
            print(f"{kind:7s} {mode:8s} {sec:7.3f} s/step {tps:8.0f} tok/s  MFU {100 * tps * fpt / peak:5.1f}%")
            del model, step
            gc.collect()
    best_kamado = max(v for k, v in results.items() if k.startswith("kamado"))
    for ref in ("hf-eager", "hf-compile"):
        if ref in results:
            print(f"ratio kamado(best) / {ref}: {best_kamado / results[ref]:.2f}x")
    for mode in args.modes.split(","):
        if f"hf-{mode}" in results and f"kamado-{mode}" in results:
            print(f"ratio kamado-{mode} / hf-{mode}: {results[f'kamado-{mode}'] / results[f'hf-{mode}']:.2f}x")


if __name__ == "__main__":
    main()
