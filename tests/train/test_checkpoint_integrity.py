"""Checkpoint integrity: every damaged file is detected before loading, the newest intact checkpoint is used,
interrupted saves are finished or undone, and a checkpoint without optimizer state is refused."""

import json
import os
import shutil
import stat

import pytest
import torch

from kamado.config import OptimConfig
from kamado.errors import CheckpointError
from kamado.model.transformer import Transformer
from kamado.train import checkpoint as ckpt
from kamado.train.optim import build_optimizer


@pytest.fixture
def saved(tiny_cfg, tmp_path):
    """Checkpoints at steps 1, 2, 3 of a model with AdamW state (step 3 differs from 2 in every tensor)."""
    torch.manual_seed(0)
    model = Transformer(tiny_cfg.model)
    opt = build_optimizer(model, tiny_cfg.optim)
    root = tmp_path / "ckpt"
    for step in (1, 2, 3):
        model(torch.randint(0, 64, (2, 8)), torch.randint(0, 64, (2, 8))).loss.backward()
        opt.step()
        opt.zero_grad()
        ckpt.save_checkpoint(root, step, model, opt, {"config": {}}, keep_last=5)
    return root, model, opt


@pytest.mark.parametrize("name", ["model.safetensors", "optimizer.safetensors", "rng.safetensors", "state.json"])
@pytest.mark.parametrize("how", ["truncate", "flip", "delete", "append"])
def test_every_damage_is_detected_and_the_previous_checkpoint_used(saved, capsys, name, how):
    root, model, opt = saved
    path = root / "step_00000003" / name
    data = path.read_bytes()
    if how == "truncate":
        path.write_bytes(data[:-1])
    elif how == "flip":
        i = len(data) // 2  # the size still matches: only the checksum can tell
        path.write_bytes(data[:i] + bytes([data[i] ^ 1]) + data[i + 1 :])
    elif how == "delete":
        path.unlink()
    else:
        path.write_bytes(data + b"\n")
    assert ckpt.verify_checkpoint(root / "step_00000003") is not None
    with pytest.raises(CheckpointError, match="corrupt"):
        ckpt.load_checkpoint(root / "step_00000003", model, opt)
    assert ckpt.latest_checkpoint(root, quarantine=True).name == "step_00000002"
    assert "step_00000003 is corrupt" in capsys.readouterr().err
    assert (root / "step_00000003.corrupt").is_dir() and not (root / "step_00000003").exists()


def test_intact_checkpoints_verify_and_load_exactly(saved):
    root, model, opt = saved
    assert all(ckpt.verify_checkpoint(p) is None for p in ckpt.list_checkpoints(root))
    fresh = Transformer(model.cfg)
    fresh_opt = build_optimizer(fresh, OptimConfig())
    ckpt.load_checkpoint(root / "step_00000003", fresh, fresh_opt)
    for (n, a), (_, b) in zip(model.state_dict().items(), fresh.state_dict().items(), strict=True):
        assert torch.equal(a, b), n
    got, want = ckpt.optimizer_tensors(fresh, fresh_opt), ckpt.optimizer_tensors(model, opt)
    assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want)


def test_missing_optimizer_state_is_refused_not_restarted(saved, tmp_path):
    """A checkpoint saved without optimizer state (e.g. weights only) cannot resume training silently."""
    _, model, opt = saved
    ckpt.save_checkpoint(tmp_path / "w", 5, model, None, {"config": {}})
    with pytest.raises(CheckpointError, match="no optimizer state"):
        ckpt.load_checkpoint(tmp_path / "w" / "step_00000005", model, opt)
    ckpt.load_checkpoint(tmp_path / "w" / "step_00000005", model, None)  # for generation it is fine


def test_all_corrupt_is_one_clear_error(saved):
    root, _, _ = saved
    for p in ckpt.list_checkpoints(root):
        (p / "integrity.json").unlink()
    with pytest.raises(CheckpointError, match=r"no intact checkpoint.*step_00000003: no integrity\.json") as err:
        ckpt.latest_checkpoint(root, quarantine=True)
    reasons = str(err.value).split(" (", 1)[1].rstrip(")").split("; ")  # one reason per checkpoint, newest first
    assert [r.split(":")[0] for r in reasons] == ["step_00000003", "step_00000002", "step_00000001"]
    assert len(ckpt.list_checkpoints(root)) == 3  # nothing renamed when there is nothing to fall back to


