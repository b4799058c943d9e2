"""The benchmark files: the repo's samples are the upstream files (gzipped), both layouts load the same questions
and prompts, and the judge cache survives a writer killed mid-line."""

from __future__ import annotations

import gzip
from pathlib import Path

import pytest

from kamado.errors import DataError
from kamado.eval.judge.benchmarks import (
    BENCHMARKS,
    judge_prompts,
    load_questions,
    rakuda_reference_answers,
    single_prompt_name,
)
from kamado.eval.judge.cache import JudgmentCache, judgment_key

from .conftest import SAMPLES


def test_the_samples_are_the_upstream_files(bench: Path) -> None:
    shipped = sorted(SAMPLES.rglob("*.gz"))
    shipped = [p for p in shipped if "jaster" not in p.parts]
    assert len(shipped) == 12
    for p in shipped:
        rel = p.relative_to(SAMPLES).with_suffix("")
        assert gzip.decompress(p.read_bytes()) == (bench / rel).read_bytes(), rel
    for b in BENCHMARKS:  # and the shared folder works as --data-dir (ELYZA's prompt from the repo's copy)
        assert load_questions(b, bench) == load_questions(b, SAMPLES)
        assert judge_prompts(b, bench) == judge_prompts(b, SAMPLES)


def test_questions_and_prompts() -> None:
    counts = {b: len(load_questions(b, SAMPLES)) for b in BENCHMARKS}
    assert counts == {"ja_mt_bench": 80, "mt_bench": 80, "rakuda": 40, "elyza100": 100}
    for b in ("ja_mt_bench", "mt_bench"):
        qs = load_questions(b, SAMPLES)
        assert all(len(q.turns) == 2 for q in qs)
        with_ref = {q.category for q in qs if q.reference}
        assert with_ref == {"math", "reasoning", "coding"} and all(len(q.reference) == 2 for q in qs if q.reference)
        names = {single_prompt_name(q, t) for q in qs for t in (1, 2)}
        assert names <= set(judge_prompts(b, SAMPLES))
    ja = judge_prompts("ja_mt_bench", SAMPLES)
    assert ja["single-v1"].output_format == "[[評価]]" and ja["single-v1-multi-turn"].output_format == "[[rating]]"
    assert judge_prompts("rakuda", SAMPLES)["pair-ja"].output_format == "last"
    elyza = load_questions("elyza100", SAMPLES, limit=2)
    assert [q.question_id for q in elyza] == [1, 2] and elyza[0].eval_aspect and elyza[0].reference
    assert "{eval_aspect}" in judge_prompts("elyza100", SAMPLES)["elyza"].template
    refs = rakuda_reference_answers(SAMPLES)
    assert all(len(v) == 40 for v in refs.values())
    with pytest.raises(DataError, match="unknown benchmark"):
        load_questions("nope", SAMPLES)


def test_the_cache_keeps_replies_and_survives_a_torn_line(tmp_path: Path) -> None:
    path = tmp_path / "cache.jsonl"
    k1 = judgment_key(["q"], ["a"], "judge", ["sys", "user"])
    assert k1 != judgment_key(["q"], ["a"], "other judge", ["sys", "user"])
    assert k1 != judgment_key(["q"], ["a"], "judge", ["sys", "user "])
    c = JudgmentCache(path)
    c.put(k1, "judge", "Rating: [[7]]")
    with open(path, "a", encoding="utf-8") as f:
        f.write('{"key": "k2", "judge": "judge", "repl')  # a writer killed mid-line
    c2 = JudgmentCache(path)
    assert c2.get(k1) == "Rating: [[7]]" and c2.get("k2") is None
    c2.put("k3", "judge", "評価：[[3]]")  # starts on a fresh line
    c3 = JudgmentCache(path)
    assert c3.replies == {k1: "Rating: [[7]]", "k3": "評価：[[3]]"}
