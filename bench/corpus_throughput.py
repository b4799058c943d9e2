"""Corpus pipeline throughput on the embedded WARC sample, and MinHash signatures/s against datasketch on the
documents that pipeline produced, in one run.

Three measurements, each the best of `--rounds`:

1. **Whole command** — `run_corpus` (what `kamado corpus run` does: every datatrove stage through the local
   executor, dedup, reshard) with 1 worker and 1 task, into a fresh folder: WARC pages/s on one core, start-up
   of each stage's worker included. On a 1 MB sample that start-up dominates; it is a fixed cost per stage.
2. **Extraction chain, one process** — reader → kana prefilter → Markdown (trafilatura in its sandbox) →
   language ID → quality filters, as generators in this process: the steady-state pages/s per core of the part
   that scales with the input (the sandbox child works while this process waits, so about one core).
3. **MinHash vs datasketch** — `bench/corpus_minhash.bench_minhash` on the extracted Markdown documents of (2)
   and on 2,000-character Aozora pages: same shingles, same number of hashes (target: kamado ≥ 5×).
4. **Quality classifier** — the shipped model (`kamado.corpus.quality_model`) scoring 2,000-character Aozora
   pages in the step's batches of 256, in this process: documents/s (target ≥ 1,000 per core; pin the process to
   one core, `taskset -c 0`, or the sparse product may use more). `--classifier-only` runs just this.

    .venv/bin/python bench/corpus_throughput.py
    .venv/bin/python bench/corpus_throughput.py --warc-dir ../shared/data/web/warc --rounds 5
    taskset -c 0 .venv/bin/python bench/corpus_throughput.py --classifier-only
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from kamado.corpus.config import CorpusConfig
from kamado.corpus.minhash import DedupConfig
from kamado.corpus.quality import QualityConfig

sys.path.insert(0, str(Path(__file__).resolve().parent))
from corpus_minhash import aozora_pages, bench_minhash

ROOT = Path(__file__).resolve().parents[1]


def whole_command(warc_dir: Path, cfg: CorpusConfig, rounds: int) -> dict[str, Any]:
    from loguru import logger

    from kamado.corpus import report
    from kamado.corpus.pipeline import run_corpus

    logger.remove()  # datatrove's per-stage log lines would drown the numbers
    best: dict[str, Any] = {}
    for _ in range(rounds):
        out = Path(tempfile.mkdtemp(prefix="kamado_bench_"))
        try:
            t0 = time.perf_counter()
            summary = run_corpus(cfg, warc_dir, out / "run")
            wall = time.perf_counter() - t0
        finally:
            shutil.rmtree(out, ignore_errors=True)
        if not best or wall < best["wall_s"]:
            pages = dict(report.funnel(summary))["pages (HTML or text)"]
            best = {"wall_s": wall, "pages": pages, "documents_out": summary["documents_out"]}
            best["stage_seconds"] = summary["stage_seconds"]
    best["pages_per_s"] = best["pages"] / best["wall_s"]
    return best


def extraction_chain(warc_dir: Path, cfg: CorpusConfig, rounds: int) -> tuple[dict[str, Any], list[str]]:
    from loguru import logger

    from kamado.corpus.extract import MarkdownExtractor
    from kamado.corpus.langid import JapaneseLanguageFilter, KanaPrefilter, identify_language
    from kamado.corpus.quality_filter import JapaneseQualityFilter
    from kamado.corpus.reader import WarcPageReader

    logger.remove()  # the executor of (1) added its log sinks back
    identify_language("warm up")  # load the language model outside the timing
    best: dict[str, Any] = {}
    extracted: list[str] = []
    for _ in range(rounds):
        pages: list[int] = []
        markdown: list[str] = []

        def count(docs: Any, sink: list[Any], value: Any) -> Any:
            for d in docs:
                sink.append(value(d))
                yield d

        t0 = time.perf_counter()
        docs: Any = WarcPageReader(str(warc_dir), glob_pattern="*.warc*").run()
        docs = count(docs, pages, lambda d: 1)
        docs = KanaPrefilter(cfg.kana_min_count, cfg.kana_min_fraction).run(docs)
        docs = count(MarkdownExtractor(timeout_s=cfg.extract_timeout_s).run(docs), markdown, lambda d: d.text)
        docs = JapaneseQualityFilter(cfg.quality).run(JapaneseLanguageFilter(cfg.language_threshold).run(docs))
        kept = sum(1 for _ in docs)
        wall = time.perf_counter() - t0
        if not best or wall < best["wall_s"]:
            best = {"wall_s": wall, "pages": len(pages), "markdown_docs": len(markdown), "kept": kept}
        extracted = markdown
    best["pages_per_s"] = best["pages"] / best["wall_s"]
    return best, extracted


def classifier_throughput(rounds: int) -> dict[str, Any]:
    from kamado.corpus.quality_model import DEFAULT_MODEL_DIR, QualityModel

    model = QualityModel.load(DEFAULT_MODEL_DIR)
    pages = aozora_pages(2000)
    model.scores(pages[:8])  # imports and first-call costs outside the timing
    best = float("inf")
    for _ in range(rounds):
        t0 = time.perf_counter()
        for i in range(0, len(pages), 256):
            model.scores(pages[i : i + 256])
        best = min(best, time.perf_counter() - t0)
    chars = sum(map(len, pages)) / len(pages)
    return {"documents": len(pages), "mean_chars": chars, "docs_per_s": len(pages) / best, "model": model}


def print_classifier(rounds: int) -> None:
    r = classifier_throughput(rounds)
    fs = r["model"].features
    print(
        f"4. quality classifier ({r['model'].info.get('chosen')}, first {fs.max_chars or 'all'} chars): "
        f"{r['documents']} docs of {r['mean_chars']:.0f} chars: {r['docs_per_s']:,.0f} docs/s in one process "
        f"(target ≥ 1,000 per core)"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--warc-dir", type=Path, default=ROOT / "samples" / "warc")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--classifier-only", action="store_true", help="measure (4) only")
    args = ap.parse_args()
    if args.classifier_only:
        print_classifier(max(args.rounds, 5))
        return
    cfg = CorpusConfig(tasks=1, workers=1, extract_timeout_s=30.0, quality=QualityConfig.for_snippets())
    print(f"input: {args.warc_dir} ({sum(p.stat().st_size for p in args.warc_dir.rglob('*.warc*')) / 1e6:.2f} MB)")
    print(f"machine: {os.cpu_count()} CPUs visible; best of {args.rounds} rounds each")

    w = whole_command(args.warc_dir, cfg, args.rounds)
    stages = ", ".join(f"{k} {v:.2f}" for k, v in w["stage_seconds"].items())
    print(
        f"\n1. whole command (1 worker): {w['pages']} pages → {w['documents_out']} documents in {w['wall_s']:.2f} s"
        f" = {w['pages_per_s']:.1f} pages/s per core\n   stage seconds: {stages}"
    )
    c, markdown = extraction_chain(args.warc_dir, cfg, args.rounds)
    print(
        f"2. extraction chain (one process): {c['pages']} pages → {c['markdown_docs']} Markdown → {c['kept']} kept in"
        f" {c['wall_s']:.2f} s = {c['pages_per_s']:.1f} pages/s per core"
    )
    dedup = DedupConfig()
    print(f"3. MinHash, {dedup.num_bands} × {dedup.rows_per_band} = {dedup.num_hashes} hashes, {dedup.ngram}-grams")
    for name, texts in {"extracted Markdown of (2)": markdown, "Aozora, 2,000-char pages": aozora_pages(2000)}.items():
        r = bench_minhash(texts, dedup, rounds=max(args.rounds, 5))
        print(
            f"   {name}: {r['documents']} docs, {r['mean_chars']:.0f} chars, {r['mean_shingles']:.0f} shingles/doc: "
            f"kamado {r['kamado_signatures_per_s']:,.0f}/s, datasketch {r['datasketch_signatures_per_s']:,.0f}/s, "
            f"ratio {r['ratio']:.2f}× (target ≥ 5×)"
        )
    print_classifier(max(args.rounds, 5))


if __name__ == "__main__":
    main()
