"""`train.device`: a malformed or absent device is one clear ConfigError, before any work starts."""

import pytest
import torch

from kamado.errors import ConfigError
from kamado.train.trainer import training_device


def test_cpu_device() -> None:
    assert training_device("cpu") == torch.device("cpu")


@pytest.mark.parametrize("name", ["tpu", "gpu0", "meta"])
def test_unsupported_device_names(name: str) -> None:
    with pytest.raises(ConfigError, match=r"train\.device"):
        training_device(name)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_cuda_without_a_gpu_is_a_clear_error() -> None:
    with pytest.raises(ConfigError, match="no CUDA device"):
        training_device("cuda")


@pytest.mark.parametrize(("name", "ok"), [("cuda", True), ("cuda:0", True), ("cuda:1", False), ("cuda:2", False)])
def test_a_cuda_index_past_the_devices_present_is_a_clear_error(monkeypatch, name: str, ok: bool) -> None:
    """A machine with one GPU (torch's CUDA queries stand in for it: this check runs before any CUDA call)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    if ok:
        assert training_device(name) == torch.device(name)
    else:
        with pytest.raises(ConfigError, match=rf"^train\.device = '{name}': only 1 CUDA device\(s\) here$"):
            training_device(name)
