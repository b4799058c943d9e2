"""`[jaster]` and `[judge]` sections of a run config: the recipe's evaluation stages (`kamado.recipe.evaluation`)."""

from __future__ import annotations

from dataclasses import dataclass, field

from kamado.config_checks import AT_LEAST_ONE, NON_NEGATIVE, check_choice, check_fields
from kamado.errors import ConfigError


@dataclass
class JasterEvalConfig:
    """Every model of the run (pre-trained, and SFT / DPO rounds / merged when post-training ran) on jaster."""

    data: str = ""  # v1.3-layout folder or raw benchmark files, relative to the recipe file; "" turns the stage off
    limit: int = 0  # the first N test samples per task; 0: all
    shots: int = 0
    prompt: str = "auto"  # auto: v1.3's plain Alpaca text for the pre-trained model, chat turns after SFT
    max_batch: int = 32  # sequences decoded together

    def validate(self) -> None:
        check_fields(self, "jaster", limit=NON_NEGATIVE, shots=NON_NEGATIVE, max_batch=AT_LEAST_ONE)
        check_choice("jaster.prompt", self.prompt, ("auto", "alpaca", "chat"))


JUDGE_BENCHES = ("ja_mt_bench", "mt_bench", "rakuda", "elyza100")


@dataclass
class JudgeEvalConfig:
    """The recipe's judge benchmarks: each post-trained model's answers, graded by a judge endpoint. Without
    `judge_url` the judge is the run's last model behind `kamado serve` in the background (offline: its grades mean
    little, but every step of the path runs)."""

    benches: list[str] = field(default_factory=list)  # [] turns the stage off
    data: str = "../samples/eval"  # the benchmarks' files, relative to the recipe file
    limit: int = 0  # the first N questions of each benchmark; 0: all
    max_tokens: int = 256  # each answer's budget
    judge_url: str = ""  # an OpenAI-compatible API base; "" serves the run's last model
    judge_model: str = ""
    judge_key_env: str = "OPENAI_API_KEY"
    judge_max_tokens: int = 2048
    bootstrap: int = 1000  # Bradley–Terry intervals (Rakuda)

    def validate(self) -> None:
        check_fields(self, "judge", limit=NON_NEGATIVE, max_tokens=AT_LEAST_ONE, judge_max_tokens=AT_LEAST_ONE)
        check_fields(self, "judge", bootstrap=NON_NEGATIVE)
        for b in self.benches:
            check_choice("judge.benches", b, JUDGE_BENCHES)
        if self.judge_url and not self.judge_model:
            raise ConfigError("judge.judge_url needs judge.judge_model (the endpoint's model name)")
