"""Direct Preference Optimization (Rafailov et al. 2023), its label-smoothed form cDPO (Mitchell 2023) and IPO
(Azar et al. 2023), on the run's trainer.

With h = (log π(y_w|x) − log π(y_l|x)) − (log π_ref(y_w|x) − log π_ref(y_l|x)), the log-ratio margin of the
chosen answer y_w over the rejected y_l against the reference model:

    sigmoid (DPO, cDPO):  loss = −(1 − ε)·log σ(β·h) − ε·log σ(−β·h)     (ε = label_smoothing; ε = 0 is DPO)
    ipo:                  loss = (h − 1/(2β))²                          (log-probs averaged over the answer's tokens)

The implicit rewards are β·(log π − log π_ref) of each answer; reward accuracy is the share of pairs whose chosen
reward is above the rejected one, the margin their mean difference. A pair's answer log-prob is summed over the
answer's tokens (content and end-of-turn token, as SFT trains them; see `kamado.posttrain.sft`), averaged for IPO.
The reference log-probs are computed once per round (`reference_logps`) and stored with the round's pairs.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from kamado.errors import DataError
from kamado.model.loss import IGNORE_INDEX
from kamado.posttrain.config import DPOConfig
from kamado.posttrain.sft import Encoded, check_messages, encode_conversation
from kamado.tokenizer.tokenizer import Tokenizer
from kamado.train.trainer import Trainer, host_values

LOSS_TYPES = ("sigmoid", "ipo")


def dpo_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    beta: float = 0.1,
    label_smoothing: float = 0.0,
    loss_type: str = "sigmoid",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-pair losses, chosen rewards and rejected rewards (all [P]); the formulas are in the module docstring."""
    if loss_type not in LOSS_TYPES:
        raise ValueError(f"loss_type must be one of {LOSS_TYPES}, got {loss_type!r}")
    h = (policy_chosen_logps - policy_rejected_logps) - (ref_chosen_logps - ref_rejected_logps)
    if loss_type == "ipo":
        losses = (h - 1 / (2 * beta)) ** 2
    else:
        losses = -(1 - label_smoothing) * F.logsigmoid(beta * h) - label_smoothing * F.logsigmoid(-beta * h)
    chosen_rewards = beta * (policy_chosen_logps - ref_chosen_logps).detach()
    rejected_rewards = beta * (policy_rejected_logps - ref_rejected_logps).detach()
    return losses, chosen_rewards, rejected_rewards


def sequence_logps(logits: torch.Tensor, targets: torch.Tensor, average: bool = False) -> torch.Tensor:
    """Sum (or mean) over each row of log p(target) where the target is not IGNORE_INDEX: [B, T, V], [B, T] -> [B]."""
    scored = targets != IGNORE_INDEX
    logp = torch.gather(logits.float().log_softmax(-1), 2, targets.clamp(min=0)[..., None])[..., 0]
    total = (logp * scored).sum(-1)
    return total / scored.sum(-1).clamp(min=1) if average else total


# --------------------------------------------------------------------------------------------------- pairs
def check_pair(record: Mapping[str, Any]) -> str | None:
    """Why a preference pair cannot be trained on (a reason for the report), or None."""
    prompt, chosen, rejected = record.get("prompt"), record.get("chosen"), record.get("rejected")
    if not isinstance(chosen, str) or not isinstance(rejected, str):
        return "chosen/rejected missing"
    if not chosen.strip() or not rejected.strip():
        return "empty answer"
    if chosen.strip() == rejected.strip():
        return "chosen identical to rejected"
    if not isinstance(prompt, list) or (prompt and prompt[-1].get("role") == "assistant"):
        return "prompt is not a conversation ending in a user turn"
    why = check_messages([*prompt, {"role": "assistant", "content": chosen}])
    return f"prompt: {why}" if why else None


