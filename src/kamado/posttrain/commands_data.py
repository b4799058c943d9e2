"""`kamado posttrain-data`: the command-line side of `kamado.posttrain.data_build.build_posttrain_data`.

Kept out of `cli.py` so the command and its flags live beside the code; `cli.py` registers it with
`add_posttrain_data_parser(sub)`. Nothing heavy is imported until the command runs.
"""

from __future__ import annotations

import argparse
from typing import Any


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def cmd_posttrain_data(args: argparse.Namespace, overrides: list[str]) -> None:
    from kamado.posttrain.data_build import build_posttrain_data

    card = build_posttrain_data(args.benchmarks, args.out, per_task_limit=args.per_task_limit, seed=args.seed)
    for name, f in card["files"].items():
        print(f"wrote {args.out}/{name}: {f['lines']} lines")
    pairs = card["pairs"]
    dropped = ", ".join(f"{k} {v}" for k, v in pairs["dropped"].items()) or "none"
    print(f"pairs: {pairs['kept']} kept of {pairs['judgments']} judgments (dropped: {dropped})")
    print(f"see {args.out}/DATA_CARD.md (test.jsonl is for evaluation only; never train on it)")


def add_posttrain_data_parser(sub: Any) -> None:
    """Register `posttrain-data` on the `kamado` sub-command parser `sub`."""
    p = sub.add_parser(
        "posttrain-data",
        help="build SFT conversations, DPO prompts and pairs, and held-out test prompts from benchmark files",
        description="From the raw benchmark files (shared/data/benchmarks): jaster train splits → sft.jsonl and "
        "prompts.jsonl (llm-jp-eval v1.3 prompts, known answers), jaster test splits → test.jsonl (evaluation "
        "only), Japanese Vicuna QA's GPT-4 pairwise judgments → pairs.jsonl; plus DATA_CARD.md and data_card.json "
        "with every count, source and licence.",
    )
    p.add_argument("--benchmarks", required=True, metavar="DIR", help="the benchmarks folder (with SOURCES.md)")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder (created; its files are replaced)")
    p.add_argument(
        "--per-task-limit",
        type=_positive,
        default=None,
        metavar="N",
        help="at most N train and N test samples per task, a seeded draw (default: all)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the --per-task-limit draw (default 0)")
    p.set_defaults(fn=cmd_posttrain_data)
