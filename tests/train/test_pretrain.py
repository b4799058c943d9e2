"""`kamado.train.pretrain`: a RunConfig becomes a trainer over real token shards; bad configs get one clear error."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from kamado.config import RunConfig, SourceConfig
from kamado.data.shards import ShardWriter
from kamado.errors import ConfigError
from kamado.train.callbacks import Checkpointer, MetricsLogger, ProgressBar, SpeedMonitor
from kamado.train.pretrain import build_trainer, default_callbacks, pretrain


def _source(path: Path, vocab: int, n_docs: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    with ShardWriter(path, vocab_size=vocab, eos_id=0, shard_tokens=500) as w:
        for _ in range(n_docs):
            w.add_document(rng.integers(1, vocab, size=int(rng.integers(5, 40))))


@pytest.fixture
def cfg(tiny_cfg: RunConfig, tmp_path: Path) -> RunConfig:
    _source(tmp_path / "train", 64, 200, 0)
    _source(tmp_path / "val", 64, 40, 1)
    tiny_cfg.data.sources = [SourceConfig("web", str(tmp_path / "train"))]
    tiny_cfg.data.val_sources = [SourceConfig("web", str(tmp_path / "val"))]
    tiny_cfg.train.steps, tiny_cfg.train.eval_every, tiny_cfg.train.eval_batches = 6, 3, 2
    return tiny_cfg


def test_pretrain_trains_evaluates_and_records_its_config(cfg: RunConfig) -> None:
    result = pretrain(cfg, progress=False)
    out = Path(cfg.out_dir)
    assert result["step"] == 6 and result["peak_flops"] == cfg.train.peak_flops
    model = result["trainer"].model
    assert result["num_params"] == sum(p.numel() for p in model.parameters())
    saved = json.loads((out / "config.json").read_text())
    assert saved["model"]["d_model"] == cfg.model.d_model and saved["train"]["steps"] == 6
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "val_ce" in r] == [3, 6]  # the validation sources were read
    assert result["eval"]["step"] == 6 and result["eval"]["val_ce"] > 0
    assert (out / "checkpoints/step_00000006/model.safetensors").is_file()
    assert list((out / "tensorboard").iterdir())  # the default callbacks log to TensorBoard


def test_the_same_seed_builds_the_same_model(cfg: RunConfig) -> None:
    a = build_trainer(cfg, progress=False, tensorboard=False).model.state_dict()
    b = build_trainer(cfg, progress=False, tensorboard=False).model.state_dict()
    assert all((a[k] == b[k]).all() for k in a)
    cfg.train.seed += 1
    c = build_trainer(cfg, progress=False, tensorboard=False).model.state_dict()
    assert not (a["embed.weight"] == c["embed.weight"]).all()


def test_default_callbacks() -> None:
    kinds = [type(c) for c in default_callbacks(Path("."), progress=True)]
    assert kinds == [SpeedMonitor, MetricsLogger, Checkpointer, ProgressBar]  # speed fills metrics before logging
    quiet = default_callbacks(Path("."), progress=False, tensorboard=False)
    assert [type(c) for c in quiet] == [SpeedMonitor, MetricsLogger, Checkpointer]
    assert quiet[1].tensorboard is False and default_callbacks(Path("."))[1].tensorboard is True
    assert ProgressBar in map(type, default_callbacks(Path(".")))  # progress by default


def test_no_sources_is_a_clear_error(cfg: RunConfig) -> None:
    cfg.data.sources = []
    with pytest.raises(ConfigError, match=r"^data\.sources is empty: list the folders written by `kamado tokenize`"):
        build_trainer(cfg)


def test_a_vocabulary_larger_than_the_model_is_a_clear_error(cfg: RunConfig) -> None:
    cfg.model.vocab_size = 32
    with pytest.raises(ConfigError, match=r"vocabulary of 64 but model.vocab_size is 32; set --model.vocab_size=64"):
        build_trainer(cfg)


def test_a_sequence_longer_than_the_model_is_a_clear_error(cfg: RunConfig) -> None:
    cfg.data.seq_len = cfg.model.max_seq_len + 1
    with pytest.raises(ConfigError, match=r"data.seq_len=17 exceeds model.max_seq_len=16"):
        build_trainer(cfg)
    cfg.data.seq_len = cfg.model.max_seq_len  # equal is fine
    build_trainer(cfg, progress=False, tensorboard=False)


def test_build_trainer_shows_progress_and_logs_to_tensorboard_unless_told_not_to(cfg: RunConfig) -> None:
    loud = build_trainer(cfg).callbacks
    assert ProgressBar in map(type, loud) and next(c for c in loud if isinstance(c, MetricsLogger)).tensorboard
    quiet = build_trainer(cfg, progress=False, tensorboard=False).callbacks
    assert ProgressBar not in map(type, quiet)
    assert next(c for c in quiet if isinstance(c, MetricsLogger)).tensorboard is False


def test_pretrain_passes_progress_through(cfg: RunConfig, monkeypatch) -> None:
    seen = []

    def fit(self):
        seen.append([type(c) for c in self.callbacks])
        return {"step": 0}

    monkeypatch.setattr("kamado.train.trainer.Trainer.fit", fit)
    pretrain(cfg)
    pretrain(cfg, progress=False)
    assert ProgressBar in seen[0] and ProgressBar not in seen[1]


def test_validation_reads_eval_batches_full_batches_and_none_without_sources(cfg: RunConfig) -> None:
    batches = list(build_trainer(cfg, progress=False, tensorboard=False).val_batches())
    assert len(batches) == cfg.train.eval_batches == 2
    assert all(tuple(b[0].shape) == (cfg.train.batch_size, cfg.data.seq_len) for b in batches)
    cfg.data.val_sources = []
    assert build_trainer(cfg, progress=False, tensorboard=False).val_batches is None


def test_the_run_folder_is_made_with_its_parents_and_a_readable_config(cfg: RunConfig, tmp_path: Path) -> None:
    cfg.out_dir = str(tmp_path / "a" / "b" / "run")
    cfg.name = "猫の実験"
    build_trainer(cfg, progress=False, tensorboard=False)
    text = (tmp_path / "a" / "b" / "run" / "config.json").read_text(encoding="utf-8")
    assert text.startswith('{\n "name": "猫の実験",\n')  # indented by one, Japanese as it is (not \\u escapes)


def test_distributed_when_launched_or_when_any_degree_is_above_one(monkeypatch):
    from kamado.config import RunConfig
    from kamado.train.pretrain import wants_distributed

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.delenv("RANK", raising=False)
    cfg = RunConfig()
    assert not wants_distributed(cfg)
    for degree in ("pp", "dp_replicate", "tp", "dp_shard"):
        cfg = RunConfig()
        setattr(cfg.parallel, degree, 2)
        assert wants_distributed(cfg), degree  # without a launcher: the run then says it needs one
    monkeypatch.setenv("WORLD_SIZE", "1")
    monkeypatch.setenv("RANK", "0")
    assert wants_distributed(RunConfig())  # torchrun with one process is the distributed trainer too
