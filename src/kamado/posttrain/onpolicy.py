"""On-policy preference pairs: K answers per prompt sampled from the current policy with the serving engine, scored
by a judge, the best paired against the worst.

A prompt gives no pair when its answers all score alike (a tie: nothing to prefer) or fewer than two answers got a
verdict; both are counted. Sampling is seeded per (seed, prompt, sample), so the same policy gives the same pairs.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from rich.progress import Progress

from kamado.model.transformer import Transformer
from kamado.posttrain.config import DPOConfig
from kamado.posttrain.judge import Judge
from kamado.serve.engine import Engine, GenParams
from kamado.tokenizer.tokenizer import Tokenizer


def sample_pairs(
    model: Transformer,
    tok: Tokenizer,
    prompts: Sequence[Mapping[str, Any]],
    n_pairs: int,
    judge: Judge,
    cfg: DPOConfig,
    seed: int,
    progress: bool = True,
) -> tuple[list[dict[str, Any]], Counter[str]]:
    """Up to `n_pairs` pairs from prompts taken in a seeded order; and the count of prompts that gave none, by
    reason. Each prompt record has `messages` (ending in a user turn) and whatever the judge needs (`answer`...)."""
    K = cfg.samples_per_prompt
    engine = Engine(model, tok, max_batch=8, dtype=None)  # the live weights: the policy as it is now
    end = (tok.token_id("<|im_end|>"),)
    order = np.random.default_rng([seed, 17]).permutation(len(prompts)).tolist()
    pairs: list[dict[str, Any]] = []
    counts: Counter[str] = Counter()
    model.eval()
    with Progress(disable=not progress, transient=True) as bar, torch.no_grad():
        task = bar.add_task("on-policy pairs", total=n_pairs)
        for start in range(0, len(order), 8):
            if len(pairs) >= n_pairs:
                break
            chunk = [prompts[i] for i in order[start : start + 8]]
            ids = [tok.encode_chat(p["messages"]) for p in chunk]
            fits = [len(i) + cfg.max_new_tokens <= engine.max_len for i in ids]
            counts["prompt too long for the context"] += fits.count(False)
            jobs = [(j, k) for j in range(len(chunk)) if fits[j] for k in range(K)]
            params = [
                GenParams(
                    cfg.max_new_tokens,
                    cfg.temperature,
                    0,
                    cfg.top_p,
                    int(seed * 1_000_003 + (start + j) * K + k),
                    (),
                    end,
                )
                for j, k in jobs
            ]
            done = engine.generate([ids[j] for j, _ in jobs], params)
            answers: dict[int, list[str]] = {}
            for (j, _), r in zip(jobs, done, strict=True):
                answers.setdefault(j, []).append(r.text)
            for j, texts in answers.items():
                scored = [(s, t) for t in texts if (s := judge.score(chunk[j], t)) is not None]
                counts["answers without a verdict"] += len(texts) - len(scored)
                if len(scored) < 2:
                    counts["fewer than two judged answers"] += 1
                    continue
                best, worst = max(scored, key=lambda x: x[0]), min(scored, key=lambda x: x[0])
                if best[0] == worst[0]:
                    counts["tie: every answer scored alike"] += 1
                    continue
                pairs.append(
                    {
                        "prompt": list(chunk[j]["messages"]),
                        "chosen": best[1],
                        "rejected": worst[1],
                        "source": "on_policy",
                        "task": chunk[j].get("task", ""),
                        "scores": [best[0], worst[0]],
                    }
                )
                bar.update(task, completed=len(pairs))
                if len(pairs) >= n_pairs:
                    break
    return pairs, +counts  # (unary + drops the reasons that never happened)
