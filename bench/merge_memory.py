"""Peak memory of `kamado merge` (streamed, tensor by tensor) against a merge that loads every model whole.

Three checkpoints of one random model (ModelConfig's defaults: 32k vocabulary, d_model 512, 8 layers — 56M
parameters, ~225 MB in float32) are saved with `save_checkpoint`, the fine-tuned two as the base plus noise. Each
merge then runs in a fresh child process, under `/usr/bin/time -v` where the machine has it, and reports:
- max RSS (VmHWM, the kernel's peak resident set): includes the pages of the input files that safetensors maps
  into memory, which are page cache the kernel can drop, not memory the merge holds;
- peak anonymous RSS (RssAnon sampled every 2 ms): the memory the process itself allocated, above what it held
  once its modules were imported — what matters when the models are larger than the RAM.
The peer is the obvious merge: `safetensors.torch.load_file` of every input, the same per-tensor formula, one
`save_file` of the result; it holds every input (mapped from its file) and the whole output at once. Ratios are
printed last.

    .venv/bin/python bench/merge_memory.py                       # ties and linear, ModelConfig() defaults
    .venv/bin/python bench/merge_memory.py --methods linear --layers 4 --keep /tmp/merge_bench
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def rss_sampler() -> tuple[dict[str, int], threading.Event]:
    """Peak RssAnon (kB) of this process, sampled every 2 ms until the returned event is set."""
    peak = {"anon_kb": 0}
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            text = Path("/proc/self/status").read_text()
            m = re.search(r"^RssAnon:\s+(\d+) kB", text, re.M)
            if m:
                peak["anon_kb"] = max(peak["anon_kb"], int(m.group(1)))
            time.sleep(0.002)

    threading.Thread(target=sample, daemon=True).start()
    return peak, stop


def child(mode: str, method: str, work: Path) -> None:
    """Run one merge in this (fresh) process and print its peaks as JSON."""
    import safetensors.torch  # every import before sampling starts: the baseline holds torch and kamado's code
    import torch

    import kamado.posttrain.merge

    peak, stop = rss_sampler()
    time.sleep(0.05)
    start_anon = peak["anon_kb"]
    t0 = time.perf_counter()
    out = work / f"out_{mode}_{method}"
    models = (str(work / "a"), str(work / "b"))
    from kamado.posttrain.merge_methods import WITH_BASE, WITH_DENSITY

    density = 0.5 if method in WITH_DENSITY else None
    t = 0.5 if method == "slerp" else None
    if mode == "kamado":
        from kamado.posttrain.merge import MergeSpec, merge_checkpoints

        base = str(work / "base") if method in WITH_BASE else None
        merge_checkpoints(MergeSpec(method, models, base=base, density=density, t=t), out)
    else:  # the peer: every model whole in memory, one save_file
        from safetensors.torch import load_file, save_file

        from kamado.posttrain.merge_methods import MergeSpec, check_spec, merge_tensor
        from kamado.train.checkpoint import find_checkpoint

        base = str(work / "base") if method in WITH_BASE else None
        p = check_spec(MergeSpec(method, models, base=base, density=density, t=t))
        load = [load_file(str(find_checkpoint(m) / "model.safetensors")) for m in models]
        base_t = load_file(str(find_checkpoint(base) / "model.safetensors")) if base else None
        merged = {}
        for name in sorted(load[0]):
            b = base_t[name].float() if base_t else None
            tensors = [m[name].float() if b is None else m[name].float() - b for m in load]  # deltas with a base
            merged[name] = merge_tensor(p, name, b, tensors).to(load[0][name].dtype)
        out.mkdir()
        save_file(merged, str(out / "model.safetensors"))
    seconds = time.perf_counter() - t0
    stop.set()
    hwm = int(re.search(r"^VmHWM:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.M).group(1))  # type: ignore[union-attr]
    print(json.dumps({"hwm_kb": hwm, "anon_kb": peak["anon_kb"], "anon_start_kb": start_anon, "seconds": seconds}))
    del torch, safetensors, kamado


def make_checkpoints(work: Path, layers: int) -> tuple[float, float]:
    """base, a, b run folders; returns the size in MB of one model.safetensors and of its largest tensor."""
    import torch

    from kamado.config import ModelConfig, RunConfig, to_dict
    from kamado.model.transformer import Transformer
    from kamado.train.checkpoint import find_checkpoint, save_checkpoint

    cfg = ModelConfig(n_layers=layers)
    torch.manual_seed(0)
    model = Transformer(cfg)
    run = RunConfig(out_dir=str(work))
    run.model = cfg
    base_state = {k: v.clone() for k, v in model.state_dict().items()}
    for i, name in enumerate(("base", "a", "b")):
        if i:
            with torch.no_grad():
                for k, p in model.state_dict().items():
                    p.copy_(base_state[k] + 0.01 * torch.randn_like(p))
        save_checkpoint(work / name / "checkpoints", 1, model, None, {"config": to_dict(run)})
    largest = max(p.numel() * p.element_size() for p in model.parameters())
    return (find_checkpoint(work / "base") / "model.safetensors").stat().st_size / 1e6, largest / 1e6


def measure(mode: str, method: str, work: Path) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--child", mode, method, str(work)]
    timed = ["/usr/bin/time", "-v", *cmd] if Path("/usr/bin/time").exists() else cmd
    r = subprocess.run(timed, capture_output=True, text=True, cwd=ROOT, check=True)
    result: dict[str, Any] = json.loads(r.stdout.strip().splitlines()[-1])
    m = re.search(r"Maximum resident set size \(kbytes\): (\d+)", r.stderr)
    result["time_max_rss_kb"] = int(m.group(1)) if m else None
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--methods", nargs="+", default=["ties", "linear"])
    ap.add_argument("--layers", type=int, default=8, help="n_layers of ModelConfig() (default 8: 56M parameters)")
    ap.add_argument("--keep", type=Path, help="work folder to keep (default: a temporary one, deleted)")
    ap.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.child[0], args.child[1], Path(args.child[2]))
        return
    with tempfile.TemporaryDirectory() as tmp:
        work = args.keep or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        size, largest = make_checkpoints(work, args.layers)
        print(
            f"one model.safetensors: {size:.1f} MB (float32), its largest tensor {largest:.1f} MB; "
            f"inputs: base + 2 models (linear, slerp: the 2 models); {os.cpu_count()} CPUs"
        )
        rows = []
        for method in args.methods:
            for mode in ("kamado", "load_all"):
                r = measure(mode, method, work)
                rows.append((method, mode, r))
                extra = r["anon_kb"] - r["anon_start_kb"]
                print(
                    f"{method:15s} {mode:8s} max RSS {r['hwm_kb'] / 1e3:7.1f} MB "
                    f"(time -v {(r['time_max_rss_kb'] or 0) / 1e3:7.1f})  peak anon {r['anon_kb'] / 1e3:7.1f} MB: "
                    f"+{extra / 1e3:6.1f} MB over the baseline = {extra / 1e3 / size:4.2f} models "
                    f"= {extra / 1e3 / largest:4.1f} largest tensors  {r['seconds']:5.1f} s"
                )
        for method in args.methods:
            k = next(r for m, mode, r in rows if m == method and mode == "kamado")
            p = next(r for m, mode, r in rows if m == method and mode == "load_all")
            ratio = (p["anon_kb"] - p["anon_start_kb"]) / max(1, k["anon_kb"] - k["anon_start_kb"])
            print(f"{method}: load-all / kamado peak anonymous memory above baseline = {ratio:.1f}x")


if __name__ == "__main__":
    main()
