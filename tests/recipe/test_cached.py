"""`kamado.recipe.cached`: a rerun reads a check's result back only under the very same key."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch

from kamado.completion import RECORD
from kamado.recipe.cached import cached, files_sha256, weights_sha256


def test_a_result_is_computed_once_per_key(tmp_path: Path) -> None:
    calls: list[int] = []

    def compute() -> dict[str, float]:
        calls.append(1)
        return {"bits": 1.0 / 3.0}

    folder = tmp_path / "checks" / "x"
    first = cached(folder, {"weights": "a"}, compute)
    assert cached(folder, {"weights": "a"}, compute) == first == {"bits": 1.0 / 3.0}  # exact through JSON
    assert len(calls) == 1
    assert cached(folder, {"weights": "b"}, compute) == first and len(calls) == 2  # another key: computed again
    assert cached(folder, {"weights": "a"}, compute) == first and len(calls) == 3  # only the last key is kept


def test_a_missing_or_torn_record_or_another_version_computes_again(tmp_path: Path, monkeypatch) -> None:
    import kamado

    calls: list[int] = []
    folder = tmp_path / "c"
    compute = lambda: calls.append(1) or {"v": len(calls)}  # noqa: E731
    cached(folder, {"k": 1}, compute)
    (folder / RECORD).write_text((folder / RECORD).read_text()[:-5])  # torn by a kill or a full disk
    assert cached(folder, {"k": 1}, compute) == {"v": 2}
    monkeypatch.setattr(kamado, "__version__", "9.9.9")  # scored by another kamado
    assert cached(folder, {"k": 1}, compute) == {"v": 3}
    assert json.loads((folder / RECORD).read_text())["info"]["key"] == {"k": 1, "kamado": "9.9.9"}


def test_a_failed_computation_leaves_no_result_behind(tmp_path: Path) -> None:
    folder = tmp_path / "c"
    cached(folder, {"k": 1}, lambda: {"v": 1})

    def fails() -> dict[str, int]:
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        cached(folder, {"k": 2}, fails)
    assert not (folder / RECORD).exists()  # the old result does not stand in for the new key
    assert cached(folder, {"k": 1}, lambda: {"v": 5}) == {"v": 5}


def test_weights_hash_sees_every_byte_name_and_dtype() -> None:
    torch.manual_seed(0)
    a = torch.nn.Linear(4, 3)
    b = torch.nn.Linear(4, 3)
    b.load_state_dict(a.state_dict())
    assert weights_sha256(a) == weights_sha256(b)
    with torch.no_grad():
        b.bias[1] = torch.nextafter(b.bias[1], torch.tensor(1.0))  # one ulp of one weight
    assert weights_sha256(a) != weights_sha256(b)
    assert weights_sha256(a) != weights_sha256(copy.deepcopy(a).to(torch.bfloat16))  # bf16 hashes too (as bytes)
    scaled = copy.deepcopy(a)
    scaled.register_buffer("scale", torch.tensor(2.0))  # a 0-dim tensor hashes too
    assert weights_sha256(scaled) != weights_sha256(a)
    renamed = torch.nn.Sequential(a)
    assert weights_sha256(renamed) != weights_sha256(a)  # "0.weight" is not "weight"


def test_files_hash_sees_bytes_and_names(tmp_path: Path) -> None:
    x, y = tmp_path / "x.jsonl", tmp_path / "y.jsonl"
    x.write_text("a")
    y.write_text("a")
    assert files_sha256([x]) != files_sha256([y])
    before = files_sha256([x, y])
    assert files_sha256([y, x]) != before
    x.write_text("b")
    assert files_sha256([x, y]) != before
