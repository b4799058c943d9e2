"""How often a training step makes the host wait for the GPU, counted by CUDA itself (one GPU; issue 11).

    python -m torch.distributed.run --nproc-per-node 1 bench/cuda_syncs.py train CONFIG [overrides]   (or plain python)

Runs `kamado train` with torch's CUDA sync debug mode on: every call that synchronises with the device (a
`float(t)`, `.item()`, `.tolist()`, a blocking copy, ...) raises a warning, counted here between the starts of
consecutive steps. A step of the one-process or the distributed trainer should wait once (its logged values and
gradient norm, read in one copy); every further wait leaves the GPU idle while the host queues the next kernels.
Prints the waits of each step after the second (the first ones compile and allocate) and where they come from.
"""

from __future__ import annotations

import collections
import itertools
import sys
import traceback
import warnings

import torch

from kamado.cli import main
from kamado.parallel.trainer import DistributedTrainer
from kamado.train.trainer import Trainer

waits: list[str] = []
starts: list[int] = []


def count(message, category, filename, lineno, file=None, line=None):  # type: ignore[no-untyped-def]
    if "synchroniz" in str(message):
        frames = [f for f in traceback.extract_stack()[:-1] if "/kamado/" in f.filename]
        waits.append(f"{frames[-1].filename.split('/kamado/')[-1]}:{frames[-1].lineno}" if frames else "torch")


def counted(train_step):  # type: ignore[no-untyped-def]
    def step(self):  # type: ignore[no-untyped-def]
        starts.append(len(waits))
        return train_step(self)

    return step


if __name__ == "__main__":
    for cls in (Trainer, DistributedTrainer):
        cls.train_step = counted(cls.train_step)  # type: ignore[method-assign]
    warnings.simplefilter("always")
    warnings.showwarning = count
    if torch.cuda.is_available():  # a CPU run counts nothing (there is nothing to wait for)
        torch.cuda.set_sync_debug_mode("warn")
    code = main(sys.argv[1:])
    if torch.cuda.is_available():
        torch.cuda.set_sync_debug_mode("default")
    starts.append(len(waits))
    steps = list(itertools.pairwise(starts[2:-1]))  # steps 3.. but the last (its final save)
    where = collections.Counter(w for a, b in steps for w in waits[a:b])
    if code == 0:
        print(f"host waits for the GPU per step (steps 3..{len(starts) - 2}): {[b - a for a, b in steps]}")
        for place, n in where.most_common(8):
            print(f"  {n:4d}  {place}")
    sys.exit(code)
