"""Shard format (writer/reader round trip, validation) and JSONL tokenization."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pytest

from kamado.data.jsonl import iter_texts
from kamado.data.shards import MANIFEST, ShardSet, ShardWriter, dtype_for_vocab
from kamado.data.tokenize import tokenize_files
from kamado.errors import DataError


class ByteEncoder:
    """UTF-8 bytes as ids 0..255, EOS = 256: a tokenizer with no dependencies."""

    eos_id = 256
    vocab_size = 257

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [list(t.encode("utf-8")) for t in texts]


def _decode(ids: np.ndarray) -> str:
    return bytes(ids.astype(np.uint8).tolist()).decode("utf-8")


def _write(path: Path, docs: list[np.ndarray], vocab: int = 1000, shard_tokens: int = 100) -> ShardSet:
    with ShardWriter(path, vocab_size=vocab, eos_id=0, shard_tokens=shard_tokens) as w:
        for d in docs:
            w.add_document(d)
    return ShardSet.open(path)


def _random_docs(n: int, vocab: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(1, vocab, size=int(rng.integers(0, 60))) for _ in range(n)]


def test_round_trip_across_shards(tmp_path: Path) -> None:
    docs = _random_docs(200, 1000)
    ss = _write(tmp_path / "set", docs)
    assert ss.num_shards > 5 and ss.dtype == np.dtype("<u2")
    assert ss.num_docs == 200 and ss.num_tokens == sum(len(d) + 1 for d in docs)
    for got, want in zip(ss.iter_documents(), docs, strict=True):
        np.testing.assert_array_equal(got, want)
    flat = np.concatenate([np.append(d, 0) for d in docs])
    assert ss.manifest["shards"][0]["num_tokens"] >= 100  # documents are never split
    for start, end in [(0, ss.num_tokens), (95, 305), (ss.num_tokens - 7, ss.num_tokens), (10, 10)]:
        np.testing.assert_array_equal(ss.read(start, end), flat[start:end])
    for i in range(ss.num_shards):  # per-shard view agrees with the flat one
        a, b = int(ss.shard_starts[i]), int(ss.shard_starts[i + 1])
        np.testing.assert_array_equal(np.asarray(ss.tokens(i)), flat[a:b])
        off = ss.doc_offsets(i)
        assert off[0] == 0 and off[-1] == b - a and (ss.tokens(i)[off[1:] - 1] == 0).all()
    with pytest.raises(IndexError):
        ss.read(0, ss.num_tokens + 1)
    ss.verify_checksums()


def test_uint32_for_large_vocab(tmp_path: Path) -> None:
    assert dtype_for_vocab(65535) == np.dtype("<u2") and dtype_for_vocab(65536) == np.dtype("<u4")
    docs = [np.array([70_000, 65_536, 1]), np.array([69_999])]
    ss = _write(tmp_path / "big", docs, vocab=70_001)
    assert ss.manifest["dtype"] == "uint32" and ss.dtype.itemsize == 4
    assert (tmp_path / "big" / "shard_00000.bin").stat().st_size == 4 * ss.num_tokens
    assert [d.tolist() for d in ss.iter_documents()] == [[70_000, 65_536, 1], [69_999]]


def test_wrong_dtype_shard_is_rejected(tmp_path: Path) -> None:
    ss = _write(tmp_path / "set", _random_docs(10, 1000), shard_tokens=10**6)
    bin_path = tmp_path / "set" / "shard_00000.bin"
    np.asarray(ss.tokens(0)).astype("<u4").tofile(bin_path)  # same ids, written as uint32
    with pytest.raises(DataError, match=r"shard_00000\.bin: .* bytes on disk.*dtype"):
        ShardSet.open(tmp_path / "set")


def test_missing_manifest_and_missing_shard(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"manifest\.json not found"):
        ShardSet.open(tmp_path / "nowhere")
    _write(tmp_path / "set", _random_docs(50, 1000))
    (tmp_path / "set" / "shard_00001.idx").unlink()
    with pytest.raises(DataError, match=r"shard_00001\.idx.*missing"):
        ShardSet.open(tmp_path / "set")


def test_out_of_vocab_ids(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="outside the vocabulary"), ShardWriter(tmp_path / "w", 10, 0) as w:
        w.add_document([3, 10])
    assert not (tmp_path / "w" / MANIFEST).exists()  # an aborted write never looks finished
    _write(tmp_path / "set", _random_docs(5, 1000), shard_tokens=10**6)
    manifest = json.loads((tmp_path / "set" / MANIFEST).read_text())
    manifest["vocab_size"] = 2  # ids in the shard are now >= vocab_size: the spot check must catch it
    (tmp_path / "set" / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(DataError, match=">= vocab_size 2"):
        ShardSet.open(tmp_path / "set")


def test_rewrite_drops_stale_shards(tmp_path: Path) -> None:
    _write(tmp_path / "set", _random_docs(100, 1000))
    ss = _write(tmp_path / "set", _random_docs(3, 1000, seed=1), shard_tokens=10**6)
    assert ss.num_shards == 1
    assert sorted(p.name for p in (tmp_path / "set").iterdir()) == [
        MANIFEST,
        "shard_00000.bin",
        "shard_00000.idx",
    ]


def _jsonl(path: Path, lines: list[str]) -> Path:
    data = "".join(line + "\n" for line in lines).encode()
    path.write_bytes(gzip.compress(data) if path.name.endswith(".gz") else data)
    return path


def test_tokenize_files_round_trip(tmp_path: Path) -> None:
    texts = ["吾輩は猫である。", "名前はまだ無い。", "hello", ""]
    a = _jsonl(
        tmp_path / "a.jsonl",
        [json.dumps({"text": t, "id": i}, ensure_ascii=False) for i, t in enumerate(texts)],
    )
    b = _jsonl(tmp_path / "b.jsonl.gz", ["", json.dumps({"text": "どうも"})])
    stats = tokenize_files([a, b], ByteEncoder(), tmp_path / "out", shard_tokens=16, batch_docs=2, progress=False)
    ss = ShardSet.open(tmp_path / "out")
    assert [_decode(d) for d in ss.iter_documents()] == [
        "吾輩は猫である。",
        "名前はまだ無い。",
        "hello",
        "どうも",
    ]
    assert stats["docs"] == 4 and stats["skipped"] == 1 and stats["tokens"] == ss.num_tokens
    assert stats["chars"] == sum(len(t) for t in texts) + 3 and ss.num_shards == stats["shards"] > 1
    assert ss.eos_id == 256 and ss.tokenizer_info["inputs"] == [str(a), str(b)]


@pytest.mark.parametrize(
    ("line", "why"),
    [
        ("{not json", "invalid JSON"),
        ('{"txt": "x"}', '"text"'),
        ('["text"]', '"text"'),
        ('{"text": 3}', '"text"'),
    ],
)
def test_bad_line_names_file_and_line(tmp_path: Path, line: str, why: str) -> None:
    f = _jsonl(tmp_path / "c.jsonl.gz", ['{"text": "ok"}', "", line])
    with pytest.raises(DataError, match=rf"c\.jsonl\.gz:3: .*{why}"):
        tokenize_files([f], ByteEncoder(), tmp_path / "out", progress=False)
    assert not (tmp_path / "out" / MANIFEST).exists()


def test_bad_utf8_names_line(tmp_path: Path) -> None:
    f = tmp_path / "u.jsonl"
    f.write_bytes(b'{"text": "a"}\n{"text": "\xff"}\n')
    with pytest.raises(DataError, match=r"u\.jsonl:2: not valid UTF-8"):
        list(iter_texts(f))


def test_empty_corpus_and_missing_file(tmp_path: Path) -> None:
    empty = _jsonl(tmp_path / "e.jsonl", ["", '{"text": ""}'])
    with pytest.raises(DataError, match=r"no documents in .*e\.jsonl"):
        tokenize_files([empty], ByteEncoder(), tmp_path / "out", progress=False)
    assert not (tmp_path / "out" / MANIFEST).exists()
    with pytest.raises(DataError, match=r"missing\.jsonl: input file not found"):
        tokenize_files([empty, tmp_path / "missing.jsonl"], ByteEncoder(), tmp_path / "out", progress=False)
    with pytest.raises(DataError, match=r"\.txt: expected a file ending in"):
        tokenize_files([_jsonl(tmp_path / "x.txt", ["x"])], ByteEncoder(), tmp_path / "out", progress=False)


def test_zst_input(tmp_path: Path) -> None:
    f = tmp_path / "z.jsonl.zst"
    try:
        import zstandard
    except ImportError:  # optional dependency: without it, say what to install
        f.write_bytes(b"\x28\xb5\x2f\xfd")
        with pytest.raises(DataError, match="zstandard"):
            list(iter_texts(f))
        return
    f.write_bytes(zstandard.ZstdCompressor().compress(b'{"text": "zst"}\n'))
    assert list(iter_texts(f)) == ["zst"]
