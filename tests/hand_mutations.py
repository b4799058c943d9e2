"""Issue 16's one-line mutations, each applied by hand to a fresh clone without ../shared, and the tests that catch it.

    python tests/hand_mutations.py [NAME-SUBSTRING ...]     (`make hand-mutations`)

Clones HEAD into a temporary folder (so no ../shared is beside it, as on a user's machine), applies one mutation at
a time, runs the named tests and prints the failing ones. A mutation that no test catches exits 1. Not collected by
pytest (the file name does not start with test_); the results are recorded in LOG.md.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
QK_BEFORE = (
    "            q, k = self.q_norm(q), self.k_norm(k)\n"
    "        q = apply_rope(q.transpose(1, 2), cos, sin)\n"
    "        k = apply_rope(k.transpose(1, 2), cos, sin)\n"
)
QK_AFTER = (
    "            pass\n"
    "        q = apply_rope(q.transpose(1, 2), cos, sin)\n"
    "        k = apply_rope(k.transpose(1, 2), cos, sin)\n"
    "        if self.q_norm is not None and self.k_norm is not None:\n"
    "            q = self.q_norm(q.transpose(1, 2)).transpose(1, 2)\n"
    "            k = self.k_norm(k.transpose(1, 2)).transpose(1, 2)\n"
)
RESAVE = (
    "        os.rename(final, old)\n"
    '        failpoint("checkpoint.resave_between_renames")\n'
    "        os.rename(tmp, final)\n"
    "        fsync_dir(root)\n"
    "        shutil.rmtree(old)\n"
)
RESAVE_DELETE_FIRST = (
    "        shutil.rmtree(final)\n"
    '        failpoint("checkpoint.resave_between_renames")\n'
    "        os.rename(tmp, final)\n"
    "        fsync_dir(root)\n"
)
# (name, file, text, replacement, tests to run)
MUTATIONS = [
    ("QK-Norm after RoPE", "src/kamado/model/transformer.py", QK_BEFORE, QK_AFTER, ["tests/model", "tests/train"]),
    (
        "trainer does not pass train.z_loss",
        "src/kamado/train/trainer.py",
        "out = self.lm_output(batch, z_loss_coef=self.cfg.train.z_loss)",
        "out = self.lm_output(batch)",
        ["tests/train"],
    ),
    (
        "skip positions not restored on resume",
        "src/kamado/train/trainer.py",
        '        self.skip_positions |= set(state["skip_positions"])\n',
        "",
        ["tests/train"],
    ),
    (
        "gradient clipping limit infinite",
        "src/kamado/train/trainer.py",
        "clip if clip > 0 else math.inf",
        "math.inf",
        ["tests/train"],
    ),
    (
        "bits/char without the extra left context",
        "src/kamado/eval/bits_per_char.py",
        "start = max(0, end - context - 1)",
        "start = scored - 1",
        ["tests/eval"],
    ),
    (
        "MinHash threshold replaced by 0",
        "src/kamado/corpus/dedup.py",
        "similarity >= self.cfg.threshold",
        "similarity >= 0",
        ["tests/corpus/test_dedup.py"],
    ),
    (
        "MinHash verification skipped",
        "src/kamado/corpus/dedup.py",
        "if self.cfg.threshold > 0:",
        "if False:",
        ["tests/corpus/test_dedup.py"],
    ),
    (
        "RNG state not restored on resume",
        "src/kamado/train/checkpoint.py",
        '    torch.set_rng_state(_load_tensors(ckpt / "rng.safetensors")["cpu"])\n',
        "",
        ["tests/train"],
    ),
    (
        "re-save deletes the old copy before renaming the new one in",
        "src/kamado/train/checkpoint.py",
        RESAVE,
        RESAVE_DELETE_FIRST,
        ["tests/train/test_checkpoint_integrity.py"],
    ),
]


def main(only: list[str]) -> int:
    missed = 0
    with tempfile.TemporaryDirectory() as tmp:
        clone = Path(tmp) / "kamado"
        subprocess.run(["git", "clone", "-q", str(REPO), str(clone)], check=True)
        env = {**os.environ, "PYTHONPATH": str(clone / "src")}
        for name, file, text, replacement, tests in MUTATIONS:
            if only and not any(o.lower() in name.lower() for o in only):
                continue
            path = clone / file
            source = path.read_text()
            if source.count(text) != 1:
                print(f"## {name}: the text to mutate is not in {file} once; update this script")
                missed += 1
                continue
            path.write_text(source.replace(text, replacement))
            t0 = time.time()
            cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "not slow", *tests]
            r = subprocess.run(cmd, cwd=clone, env=env, capture_output=True, text=True)
            path.write_text(source)
            failed = re.findall(r"^FAILED (\S+)", r.stdout, re.M)
            print(f"## {name}: {'caught' if failed else 'NOT CAUGHT'} ({time.time() - t0:.0f} s, {' '.join(tests)})")
            for f in failed:
                print(f"   {f}")
            missed += not failed
            sys.stdout.flush()
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
