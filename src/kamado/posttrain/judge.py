"""Judges that score a model's answers for on-policy preference pairs.

- `VerifiableJudge` (offline): prompts with a known answer (the jaster-style training prompts), scored as the
  evaluation scores one answer (`kamado.eval.jaster.metrics.sample_score`: normalised exact match, char F1, or for
  JSTS 1 − |error| / 5). Below a right exact-match answer (1), an answer that is one of the task's labels — the right
  format, the wrong label — scores 0.5 and anything else 0 (malformed). So a right label in the right format beats
  a wrong one, which beats anything else.
- `EndpointJudge`: any OpenAI-compatible chat endpoint asked to grade the answer from 1 to 10 in MT-Bench's
  single-answer style ("Rating: [[N]]"); the key comes from an environment variable, never from a file. A verdict
  that cannot be parsed scores None: the answer is left out of pairing (and counted), not given a made-up score.
  An endpoint that cannot be reached or refuses the request stops the stage with a ConfigError naming it.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Any, Protocol

from kamado.errors import ConfigError
from kamado.eval.generate import NotJSONReply, post_json
from kamado.eval.jaster.metrics import normalize, normalize_answer, sample_score
from kamado.posttrain.config import JudgeConfig


class Judge(Protocol):
    def score(self, record: Mapping[str, Any], answer: str) -> float | None: ...


class VerifiableJudge:
    def score(self, record: Mapping[str, Any], answer: str) -> float | None:
        metric = record.get("metric", "exact_match")
        value = sample_score(metric, answer, str(record["answer"]))
        if metric != "exact_match" or value == 1.0:
            return value
        labels = {normalize(str(x)) for x in record.get("label_list") or ()}
        return 0.5 if normalize_answer(answer) in labels else 0.0


GRADING_PROMPT = (
    "[Instruction]\nPlease act as an impartial judge and evaluate the quality of the response provided by an AI "
    "assistant to the user question displayed below. The assistant should answer in Japanese. Consider "
    "helpfulness, relevance, accuracy, depth and correctness. Be as objective as possible. After a short "
    'explanation, rate the response on a scale of 1 to 10 by strictly following this format: "Rating: [[5]]".'
    "\n\n[Question]\n{question}\n\n[The Start of Assistant's Answer]\n{answer}\n[The End of Assistant's Answer]"
)
RATING = re.compile(r"\[\[(\d+(?:\.\d+)?)\]\]")


def parse_rating(text: str) -> float | None:
    """The last "[[N]]" in a judge's reply, if it is a rating in [1, 10]."""
    found = RATING.findall(text)
    if not found:
        return None
    value = float(found[-1])
    return value if 1 <= value <= 10 else None


class EndpointJudge:
    def __init__(self, cfg: JudgeConfig) -> None:
        if not cfg.base_url or not cfg.model:
            raise ConfigError("dpo.judge.kind = 'endpoint' needs dpo.judge.base_url and dpo.judge.model")
        self.cfg = cfg
        self.key = os.environ.get(cfg.api_key_env, "")

    def score(self, record: Mapping[str, Any], answer: str) -> float | None:
        question = "\n\n".join(m["content"] for m in record["messages"] if m["role"] == "user")
        body = {
            "model": self.cfg.model,
            "messages": [{"role": "user", "content": GRADING_PROMPT.format(question=question, answer=answer)}],
            "temperature": 0,
            "max_tokens": 512,
        }
        url = self.cfg.base_url.rstrip("/") + "/chat/completions"
        try:  # no retries: a failing judge stops the stage at once, named
            reply_json = post_json(url, body, self.key, self.cfg.timeout_s, retries=0)
        except NotJSONReply:
            return None  # not an OpenAI chat completion: no verdict
        except RuntimeError as e:
            raise ConfigError(f"judge endpoint {e}") from None
        try:
            reply = reply_json["choices"][0]["message"]["content"]
        except (KeyError, IndexError, TypeError):
            return None  # not an OpenAI chat completion: no verdict
        return parse_rating(str(reply))


def make_judge(cfg: JudgeConfig) -> Judge:
    return EndpointJudge(cfg) if cfg.kind == "endpoint" else VerifiableJudge()
