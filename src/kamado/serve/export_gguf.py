"""Export a kamado model as one GGUF file laid out the way llama.cpp's `convert_hf_to_gguf.py` lays out Qwen3.

The path is the converter's own: kamado's weights are first given their Hugging Face Qwen3 names
(`kamado.serve.export_hf.hf_state_dict`), then renamed with gguf-py's tensor map for `MODEL_ARCH.QWEN3`
(token_embd, blk.N.attn_q/k/v/output, attn_q_norm/attn_k_norm, attn_norm, ffn_gate/up/down, ffn_norm, output_norm,
output). Q and K are *not* permuted: the converter permutes them only for the LLaMA architecture, whose GGUF RoPE is
the interleaved kind, while llama.cpp runs Qwen3 with NEOX (rotate-half) RoPE — kamado's convention. As in the
converter, 1-D tensors (every norm) stay float32 and the matrices take the requested dtype.

Tokenizer: `tokenizer.ggml.model = "gpt2"` (byte-level BPE) with the vocabulary, merges, token types (special
tokens CONTROL) and special ids of the kamado tokenizer, and its chat template. llama.cpp hard-codes its
pre-tokenizers and has none for kamado's (a split that keeps a kanji stem with its kana ending and a trailing 、/。);
`qwen2` is the nearest: the same single digits, punctuation and whitespace rules and the same letter-run rule for
other scripts. On the held-out samples (vocabulary 2000) it gives identical ids for English and 3.9 % more tokens,
in different places, for Japanese. Every id sequence still decodes to the same text, and a model given the same ids
computes the same thing; only prompts that llama.cpp tokenizes itself start from a slightly different split.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import gguf
import torch

from kamado.atomic import fsync_dir
from kamado.errors import ConfigError, DataError
from kamado.model.transformer import Transformer
from kamado.serve.export_hf import check_exportable, hf_state_dict, load_tokenizer

PRE_TOKENIZER = "qwen2"
FILE_TYPES = {
    "f32": (gguf.LlamaFileType.ALL_F32, gguf.GGMLQuantizationType.F32),
    "f16": (gguf.LlamaFileType.MOSTLY_F16, gguf.GGMLQuantizationType.F16),
    "bf16": (gguf.LlamaFileType.MOSTLY_BF16, gguf.GGMLQuantizationType.BF16),
}


def gguf_tensors(model: Transformer) -> dict[str, torch.Tensor]:
    """GGUF name → tensor (torch layout, float32), in the converter's order."""
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.QWEN3, model.cfg.n_layers)
    out = {}
    for hf_name, tensor in hf_state_dict(model).items():
        new = names.get_name(hf_name, try_suffixes=(".weight",))
        assert new is not None, f"gguf-py has no QWEN3 name for {hf_name}"
        out[new] = tensor.float()
    return out


def tensor_type(name: str, tensor: torch.Tensor, qtype: gguf.GGMLQuantizationType) -> gguf.GGMLQuantizationType:
    """The converter's rule: vectors and norms in float32 (llama.cpp's kernels expect it), matrices in `qtype`."""
    if tensor.dim() <= 1 or name.endswith("_norm.weight"):
        return gguf.GGMLQuantizationType.F32
    return qtype


def tokenizer_fields(tokenizer_dir: Path, vocab_size: int) -> tuple[list[str], list[int], list[str]]:
    """(tokens by id, token types, merges as "a b"), padded to the embedding's rows like the converter does."""
    data = json.loads((tokenizer_dir / "tokenizer.json").read_text(encoding="utf-8"))
    model = data.get("model", {})
    if model.get("type") != "BPE":
        raise DataError(
            f"{tokenizer_dir}/tokenizer.json: a {model.get('type')} model; GGUF export needs byte-level BPE"
        )
    vocab: dict[str, int] = dict(model["vocab"])
    special = {t["content"] for t in data.get("added_tokens", []) if t.get("special")}
    vocab |= {t["content"]: t["id"] for t in data.get("added_tokens", [])}
    by_id = {i: t for t, i in vocab.items()}
    tokens, types = [], []
    for i in range(vocab_size):
        if i not in by_id:
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
        else:
            tokens.append(by_id[i])
            types.append(gguf.TokenType.CONTROL if by_id[i] in special else gguf.TokenType.NORMAL)
    # tokenizers >= 0.20 writes merges as pairs; GGUF keeps the older "a b" strings (byte-level tokens hold no space)
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    return tokens, [int(t) for t in types], merges


def export_gguf(model: Transformer, tokenizer_dir: Path, out_file: Path, dtype: str = "f16", name: str = "") -> None:
    """Write `out_file` (via `out_file.tmp`, renamed into place) as llama.cpp's Qwen3 GGUF."""
    tokenizer_dir, out_file = Path(tokenizer_dir), Path(out_file)
    if dtype not in FILE_TYPES:
        raise ConfigError(f"--dtype {dtype!r}: choose one of {', '.join(FILE_TYPES)}")
    if out_file.is_dir():
        raise ConfigError(f"{out_file} is a folder: --out must name a .gguf file")
    cfg = model.cfg
    check_exportable(cfg)
    tok = load_tokenizer(tokenizer_dir, cfg)
    tokens, types, merges = tokenizer_fields(tokenizer_dir, cfg.vocab_size)
    template = json.loads((tokenizer_dir / "tokenizer_config.json").read_text(encoding="utf-8")).get("chat_template")
    file_type, qtype = FILE_TYPES[dtype]

    out_file.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_file.with_name(out_file.name + ".tmp")
    w = gguf.GGUFWriter(tmp, gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.QWEN3])
    w.add_type(gguf.GGUFType.MODEL)
    w.add_name(name or out_file.stem)
    w.add_block_count(cfg.n_layers)
    w.add_context_length(cfg.max_seq_len)
    w.add_embedding_length(cfg.d_model)
    w.add_feed_forward_length(cfg.ffn_hidden)
    w.add_head_count(cfg.n_heads)
    w.add_head_count_kv(cfg.n_kv_heads)
    w.add_rope_freq_base(cfg.rope_theta)
    w.add_layer_norm_rms_eps(cfg.norm_eps)
    w.add_key_length(cfg.head_dim)
    w.add_value_length(cfg.head_dim)
    w.add_file_type(file_type)
    w.add_quantization_version(gguf.GGML_QUANT_VERSION)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(PRE_TOKENIZER)
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merges)
    w.add_bos_token_id(tok.eos_id)  # as config.json: no BOS of its own, and never prepended (add_bos_token false)
    w.add_eos_token_id(tok.eos_id)
    w.add_pad_token_id(tok.pad_id)
    w.add_add_bos_token(False)
    if template:
        w.add_chat_template(template)
    for tname, tensor in gguf_tensors(model).items():
        kind = tensor_type(tname, tensor, qtype)
        w.add_tensor(tname, gguf.quants.quantize(tensor.numpy(), kind), raw_dtype=kind)
    try:
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, out_file)
        fsync_dir(out_file.parent)
    except BaseException:
        w.close()
        tmp.unlink(missing_ok=True)
        raise
