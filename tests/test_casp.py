"""Tests of casp.py: the paper's math (closed-form logit gradients, a hand-computed example), the
reductions to GRPO, edge cases, every logged metric against a direct computation, the chunked path
against the plain one, and gradient accumulation (of the loss and of the metrics).

Everything runs in float64 on tiny shapes (a few seconds on 2 CPU cores). Random inputs come from
fixed seeds; each test that relies on randomness asserts that the cases it means to check occur.
"""
import math

import pytest
import torch

from casp import (LossConfig, add_metrics, candidate_stats, candidate_stats_from_hidden, casp_loss,
                  casp_loss_from_hidden, entropy_gate, group_advantages, grpo_loss, grpo_loss_from_hidden,
                  mean_metrics, policy_loss)

F64 = torch.float64


# ----------------------------------------------------------------------------------------------------
# Helpers that compute expectations without the code under test


def ref_row_quantile(h, mask, q):
    """Per row: torch.quantile (linear) over the valid entries; None for an empty row."""
    out = []
    for b in range(h.shape[0]):
        vals = h[b][mask[b]]
        out.append(torch.quantile(vals, q).item() if vals.numel() else None)
    return out


def make_batch(seed=0, B=6, T=10, V=12):
    """A batch built so that every branch of the CaSP loss occurs: positive/negative/zero advantages,
    clipped and unclipped tokens on both sides, sampled tokens that are the argmax, in the top-3 or
    outside it, very different entropies within a row, padding with garbage, a 1-token response."""
    g = torch.Generator().manual_seed(seed)
    scale = torch.empty(B, T, 1, dtype=F64).uniform_(0.2, 4.0, generator=g)  # per-token sharpness
    logits = torch.randn(B, T, V, dtype=F64, generator=g) * scale  # (B, T, V)
    p = logits.softmax(-1)
    tokens = torch.multinomial(p.reshape(-1, V), 1, generator=g).reshape(B, T)
    argmax = logits.argmax(-1)
    tokens = torch.where(torch.arange(T) % 3 == 0, argmax, tokens)  # many argmax tokens
    logp_y = torch.log_softmax(logits, -1).gather(-1, tokens[..., None]).squeeze(-1)
    rho = torch.empty(B, T, dtype=F64).uniform_(0.85, 1.15, generator=g)
    rho[:, 4] = 1.5  # clipped where A > 0, unclipped where A < 0
    rho[:, 7] = 0.5  # clipped where A < 0, unclipped where A > 0
    old_logprobs = logp_y - rho.log()
    advantages = torch.tensor([1.2, 0.7, -0.9, -0.4, 0.0, 0.8], dtype=F64)[:B]
    lengths = torch.tensor([10, 8, 9, 10, 6, 1])[:B]
    mask = torch.arange(T)[None, :] < lengths[:, None]  # (B, T)
    # Garbage at padded positions must not matter.
    tokens = tokens.masked_fill(~mask, -100)
    old_logprobs = old_logprobs.masked_fill(~mask, float("nan"))
    return logits, tokens, old_logprobs, advantages, mask


def expected_casp_grad(logits, tokens, old_logprobs, advantages, mask, top_n, alpha, q, neg_scale,
                       clip_eps=0.2, clip_eps_high=None):
    """The paper's closed-form logit gradient (docs/paper.md) token by token, plus the category of every token."""
    eps_high = clip_eps if clip_eps_high is None else clip_eps_high
    B, T, V = logits.shape
    n_valid = int(mask.sum())
    p = logits.softmax(-1)
    logp = logits.log_softmax(-1)
    H = -(p * logp).sum(-1)
    thr = ref_row_quantile(H, mask, q) if q is not None else None
    N = min(top_n, V)
    grad = torch.zeros_like(logits)
    cats = []
    for b in range(B):
        A = advantages[b].item()
        for t in range(T):
            if not mask[b, t]:
                continue
            y = tokens[b, t].item()
            rho = math.exp(logp[b, t, y].item() - old_logprobs[b, t].item())
            w = 1.0 if thr is None else float(H[b, t].item() > thr[b])
            topn = torch.topk(p[b, t], N).indices.tolist()
            e_y = torch.zeros(V, dtype=F64)
            e_y[y] = 1.0
            clipped = (A > 0 and rho > 1 + eps_high) or (A < 0 and rho < 1 - clip_eps)
            if A == 0 or clipped:
                cats.append("zero-adv" if A == 0 else ("pos-clipped" if A > 0 else "neg-clipped"))
                continue
            if A > 0:
                q_vec = (1 - alpha * w) * e_y
                for c in topn:
                    q_vec[c] += alpha * w / N
                grad[b, t] = -A * rho * (q_vec - p[b, t]) / n_valid
                cats.append(f"pos-w{int(w)}-{'y-in-topn' if y in topn else 'y-out'}")
            else:
                scaled = (y == topn[0]) and w == 1.0
                lam = neg_scale if scaled else 1.0
                grad[b, t] = -lam * A * rho * (e_y - p[b, t]) / n_valid
                cats.append("neg-scaled" if scaled else ("neg-argmax-ungated" if y == topn[0] else "neg-plain"))
    return grad, cats


def loss_and_grad(fn, logits, *args, **kw):
    z = logits.clone().requires_grad_(True)
    loss, metrics = fn(z, *args, **kw)
    loss.backward()
    return loss.detach(), z.grad, metrics


# ----------------------------------------------------------------------------------------------------
# Advantages


