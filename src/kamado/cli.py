"""The `kamado` command: one sub-command per stage of the pipeline.

    kamado run recipes/tiny.toml                     # everything, end to end, into one run folder
    kamado tokenizer train DOCS.jsonl... --out DIR   # learn a byte-level BPE tokenizer
    kamado tokenize DOCS.jsonl... --tokenizer DIR --out DIR
    kamado train recipes/small.toml --optim.lr=3e-4  # pre-train from a preset, dotted overrides
    kamado generate RUN_OR_CHECKPOINT --prompt "吾輩は"
    kamado params recipes/100b.toml                  # exact parameter count and FLOPs/token of a preset
    kamado plan recipes/100b.toml --gpus 1024 --gpu h100   # layouts that fit, memory per GPU, days to train
    kamado corpus run WARC_DIR --out DIR             # WARC → Japanese Markdown → filters → dedup → shards
    kamado corpus run WARC_DIR --out DIR --config recipes/corpus/common_crawl.toml --dedup.threshold=0.7
    kamado corpus train-quality LABELLED.jsonl --out DIR   # the learned quality classifier, chosen by CV
    kamado corpus eval-filters LABELLED.jsonl        # precision/recall/F1 of rules, classifier, both, on labelled text
    kamado chat RUN_OR_CHECKPOINT                    # talk to a model in the terminal (streaming, multi-turn)
    kamado serve RUN_OR_CHECKPOINT --port 8000       # OpenAI-compatible server + a web chat page at /
    kamado export hf RUN_OR_CHECKPOINT --out DIR     # a Qwen3 folder transformers loads; `export gguf` for llama.cpp
    kamado import hf DIR --out RUN_DIR               # back into a kamado run
    kamado eval jaster RUN --out DIR                 # jaster (llm-jp-eval v1.3); `eval judge`: MT-Bench, Rakuda

Errors a user can cause (bad config, missing or malformed input) print one line and exit with status 2. Training
stopped by SIGTERM or SIGUSR1 (a scheduler's time limit, `scancel`, preemption) saves the step in flight, prints one
line and exits with status 75; the same command continues (`kamado.train.stop`).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from kamado.config_checks import AT_LEAST_ONE, Range, check_value
from kamado.corpus.commands import add_corpus_quality_parsers
from kamado.errors import ConfigError, KamadoError, describe_os_error, user_os_error
from kamado.eval.commands import add_eval_parsers
from kamado.experiments.commands import add_experiment_parsers
from kamado.parallel.commands import add_parallel_parsers
from kamado.parallel.plan_commands import add_plan_parser
from kamado.posttrain.commands import add_posttrain_parsers
from kamado.posttrain.commands_data import add_posttrain_data_parser
from kamado.posttrain.commands_merge import add_merge_parsers
from kamado.serve.commands import add_serving_parsers
from kamado.serve.commands_export import add_export_parsers
from kamado.train.stop import EXIT_STOPPED, Stopped


def _split_overrides(argv: list[str]) -> tuple[list[str], list[str]]:
    """`--section.key=value` (and top-level keys of a run or corpus config, `--out_dir=...`, `--tasks=8`) are config
    overrides; the rest goes to argparse."""
    from dataclasses import fields

    from kamado.config import RunConfig
    from kamado.corpus.config import CorpusConfig

    top = {f.name for f in fields(RunConfig)} | {f.name for f in fields(CorpusConfig)}
    keys = {a: a[2:].split("=", 1)[0] for a in argv if a.startswith("--") and "=" in a}
    overrides = [a for a, k in keys.items() if "." in k or k in top]
    return [a for a in argv if a not in overrides], overrides


def _check_flags(args: argparse.Namespace, **ranges: Range) -> None:
    """Each flag's value in its range, before any work: `--top-p = 0.0: must be a number in (0, 1]`."""
    for name, allowed in ranges.items():
        check_value(f"--{name.replace('_', '-')}", getattr(args, name), allowed)


