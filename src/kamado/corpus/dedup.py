"""Exact and near-duplicate removal on datatrove's sharded dedup stages, with Japanese shingles (`minhash.py`).

```
input/*.jsonl.gz ─► signatures (tasks) ──► exact: ExactFindDedups (tasks) ───────────────────────► filter (tasks)
                    normalized-text hash    minhash: MinhashDedupBuckets (1 task per band)        drops exact, then
                    + MinHash signature              ─► VerifiedMinhashCluster (1 task)           near duplicates
```

Stages talk only through datatrove's files in `work_folder` (sorted per-band signatures, `.dups` pairs, `.remove`
lists, exact `.c4_sig`/`.c4_dup`), so any executor runs them. Added to datatrove:

* **Verification.** A pair is an LSH candidate when all r rows of one of b bands agree, with probability
  1 - (1 - s^r)^b at Jaccard s: an S-curve centred near (1/b)^(1/r) (0.72 for 14 × 8) with a long tail (1 pair in
  19 at s = 0.5, 1 in 5 at 0.6). Templated pages of one site sit at 0.5-0.7, and union-find chains them into one
  cluster (29 ClueWeb shop pages → 2). So a candidate is merged only if its estimated Jaccard over all b·r hashes
  reaches `threshold` (standard error sqrt(s(1-s)/(b·r)) ≈ 0.04); `threshold = 0` is datatrove's behaviour.
  As in datatrove, equal band values are paired along a chain, so a pair split by a failing page needs another band.
* **Deterministic survivors, whatever `tasks`.** Ranks read contiguous runs of the sorted input files, so (rank,
  index) is (file, line) order for any task count, and each cluster keeps its first page (exact: priority
  65535 - rank; near: union-find rooted at the smallest node). Equal texts have equal signatures, so an exact group
  lies inside one MinHash cluster and one page per cluster survives.
* **One filter pass.** datatrove's ExactDedupFilter and MinhashDedupFilter each number the pages they receive, so
  they cannot be chained; `DuplicateFilter` applies both lists with one numbering.
"""

import itertools
from typing import Any

import numpy as np
from datatrove.data import Document, DocumentsPipeline
from datatrove.io import get_datafolder
from datatrove.pipeline.base import PipelineStep
from datatrove.pipeline.dedup.exact_dedup import ExactDedupConfig, ExactDedupSignature, ExactFindDedups
from datatrove.pipeline.dedup.minhash import (
    MinhashConfig,
    MinhashDedupBuckets,
    MinhashDedupCluster,
    MinhashDedupSignature,
)
from datatrove.pipeline.readers import JsonlReader
from datatrove.pipeline.writers import JsonlWriter
from datatrove.utils.hashes.sha1 import sha1_hash64_bytes
from datatrove.utils.hashing import HashConfig
from datatrove.utils.typeshelper import ExtensionHelperSD, StatHints
from datatrove.utils.word_tokenizers import WhitespaceTokenizer

from kamado.corpus.minhash import (
    DedupConfig,
    minhash_parameters,
    minhash_signatures,
    normalized_code_points,
)
from kamado.errors import ConfigError, DataError

__all__ = ["DedupConfig", "dedup_stages"]

_PRIORITY_MAX = 65535  # datatrove's exact-dedup priority is a uint16 in [1, 65535]
Stage = tuple[str, list[Any], int]  # (name, pipeline steps, number of tasks)


def minhash_config(cfg: DedupConfig) -> MinhashConfig:
    """datatrove's view of the config: bands × rows of 32-bit values (its `hash_fc` is never called here)."""
    return MinhashConfig(
        n_grams=cfg.ngram,
        num_buckets=cfg.num_bands,
        hashes_per_bucket=cfg.rows_per_band,
        seed=cfg.seed,
        hash_config=HashConfig(precision=32, hash_fc="sha1"),
    )


class _WarmTables:
    """`warm_up` of the signature steps: the normalization tables (~1 s) built in the process that forks the
    workers (`kamado.corpus.pipeline`), when the step normalizes."""

    normalize: bool

    def warm_up(self) -> None:
        if self.normalize:
            normalized_code_points("warm-up")


