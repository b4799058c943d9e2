"""Training-step throughput and MFU: kamado vs Hugging Face transformers' Qwen3ForCausalLM, same shape.

Both models get the same batch, bf16 autocast, fused AdamW and grad clipping; both run eager and under
torch.compile, all in this one process, and the bf16 matmul peak used for MFU is measured in the same run.
kamado's step includes its Z-loss (Qwen3's is plain cross-entropy), so the comparison does not favour kamado.

The machine may be shared, so the timed steps run in rounds, one step of every configuration per round: a
burst of load from elsewhere then slows the configurations of that round alike, not just the one running at the time.
A round during which other processes used more than --max-foreign of the CPUs is discarded and run again (up to
3 × --steps rounds in all); each configuration reports its median step over the kept rounds, each ratio is the
median of its per-round ratios, and the bf16 matmul peak is the best of a measurement before and one after.

    .venv/bin/python bench/train_throughput.py            # the `small` preset, batch 4 × 1024
    .venv/bin/python bench/train_throughput.py --steps 3 --modes eager
    python bench/train_throughput.py --device cuda --preset recipes/1b.toml --batch 8 --seq 2048   # on a GPU
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

from kamado.config import load_config
from kamado.model.loss import linear_lm_loss, lm_loss
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


def kamado_loss(model: Transformer, variant: str) -> Callable:
    """The training loss as kamado computes it ("": `model(x, y)`, the chunked head + loss); variants for
    experiments: "plain" (logits, then `lm_loss`: compiles into the graph), "cN" (chunked with N rows a chunk)."""
    if variant == "plain":
        return lambda x, y, z: lm_loss(model.lm_head(model.hidden_states(x)), y, z).loss
    if variant.startswith("c"):
        rows = int(variant[1:])
        return lambda x, y, z: linear_lm_loss(model.hidden_states(x), model.lm_head.weight, y, z, rows).loss
    return lambda x, y, z: model(x, y, z_loss_coef=z).loss


def make_step(model: torch.nn.Module, kind: str, compile_: bool, z_loss: float) -> Callable:
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    if kind.startswith("kamado"):
        assert isinstance(model, Transformer)
        loss_fn = kamado_loss(model, kind.partition(":")[2])
    else:  # HF shifts its labels internally; kamado takes next-token targets
        loss_fn = lambda x, y, z: model(input_ids=x, labels=x).loss  # noqa: E731
    fwd = torch.compile(loss_fn) if compile_ else loss_fn
    device_type = next(model.parameters()).device.type

    def step(x: torch.Tensor, y: torch.Tensor) -> float:  # float(loss) waits for the device: the step is complete
        with torch.autocast(device_type, dtype=torch.bfloat16):
            loss = fwd(x, y, z_loss)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return float(loss.detach())

    return step


def cpu_seconds() -> tuple[float, float]:
    """(CPU seconds all processes spent busy, CPU seconds this process spent), for the foreign-load share."""
    with open("/proc/stat") as f:
        ticks = [int(v) for v in f.readline().split()[1:8]]
    busy = (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")  # all but idle and iowait
    own = resource.getrusage(resource.RUSAGE_SELF)
    return busy, own.ru_utime + own.ru_stime


def timed_round(steps: dict[str, Callable], x: torch.Tensor, y: torch.Tensor) -> tuple[dict[str, float], float]:
    """One step of every configuration: ({name: seconds}, the largest share of the CPUs others used meanwhile)."""
    times, foreign = {}, 0.0
    for name, step in steps.items():
        busy0, own0 = cpu_seconds()
        t0 = time.perf_counter()
        step(x, y)
        times[name] = dt = time.perf_counter() - t0
        busy1, own1 = cpu_seconds()
        foreign = max(foreign, ((busy1 - busy0) - (own1 - own0)) / (dt * (os.cpu_count() or 1)))
    return times, foreign


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default=str(ROOT / "recipes/small.toml"))
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=1024)
    ap.add_argument("--steps", type=int, default=7, help="timed rounds (one step of each configuration per round)")
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps per configuration (+1 when compiled)")
    ap.add_argument("--modes", default="eager,compile")
    ap.add_argument("--models", default="hf,kamado", help="hf, kamado, kamado:plain, kamado:c4096 (chunk rows)")
    ap.add_argument("--max-foreign", type=float, default=0.1, help="discard rounds busier than this from elsewhere")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args()
    device = torch.device(args.device)

    cfg = load_config(args.preset).model
    torch.manual_seed(0)
    x = torch.randint(0, cfg.vocab_size, (args.batch, args.seq)).to(device)
    y = torch.roll(x, -1, dims=1)
    tokens = args.batch * args.seq
    fpt = flops_per_token(cfg, args.seq)
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"{where}, torch {torch.__version__}; shape d={cfg.d_model} L={cfg.n_layers} vocab={cfg.vocab_size}")
    print(f"batch {args.batch}x{args.seq}, model FLOPs/token {fpt / 1e6:.1f} M, load average {os.getloadavg()[0]:.2f}")
    peak = measure_matmul_peak(torch.bfloat16, seconds=2.0, device=device)

    steps: dict[str, Callable] = {}
    for mode in args.modes.split(","):
        for kind in args.models.split(","):
            torch.manual_seed(0)
            model = (hf_qwen3(cfg) if kind == "hf" else Transformer(cfg)).to(device)  # kind: hf, kamado[:variant]
            steps[f"{kind}-{mode}"] = step = make_step(model, kind, mode == "compile", 1e-4)
            t0 = time.perf_counter()
            for _ in range(args.warmup + (1 if mode == "compile" else 0)):
                step(x, y)
            print(f"{kind:7s} {mode:8s} warm-up {time.perf_counter() - t0:6.1f} s")

    rounds: list[dict[str, float]] = []
    worst_kept, discarded = 0.0, 0
    while len(rounds) < args.steps:
        times, foreign = timed_round(steps, x, y)
        if foreign <= args.max_foreign or len(rounds) + discarded >= 3 * args.steps:
            rounds.append(times)
            worst_kept = max(worst_kept, foreign)
        else:
            discarded += 1
    peak = max(peak, measure_matmul_peak(torch.bfloat16, seconds=2.0, device=device))
    print(f"bf16 matmul peak {peak / 1e9:.1f} GFLOP/s")
    print(
        f"{len(rounds)} rounds kept, {discarded} discarded; other processes used at most {100 * worst_kept:.0f}% "
        f"of the CPUs during a kept step{' (NOISY)' if worst_kept > args.max_foreign else ''}"
    )

    results: dict[str, float] = {}
    for name in steps:
        ts = [r[name] for r in rounds]
        sec = statistics.median(ts)
        results[name] = tps = tokens / sec
        kind, mode = name.split("-")
        spread = f"{min(ts):.3f}-{max(ts):.3f}"
        print(f"{kind:7s} {mode:8s} {sec:7.3f} s/step ({spread}) {tps:8.0f} tok/s  MFU {100 * tps * fpt / peak:5.1f}%")

    def ratio(a: str, b: str) -> float:
        """Median over rounds of (a's tokens/s) / (b's tokens/s), i.e. of b's step time / a's."""
        return statistics.median(r[b] / r[a] for r in rounds)

    best = max((k for k in results if k.startswith("kamado")), key=results.__getitem__, default=None)
    for ref in ("hf-eager", "hf-compile"):
        if best and ref in results:
            print(f"ratio kamado(best = {best.split('-')[1]}) / {ref}: {ratio(best, ref):.2f}x")
    for mode in args.modes.split(","):
        if f"hf-{mode}" in results and f"kamado-{mode}" in results:
            print(f"ratio kamado-{mode} / hf-{mode}: {ratio(f'kamado-{mode}', f'hf-{mode}'):.2f}x")


if __name__ == "__main__":
    main()