def encode_pair(tok: Tokenizer, record: Mapping[str, Any]) -> tuple[list[int], list[bool], list[int], list[bool]]:
    """(ids, trained) of prompt + chosen and of prompt + rejected; only the answer's tokens are trained/scored."""
    out: list[Any] = []
    for key in ("chosen", "rejected"):
        msgs = [*record["prompt"], {"role": "assistant", "content": record[key]}]
        enc = encode_conversation(tok, msgs)
        last = max(i for i, m in enumerate(msgs) if m["role"] == "assistant")
        start = len(tok.encode_chat(msgs[:last], add_generation_prompt=True))
        out += [enc.ids, [ok and i >= start for i, ok in enumerate(enc.trained)]]
    return out[0], out[1], out[2], out[3]


def prepare_pairs(
    records: Sequence[Mapping[str, Any]], tok: Tokenizer, seq_len: int
) -> tuple[list[dict[str, Any]], Counter[str]]:
    """Pairs that can be trained on (with their token ids) and the count of each skip reason."""
    kept: list[dict[str, Any]] = []
    skipped: Counter[str] = Counter()
    for r in records:
        why = check_pair(r)
        if why is None:
            c_ids, c_ok, r_ids, r_ok = encode_pair(tok, r)
            if max(len(c_ids), len(r_ids)) > seq_len + 1:
                why = "longer than the context"
            else:
                kept.append({**r, "_c": (c_ids, c_ok), "_r": (r_ids, r_ok)})
        if why is not None:
            skipped[why] += 1
    return kept, skipped


def draw_pairs(
    first: Sequence[Mapping[str, Any]],
    pool: Sequence[Mapping[str, Any]],
    want: int,
    tok: Tokenizer,
    seq_len: int,
    rng: np.random.Generator,
) -> tuple[list[dict[str, Any]], Counter[str]]:
    """Up to `want` usable pairs: those of `first` that can be trained on, then pairs drawn from `pool` in a random
    order (`rng`) until `want` are usable or the pool runs out. A drawn pair that cannot be trained on (too long for
    the context, ...) is counted in the skips and replaced by the next draw, so every round trains on `want` pairs
    whenever the pool holds enough."""
    kept, skipped = prepare_pairs(first, tok, seq_len)
    del kept[want:]
    for i in rng.permutation(len(pool)) if len(kept) < want else ():
        more, why = prepare_pairs([pool[i]], tok, seq_len)
        kept += more
        skipped.update(why)
        if len(kept) == want:
            break
    return kept, skipped


