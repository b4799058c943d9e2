"""Import a Hugging Face `Qwen3ForCausalLM` folder (such as `kamado export hf` writes) as a kamado run folder.

The inverse of `kamado.serve.export_hf`: q/k/v and gate/up are concatenated back into kamado's fused rows, tensors
keep their bytes (an export → import round trip is bit-exact), and the result is laid out like a training run —
`RUN/tokenizer/` and `RUN/checkpoints/step_00000000/` written by `kamado.train.checkpoint.save_checkpoint` (no
optimizer state; the folder carries no training step, hence step 0) — so `kamado generate RUN`, `load_model` and
the serving commands read it as they read a trained run.

Only what kamado's block computes exactly is accepted: a Qwen3 config with biases, tied embeddings, a sliding
window, a scaled RoPE, another activation, or a head_dim other than hidden_size / num_attention_heads is refused
with the reason, never loaded approximately.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from kamado.atomic import atomic_write_bytes
from kamado.completion import write_record
from kamado.config import ModelConfig, RunConfig, TokenizerConfig, to_dict
from kamado.errors import CheckpointError, ConfigError, DataError
from kamado.model.transformer import Transformer
from kamado.serve.export_hf import ARCHITECTURE, TOKENIZER_FILES, finish_folder, start_folder
from kamado.tokenizer import Tokenizer
from kamado.train.checkpoint import save_checkpoint


def read_hf_config(hf_dir: Path) -> dict[str, Any]:
    if not hf_dir.is_dir():
        raise DataError(
            f"{hf_dir}: no such folder (give a Hugging Face model folder, e.g. one `kamado export hf` wrote)"
        )
    path = hf_dir / "config.json"
    if not path.is_file():
        raise DataError(f"{hf_dir}: not a Hugging Face model folder (no config.json)")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(config, dict):
        raise DataError(f"{path}: not a JSON object")
    return config


def model_config(config: dict[str, Any], where: Path) -> ModelConfig:
    """kamado's ModelConfig for a Qwen3 config.json; ConfigError naming what kamado's block cannot compute."""
    archs = config.get("architectures") or [config.get("model_type", "an unknown architecture")]
    if ARCHITECTURE not in archs:
        raise ConfigError(f"{where}: the model is {', '.join(map(str, archs))}; kamado imports {ARCHITECTURE} only")
    try:
        hidden, heads = int(config["hidden_size"]), int(config["num_attention_heads"])
        rope = config.get("rope_parameters") or config.get("rope_scaling") or {}
        theta = rope.get("rope_theta", config.get("rope_theta", 10000.0))
        problems = {
            "attention_bias": config.get("attention_bias", False) is not False,
            "tie_word_embeddings": config.get("tie_word_embeddings", False) is not False,
            "use_sliding_window": config.get("use_sliding_window", False) is not False,
            "hidden_act": config.get("hidden_act", "silu") != "silu",
            "rope type": rope.get("rope_type", rope.get("type", "default")) != "default",
            "head_dim": hidden % heads != 0 or config.get("head_dim", hidden // heads) != hidden // heads,
            "layer_types": any(t != "full_attention" for t in config.get("layer_types") or []),
        }
        cfg = ModelConfig(
            vocab_size=int(config["vocab_size"]),
            d_model=hidden,
            n_layers=int(config["num_hidden_layers"]),
            n_heads=heads,
            n_kv_heads=int(config.get("num_key_value_heads") or heads),
            ffn_hidden=int(config["intermediate_size"]),
            max_seq_len=int(config["max_position_embeddings"]),
            rope_theta=float(theta),
            norm_eps=float(config.get("rms_norm_eps", 1e-6)),
            qk_norm=True,
            init_std=float(config.get("initializer_range", 0.02)),
        )
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise ConfigError(f"{where}/config.json: missing or malformed field ({type(e).__name__}: {e})") from None
    bad = [name for name, wrong in problems.items() if wrong]
    if bad:
        raise ConfigError(
            f"{where}: this Qwen3 variant differs from kamado's block in {', '.join(bad)} "
            f"(kamado has no biases, an untied head, full attention, SwiGLU, plain RoPE, head_dim = d_model / n_heads)"
        )
    cfg.validate()
    return cfg


def read_hf_tensors(hf_dir: Path) -> dict[str, torch.Tensor]:
    """model.safetensors, or every shard a `model.safetensors.index.json` names."""
    index = hf_dir / "model.safetensors.index.json"
    try:
        if index.is_file():
            shards = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
        else:
            shards = ["model.safetensors"]
        tensors: dict[str, torch.Tensor] = {}
        for shard in shards:
            tensors |= load_file(str(hf_dir / shard))
    except (SafetensorError, OSError, ValueError, KeyError) as e:
        raise CheckpointError(f"{hf_dir}: cannot read the model weights ({type(e).__name__}: {e})") from None
    return tensors


def kamado_state_dict(tensors: dict[str, torch.Tensor], cfg: ModelConfig) -> dict[str, torch.Tensor]:
    """Qwen3 names → kamado names, q/k/v and gate/up concatenated into the fused rows (export's inverse)."""
    hf = {k: v for k, v in tensors.items() if not k.endswith("rotary_emb.inv_freq")}  # older files keep RoPE's table

    def take(name: str) -> torch.Tensor:
        if name not in hf:
            raise CheckpointError(f"the weights have no tensor {name}")
        return hf.pop(name)

    out = {"embed.weight": take("model.embed_tokens.weight")}
    for i in range(cfg.n_layers):
        p, k = f"model.layers.{i}.", f"layers.{i}."
        q_k_v = [take(p + f"self_attn.{n}_proj.weight") for n in ("q", "k", "v")]
        gate_up = [take(p + f"mlp.{n}_proj.weight") for n in ("gate", "up")]
        out |= {
            k + "attn_norm.weight": take(p + "input_layernorm.weight"),
            k + "attn.qkv_proj.weight": torch.cat(q_k_v, dim=0),
            k + "attn.o_proj.weight": take(p + "self_attn.o_proj.weight"),
            k + "attn.q_norm.weight": take(p + "self_attn.q_norm.weight"),
            k + "attn.k_norm.weight": take(p + "self_attn.k_norm.weight"),
            k + "mlp_norm.weight": take(p + "post_attention_layernorm.weight"),
            k + "mlp.gate_up_proj.weight": torch.cat(gate_up, dim=0),
            k + "mlp.down_proj.weight": take(p + "mlp.down_proj.weight"),
        }
    out["norm.weight"] = take("model.norm.weight")
    out["lm_head.weight"] = take("lm_head.weight")
    if hf:
        raise CheckpointError(f"the weights hold tensors kamado's block has no place for: {sorted(hf)[:5]}")
    return out


def import_hf(hf_dir: Path, out_run_dir: Path) -> Path:
    """Write a kamado run folder from `hf_dir`; return the checkpoint folder."""
    hf_dir, out = Path(hf_dir), Path(out_run_dir)
    cfg = model_config(read_hf_config(hf_dir), hf_dir)
    with torch.device("meta"):  # shapes only: the real tensors are assigned below, nothing is initialised
        model = Transformer(cfg)
    try:
        model.load_state_dict(kamado_state_dict(read_hf_tensors(hf_dir), cfg), strict=True, assign=True)
    except RuntimeError as e:  # a shape that does not match config.json
        raise CheckpointError(f"{hf_dir}: the weights do not match config.json ({str(e).splitlines()[-1]})") from None
    for name in TOKENIZER_FILES:
        if not (hf_dir / name).is_file():
            raise DataError(f"{hf_dir / name} is missing: kamado needs the tokenizer ({', '.join(TOKENIZER_FILES)})")
    tok = Tokenizer.load(hf_dir)  # DataError when it lacks kamado's special tokens
    if tok.vocab_size > cfg.vocab_size:
        raise ConfigError(f"{hf_dir}: the tokenizer has {tok.vocab_size} ids, the embedding {cfg.vocab_size} rows")
    run = RunConfig(name=out.name, out_dir=str(out), model=cfg, tokenizer=TokenizerConfig(vocab_size=tok.vocab_size))
    state = {"config": to_dict(run), "imported_from": str(hf_dir.resolve())}
    tmp = start_folder(out)
    try:
        (tmp / "tokenizer").mkdir()
        for name in TOKENIZER_FILES:
            atomic_write_bytes(tmp / "tokenizer" / name, (hf_dir / name).read_bytes())
        write_record(tmp / "tokenizer", {"vocab_size": tok.vocab_size})  # as `kamado run` marks its tokenizer
        ckpt = save_checkpoint(tmp / "checkpoints", 0, model, None, state)
        finish_folder(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out / "checkpoints" / ckpt.name
