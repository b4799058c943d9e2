"""jaster reports: one model's table (Markdown), several models side by side (Markdown and a bar chart)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from kamado.eval.jaster.run import AVERAGED


def _f(x: float | None) -> str:
    return "—" if x is None else f"{x:.4f}"


def jaster_markdown(report: Mapping[str, Any]) -> list[str]:
    """Per task, per category and the mean, with how each task was run and what is missing."""
    s = report["settings"]
    cut = "all test samples" if s["limit"] is None else f"the first {s['limit']} test samples"
    lines = [
        f"jaster (llm-jp-eval v1.3 semantics) for `{report['model']}`: {s['shots']}-shot, {s['prompt']} prompt, "
        f"{cut} per task, "
        f"{report['examples']} examples in {report['seconds']:.0f} s.",
        "",
        "| task | category | metric | score | n (of test) | shots | too long | errors | seconds |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for t in report["tasks"].values():
        metric = t["metric"] if t["task"] != "jsts" else "pearson / spearman"
        sts = f"{_f(t['scores'].get('pearson'))} / {_f(t['scores'].get('spearman'))}"
        score = _f(t["score"]) if t["task"] != "jsts" else sts
        lines.append(
            f"| {t['task']} | {t['category']} | {metric} | {score} | {t['n']} ({t['n_test']}) | {t['shots']} "
            f"| {t['too_long']} | {t['errors']} | {t['seconds']:.1f} |"
        )
    cats = report["categories"]
    lines += ["", "| " + " | ".join([*cats, "mean"]) + " |", "|" + "---:|" * (len(cats) + 1)]
    lines.append("| " + " | ".join(_f(v) for v in [*cats.values(), report["mean"]]) + " |")
    missing = ", ".join(f"{m['task']} ({m['category']})" for m in report["missing"])
    lines += [
        "",
        f"The mean is over the categories {', '.join(report['mean_over'])}; JSTS is reported apart. Not evaluated "
        f"(no data offline): {missing} — so this mean is not llm-jp-eval v1.3's AVG.",
    ]
    return lines


def compare_markdown(reports: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """One row per model: category means, the mean, JSTS."""
    cats = [c for c in AVERAGED if any(c in r["categories"] for r in reports.values())]
    lines = [
        "| model | " + " | ".join(cats) + " | mean | JSTS pearson |",
        "|---|" + "---:|" * (len(cats) + 2),
    ]
    for name, r in reports.items():
        row = [_f(r["categories"].get(c)) for c in cats] + [_f(r["mean"]), _f(r["sts"].get("pearson"))]
        lines.append(f"| {name} | " + " | ".join(row) + " |")
    return lines


def compare_plot(reports: Mapping[str, Mapping[str, Any]], path: Path) -> Path:
    """Grouped bars: one group per category (and the mean), one bar per model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    cats = [c for c in AVERAGED if any(c in r["categories"] for r in reports.values())] + ["mean"]
    x = np.arange(len(cats))
    width = 0.8 / max(1, len(reports))
    fig, ax = plt.subplots(figsize=(max(6.0, 1.3 * len(cats)), 3.6))
    for i, (name, r) in enumerate(reports.items()):
        values = [r["categories"].get(c, 0.0) if c != "mean" else (r["mean"] or 0.0) for c in cats]
        ax.bar(x + (i - (len(reports) - 1) / 2) * width, values, width, label=name)
    ax.set_xticks(x, cats)
    ax.set_ylabel("score")
    ax.set_ylim(0, 1)
    ax.set_title("jaster by category")
    ax.legend(fontsize=8, ncols=min(4, len(reports)))
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
