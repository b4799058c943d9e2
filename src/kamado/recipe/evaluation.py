"""The recipe's evaluation stages: every model of the run on jaster, and the post-trained ones on the judge
benchmarks (Japanese MT-Bench, MT-Bench, Rakuda, ELYZA-tasks-100).

jaster runs 0-shot by default, through the serving engine.
The pre-trained model is asked with llm-jp-eval v1.3's plain Alpaca text; the post-trained ones (SFT, DPO rounds,
merged), which learned the chat template, with the same blocks as chat turns (`jaster.prompt = "auto"`). Each
model's answers and scores go to `eval/jaster/NAME/` and are reused by a rerun (per task); the report gets the
category table, the per-task table and `jaster_compare.png`.

The judge stage answers each benchmark's questions with every post-trained model (the chat models) and has them
graded by `judge.judge_url`, or, without one, by the run's last model served in the background (`kamado serve`
in-process): offline, so the whole path — answers, judge calls, parsing, the cache, Bradley–Terry for Rakuda —
runs in the tiny recipe, with grades that mean little. Files go to `eval/judge/` in FastChat's layout, with the
judge's replies cached there, so a rerun calls no one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kamado.config import RunConfig
from kamado.eval import slug
from kamado.eval.generate import EngineGenerator
from kamado.eval.jaster.report import compare_markdown, compare_plot
from kamado.eval.jaster.run import JasterSettings, evaluate_jaster
from kamado.eval.jaster.v13_format import jaster_source
from kamado.serve.load import load_for_serving, serving_dtype


def _resolve(base: Path, path: str) -> Path:
    return Path(path) if Path(path).is_absolute() else (base / path).resolve()


def jaster_stage(cfg: RunConfig, base: Path, run_dir: Path, models: list[tuple[str, str]]) -> dict[str, Any]:
    c = cfg.jaster
    data = _resolve(base, c.data)
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


def judge_stage(cfg: RunConfig, base: Path, run_dir: Path, models: list[tuple[str, str]]) -> dict[str, Any]:
    from contextlib import ExitStack

    from kamado.eval.generate import EndpointGenerator
    from kamado.eval.judge.answers import AnswerSettings
    from kamado.eval.judge.cache import JudgmentCache
    from kamado.eval.judge.run import JudgeSettings, run_bench
    from kamado.serve.background import serve_in_background

    c = cfg.judge
    chat_models = [m for m in models if m[0] != "pre-trained"] or models
    settings = JudgeSettings(
        data_dir=_resolve(base, c.data),
        limit=c.limit or None,
        answer=AnswerSettings(max_tokens=c.max_tokens),
        judge_max_tokens=c.judge_max_tokens,
        n_bootstrap=c.bootstrap,
    )
    out = run_dir / "eval" / "judge"
    cache = JudgmentCache(out / "judge_cache.jsonl")
    results: dict[str, Any] = {}
    with ExitStack() as stack:
        url, judge_name, shown = c.judge_url, c.judge_model, f"`{c.judge_model}` at {c.judge_url}"
        if not url:
            url, judge_name = stack.enter_context(serve_in_background(models[-1][1], run_dir / "tokenizer"))
            shown = f"the {models[-1][0]} model (`{judge_name}`), served in the background"
        judge = EndpointGenerator(url, judge_name, c.judge_key_env, progress=False)
        for name, path in chat_models:
            model, tok, _ = load_for_serving(path, run_dir / "tokenizer")
            gen = EngineGenerator(model, tok, name, serving_dtype("auto", "cpu"), 8)
            results[name] = {b: run_bench(b, gen, judge, cache, settings, out) for b in c.benches}
    return {"judge": shown, "reports": results, "local": not c.judge_url}


def judge_section(result: dict[str, Any]) -> list[str]:
    reports = result["reports"]
    benches = list(next(iter(reports.values())))
    names = {
        "ja_mt_bench": "Japanese MT-Bench",
        "mt_bench": "MT-Bench",
        "rakuda": "Rakuda",
        "elyza100": "ELYZA-tasks-100",
    }
    lines = [
        f"## Judge benchmarks ({', '.join(names[b] for b in benches)})",
        "",
        f"Judge: {result['judge']}."
        + (
            " An offline stand-in: the run's own last model behind `kamado serve`, so every step runs (answers, "
            "judge calls, rating parsing, the cache, Bradley–Terry); its grades are not a measure of anything. "
            "Point `[judge].judge_url` at a real judge for real grades."
            if result["local"]
            else ""
        ),
        "",
        "| model | " + " | ".join(benches) + " |",
        "|---|" + "---:|" * len(benches),
    ]
    for name, by_bench in reports.items():
        cells = []
        for b in benches:
            r = by_bench[b]
            score = r.get("rating") if b == "rakuda" else r.get("mean")
            shown = "—" if score is None else (f"{score:.0f}" if b == "rakuda" else f"{score:.2f}")
            cells.append(
                f"{shown} ({r['scored']}/{r['judgments']} graded, {r['unparseable']} unparseable, {r['errors']} errors)"
            )
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "MT-Bench / ELYZA: mean grade (1–10 / 1–5); Rakuda: Bradley–Terry rating against the three reference "
        "models' answers (mean 1000). Unparseable grades are kept as −1 and left out of the means; files in "
        "`eval/judge/` (FastChat's layout).",
        "",
    ]
    return lines
