"""`kamado eval judge` and `kamado eval judge-scores`. torch is imported only when a command runs."""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from kamado.errors import ConfigError
from kamado.eval.cli_common import add_model_flags, local_generator
from kamado.eval.judge.benchmarks import RAKUDA_REFERENCES

JUDGE_HELP = """Grade a model's answers with an LLM judge: Japanese MT-Bench and MT-Bench (FastChat single-answer
grading 1-10, two turns, reference answers for math/reasoning/coding), Rakuda (pairwise against Rakuda's reference
answers, both orders, Bradley-Terry ratings on its Elo-like scale), ELYZA-tasks-100 (1-5 with each task's grading
notes). The judge is any OpenAI-compatible chat endpoint; its key comes from an environment variable.

examples:
  kamado eval judge runs/tiny --bench ja_mt_bench --bench rakuda \\
      --judge-url https://api.openai.com/v1 --judge-model gpt-4o --out runs/tiny/judge
  kamado eval judge --endpoint http://localhost:8000/v1 --model my-model --bench elyza100 \\
      --judge-url http://judge-host:8000/v1 --judge-model judge --judge-key-env JUDGE_KEY --out runs/ep
  kamado eval judge runs/tiny --bench mt_bench --limit 2 --judge-run runs/tiny --judge-max-tokens 64 \\
      --out runs/tiny/judge-offline      # fully offline: the judge is `kamado serve` of a local run

--data-dir holds the benchmark files, one folder per benchmark (default: the repo's samples/eval; the shared
benchmark folder has the same layout). Output, FastChat's layout: OUT/BENCH/model_answer/MODEL.jsonl,
OUT/BENCH/model_judgment/JUDGE_single.jsonl (JUDGE_pair.jsonl for Rakuda), OUT/BENCH/report_MODEL.json, and
OUT/judge_MODEL.md + .json over all benchmarks. Judge replies are cached (OUT/judge_cache.jsonl, or --cache): a
rerun makes no call it made before. A reply without a rating scores -1 and is counted, never averaged.
The judge URL and model can also come from KAMADO_JUDGE_URL and KAMADO_JUDGE_MODEL. With --judge-run the judge
is the served run, under its own name.
"""

SCORES_HELP = """Per-model numbers of FastChat judgment files (ours or anyone's), as FastChat's show_result.py:
single-answer files: judgments, mean of turn 1, turn 2 and overall (score -1 left out of the means, and counted);
pairwise files: wins, losses, ties (a win needs both orders to agree), errors, win rates.

examples:
  kamado eval judge-scores runs/tiny/judge/mt_bench/model_judgment/gpt-4o_single.jsonl
  kamado eval judge-scores ../shared/data/benchmarks/ja_vicuna_qa/model_judgment/pairwise/gpt-4 --json
"""


def _answerers(args: argparse.Namespace) -> Iterator[Any]:
    from kamado.eval.generate import EndpointGenerator

    if args.endpoint:
        yield EndpointGenerator(args.endpoint, args.model, args.key_env, progress=not args.no_progress)
        return
    for spec in args.models:
        yield local_generator(spec, args)


def cmd_judge(args: argparse.Namespace, overrides: list[str]) -> None:
    from kamado.eval.judge.benchmarks import BENCHMARKS

    if bool(args.models) == bool(args.endpoint):
        raise ConfigError("give model run folders or checkpoints, or --endpoint URL --model NAME (not both)")
    if args.limit is not None and args.limit < 1:
        raise ConfigError(f"--limit must be at least 1, got {args.limit}")
    if args.max_tokens < 1 or args.judge_max_tokens < 1:
        raise ConfigError("--max-tokens and --judge-max-tokens must be at least 1")
    if args.bootstrap < 0:
        raise ConfigError("--bootstrap must be >= 0")
    if args.judge_retries < 0:
        raise ConfigError("--judge-retries must be >= 0")
    if args.judge_run and (args.judge_url or args.judge_model):
        raise ConfigError("--judge-run serves the judge itself: give it without --judge-url/--judge-model")
    judge_url = args.judge_url or ("" if args.judge_run else os.environ.get("KAMADO_JUDGE_URL", ""))
    judge_model = args.judge_model or os.environ.get("KAMADO_JUDGE_MODEL", "")
    if not judge_url and not args.judge_run:
        raise ConfigError("give the judge: --judge-url URL --judge-model NAME, or --judge-run RUN (a local model)")
    if judge_url and not judge_model:
        raise ConfigError("--judge-url needs --judge-model NAME (the judge model's name)")
    benches = list(dict.fromkeys(args.bench))
    bad = [b for b in benches if b not in BENCHMARKS]
    if bad:
        raise ConfigError(f"--bench: unknown {', '.join(bad)} (one of {', '.join(BENCHMARKS)})")

    from kamado.eval.generate import EndpointGenerator
    from kamado.eval.judge.answers import AnswerSettings
    from kamado.eval.judge.cache import JudgmentCache
    from kamado.eval.judge.run import JudgeSettings

    out = Path(args.out)
    settings = JudgeSettings(
        data_dir=Path(args.data_dir),
        limit=args.limit,
        answer=AnswerSettings(max_tokens=args.max_tokens, temperature=args.temperature, seed=args.seed),
        judge_max_tokens=args.judge_max_tokens,
        rakuda_references=tuple(args.rakuda_references),
        n_bootstrap=args.bootstrap,
    )
    cache = JudgmentCache(Path(args.cache) if args.cache else out / "judge_cache.jsonl")
    with ExitStack() as stack:
        if args.judge_run:
            from kamado.serve.background import serve_in_background

            judge_url, judge_model = stack.enter_context(serve_in_background(args.judge_run, device=args.device))
        judge = EndpointGenerator(
            judge_url,
            judge_model,
            args.judge_key_env,
            concurrency=args.judge_concurrency,
            retries=args.judge_retries,
            progress=not args.no_progress,
        )
        for gen in _answerers(args):
            _judge_one_model(gen, judge, cache, benches, settings, out)


