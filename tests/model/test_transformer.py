"""Model shapes, causal masking, QK-Norm switch, GQA, init, the training loss through the model."""

import math

import pytest
import torch
import torch.nn.functional as F

from kamado.config import ModelConfig
from kamado.errors import ConfigError
from kamado.model.loss import IGNORE_INDEX, lm_loss
from kamado.model.transformer import Transformer, apply_rope, decode_attention, rope_tables

TINY = dict(vocab_size=97, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, ffn_hidden=96, max_seq_len=32)


def make(**kw) -> Transformer:
    torch.manual_seed(0)
    return Transformer(ModelConfig(**{**TINY, **kw}))


def test_shapes_and_param_count():
    m = make()
    x = torch.randint(0, 97, (3, 11))
    assert m(x).shape == (3, 11, 97)
    c = m.cfg
    per_layer = (
        c.d_model * (c.n_heads + 2 * c.n_kv_heads) * c.head_dim  # fused qkv
        + c.d_model * c.d_model  # o_proj
        + 3 * c.d_model * c.ffn_hidden  # gate, up, down
        + 2 * c.d_model  # two RMSNorms
        + 2 * c.head_dim  # q_norm, k_norm
    )
    expected = 2 * c.vocab_size * c.d_model + c.n_layers * per_layer + c.d_model
    assert m.num_params() == expected
    assert m.num_params(exclude_embedding=True) == expected - c.vocab_size * c.d_model


def test_embeddings_are_untied():
    m = make()
    assert m.embed.weight.data_ptr() != m.lm_head.weight.data_ptr()


def test_causal_mask_future_tokens_do_not_change_the_past():
    m = make().eval()
    x = torch.randint(0, 97, (1, 16))
    y = x.clone()
    y[0, 10:] = (y[0, 10:] + 1) % 97
    with torch.no_grad():
        a, b = m(x), m(y)
    torch.testing.assert_close(a[:, :10], b[:, :10])
    assert not torch.allclose(a[:, 10:], b[:, 10:])


def test_qk_norm_switch_adds_exactly_the_per_head_norms():
    on, off = make(qk_norm=True), make(qk_norm=False)
    names_on = {n for n, _ in on.named_parameters()}
    names_off = {n for n, _ in off.named_parameters()}
    extra = names_on - names_off
    assert names_off < names_on
    assert extra == {f"layers.{i}.attn.{k}_norm.weight" for i in range(2) for k in "qk"}
    assert all(on.get_parameter(n).shape == (on.cfg.head_dim,) for n in extra)


def test_qk_norm_makes_attention_invariant_to_query_key_scale():
    """With QK-Norm, scaling the q/k rows of qkv_proj does not change the output; without it, it does."""
    x = torch.randint(0, 97, (2, 12))
    for qk_norm, should_match in ((True, True), (False, False)):
        m = make(qk_norm=qk_norm).eval()
        with torch.no_grad():
            before = m(x)
            qk_rows = (m.cfg.n_heads + m.cfg.n_kv_heads) * m.cfg.head_dim
            for layer in m.layers:
                layer.attn.qkv_proj.weight[:qk_rows] *= 7.0
            after = m(x)
        assert torch.allclose(before, after, atol=1e-4) == should_match


def test_gqa_matches_explicit_head_repetition():
    """n_kv_heads < n_heads: equal to a model whose k/v heads are repeated to n_heads (MHA)."""
    gqa = make(n_heads=4, n_kv_heads=2).eval()
    mha = make(n_heads=4, n_kv_heads=4).eval()
    sd = gqa.state_dict()
    hd, d = gqa.cfg.head_dim, gqa.cfg.d_model
    for i in range(gqa.cfg.n_layers):
        w = sd[f"layers.{i}.attn.qkv_proj.weight"]
        q, k, v = w[: 4 * hd], w[4 * hd : 6 * hd], w[6 * hd :]
        rep = lambda t: t.view(2, hd, d).repeat_interleave(2, dim=0).reshape(4 * hd, d)  # noqa: E731
        sd[f"layers.{i}.attn.qkv_proj.weight"] = torch.cat([q, rep(k), rep(v)])
    mha.load_state_dict(sd)
    x = torch.randint(0, 97, (2, 9))
    with torch.no_grad():
        torch.testing.assert_close(gqa(x), mha(x), atol=1e-5, rtol=1e-5)


