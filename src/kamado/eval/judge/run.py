"""One judge benchmark end to end: the model's answers, the judge's judgments, the report.

Files, in FastChat's layout under the output folder (several models and judges can share it):

    OUT/BENCH/model_answer/MODEL.jsonl               the model's answers (resumable)
    OUT/BENCH/model_judgment/JUDGE_single.jsonl      single-answer judgments (JUDGE_pair.jsonl for Rakuda);
                                                     other models' records in the file are kept
    OUT/BENCH/report_MODEL.json                      the numbers (report.py)
    OUT/judge_cache.jsonl                            every judge reply, so a rerun makes no call it made before

A rerun regenerates nothing it has: answers are read back, judgments come from the cache; only what failed
before (an answer or a judge call that errored) is asked again.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kamado.atomic import atomic_write_text
from kamado.eval.generate import EndpointGenerator, Generator
from kamado.eval.judge.answers import AnswerSettings, generate_answers, safe_name
from kamado.eval.judge.benchmarks import (
    RAKUDA_REFERENCES,
    iter_jsonl,
    judge_prompts,
    load_questions,
    rakuda_reference_answers,
)
from kamado.eval.judge.cache import JudgmentCache
from kamado.eval.judge.calls import JUDGE_MAX_TOKENS
from kamado.eval.judge.pairwise import judge_rakuda
from kamado.eval.judge.report import rakuda_report, single_report
from kamado.eval.judge.single import elyza_items, judge_single, mt_bench_items


@dataclass(frozen=True)
class JudgeSettings:
    data_dir: Path = Path("samples/eval")
    limit: int | None = None  # the first N questions of each benchmark
    answer: AnswerSettings = field(default_factory=AnswerSettings)
    judge_max_tokens: int = JUDGE_MAX_TOKENS
    rakuda_references: tuple[str, ...] = RAKUDA_REFERENCES
    n_bootstrap: int = 1000  # Bradley-Terry intervals (Rakuda)


def write_judgments(path: Path, model: str, records: Sequence[dict[str, Any]]) -> None:
    """Replace `model`'s records in a judgment file, keeping other models'."""
    kept = [r for r in iter_jsonl(path) if isinstance(r, dict) and model not in (r.get("model"), r.get("model_1"))]
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in [*kept, *records]))


def run_bench(
    bench: str,
    gen: Generator,
    judge: EndpointGenerator,
    cache: JudgmentCache,
    settings: JudgeSettings,
    out: Path,
) -> dict[str, Any]:
    """Answer, judge and report one benchmark for `gen`'s model; returns the report."""
    questions = load_questions(bench, settings.data_dir, settings.limit)
    prompts = judge_prompts(bench, settings.data_dir)  # before generating: a missing file fails at once
    references = rakuda_reference_answers(settings.data_dir, settings.rakuda_references) if bench == "rakuda" else {}
    d = out / bench
    answer_file = d / "model_answer" / f"{safe_name(gen.name)}.jsonl"
    answers = generate_answers(gen, questions, answer_file, settings.answer, desc=f"{bench} answers")
    calls_before = len(cache.replies)
    if bench == "rakuda":
        records = judge_rakuda(
            questions, answers, gen.name, references, judge, prompts["pair-ja"], cache, settings.judge_max_tokens
        )
        judgment_file = d / "model_judgment" / f"{safe_name(judge.name)}_pair.jsonl"
        report = rakuda_report(questions, records, settings.n_bootstrap)
    else:
        if bench == "elyza100":
            items = elyza_items(questions, answers, gen.name, judge.name, prompts["elyza"], settings.judge_max_tokens)
        else:
            items = mt_bench_items(questions, answers, gen.name, judge.name, prompts, settings.judge_max_tokens)
        records = judge_single(items, judge, cache, desc=f"judging {bench}")
        judgment_file = d / "model_judgment" / f"{safe_name(judge.name)}_single.jsonl"
        report = single_report(bench, questions, records)
    write_judgments(judgment_file, gen.name, records)
    report |= {
        "model": gen.name,
        "judge": judge.name,
        "new_judge_replies": len(cache.replies) - calls_before,
        "answer_file": str(answer_file),
        "judgment_file": str(judgment_file),
    }
    atomic_write_text(d / f"report_{safe_name(gen.name)}.json", json.dumps(report, ensure_ascii=False, indent=1) + "\n")
    return report
