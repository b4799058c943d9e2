"""Dedup: the signature math on generated text, then the datatrove stages on small corpora and real ClueWeb pages."""

from __future__ import annotations

import gzip
import html
import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from datatrove.executor import LocalPipelineExecutor
from datatrove.pipeline.dedup.minhash import MinhashDedupBuckets, MinhashDedupCluster, MinhashDedupFilter
from datatrove.pipeline.writers import JsonlWriter

from kamado.corpus.dedup import JapaneseMinhashSignature, OrderedJsonlReader, dedup_stages, minhash_config
from kamado.corpus.extract import MarkdownExtractor
from kamado.corpus.langid import JapaneseLanguageFilter, KanaPrefilter
from kamado.corpus.minhash import (
    DedupConfig,
    estimated_jaccard,
    lsh_candidate_probability,
    minhash_parameters,
    minhash_signature,
    minhash_signatures,
    normalized_code_points,
    shingles,
)
from kamado.corpus.reader import WarcPageReader
from kamado.errors import ConfigError, KamadoError

PARAGRAPH = (
    "JR駅前の商店街では、毎年秋になると小さな祭りが開かれる。通りには提灯が並び、子どもたちは綿あめを片手に走り回る。"
    "スタンプラリーの台紙は各店舗で配られ、スタンプを10個集めると福引きに参加できる。"
    "八百屋の主人は朝から大きな声で客を呼び込み、隣の古本屋では店主が静かに帳簿をつけている。"
    "祭りの最終日には、商店会の有志が手作りの山車を引いて町内を一周するのが習わしだ。"
    "夕方になると、通りの奥にある神社の境内で盆踊りが始まり、近所の人々が浴衣姿で輪になって踊る。"
    "屋台の明かりが石畳を照らし、遠くから太鼓の音が響いてくると、祭りはいよいよ最高潮を迎える。"
)
OTHER = (
    "新しい図書館は三階建てで、一階には児童書の広い閲覧室がある。二階は一般書と雑誌、三階は郷土資料の書庫になっている。"
    "開館時間は午前九時から午後八時までで、毎週月曜日が休館日である。"
)
THIRD = (
    "週末に山へ登った。登山口から二時間ほど歩くと視界が開け、遠くに湖が見えた。"
    "山頂で食べたおにぎりは格別で、帰りは別の尾根をたどって温泉に立ち寄った。"
)


def text_of(cps: np.ndarray) -> str:
    return cps.tobytes().decode("utf-32-le")


def jaccard(a: np.ndarray, b: np.ndarray) -> float:
    """True Jaccard similarity of two shingle sets."""
    return len(np.intersect1d(a, b)) / len(np.union1d(a, b))


# --- the math -------------------------------------------------------------------------------------------------------


def test_normalization_folds_width_case_spaces_and_japanese_punctuation() -> None:
    assert text_of(normalized_code_points("「ＡＢＣ　ﾃｽﾄ」、ｶﾞｲﾄﾞ・★１２３。")) == "abcテストガイド123"
    assert text_of(normalized_code_points("㈱東京\u200b ①")) == "株東京1"  # expansion and zero-width space
    assert text_of(normalized_code_points("ガ\u3099か\u3099", normalize=True)) == "ガ\u3099が"  # composition applies
    assert text_of(normalized_code_points("Ａ　b", normalize=False)) == "Ａ　b"


def test_shingles_are_distinct_character_ngrams_of_the_normalized_text() -> None:
    cfg = DedupConfig(ngram=5)
    assert len(shingles("あいうえおか", cfg)) == 2
    assert len(shingles("あいうえお", cfg)) == 1
    assert len(shingles("あいう。", cfg)) == 0
    assert len(shingles("あいうえおあいうえお", cfg)) == 5  # the sixth window repeats the first
    assert np.array_equal(shingles("あい う、\nえお「か」", cfg), shingles("あいうえおか", cfg))
    assert len(shingles("あいうえおか", DedupConfig(ngram=1))) == 6


