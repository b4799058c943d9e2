"""WARC framing: every record of the real files read, and damaged input skipped and counted, never fatal."""

from __future__ import annotations

import gzip
import io
import re
import zlib
from collections import Counter
from pathlib import Path

import pytest

from kamado.corpus.warc import SKIP_REASONS, WarcRecord, iter_records, read_warc_file
from kamado.errors import DataError

# record types per file; warcio 1.8 reads the same records (checked by hand when these tests were written)
REAL_FILES = {
    "cc-multilingual-no-ja.warc.gz": {"warcinfo": 1, "request": 17, "response": 16, "metadata": 16},
    "clueweb09-ja-eucjp-quirky.warc.gz": {"warcinfo": 1, "response": 29},
    "dolma-en-sample-0000.warc.gz": {"warcinfo": 1, "request": 22, "response": 22, "metadata": 1, "resource": 2},
    "dolma-en-sample-0001.warc.gz": {"warcinfo": 1, "request": 15, "response": 15, "metadata": 1, "resource": 2},
}


def read(path: Path, **kw: int) -> tuple[list[WarcRecord], Counter[str]]:
    counts: Counter[str] = Counter()
    return list(read_warc_file(path, counts, **kw)), counts


def read_bytes(data: bytes, **kw: int) -> tuple[list[WarcRecord], Counter[str]]:
    counts: Counter[str] = Counter()
    return list(iter_records(io.BytesIO(data), counts, **kw)), counts


def skipped(counts: Counter[str]) -> dict[str, int]:
    return {k: v for k, v in counts.items() if k in SKIP_REASONS}


@pytest.mark.parametrize("name", sorted(REAL_FILES))
def test_every_record_of_the_real_files_is_read(web_data: Path, name: str) -> None:
    records, counts = read(web_data / "warc" / name)
    assert Counter(r.record_type for r in records) == REAL_FILES[name]
    assert skipped(counts) == {}
    assert counts["records"] == len(records) == sum(REAL_FILES[name].values())
    for r in records:
        assert len(r.block) == int(r.headers["content-length"])
        assert r.record_id


def test_quirky_clueweb_headers_are_kept_as_they_are(web_data: Path) -> None:
    records, _ = read(web_data / "warc" / "clueweb09-ja-eucjp-quirky.warc.gz")
    first = records[1]
    assert first.version == "0.18"
    assert first.date == "2008-10-294T05:21:46-0700"  # an impossible date, kept: it is not needed for framing
    assert first.headers["warc-identified-payload-type"] == ""
    assert first.target_uri.startswith("http://www.uraharajuku.st/shopdetail/")
    assert first.block.startswith(b"HTTP/1.1 200 OK")


def test_wget_angle_bracket_uris_are_unwrapped(web_data: Path) -> None:
    records, _ = read(web_data / "warc" / "dolma-en-sample-0000.warc.gz")
    assert records[1].target_uri == "https://www.semanticscholar.org/research/research-team"


def test_plain_and_single_member_gzip_files(tmp_path: Path, build) -> None:
    recs = [build.response(f"<p>{i}</p>".encode(), uri=f"http://a.jp/{i}") for i in range(3)]
    (tmp_path / "plain.warc").write_bytes(b"".join(recs))
    (tmp_path / "one.warc.gz").write_bytes(gzip.compress(b"".join(recs)))
    (tmp_path / "members.warc.gz").write_bytes(build.gzip_members(recs))
    for name in ("plain.warc", "one.warc.gz", "members.warc.gz"):
        records, counts = read(tmp_path / name)
        assert [r.target_uri for r in records] == ["http://a.jp/0", "http://a.jp/1", "http://a.jp/2"], name
        assert skipped(counts) == {}