def cmd_run(args: argparse.Namespace, overrides: list[str]) -> None:
    from kamado.config import load_config
    from kamado.recipe.pipeline import run_recipe

    cfg = load_config(args.recipe, overrides)
    args.out = cfg.out_dir  # named in a disk-full or read-only error
    run_recipe(cfg, Path(args.recipe))


def cmd_train(args: argparse.Namespace, overrides: list[str]) -> None:
    from kamado.config import load_config
    from kamado.train.pretrain import pretrain

    result = pretrain(load_config(args.config, overrides), progress=not args.no_progress)
    print(f"finished at step {result['step']}; eval: {result['eval']}")


def cmd_tokenizer_train(args: argparse.Namespace, overrides: list[str]) -> None:
    from kamado.config import TokenizerConfig
    from kamado.data.jsonl import iter_jsonl_texts
    from kamado.tokenizer import Tokenizer
    from kamado.tokenizer.train import train_tokenizer

    ranges = TokenizerConfig.ranges()
    _check_flags(args, vocab_size=ranges["vocab_size"], min_frequency=ranges["min_frequency"])
    cfg = TokenizerConfig(vocab_size=args.vocab_size, min_frequency=args.min_frequency)
    out = train_tokenizer(iter_jsonl_texts(args.inputs), args.out, cfg)
    tok = Tokenizer.load(out)
    print(f"saved {out} ({tok.vocab_size} ids)")
    for path in args.heldout or []:
        texts = list(iter_jsonl_texts([path]))
        print(f"{path}: {tok.chars_per_token(texts):.3f} chars/token")


def cmd_tokenize(args: argparse.Namespace, overrides: list[str]) -> None:
    from kamado.data.tokenize import tokenize_files
    from kamado.tokenizer import Tokenizer

    _check_flags(args, shard_tokens=AT_LEAST_ONE)
    stats = tokenize_files(args.inputs, Tokenizer.load(args.tokenizer), args.out, shard_tokens=args.shard_tokens)
    print(
        f"{stats['docs']} documents, {stats['tokens']:,} tokens in {stats['shards']} shard(s) "
        f"({stats['chars_per_token']:.2f} chars/token) -> {args.out}"
    )


def cmd_generate(args: argparse.Namespace, overrides: list[str]) -> None:
    from kamado.config import SAMPLING_RANGES

    _check_flags(args, **SAMPLING_RANGES)  # before torch is even imported
    if not args.prompt:
        raise ConfigError("--prompt is empty: give at least one character of text to continue")

    from kamado.model.generate import SamplingParams, generate
    from kamado.tokenizer import Tokenizer
    from kamado.train.checkpoint import load_model

    model, found = load_model(args.checkpoint)
    tok = Tokenizer.load(args.tokenizer or found.parent.parent / "tokenizer")
    params = SamplingParams(args.max_new_tokens, args.temperature, args.top_k, args.top_p, (tok.eos_id,), args.seed)
    ids = generate(model, tok.encode(args.prompt), params)
    print(args.prompt + tok.decode([i for i in ids if i != tok.eos_id]))


def cmd_params(args: argparse.Namespace, overrides: list[str]) -> None:
    from kamado.config import load_config

    cfg = load_config(args.config, overrides)  # a bad value fails before torch is imported

    import torch

    from kamado.model.transformer import Transformer
    from kamado.train.speed import flops_per_token

    with torch.device("meta"):  # no memory is allocated, so even the 100b shape is instant
        model = Transformer(cfg.model)
    m = cfg.model
    print(
        f"{cfg.name}: d_model={m.d_model} layers={m.n_layers} heads={m.n_heads} kv_heads={m.n_kv_heads} "
        f"ffn={m.ffn_hidden} vocab={m.vocab_size}"
    )
    print(
        f"parameters: {model.num_params():,} ({model.num_params(exclude_embedding=True):,} without the input embedding)"
    )
    print(f"training FLOPs/token at seq_len {cfg.data.seq_len}: {flops_per_token(m, cfg.data.seq_len):.4g}")