def test_signature_estimates_the_jaccard_similarity_of_character_ngrams() -> None:
    rng = np.random.default_rng(0)
    kana = [chr(c) for c in range(0x3041, 0x3094)]
    cfg = DedupConfig(num_bands=32, rows_per_band=8)  # 256 hashes: standard error <= 0.031
    params = minhash_parameters(cfg.num_hashes, cfg.seed)
    errors = []
    for edited in (0.0, 0.01, 0.03, 0.06, 0.1, 0.2, 0.4, 1.0):
        base = list(rng.choice(kana, size=1500))
        other = [rng.choice(kana) if rng.random() < edited else ch for ch in base]
        a, b = shingles("".join(base), cfg), shingles("".join(other), cfg)
        true = jaccard(a, b)
        est = estimated_jaccard(minhash_signature(a, params), minhash_signature(b, params))
        assert abs(est - true) <= 4 * np.sqrt(true * (1 - true) / cfg.num_hashes) + 0.01, (edited, true, est)
        errors.append(est - true)
    assert abs(np.mean(errors)) < 0.02  # no bias
    assert lsh_candidate_probability(0.5, 14, 8) == pytest.approx(1 - (255 / 256) ** 14)


def test_batched_signatures_equal_one_by_one() -> None:
    cfg = DedupConfig()
    params = minhash_parameters(cfg.num_hashes, cfg.seed)
    texts = [PARAGRAPH, "", "短い", "。、「」", OTHER * 3, "ｶﾞｲﾄﾞ" + THIRD, "㈱" + THIRD, PARAGRAPH]
    for c in (cfg, DedupConfig(normalize=False), DedupConfig(ngram=2)):
        sigs, has = minhash_signatures(texts, c, params)
        for text, sig, h in zip(texts, sigs, has, strict=True):
            one = shingles(text, c)
            assert h == (len(one) > 0)
            assert np.array_equal(sig, minhash_signature(one, params))


@pytest.mark.parametrize(
    ("field", "value"), [("ngram", 0), ("num_bands", 0), ("rows_per_band", 0), ("threshold", 1.5), ("seed", -1)]
)
def test_bad_config_is_one_clear_error(field: str, value: Any) -> None:
    with pytest.raises(ConfigError, match=f"dedup.{field}"):
        DedupConfig(**{field: value})
    cfg = DedupConfig()
    setattr(cfg, field, value)  # an override applied after construction is caught when the stages are built
    with pytest.raises(KamadoError, match=f"dedup.{field}"):
        dedup_stages(cfg, "in", "work", "out", tasks=1)


# --- the stages -----------------------------------------------------------------------------------------------------


def write_corpus(folder: Path, files: list[list[str]]) -> None:
    """One gzip JSONL file per list, documents with ids `f{file}-{line}`, as datatrove's JsonlWriter lays them out."""
    folder.mkdir(parents=True)
    for f, texts in enumerate(files):
        with gzip.open(folder / f"{f:05d}.jsonl.gz", "wt", encoding="utf-8") as out:
            for i, text in enumerate(texts):
                doc = {"text": text, "id": f"f{f}-{i}", "metadata": {"url": f"http://example.jp/{f}/{i}"}}
                out.write(json.dumps(doc, ensure_ascii=False) + "\n")


def run_dedup(cfg: DedupConfig, input_dir: Path, out: Path, tasks: int) -> tuple[list[dict], dict[str, dict]]:
    """(kept documents in output order, {stage: {stat: total}} of the filter) after running every stage locally."""
    for name, steps, n in dedup_stages(cfg, str(input_dir), str(out / "work"), str(out / "kept"), tasks):
        LocalPipelineExecutor(steps, tasks=n, workers=1, logging_dir=str(out / "logs" / name)).run()
    return read_kept(out / "kept"), stage_stats(out / "logs" / "dedup_filter")


def read_kept(folder: Path) -> list[dict]:
    return [json.loads(line) for p in sorted(folder.glob("*.jsonl.gz")) for line in gzip.open(p, "rt")]


def stage_stats(logs: Path) -> dict[str, dict[str, Any]]:
    raw = json.loads((logs / "stats.json").read_text())
    return {
        step["name"].split(": ", 1)[1]: {k: v["total"] if isinstance(v, dict) else v for k, v in step["stats"].items()}
        for step in raw
    }