def test_group_advantages_hand_values():
    """GRPO: (r - mean) / (Bessel std + 1e-6) per group of 4; all-equal group -> exactly 0.
    Dr. GRPO (normalize_std=False): r - mean."""
    r = torch.tensor([1, 0, 0, 1, 1, 1, 1, 1, 0, 0, 0, 1], dtype=torch.float32)
    # group 1: mean 0.5, Bessel std sqrt(4 * 0.25 / 3) = sqrt(1/3); group 3: mean 0.25, std 0.5.
    a = 0.5 / (math.sqrt(1 / 3) + 1e-6)
    b_neg, b_pos = -0.25 / (0.5 + 1e-6), 0.75 / (0.5 + 1e-6)
    want = [a, -a, -a, a, 0, 0, 0, 0, b_neg, b_neg, b_neg, b_pos]
    got = group_advantages(r, 4)
    assert got.tolist() == pytest.approx(want, abs=1e-6)
    dr = group_advantages(r, 4, normalize_std=False)
    assert dr.tolist() == pytest.approx([0.5, -0.5, -0.5, 0.5, 0, 0, 0, 0, -0.25, -0.25, -0.25, 0.75], abs=1e-7)


def test_group_advantages_all_equal_groups_are_exactly_zero():
    """All-equal rewards give exactly 0 (not ~1e-9 from rounding of the mean, not NaN for G = 1)."""
    r = torch.full((16,), 0.3, dtype=F64)
    assert torch.equal(group_advantages(r, 8), torch.zeros(16, dtype=F64))
    # float32 groups of 7 x 0.9 and 6 x 0.3: their means do not round back (r - mean = +-6e-8, then
    # divided by a std of ~1e-7 + 1e-6: |A| ~ 0.05 unless all-equal groups are zeroed explicitly)
    for g, v in ((7, 0.9), (6, 0.3)):
        r = torch.full((2 * g,), v)
        assert (r.view(2, g) - r.view(2, g).mean(1, keepdim=True)).abs().max() > 0
        assert torch.equal(group_advantages(r, g), torch.zeros(2 * g))
        assert torch.equal(group_advantages(r, g, normalize_std=False), torch.zeros(2 * g))
    assert torch.equal(group_advantages(torch.tensor([1.0, 0.0, 1.0]), 1), torch.zeros(3))
    ints = group_advantages(torch.tensor([1, 1, 0, 0]), 2)  # integer rewards are accepted
    assert ints.dtype == torch.float32 and torch.equal(ints, torch.zeros(4))


# ----------------------------------------------------------------------------------------------------
# The entropy gate


def test_entropy_gate_is_strictly_above_linear_quantile_per_row():
    """w = 1 iff H is strictly above torch.quantile (linear) of the SAME row's valid entropies."""
    H = torch.tensor([[1.0, 2.0, 3.0, 4.0, 5.0, 100.0],   # q=0.75 of 1..5 is exactly 4: 4 is not gated
                      [4.0, 4.0, 4.0, 4.0, 0.0, 0.0],     # same value 4 in another row: row quantile 4
                      [9.0, 9.0, 9.0, 9.0, 9.0, 9.0]], dtype=F64)  # all masked
    mask = torch.tensor([[1, 1, 1, 1, 1, 0], [1, 1, 1, 1, 1, 1], [0, 0, 0, 0, 0, 0]], dtype=torch.bool)
    w = entropy_gate(H, mask, 0.75)
    assert w.tolist() == [[False, False, False, False, True, False],
                          [False, False, False, False, False, False],
                          [False] * 6]
    # row 1 quantile: sorted [0,0,4,4,4,4], position 0.75*5 = 3.75 -> 4; nothing strictly above.
    assert torch.equal(entropy_gate(H, mask, None), mask)

    g = torch.Generator().manual_seed(1)
    H = torch.rand(5, 9, dtype=F64, generator=g)
    mask = torch.rand(5, 9, generator=g) < 0.7
    mask[0] = False
    for q in (0.2, 0.5, 0.8):
        w = entropy_gate(H, mask, q)
        thr = ref_row_quantile(H, mask, q)
        for b in range(5):
            for t in range(9):
                assert bool(w[b, t]) == (bool(mask[b, t]) and H[b, t].item() > thr[b])
        assert w.any()


# ----------------------------------------------------------------------------------------------------
# The paper's math


def test_hand_computed_two_token_five_word_example():
    """One response, 2 tokens, vocabulary of 5, probabilities chosen as round numbers:
        t0: p = [.5, .2, .15, .1, .05], H = 1.3331, y = 1 (rank 2, inside the top-3), rho = 1.1
        t1: p = [.9, .04, .03, .02, .01], H = 0.4531, y = 0 (the argmax),            rho = 0.95
    Gate (tau = 0.8 of two entropies = 0.4531 + 0.8 * 0.8800): only t0 is gated (w = 1, 0).
    Positive, A = 0.5, a = 0.1, N = 3:  loss = -(0.5 * 1.1 + 0.5 * 0.95) / 2 = -0.5125
        t0: q = [a/3, 1 - a + a/3, a/3, 0, 0];  grad = -0.5 * 1.1 / 2 * (q - p)
        t1: q = e_0 (w = 0);                    grad = -0.5 * 0.95 / 2 * (e_0 - p)
    Negative, A = -0.5, gate off, lambda = 1.1: t1 is the argmax and is scaled, t0 is not:
        loss = (0.5 * 1.1 + 1.1 * 0.5 * 0.95) / 2 = 0.53625
        t0: grad = 0.5 * 1.1 / 2 * (e_1 - p);   t1: grad = 1.1 * 0.5 * 0.95 / 2 * (e_0 - p)
    """
    p = torch.tensor([[[0.5, 0.2, 0.15, 0.1, 0.05], [0.9, 0.04, 0.03, 0.02, 0.01]]], dtype=F64)
    logits = p.log() + 3.0  # any shift: log-softmax gives back p
    tokens = torch.tensor([[1, 0]])
    old = torch.tensor([[math.log(0.2 / 1.1), math.log(0.9 / 0.95)]], dtype=F64)
    mask = torch.ones(1, 2, dtype=torch.bool)

    loss, grad, m = loss_and_grad(casp_loss, logits, tokens, old, torch.tensor([0.5], dtype=F64), mask,
                                  top_n=3, alpha=0.1, entropy_quantile=0.8, neg_scale=1.1)
    assert loss.item() == pytest.approx(-0.5125, abs=1e-12)
    assert grad[0, 0].tolist() == pytest.approx(
        [0.128333333333, -0.201666666667, 0.032083333333, 0.0275, 0.01375], abs=1e-11)
    assert grad[0, 1].tolist() == pytest.approx([-0.02375, 0.0095, 0.007125, 0.00475, 0.002375], abs=1e-12)
    assert m["gate_frac"].item() == 0.5 and m["clip_frac"].item() == 0.0
    assert m["entropy"].item() == pytest.approx((1.333074293476779 + 0.4530683959748149) / 2, abs=1e-12)
    assert m["top1_prob"].item() == pytest.approx(0.7) and m["topn_probs"][2].item() == pytest.approx(0.09)

    loss, grad, m = loss_and_grad(casp_loss, logits, tokens, old, torch.tensor([-0.5], dtype=F64), mask,
                                  top_n=3, alpha=0.1, entropy_quantile=None, neg_scale=1.1)
    assert loss.item() == pytest.approx(0.53625, abs=1e-12)
    assert grad[0, 0].tolist() == pytest.approx([-0.1375, 0.22, -0.04125, -0.0275, -0.01375], abs=1e-12)
    assert grad[0, 1].tolist() == pytest.approx(
        [0.026125, -0.01045, -0.0078375, -0.005225, -0.0026125], abs=1e-12)
    assert m["neg_scaled_frac"].item() == 0.5


