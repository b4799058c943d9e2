"""Rebuild the shipped post-training sample (`samples/posttrain/`) from the raw benchmark files.

Run once by developers, never at run time: `.venv/bin/python samples/build_posttrain_samples.py
[--benchmarks ../shared/data/benchmarks]`. It is `kamado posttrain-data` with small per-task limits (a seeded
draw, so a rebuild gives the same bytes) and two licence rules for what the repository may carry:

- no task whose data licence forbids derivatives (NoDerivatives) is shipped — the build stops instead;
- no preference pair answered by a Llama 2 derivative is shipped (Llama 2's licence forbids using its outputs to
  improve other language models).

Attribution and licences: `samples/SOURCES.md` and `samples/posttrain/DATA_CARD.md`.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from kamado.posttrain.data_build import build_posttrain_data, read_sources

HERE = Path(__file__).resolve().parent
DEFAULT_BENCHMARKS = HERE.parent.parent / "shared" / "data" / "benchmarks"
OUT = HERE / "posttrain"

SFT_PER_TASK = 40  # train samples per task, in sft.jsonl and prompts.jsonl
TEST_PER_TASK = 30  # test samples per task, in test.jsonl
EXCLUDED_PAIR_MODELS = ("tokyotech-llm--Swallow-70b-instruct-hf",)  # a Llama 2 derivative
SIZE_BUDGET = 2_000_000  # bytes for the whole folder


def forbids_derivatives(licence: str) -> bool:
    """CC's ND clause (CC BY-ND, CC BY-NC-ND) or the words NoDerivatives."""
    return re.search(r"\bND\b|NoDerivatives", licence) is not None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--benchmarks", type=Path, default=DEFAULT_BENCHMARKS)
    args = ap.parse_args()
    for folder, src in read_sources(args.benchmarks).items():
        if forbids_derivatives(src["licence"]):
            raise SystemExit(f"{folder}: licence {src['licence']!r} forbids derivatives; it must not be shipped")
    card = build_posttrain_data(
        args.benchmarks,
        OUT,
        per_task_limit=SFT_PER_TASK,
        seed=0,
        test_limit=TEST_PER_TASK,
        exclude_pair_models=EXCLUDED_PAIR_MODELS,
    )
    total = sum(p.stat().st_size for p in OUT.iterdir())
    for name, f in card["files"].items():
        print(f"{name}: {f['lines']} lines, {f['bytes'] / 1000:.0f} KB")
    print(f"samples/posttrain: {total / 1000:.0f} KB in all")
    if total > SIZE_BUDGET:
        raise SystemExit(f"samples/posttrain is {total} bytes, over the {SIZE_BUDGET}-byte budget")


if __name__ == "__main__":
    main()
