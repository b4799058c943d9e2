"""WARC fuzzing: the real sample files (`samples/warc/*.warc.gz`), damaged the ways crawls get damaged, with fixed
seeds. The oracle, for every case:

- every record whose bytes the damage did not touch is read, with the same type, headers and block;
- nothing is read twice or out of order, and `counts["records"]` is the number read;
- no silent loss: between two records read intact, a record that went in and was not read (nor read damaged), or
  inserted garbage, means a skip was counted there. Skips are totals, not positions, so this is checked as
  "skips counted >= stretches that need one" (one corrupt gzip member or one run of garbage may cost several
  records and is one skip).

Each case knows where every original record lies (one gzip member per record, as Common Crawl writes them), so it
knows which records a mutation touched. A failure names the kind, the form (gzip or plain), the seed and the
file: `build_case(kind, gzipped, seed)` rebuilds it.
"""

from __future__ import annotations

import gzip
import io
import random
import re
import time
import zlib
from collections import Counter
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

import pytest

from kamado.corpus.warc import SKIP_REASONS, WarcRecord, iter_records

SAMPLE = Path(__file__).parents[2] / "samples" / "warc"
SEEDS = 25  # per kind and form: 7 kinds x 2 forms x 25 = 350 cases, about 2 s (more under `slow`)
Key = tuple[str, str, tuple[tuple[str, str], ...], bytes]


def key(r: WarcRecord) -> Key:
    return (r.record_type, r.version, tuple(r.headers.items()), r.block)


@dataclass(frozen=True)
class Material:
    name: str
    members: list[bytes]  # compressed, one record each
    records: list[bytes]  # the same, decompressed (version line to trailer)
    want: list[Key]  # the records as read from the undamaged file


@cache
def materials() -> list[Material]:
    out = []
    for path in sorted(SAMPLE.glob("*.warc.gz")):
        data, members = path.read_bytes(), []
        while data:
            d = zlib.decompressobj(31)
            d.decompress(data)
            members.append(data[: len(data) - len(d.unused_data)])
            data = d.unused_data
        counts: Counter[str] = Counter()
        want = [key(r) for r in iter_records(io.BytesIO(b"".join(members)), counts)]
        assert len(want) == len(members) == len(set(want)) and set(counts) == {"records"}, path.name
        out.append(Material(path.name, members, [gzip.decompress(m) for m in members], want))
    assert out, f"no WARC samples in {SAMPLE}"
    return out


@dataclass
class Case:
    """A file under construction: pieces (bytes, owner); owner is a record index, or -1 - n for garbage n."""

    material: Material
    gzipped: bool
    pieces: list[tuple[bytes, int]]
    touched: set[int] = field(default_factory=set)  # owners whose bytes were changed
    cut: int | None = None  # the file ends here

    @classmethod
    def of(cls, m: Material, gzipped: bool) -> Case:
        return cls(m, gzipped, [(d, i) for i, d in enumerate(m.members if gzipped else m.records)])

    def record_bytes(self, i: int) -> bytes:
        return self.material.records[i]

    def replace_record(self, i: int, raw: bytes) -> None:
        at = next(n for n, (_, owner) in enumerate(self.pieces) if owner == i)
        self.pieces[at] = (gzip.compress(raw, mtime=0) if self.gzipped else raw, i)
        self.touched.add(i)

    def insert(self, boundary: int, data: bytes) -> None:
        """Garbage before record `boundary` (after the last record when it is the record count)."""
        at = next((n for n, (_, owner) in enumerate(self.pieces) if owner == boundary), len(self.pieces))
        self.pieces.insert(at, (data, -1 - boundary))

    def spans(self) -> list[tuple[int, int, int]]:
        out, at = [], 0
        for data, owner in self.pieces:
            out.append((at, at + len(data), owner))
            at += len(data)
        return out

    def data(self) -> bytes:
        joined = b"".join(d for d, _ in self.pieces)
        return joined if self.cut is None else joined[: self.cut]

    def status(self, owner: int) -> str:
        """'intact', 'touched' (changed or cut), 'absent' (cut off whole)."""
        start, end, _ = next(s for s in self.spans() if s[2] == owner)
        if self.cut is not None and self.cut <= start:
            return "absent"
        if owner in self.touched or (self.cut is not None and self.cut < end):
            return "touched"
        return "intact"


