"""The planner's memory model against a real GPU: one-process training steps, measured and predicted.

Two measurements on CUDA, each printed beside the planner's number for the same shape (layout 1,1,1,1, no
activation checkpointing, the path of `kamado.train.trainer`: float32 parameters, gradients and AdamW state, bf16
autocast, the logits + `lm_loss` head):

- the bytes one block saves for its backward pass per sequence (saved-tensor hooks, two batch sizes, the
  difference: weights and RoPE tables cancel out) against `layer_activation_bytes`;
- `torch.cuda.max_memory_allocated()` over a second training step (forward, backward, AdamW; the first step
  allocates the AdamW moments) against `memory_per_gpu(...).total`.

    PYTHONPATH=src python -m kamado.parallel.plan_check     # small (b=4, s=1024) and 1b with 4 layers (s=2048)
    PYTHONPATH=src python -m kamado.parallel.plan_check recipes/8b.toml --seq-len 4096 --model.n_layers=2
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass

import torch

from kamado.config import ModelConfig, RunConfig, load_config
from kamado.model.loss import LossOutput
from kamado.model.transformer import Transformer
from kamado.parallel.plan import GB, PlanLayout
from kamado.parallel.plan_memory import FP32, layer_activation_bytes, memory_per_gpu
from kamado.train.optim import build_optimizer

Case = tuple[str, list[str], int, int | None]  # preset, overrides, micro-batch, sequence length (None: the preset's)
DEFAULT_CASES: tuple[Case, ...] = (
    ("recipes/small.toml", [], 4, 1024),
    ("recipes/1b.toml", ["--model.n_layers=4"], 2, 2048),
)


@dataclass(frozen=True)
class MemoryCheck:
    name: str
    micro_batch: int
    seq_len: int
    measured_block: float  # bytes one block saves per sequence
    predicted_block: float
    measured_peak: float  # bytes at the peak of a training step
    predicted_peak: float

    def line(self) -> str:
        block = self.measured_block / self.predicted_block - 1
        peak = self.measured_peak / self.predicted_peak - 1
        return (
            f"{self.name} b={self.micro_batch} s={self.seq_len}: block activations "
            f"{self.measured_block / 1e6:.2f} MB/sequence measured, {self.predicted_block / 1e6:.2f} predicted "
            f"({block:+.1%}); step peak {self.measured_peak / GB:.2f} GB measured, "
            f"{self.predicted_peak / GB:.2f} predicted ({peak:+.1%})"
        )


def block_saved_bytes(model: Transformer, batch: int, seq_len: int) -> int:
    """Bytes of the tensors the first block saves for backward under bf16 autocast (parameters excluded)."""
    device = model.embed.weight.device
    storages: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    idx = torch.randint(0, model.cfg.vocab_size, (batch, seq_len), device=device)
    with torch.autocast(device.type, dtype=torch.bfloat16):
        x = model.embed(idx).requires_grad_()
        cos, sin = model.rope_cos[:seq_len], model.rope_sin[:seq_len]
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            model.layers[0](x, cos, sin, None, 0)
    return sum(n for ptr, n in storages.items() if ptr not in params)


def step_peak_bytes(cfg: RunConfig, micro_batch: int, seq_len: int, device: torch.device) -> int:
    """Peak bytes allocated during the second of two training steps, above what was allocated before the model."""
    torch.cuda.empty_cache()
    before = torch.cuda.memory_allocated(device)
    torch.manual_seed(0)
    model = Transformer(cfg.model).to(device)
    optimizer = build_optimizer(model, cfg.optim)
    x = torch.randint(0, cfg.model.vocab_size, (micro_batch, seq_len), device=device)
    y = torch.randint(0, cfg.model.vocab_size, (micro_batch, seq_len), device=device)
    for step in range(2):
        if step == 1:
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
        with torch.autocast(device.type, dtype=torch.bfloat16):
            out = model(x, y, z_loss_coef=cfg.train.z_loss)
        assert isinstance(out, LossOutput)  # with targets the model returns the loss
        out.loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    torch.cuda.synchronize(device)
    peak = torch.cuda.max_memory_allocated(device) - before
    del model, optimizer, out
    torch.cuda.empty_cache()
    return peak


def check_memory(
    name: str, cfg: RunConfig, micro_batch: int, seq_len: int, device: torch.device | str = "cuda"
) -> MemoryCheck:
    device = torch.device(device)
    m: ModelConfig = cfg.model
    model = Transformer(m).to(device)
    per_sequence = block_saved_bytes(model, 2, seq_len) - block_saved_bytes(model, 1, seq_len)
    del model
    predicted_block = layer_activation_bytes(m, seq_len, "none", tp=1, residual=FP32)
    layout = PlanLayout(micro_batch=micro_batch)  # one GPU, one micro-batch per step: the one-process trainer
    return MemoryCheck(
        name=name,
        micro_batch=micro_batch,
        seq_len=seq_len,
        measured_block=per_sequence,
        predicted_block=predicted_block,
        measured_peak=step_peak_bytes(cfg, micro_batch, seq_len, device),
        predicted_peak=memory_per_gpu(m, layout, seq_len).total,
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m kamado.parallel.plan_check", description=__doc__.split("\n\n")[0])
    p.add_argument("preset", nargs="?", help="preset TOML (default: small and 1b with 4 layers)")
    p.add_argument("--micro-batch", type=int, default=1)
    p.add_argument("--seq-len", type=int, help="default: the preset's data.seq_len")
    args, overrides = p.parse_known_args(argv)
    if not torch.cuda.is_available():
        print("plan_check: no CUDA device; nothing measured", file=sys.stderr)
        return 2
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}")
    cases = DEFAULT_CASES if args.preset is None else ((args.preset, overrides, args.micro_batch, args.seq_len),)
    for path, case_overrides, b, s in cases:
        cfg = load_config(path, list(case_overrides))
        seq = s or cfg.data.seq_len
        cfg.model.max_seq_len = max(cfg.model.max_seq_len, seq)
        print(check_memory(f"{cfg.name}{''.join(' ' + o for o in case_overrides)}", cfg, b, seq).line(), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