def test_recover_interrupted_resave(saved):
    """The three moments a re-save of step 3 can be killed at, and what the writer's next start makes of them."""
    root, _, _ = saved
    s3 = root / "step_00000003"
    want = (s3 / "model.safetensors").read_bytes()
    # killed after renaming the old copy aside, before the new (complete) one moved in: the new one is used
    os.rename(s3, root / "step_00000003.old")
    shutil.copytree(root / "step_00000003.old", root / "step_00000003.tmp")
    ckpt.recover_interrupted_saves(root)
    assert ckpt.verify_checkpoint(s3) is None and not list(root.glob("*.old")) and not list(root.glob("*.tmp"))
    # the same, but the new copy was incomplete (no integrity record): the old one comes back
    os.rename(s3, root / "step_00000003.old")
    shutil.copytree(root / "step_00000003.old", root / "step_00000003.tmp")
    (root / "step_00000003.tmp" / "integrity.json").unlink()
    ckpt.recover_interrupted_saves(root)
    assert ckpt.verify_checkpoint(s3) is None and (s3 / "model.safetensors").read_bytes() == want
    assert not list(root.glob("*.old")) and not list(root.glob("*.tmp"))
    # killed after the new one moved in, before the old one was deleted: the leftover goes
    shutil.copytree(s3, root / "step_00000003.old")
    ckpt.recover_interrupted_saves(root)
    assert ckpt.verify_checkpoint(s3) is None and not list(root.glob("*.old"))


def test_recovery_moves_in_the_new_copy_not_the_old(saved):
    """Killed between the renames of a re-save whose new copy differs from the old: the new one is used."""
    root, _, _ = saved
    s3 = root / "step_00000003"
    os.rename(s3, root / "step_00000003.old")
    shutil.copytree(root / "step_00000002", root / "step_00000003.tmp")  # complete, and not the old step 3
    new = (root / "step_00000002" / "model.safetensors").read_bytes()
    ckpt.recover_interrupted_saves(root)
    assert (s3 / "model.safetensors").read_bytes() == new and ckpt.verify_checkpoint(s3) is None
    assert not list(root.glob("*.old")) and not list(root.glob("*.tmp"))


def test_a_first_save_killed_before_its_rename_is_kept_when_complete(saved):
    """A `.tmp` with no older copy: complete (integrity record matches) it becomes the step; incomplete it goes."""
    root, _, _ = saved
    shutil.copytree(root / "step_00000003", root / "step_00000004.tmp")
    shutil.copytree(root / "step_00000003", root / "step_00000005.tmp")
    (root / "step_00000005.tmp" / "integrity.json").unlink()  # killed before the record: not finished
    ckpt.recover_interrupted_saves(root)
    assert [p.name for p in ckpt.list_checkpoints(root)][-2:] == ["step_00000003", "step_00000004"]
    assert ckpt.verify_checkpoint(root / "step_00000004") is None
    assert not list(root.glob("*.tmp"))