class JapaneseMinhashSignature(_WarmTables, MinhashDedupSignature):
    """datatrove's MinHash stage 1 for Japanese, in its format: `bucket_{band:03d}/{rank:05d}.minhash.sig` holds
    per band the records (r uint32 values, uint32 document index), sorted. Pages are signed `BATCH` at a time
    (`minhash_signatures`); `full/{rank:05d}.minhash.full` also keeps every page's (index, b·r values), in page
    order, for the cluster step's check."""

    name = "🎯 MinHash signatures (character n-grams)"
    BATCH = 256

    def __init__(self, output_folder: str, cfg: DedupConfig):
        # an instance instead of a language: datatrove would load spaCy + SudachiPy for "ja" (unused: `run` shingles)
        super().__init__(output_folder, config=minhash_config(cfg), language=WhitespaceTokenizer())
        self.cfg, self.normalize = cfg, cfg.normalize
        self._parameters = minhash_parameters(cfg.num_hashes, cfg.seed)

    def run(self, data: DocumentsPipeline, rank: int = 0, world_size: int = 1) -> None:
        r = self.cfg.rows_per_band
        record = np.dtype([(f"h{i}", "<u4") for i in range(r)] + [("doc", "<u4")])
        names = [f"bucket_{band:03d}/{rank:05d}.minhash.sig" for band in range(self.cfg.num_bands)]
        buckets = [self.output_folder.open(name, mode="wb") for name in names]
        docs, first = iter(data), 0
        with self.output_folder.open(f"full/{rank:05d}.minhash.full", mode="wb") as full:
            while batch := list(itertools.islice(docs, self.BATCH)):
                with self.track_time():
                    self.stat_update(StatHints.total, value=len(batch))
                    sigs, has = minhash_signatures([doc.text for doc in batch], self.cfg, self._parameters)
                    index, sigs = np.arange(first, first + len(batch), dtype=np.uint32)[has, None], sigs[has]
                    full.write(np.hstack([index, sigs]).astype("<u4").tobytes())
                    for band, f in enumerate(buckets):
                        f.write(np.hstack([sigs[:, band * r : (band + 1) * r], index]).astype("<u4").tobytes())
                first += len(batch)
        for f in buckets:
            f.close()
        with self.track_time():
            for name in names:  # datatrove's bucket step merges the files of all ranks: each must be sorted
                with self.output_folder.open(name, mode="rb") as f:
                    records = np.frombuffer(f.read(), dtype=record).copy()
                records.sort(order=record.names)
                with self.output_folder.open(name, mode="wb") as f:
                    f.write(records.tobytes())


class NormalizedContent:
    """What exact dedup compares: the normalized code points, as bytes (picklable, for datatrove's executors)."""

    def __init__(self, normalize: bool):
        self.normalize = normalize

    def __call__(self, doc: Document) -> bytes:
        return normalized_code_points(doc.text, self.normalize).tobytes()


def exact_config(cfg: DedupConfig) -> ExactDedupConfig:
    return ExactDedupConfig(
        content_getter=NormalizedContent(cfg.normalize), hash_config=HashConfig(precision=64, hash_fc="sha1")
    )