@pytest.mark.parametrize("alpha,neg_scale,q,clip_eps_high", [
    (0.3, 1.5, 0.8, None),    # exaggerated coefficients: a wrong term could not hide in 1e-12
    (0.01, 1.1, 0.8, None),   # the paper's defaults
    (0.3, 1.5, None, None),   # gate off: w = 1 everywhere
    (0.3, 1.5, 0.5, 0.6),     # clip-higher: rho = 1.5 no longer clipped
])
def test_logit_gradient_matches_closed_form(alpha, neg_scale, q, clip_eps_high):
    """dL/dz per token equals -A rho (q - p)/n (unclipped positive), -lambda A rho (e_y - p)/n (negative,
    lambda only at gated argmax tokens), 0 for clipped and masked tokens; every category occurs."""
    logits, tokens, old, adv, mask = make_batch()
    _, grad, m = loss_and_grad(casp_loss, logits, tokens, old, adv, mask, top_n=3, alpha=alpha,
                               entropy_quantile=q, neg_scale=neg_scale, clip_eps_high=clip_eps_high)
    want, cats = expected_casp_grad(logits, tokens, old, adv, mask, 3, alpha, q, neg_scale,
                                    clip_eps_high=clip_eps_high)
    need = {"pos-w1-y-in-topn", "pos-w1-y-out", "neg-scaled", "neg-plain", "neg-clipped", "zero-adv"}
    if q is not None:
        need |= {"pos-w0-y-in-topn", "neg-argmax-ungated"}
    if clip_eps_high is None:
        need.add("pos-clipped")
    assert need <= set(cats), set(cats)
    assert (grad - want).abs().max().item() < 1e-12
    assert torch.all(grad[~mask] == 0)
    n_clipped = sum(c.endswith("clipped") for c in cats)
    assert m["clip_frac"].item() == pytest.approx(n_clipped / len(cats), abs=1e-12)


def test_casp_equals_grpo_value_when_neg_scale_is_one_and_gradient_when_alpha_is_zero():
    """The mixture's forward value is the plain ratio, so with lambda = 1 the loss equals GRPO's;
    with a = 0 as well the gradient is GRPO's. With a > 0 the gradient must differ (sanity)."""
    logits, tokens, old, adv, mask = make_batch(seed=3)
    lg, gg, _ = loss_and_grad(grpo_loss, logits, tokens, old, adv, mask)
    lc, gc, _ = loss_and_grad(casp_loss, logits, tokens, old, adv, mask, alpha=0.3, neg_scale=1.0)
    assert abs(lc.item() - lg.item()) < 1e-14
    assert (gc - gg).abs().max().item() > 1e-4
    lc, gc, _ = loss_and_grad(casp_loss, logits, tokens, old, adv, mask, alpha=0.0, neg_scale=1.0)
    assert abs(lc.item() - lg.item()) < 1e-14
    assert torch.equal(gc, gg)
    # lambda != 1 changes the value (some negative argmax tokens are gated in this batch).
    ln, _, m = loss_and_grad(casp_loss, logits, tokens, old, adv, mask, neg_scale=1.1)
    assert m["neg_scaled_frac"].item() > 0 and ln.item() > lg.item()


def test_clip_higher_dapo():
    """clip_eps_high widens only the upper bound: a positive token at rho = 1.25 is clipped (zero
    gradient, loss -A * 1.2) with eps = 0.2 but not with eps_high = 0.28; a negative token at
    rho = 0.75 stays clipped at the lower bound 1 - eps = 0.8 either way."""
    logits = torch.randn(2, 1, 6, dtype=F64, generator=torch.Generator().manual_seed(0))
    tokens = torch.tensor([[2], [3]])
    logp_y = logits.log_softmax(-1)[[0, 1], 0, [2, 3]]
    old = (logp_y - torch.tensor([1.25, 0.75], dtype=F64).log())[:, None]
    adv = torch.tensor([1.0, -1.0], dtype=F64)
    mask = torch.ones(2, 1, dtype=torch.bool)
    for fn in (grpo_loss, casp_loss):
        loss, grad, m = loss_and_grad(fn, logits, tokens, old, adv, mask)
        assert torch.all(grad == 0) and m["clip_frac"].item() == 1.0
        assert loss.item() == pytest.approx((-1.0 * 1.2 + 1.0 * 0.8) / 2, abs=1e-12)
        loss, grad, m = loss_and_grad(fn, logits, tokens, old, adv, mask, clip_eps_high=0.28)
        assert loss.item() == pytest.approx((-1.0 * 1.25 + 1.0 * 0.8) / 2, abs=1e-12)
        assert grad[0].abs().sum() > 0 and torch.all(grad[1] == 0) and m["clip_frac"].item() == 0.5


