"""`kamado plan`: the command-line side of the layout planner (`plan`, `plan_memory`, `plan_search`).

Kept out of `cli.py` so the flags live beside the planner; `cli.py` registers them with `add_plan_parser(sub)`.
Nothing here imports torch beyond what `kamado.train.speed` does, and no model is built.
"""

from __future__ import annotations

import argparse
import json

from kamado.errors import ConfigError
from kamado.parallel.plan import DEFAULT_GLOBAL_BATCH_TOKENS, DEFAULT_MFU, DEFAULT_TOKENS, GPUS

EPILOG = f"""\
examples:
  kamado plan recipes/100b.toml --gpus 1024 --gpu h100
  kamado plan recipes/100b.toml --gpus 512 --gpu h200 --mfu 0.35 --tokens 1e12 --top 5
  kamado plan recipes/100b.toml --gpus 1024 --layout 8,1,-1,8 --micro-batch 1   # a given mesh
  kamado plan recipes/8b.toml --gpus 64 --json --model.n_layers=40               # with a dotted override
  kamado plan recipes/1b.toml --gpus 8 --parallel.fsdp_reshard=never --parallel.fp8=tensorwise

GPUs (dense datasheet figures): {", ".join(GPUS)}.
Estimates, not measurements: memory per GPU from the parameter shards, AdamW state, FSDP2's gathered blocks,
activations per block (Korthikanti et al. 2022, redone for this model) and the pipeline's micro-batches in flight;
tokens/s = GPUs · peak · MFU · (1 − bubble) / (FLOPs/token · recompute). Communication is not modelled (the MFU
assumption stands for it). Formulas and sources: src/kamado/parallel/plan.py and plan_memory.py.
"""


def parse_layout(text: str) -> tuple[int, int, int, int]:
    """'pp,dp_replicate,dp_shard,tp' → a tuple; dp_shard may be -1 (filled in from --gpus later)."""
    try:
        pp, dp_replicate, dp_shard, tp = (int(p) for p in text.split(","))
    except ValueError:  # not integers, or not four of them
        raise ConfigError(
            f"--layout {text!r}: give four integers pp,dp_replicate,dp_shard,tp (e.g. 8,1,-1,8)"
        ) from None
    return pp, dp_replicate, dp_shard, tp


def cmd_plan(args: argparse.Namespace, overrides: list[str]) -> None:
    from kamado.config import load_config
    from kamado.parallel.plan import gpu_named
    from kamado.parallel.plan_report import json_report, text_report
    from kamado.parallel.plan_search import MICRO_BATCHES, PlanRequest, search

    cfg = load_config(args.config, overrides)
    gpu = gpu_named(args.gpu)
    seq_len = cfg.data.seq_len
    mesh = None
    if args.layout is not None:
        pp, dr, ds, tp = parse_layout(args.layout)
        if ds == -1:
            rest = pp * dr * tp
            if rest < 1 or args.gpus % rest:
                raise ConfigError(f"--layout {args.layout}: --gpus {args.gpus} is not divisible by pp·dp_replicate·tp")
            ds = args.gpus // rest
        mesh = (pp, dr, ds, tp)
    if args.micro_batch is not None and args.micro_batch < 1:
        raise ConfigError(f"--micro-batch = {args.micro_batch}: must be at least 1")
    if not 0 < args.global_batch < float("inf"):
        raise ConfigError(f"--global-batch = {args.global_batch}: must be a positive number of tokens")
    req = PlanRequest(
        n_gpus=args.gpus,
        gpu=gpu,
        seq_len=seq_len,
        global_batch=int(args.global_batch) // seq_len,
        mfu=args.mfu,
        tokens=args.tokens,
        fp8=cfg.parallel.fp8,
        fsdp_reshard=cfg.parallel.fsdp_reshard,
        gpus_per_node=args.gpus_per_node,
        micro_batches=(args.micro_batch,) if args.micro_batch is not None else MICRO_BATCHES,
        mesh=mesh,
        headroom=args.headroom,
    )
    if args.top < 1:
        raise ConfigError(f"--top = {args.top}: must be at least 1")
    plans = search(cfg.model, req)
    if args.json:
        print(json.dumps(json_report(cfg.name, cfg.model, req, plans, args.top), indent=2))
    else:
        print(text_report(cfg.name, cfg.model, req, plans, args.top))


cmd_plan.accepts_overrides = True  # type: ignore[attr-defined]


def add_plan_parser(sub: argparse._SubParsersAction) -> None:
    pl = sub.add_parser(
        "plan",
        help="plan a large pre-training run: layouts that fit in GPU memory, ranked by predicted speed",
        description="Search pipeline / data / tensor-parallel layouts of a preset for N GPUs: memory per GPU, "
        "pipeline bubble, predicted tokens/s and days for a token budget.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    pl.add_argument("config", help="preset TOML (recipes/*.toml); add --section.key=value overrides")
    pl.add_argument("--gpus", type=int, required=True, help="number of GPUs")
    pl.add_argument("--gpu", default="h100", help=f"GPU type: {', '.join(GPUS)} (default: h100)")
    pl.add_argument("--gpus-per-node", type=int, default=8, help="GPUs per node; tp stays within one (default: 8)")
    pl.add_argument("--mfu", type=float, default=DEFAULT_MFU, help=f"assumed MFU (default: {DEFAULT_MFU})")
    pl.add_argument("--tokens", type=float, default=DEFAULT_TOKENS, help="training tokens (default: 2e12)")
    pl.add_argument(
        "--global-batch",
        type=float,
        default=DEFAULT_GLOBAL_BATCH_TOKENS,
        help="tokens per optimizer step, rounded down to whole sequences (default: 4194304)",
    )
    pl.add_argument("--micro-batch", type=int, help="sequences per micro-batch (default: search 1, 2, 4, 8)")
    pl.add_argument("--layout", help="keep one mesh: pp,dp_replicate,dp_shard,tp (dp_shard -1 = the rest)")
    pl.add_argument("--headroom", type=float, default=0.9, help="usable fraction of GPU memory (default: 0.9)")
    pl.add_argument("--top", type=int, default=10, help="layouts to list (default: 10)")
    pl.add_argument("--json", action="store_true", help="print JSON instead of text")
    pl.set_defaults(fn=cmd_plan)
