"""The corpus report: documents in and out of each stage, why documents were dropped, the languages seen, speed,
and a funnel plot, from the summary `run_corpus` collects (datatrove's per-task stats, summed per stage).

Steps are found by their display names (`STEP_NAMES`; a test checks them against the steps' own `name`), so
reading a summary needs neither datatrove nor the steps.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

from kamado.atomic import atomic_write_text

matplotlib.use("Agg")  # files only, no display needed
import matplotlib.pyplot as plt

# funnel row -> (stage, part of the step's display name, stat that counts the documents leaving it)
STEP_NAMES: dict[str, tuple[str, str, str]] = {
    "WARC records": ("extract", "WARC pages", "warc_records"),
    "pages (HTML or text)": ("extract", "WARC pages", "documents"),
    "kana prefilter": ("extract", "Kana prefilter", "forwarded"),
    "Markdown extracted": ("extract", "HTML → Markdown", "forwarded"),
    "Japanese (language ID)": ("extract", "Japanese language ID", "forwarded"),
    "quality filters": ("extract", "Japanese quality", "forwarded"),
    "quality classifier": ("extract", "Quality classifier", "forwarded"),
    "deduplicated": ("dedup_filter", "Duplicate filter", "forwarded"),
}


OPTIONAL_ROWS = {"quality classifier"}  # steps a config may leave out: no row when they did not run
_READER_COUNTS = {"documents", "doc_len", "input_files", "input_bytes"}  # the reader's other stats name skips
_FILE_SKIPS = ("not_warc_file", "unreadable_file")  # whole input files the reader got no record from


def _step(summary: dict[str, Any], stage: str, part: str) -> dict[str, int] | None:
    for name, stats in summary["stats"].get(stage, {}).items():
        if part in name:
            return stats
    return None


def funnel(summary: dict[str, Any]) -> list[tuple[str, int]]:
    """[(row, documents)] in pipeline order; a stage that never ran (nothing reached it) counts 0."""
    rows = []
    for row, (stage, part, stat) in STEP_NAMES.items():
        stats = _step(summary, stage, part)
        if stats is None and row in OPTIONAL_ROWS:
            continue
        rows.append((row, int(stats.get(stat, 0)) if stats else 0))
    return rows


def rejections(summary: dict[str, Any]) -> list[tuple[str, str, int]]:
    """[(step, reason, documents)] for every `dropped_<reason>` and reader skip counted, largest first."""
    out = []
    for stage in summary["stats"].values():
        for step, stats in stage.items():
            for key, n in stats.items():
                if key.startswith("dropped_") and n:
                    out.append((step, key.removeprefix("dropped_"), int(n)))
                elif "WARC pages" in step and not key.startswith("warc_") and key not in _READER_COUNTS and n:
                    out.append((step, key, int(n)))  # a record the reader skipped (malformed, truncated, ...)
    return sorted(out, key=lambda r: -r[2])


def inputs(summary: dict[str, Any]) -> dict[str, int]:
    """{"files", "bytes", "records", "bad_files"}: what went into the reader (bad: not readable as WARC)."""
    stats = _step(summary, "extract", "WARC pages") or {}
    return {
        "files": int(stats.get("input_files", 0)),
        "bytes": int(stats.get("input_bytes", 0)),
        "records": int(stats.get("warc_records", 0)),
        "bad_files": sum(int(stats.get(k, 0)) for k in _FILE_SKIPS),
    }


def warnings(summary: dict[str, Any]) -> list[str]:
    """What a user must not miss: input that gave no document at all (and why), input files without WARC records.

    Not errors: a crawl slice with no Japanese page in it is a valid, empty result; `kamado run` refuses to train
    on an empty corpus itself."""
    got = inputs(summary)
    bad = f"{got['bad_files']} file(s) not readable as WARC"
    if summary["documents_out"] == 0 and got["bytes"] > 0:
        why = [bad] if got["bad_files"] else []
        why += [f"{got['records']:,} WARC records read"] if got["records"] else []
        reasons = [f"{reason} {n:,}" for _, reason, n in rejections(summary) if reason not in _FILE_SKIPS][:4]
        why += [f"dropped or skipped: {', '.join(reasons)}"] if reasons else []
        return [f"{got['files']} input file(s), {got['bytes']:,} bytes, gave 0 documents: {'; '.join(why)}"]
    if got["bad_files"]:
        return [f"{bad} out of {got['files']} (no record read from them; the reader's log names them)"]
    return []


def languages(summary: dict[str, Any]) -> dict[str, int]:
    """{language code: pages} as identified after extraction (pages without kana never reach language ID)."""
    stats = _step(summary, "extract", "Japanese language ID") or {}
    langs = {k.removeprefix("lang_"): int(v) for k, v in stats.items() if k.startswith("lang_")}
    return dict(sorted(langs.items(), key=lambda kv: -kv[1]))


def speed(summary: dict[str, Any]) -> dict[str, float]:
    """Pages per second over the whole run, and per worker process (the pipeline's unit of scaling)."""
    pages = dict(funnel(summary))["pages (HTML or text)"]
    seconds = sum(summary["stage_seconds"].values())
    workers = max(1, int(summary.get("workers", 1)))
    return {
        "pages": pages,
        "seconds": seconds,
        "pages_per_s": pages / seconds,
        "pages_per_s_per_worker": pages / seconds / workers,
    }


def plot_funnel(summary: dict[str, Any], out_png: Path) -> Path:
    rows = funnel(summary)[1:]  # the records row dwarfs the rest (requests, metadata, ...)
    drops = rejections(summary)[:12]
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4), dpi=110)
    names = [r for r, _ in rows][::-1]
    a.barh(names, [n for _, n in rows][::-1], color="#4c72b0")
    for i, (_, n) in enumerate(rows[::-1]):
        a.text(n, i, f" {n}", va="center", fontsize=8)
    a.set_title("documents after each step")
    a.set_xlabel("documents")
    b.barh([f"{reason}" for _, reason, _ in drops][::-1], [n for *_, n in drops][::-1], color="#c44e52")
    b.set_title("why documents were dropped")
    b.set_xlabel("documents")
    for ax in (a, b):
        ax.grid(axis="x", alpha=0.3)
        ax.tick_params(axis="y", labelsize=8)
    fig.tight_layout()
    fig.savefig(out_png)
    plt.close(fig)
    return out_png


