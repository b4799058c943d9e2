"""`kamado merge`: the command-line side of `kamado.posttrain.merge`.

Kept out of `cli.py` so the merge flags live beside the merge code; `cli.py` registers them with
`add_merge_parsers(sub)`. torch and safetensors are imported only when the command runs, so `kamado --help` stays
instant.
"""

from __future__ import annotations

import argparse
from typing import Any

METHODS = ("linear", "slerp", "task_arithmetic", "ties", "dare_linear", "dare_ties", "model_stock")

EXAMPLES = """\
methods (θ: weights, δ = θ − base: a task vector; all computed per tensor in float32):
  linear           Σ wᵢθᵢ / Σ wᵢ (model soup)
      kamado merge --method linear --models runs/a runs/b --weights 0.7 0.3 --out runs/soup
  slerp            spherical interpolation between two models, t=0: the first, t=1: the second
      kamado merge --method slerp --models runs/a runs/b --t 0.5 --out runs/slerp
  task_arithmetic  base + λ·Σ wᵢδᵢ
      kamado merge --method task_arithmetic --base runs/base --models runs/sft runs/dpo --lambda 0.8 --out runs/ta
  ties             trim each δ to its largest --density fraction, elect signs, average the agreeing ones
      kamado merge --method ties --base runs/base --models runs/a runs/b --density 0.5 --out runs/ties
  dare_linear      drop δ entries with probability 1 − density, rescale by 1/density, then task arithmetic
      kamado merge --method dare_linear --base runs/base --models runs/a runs/b --density 0.3 --seed 1 --out runs/d
  dare_ties        DARE's drop, then TIES's sign election and disjoint mean
      kamado merge --method dare_ties --base runs/base --models runs/a runs/b --density 0.3 --out runs/dt
  model_stock      t·mean(θᵢ) + (1 − t)·base, t from the angle between the fine-tuned models' deltas
      kamado merge --method model_stock --base runs/base --models runs/a runs/b --out runs/stock

Inputs are run folders (their newest intact checkpoint) or checkpoint folders (step_XXXXXXXX); every input must
have the same model config, tensor names, shapes and dtypes. OUT becomes a run folder (tokenizer/ copied from the
first input, checkpoints/step_00000000/ with merge.json), so `kamado chat OUT` and `kamado serve OUT` work as they
do for a trained run; an input without a run's tokenizer/ needs `kamado chat OUT --tokenizer DIR`.
"""


def cmd_merge(args: argparse.Namespace, overrides: list[str]) -> None:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from kamado.posttrain.merge import MergeSpec, merge_checkpoints

    spec = MergeSpec(
        method=args.method,
        models=tuple(args.models),
        base=args.base,
        weights=tuple(args.weights) if args.weights is not None else None,
        t=args.t,
        density=args.density,
        lam=args.lam,
        seed=args.seed,
        normalize=args.normalize,
    )
    columns = (TextColumn("merge"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[name]}"))
    bar = Progress(*columns, TimeRemainingColumn(), disable=args.no_progress)
    task = bar.add_task("merge", total=None, name="")

    def on_tensor(done: int, total: int, name: str) -> None:
        if done == 1:  # started with the first tensor: a refused input prints its error without a bar
            bar.start()
        bar.update(task, completed=done, total=total, name=name)

    try:
        ckpt = merge_checkpoints(spec, args.out, on_tensor)
    finally:
        if bar.live.is_started:
            bar.stop()
    chat = f"kamado chat {args.out}"
    if not (ckpt.parent.parent / "tokenizer").is_dir():
        chat += " --tokenizer TOKENIZER_DIR  (no input had a run's tokenizer/ folder)"
    print(f"wrote {ckpt} ({args.method}; see merge.json). Try: {chat}")


def add_merge_parsers(sub: Any) -> None:
    """Register `merge` on the `kamado` sub-command parser `sub`."""
    m = sub.add_parser(
        "merge",
        help="merge checkpoints: linear, slerp, task arithmetic, TIES, DARE, Model Stock",
        description="Merge kamado checkpoints tensor by tensor (memory: a few tensors, not whole models) into a "
        "new run folder.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    m.add_argument("--method", required=True, choices=METHODS, metavar="METHOD", help=" | ".join(METHODS) + " (below)")
    m.add_argument("--models", required=True, nargs="+", metavar="RUN_OR_CHECKPOINT", help="the models to merge")
    m.add_argument(
        "--base", metavar="RUN_OR_CHECKPOINT", help="the model task vectors are taken from (not for linear, slerp)"
    )
    m.add_argument(
        "--weights", nargs="+", type=float, metavar="W", help="one weight per --models entry (default: 1 each)"
    )
    m.add_argument("--no-normalize", dest="normalize", action="store_false", help="linear: Σ wᵢθᵢ, not divided by Σ wᵢ")
    m.add_argument("--t", type=float, help="slerp: interpolation fraction in [0, 1]")
    m.add_argument("--density", type=float, help="ties, dare_*: fraction of each task vector kept, in (0, 1]")
    m.add_argument(
        "--lambda", dest="lam", type=float, metavar="SCALE", help="scale λ of the merged task vector (default 1)"
    )
    m.add_argument("--seed", type=int, help="dare_*: seed of the drop masks (default 0; reproducible per tensor)")
    m.add_argument("--out", required=True, metavar="DIR", help="new run folder (must not exist, or be empty)")
    m.add_argument("--no-progress", action="store_true", help="no progress bar")
    m.set_defaults(fn=cmd_merge)