# -- mutations: (case, rng) -> None ------------------------------------------------------------------------------


def random_garbage(rng: random.Random, gzipped: bool) -> bytes:
    """Never blank (blank lines between records are allowed); gzip garbage is not a gzip member."""
    if gzipped or rng.random() < 0.5:
        return b"\x00" + rng.randbytes(rng.randint(2, 300))
    words = ["<html>", "</div>", "404 Not Found", "日本語のページ", "Content-Type: text/html", "WARC", "\r\n", "\n"]
    text = "x" + "".join(rng.choice(words) for _ in range(rng.randint(1, 30)))
    return text.encode().rstrip(b"\r\n") + rng.choice([b"", b"\n", b"\r\n", b"\r"])


def garbage_between(case: Case, rng: random.Random) -> None:
    n = len(case.material.records)
    for boundary in rng.sample(range(n + 1), rng.randint(1, 3)):
        case.insert(boundary, random_garbage(rng, case.gzipped))


def non_warc_member(case: Case, rng: random.Random) -> None:
    """A valid gzip member holding text that is not a record, with or without a final newline."""
    if not case.gzipped:
        return garbage_between(case, rng)
    n = len(case.material.records)
    for boundary in rng.sample(range(n + 1), rng.randint(1, 3)):
        text = random_garbage(random.Random(rng.random()), False)
        case.insert(boundary, gzip.compress(text, mtime=0))


def cut_member(case: Case, rng: random.Random) -> None:
    """A gzip member (or, plain, a record) cut short, the next one after it."""
    for i in rng.sample(range(len(case.material.records)), rng.randint(1, 2)):
        at = next(n for n, (_, owner) in enumerate(case.pieces) if owner == i)
        data = case.pieces[at][0]
        case.pieces[at] = (data[: rng.randrange(1, len(data))], i)
        case.touched.add(i)


def bad_length(case: Case, rng: random.Random) -> None:
    """Content-Length replaced: smaller, a little or much larger, past the end of the file, or huge."""
    i = rng.randrange(len(case.material.records))
    raw = case.record_bytes(i)
    m = re.search(rb"(?im)^content-length:[ \t]*([0-9]+)", raw[: raw.find(b"\r\n\r\n")])
    assert m, "every sample record has a Content-Length"
    length = int(m.group(1))
    new = rng.choice(
        [
            rng.randrange(0, max(1, length)),
            length + rng.randint(1, 50),
            length + rng.randint(51, 200_000),
            length + sum(len(r) for r in case.material.records),
            rng.randint(10**8, 10**12),
        ]
    )
    case.replace_record(i, raw[: m.start(1)] + str(new).encode() + raw[m.end(1) :])


def flip_bytes(case: Case, rng: random.Random) -> None:
    """1 to 4 bytes changed anywhere (gzip headers, deflate data, CRCs, WARC headers, blocks, trailers)."""
    spans = case.spans()
    total = spans[-1][1]
    for pos in rng.sample(range(total), rng.randint(1, 4)):
        n = next(k for k, (s, e, _) in enumerate(spans) if s <= pos < e)
        data, owner = case.pieces[n]
        flipped = bytearray(data)
        flipped[pos - spans[n][0]] ^= rng.randint(1, 255)
        case.pieces[n] = (bytes(flipped), owner)
        if owner >= 0:
            case.touched.add(owner)


def truncate(case: Case, rng: random.Random) -> None:
    case.cut = rng.randrange(1, sum(len(d) for d, _ in case.pieces))