def pair_batch(pairs: Sequence[Mapping[str, Any]], pad_id: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """x, y [2P, T]: rows 0..P-1 the chosen answers, P..2P-1 the rejected, padded to the longest."""
    seqs = [p["_c"] for p in pairs] + [p["_r"] for p in pairs]
    T = max(len(ids) for ids, _ in seqs) - 1
    x = torch.full((len(seqs), T), pad_id, dtype=torch.long)
    y = torch.full((len(seqs), T), IGNORE_INDEX, dtype=torch.long)
    for b, (ids, ok) in enumerate(seqs):
        x[b, : len(ids) - 1] = torch.tensor(ids[:-1])
        y[b, : len(ids) - 1] = Encoded(ids, ok).targets()
    return x, y


@torch.no_grad()
def reference_logps(model: torch.nn.Module, pairs: list[dict[str, Any]], batch: int = 8, average: bool = False) -> None:
    """Store each pair's reference log-probs (`ref_chosen_logp`, `ref_rejected_logp`) in the pair, in place."""
    model.eval()
    for i in range(0, len(pairs), batch):
        chunk = pairs[i : i + batch]
        x, y = pair_batch(chunk)
        logps = sequence_logps(model(x), y, average).tolist()
        for j, p in enumerate(chunk):
            p["ref_chosen_logp"], p["ref_rejected_logp"] = logps[j], logps[len(chunk) + j]


@torch.no_grad()
def pair_metrics(
    model: torch.nn.Module, pairs: list[dict[str, Any]], cfg: DPOConfig, batch: int = 8
) -> dict[str, float]:
    """Mean DPO loss, reward accuracy and reward margin of `model` on pairs with reference log-probs."""
    model.eval()
    losses, margins, right = [], [], []
    for i in range(0, len(pairs), batch):
        chunk = pairs[i : i + batch]
        x, y = pair_batch(chunk)
        logps = sequence_logps(model(x), y, average=cfg.loss_type == "ipo")
        P = len(chunk)
        ref_c = torch.tensor([p["ref_chosen_logp"] for p in chunk])
        ref_r = torch.tensor([p["ref_rejected_logp"] for p in chunk])
        loss, cr, rr = dpo_loss(logps[:P], logps[P:], ref_c, ref_r, cfg.beta, cfg.label_smoothing, cfg.loss_type)
        losses += loss.tolist()
        margins += (cr - rr).tolist()
        right += (cr > rr).tolist()
    n = max(1, len(losses))
    return {"loss": sum(losses) / n, "reward_accuracy": sum(right) / n, "reward_margin": sum(margins) / n}


class PairLoader:
    """Batches (x, y, ref_logps) of `batch_pairs` pairs in a seeded order per epoch; resumes from state_dict()."""

    def __init__(self, pairs: list[dict[str, Any]], batch_pairs: int, seed: int):
        if not pairs:
            raise DataError("no preference pair to train on")
        if any("ref_chosen_logp" not in p for p in pairs):
            raise DataError("pairs need their reference log-probs (kamado.posttrain.dpo.reference_logps)")
        self.pairs, self.batch_pairs, self.seed = pairs, batch_pairs, seed
        self.epoch, self.index = 0, 0

    def _order(self) -> list[int]:
        return np.random.default_rng([self.seed, self.epoch]).permutation(len(self.pairs)).tolist()

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        chosen = []
        order = self._order()
        for _ in range(self.batch_pairs):
            if self.index >= len(order):
                self.epoch, self.index = self.epoch + 1, 0
                order = self._order()
            chosen.append(self.pairs[order[self.index]])
            self.index += 1
        x, y = pair_batch(chosen)
        ref = torch.tensor([p["ref_chosen_logp"] for p in chosen] + [p["ref_rejected_logp"] for p in chosen])
        return x, y, ref

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "index": self.index, "pairs": len(self.pairs), "seed": self.seed}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("pairs") != len(self.pairs) or state.get("seed") != self.seed:
            raise DataError("the round's pairs changed since the checkpoint: resuming would not be exact")
        self.epoch, self.index = int(state["epoch"]), int(state["index"])


class DPOTrainer(Trainer):
    """The run's trainer with the DPO objective; batches are (x, y, reference log-probs) from `PairLoader`."""

    def objective(self, batch: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        d = self.cfg.dpo
        x, y, ref = batch
        logps = sequence_logps(self.forward(x), y, average=d.loss_type == "ipo")
        P = x.shape[0] // 2
        losses, cr, rr = dpo_loss(logps[:P], logps[P:], ref[:P], ref[P:], d.beta, d.label_smoothing, d.loss_type)
        loss = losses.mean()
        return loss, {
            "loss": loss.detach(),
            "reward_margin": (cr - rr).detach().mean(),
            "reward_accuracy": (cr > rr).float().mean(),
            "chosen_logps": logps[:P].detach().mean(),
            "rejected_logps": logps[P:].detach().mean(),
        }

    @torch.no_grad()
    def evaluate(self) -> dict[str, Any] | None:
        if self.val_batches is None:
            return None
        self.model.eval()
        rows = []
        for batch in self.val_batches():
            with self.autocast():
                rows.append(self.objective(tuple(t.to(self.device) for t in batch))[1])
        if not rows:
            return None
        means = host_values({k: torch.stack([r[k] for r in rows]).mean() for k in rows[0]})
        return {"step": self.step, **{f"val_{k}": v for k, v in means.items()}}