def test_training_loss_equals_lm_loss_on_the_logits_with_the_same_gradients():
    """`model(x, targets)` (chunked head + loss) is `lm_loss(model(x), targets)`, also under bf16 autocast."""
    x = torch.randint(0, 97, (3, 10))
    y = torch.randint(0, 97, (3, 10))
    y[1, :4] = IGNORE_INDEX
    m = make()
    for autocast in (False, True):
        results = []
        for fused in (True, False):
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
                out = m(x, y, z_loss_coef=1e-2) if fused else lm_loss(m(x), y, 1e-2)
            out.loss.backward()
            results.append((out.loss.detach(), out.z_loss, *(p.grad.clone() for p in m.parameters())))
            m.zero_grad(set_to_none=True)
        tol = dict(rtol=3e-2, atol=2e-3) if autocast else {}  # bf16 matmuls: the order of sums differs
        for a, b in zip(*results, strict=True):
            torch.testing.assert_close(a, b, **tol)


def test_rope_preserves_norm_and_relative_positions():
    cos, sin = rope_tables(8, 64, 10000.0)
    q, k = torch.randn(1, 1, 1, 8), torch.randn(1, 1, 1, 8)
    rot = lambda t, p: apply_rope(t, cos[p : p + 1], sin[p : p + 1])  # noqa: E731
    torch.testing.assert_close(rot(q, 5).norm(), q.norm())
    # <R_m q, R_n k> depends only on m - n
    a = (rot(q, 3) * rot(k, 1)).sum()
    b = (rot(q, 12) * rot(k, 10)).sum()
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_residual_output_projections_use_scaled_init():
    m = make(n_layers=8, init_std=0.02)
    w_o = m.layers[0].attn.o_proj.weight
    w_q = m.layers[0].attn.qkv_proj.weight
    assert abs(w_q.std().item() - 0.02) < 0.003
    assert abs(w_o.std().item() - 0.02 / math.sqrt(16)) < 0.001


@pytest.mark.parametrize(("n_heads", "n_kv"), [(8, 4), (4, 1), (4, 4)])
def test_decode_attention_equals_sdpa_with_gqa(n_heads, n_kv):
    """One query per row against a cache with per-row masks: the grouped matmul path gives SDPA's output."""
    g = torch.Generator().manual_seed(0)
    B, S, D = 3, 11, 16
    q = torch.randn(B, n_heads, 1, D, generator=g)
    k, v = torch.randn(B, n_kv, S, D, generator=g), torch.randn(B, n_kv, S, D, generator=g)
    blocked = torch.arange(S)[None, None, :] > torch.tensor([0, 5, 10])[:, None, None]  # [B, 1, S]
    want = F.scaled_dot_product_attention(q, k, v, attn_mask=~blocked[:, None], enable_gqa=True)
    bias = torch.zeros(blocked.shape).masked_fill(blocked, float("-inf"))
    torch.testing.assert_close(decode_attention(q, k, v, bias), want, atol=1e-6, rtol=1e-5)
    half = decode_attention(q.bfloat16(), k.bfloat16(), v.bfloat16(), bias)
    assert half.dtype == torch.bfloat16
    torch.testing.assert_close(half.float(), want, atol=3e-2, rtol=3e-2)


def test_sequence_longer_than_max_seq_len_is_rejected():
    full = torch.zeros(1, 32, dtype=torch.long)  # max_seq_len itself is fine, positions starting at 0
    assert make()(full).shape == (1, 32, 97) and make().hidden_states(full).shape == (1, 32, 64)
    with pytest.raises(ValueError, match=r"sequence of 33 tokens exceeds model\.max_seq_len=32"):
        make()(torch.zeros(1, 33, dtype=torch.long))


