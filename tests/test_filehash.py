"""File hashes: streamed, and remembered by size and mtime so `kamado run` does not reread unchanged sources."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from kamado.filehash import HashCache, sha256_file


def test_sha256_file_is_the_sha256_of_the_bytes(tmp_path: Path) -> None:
    data = os.urandom(3 * 2**20 + 17)  # more than one read buffer
    (tmp_path / "f").write_bytes(data)
    assert sha256_file(tmp_path / "f") == hashlib.sha256(data).hexdigest()


def test_the_cache_rehashes_only_files_whose_size_or_mtime_changed(tmp_path: Path) -> None:
    a, b, record = tmp_path / "a.jsonl", tmp_path / "b.jsonl", tmp_path / "checks" / "file_sha256.json"
    a.write_text('{"text": "あ"}\n')
    b.write_text('{"text": "い"}\n')
    first = HashCache(record)
    want = {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in (a, b)}
    assert {p: first.sha256(p) for p in (a, b)} == want and first.hashed == 2
    first.save()

    again = HashCache(record)
    assert {p: again.sha256(p) for p in (a, b)} == want and again.hashed == 0  # read from the record

    st = a.stat()
    a.write_text('{"text": "う"}\n')  # same size, other bytes, a later mtime
    os.utime(a, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    b.write_text('{"text": "いい"}\n')  # another size
    os.utime(b, ns=(b.stat().st_atime_ns, st.st_mtime_ns))  # even with the old mtime
    third = HashCache(record)
    assert third.sha256(a) == hashlib.sha256(a.read_bytes()).hexdigest() != want[a]
    assert third.sha256(b) == hashlib.sha256(b.read_bytes()).hexdigest() != want[b]
    assert third.hashed == 2


def test_an_unreadable_record_counts_as_empty(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("x")
    record = tmp_path / "file_sha256.json"
    for junk in ("{torn", "[1, 2]", '{"/x": 3}'):
        record.write_text(junk)
        cache = HashCache(record)
        assert cache.sha256(tmp_path / "f") == hashlib.sha256(b"x").hexdigest() and cache.hashed == 1
        cache.save()
        assert HashCache(record).sha256(tmp_path / "f") == hashlib.sha256(b"x").hexdigest()
