"""Export a kamado model as a Hugging Face folder that stock `transformers` loads as `Qwen3ForCausalLM`.

kamado's block is Qwen3's block (pre-norm RMSNorm, per-head q/k RMSNorm over head_dim before rotate-half RoPE, GQA,
SwiGLU, untied embedding and head, no biases, no sliding window), so no `trust_remote_code` is needed: the fused
`qkv_proj` rows [q | k | v] and `gate_up_proj` rows [gate | up] are split into Qwen3's separate projections and
every other tensor is renamed. Both RMSNorms compute x · rsqrt(mean(x²) + eps) · weight in float32 (kamado through
`F.rms_norm`, Qwen3RMSNorm by hand), and both RoPEs use inv_freq = theta^(-2i/d) on rotate-half pairs.

What Qwen3 cannot express is refused, not approximated: a model without QK-Norm (`model.qk_norm=false`). Unit q/k
norm weights would not stand in for "no norm" — RMSNorm still rescales every head vector to unit RMS.

End of sequence: `config.json` and the tokenizer keep `<|endoftext|>` (the document separator kamado pre-trains
with and `kamado generate` stops at); `generation_config.json` lists `<|endoftext|>` and `<|im_end|>`, so
`model.generate` stops at the end of a document and at the end of a chat turn alike (Qwen3's own releases do the
same). The folder is written to `OUT.tmp` and renamed into place, so a kill never leaves a half-written `OUT`.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any, cast

import torch
from safetensors import SafetensorError
from safetensors.torch import save_file

from kamado.atomic import atomic_write_bytes, atomic_write_text, fsync_dir
from kamado.config import ModelConfig
from kamado.errors import ConfigError, DataError, reraise_disk_error
from kamado.model.transformer import Block, Transformer
from kamado.tokenizer import Tokenizer
from kamado.tokenizer.train import EOS, PAD

ARCHITECTURE = "Qwen3ForCausalLM"
END_OF_TURN = "<|im_end|>"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")
DTYPE_NAMES = {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}


def check_exportable(cfg: ModelConfig) -> None:
    """ConfigError for a shape Qwen3 cannot express exactly."""
    if not cfg.qk_norm:
        raise ConfigError(
            "model.qk_norm=false cannot be exported: Qwen3 (the architecture transformers and llama.cpp load) always "
            "applies an RMSNorm to each head's q and k, and no norm weight turns that into the identity"
        )


def hf_state_dict(model: Transformer) -> dict[str, torch.Tensor]:
    """kamado's weights under Qwen3ForCausalLM's names, fused projections split (fresh contiguous CPU tensors)."""
    cfg = model.cfg
    q_rows, kv_rows = cfg.n_heads * cfg.head_dim, cfg.n_kv_heads * cfg.head_dim
    out = {"model.embed_tokens.weight": model.embed.weight}
    for i, block in enumerate(cast("list[Block]", model.layers)):
        p = f"model.layers.{i}."
        q, k, v = block.attn.qkv_proj.weight.split([q_rows, kv_rows, kv_rows], dim=0)
        gate, up = block.mlp.gate_up_proj.weight.chunk(2, dim=0)
        assert block.attn.q_norm is not None and block.attn.k_norm is not None  # check_exportable
        out |= {
            p + "input_layernorm.weight": block.attn_norm.weight,
            p + "self_attn.q_proj.weight": q,
            p + "self_attn.k_proj.weight": k,
            p + "self_attn.v_proj.weight": v,
            p + "self_attn.q_norm.weight": block.attn.q_norm.weight,
            p + "self_attn.k_norm.weight": block.attn.k_norm.weight,
            p + "self_attn.o_proj.weight": block.attn.o_proj.weight,
            p + "post_attention_layernorm.weight": block.mlp_norm.weight,
            p + "mlp.gate_proj.weight": gate,
            p + "mlp.up_proj.weight": up,
            p + "mlp.down_proj.weight": block.mlp.down_proj.weight,
        }
    out["model.norm.weight"] = model.norm.weight
    out["lm_head.weight"] = model.lm_head.weight
    # clone: safetensors refuses tensors that share storage (q, k, v are views of one matrix)
    return {name: t.detach().cpu().contiguous().clone() for name, t in out.items()}


def hf_config(cfg: ModelConfig, tok: Tokenizer, dtype: torch.dtype) -> dict[str, Any]:
    """config.json for Qwen3ForCausalLM. RoPE theta is written both ways transformers reads it: `rope_parameters`
    (transformers 5) and top-level `rope_theta` (transformers 4, llama.cpp's converter)."""
    eos = tok.eos_id
    return {
        "architectures": [ARCHITECTURE],
        "model_type": "qwen3",
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.d_model,
        "intermediate_size": cfg.ffn_hidden,
        "num_hidden_layers": cfg.n_layers,
        "num_attention_heads": cfg.n_heads,
        "num_key_value_heads": cfg.n_kv_heads,
        "head_dim": cfg.head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": cfg.max_seq_len,
        "initializer_range": cfg.init_std,
        "rms_norm_eps": cfg.norm_eps,
        "rope_theta": cfg.rope_theta,
        "rope_parameters": {"rope_type": "default", "rope_theta": cfg.rope_theta},
        "rope_scaling": None,
        "attention_bias": False,
        "attention_dropout": 0.0,
        "use_sliding_window": False,
        "sliding_window": None,
        "max_window_layers": cfg.n_layers,
        "layer_types": ["full_attention"] * cfg.n_layers,
        "tie_word_embeddings": False,
        "use_cache": True,
        "bos_token_id": eos,  # no BOS in kamado; Qwen3 names <|endoftext|> here too, and nothing ever prepends it
        "eos_token_id": eos,
        "pad_token_id": tok.pad_id,
        "dtype": DTYPE_NAMES[dtype],
        "torch_dtype": DTYPE_NAMES[dtype],  # the key transformers 4 reads
    }


def generation_config(tok: Tokenizer) -> dict[str, Any]:
    """Greedy by default (kamado leaves sampling to the caller); stops at a document's or a chat turn's end."""
    return {
        "bos_token_id": tok.eos_id,
        "eos_token_id": [tok.eos_id, tok.token_id(END_OF_TURN)],
        "pad_token_id": tok.pad_id,
        "do_sample": False,
    }


# ------------------------------------------------------------------------------------------------- folders
def start_folder(out: Path) -> Path:
    """Check `out` can become a new folder; return a fresh `out.tmp` to write into (a stale one is removed)."""
    if out.exists() and not out.is_dir():
        raise ConfigError(f"{out} exists and is a file: --out must name a new (or empty) folder")
    if out.is_dir() and any(out.iterdir()):
        raise ConfigError(f"{out} already exists and is not empty: remove it or choose another --out")
    tmp = out.with_name(out.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp) if tmp.is_dir() else tmp.unlink()
    tmp.mkdir(parents=True)
    return tmp


def finish_folder(tmp: Path, out: Path) -> None:
    """Rename the complete `tmp` onto `out` (an empty `out` is replaced) and make the rename durable."""
    if out.is_dir():
        out.rmdir()
    os.rename(tmp, out)
    fsync_dir(out.parent)


def save_tensors(tensors: dict[str, torch.Tensor], path: Path) -> None:
    """safetensors with the `format: pt` header transformers checks; fsync'ed; a full disk is one clear error."""
    try:
        save_file(tensors, str(path), metadata={"format": "pt"})
    except SafetensorError as e:
        reraise_disk_error(e, path)
        raise
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


def load_tokenizer(tokenizer_dir: Path, cfg: ModelConfig) -> Tokenizer:
    """The run's tokenizer, checked against the model's embedding and for the files an export copies."""
    tok = Tokenizer.load(tokenizer_dir)
    for name in TOKENIZER_FILES:
        if not (tokenizer_dir / name).is_file():
            raise DataError(f"{tokenizer_dir / name} is missing: a kamado tokenizer folder holds {TOKENIZER_FILES}")
    if tok.vocab_size > cfg.vocab_size:
        raise ConfigError(
            f"{tokenizer_dir}: the tokenizer has {tok.vocab_size} ids but the model's embedding only "
            f"{cfg.vocab_size} rows: this tokenizer does not belong to this model"
        )
    for special in (EOS, PAD, END_OF_TURN):
        tok.token_id(special)  # DataError when a special token is missing
    return tok


def export_hf(model: Transformer, tokenizer_dir: Path, out: Path) -> None:
    """Write `out/` = config.json, generation_config.json, model.safetensors, tokenizer.json, tokenizer_config.json."""
    tokenizer_dir, out = Path(tokenizer_dir), Path(out)
    check_exportable(model.cfg)
    tok = load_tokenizer(tokenizer_dir, model.cfg)
    tensors = hf_state_dict(model)
    dtype = tensors["lm_head.weight"].dtype
    if dtype not in DTYPE_NAMES:
        raise ConfigError(f"weights of dtype {dtype} cannot be exported (float32, bfloat16 or float16)")
    tmp = start_folder(out)
    try:
        save_tensors(tensors, tmp / "model.safetensors")
        atomic_write_text(tmp / "config.json", json.dumps(hf_config(model.cfg, tok, dtype), indent=2) + "\n")
        atomic_write_text(tmp / "generation_config.json", json.dumps(generation_config(tok), indent=2) + "\n")
        for name in TOKENIZER_FILES:  # byte for byte: the same vocabulary, merges, pre-tokenizer and chat template
            atomic_write_bytes(tmp / name, (tokenizer_dir / name).read_bytes())
        finish_folder(tmp, out)
    except BaseException:  # an error (a full disk) leaves nothing behind; a kill leaves OUT.tmp, removed next time
        shutil.rmtree(tmp, ignore_errors=True)
        raise
