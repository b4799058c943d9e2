"""Typed configuration: dataclasses loaded from TOML presets, with dotted command-line overrides.

A run is described by one `RunConfig` (one TOML file under `recipes/`). Every section is a dataclass, so a typo
in a preset or an override (`--optim.lr=3e-4`) is an error that names the key, never a silently ignored value.
"""

from __future__ import annotations

import dataclasses
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from kamado.corpus.config import CorpusConfig
from kamado.errors import ConfigError


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
        if self.d_model % self.n_heads:
            raise ConfigError(f"model.d_model={self.d_model} is not divisible by model.n_heads={self.n_heads}")
        if self.n_heads % self.n_kv_heads:
            raise ConfigError(f"model.n_heads={self.n_heads} is not a multiple of model.n_kv_heads={self.n_kv_heads}")
        if self.head_dim % 2:
            raise ConfigError(f"head_dim={self.head_dim} must be even for RoPE")
        for name in ("vocab_size", "d_model", "n_layers", "ffn_hidden", "max_seq_len"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"model.{name} must be positive, got {getattr(self, name)}")


@dataclass
class TokenizerConfig:
    """Byte-level BPE learned from the corpus (see `kamado.tokenizer.train`)."""

    vocab_size: int = 32000
    min_frequency: int = 2
    max_train_chars: int = 200_000_000  # cap on characters fed to the trainer
    path: str = ""  # tokenizer folder; empty = `<run dir>/tokenizer`


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


@dataclass
class DataConfig:
    seq_len: int = 1024
    seed: int = 1234
    sources: list[SourceConfig] = field(default_factory=list)
    phases: list[PhaseConfig] = field(default_factory=list)  # empty = one phase, equal weights
    val_sources: list[SourceConfig] = field(default_factory=list)


@dataclass
class OptimConfig:
    lr: float = 3e-4
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = 1e-8
    weight_decay: float = 0.1
    grad_clip: float = 1.0  # max global grad norm; 0 disables


@dataclass
class ScheduleConfig:
    kind: str = "cosine"  # "cosine" | "wsd" (warmup-stable-decay) | "constant"
    warmup_steps: int = 100
    decay_fraction: float = 0.2  # wsd: last fraction of steps decays linearly to min_lr
    min_lr_ratio: float = 0.1


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


@dataclass
class StabilityConfig:
    enabled: bool = True
    window: int = 50  # losses kept for the running mean/std
    min_history: int = 20  # no spike detection before this many accepted losses
    z_threshold: float = 6.0  # loss > mean + z·std counts as a spike
    max_spikes: int = 3  # this many spikes in a row -> roll back to the last checkpoint


@dataclass
class CheckpointConfig:
    every: int = 200  # steps; 0 = only at the end
    keep_last: int = 3
    resume: bool = True  # continue from the newest checkpoint in the run folder


@dataclass
class GenerateConfig:
    prompts: list[str] = field(default_factory=list)
    max_new_tokens: int = 64
    temperature: float = 0.8
    top_k: int = 50
    top_p: float = 0.95
    seed: int = 0


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
    generate: GenerateConfig = field(default_factory=GenerateConfig)
    corpus: SampleCorpusConfig = field(default_factory=SampleCorpusConfig)


# --------------------------------------------------------------------------------------------------------------
# Building dataclasses from plain dicts, strictly.

T = TypeVar("T")


def _convert(tp: Any, value: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        if not isinstance(value, dict):
            raise ConfigError(f"config key '{key}' must be a table, got {type(value).__name__}")
        return from_dict(tp, value, prefix=key)
    if origin in (types.UnionType, typing.Union):
        non_none = [a for a in args if a is not type(None)]
        return None if value is None else _convert(non_none[0], value, key)
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"config key '{key}' must be a list, got {value!r}")
        return [_convert(args[0], v, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is tuple:
        if not isinstance(value, list | tuple) or len(value) != len(args):
            raise ConfigError(f"config key '{key}' must be a list of {len(args)} values, got {value!r}")
        return tuple(_convert(a, v, key) for a, v in zip(args, value, strict=True))
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"config key '{key}' must be a table, got {value!r}")
        return {str(k): _convert(args[1], v, f"{key}.{k}") for k, v in value.items()}
    if tp is float and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if tp is int and isinstance(value, float) and value.is_integer():
        return int(value)
    if tp in (int, str, bool) and type(value) is not tp:
        raise ConfigError(f"config key '{key}' must be {tp.__name__}, got {value!r}")
    return value


def from_dict(cls: type[T], data: dict[str, Any], prefix: str = "") -> T:
    """Build dataclass `cls` from `data`; unknown keys raise a ConfigError naming the key."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    kwargs = {}
    for k, v in data.items():
        full = f"{prefix}.{k}" if prefix else k
        if k not in names:
            raise ConfigError(f"unknown config key '{full}' (known: {', '.join(sorted(names))})")
        kwargs[k] = _convert(hints[k], v, full)
    return cls(**kwargs)


def to_dict(obj: Any) -> dict[str, Any]:
    return dataclasses.asdict(obj)


def _parse_override_value(raw: str) -> Any:
    try:
        return tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        return raw  # a bare string: --name=tiny


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply `--a.b.c=value` overrides (value parsed as a TOML literal) to a nested dict."""
    for item in overrides:
        text = item[2:] if item.startswith("--") else item
        if "=" not in text:
            raise ConfigError(f"override '{item}' must look like --section.key=value")
        dotted, raw = text.split("=", 1)
        parts = dotted.split(".")
        node = data
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override '{item}': '{p}' is not a section")
        node[parts[-1]] = _parse_override_value(raw)
    return data


def load_toml(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file not found: {p}")
    try:
        return tomllib.loads(p.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{p}: invalid TOML: {e}") from None


def load_config(path: str | Path, overrides: list[str] | None = None) -> RunConfig:
    data = apply_overrides(load_toml(path), overrides or [])
    cfg = from_dict(RunConfig, data)
    cfg.model.validate()
    return cfg
