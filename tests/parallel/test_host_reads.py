"""A training step reads values from the device once (issue 11's MFU: on a GPU every `float(t)`, `t.item()`,
`t.tolist()`, `int(t)` or `bool(t)` of a device tensor waits for all the kernels queued before it, and the GPU idles
while the host queues the next ones). On the CPU nothing waits, but the reads are the same calls, so they can be
counted here: a TorchFunctionMode sees every one."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch.overrides import TorchFunctionMode

from kamado.config import load_config
from kamado.train.callbacks import Callback

READS = {"__float__", "__int__", "__bool__", "__index__", "item", "tolist", "numpy"}


class HostReads(TorchFunctionMode):
    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        if getattr(func, "__name__", "") in READS:
            self.count += 1
        return func(*args, **(kwargs or {}))


class ReadsPerStep(Callback):
    """The read count at the end of every step; consecutive differences are one whole step's reads (its
    micro-batches, clipping, optimizer, callbacks, and the previous step's stop check)."""

    def __init__(self, mode: HostReads) -> None:
        self.mode, self.at = mode, []

    def on_step_end(self, trainer: Any, metrics: dict[str, Any]) -> None:
        self.at.append(self.mode.count)

    def per_step(self) -> list[int]:
        return [b - a for a, b in zip(self.at, self.at[1:], strict=False)]


def _config(runs, tmp_path, *extra: str):
    overrides = [f"--out_dir={tmp_path / 'run'}", "--train.steps=5", "--train.grad_accum=2", "--checkpoint.every=0"]
    return load_config(runs.config, [*overrides, "--train.eval_every=0", "--stability.enabled=true", *extra])


def _count(trainer) -> list[int]:
    """Reads per training step; then the reads of one evaluation on two batches (one: it was two per batch)."""
    mode = HostReads()
    reads = ReadsPerStep(mode)
    trainer.callbacks = [reads]
    val_batches, trainer.val_batches = trainer.val_batches, None
    with mode:
        trainer.fit()
    trainer.val_batches = val_batches
    assert len(list(val_batches())) == 2
    before = mode.count
    with mode:
        assert trainer.evaluate()["val_ce"] > 0
    assert mode.count - before == 1
    return reads.per_step()


def test_a_one_process_step_reads_the_device_once(runs, tmp_path, monkeypatch):
    """Two micro-batches with four metrics each, the gradient norm: one copy to the host (it was nine). The model
    takes its GPU loss path (logits, then `lm_loss`); the CPU's chunked loss counts its tokens on the host, where
    that costs nothing."""
    from kamado.model import transformer
    from kamado.train.pretrain import build_trainer

    monkeypatch.setattr(transformer, "LOGITS_LOSS_DEVICES", (*transformer.LOGITS_LOSS_DEVICES, "cpu"))
    trainer = build_trainer(_config(runs, tmp_path), progress=False, tensorboard=False)
    assert _count(trainer) == [1] * 4


def test_a_distributed_step_reads_the_device_once_and_agrees_on_stopping_on_the_host(runs, tmp_path):
    """FSDP on one gloo rank: the logged values and the gradient norm in one copy, plus the stop flag's all-reduce,
    which on GPUs goes over the process group's gloo part on the host (`flag_device`), so no GPU waits for it."""
    import torch.distributed as dist

    from kamado.parallel.run import build_distributed_trainer
    from kamado.parallel.trainer import flag_device

    dist.init_process_group("gloo", init_method=f"file://{tmp_path}/store", rank=0, world_size=1)
    try:
        trainer = build_distributed_trainer(_config(runs, tmp_path, "--parallel.dp_shard=1"), progress=False)
        assert _count(trainer) == [2] * 4  # the values + the stop flag
        assert flag_device(torch.device("cpu")) == torch.device("cpu")
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize(
    "config, where",
    [("cpu:gloo,cuda:nccl", "cpu"), ("cpu:gloo,cuda:gloo", "cpu"), ("cuda:nccl", "cuda")],
)
def test_the_stop_flag_is_reduced_on_the_host_where_the_group_can(monkeypatch, config, where):
    import torch.distributed as dist

    from kamado.parallel.trainer import flag_device

    monkeypatch.setattr(dist, "get_backend_config", lambda group=None: config)
    assert flag_device(torch.device("cuda", 0)).type == where
