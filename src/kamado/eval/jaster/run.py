"""Run jaster on one model: prompts in v1.3's format, answers from a `Generator`, v1.3's scores, resumable per task.

For each task: the first `limit` test samples (v1.3's `max_num_samples`), each after the first `shots` samples of
the train split as few-shot examples (v1.3's `samples[:num_few_shots]`; a task without a train split offline —
JNLI, JSQuAD — is run 0-shot and says so), asked with v1.3's Alpaca prompt as plain text (`prompt="alpaca"`, a
base model) or as chat messages (`prompt="chat"`, a chat model), with v1.3's output length as the token budget.
Greedy decoding, as v1.3's default.

Scores (`kamado.eval.jaster.metrics`): each answer is cut at its first blank line and NFKC-normalised, the gold
NFKC-normalised; a task scores the mean exact match or char F1 of its samples, JSTS Pearson's and Spearman's
correlations over the set. A category scores the mean of its tasks, and `mean` is the mean of the categories
evaluated, JSTS left out as v1.3 leaves it out. v1.3's own average also takes EL (chABSA) and FA (the Wikipedia
annotation tasks), which need data we do not have, and HE there includes MMLU-en: those are listed under
`missing`, and our mean is not presented as v1.3's AVG.

A prompt that does not fit the local model's context is answered "" (scored as a wrong answer) and counted per
task, as is an endpoint error; nothing is dropped. Each finished task writes `TASK.jsonl` (every sample: input,
gold, raw output, normalised answer, score) and `TASK.json` (its scores and settings) atomically, so a killed run
resumes at the first unfinished task with the same settings.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from kamado.atomic import atomic_write_text
from kamado.eval.generate import Generator, Prompt
from kamado.eval.jaster.base import TaskData
from kamado.eval.jaster.metrics import char_f1, exact_match, normalize, normalize_answer, pearson, spearman
from kamado.eval.jaster.prompt import alpaca_prompt, task_messages

PROMPTS = ("alpaca", "chat")
AVERAGED = ("NLI", "QA", "RC", "MC", "HE", "MR")  # our categories in the mean; STS apart, as v1.3
MISSING = {  # jaster v1.3 tasks whose data we do not hold offline: task -> category
    "chabsa": "EL",
    "wiki_reading": "FA",
    "wiki_ner": "FA",
    "wiki_dependency": "FA",
    "wiki_pas": "FA",
    "wiki_coreference": "FA",
    "mmlu_en": "HE",
}


@dataclass(frozen=True)
class JasterSettings:
    shots: int = 0
    limit: int | None = None  # test samples per task (None: all)
    prompt: str = "alpaca"

    def __post_init__(self) -> None:
        if self.shots < 0:
            raise ValueError(f"shots must be >= 0, got {self.shots}")
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"limit must be >= 1, got {self.limit}")
        if self.prompt not in PROMPTS:
            raise ValueError(f"prompt must be one of {', '.join(PROMPTS)}, got {self.prompt!r}")


def task_prompts(data: TaskData, settings: JasterSettings) -> tuple[list[Prompt], int]:
    """The prompts for a task's evaluated samples, and the number of few-shot examples they carry."""
    shots = data.train[: settings.shots]
    budget = data.task.output_length
    prompts = []
    for s in data.test[: settings.limit]:
        if settings.prompt == "chat":
            prompts.append(Prompt.chat(task_messages(data.task, s.input, shots), max_tokens=budget))
        else:
            prompts.append(Prompt(text=alpaca_prompt(data.task, s.input, shots), max_tokens=budget))
    return prompts, len(shots)


