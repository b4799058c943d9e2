"""Generate pfgen-bench answers with a `Generator` and write them as upstream does, resumable per trial.

Each trial asks every question of the data folder (all 50 with the full set) with its own examples and seed
(`kamado.eval.pfgen.prompt`), through the serving engine (all the prompts of several trials submitted together,
so the engine keeps its batch full) or an endpoint. The output folder gets upstream's files:

- `config.json`: the generation settings (upstream's keys); a rerun with other settings is refused, not mixed.
- `trial_001.jsonl` ...: one line per question, `{"question", "answer", "timestamp"}`, written atomically when
  the trial is done, so a killed run resumes at the first missing trial.
- `trials.jsonl.xz`: every trial's lines sorted bytewise (upstream's `cat trial_???.jsonl | LC_ALL=C sort`),
  xz -9: the file upstream's `pfgen_eval.py` and ours score.

An empty answer is asked again, up to 10 times, as upstream does — but with another seed each time (upstream
reuses the trial's, which gives the same empty answer again from a seeded engine); after that it stays empty
(upstream would stop the run) and is counted. A local model whose context cannot hold the prompts is a
ConfigError that says how many examples fit.
"""

from __future__ import annotations

import datetime
import json
import lzma
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kamado.atomic import atomic_write_bytes, atomic_write_text
from kamado.errors import ConfigError
from kamado.eval.generate import Generator
from kamado.eval.pfgen.data import PfgenData
from kamado.eval.pfgen.prompt import (
    MAX_TOKENS,
    MODES,
    NUM_EXAMPLES,
    TEMPERATURE,
    TOP_P,
    Task,
    build_task,
    clean_answer,
    config_hash,
    config_json,
    generation_config,
)

RETRIES = 10  # upstream's rounds for questions without an answer
PROMPTS_PER_CALL = 256  # trials are generated together until about this many prompts
ANSWER_ROOM = 128  # tokens an answer needs (~100 characters); what `examples_that_fit` leaves


@dataclass(frozen=True)
class PfgenSettings:
    mode: str = "completion"
    trials: int = 10  # upstream's run-hf.py default; its leaderboard uses 100
    num_examples: int = NUM_EXAMPLES
    max_tokens: int = MAX_TOKENS
    temperature: float = TEMPERATURE
    top_p: float = TOP_P
    seed: str = ""

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        if self.trials < 1:
            raise ValueError(f"trials must be >= 1, got {self.trials}")
        if not 0 <= self.num_examples <= 49:
            raise ValueError(f"examples must be in 0..49, got {self.num_examples}")
        if self.max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1, got {self.max_tokens}")
        if not 0 <= self.temperature <= 10:
            raise ValueError(f"temperature must be in [0, 10], got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")


def asked_questions(data: PfgenData) -> list[str]:
    """The questions the data folder can score, in the order of upstream's question list."""
    scorable = set(data.by_text())
    return [e["question"] for e in data.examples() if e["question"] in scorable]


def trial_tasks(data: PfgenData, settings: PfgenSettings, trial: int) -> list[Task]:
    examples = data.examples()
    return [
        build_task(examples, q, settings.mode, trial, settings.num_examples, settings.seed)
        for q in asked_questions(data)
    ]


def examples_that_fit(gen: Any, data: PfgenData, settings: PfgenSettings) -> int | None:
    """For a local model (`EngineGenerator`): None when every prompt fits its context, else the most examples
    that leave `ANSWER_ROOM` tokens for the answer in trial 1 (-1: not even without examples)."""
    if not (hasattr(gen, "encode") and hasattr(gen, "engine")):
        return None
    limit = gen.engine.max_len

    def longest(s: PfgenSettings, trials: range) -> int:
        prompts = [t.prompt(1, 1.0, 1.0) for i in trials for t in trial_tasks(data, s, i)]
        return max(len(gen.encode(p)) for p in prompts)

    if longest(settings, range(1, settings.trials + 1)) < limit:
        return None
    for k in range(settings.num_examples, -1, -1):
        s = PfgenSettings(settings.mode, 1, k, settings.max_tokens, settings.temperature, settings.top_p)
        if longest(s, range(1, 2)) + ANSWER_ROOM <= limit:
            return k
    return -1


def trial_lines(answers: list[tuple[str, str]]) -> str:
    now = datetime.datetime.now().isoformat
    return "".join(json.dumps({"question": q, "answer": a, "timestamp": now()}, ensure_ascii=False) + "\n"
                   for q, a in answers)  # fmt: skip