def write_corpus_report(out_dir: Path, summary: dict[str, Any]) -> Path:
    """`corpus_report.md` + `corpus_funnel.png` in `out_dir`."""
    plot_funnel(summary, out_dir / "corpus_funnel.png")
    sp = speed(summary)
    got = inputs(summary)
    lines = ["# kamado corpus report", ""]
    lines += [f"**Warning: {w}.**\n" for w in warnings(summary)]
    lines += [
        f"Input: {got['files']:,} file(s), {got['bytes']:,} bytes; {got['records']:,} WARC records read, "
        f"{got['bad_files']:,} file(s) not readable as WARC. Records the reader skipped, and why, are in the "
        "dropped table.",
        "",
    ]
    lines += ["## Funnel", "", "| step | documents |", "|---|---:|"]
    lines += [f"| {row} | {n:,} |" for row, n in funnel(summary)]
    lines += ["", "![funnel](corpus_funnel.png)", "", "## Dropped documents", "", "| step | reason | documents |"]
    lines += ["|---|---|---:|"] + [f"| {step} | {reason} | {n:,} |" for step, reason, n in rejections(summary)]
    langs = ", ".join(f"{k} {v}" for k, v in languages(summary).items()) or "none"
    lines += ["", "## Languages seen (after extraction)", "", langs, "", "## Speed", ""]
    if summary.get("executor") == "slurm":  # the scheduler's wall time is not seen here: the tasks' own time
        lines += [
            f"{sp['pages']:,} pages in {sp['seconds']:.1f} s of Slurm tasks' step time (summed over the tasks): "
            f"{sp['pages_per_s']:.1f} pages per task-second.",
            "",
            "| stage | task-seconds |",
            "|---|---:|",
        ]
    else:
        lines += [
            f"{sp['pages']:,} pages in {sp['seconds']:.1f} s: {sp['pages_per_s']:.1f} pages/s, "
            f"{sp['pages_per_s_per_worker']:.1f} pages/s per worker ({summary.get('workers', 1)} workers, "
            f"executor {summary.get('executor', 'local')}).",
            "",
            "| stage | seconds |",
            "|---|---:|",
        ]
    lines += [f"| {k} | {v:.2f} |" for k, v in summary["stage_seconds"].items()]
    lines += ["", f"Output: {summary['documents_out']:,} documents in `shards/` (see `shards/manifest.json`).", ""]
    path = out_dir / "corpus_report.md"
    atomic_write_text(path, "\n".join(lines))
    return path
