"""Real multi-process runs: `torchrun --nproc-per-node N -m kamado.cli train` on the gloo backend, over real token
shards, compared with the one-process `kamado train` of the same config (float32, so layouts agree to rounding)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from kamado.data.shards import ShardWriter

CONFIG = """
name = "parallel-test"
out_dir = "{out}"
[model]
vocab_size = 128
d_model = 64
n_layers = 4
n_heads = 4
n_kv_heads = 2
ffn_hidden = 128
max_seq_len = 32
[data]
seq_len = 32
[[data.sources]]
name = "web"
path = "{data}/train"
[[data.val_sources]]
name = "web"
path = "{data}/val"
[train]
steps = 4
batch_size = 8
dtype = "fp32"
peak_flops = 1e9
eval_every = 4
eval_batches = 2
log_every = 1
threads = 1
[optim]
lr = 3e-3
[schedule]
warmup_steps = 2
[checkpoint]
every = 2
[stability]
enabled = false
"""


def _write_source(path: Path, n_docs: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    with ShardWriter(path, vocab_size=128, eos_id=0, shard_tokens=2000) as w:
        for _ in range(n_docs):  # learnable: documents count up from a random start
            start, length = int(rng.integers(1, 128)), int(rng.integers(10, 60))
            w.add_document((start + np.arange(length)) % 127 + 1)


def launcher(nproc: int) -> list[str]:
    """The command before `-m kamado.cli ...`: torchrun with `nproc` ranks, or (nproc 0) the plain interpreter.
    --standalone puts the rendezvous on a free port: xdist runs several jobs at once, and torchrun's default port
    29500 would clash."""
    if not nproc:
        return [sys.executable]
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc)]


@dataclass
class Runs:
    root: Path

    @property
    def config(self) -> Path:
        return self.root / "config.toml"

    def env(self, **extra: str) -> dict[str, str]:
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
        env.pop("KAMADO_FAILPOINT", None)  # only a test that asks for a failpoint gets one
        env.update(extra)
        return env

    def train(
        self, out: Path, *overrides: str, nproc: int = 0, env: dict[str, str] | None = None, check=True, timeout=600
    ):
        """`kamado train` (nproc 0: one plain process; else under torchrun with nproc ranks)."""
        cmd = [*launcher(nproc), "-m", "kamado.cli", "train", str(self.config)]
        cmd += [f"--out_dir={out}", "--no-progress", *overrides]
        r = subprocess.run(cmd, capture_output=True, text=True, env=env or self.env(), timeout=timeout)
        if check:
            assert r.returncode == 0, f"{' '.join(cmd)}\n{r.stderr[-4000:]}"
        return r

    @staticmethod
    def metrics(out: Path) -> list[dict]:
        return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def make_runs(root: Path) -> Runs:
    """Token shards (train, val) and the config in `root`."""
    _write_source(root / "train", 400, 0)
    _write_source(root / "val", 60, 1)
    (root / "config.toml").write_text(CONFIG.format(out=root / "unused", data=root))
    return Runs(root)


@pytest.fixture(scope="session")
def runs(tmp_path_factory) -> Runs:
    return make_runs(tmp_path_factory.mktemp("parallel"))


@pytest.fixture(scope="session")
def single(runs: Runs) -> Path:
    """The one-process reference run (the plain `Trainer`, no torch.distributed)."""
    out = runs.root / "single"
    runs.train(out)
    return out


def assert_same_curve(got: list[dict], want: list[dict], rel: float = 2e-5, what: str = "") -> None:
    """Loss, CE, Z-loss, log Z and gradient norm of every step, within `rel` (float32 reduction order differs)."""
    steps = [r for r in got if "loss" in r]
    ref = [r for r in want if "loss" in r]
    assert [r["step"] for r in steps] == [r["step"] for r in ref], what
    for a, b in zip(steps, ref, strict=True):
        for key in ("loss", "ce", "z_loss", "log_z", "grad_norm"):
            assert a[key] == pytest.approx(b[key], rel=rel), f"{what} step {a['step']} {key}: {a[key]} vs {b[key]}"