def test_model_weights_added_to_a_sealed_checkpoint_are_listed_and_verified(saved):
    """A distributed run seals its checkpoint first, then adds the consolidated `model.safetensors`."""
    import hashlib

    from safetensors.torch import load_file

    root, model, _ = saved
    folder = root / "step_00000003"
    (folder / "model.safetensors").unlink()
    record = json.loads((folder / "integrity.json").read_text())
    del record["files"]["model.safetensors"]
    (folder / "integrity.json").write_text(json.dumps(record))
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    ckpt.add_model_weights(folder, weights)
    data = (folder / "model.safetensors").read_bytes()
    entry = json.loads((folder / "integrity.json").read_text())["files"]["model.safetensors"]
    assert entry == {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    assert set(json.loads((folder / "integrity.json").read_text())["files"]) == set(record["files"]) | {
        "model.safetensors"
    }
    assert ckpt.verify_checkpoint(folder) is None
    loaded = load_file(str(folder / "model.safetensors"))
    assert loaded.keys() == weights.keys() and all(torch.equal(loaded[k], weights[k]) for k in weights)
    (folder / "model.safetensors").write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
    assert ckpt.verify_checkpoint(folder) is not None  # and the record now guards them


def _sealed(folder, files: dict[str, bytes], fmt: str | None, hashes: bool = True):
    """A checkpoint folder holding `files`, sealed the way `publish` seals one (or, fmt None, with no format key)."""
    folder.mkdir(parents=True)
    for name, data in files.items():
        (folder / name).write_bytes(data)
    if fmt is None:  # records written before the format key existed
        ckpt.write_integrity(folder)
        record = json.loads((folder / "integrity.json").read_text())
        del record["format"]
        (folder / "integrity.json").write_text(json.dumps(record))
    else:
        ckpt.write_integrity(folder, fmt, hashes)
    return folder


def test_a_dcp_checkpoint_is_verified_by_its_own_files_and_sizes(tmp_path):
    """Distributed (DCP) checkpoints record sizes only and need `.metadata` + `state.json`, not the safetensors
    files; every other record is checked by SHA-256 (`kamado.parallel` writes the DCP ones; checked here alone)."""
    shards = {".metadata": b"m" * 10, "__0_0.distcp": b"a" * 100, "__1_0.distcp": b"b" * 100, "state.json": b"{}"}
    dcp = _sealed(tmp_path / "dcp", shards, "dcp", hashes=False)
    assert ckpt.verify_checkpoint(dcp) is None  # no model.safetensors needed
    (dcp / "__0_0.distcp").write_bytes(b"A" * 100)  # same size, other bytes: sizes only, so still intact
    assert ckpt.verify_checkpoint(dcp) is None
    (dcp / "__1_0.distcp").write_bytes(b"b" * 99)  # a later file shorter: found, after the first was skipped
    assert ckpt.verify_checkpoint(dcp) == "__1_0.distcp has 99 bytes, 100 were written"
    no_meta = _sealed(tmp_path / "no_meta", {k: v for k, v in shards.items() if k != ".metadata"}, "dcp", False)
    assert ckpt.verify_checkpoint(no_meta) == "integrity.json does not list .metadata"
    plain = {"model.safetensors": b"w" * 8, "rng.safetensors": b"r" * 8, "state.json": b"{}"}
    for fmt in ("safetensors", None):  # a plain checkpoint, with or without the format key: hashes are checked
        folder = _sealed(tmp_path / f"plain_{fmt}", plain, fmt)
        assert ckpt.verify_checkpoint(folder) is None
        (folder / "model.safetensors").write_bytes(b"W" * 8)
        assert (
            ckpt.verify_checkpoint(folder)
            == "model.safetensors does not match its SHA-256 (the bytes changed after the save)"
        )
    hashed_dcp = _sealed(tmp_path / "hashed_dcp", shards, "dcp", hashes=True)  # a DCP record with hashes: checked
    (hashed_dcp / "__0_0.distcp").write_bytes(b"A" * 100)
    assert ckpt.verify_checkpoint(hashed_dcp) == (
        "__0_0.distcp does not match its SHA-256 (the bytes changed after the save)"
    )
    newer = _sealed(tmp_path / "newer", plain, "a-format-from-a-newer-kamado")  # checked as a plain one
    assert ckpt.verify_checkpoint(newer) is None
    (newer / "rng.safetensors").unlink()
    assert ckpt.verify_checkpoint(newer) == "rng.safetensors is missing"
    unhashed = _sealed(tmp_path / "unhashed", plain, "safetensors", hashes=False)  # only DCP may skip hashes
    assert ckpt.verify_checkpoint(unhashed) is not None
    assert ckpt.verify_checkpoint(_sealed(tmp_path / "no_model", shards, "safetensors")) == (
        "integrity.json does not list model.safetensors"
    )


def test_only_step_folders_are_checkpoints_oldest_first(tmp_path):
    root = tmp_path / "ckpt"
    for name in ("step_00000010", "step_00000002", "step_00000100"):
        (root / name).mkdir(parents=True)
    (root / "step_00000005").write_text("a file, not a folder")
    for name in ("step_00000007.tmp", "step_00000003.old", "step_00000004.corrupt", "notes"):
        (root / name).mkdir()
    assert [p.name for p in ckpt.list_checkpoints(root)] == ["step_00000002", "step_00000010", "step_00000100"]


def test_readers_leave_a_save_in_progress_alone(saved):
    """`kamado generate` beside a training run lists checkpoints; it must not delete the trainer's `.tmp`."""
    root, _, _ = saved
    (root / "step_00000004.tmp").mkdir()
    assert ckpt.latest_checkpoint(root).name == "step_00000003"
    assert ckpt.find_checkpoint(root / "step_00000003") == root / "step_00000003"
    assert (root / "step_00000004.tmp").is_dir()
    (root / "step_00000003" / "state.json").write_text("{}")  # the newest damaged: readers fall back, rename nothing
    assert ckpt.latest_checkpoint(root).name == "step_00000002"
    assert (root / "step_00000003").is_dir() and not list(root.glob("*.corrupt"))


def test_pruning_removes_only_older_steps(saved):
    """Saving step 2 again (after a fall-back) with keep_last=2 keeps step 1 as its one older companion and never
    deletes step 3: a newer folder is someone's evidence (or the user's), not an old checkpoint."""
    root, model, opt = saved
    ckpt.save_checkpoint(root, 2, model, opt, {"config": {}}, keep_last=2)
    assert [p.name for p in ckpt.list_checkpoints(root)] == ["step_00000001", "step_00000002", "step_00000003"]
    ckpt.save_checkpoint(root, 4, model, opt, {"config": {}}, keep_last=2)
    assert [p.name for p in ckpt.list_checkpoints(root)] == ["step_00000003", "step_00000004"]


def test_checkpoint_files_are_0644_like_every_other_file(saved):
    root, _, _ = saved
    old = os.umask(0o022)
    try:
        modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in (root / "step_00000003").iterdir()}
    finally:
        os.umask(old)
    assert set(modes.values()) == {0o644}, modes
    assert json.loads((root / "step_00000003" / "integrity.json").read_text())["files"].keys() == {
        "model.safetensors",
        "optimizer.safetensors",
        "rng.safetensors",
        "state.json",
    }


