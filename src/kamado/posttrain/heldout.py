"""Scores of a model on held-out jaster-style test prompts, per task, for the post-training table of the recipe.

Each prompt (`test.jsonl` of `kamado posttrain-data`: `messages`, `answer`, `task`, `metric`, `label_list`) is
answered greedily through the serving engine, up to the end of the assistant's turn or `max_new_tokens`, and scored
as the evaluation scores it (`kamado.eval.jaster.metrics`): exact match, char F1, and for JSTS Pearson's r over the
task's answers. Chance is what a uniform guess among the task's labels scores (exact-match tasks with labels);
tasks without a finite label set have no chance level to state ("—").
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from kamado.eval.jaster.metrics import normalize, normalize_answer, pearson, sample_score
from kamado.model.transformer import Transformer
from kamado.serve.engine import Engine, GenParams
from kamado.tokenizer.tokenizer import Tokenizer


def chance_level(records: Sequence[Mapping[str, Any]]) -> float | None:
    """Expected exact match of a uniform guess among each prompt's labels (None without labels)."""
    labels = [r.get("label_list") or [] for r in records]
    if not records or records[0].get("metric", "exact_match") != "exact_match" or not all(labels):
        return None
    return sum(1 / len(set(map(normalize, map(str, ls)))) for ls in labels) / len(records)


def answer_all(
    model: Transformer, tok: Tokenizer, records: Sequence[Mapping[str, Any]], max_new_tokens: int, dtype: Any = None
) -> list[str]:
    """Greedy answers to each record's `messages` (prompts too long for the context get an empty answer)."""
    engine = Engine(model, tok, max_batch=8, dtype=dtype)
    end = (tok.token_id("<|im_end|>"),)
    prompts = [tok.encode_chat(r["messages"]) for r in records]
    ok = [len(p) + max_new_tokens <= engine.max_len for p in prompts]
    params = GenParams(max_tokens=max_new_tokens, temperature=0.0, stop_token_ids=end)
    with torch.no_grad():
        done = iter(engine.generate([p for p, k in zip(prompts, ok, strict=True) if k], params))
    return [next(done).text if k else "" for k in ok]


def heldout_scores(
    model: Transformer,
    tok: Tokenizer,
    records: Sequence[Mapping[str, Any]],
    max_new_tokens: int = 32,
    dtype: Any = None,
) -> list[dict[str, Any]]:
    """One row per task: {task, metric, n, score, exact_match, chance}; then the mean over tasks."""
    answers = answer_all(model, tok, records, max_new_tokens, dtype)
    by_task: dict[str, list[tuple[Mapping[str, Any], str]]] = defaultdict(list)
    for r, a in zip(records, answers, strict=True):
        by_task[str(r.get("task", "?"))].append((r, a))
    rows: list[dict[str, Any]] = []
    for task, items in sorted(by_task.items()):
        metric = items[0][0].get("metric", "exact_match")
        golds = [str(r["answer"]) for r, _ in items]
        em = sum(normalize_answer(a) == normalize(g) for (_, a), g in zip(items, golds, strict=True)) / len(items)
        if metric in ("pearson", "spearman"):
            score = pearson([normalize_answer(a) for _, a in items], golds)
        else:
            score = sum(sample_score(metric, a, g) for (_, a), g in zip(items, golds, strict=True)) / len(items)
        rows.append(
            {
                "task": task,
                "metric": "pearson" if metric == "spearman" else metric,
                "n": len(items),
                "score": score,
                "exact_match": em,
                "chance": chance_level([r for r, _ in items]),
            }
        )
    if rows:
        rows.append(
            {
                "task": "mean",
                "metric": "",
                "n": sum(r["n"] for r in rows),
                "score": sum(r["score"] for r in rows) / len(rows),
                "exact_match": sum(r["exact_match"] for r in rows) / len(rows),
                "chance": None,
            }
        )
    return rows
