"""The stability grid's results: LR-sensitivity curves, probe traces, and the Markdown page.

LR sensitivity (Wortsman et al. 2023, §3.1): over the grid's learning rates η (log-spaced, so the mean over
the grid is the expectation over log η), E_η[min(ℓ(η), ℓ₀) − ℓ*], with ℓ(η) the final loss at η (mean over
seeds), ℓ₀ the loss at initialisation and ℓ* the best final loss of that variant. 0 means every rate in the
range trains as well as the best; a diverged rate counts as ℓ₀ − ℓ*. A run *diverges* when its final loss is not
below its first step's, or is not finite.
"""

from __future__ import annotations

import json
import math
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any

VARIANTS = [
    "QK-Norm on, Z-loss on",
    "QK-Norm on, Z-loss off",
    "QK-Norm off, Z-loss on",
    "QK-Norm off, Z-loss off",
]


def diverged(result: dict[str, Any]) -> bool:
    final = result["final_loss"]
    return not math.isfinite(final) or final >= result["first_loss"]


def summarise(results: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per variant: mean final loss per learning rate, the first rate that diverges, LR sensitivity."""
    by: dict[str, dict[float, list[dict[str, Any]]]] = defaultdict(lambda: defaultdict(list))
    for r in results:
        by[r["variant"]][r["lr"]].append(r)
    out = {}
    for name in VARIANTS:
        if name not in by:
            continue
        lrs = sorted(by[name])
        l0 = statistics.mean(r["first_loss"] for rs in by[name].values() for r in rs)
        final = {lr: statistics.mean(min(r["final_loss"], l0) for r in by[name][lr]) for lr in lrs}
        best = min(final.values())
        out[name] = {
            "lrs": lrs,
            "final": final,
            "first_diverging_lr": next((lr for lr in lrs if any(diverged(r) for r in by[name][lr])), None),
            "lr_sensitivity": statistics.mean(final[lr] - best for lr in lrs),
            "best_loss": best,
            "initial_loss": l0,
            "max_attn_logit": {lr: max(r["max_attn_logit"] for r in by[name][lr]) for lr in lrs},
            "final_log_z": {lr: statistics.mean(r["final_log_z"] for r in by[name][lr]) for lr in lrs},
        }
    return out


def _rows(path: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in path.read_text().splitlines() if '"loss"' in x]


def plot(out: Path, results: list[dict[str, Any]], summary: dict[str, dict[str, Any]], fig_dir: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig_dir.mkdir(parents=True, exist_ok=True)
    names = []
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for name, s in summary.items():
        ax.plot(
            s["lrs"], [s["final"][lr] for lr in s["lrs"]], marker="o", label=f"{name} (sens. {s['lr_sensitivity']:.2f})"
        )
    ax.set_xscale("log")
    ax.set_xlabel("learning rate")
    ax.set_ylabel("final loss (capped at the initial loss)")
    ax.set_title("Final loss vs learning rate")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(fig_dir / "stability_lr.png", dpi=120)
    plt.close(fig)
    names.append("stability_lr.png")

    top = max(r["lr"] for r in results)
    seed = min(r["seed"] for r in results)
    for key, label, pairs, fname in (
        ("attn_logit_", "max attention logit (largest layer)", [(True, True), (False, True)], "stability_attn.png"),
        ("log_z", "mean log Z of the output softmax", [(True, True), (True, False)], "stability_logz.png"),
    ):
        fig, ax = plt.subplots(figsize=(6.4, 4.2))
        for qk, z in pairs:
            run = out / "runs" / f"qk{int(qk)}_z{int(z)}_lr{top:g}_s{seed}" / "metrics.jsonl"
            if not run.is_file():
                continue
            rows = _rows(run)
            ys = [max(v for k, v in r.items() if k.startswith(key)) if key.endswith("_") else r[key] for r in rows]
            ax.plot(
                [r["step"] for r in rows], ys, label=f"QK-Norm {'on' if qk else 'off'}, Z-loss {'on' if z else 'off'}"
            )
        if key.endswith("_"):
            ax.set_yscale("log")  # attention logits span orders of magnitude between the variants
        ax.set_xlabel("step")
        ax.set_ylabel(label)
        ax.set_title(f"{label}, learning rate {top:g}")
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(fig_dir / fname, dpi=120)
        plt.close(fig)
        names.append(fname)
    return names


def write_page(page: Path, summary: dict[str, dict[str, Any]], figures: list[str], meta: dict[str, Any]) -> None:
    rel = Path("figures")
    lines = [
        "# QK-Norm and Z-loss against learning rate (kamado experiment stability)",
        "",
        f"Command: `{meta['command']}`  ",
        f"Machine: {meta['machine']}; {meta['runs']} runs; training them took {meta['seconds'] / 60:.1f} min of wall "
        f"time with {meta['workers']} worker processes; page made {meta['date']}.  ",
        f"Grid: {meta['grid']}",
        "",
        "Stability monitor off for every run (a skipped or rolled-back spike would hide a divergence); weight decay "
        f"{meta['weight_decay']}; Z-loss coefficient {meta['z_loss']} when on. Final loss = mean of the last tenth of "
        "the steps, averaged over seeds and capped at the initial loss; LR sensitivity as Wortsman et al. (2023) "
        "define it (see `src/kamado/experiments/report.py`).",
        "",
        "| variant | best final loss | LR sensitivity | first diverging LR | max attention logit at the top LR | "
        "final log Z at the top LR |",
        "|---|---|---|---|---|---|",
    ]
    for name, s in summary.items():
        top = s["lrs"][-1]
        first = f"{s['first_diverging_lr']:g}" if s["first_diverging_lr"] is not None else "none in the grid"
        lines.append(
            f"| {name} | {s['best_loss']:.3f} | {s['lr_sensitivity']:.3f} | {first} | "
            f"{s['max_attn_logit'][top]:.1f} | {s['final_log_z'][top]:.2f} |"
        )
    lines += [
        "",
        "Final loss per learning rate:",
        "",
        "| variant | " + " | ".join(f"{lr:g}" for lr in next(iter(summary.values()))["lrs"]) + " |",
    ]
    lines.append("|---|" + "---|" * len(next(iter(summary.values()))["lrs"]))
    for name, s in summary.items():
        lines.append(f"| {name} | " + " | ".join(f"{s['final'][lr]:.3f}" for lr in s["lrs"]) + " |")
    lines += [""] + [f"![{f}]({rel / f})" for f in figures] + [""]
    if meta.get("reading"):
        lines += ["## What the data does and does not support", "", meta["reading"], ""]
    page.parent.mkdir(parents=True, exist_ok=True)
    page.write_text("\n".join(lines), encoding="utf-8")
