"""`CorpusConfig`: every setting of `kamado corpus run`, loadable from a TOML preset with dotted overrides.

Loading it imports no datatrove, so the recipe config (`kamado.config.RunConfig.corpus.web`) can hold one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from kamado.corpus.minhash import DedupConfig
from kamado.corpus.quality import QualityConfig
from kamado.corpus.reshard import ReshardConfig
from kamado.errors import ConfigError


@dataclass
class CorpusConfig:
    tasks: int = 2  # datatrove tasks per stage (input files are divided among them)
    workers: int = 2  # tasks run at once (local executor)
    executor: str = "local"  # "local" (processes on this machine) or "ray"
    ray_address: str = ""  # executor "ray": "" starts Ray on this machine; "auto" or "ray://HOST:10001" joins a cluster
    kana_min_count: int = 10
    kana_min_fraction: float = 0.05
    extract_timeout_s: float = 2.0  # CPU seconds per page (5× that of wall time at most); else dropped as `timeout`
    language_threshold: float = 0.5
    quality: QualityConfig = field(default_factory=QualityConfig)
    dedup: DedupConfig = field(default_factory=DedupConfig)
    reshard: ReshardConfig = field(default_factory=ReshardConfig)

    def validate(self) -> None:
        if self.tasks < 1 or self.workers < 1:
            raise ConfigError(f"corpus.tasks = {self.tasks}, corpus.workers = {self.workers}: both must be >= 1")
        if self.executor not in ("local", "ray"):
            raise ConfigError(f'corpus.executor = "{self.executor}": must be "local" or "ray"')
        if self.extract_timeout_s <= 0:
            raise ConfigError(f"corpus.extract_timeout_s = {self.extract_timeout_s}: must be > 0")
        self.dedup.validate()
        self.reshard.validate()


def load_corpus_config(path: str | Path | None, overrides: list[str] | None = None) -> CorpusConfig:
    """A CorpusConfig from a TOML preset (or the defaults when `path` is None) plus `--section.key=value`
    overrides, e.g. `--dedup.threshold=0.7`; unknown keys raise a ConfigError naming the key."""
    from kamado.config import apply_overrides, from_dict, load_toml

    data = load_toml(path) if path is not None else {}
    cfg = from_dict(CorpusConfig, apply_overrides(data, overrides or []))
    cfg.validate()
    return cfg
