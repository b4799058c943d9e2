"""What a run folder's tokenizer and shards were made from, so that a rerun with other inputs is refused.

`kamado run` skips a finished stage by its completion record, and resumes training from the last checkpoint. That
is right for the same command run again; with other source files or tokenizer settings it would mix the old
tokenizer, shards and weights with the new settings and say nothing. So the first run writes `inputs.json`: the
SHA-256 of every source and held-out file, and the tokenizer settings when the recipe trains its tokenizer (the
hashes are kept in `checks/file_sha256.json` by size and mtime, so an unchanged file is not read again). A
later run compares and stops with one line naming what changed (as `kamado corpus run` does for its settings; the
web corpus's own shards are covered there, the model's shape by the checkpoint, `kamado.train.checkpoint`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from kamado.atomic import atomic_write_text
from kamado.config import RunConfig
from kamado.errors import ConfigError
from kamado.filehash import HashCache, sha256_file

TOKENIZER_SETTINGS = ("vocab_size", "min_frequency", "max_train_chars")


def fingerprint(
    cfg: RunConfig, sources: dict[str, list[Path]], heldout: dict[str, Path], hashes: HashCache | None = None
) -> dict[str, Any]:
    """{setting: value} for everything the tokenizer and the shards are made from (a file: its name and SHA-256,
    hashed again only when its size or mtime changed, `kamado.filehash`)."""

    sha = hashes.sha256 if hashes is not None else sha256_file

    def file(path: Path) -> str:
        return f"{path.name} {sha(path)}"

    out: dict[str, Any] = {f"corpus.sources.{k}": [file(p) for p in files] for k, files in sorted(sources.items())}
    out |= {f"corpus.heldout.{k}": file(p) for k, p in sorted(heldout.items())}
    if not cfg.tokenizer.path:  # a tokenizer the user points at is checked by its hash in the shard records
        out |= {f"tokenizer.{k}": getattr(cfg.tokenizer, k) for k in TOKENIZER_SETTINGS}
    return out


def check_same_inputs(out_dir: Path, now: dict[str, Any]) -> None:
    """Record `now` in a new run folder; in one that has a record, ConfigError naming every input that differs."""
    path = out_dir / "inputs.json"
    try:
        before = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        before = None
    except (OSError, ValueError) as e:
        before = e
    if not (before is None or isinstance(before, dict)):
        raise ConfigError(f"{path} is unreadable ({before}): delete it to record this run's inputs afresh")
    if before is None:
        atomic_write_text(path, json.dumps(now, indent=1, ensure_ascii=False) + "\n")
        return
    changed = []
    for key in sorted(before.keys() | now.keys()):
        if before.get(key) != now.get(key):
            files = key.startswith("corpus.")
            changed.append(key + (": other files" if files else f": {before.get(key)!r} → {now.get(key)!r}"))
    if changed:
        raise ConfigError(
            f"{out_dir} was started with other inputs ({'; '.join(changed)}); run with the same ones to resume, "
            "or use another out_dir"
        )
