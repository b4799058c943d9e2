"""Does llama.cpp run kamado's GGUF export as kamado runs the model? Greedy tokens and last-position logits compared.

llama.cpp (through `llama-cpp-python`, which builds it from source: `.venv/bin/pip install llama-cpp-python`; not a
kamado dependency) loads the file `kamado export gguf` writes, then for each prompt both sides get the *same token
ids* (kamado's tokenizer) and decode greedily; the script prints the largest logit difference at the prompt's last
position and whether the generated tokens are identical. It also reports how often llama.cpp's own tokenizer (the
`qwen2` pre-tokenizer, the nearest it has to kamado's Japanese-aware split) gives kamado's ids for the prompt text.

    .venv/bin/python bench/gguf_llamacpp_check.py                    # a random model with non-unit norms
    .venv/bin/python bench/gguf_llamacpp_check.py --run runs/tiny    # a trained run (its newest checkpoint)
    .venv/bin/python bench/gguf_llamacpp_check.py --dtype f16 --kv-f16

Measured (llama-cpp-python 0.3.36 built from source, 2-core CPU, random 1.2M-parameter model, 5 prompts × 32
tokens): f32 file, f32 K/V cache: max |logit diff| ≤ 6.7e-06, greedy tokens identical 5/5; with llama.cpp's default
f16 K/V cache: ≤ 4.1e-03, 5/5. f16 file: ≤ 5.9e-03, 5/5. bf16 file: ≤ 4.3e-02, 3-5/5 depending on near-ties (ggml's
CPU matmul also rounds the activations to the weights' f16/bf16; kamado is given the file's rounded weights).
llama.cpp's tokenizer gave kamado's ids for 3/5 prompts (the two Japanese ones ending in 。/、 split differently).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from kamado.config import ModelConfig, TokenizerConfig
from kamado.data.jsonl import iter_jsonl_texts
from kamado.model.generate import SamplingParams, generate
from kamado.model.transformer import Transformer
from kamado.serve.export_gguf import export_gguf
from kamado.tokenizer import Tokenizer
from kamado.tokenizer.train import train_tokenizer
from kamado.train.checkpoint import load_model

SAMPLES = Path(__file__).resolve().parents[1] / "samples"
F32 = 0  # GGML_TYPE_F32: a float32 K/V cache, so that only the weights' dtype can differ from kamado
ROUNDED = {"f16": torch.float16, "bf16": torch.bfloat16}
PROMPTS = ["吾輩は猫である。", "東京は2024年3月に", "The quick brown fox", "「坊っちゃん」の作者は", "こんにちは、"]


def random_run(work: Path) -> tuple[Transformer, Path]:
    """A tokenizer learned from the samples and a random model shaped like the tests' (GQA, non-unit norms)."""
    texts = iter_jsonl_texts([SAMPLES / "ja_aozora.jsonl.gz", SAMPLES / "en_web.jsonl.gz"])
    tok_dir = train_tokenizer(texts, work / "tokenizer", TokenizerConfig(vocab_size=2000, max_train_chars=2_000_000))
    cfg = ModelConfig(Tokenizer.load(tok_dir).vocab_size, 128, 4, 8, 2, 352, 256, rope_theta=1e6, init_std=0.1)
    torch.manual_seed(0)
    model = Transformer(cfg)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 1:
                p.uniform_(0.5, 1.5)
    return model.eval(), tok_dir


def llama_greedy(llm, ids: list[int], n: int, stops: set[int]) -> tuple[list[int], np.ndarray]:
    """Greedy decoding by hand (argmax of llama.cpp's logits), and the logits at the prompt's last position."""
    llm.reset()
    llm.eval(ids)
    first = np.array(llm.scores[llm.n_tokens - 1], dtype=np.float32)
    out: list[int] = []
    logits = first
    while len(out) < n:
        nxt = int(np.argmax(logits))
        out.append(nxt)
        if nxt in stops:
            break
        llm.eval([nxt])
        logits = np.array(llm.scores[llm.n_tokens - 1], dtype=np.float32)
    return out, first


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", help="run or checkpoint folder (default: a random model)")
    ap.add_argument("--dtype", choices=["f32", "f16", "bf16"], default="f32")
    ap.add_argument("--tokens", type=int, default=32, help="new tokens per prompt")
    ap.add_argument("--unrounded", action="store_true", help="kamado keeps float32 weights (default: the file's)")
    ap.add_argument("--kv-f16", action="store_true", help="llama.cpp's default f16 K/V cache (default here: f32)")
    args = ap.parse_args()
    from llama_cpp import Llama  # imported here: the error names the missing package

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        if args.run:
            model, found = load_model(args.run)
            tok_dir = found.parent.parent / "tokenizer"
        else:
            model, tok_dir = random_run(work)
        tok = Tokenizer.load(tok_dir)
        t0 = time.perf_counter()
        export_gguf(model, tok_dir, work / "model.gguf", args.dtype)
        print(f"exported {args.dtype} GGUF in {time.perf_counter() - t0:.2f} s ({model.num_params():,} parameters)")
        kv = {} if args.kv_f16 else {"type_k": F32, "type_v": F32}
        if args.dtype != "f32" and not args.unrounded:  # compare the mapping, not the rounding: same weights both sides
            with torch.no_grad():
                for w in model.parameters():
                    if w.dim() > 1:  # the matrices the file holds in f16/bf16 (norms stay float32 there too)
                        w.copy_(w.to(ROUNDED[args.dtype]).float())
        llm = Llama(
            str(work / "model.gguf"), n_ctx=model.cfg.max_seq_len, n_threads=2, logits_all=True, verbose=False, **kv
        )
        stops = {tok.eos_id, tok.token_id("<|im_end|>")}
        same_tokens = same_ids = 0
        for prompt in PROMPTS:
            ids = tok.encode(prompt)
            ours = generate(model, ids, SamplingParams(args.tokens, temperature=0, stop_ids=tuple(stops)))
            with torch.no_grad():
                our_logits = model(torch.tensor([ids]))[0, -1].numpy()
            theirs, their_logits = llama_greedy(llm, ids, args.tokens, stops)
            llama_ids = llm.tokenize(prompt.encode(), add_bos=False, special=False)
            same_tokens += ours == theirs
            same_ids += llama_ids == ids
            agree = next(
                (i for i, (a, b) in enumerate(zip(ours, theirs, strict=False)) if a != b), min(len(ours), len(theirs))
            )
            print(
                f"{prompt!r}: max |logit diff| {np.abs(our_logits - their_logits).max():.2e} "
                f"(max |logit| {np.abs(our_logits).max():.2f}); greedy tokens identical: {ours == theirs} "
                f"(first {agree} of {len(ours)} agree); llama.cpp's own tokenization: "
                f"{'same ids' if llama_ids == ids else f'{len(llama_ids)} ids vs kamado {len(ids)}'}"
            )
        print(f"tokenizer ids identical: {same_ids}/{len(PROMPTS)} prompts")
        print(f"greedy tokens identical: {same_tokens}/{len(PROMPTS)} prompts")


if __name__ == "__main__":
    main()
