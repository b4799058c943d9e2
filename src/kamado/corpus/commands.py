"""`kamado corpus train-quality` and `kamado corpus eval-filters`: the learned quality scorer and the filters'
agreement with labelled text (`kamado corpus run` is in `kamado.cli`)."""

from __future__ import annotations

import argparse

from kamado.config_checks import Range, check_value

LABELS_HELP = 'JSONL file(s), one {"text": ..., "label": "good"|"bad"} per line'


def cmd_train_quality(args: argparse.Namespace, overrides: list[str]) -> None:
    from kamado.corpus.quality_train import format_cv_table, train_quality

    check_value("--folds", args.folds, Range(2, 100))
    model, table = train_quality(args.labels, args.out, seed=args.seed, folds=args.folds)
    print(format_cv_table(table))
    print(
        f"\nchosen: {model.info['chosen']}, threshold {model.threshold:.3f} (P(good) >= it is kept) → {args.out}"
        f"\n(the CV numbers are of each outer fold at a threshold chosen inside its training folds)"
    )


def cmd_eval_filters(args: argparse.Namespace, overrides: list[str]) -> None:
    from kamado.corpus.quality import QualityConfig
    from kamado.corpus.quality_eval import evaluate, format_report, format_side_by_side, side_by_side
    from kamado.corpus.quality_model import DEFAULT_MODEL_DIR, QualityModel

    check_value("--threshold", args.threshold, Range(0, 1, optional=True))
    cfg = QualityConfig.for_snippets() if args.snippets else QualityConfig()
    model = None if args.no_classifier else QualityModel.load(args.classifier or DEFAULT_MODEL_DIR)
    print(format_report(evaluate(args.labels, cfg)))
    if model is None:
        return
    threshold = model.threshold if args.threshold is None else args.threshold
    print(f"\nside by side (classifier: {args.classifier or 'the shipped model'}, {model.info.get('chosen', '?')})")
    print(format_side_by_side(side_by_side(args.labels, cfg, model, threshold)))


def add_corpus_quality_parsers(cos: argparse._SubParsersAction) -> None:
    tq = cos.add_parser(
        "train-quality",
        help="train the learned quality classifier on labelled text (model chosen by cross-validation)",
        description="Cross-validate character n-gram logistic regressions (with and without the rules' statistics) "
        "on labelled documents, refit the best on all of them and save it (plain arrays + model.json, no pickle). "
        "Use the folder as [quality.classifier] model in a corpus config, or with eval-filters --classifier.",
    )
    tq.add_argument("labels", nargs="+", help=LABELS_HELP)
    tq.add_argument("--out", required=True, help="model folder to write (model.safetensors + model.json)")
    tq.add_argument("--seed", type=int, default=0, help="seed of the cross-validation folds (default 0)")
    tq.add_argument("--folds", type=int, default=5, help="outer cross-validation folds (default 5)")
    tq.set_defaults(fn=cmd_train_quality)

    ef = cos.add_parser(
        "eval-filters",
        help="precision/recall/F1 of the quality rules, the classifier and both, on human-labelled text",
    )
    ef.add_argument("labels", help=LABELS_HELP)
    ef.add_argument("--snippets", action="store_true", help="snippet preset: no minimum length (for mC4 snippets)")
    ef.add_argument("--classifier", help="model folder from train-quality (default: the model shipped with kamado)")
    ef.add_argument("--threshold", type=float, help="keep P(good) >= this (default: the model's own threshold)")
    ef.add_argument("--no-classifier", action="store_true", help="the rules' report only")
    ef.set_defaults(fn=cmd_eval_filters)
