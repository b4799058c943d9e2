"""GGUF export read back with gguf's own reader: llama.cpp's Qwen3 tensor names, GGUF's reversed shapes, dtypes (norms
float32), every tensor's data against kamado's weights, the metadata keys, and the BPE tokenizer (tokens, types,
merges, special ids, chat template); where llama-cpp-python is installed, llama.cpp itself runs the file."""

from __future__ import annotations

import json
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch

from kamado.model.generate import SamplingParams, generate
from kamado.model.transformer import Transformer
from kamado.serve.export_gguf import export_gguf
from kamado.tokenizer import Tokenizer
from kamado.tokenizer.train import SPECIAL_TOKENS

from .export_run import EPS, THETA


def gguf_expected(model: Transformer) -> dict[str, torch.Tensor]:
    """llama.cpp's Qwen3 tensor names → kamado's tensors, written out by hand (not through gguf's name map)."""
    c = model.cfg
    q, kv = c.n_heads * c.head_dim, c.n_kv_heads * c.head_dim
    out = {"token_embd.weight": model.embed.weight, "output_norm.weight": model.norm.weight}
    out["output.weight"] = model.lm_head.weight
    for i, b in enumerate(model.layers):
        qkv, gate_up = b.attn.qkv_proj.weight, b.mlp.gate_up_proj.weight
        assert b.attn.q_norm is not None and b.attn.k_norm is not None
        out |= {
            f"blk.{i}.attn_norm.weight": b.attn_norm.weight,
            f"blk.{i}.attn_q.weight": qkv[:q],
            f"blk.{i}.attn_k.weight": qkv[q : q + kv],
            f"blk.{i}.attn_v.weight": qkv[q + kv :],
            f"blk.{i}.attn_q_norm.weight": b.attn.q_norm.weight,
            f"blk.{i}.attn_k_norm.weight": b.attn.k_norm.weight,
            f"blk.{i}.attn_output.weight": b.attn.o_proj.weight,
            f"blk.{i}.ffn_norm.weight": b.mlp_norm.weight,
            f"blk.{i}.ffn_gate.weight": gate_up[: c.ffn_hidden],
            f"blk.{i}.ffn_up.weight": gate_up[c.ffn_hidden :],
            f"blk.{i}.ffn_down.weight": b.mlp.down_proj.weight,
        }
    return {k: v.detach() for k, v in out.items()}


def field(reader: gguf.GGUFReader, key: str):
    return reader.fields[key].contents()


@pytest.mark.parametrize("dtype", ["f16", "bf16", "f32"])
def test_gguf_tensors(model: Transformer, run: Path, tmp_path: Path, dtype: str) -> None:
    export_gguf(model, run / "tokenizer", tmp_path / "m.gguf", dtype)
    reader = gguf.GGUFReader(tmp_path / "m.gguf")
    want = gguf_expected(model)
    assert sorted(t.name for t in reader.tensors) == sorted(want)
    matrix = {"f16": "F16", "bf16": "BF16", "f32": "F32"}[dtype]
    for t in reader.tensors:
        w = want[t.name]
        assert list(t.shape) == list(reversed(w.shape)), t.name  # GGUF lists dimensions innermost first
        assert t.tensor_type.name == ("F32" if w.dim() == 1 else matrix), t.name
        if t.tensor_type.name == "BF16":  # raw bytes: compare the bit patterns torch's rounding gives
            got = torch.from_numpy(np.array(t.data).view(np.int16).reshape(w.shape))
            assert torch.equal(got, w.to(torch.bfloat16).view(torch.int16)), t.name
        else:
            cast = torch.float16 if t.tensor_type.name == "F16" else torch.float32
            assert torch.equal(torch.from_numpy(np.array(t.data)).reshape(w.shape), w.to(cast)), t.name
    assert field(reader, "general.file_type") == {"f32": 0, "f16": 1, "bf16": 32}[dtype]


def test_gguf_metadata_and_tokenizer(model: Transformer, run: Path, tok: Tokenizer, tmp_path: Path) -> None:
    export_gguf(model, run / "tokenizer", tmp_path / "m.gguf")
    r = gguf.GGUFReader(tmp_path / "m.gguf")
    c = model.cfg
    assert field(r, "general.architecture") == "qwen3"
    expect = {"context_length": 64, "embedding_length": 64, "block_count": 2, "feed_forward_length": 96}
    expect |= {"attention.head_count": 4, "attention.head_count_kv": 2, "attention.key_length": 16}
    expect |= {"attention.value_length": 16, "rope.freq_base": THETA}
    for key, value in expect.items():
        assert field(r, f"qwen3.{key}") == value, key
    assert field(r, "qwen3.attention.layer_norm_rms_epsilon") == pytest.approx(EPS, rel=1e-6)
    tj = json.loads((run / "tokenizer" / "tokenizer.json").read_text())
    vocab = {i: t for t, i in tj["model"]["vocab"].items()}
    assert field(r, "tokenizer.ggml.model") == "gpt2" and field(r, "tokenizer.ggml.pre") == "qwen2"
    tokens, types = field(r, "tokenizer.ggml.tokens"), field(r, "tokenizer.ggml.token_type")
    n = tok.vocab_size
    assert len(tokens) == len(types) == c.vocab_size
    assert tokens[:n] == [vocab[i] for i in range(n)] and tokens[n:] == [f"[PAD{i}]" for i in range(n, n + 3)]
    assert types[: len(SPECIAL_TOKENS)] == [3] * len(SPECIAL_TOKENS)  # CONTROL
    assert set(types[len(SPECIAL_TOKENS) : n]) == {1} and types[n:] == [5] * 3  # NORMAL, UNUSED
    assert field(r, "tokenizer.ggml.merges") == [" ".join(m) for m in tj["model"]["merges"]]
    assert field(r, "tokenizer.ggml.eos_token_id") == tok.eos_id == field(r, "tokenizer.ggml.bos_token_id")
    assert field(r, "tokenizer.ggml.padding_token_id") == tok.pad_id
    assert field(r, "tokenizer.ggml.add_bos_token") is False
    assert field(r, "tokenizer.chat_template") == tok.chat_template


@pytest.mark.slow
def test_llama_cpp_runs_the_gguf_as_kamado(model: Transformer, run: Path, tok: Tokenizer, tmp_path: Path) -> None:
    """Where llama-cpp-python is installed (not a dependency: it builds llama.cpp from source)."""
    llama_cpp = pytest.importorskip("llama_cpp")
    export_gguf(model, run / "tokenizer", tmp_path / "m.gguf", "f32")
    llm = llama_cpp.Llama(str(tmp_path / "m.gguf"), n_ctx=64, logits_all=True, verbose=False, type_k=0, type_v=0)
    for prompt in ("吾輩は", "The quick"):  # the same ids on both sides; f32 weights and K/V cache
        ids = tok.encode(prompt)
        ours = generate(model, ids, SamplingParams(max_new_tokens=16, temperature=0))
        llm.reset()
        llm.eval(ids)
        with torch.no_grad():
            want = model(torch.tensor([ids]))[0, -1].numpy()
        assert np.abs(np.array(llm.scores[len(ids) - 1]) - want).max() <= 1e-4  # measured 2.7e-06 (bench/)
        theirs = []
        for _ in range(16):
            theirs.append(int(np.argmax(llm.scores[llm.n_tokens - 1])))
            llm.eval([theirs[-1]])
        assert theirs == ours
