"""`kamado eval pfgen` (generate pfgen-bench answers and score them) and `kamado eval pfgen-score` (score any
upstream-format `trials.jsonl.xz`). torch is imported only when generation runs."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from kamado.errors import ConfigError
from kamado.eval.cli_common import add_model_flags, local_generator

PFGEN_HELP = """pfgen-bench (Preferred Generation Benchmark, arXiv 2502.09316): 50 Japanese questions, each asked after
20 question-answer examples and no instruction, answers of about 100 characters sampled (temperature 1.0, top-p 0.98,
up to 300 tokens) in several trials, scored without a judge by n-gram statistics against ~1,000 reference answers per
question: fluency, truthfulness, helpfulness (keywords) and a length penalty. Prompts, examples per trial and seed,
stop sequences and output files are upstream's, so upstream's pfgen_eval.py scores our trials.jsonl.xz and
`kamado eval pfgen-score` scores theirs.

examples:
  kamado eval pfgen runs/tiny --examples 2 --trials 10 --out runs/tiny/eval/pfgen     # a 512-token context
  kamado eval pfgen runs/tiny/sft --mode chat --examples 2 --out runs/tiny/eval/pfgen-sft
  kamado eval pfgen --endpoint http://localhost:8000/v1 --model my-model --trials 100 --out runs/pfgen-ep
  kamado eval pfgen runs/big --data ../shared/data/benchmarks/pfgen_bench --device cuda --trials 100 --out OUT

