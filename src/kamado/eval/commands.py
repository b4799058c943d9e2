"""`kamado eval`: jaster (llm-jp-eval v1.3 semantics) and the judge benchmarks, on kamado models or any endpoint.

The judge benchmarks' and pfgen-bench's commands live beside their code (`kamado.eval.judge.commands`,
`kamado.eval.pfgen.commands`).

torch is imported only when a command runs, so `kamado --help` stays instant.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from kamado.errors import ConfigError
from kamado.eval.cli_common import add_model_flags, local_generator
from kamado.eval.judge.commands import add_judge_parsers
from kamado.eval.pfgen.commands import add_pfgen_parsers

JASTER_HELP = """Score models on jaster the way llm-jp-eval v1.3 does: its Alpaca-style Japanese prompt, its output
lengths, few-shot examples from the train split, answers cut at the first blank line and NFKC-normalised, exact match
/ char F1 / Pearson and Spearman, category means. Generation is greedy and batched through the serving engine
(KV cache, continuous batching), or goes to any OpenAI-compatible endpoint.

examples:
  kamado eval jaster runs/tiny --out runs/tiny/eval                     # the shipped cut (samples/eval/jaster)
  kamado eval jaster runs/tiny --data ../shared/data/benchmarks --out runs/tiny/eval-full
  kamado eval jaster base=runs/tiny sft=runs/tiny/sft --prompt chat --limit 50 --out runs/cmp
  kamado eval jaster --endpoint http://localhost:8000/v1 --model my-model --prompt chat --shots 4 --out runs/ep

--data is a folder of raw benchmark files (shared/data/benchmarks, SOURCES.md there) or a dataset folder in
llm-jp-eval v1.3's layout (train/ dev/ test/ TASK.json: what `kamado eval jaster-prepare` writes, or llm-jp-eval's
own). Each model gets OUT/NAME/ (TASK.jsonl answers, TASK.json scores, jaster.json, jaster.md); several models
also OUT/compare.md and OUT/jaster_compare.png. A rerun with the same settings reuses the finished tasks.
"""

PREPARE_HELP = """Write jaster in llm-jp-eval v1.3's dataset layout (train/ dev/ test/ TASK.json), built offline from
the raw benchmark files. The repo's samples/eval/jaster was made with
  kamado eval jaster-prepare --data ../shared/data/benchmarks --out samples/eval/jaster --train 4 --dev 0 --test 20
