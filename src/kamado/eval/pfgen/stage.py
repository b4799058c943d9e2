"""The recipe's pfgen-bench stage: every model of the run on pfgen, beside the smallest published models.

The pre-trained model answers in `completion` mode (upstream's mode for base models); the post-trained ones
(SFT, DPO rounds, merged), which learned the chat template, in `chat` mode (`pfgen.mode = "auto"`). Each model's
files (upstream's config.json, trial_NNN.jsonl, trials.jsonl.xz, result.json) go to `eval/pfgen/NAME/`, and a
rerun resumes at the first missing trial. The data is `pfgen.data` (the repo's 7-question sample, so a clone
runs it) unless `pfgen.full_data` (the 50 questions in ../shared) exists. The published rows are read from the
`result.json` files shipped with the data and labelled as published.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from kamado.config_checks import AT_LEAST_ONE, Range, check_choice, check_fields
from kamado.eval import slug


@dataclass
class PfgenEvalConfig:
    """`[pfgen]` section of a run config."""

    data: str = ""  # upstream's data/ folder, relative to the recipe file; "" turns the stage off
    full_data: str = ""  # used instead of `data` where it exists (e.g. the full 50 questions in ../shared)
    trials: int = 10
    examples: int = 20  # examples per prompt (upstream: 20; must fit the model's context)
    max_tokens: int = 300
    mode: str = "auto"  # auto: completion for the pre-trained model, chat after SFT; or completion / qa / chat
    max_batch: int = 32  # sequences decoded together

    def validate(self) -> None:
        check_fields(
            self, "pfgen", trials=AT_LEAST_ONE, examples=Range(0, 49), max_tokens=AT_LEAST_ONE, max_batch=AT_LEAST_ONE
        )
        check_choice("pfgen.mode", self.mode, ("auto", "completion", "qa", "chat"))


def data_folder(c: PfgenEvalConfig, base: Path) -> Path:
    def resolve(p: str) -> Path:
        return Path(p) if Path(p).is_absolute() else (base / p).resolve()

    if c.full_data and resolve(c.full_data).is_dir():
        return resolve(c.full_data)
    return resolve(c.data)


def pfgen_stage(c: PfgenEvalConfig, base: Path, run_dir: Path, models: list[tuple[str, str]]) -> dict[str, Any]:
    """Generate and score every model of `models` ((display name, run folder), pre-trained first)."""
    from kamado.atomic import atomic_write_text
    from kamado.eval.generate import EngineGenerator
    from kamado.eval.pfgen.data import PfgenData
    from kamado.eval.pfgen.report import headline, published_rows
    from kamado.eval.pfgen.run import PfgenSettings, run_pfgen
    from kamado.eval.pfgen.score import QuestionScorer, score_trials
    from kamado.serve.load import load_for_serving, serving_dtype

    data = PfgenData(data_folder(c, base))
    scorers: dict[str, QuestionScorer] = {}
    reports: dict[str, Any] = {}
    for name, path in models:
        mode = c.mode if c.mode != "auto" else ("completion" if name == "pre-trained" else "chat")
        settings = PfgenSettings(mode, c.trials, c.examples, c.max_tokens)
        model, tok, _ = load_for_serving(path, run_dir / "tokenizer")
        gen = EngineGenerator(model, tok, name, serving_dtype("auto", "cpu"), c.max_batch)
        out = run_dir / "eval" / "pfgen" / slug(name)
        summary = run_pfgen(gen, data, settings, out, "kamado")
        start = time.perf_counter()
        result = score_trials(out / "trials.jsonl.xz", data, scorers=scorers)
        atomic_write_text(out / "result.json", json.dumps(result, indent=2, ensure_ascii=False))
        summary.update(mode=mode, headline=headline(result), score_seconds=round(time.perf_counter() - start, 2))
        reports[name] = summary
    return {
        "data": c.full_data if c.full_data and data_folder(c, base) != (base / c.data).resolve() else c.data,
        "question_ids": data.question_ids,
        "settings": asdict(c),
        "models": reports,
        "published": published_rows(data.folder, data.question_ids),
    }


def pfgen_section(result: dict[str, Any]) -> list[str]:
    """The report's pfgen-bench section (Markdown lines)."""
    from kamado.eval.pfgen.report import pfgen_table

    s, models = result["settings"], result["models"]
    modes = ", ".join(f"{n}: {r['mode']}" for n, r in models.items())
    seconds = ", ".join(f"{n} {r['seconds'] + r['score_seconds']:.0f} s" for n, r in models.items())
    empty = sum(r["empty"] for r in models.values())
    n_q = len(result["question_ids"])
    subset = f"The {n_q} questions {', '.join(result['question_ids'])}" if n_q < 50 else "All 50 questions"
    return [
        "## pfgen-bench (n-gram scores against ~1,000 reference answers per question, no judge)",
        "",
        f"{subset} from `{result['data']}`, {s['trials']} trials, {s['examples']} examples per prompt (upstream: "
        f"20), temperature 1.0, top-p 0.98, up to {s['max_tokens']} tokens; modes — {modes}. Empty answers after "
        f"retries: {empty}. Time (generation + scoring): {seconds}.",
        "",
        *pfgen_table({n: r["headline"] for n, r in models.items()}, result["published"]),
        "",
        "Score = (fluency + truthfulness + helpfulness) / 3 per answer, each with a length penalty past 100 "
        "characters; fluency and truthfulness are summed over a question's reference sets, so the reference "
        "answers themselves score about 1.05. Rows marked *published* are upstream's leaderboard numbers for the "
        "smallest public models (their result.json, shipped with the data), not runs of ours; on a subset they "
        "are the published per-question means over the same questions. Fewer examples than upstream's 20 make "
        "the task harder, so the tiny model's row is a check that the path works, not a leaderboard entry.",
        "",
    ]
