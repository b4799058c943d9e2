"""`kamado experiment stability`: the probes measure what they claim, change nothing, and the quick grid's page
and figures agree with its runs' metrics."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from kamado.config import ModelConfig
from kamado.experiments.probes import AttentionLogitProbe, max_attention_logit
from kamado.experiments.report import summarise
from kamado.model.loss import linear_lm_loss, lm_loss
from kamado.model.transformer import Transformer
from kamado.parallel.loss import vocab_parallel_lm_loss

ROOT = Path(__file__).resolve().parents[2]


def test_max_attention_logit_on_a_known_layer():
    """q_i = a·e_0 at every position, k_j = j·e_0: logit(i, j) = a·j/√D, largest at the latest key a query may see
    (key j ≤ query i). A larger logit at a future key (masked by causality) must not count."""
    B, H, T, D = 1, 2, 5, 16
    q = torch.zeros(B, H, T, D)
    q[..., 0] = 3.0
    k = torch.zeros(B, 1, T, D)  # one key head shared by both query heads (grouped-query)
    k[0, 0, :, 0] = torch.arange(T, dtype=torch.float32)
    assert max_attention_logit(q, k) == pytest.approx(3.0 * (T - 1) / math.sqrt(D))
    k[0, 0, :, 0] = torch.tensor([1.0, 0.0, 0.0, 0.0, 100.0])  # only the last query sees the big key...
    q[0, :, -1, 0] = -1.0  # ...and it is negative there
    assert max_attention_logit(q, k) == pytest.approx(3.0 * 1.0 / math.sqrt(D))


def test_log_z_of_logits_with_a_known_logsumexp():
    V = 50
    logits = torch.zeros(2, 3, V)
    logits[1, :, 7] = math.log(11.0)  # row sum of exp: 49 + 11 = 60
    targets = torch.zeros(2, 3, dtype=torch.long)
    want = (math.log(V) + math.log(60.0)) / 2
    assert float(lm_loss(logits, targets).log_z) == pytest.approx(want, rel=1e-6)
    assert float(vocab_parallel_lm_loss(logits, targets, 1e-4, None).log_z) == pytest.approx(want, rel=1e-6)
    g = torch.Generator().manual_seed(0)  # the chunked head + loss: against torch's own logsumexp of hidden @ W.T
    hidden, weight = torch.randn(2, 3, 8, generator=g), torch.randn(V, 8, generator=g)
    out = linear_lm_loss(hidden, weight, targets, chunk_rows=4)  # two chunks
    assert float(out.log_z) == pytest.approx(float(torch.logsumexp(hidden @ weight.T, -1).mean()), rel=1e-6)


def test_the_probe_changes_nothing_and_comes_off():
    cfg = ModelConfig(vocab_size=64, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, ffn_hidden=64, max_seq_len=16)
    torch.manual_seed(0)
    model = Transformer(cfg)
    x = torch.randint(0, 64, (2, 16))
    plain = model(x, x, z_loss_coef=1e-4)
    plain.loss.backward()
    g_plain = model.layers[0].attn.qkv_proj.weight.grad.clone()
    model.zero_grad()
    probe = AttentionLogitProbe().attach(model)
    probed = model(x, x, z_loss_coef=1e-4)
    probed.loss.backward()
    assert float(probed.loss.detach()) == float(plain.loss.detach())
    assert torch.equal(model.layers[0].attn.qkv_proj.weight.grad, g_plain)
    values = probe.read()
    assert sorted(values) == [0, 1] and all(math.isfinite(v) for v in values.values())
    assert probe.read() == {}  # read() starts afresh
    probe.detach()
    assert all(layer.attn.probe is None for layer in model.layers)


@pytest.mark.slow
def test_the_quick_grid_end_to_end(tmp_path):
    out, page = tmp_path / "grid", tmp_path / "page" / "stability.md"
    cmd = [sys.executable, "-m", "kamado.cli", "experiment", "stability", "--quick", "--out", str(out)]
    r = subprocess.run([*cmd, "--page", str(page)], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    results = [json.loads(p.read_text()) for p in sorted(out.glob("runs/*/result.json"))]
    assert len(results) == 3 * 2 * 2  # 3 learning rates × QK-Norm on/off × Z-loss on/off, 1 seed
    for res in results:  # each summary number is the run's own metrics
        rows = [json.loads(x) for x in (out / "runs" / res["name"] / "metrics.jsonl").read_text().splitlines()]
        rows = [x for x in rows if "loss" in x]
        assert res["first_loss"] == rows[0]["loss"]
        assert res["final_loss"] == pytest.approx(sum(x["loss"] for x in rows[-2:]) / 2)  # last tenth of 24: 2
        assert res["max_attn_logit"] == max(v for x in rows for k, v in x.items() if k.startswith("attn_logit_"))
        assert (res["z_loss"] and rows[0]["z_loss"] > 0) or not res["z_loss"]
    summary = summarise(results)
    text = page.read_text()
    for name, s in summary.items():
        assert f"| {name} | {s['best_loss']:.3f} | {s['lr_sensitivity']:.3f} |" in text
    for fig in ("stability_lr.png", "stability_attn.png", "stability_logz.png"):
        assert (page.parent / "figures" / fig).stat().st_size > 10_000 and f"figures/{fig}" in text
    mtimes = {p: p.stat().st_mtime for p in out.glob("runs/*/result.json")}
    r = subprocess.run([*cmd, "--page", str(page)], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0 and {p: p.stat().st_mtime for p in mtimes} == mtimes  # finished runs are skipped