def test_exact_duplicates_after_normalization_collapse(tmp_path: Path) -> None:
    variants = [
        PARAGRAPH.replace("。", "。\n"),  # line breaks
        PARAGRAPH.replace("、", " ").replace("。", ". "),  # other punctuation and spaces
        PARAGRAPH.replace("JR", "ＪＲ").replace("スタンプラリー", "ｽﾀﾝﾌﾟﾗﾘｰ").replace("10", "１０"),  # widths
        "「" + PARAGRAPH + "」",
    ]
    write_corpus(tmp_path / "in", [[PARAGRAPH, OTHER, *variants[:2]], [variants[2], THIRD, variants[3]]])
    kept, stats = run_dedup(DedupConfig(minhash=False), tmp_path / "in", tmp_path, tasks=1)
    assert [d["id"] for d in kept] == ["f0-0", "f0-1", "f1-1"]  # the first copy survives
    assert stats["🫂 Duplicate filter"]["dropped_exact_duplicate"] == 4
    assert kept[0]["metadata"]["url"] == "http://example.jp/0/0"


def test_near_duplicates_collapse_and_unrelated_pages_survive(tmp_path: Path) -> None:
    edited = PARAGRAPH.replace("秋", "春").replace("綿あめ", "風船").replace("一周", "二周")  # 3 edits
    footer = PARAGRAPH + "お問い合わせは商店会事務局まで。"
    assert 0.8 < jaccard(shingles(PARAGRAPH, DedupConfig()), shingles(edited, DedupConfig())) < 0.9
    write_corpus(tmp_path / "in", [[PARAGRAPH, OTHER], [edited, THIRD, footer]])
    kept, stats = run_dedup(DedupConfig(), tmp_path / "in", tmp_path, tasks=2)
    assert [d["id"] for d in kept] == ["f0-0", "f0-1", "f1-1"]
    assert stats["🫂 Duplicate filter"]["dropped_near_duplicate"] == 2
    assert "dropped_exact_duplicate" not in stats["🫂 Duplicate filter"]


