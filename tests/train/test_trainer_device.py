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