@pytest.mark.parametrize("clip_eps,clip_eps_high", [(0.1, None), (0.3, None), (0.1, 0.3), (0.3, 0.05)])
def test_clip_range_follows_clip_eps_on_both_sides(clip_eps, clip_eps_high):
    """Non-default clip ranges, on both bounds: with rho on a grid that straddles 1 - eps, 1 + eps_high
    and the default bounds 0.8 / 1.2, each token's loss is max(-A rho, -A clip(rho, 1 - eps, 1 + eps_high))
    (computed here per token), its gradient is zero exactly where the clipped branch is strictly larger,
    and clip_frac counts those tokens. (At the default eps = 0.2 a bound fixed at 0.8 or 1.2 would pass.)"""
    rhos = [0.65, 0.75, 0.85, 0.95, 1.04, 1.08, 1.15, 1.25, 1.35]
    T, V = len(rhos), 5
    logits = torch.randn(2, T, V, dtype=F64, generator=torch.Generator().manual_seed(5))
    tokens = torch.tensor([[t % V for t in range(T)]] * 2)
    logp_y = logits.log_softmax(-1).gather(-1, tokens[..., None]).squeeze(-1)      # (2, T)
    old = logp_y - torch.tensor(rhos, dtype=F64).log()                              # rho = the grid, both rows
    adv = torch.tensor([0.7, -0.7], dtype=F64)
    mask = torch.ones(2, T, dtype=torch.bool)
    hi = clip_eps if clip_eps_high is None else clip_eps_high
    want_l, want_clipped = [], []
    for A in adv.tolist():
        for rho in rhos:
            clipped_rho = min(max(rho, 1 - clip_eps), 1 + hi)
            want_l.append(max(-A * rho, -A * clipped_rho))
            want_clipped.append(-A * clipped_rho > -A * rho)
    assert 0 < sum(want_clipped) < len(want_clipped)
    for fn in (grpo_loss, casp_loss):
        loss, grad, m = loss_and_grad(fn, logits, tokens, old, adv, mask, clip_eps=clip_eps,
                                      clip_eps_high=clip_eps_high)
        assert loss.item() == pytest.approx(sum(want_l) / len(want_l), abs=1e-12)
        assert m["clip_frac"].item() == pytest.approx(sum(want_clipped) / len(want_clipped), abs=1e-12)
        zero = (grad.abs().sum(-1) == 0).flatten().tolist()                           # (2 * T,)
        assert zero == want_clipped


def test_lambda_scales_negative_advantages_only_not_zero_ones():
    """The boundary A = 0 of CaSP's negative push: with the gate off every argmax token of a response
    with A < 0 is lambda-scaled, and no token of a response with A = 0 is. neg_scaled_frac (scaled tokens
    over the tokens with A < 0) and n_negative are counted here directly; the loss (which is 0 at A = 0
    either way) equals the per-token sum with lambda at the scaled tokens. Every row has argmax tokens."""
    logits, tokens, old, _, mask = make_batch(seed=11, B=3, T=9)
    adv = torch.tensor([0.9, 0.0, -0.8], dtype=F64)
    mask = torch.ones_like(mask)
    tokens = tokens.clamp(min=0)
    old = old.nan_to_num(0.0)
    argmax = logits.argmax(-1) == tokens                                                # (B, T)
    assert argmax.any(1).all() and not argmax.all()
    logp_y = logits.log_softmax(-1).gather(-1, tokens[..., None]).squeeze(-1)
    rho = (logp_y - old).exp()
    lam = torch.where((adv[:, None] < 0) & argmax, torch.full_like(rho, 1.1), 1.0)        # (B, T)
    A = adv[:, None] * lam
    want_loss = torch.maximum(-A * rho, -A * rho.clamp(0.8, 1.2)).sum() / mask.sum()
    loss, m = casp_loss(logits, tokens, old, adv, mask, entropy_quantile=None, neg_scale=1.1)
    assert m["n_negative"].item() == 9
    assert m["neg_scaled_frac"].item() == pytest.approx(argmax[2].sum().item() / 9, abs=1e-12)
    assert loss.item() == pytest.approx(want_loss.item(), abs=1e-12)
    # with the gate on, the same count restricted to gated tokens of the A < 0 row
    _, m = casp_loss(logits, tokens, old, adv, mask, entropy_quantile=0.5, neg_scale=1.1)
    H = -(logits.softmax(-1) * logits.log_softmax(-1)).sum(-1)                           # (B, T)
    gated = H > torch.quantile(H, 0.5, dim=1, keepdim=True)
    assert (gated & argmax)[1].any(), "the A = 0 row must hold gated argmax tokens for this test to bite"
    assert m["neg_scaled_frac"].item() == pytest.approx((gated & argmax)[2].sum().item() / 9, abs=1e-12)


# ----------------------------------------------------------------------------------------------------
# Edge cases


def test_all_equal_rewards_give_zero_loss_and_gradient():
    """A group with all-equal rewards has A = 0, hence loss 0 and an exactly zero gradient."""
    logits, tokens, old, _, mask = make_batch(seed=7)
    adv = group_advantages(torch.ones(6, dtype=F64), 6)
    for fn in (grpo_loss, casp_loss):
        loss, grad, _ = loss_and_grad(fn, logits, tokens, old, adv, mask)
        assert loss.item() == 0.0 and torch.all(grad == 0)


def test_one_token_responses_are_never_gated():
    """A value is never strictly above its own quantile, so with 1 valid token per response w = 0:
    CaSP's gradient is GRPO's even with large a and lambda, and nothing is NaN."""
    logits, tokens, old, adv, mask = make_batch(seed=2)
    one = torch.zeros_like(mask)
    one[:, 2] = True  # t = 2 is a random (not forced-argmax) position ...
    one[2:4, 2], one[2:4, 3] = False, True  # ... and t = 3 a forced argmax in the negative rows
    tokens = torch.where(one, tokens.clamp(min=0), tokens)
    old = torch.where(one, logits.log_softmax(-1).gather(-1, tokens.clamp(min=0)[..., None]).squeeze(-1), old)
    lg, gg, _ = loss_and_grad(grpo_loss, logits, tokens, old, adv, one)
    lc, gc, m = loss_and_grad(casp_loss, logits, tokens, old, adv, one, alpha=0.5, neg_scale=2.0)
    assert m["gate_frac"].item() == 0.0 and torch.isfinite(gc).all()
    assert abs(lc.item() - lg.item()) < 1e-14 and (gc - gg).abs().max().item() < 1e-15
    assert gg.abs().max() > 0


