"""The steps chained as datatrove runs them: real WARCs in, Japanese Markdown out; damaged input counted, no crash."""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any

from datatrove.executor import LocalPipelineExecutor

from kamado.corpus.extract import MarkdownExtractor
from kamado.corpus.langid import JapaneseLanguageFilter, KanaPrefilter
from kamado.corpus.pipeline import stage_stats
from kamado.corpus.reader import WarcPageReader

JA_PAGE = "<html><head><title>日本語のページ</title></head><body><article><h1>お知らせ</h1><p>{}</p></article></body>"
JA_TEXT = "本日は晴天なり。新しい商品が入荷しましたので、ぜひお店にお越しください。スタッフ一同お待ちしております。" * 4


def run_local(input_dir: Path, tmp_path: Path) -> tuple[list[dict[str, Any]], dict[str, dict[str, int]]]:
    """Run the four steps with LocalPipelineExecutor; (kept documents, {step name: {stat: total}})."""
    kept_file = tmp_path / "kept.jsonl"

    def collect(data: Any, rank: int = 0, world_size: int = 1) -> Any:
        with open(kept_file, "w", encoding="utf-8") as f:
            for doc in data:
                f.write(json.dumps({"id": doc.id, "text": doc.text, **doc.metadata}, ensure_ascii=False) + "\n")
        yield from ()

    steps = [WarcPageReader(str(input_dir)), KanaPrefilter(), MarkdownExtractor(), JapaneseLanguageFilter(), collect]
    LocalPipelineExecutor(steps, tasks=1, workers=1, logging_dir=str(tmp_path / "logs")).run()
    stats = stage_stats(tmp_path / "logs")
    kept = [json.loads(line) for line in kept_file.read_text(encoding="utf-8").splitlines()]
    return kept, stats


def test_real_warcs_keep_exactly_the_japanese_pages(web_data: Path, tmp_path: Path) -> None:
    kept, stats = run_local(web_data / "warc", tmp_path)
    reader = stats["🕷 WARC pages"]
    # every record of the four files is read; request, metadata and warcinfo records are counted, not pages
    assert reader["warc_records"] == 162
    assert {k: v for k, v in reader.items() if k.startswith("warc_") and k != "warc_records"} == {
        "warc_warcinfo": 4,
        "warc_request": 54,
        "warc_response": 82,
        "warc_metadata": 18,
        "warc_resource": 4,
    }
    assert reader["documents"] == 86  # 82 responses + 4 resources, all decoded
    assert stats["🈂 Kana prefilter"]["dropped_no_kana"] == 57  # every Chinese, Russian, German, Dutch, English page
    assert len(kept) == 29
    for doc in kept:
        assert doc["url"].startswith("http://www.uraharajuku.st/")
        assert (doc["language"], doc["charset"], doc["kind"]) == ("ja", "euc_jp", "html")
        assert "\ufffd" not in doc["text"] and "<" not in doc["text"]


def test_corrupt_inputs_are_counted_rejects(tmp_path: Path, build) -> None:
    warcs = tmp_path / "warcs"
    warcs.mkdir()
    ok = build.response(JA_PAGE.format(JA_TEXT).encode("utf-8"), uri="http://ok.jp/")
    bad_label = build.response(
        JA_PAGE.format(JA_TEXT).encode("euc_jp"), uri="http://label.jp/", content_type="text/html; charset=x-foobar"
    )
    binary = build.response(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256)) * 8, uri="http://png.jp/")
    huge = build.response(
        b"<html><body><p>" + "巨大".encode() * 1_700_000 + b"</p></body></html>", uri="http://10mb.jp/"
    )
    empty_body = build.response(b"", uri="http://empty.jp/")
    empty_record = build.record("response", b"", uri="http://empty-record.jp/")
    not_found = build.response(JA_PAGE.format(JA_TEXT).encode(), uri="http://404.jp/", status="404 Not Found")
    bomb = build.response(gzip.compress(b" " * 20_000_000), uri="http://bomb.jp/", Content_Encoding="gzip")
    records = [ok, bad_label, binary, huge, empty_body, empty_record, not_found, bomb]
    assert len(huge) > 10_000_000
    (warcs / "mixed.warc.gz").write_bytes(build.gzip_members(records))
    truncated = build.gzip_members([ok.replace(b"http://ok.jp/", b"http://cut.jp/"), ok])
    (warcs / "truncated.warc.gz").write_bytes(truncated[:-50])
    (warcs / "empty.warc").write_bytes(b"")

    kept, stats = run_local(warcs, tmp_path)
    reader = stats["🕷 WARC pages"]
    assert reader["input_files"] == 3
    assert reader["oversized"] == 1  # the 10 MB page, over the 8 MiB record limit
    assert reader["binary_payload"] == 1
    assert reader["empty_payload"] == 1
    assert reader["malformed_http"] == 1  # a response record with no HTTP message at all
    assert reader["http_not_ok"] == 1
    assert reader["oversized_body"] == 1  # the gzip bomb
    assert reader["truncated_gzip"] == 1
    assert sorted(doc["url"] for doc in kept) == ["http://cut.jp/", "http://label.jp/", "http://ok.jp/"]
    by_url = {doc["url"]: doc for doc in kept}
    assert by_url["http://label.jp/"]["charset_source"] == "detected"
    assert "# お知らせ" in by_url["http://ok.jp/"]["text"]
