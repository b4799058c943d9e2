"""The whole corpus pipeline on the embedded WARC sample (samples/warc, in the repo): Japanese pages in, uniform
shards + manifest out; the exact duplicate collapses; a restart after losing outputs rewrites identical shards;
the report adds up. Killing the real command and the Ray executor are in test_corpus_kill_ray.py."""

from __future__ import annotations

import gzip
import json
import random
import shutil
from pathlib import Path

import pytest

from kamado.corpus import report
from kamado.corpus.config import SlurmConfig
from kamado.corpus.pipeline import CorpusConfig, run_corpus
from kamado.corpus.quality import QualityConfig
from kamado.corpus.reshard import ReshardConfig
from kamado.errors import ConfigError, DataError

SAMPLE = Path(__file__).parents[2] / "samples" / "warc"


def config() -> CorpusConfig:
    return CorpusConfig(
        tasks=2,
        workers=1,
        extract_timeout_s=30.0,  # generous: the output must not depend on how loaded the machine is
        quality=QualityConfig.for_snippets(),
        reshard=ReshardConfig(shard_bytes=8000),
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
    assert summary["stats"]["dedup_filter"]["🫂 Duplicate filter"].get("dropped_exact_duplicate", 0) >= 1


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


def test_restart_after_a_failed_task_reports_every_task(first_run: tuple[Path, dict], tmp_path: Path) -> None:
    """As left by an error in extraction task 1 (no completion marker, no task stats, no later stage): the restart
    redoes that task only, and the summary and report count every task, not just the one redone."""
    out, summary = first_run
    again = tmp_path / "again"
    shutil.copytree(out, again)
    logs = again / "work" / "logs"
    for p in [logs / "extract/completions/00001", logs / "extract/stats/00001.json", logs / "extract/stats.json"]:
        p.unlink()
    for p in [*(again / "work/extracted").glob("00001*"), again / "corpus_summary.json", again / "corpus_report.md"]:
        p.unlink()
    for d in [*logs.glob("dedup_*"), again / "work/dedup", again / "work/deduped", again / "shards"]:
        shutil.rmtree(d)
    redone = run_corpus(config(), SAMPLE, again)
    assert shard_bytes(again) == shard_bytes(out)
    assert redone["stats"] == summary["stats"]
    assert report.funnel(redone)[0] == ("WARC records", 206)


def test_input_without_warc_records_warns(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A tester's case: random bytes named x.warc.gz gave exit 0 and an empty manifest, and nothing said why."""
    warcs = tmp_path / "warcs"
    warcs.mkdir()
    (warcs / "x.warc.gz").write_bytes(random.Random(0).randbytes(4096))
    summary = run_corpus(config(), warcs, tmp_path / "out")
    assert summary["documents_out"] == 0
    reader = summary["stats"]["extract"]["🕷 WARC pages"]
    assert (reader["input_bytes"], reader["not_warc_file"], reader.get("warc_records", 0)) == (4096, 1, 0)
    warning = "1 input file(s), 4,096 bytes, gave 0 documents: 1 file(s) not readable as WARC"
    assert f"kamado: warning: {warning}" in capsys.readouterr().err
    text = (tmp_path / "out" / "corpus_report.md").read_text()
    assert warning in text and "| not_warc_file | 1 |" in text


def test_bad_inputs(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"no \.warc"):
        run_corpus(config(), tmp_path, tmp_path / "out")
    with pytest.raises(ConfigError, match=r"corpus\.executor"):
        run_corpus(CorpusConfig(executor="spark"), SAMPLE, tmp_path / "out")
    with pytest.raises(ConfigError, match=r"needs slurm\.partition"):
        run_corpus(CorpusConfig(executor="slurm"), SAMPLE, tmp_path / "out")
    with pytest.raises(ConfigError, match=r"is for `kamado corpus run`"):  # a recipe's stage cannot resubmit itself
        run_corpus(CorpusConfig(executor="slurm", slurm=SlurmConfig(partition="p")), SAMPLE, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_report_adds_up(first_run: tuple[Path, dict]) -> None:
    out, summary = first_run
    rows = report.funnel(summary)
    counts = [n for _, n in rows]
    assert counts == sorted(counts, reverse=True) and counts[-1] == summary["documents_out"]
    drops: dict[str, int] = {}
    for step, _, n in report.rejections(summary):
        drops[step] = drops.get(step, 0) + n
    funnel = dict(rows)
    # every document lost between two rows is accounted for by a named reason
    assert drops["🈂 Kana prefilter"] == funnel["pages (HTML or text)"] - funnel["kana prefilter"]
    assert drops["🗾 Japanese language ID"] == funnel["Markdown extracted"] - funnel["Japanese (language ID)"]
    assert drops["🎌 Japanese quality"] == funnel["Japanese (language ID)"] - funnel["quality filters"]
    assert drops["🫂 Duplicate filter"] == funnel["quality filters"] - funnel["deduplicated"] >= 1
    langs = report.languages(summary)
    assert sum(langs.values()) == funnel["Markdown extracted"] and langs["ja"] >= funnel["Japanese (language ID)"]
    assert set(langs) - {"ja"}, "the sample's English pages with kana in their markup reach language ID"
    assert report.speed(summary)["pages_per_s"] > 0
    text = (out / "corpus_report.md").read_text()
    assert "| deduplicated | " in text and "no_kana" in text and "pages/s per worker" in text
    assert (out / "corpus_funnel.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_report_step_names_match_the_steps() -> None:
    from kamado.corpus.dedup import DuplicateFilter
    from kamado.corpus.extract import MarkdownExtractor
    from kamado.corpus.langid import JapaneseLanguageFilter, KanaPrefilter
    from kamado.corpus.quality_classifier import QualityClassifier
    from kamado.corpus.quality_filter import JapaneseQualityFilter
    from kamado.corpus.reader import WarcPageReader

    names = [c.name for c in (WarcPageReader, KanaPrefilter, MarkdownExtractor, JapaneseLanguageFilter)]
    names += [JapaneseQualityFilter.name, QualityClassifier.name, DuplicateFilter.name]
    for _, part, _ in report.STEP_NAMES.values():
        assert any(part in name for name in names), part


def test_corpus_preset_and_overrides(tmp_path: Path) -> None:
    from kamado.corpus.config import load_corpus_config

    presets = Path(__file__).parents[2] / "recipes" / "corpus"
    cc = load_corpus_config(presets / "common_crawl.toml", ["--dedup.threshold=0.7", "--tasks=8"])
    assert (cc.tasks, cc.workers, cc.dedup.threshold, cc.reshard.shard_bytes) == (8, 16, 0.7, 64 * 2**20)
    sample = load_corpus_config(presets / "sample.toml")
    assert sample.quality.disabled_rules == ["too_short"] and sample.dedup == CorpusConfig().dedup
    with pytest.raises(ConfigError, match=r"unknown config key 'dedup\.treshold'"):
        load_corpus_config(None, ["--dedup.treshold=0.7"])
    with pytest.raises(ConfigError, match=r"quality\.disabled_rules: unknown rule"):
        load_corpus_config(None, ['--quality.disabled_rules=["too_long"]'])
    with pytest.raises(ConfigError, match="rows_per_band"):
        load_corpus_config(None, ["--dedup.rows_per_band=0"])
    from kamado.corpus.extract import MarkdownExtractor
    from kamado.corpus.pipeline import extract_stage

    for on in (True, False):  # the fallback setting reaches the extraction step
        cfg = load_corpus_config(None, [f"--extract_fallback={str(on).lower()}"])
        [step] = [
            s for s in extract_stage(cfg, str(tmp_path), str(tmp_path / "out"))[1] if isinstance(s, MarkdownExtractor)
        ]
        assert step.fallback is on


def test_restart_with_other_settings_is_refused(first_run: tuple[Path, dict], tmp_path: Path) -> None:
    out, _ = first_run
    again = tmp_path / "again"
    shutil.copytree(out, again)
    other = config()
    other.tasks = 3  # datatrove's completion markers would mix 2-task and 3-task outputs
    other.dedup.threshold = 0.7
    with pytest.raises(
        ConfigError,
        match=r"tasks: 2 → 3; .*dedup\.threshold: 0\.8 → 0\.7|dedup\.threshold: 0\.8 → 0\.7; .*tasks: 2 → 3",
    ):
        run_corpus(other, SAMPLE, again)
    faster = config()
    faster.workers = 2  # how many run at once does not change the output: accepted
    assert (
        run_corpus(faster, SAMPLE, again)["documents_out"]
        == json.loads((out / "shards/manifest.json").read_text())["documents"]
    )


def test_classifier_step_in_the_pipeline_scores_and_shows_in_the_funnel(tmp_path: Path) -> None:
    from kamado.corpus.quality_model import DEFAULT_MODEL_DIR, ClassifierConfig, QualityModel

    cfg = config()
    cfg.quality.classifier = ClassifierConfig(enabled=True)
    summary = run_corpus(cfg, SAMPLE, tmp_path / "out")
    rows = dict(report.funnel(summary))
    assert list(rows).index("quality classifier") == list(rows).index("quality filters") + 1
    drops = sum(n for step, _, n in report.rejections(summary) if step == "🧮 Quality classifier")
    assert drops == rows["quality filters"] - rows["quality classifier"] > 0
    kept = [
        json.loads(line)
        for p in sorted((tmp_path / "out" / "shards").glob("shard_*.jsonl.gz"))
        for line in gzip.decompress(p.read_bytes()).decode().splitlines()
    ]
    threshold = QualityModel.load(DEFAULT_MODEL_DIR).threshold
    assert kept and all(d["metadata"]["quality_score"] >= round(threshold, 4) - 1e-4 for d in kept)
    assert "low_quality_score" in (tmp_path / "out" / "corpus_report.md").read_text()


def _report_the_parents_marker(data, rank: int = 0, world_size: int = 1):  # a datatrove step: a generator function
    import sys

    marker = sys.modules.get("kamado_parent_marker")  # set in the test's process: a forked worker has it
    if marker is not None:
        Path(marker.out_dir, f"{rank}.txt").write_text("inherited")
    yield from data or []


def test_local_workers_are_forked_with_the_parents_modules_on_linux(tmp_path: Path) -> None:
    """The local executor's workers start from the parent's memory (fork), not from a fresh interpreter
    (datatrove's default forkserver re-imports everything in every stage's pool: ~1 s a stage)."""
    import sys
    import types

    from kamado.corpus.pipeline import _executor

    if sys.platform != "linux":
        pytest.skip("fork is used on Linux only")
    marker = types.ModuleType("kamado_parent_marker")
    marker.out_dir = str(tmp_path)  # type: ignore[attr-defined]
    sys.modules["kamado_parent_marker"] = marker
    try:
        _executor(CorpusConfig(tasks=2, workers=2), [_report_the_parents_marker], 2, str(tmp_path / "logs")).run()
    finally:
        del sys.modules["kamado_parent_marker"]
    assert sorted(p.name for p in tmp_path.glob("*.txt")) == ["0.txt", "1.txt"]


class _WarmStep:
    """A step whose worker reports whether it found what the parent loaded in `warm_up`, and loaded nothing."""

    def __init__(self, out_dir: str):
        self.out_dir, self.warm_ups = out_dir, 0

    def warm_up(self) -> None:
        import sys
        import types

        self.warm_ups += 1
        sys.modules["kamado_warm_marker"] = types.ModuleType("kamado_warm_marker")

    def __call__(self, data, rank: int = 0, world_size: int = 1):
        import sys

        found = "kamado_warm_marker" in sys.modules
        Path(self.out_dir, f"{rank}.txt").write_text(f"{found} {self.warm_ups}")
        yield from data or []


def test_steps_warm_up_once_in_the_parent_and_the_forked_workers_inherit_it(tmp_path: Path) -> None:
    import sys

    from kamado.corpus.pipeline import _executor

    if sys.platform != "linux":
        pytest.skip("fork is used on Linux only")
    step = _WarmStep(str(tmp_path))
    try:
        executor = _executor(CorpusConfig(tasks=2, workers=2), [step], 2, str(tmp_path / "logs"))
        assert step.warm_ups == 1  # before any worker exists
        executor.run()
    finally:
        sys.modules.pop("kamado_warm_marker", None)
    assert [p.read_text() for p in sorted(tmp_path.glob("*.txt"))] == ["True 1", "True 1"]


WARM_UP_CHECK = """
import sys
from kamado.corpus.config import CorpusConfig
from kamado.corpus.dedup import dedup_stages
from kamado.corpus.langid import _identifier
from kamado.corpus.minhash import _normalization_tables
from kamado.corpus.pipeline import extract_stage

cfg = CorpusConfig()
cfg.quality.classifier.enabled = True
steps = extract_stage(cfg, "w", "x")[1] + dedup_stages(cfg.dedup, "x", "y", "z", 2)[0][1]
def loaded():
    return [_identifier.cache_info().currsize, _normalization_tables.cache_info().currsize,
            "sklearn.feature_extraction.text" in sys.modules, "trafilatura" in sys.modules]
before = loaded()
for s in steps:
    getattr(s, "warm_up", lambda: None)()
print(before, loaded())
"""


def test_each_steps_warm_up_loads_what_its_workers_need() -> None:
    """In a fresh interpreter: the language identifier, the normalization tables, scikit-learn (the quality
    classifier's features) and trafilatura are not loaded by building the steps, and are after their warm-ups."""
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-c", WARM_UP_CHECK], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.split("\n")[-2] == "[0, 0, False, False] [1, 1, True, True]"
