"""`kamado run RECIPE`: every stage of the recipe, in order, into one run folder.

    WARC sample -> web corpus -> (+ sample texts) tokenizer -> shards -> pre-training -> held-out bits/char vs xz
    -> generation (serving engine) -> export (transformers, GGUF) -> report

Each stage writes its output under the run folder and is skipped when that output is already complete, so
re-running the same command after a kill continues where it stopped (training resumes from its last checkpoint).
Later stages of the PLaMo recipe (SFT, DPO, merging, evaluation, serving) join here.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rich.console import Console

from kamado.atomic import atomic_write_text
from kamado.completion import clear_record, read_record, write_record
from kamado.config import RunConfig, SourceConfig
from kamado.data.jsonl import iter_jsonl_texts
from kamado.data.tokenize import tokenize_files
from kamado.errors import ConfigError, DataError
from kamado.eval.bits_per_char import XzBaseline, model_bits_per_char
from kamado.eval.pfgen.stage import pfgen_stage
from kamado.faults import failpoint
from kamado.filehash import HashCache, sha256_file
from kamado.recipe import distributed
from kamado.recipe.cached import cached, files_sha256, weights_sha256
from kamado.recipe.evaluation import jaster_stage, judge_stage
from kamado.recipe.inputs import check_same_inputs, fingerprint
from kamado.recipe.posttrain import posttrain_stages
from kamado.recipe.report import plot_losses, read_jsonl, write_report
from kamado.serve.engine import Engine, GenParams
from kamado.serve.export_gguf import export_gguf
from kamado.serve.export_hf import export_hf
from kamado.serve.hf_check import compare_with_transformers
from kamado.tokenizer import Tokenizer
from kamado.tokenizer.train import train_tokenizer
from kamado.train.pretrain import pretrain, wants_distributed

console = Console()


def resolve(path: str, base: Path) -> Path:
    """Recipe paths are relative to the recipe file (so `kamado run` works from any folder)."""
    p = Path(path)
    return p if p.is_absolute() else (base / p).resolve()


class Stages:
    """Times each stage and records it in the summary."""

    def __init__(self, summary: dict[str, Any]):
        self.summary = summary

    def run(self, name: str, fn: Callable[[], Any]) -> Any:
        console.rule(f"[bold]{name}")
        t0 = time.perf_counter()
        out = fn()
        self.summary["stage_seconds"][name] = time.perf_counter() - t0
        return out


def web_corpus(cfg: RunConfig, warc_dir: Path, out: Path) -> dict[str, Any]:
    """`kamado corpus run` on the recipe's WARC folder (skipped when a finished run is there); its summary."""
    from kamado.corpus.pipeline import run_corpus

    done = out / "corpus_summary.json"
    if done.is_file() and (out / "shards" / "manifest.json").is_file():  # the summary is written after the shards
        result: dict[str, Any] = json.loads(done.read_text(encoding="utf-8"))
        if not (out / "corpus_report.md").is_file():  # killed between the summary and the report
            from kamado.corpus.report import write_corpus_report

            write_corpus_report(out, result)
    else:
        result = run_corpus(cfg.corpus.web, warc_dir, out)
    if not result["documents_out"]:
        raise DataError(f"{warc_dir}: the web corpus pipeline kept no documents (see {out / 'corpus_report.md'})")
    return result