def test_survivors_do_not_depend_on_runs_or_tasks(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    pool = [PARAGRAPH, OTHER, THIRD, *("".join(rng.choice(list("あいうえおかきくけこ"), 300)) for _ in range(5))]
    files = [[pool[i] for i in rng.integers(0, len(pool), size=6)] for _ in range(5)]  # duplicates across files
    write_corpus(tmp_path / "in", files)
    first_copy: dict[str, str] = {}
    for f, texts in enumerate(files):
        for i, text in enumerate(texts):
            first_copy.setdefault(text, f"f{f}-{i}")
    outputs = {}
    for run, tasks in (("a", 1), ("b", 2), ("c", 2), ("d", 3)):
        kept, _ = run_dedup(DedupConfig(), tmp_path / "in", tmp_path / run, tasks)
        outputs[run] = [d["id"] for d in kept]
        assert sorted(outputs[run]) == sorted(first_copy.values())
    assert outputs["a"] == outputs["b"] == outputs["c"] == outputs["d"]
    assert read_kept(tmp_path / "b" / "kept") == read_kept(tmp_path / "c" / "kept")


def test_datatrove_cluster_and_filter_take_our_signatures(tmp_path: Path) -> None:
    """Our signature files are datatrove's format: its own stages 2-4 find the same near-duplicate."""
    edited = PARAGRAPH.replace("秋", "春")
    write_corpus(tmp_path / "in", [[PARAGRAPH, OTHER, edited, THIRD]])
    cfg, mh = DedupConfig(), minhash_config(DedupConfig())
    stages = [
        [OrderedJsonlReader(str(tmp_path / "in")), JapaneseMinhashSignature(str(tmp_path / "sigs"), cfg)],
        [MinhashDedupBuckets(str(tmp_path / "sigs"), str(tmp_path / "buckets"), config=mh)],
        [MinhashDedupCluster(str(tmp_path / "buckets"), str(tmp_path / "remove"), config=mh)],
        [
            OrderedJsonlReader(str(tmp_path / "in")),
            MinhashDedupFilter(str(tmp_path / "remove")),
            JsonlWriter(str(tmp_path / "kept")),
        ],
    ]
    for i, steps in enumerate(stages):
        tasks = cfg.num_bands if i == 1 else 1
        LocalPipelineExecutor(steps, tasks=tasks, workers=1, logging_dir=str(tmp_path / "logs" / str(i))).run()
    assert [d["id"] for d in read_kept(tmp_path / "kept")] == ["f0-0", "f0-1", "f0-3"]


def ideographs(*spans: range) -> str:
    """Distinct CJK ideographs (NFKC leaves them alone), so every 5-gram of the text is distinct."""
    return "".join(chr(0x4E00 + i) for span in spans for i in span)


@pytest.mark.parametrize(
    ("threshold", "kept_ids"), [(None, ["f0-0", "f0-1", "f1-1", "f1-2"]), (0.65, ["f0-0", "f0-1", "f1-2"])]
)
def test_verification_merges_pairs_above_the_threshold_only(
    tmp_path: Path, threshold: float | None, kept_ids: list
) -> None:
    """Texts of 104 distinct characters (100 5-grams): `above` replaces the last 6 of `base` (94 5-grams shared
    out of 106: Jaccard 0.887), `below` the first 16 (84 of 116: 0.724), and `above`/`below` share 78 of 122
    (0.639). With 128 bands of 1 row every pair is an LSH candidate, so only the verification can keep `below`:
    with the default threshold (0.8) it stays; at 0.65 it goes too."""
    base, above, below = (
        ideographs(range(104)),
        ideographs(range(98), range(1000, 1006)),
        ideographs(range(2000, 2016), range(16, 104)),
    )
    cfg = DedupConfig(num_bands=128, rows_per_band=1)
    sets = {name: shingles(text, cfg) for name, text in (("base", base), ("above", above), ("below", below))}
    assert [round(jaccard(sets["base"], sets[k]), 3) for k in ("above", "below")] == [0.887, 0.724]
    params = minhash_parameters(cfg.num_hashes, cfg.seed)
    sig = {k: minhash_signature(v, params) for k, v in sets.items()}
    assert estimated_jaccard(sig["base"], sig["above"]) > 0.85 and estimated_jaccard(sig["base"], sig["below"]) < 0.75
    if threshold is not None:
        cfg.threshold = threshold
    write_corpus(tmp_path / "in", [[base, OTHER], [above, below, THIRD]])
    kept, stats = run_dedup(cfg, tmp_path / "in", tmp_path, tasks=1)
    assert [d["id"] for d in kept] == kept_ids
    assert stats["🫂 Duplicate filter"]["dropped_near_duplicate"] == 5 - len(kept_ids)


# --- the real pages -------------------------------------------------------------------------------------------------


def visible_text(data: Any, rank: int = 0, world_size: int = 1) -> Any:
    """The whole page's text (tags, scripts and styles dropped): boilerplate and product text together."""
    for doc in data:
        body = re.sub(r"(?is)<(script|style)\b.*?</\1\s*>", " ", doc.text)
        doc.text = html.unescape(re.sub(r"(?s)<[^>]*>", " ", body))
        yield doc


def clueweb_jsonl(web_data: Path, out: Path, *steps: Any) -> Path:
    reader = WarcPageReader(str(web_data / "warc"), glob_pattern="clueweb09-ja-eucjp-quirky.warc.gz")
    pipeline = [reader, KanaPrefilter(), *steps, JsonlWriter(str(out / "data"))]
    LocalPipelineExecutor(pipeline, tasks=1, workers=1, logging_dir=str(out / "logs")).run()
    return out / "data"


def test_clueweb_extracted_shop_pages_collapse_to_one(web_data: Path, tmp_path: Path) -> None:
    """trafilatura alone keeps only the "人気ランキング" sidebar of these 29 shop pages, the same on every page (an
    extraction weakness, not a dedup one): after extraction they are exact duplicates and one page remains."""
    step = MarkdownExtractor(fallback=False)
    data = clueweb_jsonl(web_data, tmp_path / "extract", step, JapaneseLanguageFilter())
    pages = read_kept(data)
    assert len(pages) == 29 and len({p["text"] for p in pages}) == 1
    kept, stats = run_dedup(DedupConfig(), data, tmp_path / "dedup", tasks=2)
    assert [d["id"] for d in kept] == [pages[0]["id"]]
    assert stats["🫂 Duplicate filter"]["dropped_exact_duplicate"] == 28


def test_clueweb_shop_pages_keep_their_descriptions_with_the_fallback(web_data: Path, tmp_path: Path) -> None:
    """With the extraction fallback (the default) every shop page keeps its product description: 29 pages, each
    from the baseline extractor, with sentences trafilatura's sidebar never had; pages of one product stay alike."""
    data = clueweb_jsonl(web_data, tmp_path / "extract", MarkdownExtractor(), JapaneseLanguageFilter())
    pages = read_kept(data)
    assert len(pages) == 29 and {p["metadata"]["extractor"] for p in pages} == {"baseline"}
    assert all("。" in p["text"] and "人気ランキング" not in p["text"] for p in pages)
    assert len({p["text"] for p in pages}) > 10  # the descriptions differ between products


def test_clueweb_near_duplicate_shop_pages_collapse(web_data: Path, tmp_path: Path) -> None:
    """On the whole visible text, the 29 shop pages share a template (character 5-gram Jaccard 0.55-0.75 between
    most pages); the same product under another sort order, or a sibling product, reaches 0.95-0.98."""
    data = clueweb_jsonl(web_data, tmp_path / "pages", visible_text)
    pages = read_kept(data)
    sets = [shingles(p["text"], DedupConfig()) for p in pages]
    similar = np.array([[jaccard(a, b) for b in sets] for a in sets])
    np.fill_diagonal(similar, 0)
    twins = {(i, j) for i, j in zip(*np.nonzero(similar >= 0.95), strict=True) if i < j}
    loners = {i for i in range(len(pages)) if similar[i].max() < 0.8}
    assert len(pages) == 29 and len(twins) == 3 and len(loners) >= 10

    kept, stats = run_dedup(DedupConfig(threshold=0.9), data, tmp_path / "verified", tasks=1)
    kept_ids = {d["id"] for d in kept}
    index = {p["id"]: i for i, p in enumerate(pages)}
    for i, j in twins:
        assert not {pages[i]["id"], pages[j]["id"]} <= kept_ids  # (both may go, to a third, earlier page)
    assert loners <= {index[k] for k in kept_ids}
    for p in pages:  # every page removed has a close kept page
        if p["id"] not in kept_ids:
            assert max(similar[index[p["id"]], index[k]] for k in kept_ids) >= 0.8
    assert 3 <= stats["🫂 Duplicate filter"]["dropped_near_duplicate"] <= 8

    # datatrove's plain LSH (no check) chains the template-sharing pages into one or two clusters (24 vs 2 pages)
    unchecked, _ = run_dedup(DedupConfig(threshold=0), data, tmp_path / "unchecked", tasks=1)
    assert len(unchecked) < len(kept) / 2


def test_an_empty_extraction_is_an_error_locally_and_nothing_to_keep_on_slurm(tmp_path):
    """On Slurm the dedup stages are submitted before extraction runs, so they must get through an extraction
    that kept nothing (all four stages, exact and MinHash); elsewhere no input files means a wrong folder."""
    from kamado.corpus.reshard import ReshardConfig, reshard
    from kamado.errors import DataError

    (tmp_path / "extracted").mkdir()
    cfg = DedupConfig()
    with pytest.raises(DataError, match=r"no \*\.jsonl\.gz files to deduplicate"):
        run_dedup(cfg, tmp_path / "extracted", tmp_path / "local", 2)
    stages = dedup_stages(cfg, str(tmp_path / "extracted"), str(tmp_path / "w"), str(tmp_path / "kept"), 2, True)
    assert [name for name, _, _ in stages] == [
        "dedup_signatures",
        "dedup_exact_duplicates",
        "dedup_minhash_buckets",
        "dedup_minhash_clusters",
        "dedup_filter",
    ]
    for name, steps, n in stages:
        LocalPipelineExecutor(steps, tasks=n, workers=1, logging_dir=str(tmp_path / "logs" / name)).run()
    assert read_kept(tmp_path / "kept") == []
    assert reshard(tmp_path / "kept", tmp_path / "shards", ReshardConfig())["documents"] == 0
