"""What the `kamado eval` commands share: naming a model on the command line, the flags of a locally served model,
and turning them into a generator. Kept free of torch at import time (`kamado --help` stays instant)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def named(spec: str) -> tuple[str, str]:
    """'NAME=PATH' or PATH (then named after its run folder, also for a step_XXXXXXXX checkpoint folder)."""
    if "=" in spec and not Path(spec).exists():
        name, path = spec.split("=", 1)
        return name, path
    p = Path(spec)
    name = p.parent.parent.name if p.name.startswith("step_") else p.name
    return name, spec


def add_model_flags(p: argparse.ArgumentParser) -> None:
    """--tokenizer, --device, --dtype, --max-batch and --no-progress: how a local model is served."""
    p.add_argument("--tokenizer", metavar="DIR", help="tokenizer folder (default: the run's)")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--dtype", choices=("auto", "float32", "bfloat16"), default="auto", help="serving dtype")
    p.add_argument("--max-batch", type=int, default=32, help="sequences decoded together (KV slots)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def local_generator(spec: str, args: argparse.Namespace) -> Any:
    """An `EngineGenerator` for the run or checkpoint `spec` ('NAME=PATH' or PATH), served as the flags say."""
    from kamado.eval.generate import EngineGenerator
    from kamado.serve.load import load_for_serving, serving_dtype

    name, path = named(spec)
    model, tok, _ = load_for_serving(path, args.tokenizer, args.device)
    dtype = serving_dtype(args.dtype, args.device)
    return EngineGenerator(model, tok, name, dtype, args.max_batch, progress=not args.no_progress)
