"""`[jaster]` section of a run config: the recipe's jaster stage (`kamado.recipe.evaluation`)."""

from __future__ import annotations

from dataclasses import dataclass

from kamado.config_checks import AT_LEAST_ONE, NON_NEGATIVE, check_choice, check_fields


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
