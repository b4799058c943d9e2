"""MinHash signatures per second: kamado (numpy, `kamado.corpus.minhash`) vs datasketch, same documents, same run.

Both sides get the same raw texts and produce one signature of `num_bands × rows_per_band` values per document:

* kamado: `minhash_signatures` on batches of 256 documents, as the dedup signature step runs it (table NFKC +
  lower-case + punctuation removal, rolling hash of character n-grams, multiply-add-shift minimum).
* datasketch: the same normalization (kamado's, timed on its side too), the set of character n-gram strings
  encoded to UTF-8, then `MinHash.bulk` (its fastest CPU path: one prototype copied per document,
  `update_batch` per document; default `affine32` scheme, SHA-1 `hashfunc`) with the same number of permutations.

The two see the same shingle sets (checked: equal counts per document). A second comparison starts from shingles
already made, one document at a time (kamado's `minhash_signature` on its uint64 arrays, datasketch's `bulk` on
the byte strings), to show where the time goes. Timed rounds
alternate the two sides; each reports its best round, the ratio is the median of the per-round ratios.

    .venv/bin/python bench/corpus_minhash.py              # Aozora in 2,000-character pages + the ClueWeb pages
    .venv/bin/python bench/corpus_minhash.py --chars 500 --rounds 7
"""

from __future__ import annotations

import argparse
import gzip
import json
import re
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kamado.corpus.minhash import (
    DedupConfig,
    minhash_parameters,
    minhash_signature,
    minhash_signatures,
    normalized_code_points,
    shingles,
)

ROOT = Path(__file__).resolve().parents[1]
CLUEWEB = ROOT / "../shared/data/web/warc/clueweb09-ja-eucjp-quirky.warc.gz"


def _timed_rounds(sides: dict[str, Callable[[], Any]], rounds: int) -> dict[str, list[float]]:
    times: dict[str, list[float]] = {name: [] for name in sides}
    for r in range(rounds):
        for name in sides if r % 2 == 0 else reversed(sides):
            t0 = time.perf_counter()
            sides[name]()
            times[name].append(time.perf_counter() - t0)
    return times


def _median_ratio(times: dict[str, list[float]]) -> float:
    return statistics.median(d / k for k, d in zip(times["kamado"], times["datasketch"], strict=True))


def bench_minhash(texts: list[str], cfg: DedupConfig, rounds: int = 5, batch: int = 256) -> dict[str, float]:
    """Signatures/s of kamado and datasketch on `texts` (same shingles, same number of hashes) and their ratio."""
    from datasketch import MinHash

    params = minhash_parameters(cfg.num_hashes, cfg.seed)
    n = cfg.ngram
    normalized_code_points("")  # build the normalization tables outside the timing

    def grams(text: str) -> list[bytes]:
        s = normalized_code_points(text, cfg.normalize).tobytes().decode("utf-32-le", "surrogatepass")
        return [g.encode() for g in {s[i : i + n] for i in range(len(s) - n + 1)}]

    def kamado() -> list[Any]:
        return [minhash_signatures(texts[i : i + batch], cfg, params)[0] for i in range(0, len(texts), batch)]

    def datasketch() -> list[Any]:
        return MinHash.bulk([grams(t) for t in texts], num_perm=cfg.num_hashes, seed=cfg.seed)

    kept = [t for t in texts if len(shingles(t, cfg))]  # datatrove skips documents without shingles; so do we
    assert [len(shingles(t, cfg)) for t in kept] == [len(grams(t)) for t in kept], "shingle sets differ"
    texts = kept
    full = _timed_rounds({"kamado": kamado, "datasketch": datasketch}, rounds)

    made = [shingles(t, cfg) for t in texts]
    made_grams = [grams(t) for t in texts]
    only = _timed_rounds(
        {
            "kamado": lambda: [minhash_signature(s, params) for s in made],
            "datasketch": lambda: MinHash.bulk(made_grams, num_perm=cfg.num_hashes, seed=cfg.seed),
        },
        rounds,
    )
    docs = len(texts)
    return {
        "documents": docs,
        "mean_chars": sum(map(len, texts)) / docs,
        "mean_shingles": sum(map(len, made)) / docs,
        "num_hashes": cfg.num_hashes,
        "kamado_signatures_per_s": docs / min(full["kamado"]),
        "datasketch_signatures_per_s": docs / min(full["datasketch"]),
        "ratio": _median_ratio(full),
        "signature_only_kamado_per_s": docs / min(only["kamado"]),
        "signature_only_datasketch_per_s": docs / min(only["datasketch"]),
        "signature_only_ratio": _median_ratio(only),
    }


def aozora_pages(chars: int) -> list[str]:
    with gzip.open(ROOT / "samples/ja_aozora.jsonl.gz", "rt", encoding="utf-8") as f:
        text = "".join(json.loads(line)["text"] for line in f)
    return [text[i : i + chars] for i in range(0, len(text), chars)]


def clueweb_pages() -> dict[str, list[str]]:
    """The 29 ClueWeb09 shop pages, as the corpus pipeline extracts them (reader, kana prefilter, trafilatura,
    langid: only a ranking sidebar survives, ~380 characters) and as their whole visible text (~3,300)."""
    from kamado.corpus.extract import MarkdownExtractor
    from kamado.corpus.langid import JapaneseLanguageFilter, KanaPrefilter
    from kamado.corpus.reader import WarcPageReader

    pages = list(KanaPrefilter().run(WarcPageReader(str(CLUEWEB.parent), glob_pattern=CLUEWEB.name).run()))
    visible = [re.sub(r"(?s)<[^>]*>", " ", re.sub(r"(?is)<(script|style)\b.*?</\1\s*>", " ", p.text)) for p in pages]
    extracted = [doc.text for doc in JapaneseLanguageFilter().run(MarkdownExtractor().run(iter(pages)))]
    return {"clueweb09 ja (extracted)": extracted, "clueweb09 ja (whole visible text)": visible}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--chars", type=int, default=2000, help="characters per Aozora page")
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    cfg = DedupConfig()
    corpora = {f"aozora ({args.chars}-char pages)": aozora_pages(args.chars)}
    if CLUEWEB.exists():
        corpora.update(clueweb_pages())
    print(f"ngram={cfg.ngram}, {cfg.num_bands} bands × {cfg.rows_per_band} rows = {cfg.num_hashes} hashes")
    for name, texts in corpora.items():
        r = bench_minhash(texts, cfg, rounds=args.rounds)
        print(
            f"{name}: {r['documents']} docs, {r['mean_chars']:.0f} chars, {r['mean_shingles']:.0f} shingles/doc\n"
            f"  from text      kamado {r['kamado_signatures_per_s']:8.0f}/s   "
            f"datasketch {r['datasketch_signatures_per_s']:7.0f}/s   ratio {r['ratio']:.2f}×\n"
            f"  from shingles  kamado {r['signature_only_kamado_per_s']:8.0f}/s   "
            f"datasketch {r['signature_only_datasketch_per_s']:7.0f}/s   ratio {r['signature_only_ratio']:.2f}×"
        )


if __name__ == "__main__":
    main()
