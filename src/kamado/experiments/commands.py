"""`kamado experiment stability`: the grid, its figures and its results page."""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import sys
import time
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any


def record_timing(out: Path, trained: int, seconds: float) -> dict[str, Any]:
    """Wall time spent training the grid, summed over the invocations that trained runs (a rerun that only
    rebuilds the page adds nothing), so the page states what the grid cost, not what its last call did."""
    path = out / "timing.json"
    timing = json.loads(path.read_text()) if path.is_file() else {"trained_runs": 0, "wall_seconds": 0.0}
    if trained:
        timing = {"trained_runs": timing["trained_runs"] + trained, "wall_seconds": timing["wall_seconds"] + seconds}
        path.write_text(json.dumps(timing))
    return timing


def cmd_stability(args: argparse.Namespace, _overrides: list[str]) -> None:
    from kamado.experiments.report import plot, summarise, write_page
    from kamado.experiments.stability import Grid, run_grid

    out = Path(args.out)
    grid = Grid.quick() if args.quick else Grid()
    if args.steps:
        grid.steps = args.steps
    if args.seeds:
        grid.seeds = list(range(args.seeds))
    todo = sum(not (out / "runs" / r["name"] / "result.json").is_file() for r in grid.runs())
    t0 = time.perf_counter()
    results = run_grid(out, grid, args.workers)
    timing = record_timing(out, todo, time.perf_counter() - t0)
    seconds = timing["wall_seconds"]
    summary = summarise(results)
    page = Path(args.page) if args.page else out / "stability.md"
    figures = plot(out, results, summary, page.parent / "figures")
    reading = Path(args.reading).read_text(encoding="utf-8") if args.reading else ""
    meta = {
        "command": "kamado " + " ".join(shlex.quote(a) for a in sys.argv[1:]),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs",
        "runs": len(results),
        "trained_runs": timing["trained_runs"],
        "seconds": seconds,
        "workers": args.workers,
        "date": datetime.now(UTC).strftime("%Y-%m-%d"),
        "grid": ", ".join(f"{k} {v}" for k, v in asdict(grid).items()),
        "weight_decay": grid.weight_decay,
        "z_loss": grid.z_loss,
        "reading": reading,
    }
    write_page(page, summary, figures, meta)
    keyed = {k: {f: {str(lr): x for lr, x in d.items()} if isinstance(d, dict) else d for f, d in v.items()}
             for k, v in summary.items()}  # fmt: skip
    (out / "summary.json").write_text(json.dumps(keyed, indent=1))
    for name, s in summary.items():
        first = s["first_diverging_lr"]
        first_text = "none in the grid" if first is None else f"{first:g}"
        print(f"{name}: LR sensitivity {s['lr_sensitivity']:.3f}, first diverging LR {first_text}")
    print(f"{len(results)} runs in {seconds / 60:.1f} min; page: {page}")


def cmd_dpo_mix(args: argparse.Namespace, _overrides: list[str]) -> None:
    from kamado.experiments.dpo_mix_report import run_and_report

    run_and_report(args)


def add_experiment_parsers(sub: Any) -> None:
    ex = sub.add_parser("experiment", help="controlled experiments on kamado's own corpus (results pages)")
    exs = ex.add_subparsers(dest="experiment_command", required=True, metavar="EXPERIMENT")
    st = exs.add_parser(
        "stability",
        help="QK-Norm × Z-loss × learning rate: LR sensitivity, attention logits, log Z (Wortsman et al. 2023)",
        description="A grid of short pre-training runs on the tiny recipe's text; each run resumable and skipped "
        "once finished. Writes runs/, the figures and a Markdown results page.",
    )
    st.add_argument("--out", required=True, help="folder for the runs (created; rerun to resume)")
    st.add_argument("--quick", action="store_true", help="a small grid in a few minutes (3 LRs, 1 seed, 24 steps)")
    st.add_argument("--workers", type=int, default=2, help="runs in parallel, one process each (default 2)")
    st.add_argument("--steps", type=int, default=0, help="steps per run (default: the grid's, 300; quick 24)")
    st.add_argument("--seeds", type=int, default=0, help="seeds per point (default: the grid's, 2; quick 1)")
    st.add_argument("--page", default="", help="where the results page goes (default OUT/stability.md)")
    st.add_argument("--reading", default="", help="a Markdown file with the interpretation to put on the page")
    st.set_defaults(fn=cmd_stability)
    dm = exs.add_parser(
        "dpo-mix",
        help="DPO with on-policy fraction 0, 0.25, 0.5, 0.75, 1 from one SFT model, scored on held-out test prompts",
        description="DPO runs from the same SFT model that differ only in dpo.on_policy_fraction (× seeds), equal "
        "pair counts, each scored on the held-out jaster-style test prompts (and judge benchmarks with an endpoint). "
        "Each run resumable and skipped once finished. Writes runs/, the figures and a Markdown results page.",
    )
    dm.add_argument("--out", required=True, help="folder for the runs (created; rerun to resume)")
    dm.add_argument("--quick", action="store_true", help="a tiny SFT model and 1 short DPO round per run (seconds)")
    dm.add_argument("--base", default="", help="a `kamado run` folder with sft/ to start from (default: build one)")
    dm.add_argument("--workers", type=int, default=2, help="runs in parallel, one process each (default 2)")
    dm.add_argument("--seeds", type=int, default=0, help="seeds per fraction (default 1)")
    dm.add_argument(
        "--fractions", default="", help="on-policy fractions to run, comma-separated (default 0,0.25,0.5,0.75,1)"
    )
    dm.add_argument("--page", default="", help="where the results page goes (default OUT/dpo_mix.md)")
    dm.add_argument("--reading", default="", help="a Markdown file with the interpretation to put on the page")
    dm.add_argument("--judge-url", default="", help="an OpenAI-compatible judge endpoint for the judge benchmarks")
    dm.add_argument("--judge-model", default="", help="the judge endpoint's model name")
    dm.set_defaults(fn=cmd_dpo_mix)