def test_masked_rows_and_padding_garbage():
    """An all-masked row contributes nothing (same loss as without it under the same denominator,
    zero gradient) even with NaN old logprobs and -100 token ids at padding; a fully masked batch
    gives loss 0 and a zero gradient, never NaN."""
    logits, tokens, old, adv, mask = make_batch(seed=4)
    mask[1] = False
    logits_nan_pad = logits.masked_fill(~mask[..., None], float("nan"))  # even NaN logits at padding
    for fn in (grpo_loss, casp_loss):
        loss, grad, _ = loss_and_grad(fn, logits_nan_pad, tokens, old, adv, mask)
        keep = [0, 2, 3, 4, 5]
        loss2, grad2, _ = loss_and_grad(fn, logits[keep], tokens[keep], old[keep], adv[keep], mask[keep])
        assert torch.isfinite(loss) and abs(loss.item() - loss2.item()) < 1e-14
        assert torch.all(grad[1] == 0) and (grad[keep] - grad2).abs().max().item() < 1e-15
        none = torch.zeros_like(mask)
        loss, grad, m = loss_and_grad(fn, logits, tokens, old, adv, none)
        assert loss.item() == 0.0 and torch.all(grad == 0)
        assert all(math.isfinite(float(v)) for k, v in m.items() if k != "topn_probs")


def test_sampled_token_inside_top_n_gets_both_pushes():
    """When y is one of the top-N, its target is 1 - a + a/N (the one-hot part and its own share):
    gate off, single token, d L / d z_y = -A rho (1 - a + a/N - p_y)."""
    logits = torch.tensor([[[2.0, 1.0, 0.5, -1.0, 0.0, 0.3]]], dtype=F64)
    p = logits.softmax(-1)[0, 0]
    tokens = torch.tensor([[0]])  # the argmax, so inside the top-3
    old = logits.log_softmax(-1)[:, :, 0] - math.log(1.05)  # rho = 1.05
    _, grad, _ = loss_and_grad(casp_loss, logits, tokens, old, torch.tensor([0.7], dtype=F64),
                               torch.ones(1, 1, dtype=torch.bool), alpha=0.3, entropy_quantile=None)
    a = 0.3
    want_y = -0.7 * 1.05 * (1 - a + a / 3 - p[0].item())
    assert grad[0, 0, 0].item() == pytest.approx(want_y, abs=1e-14)
    assert grad[0, 0, 3].item() == pytest.approx(-0.7 * 1.05 * (0 - p[3].item()), abs=1e-14)  # not top-3


def test_top_n_larger_than_vocabulary_is_clamped():
    """top_n > V behaves as N = V: q = (1 - a) e_y + (a / V) * ones; all V probabilities are logged."""
    V = 5
    logits = torch.randn(1, 1, V, dtype=F64, generator=torch.Generator().manual_seed(9))
    p = logits.softmax(-1)[0, 0]
    tokens = torch.tensor([[3]])
    old = logits.log_softmax(-1)[:, :, 3].clone()  # rho = 1
    _, grad, m = loss_and_grad(casp_loss, logits, tokens, old, torch.tensor([1.0], dtype=F64),
                               torch.ones(1, 1, dtype=torch.bool), top_n=10, alpha=0.2, entropy_quantile=None)
    q = torch.full((V,), 0.2 / V, dtype=F64)
    q[3] += 0.8
    assert (grad[0, 0] - (-(q - p))).abs().max().item() < 1e-14
    assert len(m["topn_probs"]) == V and sum(x.item() for x in m["topn_probs"]) == pytest.approx(1.0)


def test_inputs_are_not_mutated():
    """No caller tensor is modified in place (the known logprob-masking bug of minimal GRPO scripts)."""
    logits, tokens, old, adv, mask = make_batch(seed=6)
    args = (logits, tokens, old, adv, mask)
    copies = [x.clone() for x in args]
    for fn in (grpo_loss, casp_loss):
        fn(*args)
    for x, c in zip(args, copies):
        assert torch.equal(x, c) or torch.allclose(x, c, rtol=0, atol=0, equal_nan=True)  # NaN padding


def direct_metrics(logits, tokens, old, adv, mask, temperature, q, top_n=3, clip_eps=0.2):
    """Every logged metric from its definition, token by token, without the code under test."""
    p = (logits / temperature).softmax(-1)  # (B, T, V)
    H = -(p * p.log()).sum(-1)  # (B, T)
    thr = ref_row_quantile(H, mask, q)
    tok = dict(H=[], topn=[], clipped=[], k3=[], gated=[], neg=[], neg_scaled=[])
    for b, t in mask.nonzero().tolist():
        y, A = tokens[b, t].item(), adv[b].item()
        probs, ids = p[b, t].topk(top_n)
        rho = p[b, t, y].item() / math.exp(old[b, t].item())
        gated = H[b, t].item() > thr[b]
        tok["H"].append(H[b, t].item())
        tok["topn"].append(probs.tolist())
        tok["clipped"].append((A > 0 and rho > 1 + clip_eps) or (A < 0 and rho < 1 - clip_eps))
        tok["k3"].append(rho - 1 - math.log(rho))
        tok["gated"].append(gated)
        tok["neg"].append(A < 0)
        tok["neg_scaled"].append(A < 0 and gated and y == ids[0].item())
    n = len(tok["H"])
    gated_topn = [r for r, g in zip(tok["topn"], tok["gated"]) if g]
    want = dict(n_tokens=n, entropy=sum(tok["H"]) / n, topn_probs=[sum(c) / n for c in zip(*tok["topn"])],
                clip_frac=sum(tok["clipped"]) / n, approx_kl=sum(tok["k3"]) / n,
                n_gated=len(gated_topn), gate_frac=len(gated_topn) / n, n_negative=sum(tok["neg"]),
                neg_scaled_frac=sum(tok["neg_scaled"]) / sum(tok["neg"]))
    want["top1_prob"] = want["topn_probs"][0]
    for k, c in enumerate(zip(*gated_topn)):
        want[f"gated_top{k + 1}_prob"] = sum(c) / len(gated_topn)
    return want