"""


def cmd_jaster(args: argparse.Namespace, overrides: list[str]) -> None:
    from kamado.eval.jaster.run import JasterSettings

    try:
        settings = JasterSettings(shots=args.shots, limit=args.limit, prompt=args.prompt)
    except ValueError as e:
        raise ConfigError(f"kamado eval jaster: {e}") from None
    if bool(args.models) == bool(args.endpoint):
        raise ConfigError("give model run folders or checkpoints, or --endpoint URL --model NAME (not both)")
    from kamado.eval.jaster.v13_format import jaster_source

    load, have = jaster_source(Path(args.data))
    tasks = tuple(args.tasks or have)
    unknown = [t for t in tasks if t not in have]
    if unknown:
        raise ConfigError(f"--tasks: {', '.join(unknown)} not in {args.data} (it has {', '.join(have)})")
    out = Path(args.out)
    args.out = out
    reports = {}
    for name, gen in _generators(args):
        reports[name] = _evaluate_one(gen, load, tasks, settings, out / name)
    if len(reports) > 1:
        from kamado.atomic import atomic_write_text
        from kamado.eval.jaster.report import compare_markdown, compare_plot

        atomic_write_text(out / "compare.md", "\n".join(compare_markdown(reports)) + "\n")
        compare_plot(reports, out / "jaster_compare.png")
        print("\n".join(compare_markdown(reports)))
        print(f"comparison: {out / 'compare.md'}, {out / 'jaster_compare.png'}")


def _generators(args: argparse.Namespace) -> Any:
    from kamado.eval.generate import EndpointGenerator

    if args.endpoint:
        yield args.model, EndpointGenerator(args.endpoint, args.model, args.key_env, progress=not args.no_progress)
        return
    for spec in args.models:
        gen = local_generator(spec, args)
        yield gen.name, gen


def _evaluate_one(gen: Any, load: Any, tasks: tuple[str, ...], settings: Any, out: Path) -> dict[str, Any]:
    from kamado.atomic import atomic_write_text
    from kamado.eval.jaster.report import jaster_markdown
    from kamado.eval.jaster.run import evaluate_jaster

    report = evaluate_jaster(gen, load, tasks, settings, out)
    text = "\n".join(jaster_markdown(report)) + "\n"
    atomic_write_text(out / "jaster.md", text)
    print(text)
    return report


def cmd_jaster_prepare(args: argparse.Namespace, overrides: list[str]) -> None:
    from kamado.eval.jaster import TASK_NAMES
    from kamado.eval.jaster.v13_format import write_v13_dataset

    limits = {"train": args.train, "dev": args.dev, "test": args.test}
    if any(v is not None and v < 0 for v in limits.values()):
        raise ConfigError("--train/--dev/--test must be >= 0")
    tasks = tuple(args.tasks or TASK_NAMES)
    bad = [t for t in tasks if t not in TASK_NAMES]
    if bad:
        raise ConfigError(f"--tasks: unknown task(s) {', '.join(bad)} (one of {', '.join(TASK_NAMES)})")
    written = write_v13_dataset(Path(args.data), Path(args.out), tasks, limits)
    print(json.dumps(written, indent=1))


def add_eval_parsers(sub: Any) -> None:
    """Register `kamado eval` and its sub-commands on the `kamado` sub-command parser `sub`."""
    fmt = argparse.RawDescriptionHelpFormatter
    ev = sub.add_parser("eval", help="evaluate models: jaster, judge benchmarks (MT-Bench, Rakuda, ELYZA)")
    evsub = ev.add_subparsers(dest="eval_command", required=True, metavar="BENCHMARK")

    j = evsub.add_parser("jaster", help="jaster with llm-jp-eval v1.3 semantics", description=JASTER_HELP)
    j.formatter_class = fmt
    j.add_argument("models", nargs="*", metavar="MODEL", help="run folder or checkpoint, optionally NAME=PATH")
    j.add_argument("--endpoint", metavar="URL", help="an OpenAI-compatible API base, e.g. http://host:8000/v1")
    j.add_argument("--model", help="the endpoint's model name")
    j.add_argument("--key-env", default="OPENAI_API_KEY", help="environment variable holding the endpoint's key")
    j.add_argument("--data", default="samples/eval/jaster", help="benchmark files (default: %(default)s)")
    j.add_argument("--tasks", nargs="+", metavar="TASK", help="only these tasks (default: all the data has)")
    j.add_argument("--shots", type=int, default=0, help="few-shot examples from the train split (v1.3: 0 or 4)")
    j.add_argument("--limit", type=int, help="the first N test samples of each task (default: all)")
    j.add_argument("--prompt", choices=("alpaca", "chat"), default="alpaca", help="plain v1.3 text or chat turns")
    j.add_argument("--out", required=True, metavar="DIR", help="output folder")
    add_model_flags(j)
    j.set_defaults(fn=cmd_jaster)

    p = evsub.add_parser("jaster-prepare", help="write jaster in llm-jp-eval v1.3's dataset layout")
    p.description, p.formatter_class = PREPARE_HELP, fmt
    p.add_argument("--data", required=True, help="the raw benchmark files (shared/data/benchmarks)")
    p.add_argument("--out", required=True, metavar="DIR")
    p.add_argument("--tasks", nargs="+", metavar="TASK")
    for split in ("train", "dev", "test"):
        p.add_argument(f"--{split}", type=int, metavar="N", help=f"keep the first N {split} samples (default: all)")
    p.set_defaults(fn=cmd_jaster_prepare)

    add_judge_parsers(evsub)  # judge, judge-scores (kamado.eval.judge.commands)
    add_pfgen_parsers(evsub)  # pfgen, pfgen-score (kamado.eval.pfgen.commands)
