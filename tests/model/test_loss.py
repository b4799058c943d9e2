"""Z-loss and cross-entropy: hand computations on fixed logits."""

import math

import torch
import torch.nn.functional as F

from kamado.model.loss import IGNORE_INDEX, lm_loss

LOGITS = torch.tensor([[[2.0, 0.0, -1.0], [0.5, 0.5, 3.0]], [[1.0, 1.0, 1.0], [-2.0, 4.0, 0.0]]])
TARGETS = torch.tensor([[0, 2], [1, IGNORE_INDEX]])


def hand_lse(row):
    return math.log(sum(math.exp(v) for v in row))


def test_z_loss_equals_hand_computation():
    rows = [([2.0, 0.0, -1.0], 0), ([0.5, 0.5, 3.0], 2), ([1.0, 1.0, 1.0], 1)]  # the ignored row is excluded
    ce = sum(hand_lse(r) - r[t] for r, t in rows) / 3
    z = sum(hand_lse(r) ** 2 for r, _ in rows) / 3
    out = lm_loss(LOGITS, TARGETS, z_loss_coef=1e-2)
    assert out.num_tokens == 3
    assert math.isclose(out.ce.item(), ce, rel_tol=1e-6)
    assert math.isclose(out.z_loss.item(), z, rel_tol=1e-6)
    assert math.isclose(out.loss.item(), ce + 1e-2 * z, rel_tol=1e-6)


def test_ce_matches_torch_cross_entropy():
    logits, targets = torch.randn(4, 7, 50), torch.randint(0, 50, (4, 7))
    targets[0, :3] = IGNORE_INDEX
    ref = F.cross_entropy(logits.view(-1, 50), targets.view(-1), ignore_index=IGNORE_INDEX)
    torch.testing.assert_close(lm_loss(logits, targets, 0.0).ce, ref)


def test_z_loss_off_is_plain_ce_and_its_gradient_differs():
    logits = (torch.randn(2, 5, 11) * 3 + 4).requires_grad_()  # large log Z so the z-loss gradient is visible
    targets = torch.randint(0, 11, (2, 5))
    off = lm_loss(logits, targets, 0.0)
    assert off.loss.item() == off.ce.item()
    (g_off,) = torch.autograd.grad(off.loss, logits)
    (g_on,) = torch.autograd.grad(lm_loss(logits, targets, 1e-1).loss, logits)
    assert not torch.allclose(g_off, g_on)
    # z-loss gradient pushes every logit down (d/dlogit of lse² = 2·lse·softmax > 0 when lse > 0)
    assert (g_on - g_off).sum().item() > 0


def test_computed_in_float32_from_bf16_logits():
    logits = torch.randn(3, 4, 9).to(torch.bfloat16)
    targets = torch.randint(0, 9, (3, 4))
    out = lm_loss(logits, targets)
    assert out.loss.dtype == torch.float32
    ref = F.cross_entropy(logits.float().view(-1, 9), targets.view(-1))
    torch.testing.assert_close(out.ce, ref)


def test_all_ignored_gives_zero_with_a_gradient_path():
    logits = torch.randn(1, 3, 5, requires_grad=True)
    out = lm_loss(logits, torch.full((1, 3), IGNORE_INDEX))
    assert out.num_tokens == 0 and out.loss.item() == 0.0
    out.loss.backward()