def assert_metrics_equal(got, want, tol=1e-12):
    assert set(got) == set(want), set(got) ^ set(want)
    for k, v in want.items():
        g = [float(x) for x in got[k]] if isinstance(v, list) else float(got[k])
        assert g == pytest.approx(v, abs=tol, rel=0), k


def test_metrics_against_direct_computation():
    """Each logged metric equals its definition computed here token by token (at a temperature, so the
    metrics are of the scaled distribution): entropy of pi_theta at the response tokens; p(1..N) over
    all response tokens and over the tokens the entropy gate selects; the token counts; clip, gate and
    lambda-scaled fractions; the k3 KL(pi_old || pi_theta). GRPO logs the same without the gate's
    entries. Every fraction is strictly between 0 and 1 here, so no count can be trivially right."""
    logits, tokens, old, adv, mask = make_batch(seed=8)
    want = direct_metrics(logits, tokens, old, adv, mask, temperature=0.8, q=0.8)
    for k in ("clip_frac", "gate_frac", "neg_scaled_frac"):
        assert 0 < want[k] < 1, k
    _, m = casp_loss(logits, tokens, old, adv, mask, temperature=0.8)
    assert_metrics_equal(m, want)
    assert m["n_tokens"] == mask.sum().item()
    assert all(not (torch.is_tensor(v) and v.requires_grad) for v in m.values())
    scalars = {k: v for k, v in m.items() if k not in ("n_tokens", "topn_probs")}
    assert all(torch.is_tensor(v) and v.dim() == 0 for v in scalars.values())
    _, g = grpo_loss(logits, tokens, old, adv, mask, temperature=0.8)
    assert_metrics_equal(g, {k: v for k, v in want.items()
                             if not k.startswith("gated_") and k not in ("n_gated", "gate_frac", "n_negative",
                                                                         "neg_scaled_frac")})


@pytest.mark.parametrize("loss", ["casp", "grpo"])
def test_step_metrics_over_micro_batches_are_means_over_all_tokens(loss):
    """add_metrics over micro-batches of rows with very different token counts (one with no negative
    token, one fully masked) then mean_metrics give exactly the one-call metrics of the whole batch:
    each a mean over all the tokens of its kind, and the token counts are counts (a per-token weighting
    of n_tokens would log sum(M^2) / sum(M))."""
    logits, tokens, old, adv, mask = make_batch(seed=8)
    cfg = LossConfig(loss=loss, alpha=0.3, neg_scale=1.5, temperature=0.8)
    stats_of = lambda rows, m: candidate_stats(logits[rows], tokens[rows], m, top_n=cfg.top_n,
                                               temperature=cfg.temperature)
    _, whole = policy_loss(stats_of(slice(None), mask), old, adv, mask, cfg)
    sums = {}
    for rows, m in ((slice(0, 2), mask[0:2]), (slice(2, 5), mask[2:5]), (slice(5, 6), mask[5:6]),
                    (slice(2, 4), torch.zeros_like(mask[2:4]))):
        add_metrics(sums, policy_loss(stats_of(rows, m), old[rows], adv[rows], m, cfg)[1])
    step = mean_metrics(sums)
    assert_metrics_equal(step, {k: [float(x) for x in v] if isinstance(v, list) else float(v)
                                for k, v in whole.items()})
    assert step["n_tokens"] == mask.sum().item() == 44
    if loss == "casp":
        assert 0 < step["n_negative"] < step["n_tokens"] and 0 < step["n_gated"] < step["n_tokens"]


def test_temperature_divides_the_logits():
    """casp_loss(z, temperature=T) is casp_loss(z / T): same loss, metrics and gradient w.r.t. z."""
    logits, tokens, old, adv, mask = make_batch(seed=9)
    l1, g1, m1 = loss_and_grad(casp_loss, logits, tokens, old, adv, mask, temperature=0.6)
    l2, g2, m2 = loss_and_grad(lambda z, *a: casp_loss(z / 0.6, *a), logits, tokens, old, adv, mask)
    assert l1.item() == l2.item() and torch.equal(g1, g2) and g1.abs().max() > 1e-3
    assert all(torch.equal(torch.as_tensor(m1[k]), torch.as_tensor(m2[k])) for k in m1 if k != "topn_probs")
    assert abs(l1.item() - casp_loss(logits, tokens, old, adv, mask)[0].item()) > 1e-3  # T matters here


def test_loss_config():
    """LossConfig holds the paper's defaults, is frozen, rejects impossible values; policy_loss
    dispatches on its `loss`; the GRPO one-call losses refuse CaSP's hyperparameters instead of
    ignoring them."""
    cfg = LossConfig()
    assert (cfg.loss, cfg.top_n, cfg.alpha, cfg.entropy_quantile, cfg.neg_scale, cfg.clip_eps) == \
        ("casp", 3, 0.01, 0.8, 1.1, 0.2)
    with pytest.raises(AttributeError):
        cfg.alpha = 0.5
    for bad in (dict(loss="ppo"), dict(top_n=0), dict(entropy_quantile=1.5), dict(temperature=0.0)):
        with pytest.raises(ValueError):
            LossConfig(**bad)
    logits, tokens, old, adv, mask = make_batch(seed=3)
    stats = candidate_stats(logits, tokens, mask)
    lg, mg = policy_loss(stats, old, adv, mask, LossConfig(loss="grpo", neg_scale=2.0))
    lc, mc = policy_loss(stats, old, adv, mask, LossConfig(neg_scale=2.0))
    assert lg.item() == grpo_loss(logits, tokens, old, adv, mask)[0].item() != lc.item()
    # GRPO logs where CaSP's gate would act (the same tokens), but nothing of CaSP's negative push
    assert mg["gate_frac"] == mc["gate_frac"] and mg["gated_top1_prob"] == mc["gated_top1_prob"]
    assert "n_negative" in mc and "n_negative" not in mg
    assert "gate_frac" not in grpo_loss(logits, tokens, old, adv, mask)[1]   # the one-call GRPO: its own only
    hidden_and_weight = (logits[..., :4], torch.ones(12, 4, dtype=F64))
    for fn, args in ((grpo_loss, (logits,)), (grpo_loss_from_hidden, hidden_and_weight)):
        with pytest.raises(TypeError):
            fn(*args, tokens, old, adv, mask, alpha=0.3)


