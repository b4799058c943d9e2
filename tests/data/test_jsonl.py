"""Reading `.jsonl.zst` documents for real (zstandard is a dependency): frames, progress, corrupt and cut files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import zstandard

from kamado.data.jsonl import iter_jsonl_texts, iter_texts
from kamado.errors import DataError

DOCS = [f"文書{i}: 吾輩は猫である。" + "名前はまだ無い。" * (i % 7) for i in range(3000)]


def jsonl_bytes(texts: list[str]) -> bytes:
    return "".join(json.dumps({"text": t}, ensure_ascii=False) + "\n" for t in texts).encode("utf-8")


def test_reads_zstd_written_by_a_streaming_writer(tmp_path: Path) -> None:
    path = tmp_path / "docs.jsonl.zst"
    with open(path, "wb") as f, zstandard.ZstdCompressor(level=3).stream_writer(f) as w:
        for i in range(0, len(DOCS), 100):  # written in pieces, as a pipeline would
            w.write(jsonl_bytes(DOCS[i : i + 100]))
    assert path.stat().st_size < len(jsonl_bytes(DOCS)) / 5  # it is compressed
    progress = [0]
    assert list(iter_texts(path, progress)) == DOCS
    assert progress[0] == path.stat().st_size  # the raw position reached the end of the file


def test_reads_every_frame_of_concatenated_zstd_files(tmp_path: Path) -> None:
    """`cat a.jsonl.zst b.jsonl.zst` is a valid zstd file (zstd -d reads both frames), and so is a file whose
    frames were written one per flush."""
    path = tmp_path / "cat.jsonl.zst"
    zc = zstandard.ZstdCompressor()
    path.write_bytes(zc.compress(jsonl_bytes(DOCS[:10])) + zc.compress(jsonl_bytes(DOCS[10:20])))
    assert list(iter_jsonl_texts([path])) == DOCS[:20]


def test_empty_zstd_file_has_no_documents(tmp_path: Path) -> None:
    path = tmp_path / "empty.jsonl.zst"
    path.write_bytes(zstandard.ZstdCompressor().compress(b""))
    other = tmp_path / "other.jsonl.zst"
    other.write_bytes(zstandard.ZstdCompressor().compress(jsonl_bytes(["一"])))
    assert list(iter_jsonl_texts([path, other])) == ["一"]


def test_bytes_that_are_not_zstd_are_one_data_error(tmp_path: Path) -> None:
    path = tmp_path / "fake.jsonl.zst"
    path.write_bytes(b'{"text": "plain JSONL with a .zst name"}\n')
    with pytest.raises(DataError, match=r"fake\.jsonl\.zst:1: cannot decompress"):
        list(iter_texts(path))


@pytest.mark.parametrize("keep", [0.02, 0.5, 0.999])
def test_a_cut_zstd_file_is_an_error_not_a_shorter_corpus(tmp_path: Path, keep: float) -> None:
    """A copy cut short must never read as a complete, smaller corpus (gzip's reader raises EOFError there)."""
    data = zstandard.ZstdCompressor().compress(jsonl_bytes(DOCS))
    path = tmp_path / "cut.jsonl.zst"
    path.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(DataError, match=r"cut\.jsonl\.zst:\d+: (cannot decompress|invalid JSON)"):
        list(iter_texts(path))


def test_a_cut_at_a_block_end_is_still_an_error(tmp_path: Path) -> None:
    """Cut after a flushed block, the decompressed data ends exactly at a line end: only the unfinished frame
    tells that documents are missing."""
    cobj = zstandard.ZstdCompressor().compressobj()
    first = cobj.compress(jsonl_bytes(DOCS[:25])) + cobj.flush(zstandard.COMPRESSOBJ_FLUSH_BLOCK)
    rest = cobj.compress(jsonl_bytes(DOCS[25:50])) + cobj.flush()
    assert zstandard.ZstdDecompressor().decompressobj().decompress(first + rest) == jsonl_bytes(DOCS[:50])
    assert zstandard.ZstdDecompressor().decompressobj().decompress(first) == jsonl_bytes(DOCS[:25])
    path = tmp_path / "cut.jsonl.zst"
    path.write_bytes(first)
    with pytest.raises(DataError, match=r"cut\.jsonl\.zst:26: cannot decompress"):
        list(iter_texts(path))


def test_reads_xz_and_names_a_corrupt_one(tmp_path: Path) -> None:
    import lzma

    path = tmp_path / "docs.jsonl.xz"
    path.write_bytes(lzma.compress(jsonl_bytes(DOCS)))
    assert list(iter_texts(path)) == DOCS
    cut = tmp_path / "cut.jsonl.xz"
    cut.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(DataError, match=r"cut\.jsonl\.xz:\d+: cannot decompress"):
        list(iter_texts(cut))
    bad = tmp_path / "bad.jsonl.xz"
    bad.write_bytes(b"not xz at all")
    with pytest.raises(DataError, match=r"bad\.jsonl\.xz:1: cannot decompress"):
        list(iter_texts(bad))
