"""`CorpusConfig`: every setting of `kamado corpus run`, loadable from a TOML preset with dotted overrides.

Loading it imports no datatrove, so the recipe config (`kamado.config.RunConfig.corpus.web`) can hold one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from kamado.config_checks import FRACTION, NON_NEGATIVE, Range, check_choice, check_fields, check_numbers
from kamado.corpus.minhash import DedupConfig
from kamado.corpus.quality import QualityConfig
from kamado.corpus.reshard import ReshardConfig
from kamado.errors import ConfigError


@dataclass
class SlurmConfig:
    """executor "slurm": each stage a job array (datatrove's SlurmPipelineExecutor), each waiting on the one before;
    a last job runs the same command again, which finds every task done and writes the shards and the report."""

    partition: str = ""  # needed: the partition the jobs go to (`sinfo` lists them)
    time: str = "24:00:00"  # each task's time limit
    cpus_per_task: int = 1
    mem_per_cpu_gb: int = 2
    qos: str = ""  # "" = the cluster's default
    env_command: str = ""  # run before each job, e.g. "source .venv/bin/activate"; "" = the submitting environment

    def validate(self, prefix: str) -> None:
        check_fields(self, prefix, cpus_per_task=Range(1, 4096), mem_per_cpu_gb=Range(1, 10**5))


@dataclass
class CorpusConfig:
    tasks: int = 2  # datatrove tasks per stage (input files are divided among them)
    workers: int = 2  # tasks run at once (on Slurm: of each stage's job array)
    executor: str = "local"  # "local" (processes on this machine), "ray" or "slurm"
    ray_address: str = ""  # executor "ray": "" starts Ray on this machine; "auto" or "ray://HOST:10001" joins a cluster
    slurm: SlurmConfig = field(default_factory=SlurmConfig)
    kana_min_count: int = 10
    kana_min_fraction: float = 0.05
    extract_timeout_s: float = 2.0  # CPU seconds per page (5× that of wall time at most); else dropped as `timeout`
    extract_fallback: bool = True  # trafilatura's baseline when its output is a sidebar (kamado.corpus.extract)
    language_threshold: float = 0.5
    quality: QualityConfig = field(default_factory=QualityConfig)
    dedup: DedupConfig = field(default_factory=DedupConfig)
    reshard: ReshardConfig = field(default_factory=ReshardConfig)

    def validate(self, prefix: str = "") -> None:
        """Every value in range. `prefix` is where this config sits in a larger one (`corpus.web` in a recipe);
        alone, its own fields are named `corpus.tasks` and its sections as overridden (`dedup.threshold`)."""
        top, sub = prefix or "corpus", f"{prefix}." if prefix else ""
        many = Range(1, 10**6)  # tasks are files and processes: a million is beyond any crawl's WARC count
        check_fields(self, top, tasks=many, workers=many, kana_min_count=NON_NEGATIVE, kana_min_fraction=FRACTION)
        check_choice(f"{top}.executor", self.executor, ("local", "ray", "slurm"))
        self.slurm.validate(f"{sub}slurm")
        if self.executor == "slurm" and not self.slurm.partition:
            raise ConfigError(f"{top}.executor = 'slurm' needs {sub}slurm.partition (`sinfo` lists the partitions)")
        # CPU seconds per page, up to a day: the sandbox waits on it, and a wait of 1e308 s overflows
        check_fields(self, top, extract_timeout_s=Range(0, 86400, lo_open=True), language_threshold=FRACTION)
        self.quality.validate(f"{sub}quality")
        self.dedup.validate(f"{sub}dedup")
        self.reshard.validate(f"{sub}reshard")
        check_numbers(self, prefix)


def load_corpus_config(path: str | Path | None, overrides: list[str] | None = None) -> CorpusConfig:
    """A CorpusConfig from a TOML preset (or the defaults when `path` is None) plus `--section.key=value`
    overrides, e.g. `--dedup.threshold=0.7`; unknown keys raise a ConfigError naming the key."""
    from kamado.config import apply_overrides, from_dict, load_toml

    data = load_toml(path) if path is not None else {}
    cfg = from_dict(CorpusConfig, apply_overrides(data, overrides or []))
    cfg.validate()
    return cfg
