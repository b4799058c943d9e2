"""Typed configuration: dataclasses loaded from TOML presets, with dotted command-line overrides.

A run is described by one `RunConfig` (one TOML file under `recipes/`). Every section is a dataclass, so a typo
in a preset or an override (`--optim.lr=3e-4`) is an error that names the key, never a silently ignored value;
each section's `validate()` states its ranges and choices, and `load_config` checks the whole tree, so a bad value
fails at once, naming the key and what is allowed (helpers in `kamado.config_checks`, TOML in `kamado.config_io`).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path

from kamado.config_checks import (
    AT_LEAST_ONE,
    FRACTION,
    NON_NEGATIVE,
    POSITIVE,
    Range,
    check_choice,
    check_fields,
    check_items,
    check_numbers,
    check_value,
)
from kamado.config_io import apply_overrides, from_dict, load_toml
from kamado.config_io import to_dict as to_dict  # re-exported: the loading functions are imported from here too
from kamado.corpus.config import CorpusConfig
from kamado.errors import ConfigError
from kamado.eval.config import JasterEvalConfig, JudgeEvalConfig
from kamado.eval.pfgen.stage import PfgenEvalConfig
from kamado.parallel.config import ParallelConfig
from kamado.posttrain.config import DPOConfig, HeldoutConfig, MergeConfig, SFTConfig


@dataclass
class ModelConfig:
    """Decoder-only transformer shape (see `kamado.model.transformer`)."""

    vocab_size: int = 32000
    d_model: int = 512
    n_layers: int = 8
    n_heads: int = 8
    n_kv_heads: int = 4  # grouped-query attention: n_heads must be a multiple of n_kv_heads
    ffn_hidden: int = 1408  # SwiGLU inner width (≈ 8/3 · d_model, rounded)
    max_seq_len: int = 1024
    rope_theta: float = 10000.0
    norm_eps: float = 1e-6
    qk_norm: bool = True  # PLaMo-100B / OLMo-2 / Qwen3: RMSNorm on each head's q and k before RoPE
    init_std: float = 0.02

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    def validate(self) -> None:
        # The upper bounds are far above any real shape (100b: d_model 10240, 80 layers, 100k vocabulary); they
        # stop a typo such as 1e308 before torch sees it. Ids are stored as uint32, hence the vocabulary's 2^32.
        width, count = Range(1, 2**24), Range(1, 2**16)
        check_fields(self, "model", vocab_size=Range(1, 2**32), d_model=width, n_layers=count, n_heads=count)
        check_fields(self, "model", n_kv_heads=count, ffn_hidden=width, max_seq_len=width, rope_theta=POSITIVE)
        check_fields(self, "model", norm_eps=Range(0, 1, lo_open=True), init_std=POSITIVE)
        if self.d_model % self.n_heads:
            raise ConfigError(f"model.d_model={self.d_model} is not divisible by model.n_heads={self.n_heads}")
        if self.n_heads % self.n_kv_heads:
            raise ConfigError(f"model.n_heads={self.n_heads} is not a multiple of model.n_kv_heads={self.n_kv_heads}")
        if self.head_dim % 2:
            raise ConfigError(f"head_dim={self.head_dim} must be even for RoPE")


@dataclass
class TokenizerConfig:
    """Byte-level BPE learned from the corpus (see `kamado.tokenizer.train`)."""

    vocab_size: int = 32000
    min_frequency: int = 2
    max_train_chars: int = 200_000_000  # cap on characters fed to the trainer
    path: str = ""  # tokenizer folder; empty = `<run dir>/tokenizer`

    @staticmethod
    def ranges() -> dict[str, Range]:
        """Allowed values, also of `kamado tokenizer train`'s flags: the smallest vocabulary holds the 256 bytes and
        the special tokens; 0 frequency or characters means no minimum, no cap."""
        from kamado.tokenizer.train import SPECIAL_TOKENS  # that module imports this one

        vocab = Range(256 + len(SPECIAL_TOKENS), 2**32)
        return {"vocab_size": vocab, "min_frequency": NON_NEGATIVE, "max_train_chars": NON_NEGATIVE}

    def validate(self) -> None:
        check_fields(self, "tokenizer", **self.ranges())


@dataclass
class SourceConfig:
    """One pre-tokenized source: a folder written by `kamado tokenize` (holds `manifest.json`)."""

    name: str = ""
    path: str = ""


@dataclass
class PhaseConfig:
    """A data mixture in force from `start_tokens` training tokens on (PLaMo-100B: 1.5T, then 0.5T)."""

    start_tokens: int = 0
    weights: dict[str, float] = field(default_factory=dict)

    def validate(self, key: str) -> None:
        check_value(f"{key}.start_tokens", self.start_tokens, NON_NEGATIVE)
        for name, w in self.weights.items():
            check_value(f"{key}.weights.{name}", w, NON_NEGATIVE)
        total = sum(self.weights.values())
        if self.weights and not 0 < total < math.inf:  # empty = equal weights
            raise ConfigError(f"{key}.weights: must have a positive, finite sum, got {self.weights}")


@dataclass
class DataConfig:
    seq_len: int = 1024
    seed: int = 1234
    sources: list[SourceConfig] = field(default_factory=list)
    phases: list[PhaseConfig] = field(default_factory=list)  # empty = one phase, equal weights
    val_sources: list[SourceConfig] = field(default_factory=list)

    def validate(self) -> None:
        check_fields(self, "data", seq_len=AT_LEAST_ONE, seed=NON_NEGATIVE)
        for i, phase in enumerate(self.phases):
            key = f"data.phases[{i}]"
            phase.validate(key)
            if i == 0 and phase.start_tokens != 0:
                raise ConfigError(f"{key}.start_tokens = {phase.start_tokens}: the first phase must start at 0")
            if i > 0 and phase.start_tokens <= (prev := self.phases[i - 1].start_tokens):
                raise ConfigError(
                    f"{key}.start_tokens = {phase.start_tokens}: must be above the previous phase's {prev}"
                )


@dataclass
class OptimConfig:
    lr: float = 3e-4
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = 1e-8
    weight_decay: float = 0.1
    grad_clip: float = 1.0  # max global grad norm; 0 disables

    def validate(self) -> None:
        check_fields(self, "optim", lr=POSITIVE, eps=POSITIVE, weight_decay=NON_NEGATIVE, grad_clip=NON_NEGATIVE)
        check_items("optim.betas", self.betas, Range(0, 1, hi_open=True))


@dataclass
class ScheduleConfig:
    kind: str = "cosine"  # "cosine" | "wsd" (warmup-stable-decay) | "constant"
    warmup_steps: int = 100
    decay_fraction: float = 0.2  # wsd: last fraction of steps decays linearly to min_lr
    min_lr_ratio: float = 0.1

    def validate(self) -> None:
        check_choice("schedule.kind", self.kind, ("cosine", "wsd", "constant"))
        check_fields(self, "schedule", warmup_steps=NON_NEGATIVE, decay_fraction=FRACTION, min_lr_ratio=FRACTION)


@dataclass
class TrainConfig:
    steps: int = 1000
    batch_size: int = 8  # sequences per micro-batch
    grad_accum: int = 1
    dtype: str = "bf16"  # autocast dtype: "bf16" | "fp32"
    device: str = "cpu"  # "cpu", "cuda" or "cuda:N": where the model, its optimizer state and the batches live
    seed: int = 0
    z_loss: float = 1e-4  # PaLM's coefficient on mean(logsumexp(logits)^2); 0 disables
    compile: bool = False
    eval_every: int = 100
    eval_batches: int = 8
    log_every: int = 10
    peak_flops: float = 0.0  # FLOP/s used for MFU; 0 = measure a bf16/fp32 matmul at start
    threads: int = 0  # torch intra-op threads; 0 = leave torch's default

    def validate(self) -> None:
        check_choice("train.dtype", self.dtype, ("bf16", "fp32"))
        if not re.fullmatch(r"(cpu|cuda)(:\d+)?", self.device):  # whether the GPU exists is the trainer's check
            raise ConfigError(f"train.device = {self.device!r}: must be 'cpu', 'cuda' or 'cuda:N'")
        counts = {k: AT_LEAST_ONE for k in ("steps", "batch_size", "grad_accum", "eval_batches", "log_every")}
        check_fields(self, "train", **counts, seed=NON_NEGATIVE, eval_every=NON_NEGATIVE, threads=Range(0, 2**16))
        check_fields(self, "train", z_loss=NON_NEGATIVE, peak_flops=NON_NEGATIVE)


@dataclass
class StabilityConfig:
    enabled: bool = True
    window: int = 50  # losses kept for the running mean/std
    min_history: int = 20  # no spike detection before this many accepted losses
    z_threshold: float = 6.0  # loss > mean + z·std counts as a spike
    max_spikes: int = 3  # this many spikes in a row -> roll back to the last checkpoint

    def validate(self) -> None:
        check_fields(self, "stability", window=AT_LEAST_ONE, min_history=AT_LEAST_ONE, max_spikes=AT_LEAST_ONE)
        check_fields(self, "stability", z_threshold=POSITIVE)
        if self.min_history > self.window:  # the window never holds that many losses: no spike would be seen
            raise ConfigError(
                f"stability.min_history = {self.min_history}: must be <= stability.window ({self.window})"
            )


@dataclass
class CheckpointConfig:
    every: int = 200  # steps; 0 = only at the end
    keep_last: int = 3
    resume: bool = True  # continue from the newest checkpoint in the run folder
    # torchrun runs (DCP): copy the state to host memory, then write it in a background thread while training
    # goes on; the checkpoint is sealed once every rank's shards are on disk. One-process runs save synchronously.
    async_save: bool = False

    def validate(self) -> None:
        check_fields(self, "checkpoint", every=NON_NEGATIVE, keep_last=NON_NEGATIVE)  # 0: at the end only; keep all


# What `kamado.model.generate.SamplingParams` and `kamado generate`'s flags accept too: temperature 0 is greedy,
# top_k 0 and top_p 1 switch those filters off (top_p 0 would keep nothing).
SAMPLING_RANGES = {
    "max_new_tokens": AT_LEAST_ONE,
    "temperature": NON_NEGATIVE,
    "top_k": NON_NEGATIVE,
    "top_p": Range(0, 1, lo_open=True),
    "seed": Range(0, optional=True),
}


@dataclass
class GenerateConfig:
    prompts: list[str] = field(default_factory=list)
    max_new_tokens: int = 64
    temperature: float = 0.8
    top_k: int = 50
    top_p: float = 0.95
    seed: int = 0

    def validate(self) -> None:
        check_fields(self, "generate", **SAMPLING_RANGES)
        for i, prompt in enumerate(self.prompts):
            if not prompt:
                raise ConfigError(f"generate.prompts[{i}] is empty: a prompt needs at least one character")


@dataclass
class SampleCorpusConfig:
    """The embedded sample corpus the tiny recipe trains on (see `samples/SOURCES.md`)."""

    sources: dict[str, list[str]] = field(default_factory=dict)  # source name -> JSONL(.gz) files
    heldout_file: str = ""  # JSONL(.gz) of held-out Japanese text for the bits/char comparison with xz
    heldout_en_file: str = ""
    # WARC files run through the web corpus pipeline (`kamado corpus run`) before anything else; its shards join
    # `sources` under the name `warc_source`
    warc_dir: str = ""
    warc_source: str = "ja_web"
    web: CorpusConfig = field(default_factory=CorpusConfig)

    def validate(self) -> None:
        self.web.validate(prefix="corpus.web")


@dataclass
class RunConfig:
    name: str = "run"
    out_dir: str = "runs/run"
    model: ModelConfig = field(default_factory=ModelConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    stability: StabilityConfig = field(default_factory=StabilityConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)  # layout over processes (`kamado.parallel`)
    generate: GenerateConfig = field(default_factory=GenerateConfig)
    corpus: SampleCorpusConfig = field(default_factory=SampleCorpusConfig)
    sft: SFTConfig = field(default_factory=SFTConfig)  # post-training stages (`kamado.posttrain`)
    dpo: DPOConfig = field(default_factory=DPOConfig)
    merge: MergeConfig = field(default_factory=MergeConfig)
    heldout: HeldoutConfig = field(default_factory=HeldoutConfig)
    jaster: JasterEvalConfig = field(default_factory=JasterEvalConfig)  # the recipe's evaluation stages (kamado.eval)
    judge: JudgeEvalConfig = field(default_factory=JudgeEvalConfig)
    pfgen: PfgenEvalConfig = field(default_factory=PfgenEvalConfig)

    def validate(self) -> None:
        """Every section, what spans sections, then every number in the tree finite (`load_config` calls it)."""
        sections = (self.model, self.tokenizer, self.data, self.optim, self.schedule, self.train, self.stability)
        for section in (
            *sections,
            self.checkpoint,
            self.parallel,
            self.generate,
            self.corpus,
            self.sft,
            self.dpo,
            self.merge,
            self.heldout,
            self.jaster,
            self.judge,
            self.pfgen,
        ):
            section.validate()
        if self.data.seq_len > self.model.max_seq_len:
            raise ConfigError(
                f"data.seq_len = {self.data.seq_len}: must be <= model.max_seq_len ({self.model.max_seq_len})"
            )
        check_numbers(self)


def load_config(path: str | Path, overrides: list[str] | None = None) -> RunConfig:
    """A preset plus overrides, every value checked: a bad one fails here, not hours into a run."""
    data = apply_overrides(load_toml(path), overrides or [])
    cfg = from_dict(RunConfig, data)
    cfg.validate()
    return cfg