class JapaneseExactSignature(_WarmTables, ExactDedupSignature):
    """datatrove's exact-dedup stage 1 on normalized text. Documents pass through, so that MinHash signatures are
    computed in the same read; priority 65535 - rank makes the finder keep the first copy in (rank, index) order."""

    name = "💥 Exact signatures (normalized text)"

    def __init__(self, output_folder: str, cfg: DedupConfig, finder_workers: int = 1):
        super().__init__(output_folder, exact_config(cfg), finder_workers)
        self.hash_fc = sha1_hash64_bytes
        self.normalize = cfg.normalize

    def run(self, data: DocumentsPipeline, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        assert world_size <= _PRIORITY_MAX, "priority encodes the rank"
        priority, signatures = _PRIORITY_MAX - rank, []
        for doc_idx, doc in enumerate(data):
            with self.track_time():
                self.stat_update(StatHints.total)
                signatures.append((self.hash_fc(self.config.content_getter(doc)), priority, doc_idx))
            yield doc
        self.save_hashes(rank, signatures)


class VerifiedMinhashCluster(MinhashDedupCluster):
    """datatrove's MinHash stage 3, reading its `.dups` pairs, with two changes: a candidate pair is merged only if
    its estimated Jaccard reaches `cfg.threshold`, and each cluster keeps its first document (smallest (rank, index)),
    not the root of a union by size. Writes datatrove's `{rank:06d}.remove` files."""

    name = "🎯 MinHash clusters (verified)"
    _PAIRS_PER_BLOCK = 1 << 16

    def __init__(self, input_folder: str, signature_folder: str, output_folder: str, cfg: DedupConfig):
        super().__init__(input_folder, output_folder, config=minhash_config(cfg))
        self.signature_folder = get_datafolder(signature_folder)
        self.cfg = cfg
        self._records: dict[int, np.ndarray] = {}

    def _candidate_pairs(self) -> np.ndarray:
        """Distinct (smaller node, larger node) rows, node = rank << 32 | index, from every band's `.dups` file."""
        blocks = [np.empty((0, 4), dtype=np.uint32)]
        for name in self.input_folder.list_files(glob_pattern="*.dups"):
            with self.input_folder.open(name, "rb") as f:
                blocks.append(np.frombuffer(f.read(), dtype="<u4").reshape(-1, 4))
        quads = np.concatenate(blocks).astype(np.uint64)
        a, b = quads[:, 0] << np.uint64(32) | quads[:, 1], quads[:, 2] << np.uint64(32) | quads[:, 3]
        return np.unique(np.stack([np.minimum(a, b), np.maximum(a, b)], axis=1), axis=0)

    def _signatures(self, nodes: np.ndarray) -> np.ndarray:
        out = np.empty((len(nodes), self.cfg.num_hashes), dtype=np.uint32)
        ranks, docs = nodes >> np.uint64(32), nodes & np.uint64(0xFFFFFFFF)
        for rank in np.unique(ranks).tolist():
            if rank not in self._records:
                dtype = np.dtype([("doc", "<u4"), ("sig", "<u4", (self.cfg.num_hashes,))])
                name = f"full/{rank:05d}.minhash.full"
                if self.signature_folder.is_local():  # page in only the rows the pairs need
                    self._records[rank] = np.memmap(self.signature_folder.resolve_paths(name), dtype, mode="r")
                else:
                    with self.signature_folder.open(name, "rb") as f:
                        self._records[rank] = np.frombuffer(f.read(), dtype)
            records, here = self._records[rank], ranks == rank
            out[here] = records["sig"][np.searchsorted(records["doc"], docs[here])]
        return out

    def run(self, data: DocumentsPipeline = None, rank: int = 0, world_size: int = 1) -> None:
        assert world_size == 1, "clustering runs as one task"
        with self.track_time():
            pairs = self._candidate_pairs()
            self.stat_update("candidate_pairs", value=len(pairs))
            if self.cfg.threshold > 0:
                keep = np.ones(len(pairs), dtype=bool)
                for s in range(0, len(pairs), self._PAIRS_PER_BLOCK):
                    block = pairs[s : s + self._PAIRS_PER_BLOCK]
                    similarity = (self._signatures(block[:, 0]) == self._signatures(block[:, 1])).mean(axis=1)
                    keep[s : s + len(block)] = similarity >= self.cfg.threshold
                pairs = pairs[keep]
            self.stat_update("merged_pairs", value=len(pairs))

            parent: dict[int, int] = {}

            def root(x: int) -> int:
                while parent.setdefault(x, x) != x:
                    parent[x] = x = parent[parent[x]]  # path halving
                return x

            for a, b in pairs.tolist():
                ra, rb = root(a), root(b)
                if ra != rb:
                    parent[max(ra, rb)] = min(ra, rb)  # the smallest node, the first document, is the root
            removed: dict[int, list[int]] = {}
            for node in sorted(parent):
                if root(node) != node:
                    removed.setdefault(node >> 32, []).append(node & 0xFFFFFFFF)
                else:
                    self.stat_update("clusters")
            for file, docs in removed.items():
                with self.output_folder.open(f"{file:06d}.remove", mode="wb") as f:
                    f.write(np.array(docs, dtype="<u4").tobytes())
                self.stat_update("to_remove", value=len(docs))


class DuplicateFilter(PipelineStep):
    """Drops the documents listed by the exact finder (stat `dropped_exact_duplicate`) and by the MinHash clusters
    (`dropped_near_duplicate`), numbering documents as the signature stage did (same reader, same rank)."""

    type = "🫂 - DEDUP"
    name = "🫂 Duplicate filter"

    def __init__(self, exact_folder: str | None, near_folder: str | None):
        super().__init__()
        self.exact_folder = get_datafolder(exact_folder) if exact_folder else None
        self.near_folder = get_datafolder(near_folder) if near_folder else None

    @staticmethod
    def _indices(folder: Any, names: list[str]) -> set[int]:
        found: set[int] = set()
        for name in names:
            with folder.open(name, "rb") as f:
                found.update(np.frombuffer(f.read(), dtype="<u4").tolist())
        return found

    def run(self, data: DocumentsPipeline, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        exact = near = set()
        if self.exact_folder:
            pattern = f"*/{rank:05d}{ExtensionHelperSD.stage_2_duplicates}"  # one file per finder task
            exact = self._indices(self.exact_folder, self.exact_folder.list_files(glob_pattern=pattern))
        if self.near_folder and self.near_folder.exists(f"{rank:06d}.remove"):
            near = self._indices(self.near_folder, [f"{rank:06d}.remove"])
        for idx, doc in enumerate(data):
            self.stat_update(StatHints.total)
            if idx in exact or idx in near:
                self.stat_update(
                    StatHints.dropped, "dropped_exact_duplicate" if idx in exact else "dropped_near_duplicate"
                )
                continue
            self.stat_update(StatHints.forwarded)
            yield doc


class OrderedJsonlReader(JsonlReader):
    """datatrove's JsonlReader, except that rank r of W reads the contiguous run files[r·F/W : (r+1)·F/W] of the F
    sorted files (datatrove strides, files[r::W]): then (rank, index) is (file, line) order for every W.

    No files is an error (a wrong folder), unless `empty_ok`: on Slurm the dedup stages are submitted before
    extraction runs and start only once it has succeeded, so no files there means every page was dropped."""

    def __init__(self, *args: Any, empty_ok: bool = False, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.empty_ok = empty_ok

    def run(self, data: DocumentsPipeline = None, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        files = self.data_folder.list_files(recursive=self.recursive, glob_pattern=self.glob_pattern)
        if not files and self.empty_ok:
            return
        if not files:
            raise DataError(f"{self.data_folder.path}: no {self.glob_pattern} files to deduplicate")
        n = len(files)
        for doc in self.read_files_shard(files[rank * n // world_size : (rank + 1) * n // world_size]):
            self.update_doc_stats(doc)
            yield doc


def dedup_stages(
    cfg: DedupConfig, input_folder: str, work_folder: str, output_folder: str, tasks: int, empty_ok: bool = False
) -> list[Stage]:
    """The dedup stages in order, as (name, steps, tasks), to run one after the other (one `executor.run()` each).

    Reads `input_folder/*.jsonl.gz` (datatrove JsonlWriter output) twice, in the first and last stage, and
    writes the kept documents to `output_folder/${rank}.jsonl.gz`. `work_folder` holds the intermediate files and
    must be fresh for each run: files left by a run with another `tasks` would be read as well
    (`kamado.corpus.pipeline.check_same_settings` refuses such a restart). `empty_ok`: an empty `input_folder` is
    a corpus with nothing left (see `OrderedJsonlReader`), not an error."""
    cfg.validate()
    if not 1 <= tasks <= _PRIORITY_MAX:
        raise ConfigError(f"dedup tasks = {tasks}: must be in 1..{_PRIORITY_MAX}")
    work = work_folder.rstrip("/")
    exact_sigs, exact_dups = f"{work}/exact_signatures", f"{work}/exact_dups"
    minhash_sigs, buckets, clusters = f"{work}/minhash_signatures", f"{work}/buckets", f"{work}/clusters"

    def reader() -> OrderedJsonlReader:
        return OrderedJsonlReader(input_folder, glob_pattern="*.jsonl.gz", add_file_path=False, empty_ok=empty_ok)

    signature_steps: list[Any] = []
    later: list[Stage] = []
    if cfg.exact:
        signature_steps.append(JapaneseExactSignature(exact_sigs, cfg, finder_workers=tasks))
        later.append(("dedup_exact_duplicates", [ExactFindDedups(exact_sigs, exact_dups, exact_config(cfg))], tasks))
    if cfg.minhash:
        signature_steps.append(JapaneseMinhashSignature(minhash_sigs, cfg))
        bucket_step = MinhashDedupBuckets(minhash_sigs, buckets, config=minhash_config(cfg))
        later.append(("dedup_minhash_buckets", [bucket_step], cfg.num_bands))
        later.append(("dedup_minhash_clusters", [VerifiedMinhashCluster(buckets, minhash_sigs, clusters, cfg)], 1))
    steps_filter = [
        reader(),
        DuplicateFilter(exact_dups if cfg.exact else None, clusters if cfg.minhash else None),
        JsonlWriter(output_folder, compression="gzip"),
    ]
    first = [("dedup_signatures", [reader(), *signature_steps], tasks)] if signature_steps else []
    return [*first, *later, ("dedup_filter", steps_filter, tasks)]
