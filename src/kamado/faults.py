"""Failpoints: named places where the fault-injection suite (tests/faults) breaks a real process on purpose.

`failpoint("checkpoint.after_model")` does nothing unless the environment says
`KAMADO_FAILPOINT=checkpoint.after_model` (or `...:3` for its third hit), in which case the process SIGKILLs
itself right there — no cleanup, no `finally`, exactly like a node dying. This lets a test stop a real `kamado run`
inside a window a few microseconds wide (between two renames of a checkpoint save) that no timer could hit.
With `@enospc` or `@erofs` after the name it raises that OSError instead, as a full or read-only disk would
(`KAMADO_FAILPOINT=disk.write:2@enospc`: the second file write fails), for machines where the suite cannot mount
a small file system. `@sigterm` or `@sigusr1` sends the process that signal and goes on, as a scheduler's request to
stop arriving at that moment would (`kamado.train.stop`). `KAMADO_FAILPOINT_RANK=1` limits it to one rank of a
distributed run (torchrun's RANK).
The names in use are listed in `FAILPOINTS`; the suite checks each one is reached.
"""

from __future__ import annotations

import errno
import os
import signal

FAILPOINTS = (
    "checkpoint.after_model",  # model.safetensors written, the rest of the checkpoint not
    "checkpoint.before_integrity",  # every file but the integrity record written
    "checkpoint.resave_between_renames",  # re-save: the old copy renamed aside, the new one not yet in place
    "train.after_checkpoint",  # a checkpoint saved, the next step not started
    "train.before_eval",  # a step's metrics logged, its evaluation not yet run
    "tokenizer.before_record",  # tokenizer files written, completion record not
    "shards.before_record",  # a source's shards and manifest written, completion record not
    "corpus.before_stage",  # a corpus stage (extract, then the dedup stages) about to start
    "recipe.during_bits_per_char",  # held-out Japanese scored against xz, English not yet
    "recipe.before_summary",  # every stage done, summary.json not written
    "posttrain.after_round_pairs",  # a DPO round's pairs (with reference log-probs) written, its training not begun
    "posttrain.before_round_record",  # a DPO round trained and checkpointed, its round.json not written
    "parallel.after_dcp_save",  # a distributed save: this rank's shards written, the folder not sealed
    "disk.write",  # any atomic file write or checkpoint tensor file (use with @enospc / @erofs)
)
_ERRNOS = {"enospc": errno.ENOSPC, "erofs": errno.EROFS}
_SIGNALS = {"sigterm": signal.SIGTERM, "sigusr1": signal.SIGUSR1}

_hits: dict[str, int] = {}


def failpoint(name: str, path: object = None) -> None:
    spec = os.environ.get("KAMADO_FAILPOINT")
    if not spec:
        return
    spec, _, action = spec.partition("@")
    target, _, nth = spec.partition(":")
    if target != name:
        return
    only = os.environ.get("KAMADO_FAILPOINT_RANK")  # distributed runs: only this rank (torchrun's RANK) fails
    if only is not None and os.environ.get("RANK", "0") != only:
        return
    _hits[name] = _hits.get(name, 0) + 1
    if _hits[name] != int(nth or 1):
        return
    if action in _ERRNOS:
        code = _ERRNOS[action]
        raise OSError(code, os.strerror(code), None if path is None else str(path))
    if action in _SIGNALS:
        os.kill(os.getpid(), _SIGNALS[action])
        return
    os.kill(os.getpid(), signal.SIGKILL)
