"""What `kamado plan` prints: the model, the best layout with its memory per GPU, then the ranked list (or JSON).

Plain aligned text, so it reads the same in a terminal, a log file and the README.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from kamado.config import ModelConfig
from kamado.parallel.plan import GB, PlanLayout, param_counts
from kamado.parallel.plan_search import Plan, PlanRequest
from kamado.train.speed import flops_per_token


def _count(n: float) -> str:
    """1.02e9 → '1.02B', 6.18e5 → '618k'."""
    for div, unit in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= div:
            return f"{n / div:.3g}{unit}"
    return f"{n:.3g}"


def memory_lines(plan: Plan, req: PlanRequest) -> list[str]:
    m, single = plan.memory, plan.layout.single_process
    overlap = "  (built as activations are freed: counted as the larger of the two)" if m.grads_overlap else ""
    rows = [
        ("weights (fp32)", m.weights, ""),
        ("gradients (fp32)", m.grads, overlap),
        ("AdamW moments (fp32)", m.optimizer, ""),
        ("bf16 weights in use", m.gathered, "  (autocast's copies)" if single else f"  ({_gathered(plan.layout)})"),
        ("activations", m.activations, ""),
        ("logits + loss", m.logits, ""),
    ]
    lines = [f"    {name:<22}{value / GB:8.2f} GB{note}" for name, value, note in rows]
    lines.append(
        f"    {'total (peak)':<22}{m.total / GB:8.2f} GB of {req.usable / GB:.0f} GB usable "
        f"({req.headroom:.0%} of {req.gpu.memory / GB:.0f} GB)"
    )
    return lines


def _gathered(layout: PlanLayout) -> str:
    if layout.fsdp_reshard == "never":
        return "FSDP2 keeps every unit gathered until its backward: reshard=never"
    return "FSDP2's gathered blocks"


def text_report(name: str, cfg: ModelConfig, req: PlanRequest, plans: list[Plan], top: int) -> str:
    pc = param_counts(cfg)
    best = plans[0]
    flops = flops_per_token(cfg, req.seq_len)
    gpu = req.gpu
    fp8 = f", FP8 {req.fp8} ({gpu.fp8_flops or 0:.3g} FLOP/s)" if req.fp8 != "none" else ""
    out = [
        f"{name}: {cfg.n_layers} layers, d_model {cfg.d_model}, {cfg.n_heads} heads ({cfg.n_kv_heads} KV), "
        f"ffn {cfg.ffn_hidden}, vocab {cfg.vocab_size}, sequence {req.seq_len}",
        f"parameters: {pc.total:,} (embedding {_count(pc.embedding)}, {cfg.n_layers} blocks × {_count(pc.block)}, "
        f"head {_count(pc.lm_head)})",
        f"FLOPs/token: {flops:.4g} (6·N + 12·L·d·T, PaLM appendix B)",
        f"cluster: {req.n_gpus} × {gpu.name} ({gpu.memory / GB:.0f} GB, {gpu.bf16_flops / 1e12:.0f} TFLOP/s bf16 "
        f"dense{fp8}), MFU {req.mfu:.0%} assumed, global batch {req.global_batch} × {req.seq_len} tokens",
        "",
        f"best layout: {best.layout.describe()}",
        "  memory per GPU (worst pipeline rank):",
        *memory_lines(best, req),
        f"  pipeline bubble: {best.bubble:.1%}",
        f"  throughput: {_count(best.tokens_per_s)} tokens/s ({best.tokens_per_s / req.n_gpus:,.0f} tokens/s per GPU)",
        f"  {_count(req.tokens)} tokens in {best.days:.1f} days",
        "",
        f"top {min(top, len(plans))} of {len(plans)} layouts that fit:",
        f"  {'#':>3} {'pp':>3} {'dp_rep':>6} {'dp_shard':>8} {'tp':>3} {'mb':>3} {'m':>4} {'schedule':<22} "
        f"{'AC':<10} {'GB/GPU':>7} {'bubble':>7} {'tokens/s':>9} {'days':>7}",
    ]
    for i, p in enumerate(plans[:top], 1):
        lay = p.layout
        schedule = lay.pp_schedule if lay.pp > 1 else "-"
        out.append(
            f"  {i:>3} {lay.pp:>3} {lay.dp_replicate:>6} {lay.dp_shard:>8} {lay.tp:>3} {lay.micro_batch:>3} "
            f"{lay.microbatches:>4} {schedule:<22} {lay.activation_checkpoint:<10} {p.memory.total / GB:>7.1f} "
            f"{p.bubble:>7.1%} {_count(p.tokens_per_s):>9} {p.days:>7.1f}"
        )
    return "\n".join(out)


def json_report(name: str, cfg: ModelConfig, req: PlanRequest, plans: list[Plan], top: int) -> dict[str, Any]:
    pc = param_counts(cfg)

    def plan_dict(p: Plan) -> dict[str, Any]:
        return {
            "layout": asdict(p.layout),
            "memory_bytes": {**asdict(p.memory), "total": p.memory.total},
            "bubble": p.bubble,
            "tokens_per_s": p.tokens_per_s,
            "days": p.days,
        }

    return {
        "model": name,
        "parameters": {**asdict(pc), "block": pc.block, "total": pc.total},
        "flops_per_token": flops_per_token(cfg, req.seq_len),
        "request": {**asdict(req), "gpu": asdict(req.gpu), "usable_bytes": req.usable},
        "fitting_layouts": len(plans),
        "plans": [plan_dict(p) for p in plans[:top]],
    }
