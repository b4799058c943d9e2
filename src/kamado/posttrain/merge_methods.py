"""Model-merging formulas, one pure function per method, on float32 tensors of one parameter.

`kamado.posttrain.merge` streams checkpoints through them one tensor at a time. Methods with a base work on task
vectors δᵢ = θᵢ − θ_base, which the caller computes; linear and slerp take the models' values θᵢ.

  linear           Σ wᵢθᵢ / Σ wᵢ (Wortsman et al. 2022, "model soups"; unnormalised: Σ wᵢθᵢ)
  slerp            spherical interpolation between two models at t (Shoemake 1985), per tensor
  task_arithmetic  θ_base + λ·Σ wᵢδᵢ (Ilharco et al. 2023, arXiv 2212.04089)
  ties             trim, elect sign, disjoint merge (Yadav et al. 2023, arXiv 2306.01708, Algorithm 1)
  dare             drop with p = 1 − density, rescale by 1/density (Yu et al. 2023, arXiv 2311.03099)
  model_stock      t·mean(θᵢ) + (1 − t)·θ_base, t from the angle between deltas (Jang et al. 2024, arXiv 2403.19522)

The choices a reader would question: TIES's disjoint mean is weighted (Σ over agreeing wᵢδ̂ᵢ / Σ over agreeing |wᵢ|),
which is the paper's plain mean when every weight is 1; a parameter whose trimmed deltas sum to exactly 0 elects no
sign and keeps the base value (sgn(0) = 0, as the paper's γ = sgn(Σ δ̂) reads). Model Stock's cos θ is clamped to
[0, 1]: its ratio t = N·cos θ / (1 + (N−1)·cos θ) is derived for fine-tuned models on a cone around their centre
(an acute angle); a negative cosine would give t < 0 and a pole at cos θ = −1/(N−1), so it falls back to the base.
No function changes its inputs; sums accumulate in place in one output, and TIES and DARE work CHUNK entries at a
time, so that a merge holds a few copies of a tensor (an embedding can be GBs), not a stack of every model's.

The file ends with what a merge is asked for (`MergeSpec`), checked before any file is opened (`check_spec`: each
method refuses the flags it has no use for), and the per-tensor steps: `sparsify` (TIES's trim or DARE's drop, per
model, as it is read), `combine`, and `merge_tensor`, both together.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

import torch

from kamado.config_checks import FRACTION, Range, check_choice, check_items, check_value
from kamado.errors import ConfigError

METHODS = ("linear", "slerp", "task_arithmetic", "ties", "dare_linear", "dare_ties", "model_stock")
WITH_BASE = frozenset({"task_arithmetic", "ties", "dare_linear", "dare_ties", "model_stock"})
WITH_WEIGHTS = frozenset({"linear", "task_arithmetic", "ties", "dare_linear", "dare_ties"})
WITH_DENSITY = frozenset({"ties", "dare_linear", "dare_ties"})
WITH_LAMBDA = frozenset({"task_arithmetic", "ties", "dare_linear", "dare_ties"})
SLERP_COLINEAR = 0.9995  # |cos Ω| above this, sin Ω → 0 makes the arc's weights ill-conditioned: interpolate linearly
EPS = 1e-8
CHUNK = 1 << 20  # entries TIES and DARE handle at a time, so that their temporaries stay a few MB


def linear(tensors: list[torch.Tensor], weights: list[float], normalize: bool = True) -> torch.Tensor:
    """Weighted average Σ wᵢθᵢ / Σ wᵢ; with `normalize=False` the plain weighted sum Σ wᵢθᵢ."""
    out = torch.zeros_like(tensors[0])
    for w, x in zip(weights, tensors, strict=True):
        out.add_(x, alpha=w)
    return out.div_(sum(weights)) if normalize else out


def slerp(a: torch.Tensor, b: torch.Tensor, t: float) -> torch.Tensor:
    """Point at fraction t along the great-circle arc from a to b (t=0: a, t=1: b), the tensors seen as vectors.

    sin((1−t)Ω)/sin Ω · a + sin(tΩ)/sin Ω · b with cos Ω = â·b̂; norms are interpolated along with the direction.
    Nearly colinear (or zero) tensors have no well-defined arc: (1−t)·a + t·b."""
    norm_a, norm_b = a.norm(), b.norm()
    if norm_a < EPS or norm_b < EPS:
        return torch.lerp(a, b, t)
    cos = float((a.flatten() @ b.flatten()) / (norm_a * norm_b))
    if abs(cos) > SLERP_COLINEAR:
        return torch.lerp(a, b, t)
    omega = math.acos(max(-1.0, min(1.0, cos)))
    sin_omega = math.sin(omega)
    return (a * (math.sin((1 - t) * omega) / sin_omega)).add_(b, alpha=math.sin(t * omega) / sin_omega)


def task_arithmetic(base: torch.Tensor, deltas: list[torch.Tensor], weights: list[float], lam: float) -> torch.Tensor:
    """θ_base + λ·Σ wᵢδᵢ (Ilharco et al. 2023: task vectors added with one scaling λ)."""
    out = base.clone()
    for w, d in zip(weights, deltas, strict=True):
        out.add_(d, alpha=lam * w)
    return out


def keep_count(density: float, numel: int) -> int:
    """How many entries a density keeps: round-half-up of density·numel, at least 1."""
    return max(1, min(numel, math.floor(density * numel + 0.5)))


def kth_largest_magnitude(x: torch.Tensor, k: int) -> int:
    """The float32 bit pattern of the k-th largest |x|, by radix selection: bit patterns order like the values
    once the sign bit is cleared, so three histograms (bits 30-20, then 19-10 and 9-0 of the entries that share
    the bucket found so far), counted CHUNK entries at a time, pin it exactly. `topk` and `kthvalue` would copy the
    tensor and add int64 indices: 3x its size, for the largest tensor of the model."""
    assert x.dtype == torch.float32
    bits = x.reshape(-1).view(torch.int32)
    prefix, need = 0, k  # the pattern's bits found so far; how many of the largest are still to pass
    for shift, width in ((20, 11), (10, 10), (0, 10)):
        hist = torch.zeros(1 << width, dtype=torch.int64)
        for s in range(0, bits.numel(), CHUNK):
            part = bits[s : s + CHUNK] & 0x7FFFFFFF
            if shift + width < 31:
                part = part[(part >> (shift + width)) == prefix]
            hist += torch.bincount((part >> shift) & ((1 << width) - 1), minlength=1 << width)
        from_top = hist.flip(0).cumsum(0)
        i = int(torch.searchsorted(from_top, need))  # the bucket in which the count from the top reaches `need`
        need -= int(from_top[i - 1]) if i > 0 else 0
        prefix = (prefix << width) | ((1 << width) - 1 - i)
    return prefix


def trim(delta: torch.Tensor, density: float) -> torch.Tensor:
    """TIES step 1: keep the `density` fraction of entries with the largest magnitude, zero the rest (entries tied
    with the last one kept are kept too)."""
    k = keep_count(density, delta.numel())
    if k == delta.numel():
        return delta
    threshold = kth_largest_magnitude(delta, k)
    out = torch.empty_like(delta)
    flat, bits, flat_out = delta.reshape(-1), delta.reshape(-1).view(torch.int32), out.view(-1)
    for s in range(0, flat.numel(), CHUNK):
        keep = (bits[s : s + CHUNK] & 0x7FFFFFFF) >= threshold
        flat_out[s : s + CHUNK] = torch.where(keep, flat[s : s + CHUNK], 0.0)
    return out


def disjoint_merge(deltas: list[torch.Tensor], weights: list[float]) -> torch.Tensor:
    """TIES steps 2-3: elect γ = sgn(Σ wᵢδᵢ) per parameter, then average the wᵢδᵢ whose sign agrees with γ,
    dividing by the summed |wᵢ| of the agreeing models only (a negative weight subtracts a task vector; its
    magnitude, not its sign, is its share of the mean).

    Every parameter is decided on its own, so the work goes through CHUNK entries at a time: its temporaries (the
    election, signs, masks, sums) stay a few MB even for a 2 GB embedding."""
    out = torch.empty_like(deltas[0])
    flat = [d.reshape(-1) for d in deltas]
    for start in range(0, out.numel(), CHUNK):
        part = [d[start : start + CHUNK] for d in flat]
        elected = torch.zeros_like(part[0])
        for w, d in zip(weights, part, strict=True):
            elected.add_(d, alpha=w)
        elected.sign_()
        total, divisor = torch.zeros_like(elected), torch.zeros_like(elected)
        for w, d in zip(weights, part, strict=True):
            agree = d.sign().mul_(math.copysign(1.0, w)) == elected  # sgn(wᵢδᵢ) = γ; where γ = 0, only zeros agree
            total.add_(torch.where(agree, d, 0.0), alpha=w)
            divisor.add_(agree, alpha=abs(w))
        empty = divisor == 0
        out.view(-1)[start : start + CHUNK] = total.div_(divisor.masked_fill_(empty, 1.0)).masked_fill_(empty, 0.0)
    return out


def ties(
    base: torch.Tensor, deltas: list[torch.Tensor], weights: list[float], density: float, lam: float
) -> torch.Tensor:
    """θ_base + λ·disjoint_merge(trim(δᵢ)) (Yadav et al. 2023, Algorithm 1)."""
    return disjoint_merge([trim(d, density) for d in deltas], weights).mul_(lam).add_(base)


def dare_seed(seed: int, name: str, model_index: int) -> int:
    """The drop mask's seed for one tensor of one model: the same for a rerun, different across tensors/models."""
    digest = hashlib.sha256(f"{seed}/{name}/{model_index}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def dare(delta: torch.Tensor, density: float, seed: int) -> torch.Tensor:
    """Drop each entry with probability 1 − density, rescale survivors by 1/density: E[dare(δ)] = δ. The uniform
    draws come CHUNK at a time from one generator: the mask of one `torch.rand(numel)`, without its buffer."""
    if density >= 1.0:
        return delta
    gen = torch.Generator().manual_seed(seed)
    out = torch.empty_like(delta)
    flat, flat_out = delta.reshape(-1), out.view(-1)
    for s in range(0, flat.numel(), CHUNK):
        part = flat[s : s + CHUNK]
        keep = torch.rand(part.shape, generator=gen) < density
        flat_out[s : s + CHUNK] = torch.where(keep, part, 0.0).div_(density)
    return out


def model_stock_ratio(deltas: list[torch.Tensor]) -> float:
    """t = N·cos θ / (1 + (N−1)·cos θ), cos θ between the deltas (the mean over pairs for N > 2), clamped to [0, 1]."""
    flat = [d.flatten() for d in deltas]
    cosines = []
    for i in range(len(flat)):
        for j in range(i + 1, len(flat)):
            norms = flat[i].norm() * flat[j].norm()
            cosines.append(float(flat[i] @ flat[j] / norms) if norms > EPS else 0.0)
    cos = max(0.0, min(1.0, sum(cosines) / len(cosines)))
    n = len(deltas)
    return n * cos / (1 + (n - 1) * cos)


def model_stock(base: torch.Tensor, deltas: list[torch.Tensor]) -> torch.Tensor:
    """t·mean(θᵢ) + (1 − t)·θ_base = θ_base + t·mean(δᵢ), per tensor (Jang et al. 2024: layer-wise, as the paper)."""
    t = model_stock_ratio(deltas)
    out = base.clone()
    for d in deltas:
        out.add_(d, alpha=t / len(deltas))
    return out


# ------------------------------------------------------------------------------------------------- parameters
@dataclass(frozen=True)
class MergeSpec:
    """What to merge and how; None means 'not given' (the method's default, or refused where it has no use)."""

    method: str
    models: tuple[str, ...]
    base: str | None = None
    weights: tuple[float, ...] | None = None
    t: float | None = None
    density: float | None = None
    lam: float | None = None
    seed: int | None = None
    normalize: bool = True


@dataclass(frozen=True)
class Resolved:
    """A checked MergeSpec with every default filled in."""

    method: str
    weights: list[float]
    t: float
    density: float
    lam: float
    seed: int
    normalize: bool


def check_spec(spec: MergeSpec) -> Resolved:
    """ConfigError naming the flag for anything wrong before a file is opened; else the parameters to merge with."""
    m = spec.method
    check_choice("--method", m, METHODS)
    n = len(spec.models)
    if n == 0:
        raise ConfigError("--models: give at least one model to merge")
    if m in WITH_BASE and spec.base is None:
        raise ConfigError(f"{m} needs --base (the model its task vectors / deltas are taken from)")
    if m not in WITH_BASE and spec.base is not None:
        raise ConfigError(f"{m} takes no --base: it merges --models only")
    if m == "slerp" and n != 2:
        raise ConfigError(f"slerp interpolates between exactly two --models (got {n})")
    if m == "model_stock" and n < 2:
        raise ConfigError(f"model_stock needs at least two fine-tuned --models besides --base (got {n})")
    unused = {
        "--weights": spec.weights is not None and m not in WITH_WEIGHTS,
        "--t": spec.t is not None and m != "slerp",
        "--density": spec.density is not None and m not in WITH_DENSITY,
        "--lambda": spec.lam is not None and m not in WITH_LAMBDA,
        "--seed": spec.seed is not None and not m.startswith("dare"),
        "--no-normalize": not spec.normalize and m != "linear",
    }
    for flag, given in unused.items():
        if given:
            raise ConfigError(f"{flag} has no meaning for {m} (see `kamado merge --help`)")
    if m == "slerp" and spec.t is None:
        raise ConfigError("slerp needs --t, the fraction of the way from the first model to the second, in [0, 1]")
    if m in WITH_DENSITY and spec.density is None:
        raise ConfigError(f"{m} needs --density, the fraction of each task vector kept, in (0, 1]")
    weights = list(spec.weights) if spec.weights is not None else [1.0] * n
    if len(weights) != n:
        raise ConfigError(f"{len(weights)} --weights for {n} --models: give one weight per model, in order")
    check_items("--weights", weights, Range())
    if m == "linear" and spec.normalize and abs(sum(weights)) < 1e-12:
        raise ConfigError("--weights sum to 0, so they cannot be normalised (--no-normalize: a plain weighted sum)")
    resolved = Resolved(
        m,
        [float(w) for w in weights],
        t=0.0 if spec.t is None else spec.t,
        density=1.0 if spec.density is None else spec.density,
        lam=1.0 if spec.lam is None else spec.lam,
        seed=0 if spec.seed is None else spec.seed,
        normalize=spec.normalize,
    )
    check_value("--t", resolved.t, FRACTION, integer=False)
    check_value("--density", resolved.density, Range(0, 1, lo_open=True), integer=False)
    check_value("--lambda", resolved.lam, Range(), integer=False)
    check_value("--seed", resolved.seed, Range(0), integer=True)
    return resolved


def sparsify(p: Resolved, name: str, index: int, delta: torch.Tensor) -> torch.Tensor:
    """The per-model step of the task-vector methods (TIES's trim, DARE's drop), applied to model `index`'s delta
    as soon as it is read, so that the full delta can be freed before the next model is read."""
    if p.method == "ties":
        return trim(delta, p.density)
    if p.method.startswith("dare"):
        return dare(delta, p.density, dare_seed(p.seed, name, index))
    return delta


def combine(p: Resolved, base: torch.Tensor | None, tensors: list[torch.Tensor]) -> torch.Tensor:
    """The merged tensor from the models' values (linear, slerp) or their sparsified deltas (methods with a base)."""
    if p.method == "linear":
        return linear(tensors, p.weights, p.normalize)
    if p.method == "slerp":
        return slerp(tensors[0], tensors[1], p.t)
    assert base is not None
    if p.method == "model_stock":
        return model_stock(base, tensors)
    if p.method in ("task_arithmetic", "dare_linear"):
        return task_arithmetic(base, tensors, p.weights, p.lam)
    return disjoint_merge(tensors, p.weights).mul_(p.lam).add_(base)  # ties, dare_ties: DARE's drop replaces the trim


def merge_tensor(p: Resolved, name: str, base: torch.Tensor | None, tensors: list[torch.Tensor]) -> torch.Tensor:
    """One parameter merged (float32): `tensors` are the models' values for linear and slerp, and their deltas
    θᵢ − θ_base for the methods with a base. `name` seeds DARE's drop masks."""
    if base is not None:
        tensors = [sparsify(p, name, i, d) for i, d in enumerate(tensors)]
    return combine(p, base, tensors)