def generate_trials(
    gen: Generator, data: PfgenData, settings: PfgenSettings, trials: list[int]
) -> tuple[dict[int, list[tuple[str, str]]], dict[str, int]]:
    """{trial: [(question, answer), ...]} for `trials`, and counts (empty answers, retries, tokens, too long)."""
    tasks = {t: trial_tasks(data, settings, t) for t in trials}
    answers: dict[int, dict[str, str]] = {t: {} for t in trials}
    counts = {"empty": 0, "retried": 0, "completion_tokens": 0, "too_long": 0, "errors": 0}
    for attempt in range(RETRIES):
        todo = [(t, task) for t in trials for task in tasks[t] if not answers[t].get(task.question)]
        if not todo:
            break
        counts["retried"] += len(todo) if attempt else 0
        prompts = [
            task.prompt(settings.max_tokens, settings.temperature, settings.top_p,
                        None if attempt == 0 else (task.seed + attempt) % (2**31))
            for _, task in todo
        ]  # fmt: skip
        desc = f"pfgen trials {trials[0]}-{trials[-1]}" + (f" (retry {attempt})" if attempt else "")
        for (t, task), c in zip(todo, gen.generate(prompts, desc=desc), strict=True):
            answers[t][task.question] = clean_answer(c.text, settings.mode)
            counts["completion_tokens"] += c.completion_tokens
            counts["too_long"] += c.finish_reason == "too_long"
            counts["errors"] += c.finish_reason == "error"
    out = {}
    for t in trials:
        out[t] = [(task.question, answers[t].get(task.question, "")) for task in tasks[t]]
        counts["empty"] += sum(not a for _, a in out[t])
    return out, counts


def run_pfgen(gen: Generator, data: PfgenData, settings: PfgenSettings, out: Path, engine: str) -> dict[str, Any]:
    """Generate the missing trials into `out` and write `trials.jsonl.xz`; returns the run's summary."""
    start = time.perf_counter()
    extra: dict[str, Any] = {}
    if len(data.question_ids) < len(data.examples()):
        extra["question_ids"] = data.question_ids  # a subset (the repo's sample): recorded, it changes the hash
    if settings.seed:
        extra["seed"] = settings.seed
    config = generation_config(
        engine, gen.name, settings.mode, settings.num_examples, settings.temperature, settings.top_p,
        settings.max_tokens, **extra,
    )  # fmt: skip
    out.mkdir(parents=True, exist_ok=True)
    config_path = out / "config.json"
    if config_path.is_file() and json.loads(config_path.read_text(encoding="utf-8")) != config:
        raise ConfigError(f"{out} holds pfgen trials made with other settings ({config_path}): choose another --out")
    fits = examples_that_fit(gen, data, settings)
    if fits is not None:
        hint = f"--examples {fits} fits" if fits >= 0 else "not even a prompt without examples fits"
        raise ConfigError(
            f"pfgen: prompts with {settings.num_examples} examples do not fit {gen.name}'s context "
            f"({gen.engine.max_len} tokens; ANSWER_ROOM={ANSWER_ROOM} left for the answer): {hint}"  # type: ignore[attr-defined]
        )
    atomic_write_text(config_path, config_json(config) + "\n")
    missing = [t for t in range(1, settings.trials + 1) if not (out / f"trial_{t:03d}.jsonl").is_file()]
    per_call = max(1, PROMPTS_PER_CALL // max(1, len(asked_questions(data))))
    totals = {"empty": 0, "retried": 0, "completion_tokens": 0, "too_long": 0, "errors": 0}
    for i in range(0, len(missing), per_call):
        group = missing[i : i + per_call]
        answers, counts = generate_trials(gen, data, settings, group)
        for t in group:
            atomic_write_text(out / f"trial_{t:03d}.jsonl", trial_lines(answers[t]))
        totals = {k: totals[k] + counts[k] for k in totals}
    lines = []
    for t in range(1, settings.trials + 1):
        lines += (out / f"trial_{t:03d}.jsonl").read_text(encoding="utf-8").splitlines()
    lines.sort(key=lambda line: line.encode("utf-8"))  # LC_ALL=C sort
    atomic_write_bytes(out / "trials.jsonl.xz", lzma.compress(("\n".join(lines) + "\n").encode(), preset=9))
    return {
        "model": gen.name,
        "config": config,
        "config_hash": config_hash(config),
        "trials": settings.trials,
        "generated_trials": len(missing),
        "questions": len(asked_questions(data)),
        **totals,
        "seconds": round(time.perf_counter() - start, 2),
    }