def _judge_one_model(gen: Any, judge: Any, cache: Any, benches: list[str], settings: Any, out: Path) -> None:
    from kamado.atomic import atomic_write_text
    from kamado.eval.judge.answers import safe_name
    from kamado.eval.judge.report import report_markdown
    from kamado.eval.judge.run import run_bench

    reports = [run_bench(b, gen, judge, cache, settings, out) for b in benches]
    text = "\n".join(report_markdown(gen.name, judge.name, reports)) + "\n"
    stem = out / f"judge_{safe_name(gen.name)}"
    atomic_write_text(stem.with_suffix(".md"), text)
    atomic_write_text(stem.with_suffix(".json"), json.dumps(reports, ensure_ascii=False, indent=1) + "\n")
    print(text)
    print(f"report: {stem.with_suffix('.md')}; judge calls made: {sum(r['new_judge_replies'] for r in reports)}")


def cmd_judge_scores(args: argparse.Namespace, overrides: list[str]) -> None:
    from kamado.eval.judge.scores import judgment_mode, pairwise_scores, read_judgments, scores_table, single_scores

    records, skipped = read_judgments(args.files)
    mode = judgment_mode(records)
    try:
        table = single_scores(records) if mode == "single" else pairwise_scores(records)
    except (KeyError, TypeError, ValueError) as e:
        from kamado.errors import DataError

        raise DataError(f"{', '.join(args.files)}: a judgment record is malformed ({e!r})") from None
    if args.json:
        result = {"mode": mode, "judgments": len(records), "models": table, "skipped_files": list(map(str, skipped))}
        print(json.dumps(result, ensure_ascii=False, indent=1))
    else:
        note = f" (skipped {len(skipped)} files without judgments)" if skipped else ""
        print(f"{mode} judgments: {len(records)}{note}\n")
        print("\n".join(scores_table(mode, table)))


def add_judge_parsers(evsub: Any) -> None:
    """Register `judge` and `judge-scores` on the `kamado eval` sub-command parser `evsub`."""
    fmt = argparse.RawDescriptionHelpFormatter
    j = evsub.add_parser("judge", help="LLM-judged benchmarks: MT-Bench (ja/en), Rakuda, ELYZA-tasks-100")
    j.description, j.formatter_class = JUDGE_HELP, fmt
    j.add_argument("models", nargs="*", metavar="MODEL", help="run folder or checkpoint, optionally NAME=PATH")
    j.add_argument("--bench", action="extend", nargs="+", required=True, metavar="NAME",
                   help="ja_mt_bench, mt_bench, rakuda, elyza100 (several after one --bench, or repeated)")  # fmt: skip
    j.add_argument("--endpoint", metavar="URL", help="answer with an OpenAI-compatible API, e.g. http://host:8000/v1")
    j.add_argument("--model", help="the answering endpoint's model name")
    j.add_argument("--key-env", default="OPENAI_API_KEY", help="environment variable with the answering endpoint's key")
    j.add_argument("--judge-url", metavar="URL", help="the judge's OpenAI-compatible API base")
    j.add_argument("--judge-model", metavar="NAME", help="the judge model's name (it is written in every judgment)")
    j.add_argument(
        "--judge-key-env", default="OPENAI_API_KEY", metavar="VAR", help="environment variable with the judge's key"
    )
    j.add_argument("--judge-run", metavar="RUN", help="judge with a local run served in the background (offline)")
    j.add_argument("--judge-max-tokens", type=int, default=2048, help="judge reply length (default: FastChat's 2048)")
    j.add_argument("--judge-concurrency", type=int, default=8, help="judge requests in flight")
    j.add_argument("--judge-retries", type=int, default=3, help="retries of a judge call on 429/5xx")
    j.add_argument("--data-dir", default="samples/eval", help="benchmark files (default: %(default)s)")
    j.add_argument("--limit", type=int, help="the first N questions of each benchmark (default: all)")
    j.add_argument("--max-tokens", type=int, default=1024, help="answer length per turn (default: FastChat's 1024)")
    j.add_argument("--temperature", type=float, help="answer temperature (default: per category, as FastChat)")
    j.add_argument("--seed", type=int, default=0, help="sampling seed of the answers")
    j.add_argument("--rakuda-references", nargs="+", metavar="MODEL", default=list(RAKUDA_REFERENCES),
                   help="Rakuda's reference answers to judge against (default: %(default)s)")  # fmt: skip
    j.add_argument("--bootstrap", type=int, default=1000, help="bootstrap replicates of Rakuda's rating intervals")
    j.add_argument("--cache", metavar="FILE", help="judge reply cache (default: OUT/judge_cache.jsonl)")
    j.add_argument("--out", required=True, metavar="DIR", help="output folder")
    add_model_flags(j)
    j.set_defaults(fn=cmd_judge)

    s = evsub.add_parser("judge-scores", help="per-model scores of FastChat judgment files (show_result.py)")
    s.description, s.formatter_class = SCORES_HELP, fmt
    s.add_argument("files", nargs="+", metavar="JUDGMENTS", help="JSONL judgment files, or folders of them")
    s.add_argument("--json", action="store_true", help="print JSON")
    s.set_defaults(fn=cmd_judge_scores)
