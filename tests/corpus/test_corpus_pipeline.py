"""The whole corpus pipeline on the embedded WARC sample (samples/warc, in the repo): Japanese pages in, uniform
shards + manifest out; the exact duplicate collapses; a restart after losing outputs rewrites identical shards."""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

import pytest

from kamado.corpus.pipeline import CorpusConfig, run_corpus
from kamado.corpus.quality import QualityConfig
from kamado.corpus.reshard import ReshardConfig
from kamado.errors import ConfigError, DataError

SAMPLE = Path(__file__).parents[2] / "samples" / "warc"


def config() -> CorpusConfig:
    return CorpusConfig(
        tasks=2, workers=1, quality=QualityConfig.for_snippets(), reshard=ReshardConfig(shard_bytes=8000)
    )


def shard_bytes(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((out / "shards").glob("shard_*.jsonl.gz"))}


def docs(out: Path) -> list[dict]:
    return [json.loads(line) for p in sorted((out / "shards").glob("shard_*.jsonl.gz")) for line in gzip.open(p)]


@pytest.fixture(scope="module")
def first_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("corpus") / "out"
    return out, run_corpus(config(), SAMPLE, out)


def test_pipeline_outputs_japanese_shards_and_manifest(first_run: tuple[Path, dict]) -> None:
    out, summary = first_run
    manifest = json.loads((out / "shards" / "manifest.json").read_text())
    kept = docs(out)
    assert manifest["documents"] == len(kept) == summary["documents_out"] > 5
    assert len(manifest["shards"]) >= 2  # 8000-byte shards: the output is cut into several
    assert all(s["bytes"] >= 8000 for s in manifest["shards"][:-1])
    assert sum(manifest["source_warcs"].values()) == len(kept)
    extract = summary["stats"]["extract"]
    assert extract["🕷 WARC pages"]["documents"] > len(kept)  # non-Japanese and low-quality pages were dropped
    assert extract["🈂 Kana prefilter"]["dropped_no_kana"] > 0
    assert all(sum(d["text"].count(ch) for ch in "のはをにがで") >= 3 for d in kept)  # Japanese prose only
    urls = [d["metadata"]["url"] for d in kept]
    assert len(urls) == len(set(urls))
    assert not ({"http://sample.kamado/nhk.or.jp.html", "http://mirror.kamado/nhk.html"} <= set(urls))  # exact dup
    assert summary["stats"]["dedup_filter"]["🫂 Duplicate filter"].get("exact_duplicate", 0) >= 1


def test_restart_after_losing_outputs_is_identical(first_run: tuple[Path, dict], tmp_path: Path) -> None:
    out, _ = first_run
    expected = shard_bytes(out)
    again = tmp_path / "again"
    shutil.copytree(out, again)
    # as if killed during the dedup filter and the reshard: one task's completion marker, its output and the shards gone
    (again / "work/logs/dedup_filter/completions/00001").unlink()
    for p in (again / "work/deduped").glob("00001*"):
        p.unlink()
    shutil.rmtree(again / "shards")
    run_corpus(config(), SAMPLE, again)
    assert shard_bytes(again) == expected


def test_bad_inputs(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"no \.warc"):
        run_corpus(config(), tmp_path, tmp_path / "out")
    with pytest.raises(ConfigError, match=r"corpus\.executor"):
        run_corpus(CorpusConfig(executor="spark"), SAMPLE, tmp_path / "out")
