"""pfgen-bench's prompts: 20 question–answer examples, then the question; no instruction for a base model.

Upstream's `pfgen.py` (pfnet-research/pfgen-bench @ 03db7c4), restated:

- **Examples.** The other 49 of the 50 example pairs, ordered by SHA-1 of `"{seed}::{trial}::{question}"` (hex,
  ascending), the first `num_examples` (20) of them, each as `Q: question\\nA: answer`, separated by blank lines,
  under a `## 回答例` heading. So every trial draws its own examples, the same on every run, for every model.
- **Modes.** `completion` (a base model): the examples, a blank line, `Q: question\\nA:`, and the model continues.
  `qa`: an instruction line (answer in one line in the examples' style and length), the examples and
  `## 質問\\nQ: question`, as one user turn of the chat template. `chat`: the instruction and examples as the
  system turn, `Q: question` as the user turn.
- **Sampling.** Temperature 1.0, top-p 0.98, at most 300 tokens, stopping at `Q:` (and at a blank line in
  completion mode). Every question of a trial shares the seed `int(SHA-1("{seed}::{trial}")) mod 2^31`.
- **Answer.** Stripped; in qa / chat mode what follows the first `A:`, when the model wrote one.

`generation_config` is upstream's `config.json` (its keys sorted); its SHA-1 prefix names a result folder
upstream (`config_hash`).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from kamado.eval.generate import Prompt

MODES = ("completion", "qa", "chat")
INSTRUCTION = {
    "chat": "例と同様の文体及び文字数で、ユーザの質問に1行で答えてください。\n\n",
    "qa": "例と同様の文体及び文字数で、質問に1行で答えてください。\n\n",
    "completion": "",
}
NUM_EXAMPLES = 20
MAX_TOKENS = 300
TEMPERATURE = 1.0
TOP_P = 0.98


@dataclass(frozen=True)
class Task:
    """One question asked in one trial: `text` (completion, qa) or `system` + `user` (chat)."""

    question: str
    mode: str
    seed: int
    text: str | None = None
    system: str | None = None
    user: str | None = None

    def prompt(self, max_tokens: int, temperature: float, top_p: float, seed: int | None = None) -> Prompt:
        """The generation request; `seed` overrides the trial's (a retry of an empty answer)."""
        kw: dict[str, Any] = {
            "max_tokens": max_tokens,
            "temperature": temperature,
            "top_p": top_p,
            "seed": self.seed if seed is None else seed,
            "stop": stop_sequences(self.mode),
        }
        if self.mode == "chat":
            turns = [{"role": "system", "content": self.system or ""}, {"role": "user", "content": self.user or ""}]
            return Prompt.chat(turns, **kw)
        if self.mode == "qa":
            return Prompt.chat([{"role": "user", "content": self.text or ""}], **kw)
        return Prompt(text=self.text or "", **kw)


def stop_sequences(mode: str) -> tuple[str, ...]:
    return ("Q:", "\n\n") if mode == "completion" else ("Q:",)


def trial_seed(trial: int, seed: str = "") -> int:
    return int(hashlib.sha1(f"{seed}::{trial}".encode()).hexdigest(), 16) % (2**31)


def pick_examples(
    examples: Sequence[dict[str, str]], question: str, trial: int, num_examples: int = NUM_EXAMPLES, seed: str = ""
) -> list[dict[str, str]]:
    """The examples a trial shows with `question`: the others, in SHA-1 order, the first `num_examples`."""
    others = [e for e in examples if e["question"] != question]
    others.sort(key=lambda e: hashlib.sha1(f"{seed}::{trial}::{e['question']}".encode()).hexdigest())
    return others[:num_examples]


def build_task(
    examples: Sequence[dict[str, str]],
    question: str,
    mode: str,
    trial: int,
    num_examples: int = NUM_EXAMPLES,
    seed: str = "",
) -> Task:
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    shown = pick_examples(examples, question, trial, num_examples, seed)
    block = "".join(f"Q: {e['question']}\nA: {e['answer']}\n\n" for e in shown).strip()
    system = (INSTRUCTION[mode] + "## 回答例\n" + block).strip()
    user = f"Q: {question}\n" + ("A:" if mode == "completion" else "")
    s = trial_seed(trial, seed)
    if mode == "chat":
        return Task(question, mode, s, system=system, user=user.strip())
    if mode == "qa":
        return Task(question, mode, s, text=system + "\n\n## 質問\n" + user.strip())
    return Task(question, mode, s, text=system + "\n\n" + user.strip())


def clean_answer(text: str, mode: str) -> str:
    if mode in ("chat", "qa") and "A:" in text:
        text = text.split("A:", 1)[1]
    return text.strip()


def generation_config(
    engine: str,
    model: str,
    mode: str,
    num_examples: int = NUM_EXAMPLES,
    temperature: float = TEMPERATURE,
    top_p: float = TOP_P,
    max_tokens: int = MAX_TOKENS,
    **extra: Any,
) -> dict[str, Any]:
    """Upstream's config.json: the generation settings, keys sorted."""
    config = {
        "engine": engine,
        "model": model,
        "mode": mode,
        "num_examples": num_examples,
        "stop": list(stop_sequences(mode)),
        "max_tokens": max_tokens,
        "temperature": temperature,
        "top_p": top_p,
        **extra,
    }
    return dict(sorted(config.items()))


def config_json(config: dict[str, Any]) -> str:
    return json.dumps(config, ensure_ascii=False)


def config_hash(config: dict[str, Any]) -> str:
    return hashlib.sha1(config_json(config).encode()).hexdigest()[:7]
