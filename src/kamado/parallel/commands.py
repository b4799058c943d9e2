"""`kamado checkpoint consolidate`: a distributed (DCP) checkpoint → the one-file safetensors kind."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def cmd_consolidate(args: argparse.Namespace, _overrides: list[str]) -> None:
    from kamado.parallel.checkpoint import consolidate

    path = consolidate(Path(args.checkpoint), Path(args.out))
    print(f"wrote {path} (model.safetensors: `kamado generate {args.out}`, export, sft and eval read it)")


def add_parallel_parsers(sub: Any) -> None:
    ck = sub.add_parser("checkpoint", help="checkpoint commands (distributed checkpoints → one file)")
    cks = ck.add_subparsers(dest="checkpoint_command", required=True, metavar="SUBCOMMAND")
    co = cks.add_parser(
        "consolidate",
        help="a DCP checkpoint of a distributed run → one-process safetensors checkpoint (model weights only)",
        description="Reads every shard of a distributed checkpoint (any layout) in one process and writes "
        "OUT/checkpoints/step_N/model.safetensors in the model's own layout, plus its state.json and config.",
    )
    co.add_argument("checkpoint", help="a DCP checkpoint folder (step_XXXXXXXX) or a run folder (its newest)")
    co.add_argument("--out", required=True, help="output run folder (created)")
    co.set_defaults(fn=cmd_consolidate)