--data is upstream's data/ folder (Q01.json ... Q50.json and questions.jsonl, each possibly .xz); without it the full
set in ../shared/data/benchmarks/pfgen_bench is used where it exists, else the repo's 7-question sample
(samples/eval/pfgen), which asks and scores those 7 questions only. OUT gets config.json, trial_NNN.jsonl (a rerun
resumes at the first missing trial), trials.jsonl.xz, result.json (upstream's format) and pfgen.md.
"""

SCORE_HELP = """Score pfgen-bench answers (an upstream-format trials.jsonl or .jsonl.xz: one {"question", "answer"} per
line) the way upstream's pfgen_eval.py does, into the same result.json: fluency, truthfulness, helpfulness and length
per answer, per question and overall, mean and standard deviation over trials, with upstream's rounding. A config.json
beside the file is copied into the result, as upstream does.

examples:
  kamado eval pfgen-score ../shared/data/benchmarks/pfgen_bench/results/llm-jp/llm-jp-3-150m/c5abc69/trials.jsonl.xz
  kamado eval pfgen-score runs/tiny/eval/pfgen/trials.jsonl.xz --data samples/eval/pfgen --json > result.json
  kamado eval pfgen-score A/trials.jsonl.xz B/trials.jsonl.xz      # one table, the references indexed once
"""


DATA_HELP = "upstream's data/ folder (default: the shared full set, else the sample)"


def _generator(args: argparse.Namespace) -> tuple[Any, str]:
    from kamado.eval.generate import EndpointGenerator

    if args.endpoint:
        return EndpointGenerator(args.endpoint, args.model, args.key_env, progress=not args.no_progress), "openai"
    return local_generator(args.run, args), "kamado"


def cmd_pfgen(args: argparse.Namespace, overrides: list[str]) -> None:
    from kamado.atomic import atomic_write_text
    from kamado.eval.pfgen.data import resolve_data
    from kamado.eval.pfgen.report import headline, pfgen_table, published_rows
    from kamado.eval.pfgen.run import PfgenSettings, run_pfgen
    from kamado.eval.pfgen.score import score_trials

    if bool(args.run) == bool(args.endpoint):
        raise ConfigError("give a run folder or checkpoint, or --endpoint URL --model NAME (not both)")
    try:
        settings = PfgenSettings(args.mode, args.trials, args.examples, args.max_tokens, args.temperature, args.top_p)
    except ValueError as e:
        raise ConfigError(f"kamado eval pfgen: {e}") from None
    data = resolve_data(args.data)
    out = Path(args.out)
    gen, engine = _generator(args)
    summary = run_pfgen(gen, data, settings, out, engine)
    start = time.perf_counter()
    result = score_trials(out / "trials.jsonl.xz", data, progress=not args.no_progress)
    summary["score_seconds"] = round(time.perf_counter() - start, 2)
    atomic_write_text(out / "result.json", json.dumps(result, indent=2, ensure_ascii=False))
    summary["headline"] = headline(result)
    atomic_write_text(out / "pfgen.json", json.dumps(summary, indent=1, ensure_ascii=False) + "\n")
    table = pfgen_table({gen.name: summary["headline"]}, published_rows(data.folder, data.question_ids))
    text = "\n".join(
        [
            f"pfgen-bench, {settings.mode} mode, {settings.num_examples} examples, {summary['questions']} questions "
            f"× {settings.trials} trials, data {data.folder}; generated {summary['generated_trials']} trials in "
            f"{summary['seconds']:.1f} s, scored in {summary['score_seconds']:.1f} s; "
            f"empty answers: {summary['empty']}",
            "",
            *table,
        ]
    )
    atomic_write_text(out / "pfgen.md", text + "\n")
    print(text)


def cmd_pfgen_score(args: argparse.Namespace, overrides: list[str]) -> None:
    from kamado.atomic import atomic_write_text
    from kamado.eval.pfgen.data import resolve_data
    from kamado.eval.pfgen.report import headline, pfgen_table
    from kamado.eval.pfgen.score import QuestionScorer, score_trials

    if args.out and len(args.trials) > 1:
        raise ConfigError("--out writes one result.json: give one trials file")
    data = resolve_data(args.data)
    scorers: dict[str, QuestionScorer] = {}
    results, rows = [], {}
    for path in args.trials:
        start = time.perf_counter()
        result = score_trials(Path(path), data, progress=not (args.no_progress or args.json), scorers=scorers)
        seconds = time.perf_counter() - start
        results.append(result)
        name = str(result.get("config", {}).get("model", path))
        rows[name] = headline(result)
        if not args.json:
            print(f"{path}: {len(result['questions'])} questions × {result['num_trials']} trials in {seconds:.1f} s")
    if args.out:
        atomic_write_text(Path(args.out), json.dumps(results[0], indent=2, ensure_ascii=False))
    if args.json:
        print(json.dumps(results[0] if len(results) == 1 else results, indent=2, ensure_ascii=False))
    else:
        print("\n".join(pfgen_table(rows, [])))


def add_pfgen_parsers(evsub: Any) -> None:
    """Register `kamado eval pfgen` and `kamado eval pfgen-score` on the `kamado eval` sub-command parsers."""
    fmt = argparse.RawDescriptionHelpFormatter
    p = evsub.add_parser("pfgen", help="pfgen-bench: few-shot Japanese answers scored by n-grams, no judge")
    p.description, p.formatter_class = PFGEN_HELP, fmt
    p.add_argument("run", nargs="?", metavar="RUN_OR_CHECKPOINT", help="run folder or checkpoint (NAME=PATH names it)")
    p.add_argument("--endpoint", metavar="URL", help="an OpenAI-compatible API base, e.g. http://host:8000/v1")
    p.add_argument("--model", help="the endpoint's model name")
    p.add_argument("--key-env", default="OPENAI_API_KEY", help="environment variable holding the endpoint's key")
    p.add_argument("--data", metavar="DIR", help=DATA_HELP)
    modes = "completion: plain text, for a base model; qa / chat: chat turns (default: %(default)s)"
    p.add_argument("--mode", choices=("completion", "qa", "chat"), default="completion", help=modes)
    p.add_argument("--trials", type=int, default=10, help="trials (upstream's leaderboard: 100; default: %(default)s)")
    p.add_argument("--examples", type=int, default=20, help="examples per prompt (default: %(default)s)")
    p.add_argument("--max-tokens", type=int, default=300, help="answer budget in tokens (default: %(default)s)")
    p.add_argument("--temperature", type=float, default=1.0, help="default: %(default)s")
    p.add_argument("--top-p", type=float, default=0.98, help="default: %(default)s")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder")
    add_model_flags(p)
    p.set_defaults(fn=cmd_pfgen)

    s = evsub.add_parser("pfgen-score", help="score pfgen-bench answers (trials.jsonl.xz) as upstream does")
    s.description, s.formatter_class = SCORE_HELP, fmt
    s.add_argument("trials", nargs="+", metavar="TRIALS.jsonl.xz", help="upstream-format answer files")
    s.add_argument("--data", metavar="DIR", help=DATA_HELP)
    s.add_argument("--json", action="store_true", help="print the full result.json (upstream's format) instead")
    s.add_argument("--out", metavar="FILE", help="also write the result.json there")
    s.add_argument("--no-progress", action="store_true", help="no progress bar")
    s.set_defaults(fn=cmd_pfgen_score)