@pytest.mark.parametrize("bad", [dict(d_model=66), dict(n_kv_heads=3), dict(vocab_size=0)])
def test_bad_shapes_fail_with_config_error(bad):
    with pytest.raises(ConfigError):
        make(**bad)


# --- the forward pass against one written out here, with every norm weight set away from 1 --------------------------


def reference_rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    return x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight


def reference_rope(x: torch.Tensor, theta: float) -> torch.Tensor:
    """x [B, T, H, D]: dims i and i + D/2 at position t turn by the angle t · theta^(-2i/D) (rotate-half RoPE)."""
    T, D = x.shape[1], x.shape[-1]
    angle = torch.arange(T, dtype=torch.float64)[:, None] * theta ** (-torch.arange(0, D, 2, dtype=torch.float64) / D)
    cos, sin = angle.cos()[:, None, :], angle.sin()[:, None, :]  # [T, 1, D/2]: the same for every head
    a, b = x[..., : D // 2], x[..., D // 2 :]
    return torch.cat([a * cos - b * sin, a * sin + b * cos], dim=-1)


def reference_attention(attn, x: torch.Tensor, cfg: ModelConfig) -> torch.Tensor:
    """Per-head RMSNorm on q and k (with their weights), then RoPE, then causal softmax attention; k/v heads
    shared by groups of n_heads / n_kv_heads query heads."""
    B, T, _ = x.shape
    H, K, D = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
    w = attn.qkv_proj.weight.double()
    q = (x @ w[: H * D].T).view(B, T, H, D)
    k = (x @ w[H * D : (H + K) * D].T).view(B, T, K, D)
    v = (x @ w[(H + K) * D :].T).view(B, T, K, D)
    if cfg.qk_norm:
        q = reference_rms_norm(q, attn.q_norm.weight.double(), cfg.norm_eps)
        k = reference_rms_norm(k, attn.k_norm.weight.double(), cfg.norm_eps)
    q, k = reference_rope(q, cfg.rope_theta), reference_rope(k, cfg.rope_theta)
    k, v = k.repeat_interleave(H // K, dim=2), v.repeat_interleave(H // K, dim=2)
    scores = torch.einsum("bthd,bshd->bhts", q, k) / math.sqrt(D)
    scores = scores.masked_fill(~torch.ones(T, T, dtype=torch.bool).tril(), -math.inf)
    y = torch.einsum("bhts,bshd->bthd", scores.softmax(-1), v).reshape(B, T, H * D)
    return y @ attn.o_proj.weight.double().T


def reference_forward(m: Transformer, idx: torch.Tensor) -> torch.Tensor:
    """Logits of the pre-norm decoder, in float64: x += attn(norm(x)); x += W_down(silu(W_gate h) · W_up h)."""
    cfg = m.cfg
    x = m.embed.weight.double()[idx]
    for layer in m.layers:
        x = x + reference_attention(
            layer.attn, reference_rms_norm(x, layer.attn_norm.weight.double(), cfg.norm_eps), cfg
        )
        h = reference_rms_norm(x, layer.mlp_norm.weight.double(), cfg.norm_eps)
        gate_up = layer.mlp.gate_up_proj.weight.double()
        gate, up = h @ gate_up[: cfg.ffn_hidden].T, h @ gate_up[cfg.ffn_hidden :].T
        x = x + (F.silu(gate) * up) @ layer.mlp.down_proj.weight.double().T
    return reference_rms_norm(x, m.norm.weight.double(), cfg.norm_eps) @ m.lm_head.weight.double().T


def with_random_norm_weights(m: Transformer) -> Transformer:
    """Norm weights start at 1, where QK-Norm before or after RoPE gives the same result: draw them in [0.3, 3]."""
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for name, p in m.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(0.3 + 2.7 * torch.rand(p.shape, generator=g))
    return m


@pytest.mark.parametrize("qk_norm", [True, False])
def test_attention_equals_a_reference_with_qk_norm_before_rope(qk_norm):
    m = with_random_norm_weights(make(qk_norm=qk_norm, rope_theta=100.0))
    attn, cfg = m.layers[0].attn, m.cfg
    x = torch.randn(2, 12, cfg.d_model, generator=torch.Generator().manual_seed(1))
    cos, sin = m.rope_cos[:12], m.rope_sin[:12]
    with torch.no_grad():
        got = attn(x, cos, sin, None, 0)
    torch.testing.assert_close(got.double(), reference_attention(attn, x.double(), cfg), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("norm_eps", [1e-6, 0.1])  # 0.1 is far above the mean square of the activations
def test_model_logits_equal_the_reference_forward_pass(norm_eps):
    m = with_random_norm_weights(make(rope_theta=100.0, norm_eps=norm_eps)).eval()
    with torch.no_grad():  # larger residual-writing weights, so every block visibly changes the result
        for layer in m.layers:
            layer.attn.o_proj.weight.mul_(20.0)
            layer.mlp.down_proj.weight.mul_(20.0)
    idx = torch.randint(0, 97, (2, 14), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        got = m(idx)
        from_hidden = m.lm_head(m.hidden_states(idx))  # positions 0..13 when no position is given
    expected = reference_forward(m, idx)
    torch.testing.assert_close(got.double(), expected, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(from_hidden.double(), expected, rtol=1e-4, atol=1e-5)


def test_checkpoints_hold_the_weights_only():
    """The RoPE tables are rebuilt from the config, never saved: state_dict is exactly the parameters."""
    m = make()
    assert set(m.state_dict()) == {name for name, _ in m.named_parameters()}


def test_two_tokens_are_masked_causally_too():
    m = make().eval()
    with torch.no_grad():
        a, b = m(torch.tensor([[5, 6]])), m(torch.tensor([[5, 60]]))
    torch.testing.assert_close(a[:, 0], b[:, 0])


@pytest.mark.parametrize("chunks", [(1, 1, 1, 1, 1, 1, 1), (1, 2, 2, 2), (3, 2, 1, 1), (2, 5)])
def test_prefill_in_chunks_of_any_size_equals_one_pass(chunks):
    from kamado.model.generate import KVCache

    m = make().eval()
    x = torch.randint(0, 97, (2, sum(chunks)), generator=torch.Generator().manual_seed(3))
    cache, outs, pos = KVCache(m, 2, 16), [], 0
    with torch.no_grad():
        for n in chunks:
            outs.append(m(x[:, pos : pos + n], cache=cache, pos=pos))
            cache.advance(n)
            pos += n
        torch.testing.assert_close(torch.cat(outs, 1), m(x), atol=1e-5, rtol=1e-5)


def test_rope_keeps_the_dtype_of_its_input():
    cos, sin = rope_tables(8, 4, 10000.0)
    x = torch.randn(1, 2, 4, 8).to(torch.bfloat16)
    assert apply_rope(x, cos, sin).dtype == torch.bfloat16


class _RowCache:
    """A KV cache written independently of `kamado.serve.slots`: row b's position j lives at index j. Unused
    positions hold large noise, so a key that is not masked out changes the output."""

    def __init__(self, m: Transformer, B: int, S: int, dtype: torch.dtype = torch.float32):
        c = m.cfg
        g = torch.Generator().manual_seed(7)
        self.k = (100 * torch.randn(c.n_layers, B, c.n_kv_heads, S, c.head_dim, generator=g)).to(dtype)
        self.v = (100 * torch.randn(c.n_layers, B, c.n_kv_heads, S, c.head_dim, generator=g)).to(dtype)
        self.start = [0] * B

    def update(self, layer, k, v):
        for b, p in enumerate(self.start):
            self.k[layer, b, :, p : p + k.shape[2]] = k[b]
            self.v[layer, b, :, p : p + v.shape[2]] = v[b]
        return self.k[layer], self.v[layer]


def test_rows_at_their_own_positions_match_each_row_run_alone():
    """A serving batch: rows at different positions (`pos` a tensor [B]), prefilled in chunks then decoded one
    token at a time, give the logits each row gets from a plain forward pass over its whole sequence."""
    m = make(qk_norm=True).eval()
    with torch.no_grad():  # non-unit QK-Norm weights: the norm then depends on where RoPE's positions come in
        for blk in m.layers:
            blk.attn.q_norm.weight.uniform_(0.5, 2.0)
            blk.attn.k_norm.weight.uniform_(0.5, 2.0)
    seqs = torch.randint(0, 97, (2, 12), generator=torch.Generator().manual_seed(5))
    want = [m(seqs[b : b + 1])[0] for b in range(2)]
    cache = _RowCache(m, 2, 20)  # 20 positions: not head_dim (16), so S and D cannot be confused
    with torch.no_grad():
        m(seqs[1:, :4], cache=_Row1(cache), pos=0)  # row 1's first 4 tokens, on their own
        got: list[list[torch.Tensor]] = [[], []]
        p = [0, 4]
        for T in (3, 2, 1, 1, 1):
            cache.start = list(p)
            x = torch.stack([seqs[b, p[b] : p[b] + T] for b in range(2)])
            out = m(x, cache=cache, pos=torch.tensor(p))
            for b in range(2):
                got[b].append(out[b])
                p[b] += T
    torch.testing.assert_close(torch.cat(got[0]), want[0][: p[0]], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(torch.cat(got[1]), want[1][4 : p[1]], atol=1e-4, rtol=1e-4)


class _Row1:
    """Writes one row (batch index 1 of `cache`) from a batch of one, at position 0."""

    def __init__(self, cache: _RowCache):
        self.cache = cache

    def update(self, layer, k, v):
        c = self.cache
        c.k[layer, 1, :, : k.shape[2]] = k[0]
        c.v[layer, 1, :, : v.shape[2]] = v[0]
        return c.k[layer, 1:, :, : k.shape[2]], c.v[layer, 1:, :, : v.shape[2]]


def test_a_float32_cache_under_bfloat16_autocast_gives_nearly_the_same_logits():
    """Keys and values read back from a float32 cache meet bf16 queries from autocast: attention runs in one dtype."""
    from kamado.model.generate import KVCache

    m = make().eval()
    x = torch.randint(0, 97, (1, 8), generator=torch.Generator().manual_seed(2))
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        cache = KVCache(m, 1, 16)
        first = m(x[:, :6], cache=cache, pos=0)
        cache.advance(6)
        rest = m(x[:, 6:], cache=cache, pos=6)
    with torch.no_grad():
        want = m(x)
    torch.testing.assert_close(torch.cat([first, rest], 1).float(), want, atol=0.05, rtol=0.05)


def test_rmsnorm_on_bfloat16_input_applies_its_weight_in_bfloat16():
    """The weight is cast to the input's dtype, so bf16 activations take torch's single-dtype (fused) kernel; a
    float32 weight would take the mixed-dtype fallback, which rounds differently."""
    from kamado.model.transformer import RMSNorm

    torch.manual_seed(0)
    norm = RMSNorm(64, 1e-6)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
    x = torch.randn(32, 64).bfloat16()
    y = norm(x)
    assert y.dtype == torch.bfloat16
    assert torch.equal(y, F.rms_norm(x, (64,), norm.weight.detach().bfloat16(), 1e-6))


def test_packed_sequences_give_the_logits_each_gets_alone():
    """Segments: positions restart and attention stays inside each packed sequence, token by token."""
    m = make().eval()
    g = torch.Generator().manual_seed(11)
    a, b, c = (torch.randint(0, 97, (1, n), generator=g) for n in (5, 7, 3))
    row = torch.cat([a, b, c, torch.zeros(1, 2, dtype=torch.long)], 1)  # 2 padding tokens at the end
    seg = torch.tensor([[0] * 5 + [1] * 7 + [2] * 3 + [-1] * 2])
    with torch.no_grad():
        packed = m(row, segments=seg)[0]
        torch.testing.assert_close(packed[:5], m(a)[0], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(packed[5:12], m(b)[0], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(packed[12:15], m(c)[0], atol=1e-5, rtol=1e-5)
        # the same token ids in one segment would see each other: the split is what isolates them
        joined = m(row, segments=torch.zeros_like(seg))[0]
        assert not torch.allclose(joined[5:12], m(b)[0], atol=1e-3)


def test_packing_fills_the_whole_context_and_not_one_token_more():
    """Positions restart at 0 in each segment: a late segment stays inside the RoPE tables (its positions shifted
    the wrong way would give the same logits, RoPE being relative, until they ran past the table)."""
    m = make(max_seq_len=16).eval()
    g = torch.Generator().manual_seed(13)
    a, b = torch.randint(0, 97, (1, 6), generator=g), torch.randint(0, 97, (1, 10), generator=g)
    seg = torch.tensor([[0] * 6 + [1] * 10])
    with torch.no_grad():
        packed = m(torch.cat([a, b], 1), segments=seg)[0]  # exactly max_seq_len tokens
        torch.testing.assert_close(packed[6:], m(b)[0], atol=1e-5, rtol=1e-5)
        with pytest.raises(ValueError, match=r"sequence of 17 tokens exceeds model\.max_seq_len=16"):
            m(torch.cat([a, b, a[:, :1]], 1), segments=torch.tensor([[0] * 6 + [1] * 11]))


def test_packed_loss_equals_the_token_weighted_loss_of_each_sequence_alone():
    m = make().eval()
    g = torch.Generator().manual_seed(12)
    a, b = torch.randint(0, 97, (1, 6), generator=g), torch.randint(0, 97, (1, 9), generator=g)
    ya, yb = torch.randint(0, 97, (1, 6), generator=g), torch.randint(0, 97, (1, 9), generator=g)
    ya[0, :2] = IGNORE_INDEX  # a prompt part, not scored
    x, y = torch.cat([a, b], 1), torch.cat([ya, yb], 1)
    seg = torch.tensor([[3] * 6 + [4] * 9])
    with torch.no_grad():
        packed = m(x, y, segments=seg).ce
        la, lb = m(a, ya).ce, m(b, yb).ce
    assert float(packed) == pytest.approx((4 * float(la) + 9 * float(lb)) / 13, rel=1e-5)


@pytest.mark.parametrize("device_path", ["chunked", "logits"])
def test_training_loss_paths_equal_lm_loss_on_the_logits(monkeypatch, device_path):
    """`forward(idx, targets)` takes the chunked loss on a CPU and logits + `lm_loss` on a GPU; the GPU's path is
    run here by listing the CPU among its devices. Both must be `lm_loss` of the logits, coefficient included."""
    if device_path == "logits":
        monkeypatch.setattr("kamado.model.transformer.LOGITS_LOSS_DEVICES", {"cpu"})
    torch.manual_seed(0)
    model = make()
    idx = torch.randint(0, model.cfg.vocab_size, (2, 12))
    targets = torch.randint(0, model.cfg.vocab_size, (2, 12))
    targets[0, :3] = IGNORE_INDEX
    with torch.no_grad():
        want = lm_loss(model(idx), targets, 0.05)
    out = model(idx, targets, z_loss_coef=0.05)
    for name in ("loss", "ce", "z_loss", "log_z"):
        assert float(getattr(out, name).detach()) == pytest.approx(float(getattr(want, name)), rel=1e-5), name
    assert out.num_tokens == 21
    out.loss.backward()
    head_grad = model.lm_head.weight.grad.clone()
    model.zero_grad()
    lm_loss(model(idx), targets, 0.05).loss.backward()
    torch.testing.assert_close(head_grad, model.lm_head.weight.grad, rtol=1e-4, atol=1e-6)