# ----------------------------------------------------------------------------------------------------
# The memory-efficient path and gradient accumulation


def hidden_batch(seed=0, D=16, V=50, temperature=0.7):
    logits, tokens, old, adv, mask = make_batch(seed=seed, V=V)
    B, T = mask.shape
    g = torch.Generator().manual_seed(seed + 100)
    hidden = torch.randn(B, T, D, dtype=F64, generator=g)
    weight = torch.randn(V, D, dtype=F64, generator=g) * 0.8
    z = hidden @ weight.T / temperature
    tokens = torch.where(mask, torch.where(torch.arange(T) % 3 == 0, z.argmax(-1), tokens), -100)
    old = z.log_softmax(-1).gather(-1, tokens.clamp(min=0)[..., None]).squeeze(-1) - \
        torch.empty(B, T, dtype=F64).uniform_(-0.3, 0.3, generator=g)
    mask[1, :] = False  # an empty row
    return hidden, weight, tokens, old, adv, mask


def grads_of(fn, hidden, weight, *args, **kw):
    h = hidden.clone().requires_grad_(True)
    w = weight.clone().requires_grad_(True)
    loss, m = fn(h, w, *args, **kw)
    loss.backward()
    return loss.detach(), h.grad, w.grad, m


def plain_casp(h, w, *args, temperature=1.0, **kw):
    return casp_loss(h @ w.T / temperature, *args, **kw)


def plain_grpo(h, w, *args, temperature=1.0, **kw):
    return grpo_loss(h @ w.T / temperature, *args, **kw)


@pytest.mark.parametrize("kw", [
    dict(),
    dict(alpha=0.3, neg_scale=1.5, entropy_quantile=0.5, top_n=4),
    dict(entropy_quantile=None, top_n=60, clip_eps_high=0.28),  # top_n > V
])
def test_chunked_path_matches_plain_path(kw):
    """casp_loss_from_hidden == casp_loss(hidden @ W.T / temperature): loss, metrics and gradients
    w.r.t. hidden and W (< 1e-10 in float64), with chunks of 4 tokens (several chunks plus a
    remainder), an empty row, and a temperature."""
    hidden, weight, tokens, old, adv, mask = hidden_batch()
    lp, hp, wp, mp = grads_of(plain_casp, hidden, weight, tokens, old, adv, mask, temperature=0.7, **kw)
    lc, hc, wc, mc = grads_of(casp_loss_from_hidden, hidden, weight, tokens, old, adv, mask,
                              temperature=0.7, chunk_size=4, **kw)
    assert abs(lp.item() - lc.item()) < 1e-12
    assert (hp - hc).abs().max().item() < 1e-10 and (wp - wc).abs().max().item() < 1e-10
    assert hp.abs().max() > 1e-3 and wp.abs().max() > 1e-3 and torch.all(hc[1] == 0)
    for k in mp:
        if k == "topn_probs":
            assert torch.allclose(torch.stack(mp[k]), torch.stack(mc[k]), atol=1e-12, rtol=0)
        else:
            assert float(mp[k]) == pytest.approx(float(mc[k]), abs=1e-12), k


def test_grpo_from_the_chunked_path():
    """grpo_loss_from_hidden == grpo_loss on the logits == casp_loss_from_hidden with a = 0, lambda = 1
    (the gate is then irrelevant): one chunked path serves both methods."""
    hidden, weight, tokens, old, adv, mask = hidden_batch(seed=1)
    args = (tokens, old, adv, mask)
    lp, hp, wp, _ = grads_of(plain_grpo, hidden, weight, *args, temperature=0.7)
    lc, hc, wc, _ = grads_of(grpo_loss_from_hidden, hidden, weight, *args, temperature=0.7, chunk_size=5)
    la, ha, wa, _ = grads_of(casp_loss_from_hidden, hidden, weight, *args, temperature=0.7, chunk_size=5,
                             alpha=0.0, neg_scale=1.0)
    for l, h, w in ((lc, hc, wc), (la, ha, wa)):
        assert abs(lp.item() - l.item()) < 1e-12
        assert (hp - h).abs().max().item() < 1e-10 and (wp - w).abs().max().item() < 1e-10


