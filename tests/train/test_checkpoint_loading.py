"""Finding and loading a checkpoint for use outside training (serving, evaluation, export): a checkpoint folder or
a run folder; bad paths and mismatched weights get one clear error."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from kamado.config import to_dict
from kamado.errors import CheckpointError
from kamado.model.transformer import Transformer
from kamado.train import checkpoint as ckpt
from kamado.train.optim import build_optimizer


@pytest.fixture
def run(tiny_cfg, tmp_path) -> tuple[Path, Transformer]:
    """A run folder with checkpoints at steps 1 and 2 (different weights), configs saved as training saves them."""
    torch.manual_seed(0)
    model = Transformer(tiny_cfg.model)
    opt = build_optimizer(model, tiny_cfg.optim)
    root = tmp_path / "run"
    for step in (1, 2):
        model(torch.randint(0, 64, (2, 8)), torch.randint(0, 64, (2, 8))).loss.backward()
        opt.step()
        opt.zero_grad()
        ckpt.save_checkpoint(root / "checkpoints", step, model, opt, {"config": to_dict(tiny_cfg)})
    return root, model


def test_a_run_folder_means_its_newest_checkpoint(run):
    root, _ = run
    assert ckpt.find_checkpoint(root) == root / "checkpoints/step_00000002"
    assert ckpt.find_checkpoint(str(root / "checkpoints/step_00000001")) == root / "checkpoints/step_00000001"


def test_a_checkpoint_folder_is_verified_before_use(run):
    root, _ = run
    step = root / "checkpoints/step_00000001"
    (step / "model.safetensors").write_bytes(b"not the weights")
    with pytest.raises(CheckpointError, match=r"checkpoint .*step_00000001 is corrupt: .*model.safetensors"):
        ckpt.find_checkpoint(step)
    (step / "integrity.json").unlink()  # state.json alone still marks a checkpoint folder, which is then incomplete
    with pytest.raises(CheckpointError, match=r"step_00000001 is corrupt: no integrity\.json"):
        ckpt.find_checkpoint(step)


def test_a_folder_that_is_neither_is_one_clear_error(tmp_path):
    with pytest.raises(CheckpointError, match=r"neither a checkpoint folder nor a run folder with checkpoints/step_"):
        ckpt.find_checkpoint(tmp_path)


def test_load_model_rebuilds_the_saved_config_with_the_newest_weights(run, tiny_cfg):
    root, trained = run
    model, found = ckpt.load_model(root)
    assert found == root / "checkpoints/step_00000002" and not model.training
    assert model.cfg == trained.cfg
    for (name, a), b in zip(model.state_dict().items(), trained.state_dict().values(), strict=True):
        assert torch.equal(a, b), name


def test_weights_load_from_a_folder_or_a_file(run, tiny_cfg):
    root, trained = run
    for where in (root / "checkpoints/step_00000002", root / "checkpoints/step_00000002/model.safetensors"):
        model = Transformer(tiny_cfg.model)
        ckpt.load_model_weights(model, where)
        assert torch.equal(model.embed.weight, trained.embed.weight)


def test_weights_of_another_shape_or_file_are_refused(run, tiny_cfg, tmp_path):
    root, _ = run
    step = root / "checkpoints/step_00000002"
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match=r"no model weights at .*empty/model.safetensors"):
        ckpt.load_model_weights(Transformer(tiny_cfg.model), tmp_path / "empty")
    tiny_cfg.model.n_layers = 3  # one layer more than was saved: its 8 weights are missing (the first 5 named)
    with pytest.raises(CheckpointError, match=r"does not match the model config: missing \['layers.2.attn") as e:
        ckpt.load_model_weights(Transformer(tiny_cfg.model), step)
    assert str(e.value).split("missing ")[1].split("]")[0].count("'layers.2.") == 5
    tiny_cfg.model.n_layers = 1  # one layer fewer: the saved layer 1 is unexpected
    with pytest.raises(CheckpointError, match=r"missing \[\], unexpected \['layers.1.attn") as e:
        ckpt.load_model_weights(Transformer(tiny_cfg.model), step)
    assert str(e.value).split("unexpected ")[1].count("'layers.1.") == 5
    tiny_cfg.model.n_layers, tiny_cfg.model.ffn_hidden = 2, tiny_cfg.model.ffn_hidden * 2  # same names, wider
    with pytest.raises(CheckpointError, match=r"weights of other shapes than the model config: layers.0.mlp") as e:
        ckpt.load_model_weights(Transformer(tiny_cfg.model), step)
    assert str(e.value).count("(model: ") == 3  # the first 3 of the 4 wider weights, each with both shapes
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x00" * 64)
    with pytest.raises(CheckpointError, match=r"junk.safetensors is not a readable safetensors file"):
        ckpt.load_model_weights(Transformer(tiny_cfg.model), junk)


def test_optimizer_state_for_an_unknown_parameter_is_refused(tiny_cfg):
    model = Transformer(tiny_cfg.model)
    opt = build_optimizer(model, tiny_cfg.optim)
    with pytest.raises(CheckpointError, match=r"optimizer state names unknown parameter 'layers.9.mlp.weight'"):
        ckpt.load_optimizer_tensors(model, opt, {"layers.9.mlp.weight.exp_avg": torch.zeros(2)})


def test_a_copied_run_folder_loads_the_same(run, tmp_path):
    root, trained = run
    shutil.copytree(root, tmp_path / "copy")
    model, _ = ckpt.load_model(tmp_path / "copy")
    assert torch.equal(model.lm_head.weight, trained.lm_head.weight)


def test_a_distributed_checkpoint_is_refused_until_consolidated(run, tiny_cfg, tmp_path):
    """A DCP folder (`.metadata`, shards) cannot be read here: the error names the command that converts it; the
    same folder with consolidated weights beside the shards (what `kamado run` under torchrun leaves) loads."""
    root, trained = run
    dcp = tmp_path / "step_00000002"
    dcp.mkdir()
    (dcp / ".metadata").write_bytes(b"dcp")
    how = r"distributed \(DCP\) checkpoint: `kamado checkpoint consolidate .* --out DIR` writes one that this command"
    how += " reads$"
    with pytest.raises(CheckpointError, match=how):
        ckpt.load_model_weights(Transformer(tiny_cfg.model), dcp)
    shutil.copy(root / "checkpoints/step_00000002/model.safetensors", dcp / "model.safetensors")
    model = Transformer(tiny_cfg.model)
    ckpt.load_model_weights(model, dcp)
    assert torch.equal(model.embed.weight, trained.embed.weight)


def test_a_resume_with_other_shape_settings_names_them(run, tiny_cfg):
    root, _ = run
    step = root / "checkpoints/step_00000002"
    ckpt.check_same_shape(step, tiny_cfg.model)  # the settings it was saved with
    tiny_cfg.model.max_seq_len, tiny_cfg.model.rope_theta = 4 * tiny_cfg.model.max_seq_len, 5e5  # shapes unchanged
    ckpt.check_same_shape(step, tiny_cfg.model)
    d = tiny_cfg.model.d_model
    tiny_cfg.model.d_model, tiny_cfg.model.qk_norm = 2 * d, not tiny_cfg.model.qk_norm
    with pytest.raises(CheckpointError) as e:
        ckpt.check_same_shape(step, tiny_cfg.model)
    assert str(e.value).startswith(f"{step} was saved with other model settings (model.d_model = {d} there, {2 * d} ")
    assert "model.qk_norm = " in str(e.value) and "max_seq_len" not in str(e.value)
