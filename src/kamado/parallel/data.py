"""Each data-parallel rank's rows of the deterministic mixture.

`train.batch_size` stays the *global* micro-batch (sequences per micro-batch over all data-parallel ranks), so a
run has the same batches, in the same order, on any layout — and a checkpoint's loader position (the global sample
index) means the same thing on any layout, which is what makes resuming on another layout exact. Rank r of D
reads rows [r·B/D, (r+1)·B/D) of each global batch: which window every row takes is a pure function of the seed and
the sample index (`PackedLoader`), so a rank computes the whole batch's window indices (integers) but reads
only its own rows' tokens.
"""

from __future__ import annotations

import numpy as np
import torch

from kamado.config import DataConfig
from kamado.data.loader import PackedLoader, _to_tensors
from kamado.errors import ConfigError


def rank_rows(batch_size: int, rank: int, ranks: int) -> slice:
    if batch_size % ranks:
        raise ConfigError(
            f"train.batch_size = {batch_size} (the global micro-batch) must divide among {ranks} data-parallel ranks"
        )
    per = batch_size // ranks
    return slice(rank * per, (rank + 1) * per)


class ShardedLoader(PackedLoader):
    def __init__(self, cfg: DataConfig, batch_size: int, rank: int, ranks: int) -> None:
        super().__init__(cfg, batch_size)
        self.rows = rank_rows(batch_size, rank, ranks)

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        b, seq = self.batch_size, self.seq_len
        src = self.choose_sources(np.arange(self.sample_index, self.sample_index + b))
        windows = np.empty(b, dtype=np.int64)
        for s in np.unique(src).tolist():
            rows = np.flatnonzero(src == s)
            windows[rows] = self._take(s, len(rows))
        mine = range(b)[self.rows]
        buf = np.empty((len(mine), seq + 1), dtype=np.int64)
        for i, r in enumerate(mine):
            self.sources[int(src[r])][1].read_into(int(windows[r]) * seq, buf[i])
        self.sample_index += b
        return _to_tensors(buf)
