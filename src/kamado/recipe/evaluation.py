"""The recipe's jaster stage: every model of the run on jaster, 0-shot by default, through the serving engine.

The pre-trained model is asked with llm-jp-eval v1.3's plain Alpaca text; the post-trained ones (SFT, DPO rounds,
merged), which learned the chat template, with the same blocks as chat turns (`jaster.prompt = "auto"`). Each
model's answers and scores go to `eval/jaster/NAME/` and are reused by a rerun (per task); the report gets the
category table, the per-task table and `jaster_compare.png`.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from kamado.config import RunConfig
from kamado.eval.generate import EngineGenerator
from kamado.eval.jaster.report import compare_markdown, compare_plot
from kamado.eval.jaster.run import JasterSettings, evaluate_jaster
from kamado.eval.jaster.v13_format import jaster_source
from kamado.serve.load import load_for_serving, serving_dtype


def slug(name: str) -> str:
    """'DPO round 1' -> 'dpo_round_1'; 'merged (linear: ...)' -> 'merged'."""
    return re.sub(r"[^a-z0-9]+", "_", name.split(" (")[0].lower()).strip("_") or "model"


def jaster_stage(cfg: RunConfig, base: Path, run_dir: Path, models: list[tuple[str, str]]) -> dict[str, Any]:
    c = cfg.jaster
    data = Path(c.data) if Path(c.data).is_absolute() else (base / c.data).resolve()
    load, tasks = jaster_source(data)
    reports: dict[str, Any] = {}
    for name, path in models:
        prompt = c.prompt if c.prompt != "auto" else ("alpaca" if name == "pre-trained" else "chat")
        settings = JasterSettings(shots=c.shots, limit=c.limit or None, prompt=prompt)
        model, tok, _ = load_for_serving(path, run_dir / "tokenizer")
        gen = EngineGenerator(model, tok, name, serving_dtype("auto", "cpu"), c.max_batch)
        reports[name] = evaluate_jaster(gen, load, tasks, settings, run_dir / "eval" / "jaster" / slug(name))
    plot = compare_plot(reports, run_dir / "jaster_compare.png")
    return {"data": c.data, "reports": reports, "plot": plot.name}


def task_table(reports: dict[str, Any]) -> list[str]:
    names = list(reports)
    first = next(iter(reports.values()))
    lines = ["| task | category | metric | n | " + " | ".join(names) + " |", "|---" * (len(names) + 4) + "|"]
    for task, t in first["tasks"].items():
        metric = "pearson" if task == "jsts" else t["metric"]
        cells = [f"{r['tasks'][task]['scores'][metric]:.3f}" for r in reports.values()]
        lines.append(f"| {task} | {t['category']} | {metric} | {t['n']} | " + " | ".join(cells) + " |")
    return lines


def jaster_section(result: dict[str, Any]) -> list[str]:
    reports = result["reports"]
    first = next(iter(reports.values()))
    s = first["settings"]
    per_task = "all test samples" if s["limit"] is None else f"the first {s['limit']} test samples"
    prompts = ", ".join(f"{n}: {r['settings']['prompt']}" for n, r in reports.items())
    missing = ", ".join(f"{m['task']} ({m['category']})" for m in first["missing"])
    seconds = ", ".join(f"{n} {r['seconds']:.0f} s" for n, r in reports.items())
    return [
        "## jaster (llm-jp-eval v1.3 semantics)",
        "",
        f"{s['shots']}-shot, greedy, {per_task} of each task ({first['examples']} examples per model) from "
        f"`{result['data']}`; prompts — {prompts}. Time: {seconds}.",
        "",
        *compare_markdown(reports),
        "",
        *task_table(reports),
        "",
        f"![jaster by category]({result['plot']})",
        "",
        f"The mean is over the categories evaluated; JSTS apart (Pearson's r). Not evaluated (no data offline): "
        f"{missing}, so the mean is not v1.3's AVG. A tiny model barely follows instructions: read the numbers as "
        "a check that the whole path works, not as a measure of Japanese ability.",
        "",
    ]