def test_truncated_gzip_keeps_the_records_before_the_cut(tmp_path: Path, build) -> None:
    data = build.gzip_members([build.response(b"<p>x</p>" * 200, uri=f"http://a.jp/{i}") for i in range(3)])
    path = tmp_path / "cut.warc.gz"
    path.write_bytes(data[: len(data) - 100])
    records, counts = read(path)
    assert len(records) == 2
    assert counts["truncated_gzip"] == 1


def test_corrupt_member_is_skipped_and_reading_resumes(tmp_path: Path, build) -> None:
    members = [gzip.compress(build.response(b"<p>page</p>" * 500, uri=f"http://a.jp/{i}")) for i in range(3)]
    bad = bytearray(members[1])
    bad[40:60] = b"\xff" * 20  # inside the deflate stream
    path = tmp_path / "bad.warc.gz"
    path.write_bytes(members[0] + bytes(bad) + members[2])
    records, counts = read(path)
    assert [r.target_uri for r in records] == ["http://a.jp/0", "http://a.jp/2"]
    assert counts["corrupt_gzip"] == 1


@pytest.mark.parametrize(
    "bad_record",
    [
        b"WARC/1.0\r\nWARC-Type: response\r\n\r\nno content length\r\n\r\n",
        b"WARC/1.0\r\nWARC-Type: response\r\nContent-Length: lots\r\n\r\nxx\r\n\r\n",
        b"WARC/1.0\r\nthis line is not a field\r\nContent-Length: 2\r\n\r\nxx\r\n\r\n",
        b"\x89PNG\r\n\x1a\n\x00\x00 binary garbage where a record should start\r\n",
    ],
    ids=["no-length", "bad-length", "bad-field", "garbage"],
)
@pytest.mark.parametrize("gzipped", [False, True], ids=["warc", "warc.gz"])
def test_malformed_header_is_counted_and_the_next_record_read(
    tmp_path: Path, build, bad_record: bytes, gzipped: bool
) -> None:
    recs = [
        build.response(b"<p>a</p>", uri="http://a.jp/a"),
        bad_record,
        build.response(b"<p>b</p>", uri="http://a.jp/b"),
    ]
    path = tmp_path / ("f.warc.gz" if gzipped else "f.warc")
    path.write_bytes(build.gzip_members(recs) if gzipped else b"".join(recs))
    records, counts = read(path)
    assert [r.target_uri for r in records] == ["http://a.jp/a", "http://a.jp/b"]
    assert skipped(counts) == {"malformed_header": 1}


def test_oversized_record_is_skipped_without_reading_it_whole(tmp_path: Path, build) -> None:
    big = build.response(b"x" * 300_000, uri="http://a.jp/big")
    path = tmp_path / "big.warc.gz"
    path.write_bytes(build.gzip_members([big, build.response(b"<p>ok</p>", uri="http://a.jp/ok")]))
    records, counts = read(path, max_record_bytes=100_000)
    assert [r.target_uri for r in records] == ["http://a.jp/ok"]
    assert skipped(counts) == {"oversized": 1}


def test_content_length_past_the_end_is_a_truncated_record(tmp_path: Path, build) -> None:
    rec = build.record("resource", b"short", Content_Length="999")
    path = tmp_path / "t.warc"
    path.write_bytes(build.response(b"<p>a</p>") + rec)
    records, counts = read(path)
    assert len(records) == 1
    assert counts["truncated_record"] == 1


def test_empty_file_and_empty_record(tmp_path: Path, build) -> None:
    (tmp_path / "empty.warc.gz").write_bytes(b"")
    assert read(tmp_path / "empty.warc.gz") == ([], Counter())
    (tmp_path / "zero.warc").write_bytes(build.record("resource", b""))
    records, _ = read(tmp_path / "zero.warc")
    assert len(records) == 1 and records[0].block == b""


def test_missing_file_is_a_data_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="cannot open WARC file"):
        list(read_warc_file(tmp_path / "nope.warc.gz"))


SAMPLE = Path(__file__).parents[2] / "samples" / "warc"