def cmd_corpus_run(args: argparse.Namespace, overrides: list[str]) -> None:
    from kamado.corpus.config import load_corpus_config
    from kamado.corpus.pipeline import run_corpus

    flags = [
        f"{k}={v!r}" if isinstance(v, str) else f"{k}={v}"
        for k in ("tasks", "workers", "executor")
        if (v := getattr(args, k)) is not None
    ]
    cfg = load_corpus_config(args.config, flags + overrides)
    if args.no_min_length:
        cfg.quality.min_chars = None
    summary = run_corpus(cfg, args.warc_dir, args.out, command=[sys.executable, "-m", "kamado.cli", *sys.argv[1:]])
    out = Path(args.out)
    if "submitted" in summary:  # Slurm: the stages and this command after them are queued
        jobs = summary["submitted"]
        print(
            f"submitted Slurm jobs {', '.join(map(str, jobs))}: the stages, then this command again (job {jobs[-1]}),"
            f" which writes {out / 'shards'} and {out / 'corpus_report.md'}; follow them with `squeue --me`"
        )
        return
    print(
        f"{summary['documents_out']} documents → {out / 'shards'} (+ manifest.json); report: {out / 'corpus_report.md'}"
    )


def build_parser() -> argparse.ArgumentParser:
    fmt = argparse.RawDescriptionHelpFormatter
    p = argparse.ArgumentParser(prog="kamado", description=__doc__, formatter_class=fmt)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    r = sub.add_parser("run", help="run a whole recipe end to end (corpus → tokenizer → train → eval → report)")
    r.add_argument("recipe", help="recipe TOML, e.g. recipes/tiny.toml; add --section.key=value overrides")
    r.set_defaults(fn=cmd_run)

    t = sub.add_parser("train", help="pre-train a model from a config preset")
    t.add_argument("config", help="preset TOML (recipes/*.toml); add --section.key=value overrides")
    t.add_argument("--no-progress", action="store_true", help="no progress bar (logs only)")
    t.set_defaults(fn=cmd_train)

    tk = sub.add_parser("tokenizer", help="tokenizer commands")
    tks = tk.add_subparsers(dest="tokenizer_command", required=True, metavar="SUBCOMMAND")
    tt = tks.add_parser("train", help="learn a byte-level BPE tokenizer from JSONL documents")
    tt.add_argument("inputs", nargs="+", help='JSONL(.gz) files, one {"text": ...} per line')
    tt.add_argument("--out", required=True, help="output folder (loadable by transformers.AutoTokenizer)")
    tt.add_argument("--vocab-size", type=int, default=32000)
    tt.add_argument("--min-frequency", type=int, default=2)
    tt.add_argument("--heldout", nargs="*", help="JSONL files to report characters per token on")
    tt.set_defaults(fn=cmd_tokenizer_train)

    tz = sub.add_parser("tokenize", help="turn JSONL documents into pre-tokenized shards")
    tz.add_argument("inputs", nargs="+", help='JSONL(.gz) files, one {"text": ...} per line')
    tz.add_argument("--tokenizer", required=True, help="tokenizer folder")
    tz.add_argument("--out", required=True, help="output folder for shards + manifest.json")
    tz.add_argument("--shard-tokens", type=int, default=1 << 26, help="tokens per shard file")
    tz.set_defaults(fn=cmd_tokenize)

    g = sub.add_parser("generate", help="sample text from a trained model (KV-cache decoding)")
    g.add_argument("checkpoint", help="run folder or checkpoint folder (step_XXXXXXXX)")
    g.add_argument("--prompt", required=True)
    g.add_argument("--tokenizer", help="tokenizer folder (default: <run folder>/tokenizer)")
    g.add_argument("--max-new-tokens", type=int, default=100)
    g.add_argument("--temperature", type=float, default=0.8, help="0 = greedy")
    g.add_argument("--top-k", type=int, default=50)
    g.add_argument("--top-p", type=float, default=0.95)
    g.add_argument("--seed", type=int, default=0)
    g.set_defaults(fn=cmd_generate)

    co = sub.add_parser("corpus", help="web corpus commands (WARC → Japanese Markdown → filters → dedup)")
    cos = co.add_subparsers(dest="corpus_command", required=True, metavar="SUBCOMMAND")
    cr = cos.add_parser("run", help="WARC files → Japanese Markdown → quality filters → dedup → uniform shards")
    cr.add_argument("warc_dir", help="folder with .warc / .warc.gz files (searched recursively)")
    cr.add_argument("--out", required=True, help="output folder: shards/ + manifest.json, work/, corpus_summary.json")
    cr.add_argument("--config", help="corpus preset TOML (recipes/corpus/*.toml); add --section.key=value overrides")
    cr.add_argument("--tasks", type=int, help="datatrove tasks per stage (default: the preset's, else 2)")
    cr.add_argument("--workers", type=int, help="tasks run at once (default: the preset's, else 2)")
    cr.add_argument(
        "--executor",
        choices=["local", "ray", "slurm"],
        help="where tasks run (default: the preset's, else local); slurm needs --slurm.partition=NAME",
    )
    cr.add_argument("--no-min-length", action="store_true", help="drop the 400-character minimum (small samples)")
    cr.set_defaults(fn=cmd_corpus_run)
    add_corpus_quality_parsers(cos)  # train-quality, eval-filters (kamado.corpus.commands)

    pa = sub.add_parser("params", help="exact parameter count and FLOPs/token of a preset")
    pa.add_argument("config")
    pa.set_defaults(fn=cmd_params)
    add_plan_parser(sub)  # plan (kamado.parallel.plan_commands)

    add_serving_parsers(sub)  # chat, serve (kamado.serve.commands)
    add_export_parsers(sub)  # export hf|gguf, import hf (kamado.serve.commands_export)
    add_posttrain_parsers(sub)  # sft, dpo (kamado.posttrain.commands)
    add_merge_parsers(sub)  # merge (kamado.posttrain.commands_merge)
    add_posttrain_data_parser(sub)  # posttrain-data (kamado.posttrain.commands_data)
    add_eval_parsers(sub)  # eval jaster|jaster-prepare|judge|judge-scores (kamado.eval.commands)
    add_parallel_parsers(sub)  # checkpoint consolidate (kamado.parallel.commands)
    add_experiment_parsers(sub)  # experiment stability (kamado.experiments.commands)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    rest, overrides = _split_overrides(argv)
    args = build_parser().parse_args(rest)
    takes = getattr(args.fn, "accepts_overrides", False) or args.fn in (cmd_run, cmd_train, cmd_params, cmd_corpus_run)
    if overrides and not takes:
        print(f"kamado: error: config overrides are not accepted by this command: {overrides}", file=sys.stderr)
        return 2
    try:
        args.fn(args, overrides)
    except KamadoError as e:
        print(f"kamado: error: {e}", file=sys.stderr)
        return 2
    except Stopped as e:  # SIGTERM / SIGUSR1 during training: saved after the step in flight
        if os.environ.get("RANK", "0") == "0":  # under torchrun every rank stops; one says so
            print(f"kamado: {e}", file=sys.stderr)
        return EXIT_STOPPED
    except Exception as e:  # a full disk or a read-only folder, possibly wrapped by a library: one line
        disk = user_os_error(e)
        if disk is None:
            raise
        if disk.filename is None:  # some writers (gzip streams in datatrove) do not say which file
            disk.filename = f"a file under {getattr(args, 'out', None) or 'the output folder'}"
        print(f"kamado: error: {describe_os_error(disk)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("kamado: interrupted (run the same command again to resume)", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