class Killed(BaseException):
    """A kill at a chosen moment: not an Exception, so nothing on the way catches it."""


def test_a_kill_at_any_rename_or_midway_through_any_delete_of_a_resave_keeps_the_step(saved, monkeypatch):
    """Re-save step 3 and kill it at each rename, and halfway through each folder delete (a kill mid-`rmtree`
    leaves a half-deleted folder); after the writer's next start step 3 is intact, old copy or new."""
    root, model, opt = saved
    s3 = root / "step_00000003"
    before = (s3 / "model.safetensors").read_bytes()
    with torch.no_grad():
        next(model.parameters()).add_(1.0)
    real_rename, real_rmtree = os.rename, shutil.rmtree
    outcomes = set()
    for kill_at in range(1, 20):
        calls = 0

        def now(kill_at: int = kill_at) -> bool:
            nonlocal calls
            calls += 1
            return calls == kill_at

        def rename(src, dst):
            if now():
                raise Killed
            real_rename(src, dst)

        def rmtree(path, ignore_errors=False):
            if now():
                os.unlink(sorted(e.path for e in os.scandir(path) if e.is_file())[0])
                raise Killed
            real_rmtree(path, ignore_errors=ignore_errors)

        monkeypatch.setattr(ckpt.os, "rename", rename)
        monkeypatch.setattr(ckpt.shutil, "rmtree", rmtree)
        try:
            ckpt.save_checkpoint(root, 3, model, opt, {"config": {}}, keep_last=5)
            finished = True
        except Killed:
            finished = False
        monkeypatch.undo()
        ckpt.recover_interrupted_saves(root)
        assert ckpt.verify_checkpoint(s3) is None, f"killed at filesystem call {kill_at}: step 3 lost"
        outcomes.add((s3 / "model.safetensors").read_bytes() == before)
        assert sorted(p.name for p in root.iterdir()) == ["step_00000001", "step_00000002", "step_00000003"]
        if finished:
            break
    # the save completed after all its renames and deletes were tried; the old copy and the new one were both seen
    assert finished and calls >= 3 and outcomes == {True, False}