@pytest.mark.parametrize("seed", range(4))
def test_chunked_path_bf16_against_float64(seed):
    """The output layer with bf16 operands (see casp.matmul_float), against float64 references.
    (a) bf16 hidden states and weight (FSDP's gathered weights): against float64 on the same bf16 values,
    logits are unrounded float32 products, so loss (relative) < 2e-5 and log p(y) < 5e-6; the gradients
    come back in bf16, within 1% of their largest entry.
    (b) float32 hidden states and float32 master weight with matmul_dtype=bf16 (bf16 training on one
    GPU): against float64 on the float32 values, only the operands' rounding (2^-9 relative) remains:
    log p(y) within 0.05 nats, loss within 4% (these inputs have logits up to ~13 and ratios up to e^3),
    gradients within 5% of their largest entry, and the loss no further from float64 than a plain path
    whose logits are rounded to bf16 (what bf16 autocast over the output layer would give)."""
    hidden, weight, tokens, old, adv, mask = hidden_batch(seed=seed)
    old32, adv32 = old.float(), adv.float()

    def rel(a, b):
        return ((a.double() - b).abs().max() / b.abs().max()).item()

    hb, wb = hidden.to(torch.bfloat16), weight.to(torch.bfloat16)
    l64, h64, w64, _ = grads_of(casp_loss_from_hidden, hb.double(), wb.double(), tokens, old, adv, mask)
    lc, hc, wc, _ = grads_of(casp_loss_from_hidden, hb, wb, tokens, old32, adv32, mask, chunk_size=7)
    assert hc.dtype == torch.bfloat16 and wc.dtype == torch.bfloat16
    y64 = candidate_stats_from_hidden(hb.double(), wb.double(), tokens, mask).logp_y
    yc = candidate_stats_from_hidden(hb, wb, tokens, mask).logp_y
    assert yc.dtype == torch.float32 and (yc.double() - y64).abs().max() < 5e-6
    assert abs(lc.item() - l64.item()) < 2e-5 * abs(l64.item())
    assert rel(hc, h64) < 1e-2 and rel(wc, w64) < 1e-2

    h32, w32 = hidden.float(), weight.float()
    l64, h64, w64, _ = grads_of(casp_loss_from_hidden, h32.double(), w32.double(), tokens, old, adv, mask)
    lb, hg, wg, _ = grads_of(casp_loss_from_hidden, h32, w32, tokens, old32, adv32, mask, chunk_size=7,
                             matmul_dtype=torch.bfloat16)
    assert hg.dtype == torch.float32 and wg.dtype == torch.float32
    y64 = candidate_stats_from_hidden(h32.double(), w32.double(), tokens, mask).logp_y
    yb = candidate_stats_from_hidden(h32, w32, tokens, mask, matmul_dtype=torch.bfloat16).logp_y
    lp, _, _, _ = grads_of(plain_casp, hb, wb, tokens, old32, adv32, mask)      # bf16 logits
    print(f"seed {seed}: |logp - float64| {(yb.double() - y64).abs().max():.1e}, loss {lb.item():.4f} vs "
          f"{l64.item():.4f} (bf16 logits: {lp.item():.4f}), dh {rel(hg, h64):.1e}, dW {rel(wg, w64):.1e}")
    assert (yb.double() - y64).abs().max() < 0.05
    assert abs(lb.item() - l64.item()) < 0.04 * abs(l64.item())
    assert abs(lb.item() - l64.item()) <= abs(lp.item() - l64.item())
    assert rel(hg, h64) < 0.05 and rel(wg, w64) < 0.05


def test_chunked_path_fully_masked():
    """A fully masked batch gives loss 0 with zero gradients and every metric (zero counts, zero means),
    so that a rank with no work can still join a sum of metrics over ranks."""
    hidden, weight, tokens, old, adv, mask = hidden_batch(seed=2)
    _, _, _, mc = grads_of(casp_loss_from_hidden, hidden, weight, tokens, old, adv, mask)
    none = torch.zeros_like(mask)
    l0, h0, w0, m0 = grads_of(casp_loss_from_hidden, hidden, weight, tokens, old, adv, none)
    assert l0.item() == 0.0 and torch.all(h0 == 0) and torch.all(w0 == 0)
    assert m0.keys() == mc.keys() and all(float(v) == 0 for k, v in m0.items() if k != "topn_probs")


@pytest.mark.parametrize("path", ["plain", "chunked"])
def test_loss_denom_makes_micro_batches_sum_to_the_mini_batch(path):
    """Gradient accumulation: micro-batches of 2 rows, each with loss_denom = valid tokens of the
    whole mini-batch, sum to the mini-batch's loss and gradient (the gate is per row, so exact).
    Without loss_denom they would not (sanity: the micro-batches have different token counts)."""
    hidden, weight, tokens, old, adv, mask = hidden_batch(seed=3)
    fn = plain_casp if path == "plain" else casp_loss_from_hidden
    kw = dict(alpha=0.3, neg_scale=1.5)
    full, hf, wf, _ = grads_of(fn, hidden, weight, tokens, old, adv, mask, **kw)
    denom = mask.sum()
    h = hidden.clone().requires_grad_(True)
    w = weight.clone().requires_grad_(True)
    total, naive = 0.0, 0.0
    for rows in (slice(0, 2), slice(2, 4), slice(4, 6)):
        loss, _ = fn(h[rows], w, tokens[rows], old[rows], adv[rows], mask[rows], loss_denom=denom, **kw)
        loss.backward()
        total += loss.item()
        naive += fn(h[rows], w, tokens[rows], old[rows], adv[rows], mask[rows], **kw)[0].item() / 3
    # Exact up to the order of float64 summation.
    assert abs(total - full.item()) < 1e-13
    assert (h.grad - hf).abs().max().item() < 1e-13 and (w.grad - wf).abs().max().item() < 1e-13
    assert abs(naive - full.item()) > 1e-3


def test_a_mean_over_no_token_is_null():
    """mean_metrics: a step whose loss saw no token with A < 0 (all advantages positive) has no
    neg_scaled_frac to report: None (logged as null), not the 0 that divide_by_counts gives; the means
    over tokens that exist are unchanged."""
    logits, tokens, old, adv, mask = make_batch(seed=3)
    adv = adv.abs() + 0.5                                                    # (B,) every row positive
    cfg = LossConfig(loss="casp", temperature=1.0)
    stats = candidate_stats(logits, tokens, mask, top_n=cfg.top_n, temperature=cfg.temperature)
    _, m = policy_loss(stats, old, adv, mask, cfg)
    step = mean_metrics(add_metrics({}, m))
    assert step["n_negative"] == 0 and step["neg_scaled_frac"] is None
    assert float(m["neg_scaled_frac"]) == 0.0                              # the per-call value, before
    assert step["entropy"] == pytest.approx(float(m["entropy"])) and step["n_tokens"] == mask.sum().item()
