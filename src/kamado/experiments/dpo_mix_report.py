"""The DPO-mix experiment's results: per-fraction summary, two figures and the Markdown page.

Per nominal fraction: the held-out mean score (mean of the 12 tasks' scores, as `kamado.posttrain.heldout` reports
it) averaged over seeds, its spread (sample standard deviation over seeds; 0 with one seed), the difference from
the SFT model, the share of on-policy pairs actually trained on, and the DPO training numbers of the last round
(loss, reward margin and reward accuracy over the last tenth of its steps).
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from dataclasses import asdict
from pathlib import Path
from typing import Any


def summarise(results: list[dict[str, Any]]) -> dict[str, Any]:
    """{"sft": {task: score}, "fractions": [{fraction, seeds, mean, std, delta, on_share, tasks, train...}],
    "failed": [runs that stopped with an error]}; a failed run counts nowhere else."""
    failed = [r for r in results if "error" in r]
    results = [r for r in results if "error" not in r]
    sft = next(r for r in results if r["fraction"] is None)
    by: dict[float, list[dict[str, Any]]] = defaultdict(list)
    for r in results:
        if r["fraction"] is not None:
            by[r["fraction"]].append(r)
    rows = []
    for f in sorted(by):
        rs = sorted(by[f], key=lambda r: r["seed"])
        means = [r["heldout_mean"] for r in rs]
        on, off = sum(r["pairs_on_policy"] for r in rs), sum(r["pairs_off_policy"] for r in rs)
        last = [r["rounds"][-1]["train_last_tenth"] for r in rs]
        rows.append(
            {
                "fraction": f,
                "seeds": [r["seed"] for r in rs],
                "per_seed": means,
                "mean": statistics.mean(means),
                "std": statistics.stdev(means) if len(means) > 1 else 0.0,
                "delta": statistics.mean(means) - sft["heldout_mean"],
                "pairs_on": on / len(rs),
                "pairs_off": off / len(rs),
                "on_share": on / (on + off) if on + off else 0.0,
                "dropped": sum(sum(x["skipped"].values()) for r in rs for x in r["rounds"]) / len(rs),
                "tasks": {t: statistics.mean(_task(r)[t] for r in rs) for t in _task(rs[0])},
                **{k: statistics.mean(x[k] for x in last) for k in ("loss", "reward_margin", "reward_accuracy")},
                "seconds": statistics.mean(r["seconds"] for r in rs),
            }
        )
    return {"sft": _task(sft), "sft_mean": sft["heldout_mean"], "fractions": rows, "failed": failed}


def _task(result: dict[str, Any]) -> dict[str, float]:
    return {row["task"]: row["score"] for row in result["heldout"] if row["task"] != "mean"}


def plot(results: list[dict[str, Any]], summary: dict[str, Any], fig_dir: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig_dir.mkdir(parents=True, exist_ok=True)
    rows = summary["fractions"]
    xs = [r["fraction"] for r in rows]
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    dots = [(r["fraction"], r["heldout_mean"]) for r in results if r["fraction"] is not None and "error" not in r]
    ax.scatter([x for x, _ in dots], [y for _, y in dots], s=14, alpha=0.5, label="each run (seed)")
    ax.errorbar(xs, [r["mean"] for r in rows], yerr=[r["std"] for r in rows], marker="o", capsize=3,
                label="mean over seeds (± s.d.)")  # fmt: skip
    ax.axhline(summary["sft_mean"], color="grey", linestyle="--", label="SFT model (no DPO)")
    ax.set_xlabel("on-policy fraction asked for (dpo.on_policy_fraction)")
    ax.set_ylabel("held-out score, mean of tasks")
    ax.set_title("Held-out jaster-style test prompts after DPO")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(fig_dir / "dpo_mix_heldout.png", dpi=120)
    plt.close(fig)

    fig, (a1, a2) = plt.subplots(1, 2, figsize=(9.6, 3.8))
    a1.plot(xs, [r["on_share"] for r in rows], marker="o", label="share trained on")
    a1.plot([0, 1], [0, 1], color="grey", linestyle=":", label="asked for")
    a1.set_xlabel("on-policy fraction asked for")
    a1.set_ylabel("on-policy share of the pairs")
    a1.legend(fontsize=8)
    a2.plot(xs, [r["reward_accuracy"] for r in rows], marker="o", label="reward accuracy")
    a2.plot(xs, [r["loss"] for r in rows], marker="s", label="DPO loss")
    a2.set_xlabel("on-policy fraction asked for")
    a2.set_ylabel("last round, last tenth of its steps")
    a2.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(fig_dir / "dpo_mix_train.png", dpi=120)
    plt.close(fig)
    return ["dpo_mix_heldout.png", "dpo_mix_train.png"]


def table_lines(summary: dict[str, Any]) -> list[str]:
    """The main table: one row per fraction, then the SFT reference row."""
    lines = [
        "| on-policy fraction asked | on-policy share trained on | pairs on + off (replaced) per run | held-out mean | "
        "s.d. over seeds | Δ vs SFT | DPO loss | reward margin | reward accuracy |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in summary["fractions"]:
        lines.append(
            f"| {r['fraction']:g} | {r['on_share']:.2f} | {r['pairs_on']:g} + {r['pairs_off']:g} ({r['dropped']:g}) | "
            f"{r['mean']:.3f} | "
            f"{r['std']:.3f} | {r['delta']:+.3f} | {r['loss']:.3f} | {r['reward_margin']:.3f} | "
            f"{r['reward_accuracy']:.2f} |"
        )
    lines.append(f"| SFT (no DPO) | — | — | {summary['sft_mean']:.3f} | — | — | — | — | — |")
    return lines


def task_lines(summary: dict[str, Any]) -> list[str]:
    rows = summary["fractions"]
    lines = ["| task | SFT | " + " | ".join(f"f={r['fraction']:g}" for r in rows) + " |"]
    lines.append("|---|---|" + "---|" * len(rows))
    for t, s in summary["sft"].items():
        lines.append(f"| {t} | {s:.3f} | " + " | ".join(f"{r['tasks'][t]:.3f}" for r in rows) + " |")
    return lines


def write_page(page: Path, summary: dict[str, Any], figures: list[str], meta: dict[str, Any]) -> None:
    lines = [
        "# How much of DPO's data should be on-policy? (kamado experiment dpo-mix)",
        "",
        f"Command: `{meta['command']}`  ",
        f"Machine: {meta['machine']}; {meta['runs']} runs, {meta['run_seconds'] / 60:.1f} min of run time in all "
        f"(their own clocks, base model not included); this invocation {meta['seconds'] / 60:.1f} min with "
        f"{meta['workers']} worker processes (finished runs are skipped); {meta['date']}.  ",
        f"Starting point: {meta['base']}.  ",
        f"Every run: {meta['grid']}.",
        "",
        "Each run is the recipe's `run_dpo` from the same SFT model, changing only `dpo.on_policy_fraction` and the "
        "seed (which picks the off-policy pairs, seeds the on-policy sampling and orders the batches). On-policy "
        "pairs: the policy's sampled answers to the jaster TRAINING-split prompts, judged by the verifiable scorer; "
        "off-policy pairs: Japanese Vicuna QA answers with GPT-4 verdicts. Where the sampler finds fewer on-policy "
        "pairs than asked (all answers scored alike), `run_dpo` fills the round with off-policy ones, so the share "
        "trained on is shown next to the share asked for; a drawn pair that cannot be trained on (longer than the DPO "
        "context) is replaced by the next draw (the replaced ones are counted in brackets), so every round has the "
        "same pair count. Held-out mean = mean over the tasks of each task's score "
        "(exact match, char F1, or Pearson's r for JSTS) on the TEST-split prompts, greedy; DPO loss, reward margin "
        "and accuracy = the last round's last tenth of steps, on its own training pairs.",
        "",
        *table_lines(summary),
        "",
        *[f"Failed run `{r['name']}` (not in the table): {r['error']}" for r in summary["failed"]],
        "",
        "Held-out score per task (mean over seeds):",
        "",
        *task_lines(summary),
        "",
        *[f"![{f}](figures/{f})" for f in figures],
        "",
        meta.get("judge") or "Judge benchmarks: not run (no `--judge-url`/`--judge-model` given).",
        "",
    ]
    if meta.get("reading"):
        lines += ["## What the data does and does not support", "", meta["reading"], ""]
    page.parent.mkdir(parents=True, exist_ok=True)
    page.write_text("\n".join(lines), encoding="utf-8")


def parse_fractions(text: str) -> list[float]:
    """'0,0.5,1' -> [0.0, 0.5, 1.0]; each a number in [0, 1], no repeats."""
    from kamado.errors import ConfigError

    try:
        values = [float(x) for x in text.split(",")]
    except ValueError:
        raise ConfigError(f"--fractions {text!r}: give numbers in [0, 1] separated by commas, e.g. 0,0.5,1") from None
    if any(not 0.0 <= v <= 1.0 for v in values) or len(set(values)) != len(values):
        raise ConfigError(f"--fractions {text!r}: each fraction must be in [0, 1] and given once")
    return values


def run_and_report(args: Any) -> Path:
    """`kamado experiment dpo-mix`: the base, the runs, the figures and the page; returns the page's path."""
    import json
    import os
    import platform
    import shlex
    import sys
    import time
    from datetime import UTC, datetime

    from kamado.errors import ConfigError
    from kamado.experiments.dpo_mix import MixGrid, build_base, check_base, run_grid

    out = Path(args.out)
    grid = MixGrid.quick() if args.quick else MixGrid()
    if args.seeds:
        grid.seeds = list(range(args.seeds))
    if args.fractions:
        grid.fractions = parse_fractions(args.fractions)
    if bool(args.judge_url) != bool(args.judge_model):
        raise ConfigError("--judge-url and --judge-model go together (an OpenAI-compatible endpoint and its model)")
    grid.judge_url, grid.judge_model = args.judge_url, args.judge_model
    t0 = time.perf_counter()
    base = check_base(Path(args.base)) if args.base else build_base(out, args.quick)
    results = run_grid(out, grid, base, args.workers)
    seconds = time.perf_counter() - t0
    summary = summarise(results)
    page = Path(args.page) if args.page else out / "dpo_mix.md"
    figures = plot(results, summary, page.parent / "figures")
    judge = ""
    if grid.judge_url:
        from kamado.recipe.evaluation import judge_section

        first = results[0]["judge"]
        reports = {r["name"]: r["judge"]["reports"][r["name"]] for r in results if "error" not in r}
        judge = "\n".join(judge_section({"judge": first["judge"], "reports": reports, "local": False}))
    made = "given with --base" if args.base else ("built by --quick" if args.quick else "built by the tiny recipe")
    meta = {
        "command": "kamado " + " ".join(shlex.quote(a) for a in sys.argv[1:]),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs",
        "runs": len(results),
        "seconds": seconds,
        "run_seconds": sum(r.get("seconds", 0.0) for r in results),
        "workers": args.workers,
        "date": datetime.now(UTC).strftime("%Y-%m-%d"),
        "base": f"`{base / 'sft'}` ({made})",
        "grid": ", ".join(f"{k} {v}" for k, v in asdict(grid).items() if not k.startswith("judge")),
        "judge": judge,
        "reading": Path(args.reading).read_text(encoding="utf-8") if args.reading else "",
    }
    write_page(page, summary, figures, meta)
    (out / "summary.json").write_text(json.dumps(summary, indent=1), encoding="utf-8")
    for r in summary["fractions"]:
        print(f"on-policy {r['fraction']:g} (got {r['on_share']:.2f}): held-out {r['mean']:.3f} ({r['delta']:+.3f})")
    print(f"SFT: held-out {summary['sft_mean']:.3f}; {len(results)} runs in {seconds / 60:.1f} min; page: {page}")
    return page