def score_answers(metrics: Sequence[str], outputs: Sequence[str], golds: Sequence[str]) -> tuple[dict, list[float]]:
    """({metric: task score}, per-sample scores) the way v1.3 scores a task's outputs."""
    preds = [normalize_answer(o) for o in outputs]
    refs = [normalize(g) for g in golds]
    scores: dict[str, float] = {}
    per_sample = [0.0] * len(preds)
    for metric in metrics:
        if metric == "exact_match":
            per_sample = [exact_match(p, r) for p, r in zip(preds, refs, strict=True)]
        elif metric == "char_f1":
            per_sample = [char_f1(p, r) for p, r in zip(preds, refs, strict=True)]
        elif metric == "pearson":
            scores[metric] = pearson(preds, refs) if preds else 0.0
            continue
        elif metric == "spearman":
            scores[metric] = spearman(preds, refs) if preds else 0.0
            continue
        else:
            raise ValueError(f"unknown metric {metric!r}")
        scores[metric] = sum(per_sample) / len(per_sample) if per_sample else 0.0
    return scores, per_sample


def run_task(generator: Generator, data: TaskData, settings: JasterSettings) -> tuple[dict[str, Any], list[dict]]:
    """(summary, per-sample records) of one task."""
    start = time.perf_counter()
    prompts, n_shots = task_prompts(data, settings)
    done = generator.generate(prompts, desc=data.task.name)
    samples = data.test[: settings.limit]
    outputs = [c.text for c in done]
    scores, per_sample = score_answers(data.task.metrics, outputs, [s.output for s in samples])
    records = [
        {
            "input": s.input,
            "gold": s.output,
            "output": c.text,
            "pred": normalize_answer(c.text),
            "score": per_sample[i] if per_sample else None,
            "finish_reason": c.finish_reason,
            **({"error": c.error} if c.error else {}),
        }
        for i, (s, c) in enumerate(zip(samples, done, strict=True))
    ]
    summary = {
        "task": data.task.name,
        "category": data.task.category,
        "metric": data.task.metrics[0],
        "score": scores[data.task.metrics[0]],
        "scores": scores,
        "n": len(samples),
        "n_test": len(data.test),
        "shots": n_shots,
        "too_long": sum(c.finish_reason == "too_long" for c in done),
        "errors": sum(c.finish_reason == "error" for c in done),
        "seconds": round(time.perf_counter() - start, 2),
        "settings": asdict(settings),
        "model": generator.name,
    }
    return summary, records


def summarize(tasks: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Category means, the mean of the averaged categories, JSTS apart, and what is missing from v1.3's suite."""
    categories: dict[str, list[float]] = {}
    for t in tasks.values():
        if t["category"] in AVERAGED:
            categories.setdefault(t["category"], []).append(t["score"])
    means = {c: sum(v) / len(v) for c in AVERAGED if (v := categories.get(c))}
    sts = tasks.get("jsts", {}).get("scores", {})
    return {
        "categories": means,
        "mean": sum(means.values()) / len(means) if means else None,
        "mean_over": list(means),
        "sts": sts,
        "missing": [{"task": t, "category": c} for t, c in MISSING.items()],
        "examples": sum(t["n"] for t in tasks.values()),
        "too_long": sum(t["too_long"] for t in tasks.values()),
        "errors": sum(t["errors"] for t in tasks.values()),
        "seconds": round(sum(t["seconds"] for t in tasks.values()), 1),
    }


def evaluate_jaster(
    generator: Generator,
    load: Callable[[str], TaskData],
    task_names: Sequence[str],
    settings: JasterSettings,
    out: Path,
) -> dict[str, Any]:
    """Run every task (reusing a finished TASK.json with the same model and settings), write `jaster.json`."""
    out.mkdir(parents=True, exist_ok=True)
    tasks: dict[str, dict[str, Any]] = {}
    for name in task_names:
        summary_path = out / f"{name}.json"
        if summary_path.is_file():
            old = json.loads(summary_path.read_text(encoding="utf-8"))
            if old.get("settings") == asdict(settings) and old.get("model") == generator.name:
                tasks[name] = old
                continue
        summary, records = run_task(generator, load(name), settings)
        lines = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
        atomic_write_text(out / f"{name}.jsonl", lines)
        atomic_write_text(summary_path, json.dumps(summary, ensure_ascii=False, indent=1) + "\n")
        tasks[name] = summary
    report = {"model": generator.name, "settings": asdict(settings), "tasks": tasks, **summarize(tasks)}
    atomic_write_text(out / "jaster.json", json.dumps(report, ensure_ascii=False, indent=1) + "\n")
    return report
