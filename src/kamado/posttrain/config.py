"""`[sft]` and `[dpo]` sections of a run config: what each post-training stage reads, starts from and trains for.

A stage trains with the run's trainer (`kamado.train.trainer`), so its optimiser, schedule, stability monitor and
checkpoints are the pre-training ones; the few settings that differ after pre-training (steps, batch, learning
rate, warm-up, sequence length) live here and replace the run's own for that stage (`stage_run_config`).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from kamado.config_checks import (
    AT_LEAST_ONE,
    FRACTION,
    NON_NEGATIVE,
    POSITIVE,
    Range,
    check_choice,
    check_fields,
    check_items,
)

if TYPE_CHECKING:
    from kamado.config import ModelConfig, RunConfig


@dataclass
class StageTrainConfig:
    """The trainer settings a post-training stage sets for itself."""

    steps: int = 100
    batch_size: int = 8  # SFT: packed rows per micro-batch; DPO: preference pairs per micro-batch
    seq_len: int = 512
    lr: float = 1e-5
    warmup_steps: int = 10
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.0
    eval_every: int = 0
    checkpoint_every: int = 0  # 0 = at the end only
    seed: int = 0

    def validate(self, section: str) -> None:
        counts = {k: AT_LEAST_ONE for k in ("steps", "batch_size", "seq_len")}
        check_fields(self, section, **counts, lr=POSITIVE, warmup_steps=NON_NEGATIVE, min_lr_ratio=FRACTION)
        check_fields(self, section, weight_decay=NON_NEGATIVE, eval_every=NON_NEGATIVE, seed=NON_NEGATIVE)
        check_fields(self, section, checkpoint_every=NON_NEGATIVE)


@dataclass
class SFTConfig:
    init: str = ""  # checkpoint or run folder to start from; empty in a recipe = the pre-trained model
    data: list[str] = field(default_factory=list)  # OpenAI `messages` JSONL(.gz) files
    val_data: list[str] = field(default_factory=list)
    overlong: str = "drop"  # a conversation longer than seq_len + 1 tokens: "drop" it or "truncate" it
    train: StageTrainConfig = field(default_factory=lambda: StageTrainConfig(lr=1e-4))

    def validate(self) -> None:
        check_choice("sft.overlong", self.overlong, ("drop", "truncate"))
        self.train.validate("sft.train")


@dataclass
class JudgeConfig:
    kind: str = "verifiable"  # "verifiable" (prompts with known answers) | "endpoint" (an OpenAI-compatible judge)
    base_url: str = ""  # endpoint: e.g. http://127.0.0.1:8000/v1
    model: str = ""
    api_key_env: str = "OPENAI_API_KEY"  # the key is read from this environment variable, never from the file
    timeout_s: float = 60.0

    def validate(self) -> None:
        check_choice("dpo.judge.kind", self.kind, ("verifiable", "endpoint"))
        check_fields(self, "dpo.judge", timeout_s=POSITIVE)


@dataclass
class DPOConfig:
    init: str = ""  # the SFT model to start from; empty in a recipe = the SFT stage's
    pairs: list[str] = field(default_factory=list)  # off-policy pairs JSONL: {"prompt", "chosen", "rejected"}
    prompts: list[str] = field(default_factory=list)  # on-policy prompts JSONL: {"messages", "answer", ...}
    rounds: int = 1
    pairs_per_round: int = 64
    on_policy_fraction: float = 0.5  # share of each round's pairs sampled from the current policy
    samples_per_prompt: int = 4  # K answers per prompt; the best and the worst make a pair (ties skipped)
    max_new_tokens: int = 64
    temperature: float = 1.0
    top_p: float = 1.0
    reference: str = "sft"  # each round's reference: "sft" (the starting model) or "previous" (the last policy)
    beta: float = 0.1
    label_smoothing: float = 0.0  # cDPO's assumed label-noise rate
    loss_type: str = "sigmoid"  # "sigmoid" (DPO) | "ipo"
    judge: JudgeConfig = field(default_factory=JudgeConfig)
    train: StageTrainConfig = field(default_factory=lambda: StageTrainConfig(lr=5e-6, batch_size=4))

    def validate(self) -> None:
        check_fields(self, "dpo", rounds=AT_LEAST_ONE, pairs_per_round=AT_LEAST_ONE, samples_per_prompt=Range(2))
        check_fields(self, "dpo", on_policy_fraction=FRACTION, max_new_tokens=AT_LEAST_ONE, beta=POSITIVE)
        check_fields(self, "dpo", temperature=NON_NEGATIVE, top_p=Range(0, 1, lo_open=True))
        check_fields(self, "dpo", label_smoothing=Range(0, 0.5, hi_open=True))
        check_choice("dpo.reference", self.reference, ("sft", "previous"))
        check_choice("dpo.loss_type", self.loss_type, ("sigmoid", "ipo"))
        self.judge.validate()
        self.train.validate("dpo.train")


@dataclass
class MergeConfig:
    """The recipe's merge stage: the SFT model and the last DPO round's policy (`kamado merge` for any others)."""

    method: str = ""  # "" = no merge stage; else a `kamado merge --method` (linear, slerp, ...)
    t: float = 0.5  # slerp: 0 = the SFT model, 1 = the DPO policy
    weights: list[float] = field(default_factory=list)  # linear / task arithmetic: per model (SFT, DPO)
    density: float = 1.0  # ties / dare
    seed: int = 0

    def validate(self) -> None:
        check_fields(self, "merge", t=FRACTION, density=Range(0, 1, lo_open=True), seed=NON_NEGATIVE)
        check_items("merge.weights", self.weights, NON_NEGATIVE)  # (`kamado merge --weights` takes negatives)


@dataclass
class HeldoutConfig:
    """The recipe's post-training table: every stage's model on held-out test prompts (`kamado.posttrain.heldout`)."""

    test: list[str] = field(default_factory=list)  # test-split prompts JSONL (samples/posttrain/test.jsonl)
    per_task: int = 20  # at most this many prompts per task (the first ones, as written)
    max_new_tokens: int = 16

    def validate(self) -> None:
        check_fields(self, "heldout", per_task=AT_LEAST_ONE, max_new_tokens=AT_LEAST_ONE)


def with_paths_from(cfg: RunConfig, base: Path) -> RunConfig:
    """A copy whose post-training data paths are relative to `base` (the config file's folder), as `kamado run`
    reads a recipe's paths; absolute paths stay as they are."""
    cfg = copy.deepcopy(cfg)

    def res(paths: list[str]) -> list[str]:
        return [str(p if (p := Path(x)).is_absolute() else (base / p).resolve()) for x in paths]

    cfg.sft.data, cfg.sft.val_data = res(cfg.sft.data), res(cfg.sft.val_data)
    cfg.dpo.pairs, cfg.dpo.prompts, cfg.heldout.test = res(cfg.dpo.pairs), res(cfg.dpo.prompts), res(cfg.heldout.test)
    return cfg


def stage_run_config(cfg: RunConfig, stage: StageTrainConfig, out_dir: str, model_cfg: ModelConfig) -> RunConfig:
    """A copy of the run config `cfg` for one post-training stage: its model (from the checkpoint it starts
    from), its own out_dir and the stage's trainer settings (constant LR after a linear warm-up, then a cosine
    decay to min_lr_ratio; no Z-loss change; stability and checkpoint policy as the run's)."""
    run = copy.deepcopy(cfg)
    run.out_dir, run.model = out_dir, copy.deepcopy(model_cfg)
    run.train.steps, run.train.batch_size, run.train.seed = stage.steps, stage.batch_size, stage.seed
    run.train.eval_every, run.train.log_every = stage.eval_every, max(1, min(run.train.log_every, stage.steps))
    run.data.seq_len = min(stage.seq_len, model_cfg.max_seq_len)
    run.optim.lr, run.optim.weight_decay = stage.lr, stage.weight_decay
    run.schedule.kind, run.schedule.warmup_steps = "cosine", min(stage.warmup_steps, stage.steps)
    run.schedule.min_lr_ratio = stage.min_lr_ratio
    run.checkpoint.every = stage.checkpoint_every
    run.stability.min_history = min(run.stability.min_history, max(2, stage.steps // 4))
    return run
