"""The run report: a loss-curve PNG and a short Markdown summary written into the run folder."""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

import matplotlib

from kamado.atomic import atomic_write_text

matplotlib.use("Agg")  # files only, no display needed
import matplotlib.pyplot as plt


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """The rows of a run's JSONL log; a torn row (an interrupted append) is skipped, not fatal."""
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict):
            rows.append(row)
    return rows


def plot_losses(metrics_file: Path, out_png: Path, title: str) -> Path:
    rows = read_jsonl(metrics_file)
    train = [r for r in rows if "ce" in r]
    val = [r for r in rows if "val_ce" in r]
    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    if train:
        ax.plot([r["step"] for r in train], [r["ce"] for r in train], lw=1, label="train CE")
    if val:
        ax.plot([r["step"] for r in val], [r["val_ce"] for r in val], "o-", lw=1.5, label="validation CE (held-out)")
    phases = [r for a, r in itertools.pairwise(train) if r.get("phase") != a.get("phase")]
    for r in phases:
        ax.axvline(r["step"], color="gray", ls="--", lw=1)
        ax.text(r["step"], ax.get_ylim()[1], f" phase {r['phase'] + 1}", va="top", fontsize=8, color="gray")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("nats / token")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out_png)
    plt.close(fig)
    return out_png


def markdown_table(rows: list[tuple[str, str]]) -> str:
    """Two-column Markdown table; a "|" inside a cell is escaped so it cannot split the row."""
    lines = ["| | |", "|---|---|"]
    cell = lambda x: str(x).replace("|", "\\|")  # noqa: E731
    lines += [f"| {cell(k)} | {cell(v)} |" for k, v in rows]
    return "\n".join(lines)


def web_corpus_section(web: dict[str, Any]) -> list[str]:
    """Markdown lines: the WARC → shards funnel, the main drop reasons and the speed of the corpus stage."""
    from kamado.corpus import report as corpus_report

    funnel = " → ".join(f"{n:,} {row}" for row, n in corpus_report.funnel(web))
    drops = ", ".join(f"{reason} {n}" for _, reason, n in corpus_report.rejections(web)[:6])
    sp = corpus_report.speed(web)
    langs = ", ".join(f"{k} {v}" for k, v in corpus_report.languages(web).items())
    rows = [
        ("funnel", funnel),
        ("dropped (top reasons)", drops or "none"),
        ("languages after extraction", langs or "none"),
        ("speed", f"{sp['pages_per_s']:.1f} pages/s ({sp['pages_per_s_per_worker']:.1f} per worker)"),
    ]
    return [
        "## Web corpus (WARC → Japanese Markdown → quality → dedup → shards)",
        "",
        markdown_table(rows),
        "",
        "![web corpus funnel](corpus/corpus_funnel.png)",
        "",
        "Details: [corpus/corpus_report.md](corpus/corpus_report.md).",
        "",
    ]


def write_report(out_dir: Path, summary: dict[str, Any]) -> Path:
    """report.md from the summary dict the recipe collected (stage timings, model, data, results, samples)."""
    s = summary
    parts = [f"# kamado run: {s['name']}", "", f"Run folder: `{out_dir}` — written {s['finished']}.", ""]
    parts += ["## Stages", "", markdown_table([(k, f"{v:.1f} s") for k, v in s["stage_seconds"].items()]), ""]
    web = s.get("web_corpus")
    if web:
        parts += web_corpus_section(web)
    parts += ["## Corpus and tokenizer", "", markdown_table(s["data_rows"]), ""]
    parts += ["## Model and training", "", markdown_table(s["train_rows"]), ""]
    parts += ["![loss curve](loss.png)", ""]
    bpc = s.get("bits_per_char")
    if bpc:
        parts += ["## Held-out compression (bits per character, lower is better)", ""]
        parts += ["| held-out text | kamado model | xz -9e given the same training text | model beats xz |"]
        parts += ["|---|---|---|---|"]
        for name, r in bpc.items():
            parts += [f"| {name} | {r['model']:.3f} | {r['xz']:.3f} | {'yes' if r['model'] < r['xz'] else 'no'} |"]
        parts += ["", "xz rate = 8·(len(xz(train+heldout)) − len(xz(train)))/chars(heldout); see kamado.eval.", ""]
    events = s.get("stability_events", [])
    parts += ["## Stability", "", f"{len(events)} event(s) (skipped updates / rollbacks); see events.jsonl.", ""]
    if s.get("serve_rows"):
        parts += ["## Serving", "", markdown_table(s["serve_rows"]), ""]
    if s.get("posttrain"):
        from kamado.recipe.posttrain import posttrain_section

        parts += posttrain_section(s["posttrain"])
    if s.get("jaster"):
        from kamado.recipe.evaluation import jaster_section

        parts += jaster_section(s["jaster"])
    if s.get("pfgen"):
        from kamado.eval.pfgen.stage import pfgen_section

        parts += pfgen_section(s["pfgen"])
    if s.get("judge"):
        from kamado.recipe.evaluation import judge_section

        parts += judge_section(s["judge"])
    if s.get("samples"):
        parts += ["## Samples", ""]
        for prompt, text in s["samples"]:
            parts += [f"**{prompt}** → {text}", ""]
    path = out_dir / "report.md"
    atomic_write_text(path, "\n".join(parts))
    return path