def mixed(case: Case, rng: random.Random) -> None:
    for mutate in rng.sample([garbage_between, non_warc_member, cut_member, bad_length], 2):
        mutate(case, rng)
    rng.choice([flip_bytes, truncate])(case, rng)


KINDS = {
    "truncation": truncate,
    "byte flips": flip_bytes,
    "garbage between members": garbage_between,
    "non-WARC gzip members": non_warc_member,
    "truncated members": cut_member,
    "bad Content-Length": bad_length,
    "mixed": mixed,
}


def build_case(kind: str, gzipped: bool, seed: int) -> Case:
    rng = random.Random(f"{kind}/{'gz' if gzipped else 'plain'}/{seed}")
    mats = materials()
    case = Case.of(mats[seed % len(mats)], gzipped)
    KINDS[kind](case, rng)
    return case


# -- the oracle ----------------------------------------------------------------------------------------------------


def check(case: Case, got: list[WarcRecord], counts: Counter[str]) -> str | None:
    """None when the oracle holds, else what is wrong."""
    want = case.material.want
    index = {k: i for i, k in enumerate(want)}
    read = [index.get(key(r)) for r in got]  # original index, None for a record read damaged
    exact = [i for i in read if i is not None]
    if counts["records"] != len(got):
        return f"counts['records'] = {counts['records']}, {len(got)} read"
    if exact != sorted(set(exact)):
        return f"records read twice or out of order: {exact}"
    lost = [i for i in range(len(want)) if case.status(i) == "intact" and i not in set(exact)]
    if lost:
        return f"intact records not read: {lost} of {len(want)}"
    garbage = {-1 - owner for _, owner in case.pieces if owner < 0 and case.status(owner) != "absent"}
    garbage -= {-1 - owner for _, owner in case.pieces if owner < 0 and case.status(owner) == "touched"}
    need, prev, damaged_reads = 0, -1, 0
    for i in [*read, len(want)]:
        if i is None:
            damaged_reads += 1
            continue
        gone = [j for j in range(prev + 1, i) if case.status(j) != "absent"]
        if len(gone) > damaged_reads or any(prev < b <= i for b in garbage):
            need += 1
        prev, damaged_reads = i, 0
    skips = sum(counts[r] for r in SKIP_REASONS)
    if skips < need:
        return f"silent loss: {need} damaged stretches, {skips} skips counted ({dict(counts)})"
    return None


def run_cases(kind: str, gzipped: bool, seeds: range, fault_counts: Counter[str]) -> None:
    for seed in seeds:
        case = build_case(kind, gzipped, seed)
        counts: Counter[str] = Counter()
        got = list(iter_records(io.BytesIO(case.data()), counts))
        problem = check(case, got, counts)
        form = "warc.gz" if gzipped else "warc"
        assert problem is None, f"{kind} / {form} / seed {seed} / {case.material.name}: {problem}"
        fault_counts["WARC fuzz cases, records accounted for"] += 1


@pytest.mark.parametrize("gzipped", [True, False], ids=["warc.gz", "warc"])
@pytest.mark.parametrize("kind", list(KINDS))
def test_warc_fuzz(kind: str, gzipped: bool, fault_counts: Counter[str]) -> None:
    start = time.perf_counter()
    run_cases(kind, gzipped, range(SEEDS), fault_counts)
    assert time.perf_counter() - start < 30, "the fuzz cases must stay fast"


@pytest.mark.slow
@pytest.mark.parametrize("gzipped", [True, False], ids=["warc.gz", "warc"])
@pytest.mark.parametrize("kind", list(KINDS))
def test_warc_fuzz_more_seeds(kind: str, gzipped: bool, fault_counts: Counter[str]) -> None:
    """20x the seeds: 7,000 cases, about 30 s."""
    run_cases(kind, gzipped, range(SEEDS, 21 * SEEDS), fault_counts)