@pytest.mark.parametrize("tail", [b"", b"\r\n"], ids=["no-newline", "crlf"])
def test_non_warc_member_does_not_swallow_the_next_record(tail: bytes) -> None:
    """A tester's case: a gzip member that is valid gzip but holds no WARC record, without a final newline, glued
    the next record's version line onto its last line: that record was lost and not counted (43 of 44 read)."""
    data = (SAMPLE / "ja-pages.warc.gz").read_bytes()
    want, _ = read_bytes(data)
    first = zlib.decompressobj(31)
    first.decompress(data)
    rest = first.unused_data
    glued = data[: len(data) - len(rest)] + gzip.compress(b"<html>not a WARC record</html>" + tail) + rest
    records, counts = read_bytes(glued)
    assert len(want) == 44 and records == want
    assert skipped(counts) == {"malformed_header": 1}


@pytest.mark.parametrize("garbage", [b"garbage, no newline", b"\x00\x01binary\r", b"line\r\nand a half"])
def test_plain_garbage_without_newline_before_a_record(build, garbage: bytes) -> None:
    recs = [build.response(f"<p>{i}</p>".encode(), uri=f"http://a.jp/{i}") for i in range(3)]
    records, counts = read_bytes(recs[0] + garbage + recs[1] + recs[2])
    assert [r.target_uri for r in records] == ["http://a.jp/0", "http://a.jp/1", "http://a.jp/2"]
    assert skipped(counts) == {"malformed_header": 1}


def _three(build) -> list[bytes]:
    return [build.response(f"<p>{i}</p>".encode() * 50, uri=f"http://a.jp/{i}") for i in range(3)]


@pytest.mark.parametrize(
    ("length", "reason"), [("99", "length_mismatch"), ("800", "length_mismatch"), ("99999999999", "oversized")]
)
@pytest.mark.parametrize("gzipped", [False, True], ids=["warc", "warc.gz"])
def test_a_wrong_content_length_costs_that_record_only(build, length: str, reason: str, gzipped: bool) -> None:
    """Too short, running into the next record, or past the end of the file: the records after it are read."""
    recs = _three(build)
    recs[1] = re.sub(rb"Content-Length: \d+", b"Content-Length: " + length.encode(), recs[1])
    records, counts = read_bytes(build.gzip_members(recs) if gzipped else b"".join(recs))
    assert [r.target_uri for r in records] == ["http://a.jp/0", "http://a.jp/2"]
    assert skipped(counts) == {reason: 1}


def test_a_member_cut_short_costs_that_record_only(build) -> None:
    """zlib reads the next member's header as deflate data of the cut one; reading resumes at that header."""
    members = [gzip.compress(r) for r in _three(build)]
    records, counts = read_bytes(members[0] + members[1][:-30] + members[2])
    assert [r.target_uri for r in records] == ["http://a.jp/0", "http://a.jp/2"]
    assert skipped(counts) == {"corrupt_gzip": 1}


def test_damaged_first_gzip_header_is_still_a_gzipped_file(build) -> None:
    members = [gzip.compress(r) for r in _three(build)]
    records, counts = read_bytes(b"\x00" + members[0][1:] + members[1] + members[2])
    assert [r.target_uri for r in records] == ["http://a.jp/1", "http://a.jp/2"]
    assert skipped(counts) == {"corrupt_gzip": 1}


@pytest.mark.parametrize("size", [16_380, 2 * 16_384 - 4, 100_000])
def test_long_garbage_without_newline_split_inside_the_version_line(build, size: int) -> None:
    """Lines are read 16 KiB at a time: a version line cut in two at that limit is still found."""
    recs = _three(build)
    records, counts = read_bytes(recs[0] + b"x" * size + recs[1] + recs[2])
    assert [r.target_uri for r in records] == ["http://a.jp/0", "http://a.jp/1", "http://a.jp/2"]
    assert skipped(counts) == {"malformed_header": 1}