def run_recipe(cfg: RunConfig, recipe_path: Path) -> dict[str, Any]:
    if not distributed.start(cfg):  # under torchrun, ranks other than 0 only pre-train (kamado.recipe.distributed)
        return distributed.follow(cfg)
    base = recipe_path.resolve().parent
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if not cfg.corpus.sources:
        raise ConfigError(f"{recipe_path}: [corpus] sources is empty; a recipe needs at least one source")
    sources = {name: [resolve(f, base) for f in files] for name, files in cfg.corpus.sources.items()}
    heldout = {
        k: resolve(v, base) for k, v in (("ja", cfg.corpus.heldout_file), ("en", cfg.corpus.heldout_en_file)) if v
    }
    for paths in [*sources.values(), heldout.values()]:
        for p in paths:
            if not p.is_file():
                raise DataError(f"{p}: file not found (named in {recipe_path}'s [corpus])")
    hashes = HashCache(out / "checks" / "file_sha256.json")  # by size and mtime: unchanged files are not read again
    inputs = fingerprint(cfg, sources, heldout, hashes)  # the files' SHA-256, the tokenizer settings
    check_same_inputs(out, inputs)  # a rerun with other inputs stops here
    hashes.save()
    summary: dict[str, Any] = {"name": cfg.name, "stage_seconds": {}, "data_rows": [], "train_rows": []}
    stages = Stages(summary)
    t_start = time.perf_counter()

    # 0. web corpus: WARC -> Japanese Markdown -> quality -> dedup -> shards (kamado.corpus) -------------------
    if cfg.corpus.warc_dir:
        if cfg.corpus.warc_source in sources:
            raise ConfigError(f"corpus.warc_source = '{cfg.corpus.warc_source}' is also a name in corpus.sources")
        web_dir = out / "corpus"
        summary["web_corpus"] = stages.run(
            "web corpus", lambda: web_corpus(cfg, resolve(cfg.corpus.warc_dir, base), web_dir)
        )
        sources[cfg.corpus.warc_source] = sorted((web_dir / "shards").glob("shard_*.jsonl.gz"))

    # 1. tokenizer ------------------------------------------------------------------------------------------
    # A tokenizer this recipe trains counts as done by its completion record; one the user points at
    # (tokenizer.path) is used as it is whenever it holds a tokenizer.json.
    tok_dir = Path(cfg.tokenizer.path) if cfg.tokenizer.path else out / "tokenizer"
    all_files = [f for files in sources.values() for f in files]
    user_tok = bool(cfg.tokenizer.path) and (tok_dir / "tokenizer.json").is_file()
    if not user_tok and read_record(tok_dir) is None:
        stages.run("tokenizer", lambda: train_tokenizer(iter_jsonl_texts(list(all_files)), tok_dir, cfg.tokenizer))
    tok = Tokenizer.load(tok_dir)
    if cfg.model.vocab_size != tok.vocab_size:
        cfg.model.vocab_size = tok.vocab_size  # the embedding covers exactly the learned vocabulary

    # 2. shards ---------------------------------------------------------------------------------------------
    tok_sha = sha256_file(tok_dir / "tokenizer.json")

    def shard(name: str, files: list[Path]) -> dict[str, Any]:
        dest = out / "data" / name
        done = read_record(dest)  # written after the shards and their manifest: the stage is whole...
        if done is not None and done.get("tokenizer_sha256") == tok_sha:  # ...and made with this tokenizer
            return done
        clear_record(dest)
        stats = tokenize_files(files, tok, dest, progress=True)
        failpoint("shards.before_record")
        write_record(dest, {**stats, "tokenizer_sha256": tok_sha})
        return stats

    def all_shards() -> dict[str, dict[str, Any]]:
        result = {name: shard(name, files) for name, files in sources.items()}
        result |= {f"heldout_{k}": shard(f"heldout_{k}", [p]) for k, p in heldout.items()}
        return result

    shard_stats = stages.run("shards", all_shards)
    for name, st in shard_stats.items():
        text = f"{st['docs']} docs, {st['chars']:,} chars, {st['tokens']:,} tokens"
        summary["data_rows"].append((name, f"{text}, {st['chars_per_token']:.2f} chars/token"))
    summary["data_rows"].append(("tokenizer", f"byte-level BPE, {tok.vocab_size} ids, `{tok_dir}`"))
    if not cfg.data.sources:
        cfg.data.sources = [SourceConfig(name, str(out / "data" / name)) for name in sources]
    if not cfg.data.val_sources:
        cfg.data.val_sources = [SourceConfig(f"heldout_{k}", str(out / "data" / f"heldout_{k}")) for k in heldout]

    # 3. pre-training ---------------------------------------------------------------------------------------
    distributed.share_config(cfg)
    result = stages.run("pretrain", lambda: pretrain(cfg))
    trainer = result["trainer"]
    model = distributed.pretrained_model(out) if wants_distributed(cfg) else trainer.model
    result["num_params"] = sum(p.numel() for p in model.parameters())
    rows = [r for r in read_jsonl(out / "metrics.jsonl") if "tokens_per_s" in r]
    c, t = cfg.model, cfg.train
    summary["train_rows"] += [
        (
            "parameters",
            f"{result['num_params']:,} (d={c.d_model}, layers={c.n_layers}, heads={c.n_heads}/{c.n_kv_heads} kv)",
        ),
        ("QK-Norm / Z-loss", f"{c.qk_norm} / {t.z_loss}"),
        (
            "steps × tokens/step",
            f"{t.steps} × {trainer.tokens_per_step:,} = {t.steps * trainer.tokens_per_step:,} tokens",
        ),
        ("schedule", f"{cfg.schedule.kind}, peak lr {cfg.optim.lr}, warmup {cfg.schedule.warmup_steps}"),
    ]
    if rows:
        tps = sum(r["tokens_per_s"] for r in rows) / len(rows)
        mfu = sum(r["mfu"] for r in rows) / len(rows)
        summary["train_rows"] += [
            ("final train CE", f"{rows[-1]['ce']:.3f} nats/token"),
            (
                "throughput",
                f"{tps:,.0f} tokens/s, MFU {100 * mfu:.1f}% of a measured {trainer.peak_flops / 1e9:.0f} GFLOP/s",
            ),
        ]
    if result.get("eval"):
        summary["train_rows"].append(("final validation CE", f"{result['eval']['val_ce']:.3f} nats/token"))
    plot_losses(out / "metrics.jsonl", out / "loss.png", f"kamado {cfg.name}: pre-training loss")

    # 4. held-out bits per character vs xz ------------------------------------------------------------------
    def compression() -> dict[str, dict[str, float]]:
        xz = XzBaseline([d for f in all_files for d in iter_jsonl_texts([f])])
        res = {}
        for key, path in heldout.items():
            docs = list(iter_jsonl_texts([path]))
            res[f"{key} ({path.name})"] = {
                "model": model_bits_per_char(model, tok, docs, context=cfg.data.seq_len),
                "xz": xz.bits_per_char(docs),
            }
            failpoint("recipe.during_bits_per_char")
        return res

    weights_sha = weights_sha256(model)  # bits/char and the export check are kept for a rerun (recipe.cached)
    web = sources.get(cfg.corpus.warc_source, []) if cfg.corpus.warc_dir else []  # the rest is in `inputs`
    texts = {"weights": weights_sha, "tokenizer": tok_sha, "inputs": inputs, "web": files_sha256(web, hashes.sha256)}
    hashes.save()
    checks = out / "checks"
    summary["bits_per_char"] = stages.run(
        "bits/char vs xz",
        lambda: cached(checks / "bits_per_char", {**texts, "context": cfg.data.seq_len}, compression),
    )
    for name, r in summary["bits_per_char"].items():
        console.print(f"{name}: model {r['model']:.3f} bits/char, xz {r['xz']:.3f} bits/char")

    # 5. generation through the serving engine (all prompts in one continuous batch) --------------------------
    def samples() -> list[tuple[str, str]]:
        g = cfg.generate
        engine = Engine(model, tok, max_batch=max(1, len(g.prompts)))
        params = [
            GenParams(g.max_new_tokens, g.temperature, g.top_k, g.top_p, g.seed + i) for i in range(len(g.prompts))
        ]
        t0 = time.perf_counter()
        done = engine.generate([tok.encode(p) for p in g.prompts], params)
        seconds = time.perf_counter() - t0
        n = sum(len(r.token_ids) for r in done)
        summary["serve_rows"] = [
            (
                "engine",
                f"{len(done)} prompts in one continuous batch, {n} new tokens in {seconds:.2f} s "
                f"({n / seconds:,.0f} tokens/s, {engine.steps} steps)",
            ),
        ]
        pairs = []
        for prompt, r in zip(g.prompts, done, strict=True):
            pairs.append((prompt, r.text.replace("\n", " ")))
            console.print(f"[bold]{prompt}[/bold] → {pairs[-1][1]}")
        return pairs

    summary["samples"] = stages.run("generate", samples)

    # 6. export: a Hugging Face folder checked against kamado's own logits and greedy tokens, and a GGUF file -----
    def export() -> list[tuple[str, str]]:
        hf_dir, gguf_file = out / "export" / "hf", out / "export" / "model.gguf"
        if not (hf_dir / "model.safetensors").is_file():  # folders and files appear whole (written, then renamed)
            export_hf(model, tok_dir, hf_dir)
        if not gguf_file.is_file():
            export_gguf(model, tok_dir, gguf_file, "f16")
        doc = next(iter_jsonl_texts([next(iter(heldout.values()))]))
        ids = tok.encode(doc)[: cfg.model.max_seq_len]
        hf_sha, new_tokens = files_sha256(sorted(hf_dir.iterdir())), cfg.generate.max_new_tokens
        ids_sha = hashlib.sha256(str(ids).encode()).hexdigest()
        key = {"weights": weights_sha, "hf": hf_sha, "ids": ids_sha, "new_tokens": new_tokens}
        check = cached(
            checks / "export",
            key,
            lambda: compare_with_transformers(model, hf_dir, ids, new_tokens=new_tokens),
        )
        console.print(f"export: transformers logits within {check['max_abs_logit_diff']:.2g} of kamado's")
        return [
            ("Hugging Face folder", f"{hf_dir} ({sum(f.stat().st_size for f in hf_dir.iterdir()) / 1e6:.1f} MB)"),
            (
                "transformers vs kamado",
                f"largest logit difference {check['max_abs_logit_diff']:.2g} on {len(ids)} held-out tokens (fp32); "
                f"greedy {check['new_tokens']} tokens {'identical' if check['greedy_equal'] else 'DIFFERENT'}",
            ),
            ("GGUF (f16, llama.cpp qwen3)", f"{gguf_file} ({gguf_file.stat().st_size / 1e6:.1f} MB)"),
        ]

    summary["serve_rows"] = summary.get("serve_rows", []) + stages.run("export", export)

    # 7. post-training: SFT -> DPO rounds -> merge -> held-out table (kamado.recipe.posttrain) -----------------
    if cfg.sft.data:
        summary["posttrain"] = posttrain_stages(cfg, base, out, stages.run)

    # 8. evaluation: jaster and pfgen-bench on every model, judge benchmarks on the post-trained ones ------------
    if cfg.jaster.data:
        models = summary.get("posttrain", {}).get("models") or [("pre-trained", str(out))]
        summary["jaster"] = stages.run("jaster", lambda: jaster_stage(cfg, base, out, models))
    if cfg.pfgen.data:
        models = summary.get("posttrain", {}).get("models") or [("pre-trained", str(out))]
        summary["pfgen"] = stages.run("pfgen", lambda: pfgen_stage(cfg.pfgen, base, out, models))
    if cfg.judge.benches:
        models = summary.get("posttrain", {}).get("models") or [("pre-trained", str(out))]
        summary["judge"] = stages.run("judge", lambda: judge_stage(cfg, base, out, models))
    summary["stability_events"] = read_jsonl(out / "events.jsonl")
    summary["stage_seconds"]["total"] = time.perf_counter() - t_start
    summary["finished"] = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    failpoint("recipe.before_summary")
    write_report(out, summary)
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=1, ensure_ascii=False, default=str))
    console.print(f"report: {out / 'report.md'}")
    return summary
