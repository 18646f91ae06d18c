"""Tests of the methods CaSP is compared with (casp.METHODS): each against its paper's formula written
out here independently (advantages exactly; logit gradients by autograd against the closed form where
one exists) and, where the authors or verl define it, against a verbatim excerpt of that code with its
repository, commit and path named. Also the entropy bonus on both statistics paths, and the table's
plumbing (names, hyperparameters, which rows a method needs).

Everything runs in float64 on tiny shapes (about 3 s on 2 CPU cores).
"""
import math
from collections import defaultdict
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import casp
from casp import (METHODS, LossConfig, advantages, candidate_stats, candidate_stats_from_hidden, entropy_advantages,
                  group_advantages, method_loss, nsr_advantages, passk_advantages, policy_loss, psr_advantages,
                  w_reinforce_advantages)

F64 = torch.float64


def rewards_batch(seed=0, P=40, G=8):
    """0/1 rewards of P groups of G, every number of correct answers 0..G present."""
    g = torch.Generator().manual_seed(seed)
    r = (torch.rand(P, G, generator=g) < torch.rand(P, 1, generator=g)).to(F64)
    r[:G + 1] = (torch.arange(G)[None, :] < torch.arange(G + 1)[:, None]).to(F64)  # c = 0..G
    return r.reshape(-1)


def token_batch(seed=0, B=6, T=9, V=11):
    """logits (B, T, V), sampled tokens, old log-probs with ratios around 1 (some clipped), per-row
    advantages of both signs and 0, a mask with short rows and garbage in the padding."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(B, T, V, dtype=F64, generator=g) * torch.empty(B, T, 1, dtype=F64).uniform_(0.3, 3, generator=g)
    tokens = torch.multinomial(logits.softmax(-1).reshape(-1, V), 1, generator=g).reshape(B, T)
    logp_y = logits.log_softmax(-1).gather(-1, tokens[..., None]).squeeze(-1)
    rho = torch.empty(B, T, dtype=F64).uniform_(0.7, 1.3, generator=g)
    old = logp_y - rho.log()
    adv = torch.tensor([1.3, -0.8, 0.0, 2.1, -1.7, 0.6], dtype=F64)[:B]
    mask = torch.arange(T)[None, :] < torch.tensor([9, 7, 9, 5, 8, 3])[:B, None]
    return logits, tokens.masked_fill(~mask, -100), old.masked_fill(~mask, float("nan")), adv, mask


def grad_of(loss_fn, logits):
    z = logits.clone().requires_grad_(True)
    loss, metrics = loss_fn(z)
    loss.backward()
    return loss.detach(), z.grad, metrics


# ----------------------------------------------------------------------------------------------------
# PSR, NSR, W-REINFORCE (Zhu et al. 2025): advantages


# Verbatim from CLR-Lab/SimKO @ 306f4ff4e84ace53e92501939692fcfeb32596b5, verl/trainer/ppo/core_algos.py
# (the function the authors' trainer calls for adv_estimator=psr_nsr; its docstring left out).
def compute_psr_nsr_outcome_advantage(token_level_rewards: torch.Tensor, token_level_scores: torch.Tensor, eos_mask: torch.Tensor,
                                  gamma: torch.Tensor, advantage: str, positive_advantage_weight: float):
    with torch.no_grad():
        returns = torch.zeros_like(token_level_rewards)
        running_return = 0
        correct_idx = token_level_scores.sum(-1) == 1 
        incorrect_idx = (token_level_scores.sum(-1) == 0) | (token_level_scores.sum(-1) == -1)

        for t in reversed(range(token_level_rewards.shape[1])):
            running_return = token_level_rewards[:, t] + gamma * running_return
            returns[:, t] = running_return
            # Reset after EOS
            running_return = running_return * eos_mask[:, t]

        if advantage == 'positive':
            advantages = returns.clone()
        elif advantage == 'negative':
            advantages = returns.clone() - 1
        elif advantage == 'weighted':
            advantages = returns.clone()
            advantages[correct_idx] *= positive_advantage_weight
            advantages[incorrect_idx] -= 1
        else:
            raise NotImplementedError
        advantages = advantages * eos_mask

    return advantages, returns
# (end of the verbatim excerpt)


def test_psr_nsr_w_reinforce_advantages_are_the_papers_and_the_authors_code():
    """PSR A = r, NSR A = r - 1, W-REINFORCE A = lambda on correct and -1 on wrong (lambda = 0.1 by
    default), exactly; and equal to the authors' code, which puts the reward on the last response token
    (gamma = 1) and broadcasts the return to every token of the response."""
    r = rewards_batch()
    assert torch.equal(psr_advantages(r), r)
    assert torch.equal(nsr_advantages(r), r - 1)
    lam = 0.1
    want_w = torch.tensor([lam if x == 1 else -1.0 for x in r.tolist()], dtype=F64)
    assert torch.equal(w_reinforce_advantages(r, lam), want_w)
    assert w_reinforce_advantages(r, 0.37).tolist() == [0.37 if x == 1 else -1.0 for x in r.tolist()]
    # the authors' code on (R, L) token rewards: the score at the last response token, masks of varied length
    R, L = r.shape[0], 7
    lengths = torch.randint(1, L + 1, (R,), generator=torch.Generator().manual_seed(1))
    eos_mask = (torch.arange(L)[None, :] < lengths[:, None]).to(F64)
    scores = torch.zeros(R, L, dtype=F64)
    scores[torch.arange(R), lengths - 1] = r
    for mode, ours in (("positive", psr_advantages(r)), ("negative", nsr_advantages(r)),
                       ("weighted", w_reinforce_advantages(r, lam))):
        theirs, _ = compute_psr_nsr_outcome_advantage(scores, scores, eos_mask, 1.0, mode, lam)
        assert torch.equal(theirs, ours[:, None] * eos_mask), mode
    cfg = LossConfig(loss="w-reinforce", lambda_pos=0.25)
    assert torch.equal(advantages(r, 8, cfg), w_reinforce_advantages(r, 0.25))


# ----------------------------------------------------------------------------------------------------
# Pass@k Training (Chen et al. 2025): the analytic group advantage


def comb(n, k):
    """scipy.special.comb(n, k) (exact=False) for the integers the excerpt passes: 0 when k > n, n < 0
    or k < 0, as scipy returns (the excerpt imports it from scipy.special; this test does not need scipy)."""
    return float(math.comb(n, k)) if 0 <= k <= n else 0.0


# Verbatim from RUCAIBox/Passk_Training @ c3ba575ecb31f47fd9f5c43b18c081d4a295f783, code/passk_adv.py
def calc_adv(val, k):
    c = len(np.where(val==1)[0])
    n = len(val)
    rho = 1 - comb(n-c, k) / comb(n, k)
    sigma = np.sqrt(rho * (1 - rho))
    adv_p = (1 - rho) / (sigma + 1e-6)
    adv_n = (1 - rho - comb(n-c-1, k-1)/comb(n-1,k-1)) / (sigma + 1e-6)
    new_val = np.where(val==1, adv_p, val)
    new_val = np.where(new_val==0, adv_n, new_val)
    return new_val
# (end of the verbatim excerpt)


def passk_reward_by_enumeration(row, k):
    """The quantity the formula's R_group stands for: the mean, over every k-subset of the group, of the
    subset's pass@k reward max(r)."""
    from itertools import combinations
    subsets = list(combinations(range(len(row)), k))
    return sum(max(row[i] for i in s) for s in subsets) / len(subsets)


@pytest.mark.parametrize("k", [1, 2, 4, 8])
def test_passk_advantages_are_the_papers_formula_and_the_reference_code(k):
    """For every number c of correct answers in a group of 8: A_pos = (1 - R)/(sigma + 1e-6) and
    A_neg = (1 - R - C(n-c-1, k-1)/C(n-1, k-1))/(sigma + 1e-6) with R = 1 - C(n-c, k)/C(n, k) the mean
    pass@k reward over all k-subsets (checked by enumeration), sigma = sqrt(R (1 - R)); equal to the
    reference code's calc_adv; all-equal groups exactly 0."""
    G = 8
    r = rewards_batch(P=30, G=G)
    got = passk_advantages(r, G, k).reshape(-1, G)
    for row, a in zip(r.reshape(-1, G).tolist(), got):
        c, n = int(sum(row)), G
        R = 1 - math.comb(n - c, k) / math.comb(n, k)
        assert abs(R - passk_reward_by_enumeration(row, k)) < 1e-12
        sigma = math.sqrt(R * (1 - R))
        if c in (0, n):
            assert (a == 0).all()
            continue
        a_pos = (1 - R) / (sigma + 1e-6)
        a_neg = (1 - R - (math.comb(n - c - 1, k - 1) if n - c - 1 >= k - 1 else 0) / math.comb(n - 1, k - 1)) \
            / (sigma + 1e-6)
        want = torch.tensor([a_pos if v == 1 else a_neg for v in row], dtype=F64)
        assert torch.allclose(a, want, rtol=1e-13, atol=1e-13)
        ref = calc_adv(np.array(row), k)
        assert np.allclose(a.numpy(), ref, rtol=1e-13, atol=1e-13)
    assert torch.equal(advantages(r, G, LossConfig(loss="passk", passk_k=k)), passk_advantages(r, G, k))


def test_passk_with_k_1_is_grpo_with_the_population_std():
    """k = 1: R = c/n, so A = (r - mean) / (population std + 1e-6), i.e. GRPO without Bessel's correction."""
    G = 8
    r = rewards_batch(P=20, G=G)
    got = passk_advantages(r, G, 1).reshape(-1, G)
    rr = r.reshape(-1, G)
    want = (rr - rr.mean(1, keepdim=True)) / (rr.std(1, unbiased=False, keepdim=True) + 1e-6)
    assert torch.allclose(got, want.masked_fill(rr.std(1, keepdim=True) == 0, 0.0), rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError):
        passk_advantages(r, G, G + 1)


# ----------------------------------------------------------------------------------------------------
# Entropy-Adv (Cheng et al. 2025)


def test_entropy_advantage_formula_sign_and_detached_gradient():
    """A_t + min(alpha H_t, |A_t| / kappa): equal to the formula token by token, never flips A's sign,
    keeps A = 0 at 0; the entropy term is detached, so the logit gradient is GRPO's closed form
    -A'_t rho_t (e_y - p) / n with the shaped A'_t held constant (no path through H)."""
    logits, tokens, old, adv, mask = token_batch()
    p = logits.softmax(-1)
    H = -(p * logits.log_softmax(-1)).sum(-1)                                  # (B, T)
    A = adv[:, None].expand_as(H)
    shaped = entropy_advantages(A, H, 0.4, 2.0)
    for b in range(A.shape[0]):
        for t in range(A.shape[1]):
            a, h = A[b, t].item(), H[b, t].item()
            assert shaped[b, t].item() == a + min(0.4 * h, abs(a) / 2.0)
            assert (shaped[b, t] > 0) == (a > 0) and (shaped[b, t] < 0) == (a < 0)
    assert (shaped[A.abs() > 0.9] != A[A.abs() > 0.9]).any() and (shaped[(A > 0) & (0.4 * H > A / 2)] == 1.5 * A[(A > 0) & (0.4 * H > A / 2)]).all()
    # the loss: PPO-clip with the shaped advantage, H detached; clip eps 10 so that no token is clipped
    cfg = dict(loss="entropy-adv", clip_eps=0.9, clip_eps_high=10.0)
    loss, g, _ = grad_of(lambda z: method_loss(z, tokens, old, adv, mask, **cfg), logits)
    n = int(mask.sum())
    want = torch.zeros_like(logits)
    logp = logits.log_softmax(-1)
    for b, t in mask.nonzero().tolist():
        y = tokens[b, t].item()
        rho = math.exp(logp[b, t, y].item() - old[b, t].item())
        a = adv[b].item() + min(0.4 * H[b, t].item(), abs(adv[b].item()) / 2)
        e = torch.zeros(logits.shape[-1], dtype=F64)
        e[y] = 1
        want[b, t] = -a * rho * (e - p[b, t]) / n
    assert (g - want).abs().max() < 1e-13 and want.abs().max() > 1e-3


# ----------------------------------------------------------------------------------------------------
# KL-Cov and Clip-Cov (Cui et al. 2025)


def masked_mean(values, mask):
    """verl.utils.torch_functional.masked_mean (axis=None), which the excerpts below call."""
    return (values * mask).sum() / mask.sum()


def agg_loss(loss_mat, loss_mask, loss_agg_mode, **_):
    """verl's agg_loss for loss_agg_mode="token-mean" without global batch info: masked_mean."""
    assert loss_agg_mode == "token-mean"
    return masked_mean(loss_mat, loss_mask)


verl_F = SimpleNamespace(masked_mean=masked_mean)


# Verbatim from volcengine/verl @ b178a3cd56f58b2d502255daba591e92833930a7, verl/trainer/ppo/core_algos.py,
# compute_policy_loss_kl_cov's body (signature shortened to its arguments, config read from a stub).
def verl_kl_cov(old_log_prob, log_prob, advantages, response_mask, kl_cov_ratio, ppo_kl_coef,
                loss_agg_mode="token-mean", rollout_is_weights=None):
    negative_approx_kl = log_prob - old_log_prob
    abs_kl = negative_approx_kl.abs()
    ratio = torch.exp(negative_approx_kl)
    ppo_kl_abs = verl_F.masked_mean(negative_approx_kl.abs(), response_mask)
    pg_losses1 = -advantages * ratio
    pg_losses_kl = -advantages * ratio + ppo_kl_coef * abs_kl
    pg_losses = pg_losses1

    all_valid = response_mask > 0
    all_valid_idx = torch.nonzero(all_valid.reshape(-1), as_tuple=True)[0]
    all_valid_adv = advantages[all_valid].detach().reshape(-1).cpu()
    all_valid_logp = log_prob[all_valid].detach().reshape(-1).cpu()

    k = min(kl_cov_ratio, len(all_valid_adv))

    if k != 0:
        cov_lst_all = (all_valid_adv - all_valid_adv.mean()) * (all_valid_logp - all_valid_logp.mean())
        k_percent_nums = max(1, int(len(cov_lst_all) * kl_cov_ratio))
        large_cov_idxs = torch.topk(cov_lst_all, k_percent_nums, largest=True).indices

        if len(large_cov_idxs) != 0:
            large_cov_idxs = all_valid_idx[large_cov_idxs]
            pg_losses[large_cov_idxs // advantages.shape[1], large_cov_idxs % advantages.shape[1]] = pg_losses_kl[
                large_cov_idxs // advantages.shape[1], large_cov_idxs % advantages.shape[1]
            ]

    # Apply rollout correction weights if provided
    if rollout_is_weights is not None:
        pg_losses = pg_losses * rollout_is_weights

    pg_loss = agg_loss(loss_mat=pg_losses, loss_mask=response_mask, loss_agg_mode=loss_agg_mode)
    return pg_loss


# Verbatim from the same file, compute_policy_loss_clip_cov's body (config values as arguments).
def verl_clip_cov(old_log_prob, log_prob, advantages, response_mask, clip_cov_ratio, clip_cov_lb, clip_cov_ub,
                  cliprange, cliprange_low=None, cliprange_high=None, loss_agg_mode="token-mean",
                  rollout_is_weights=None):
    negative_approx_kl = log_prob - old_log_prob
    ratio = torch.exp(negative_approx_kl)
    ppo_kl = verl_F.masked_mean(-negative_approx_kl, response_mask)

    pg_losses1 = -advantages * ratio

    if cliprange_low is None:
        cliprange_low = cliprange
    if cliprange_high is None:
        cliprange_high = cliprange

    corr = torch.ones_like(advantages)
    pg_losses2 = -advantages * torch.clamp(ratio, 1 - cliprange_low, 1 + cliprange_high)
    clip_by_origin = (pg_losses2 > pg_losses1) & (response_mask > 0)

    cov_all = (advantages - verl_F.masked_mean(advantages, response_mask)) * (
        log_prob - verl_F.masked_mean(log_prob.detach(), response_mask)
    )
    cov_all[response_mask == 0] = -torch.inf
    cov_all[clip_by_origin] = -torch.inf

    clip_num = max(int(clip_cov_ratio * response_mask.sum().item()), 1)
    top_k_idx = (cov_all < clip_cov_ub) & (cov_all > clip_cov_lb) & (response_mask > 0)
    top_k_idx = torch.nonzero(top_k_idx)

    if len(top_k_idx) > 0:
        perm = torch.randperm(len(top_k_idx))
        top_k_idx = top_k_idx[perm[: min(clip_num, len(top_k_idx))]]
    else:
        top_k_idx = torch.empty((0, 2), device=cov_all.device, dtype=torch.long)

    corr[top_k_idx[:, 0], top_k_idx[:, 1]] = 0

    pg_clipfrac = verl_F.masked_mean((corr == 0).float(), response_mask)

    pg_losses = torch.maximum(pg_losses1, pg_losses2) * corr

    # Apply rollout correction weights if provided
    if rollout_is_weights is not None:
        pg_losses = pg_losses * rollout_is_weights

    pg_loss = agg_loss(loss_mat=pg_losses, loss_mask=response_mask, loss_agg_mode=loss_agg_mode)
    return pg_loss
# (end of the verbatim excerpts)


def cov_batch(seed=0, B=8, T=12, V=9):
    """A batch where covariances fall inside Clip-Cov's (1, 5) window: large advantages, spread logits."""
    logits, tokens, old, adv, mask = token_batch(seed, B=6, T=T, V=V)
    return logits, tokens, old, adv * 3.0, mask


def verl_side(fn, logits, tokens, old, adv, mask, **kw):
    """verl's loss and gradient on the padded (B, T) tensors (padding: token 0, old log-prob 0, A 0 at
    masked positions, as verl's tensors hold)."""
    z = logits.clone().requires_grad_(True)
    safe_tokens = tokens.clamp(min=0)
    log_prob = z.log_softmax(-1).gather(-1, safe_tokens[..., None]).squeeze(-1)
    A = adv[:, None].expand(mask.shape) * mask
    loss = fn(torch.nan_to_num(old) * mask, log_prob, A, mask.to(F64), **kw)
    loss.backward()
    return loss.detach(), z.grad


@pytest.mark.parametrize("k", [0.002, 0.05, 0.3])
def test_kl_cov_equals_verl_and_the_formula(k):
    """KL-Cov: the same loss and logit gradient as verl's compute_policy_loss_kl_cov (float64) for
    several shares k; and the formula written here: -A rho everywhere, plus beta |log rho| at the
    max(1, int(k M)) tokens with the largest centred covariance."""
    logits, tokens, old, adv, mask = cov_batch()
    ours_l, ours_g, m = grad_of(lambda z: method_loss(z, tokens, old, adv, mask, loss="kl-cov", kl_cov_k=k,
                                                    kl_cov_beta=0.7), logits)
    ref_l, ref_g = verl_side(verl_kl_cov, logits, tokens, old, adv, mask, kl_cov_ratio=k, ppo_kl_coef=0.7)
    assert abs(ours_l.item() - ref_l.item()) < 1e-14 and (ours_g - ref_g).abs().max() < 1e-14
    # the formula
    valid = mask
    logp = logits.log_softmax(-1).gather(-1, tokens.clamp(min=0)[..., None]).squeeze(-1)[valid]
    A = adv[:, None].expand(mask.shape)[valid]
    cov = (A - A.mean()) * (logp - logp.mean())
    n_pen = max(1, int(k * len(cov)))
    chosen = set(cov.argsort(descending=True)[:n_pen].tolist())
    log_rho = logp - old[valid]
    want = sum(-A[i] * log_rho[i].exp() + (0.7 * log_rho[i].abs() if i in chosen else 0) for i in range(len(A))) / len(A)
    assert abs(ours_l.item() - want.item()) < 1e-13
    assert m["cov_selected_frac"] == pytest.approx(n_pen / len(A)) and m["clip_frac"] == 0


@pytest.mark.parametrize("r,seed", [(2e-4, 0), (0.1, 1), (0.5, 2)])
def test_clip_cov_equals_verl_and_the_formula(r, seed):
    """Clip-Cov: with torch's global generator in the same state, the same loss and logit gradient as
    verl's compute_policy_loss_clip_cov (its random draw included); and the formula: PPO-clip loss with
    max(1, int(r M)) tokens (or all, if fewer) among the unclipped ones with 1 < Cov < 5 contributing
    nothing (zero value, zero gradient)."""
    logits, tokens, old, adv, mask = cov_batch(seed)
    torch.manual_seed(123)
    ours_l, ours_g, m = grad_of(lambda z: method_loss(z, tokens, old, adv, mask, loss="clip-cov", clip_cov_r=r),
                                logits)
    torch.manual_seed(123)
    ref_l, ref_g = verl_side(verl_clip_cov, logits, tokens, old, adv, mask, clip_cov_ratio=r, clip_cov_lb=1.0,
                             clip_cov_ub=5.0, cliprange=0.2)
    assert abs(ours_l.item() - ref_l.item()) < 1e-14 and (ours_g - ref_g).abs().max() < 1e-14
    # the formula: which tokens may be dropped, how many are
    valid = mask
    logp = logits.log_softmax(-1).gather(-1, tokens.clamp(min=0)[..., None]).squeeze(-1)[valid]
    A = adv[:, None].expand(mask.shape)[valid]
    rho = (logp - old[valid]).exp()
    surr, surr_c = -A * rho, -A * rho.clamp(0.8, 1.2)
    cov = (A - A.mean()) * (logp - logp.mean())
    pool = ((cov > 1) & (cov < 5) & ~(surr_c > surr)).sum().item()
    assert pool >= 2, "the test needs covariances inside the window"
    n_drop = min(max(1, int(r * len(A))), pool)
    assert m["cov_selected_frac"] == pytest.approx(n_drop / len(A))
    # the dropped tokens: in the pool, with zero gradient (A = 0 tokens have a zero gradient anyway and
    # a zero loss, so counting them among the dropped changes no sum)
    in_pool = (cov > 1) & (cov < 5) & ~(surr_c > surr)
    dropped = in_pool & (ours_g[valid].abs().sum(-1) == 0)
    assert (dropped & (A != 0)).sum() <= n_drop <= dropped.sum()
    full = torch.maximum(surr, surr_c)
    assert abs(ours_l.item() - (full.sum() - full[dropped].sum()).item() / len(A)) < 1e-13


def test_covariance_methods_on_an_empty_call_and_chunked_path():
    """An all-masked micro-batch (an FSDP idle pass) gives loss 0 for both; the chunked path from hidden
    states gives the same loss and gradients as the logits path."""
    logits, tokens, old, adv, mask = cov_batch()
    for loss in ("kl-cov", "clip-cov"):
        l, _ = method_loss(logits, tokens, old, adv, torch.zeros_like(mask), loss=loss)
        assert l.item() == 0.0
    g = torch.Generator().manual_seed(5)
    hidden = torch.randn(*mask.shape, 4, dtype=F64, generator=g)
    W = torch.randn(logits.shape[-1], 4, dtype=F64, generator=g)
    for loss in ("kl-cov", "clip-cov", "entropy-adv", "passk"):
        cfg = LossConfig(loss=loss, kl_cov_k=0.1, clip_cov_r=0.2)
        outs = []
        for path in ("plain", "chunked"):
            h, w = hidden.clone().requires_grad_(True), W.clone().requires_grad_(True)
            torch.manual_seed(0)
            stats = (candidate_stats(h @ w.T, tokens, mask) if path == "plain"
                     else candidate_stats_from_hidden(h, w, tokens, mask, chunk_size=7))
            lv, _ = policy_loss(stats, old, adv, mask, cfg)
            lv.backward()
            outs.append((lv.item(), h.grad, w.grad))
        assert abs(outs[0][0] - outs[1][0]) < 1e-13
        assert (outs[0][1] - outs[1][1]).abs().max() < 1e-12 and (outs[0][2] - outs[1][2]).abs().max() < 1e-12


# ----------------------------------------------------------------------------------------------------
# The entropy bonus (verl's entropy_coeff), with any method


@pytest.mark.parametrize("loss", ["grpo", "casp", "psr"])
def test_entropy_bonus_gradient_is_the_closed_form_on_both_paths(loss):
    """L_c = L_0 - c * token-mean(H): its logit gradient is L_0's plus c * p (log p + H) / n at every valid
    token (dH/dz = -p (log p + H)), through candidate_stats and through the chunked path (hidden and
    weight gradients equal to the plain path's); with c = 0 the chunked backward is untouched (the
    entropy is not differentiated at all)."""
    logits, tokens, old, adv, mask = token_batch(3)
    c = 0.05
    _, g0, _ = grad_of(lambda z: method_loss(z, tokens, old, adv, mask, loss=loss), logits)
    lc, gc, _ = grad_of(lambda z: method_loss(z, tokens, old, adv, mask, loss=loss, entropy_coeff=c), logits)
    p, logp = logits.softmax(-1), logits.log_softmax(-1)
    H = -(p * logp).sum(-1, keepdim=True)
    n = int(mask.sum())
    want = g0 + (c * p * (logp + H) / n) * mask[..., None]
    assert (gc - want).abs().max() < 1e-14 and (want - g0).abs().max() > 1e-4
    # chunked path
    g = torch.Generator().manual_seed(9)
    hidden = torch.randn(*mask.shape, 5, dtype=F64, generator=g)
    W = torch.randn(logits.shape[-1], 5, dtype=F64, generator=g)
    for coeff in (0.0, c):
        cfg = LossConfig(loss=loss, entropy_coeff=coeff, temperature=0.7)
        res = []
        for path in ("plain", "chunked"):
            h, w = hidden.clone().requires_grad_(True), W.clone().requires_grad_(True)
            stats = (candidate_stats(h @ w.T, tokens, mask, temperature=0.7, entropy_grad=coeff > 0) if path == "plain"
                     else candidate_stats_from_hidden(h, w, tokens, mask, temperature=0.7, chunk_size=4,
                                                      entropy_grad=coeff > 0))
            assert stats.entropy.requires_grad == (coeff > 0)
            lv, _ = policy_loss(stats, old, adv, mask, cfg)
            lv.backward()
            res.append((lv.item(), h.grad, w.grad))
        assert abs(res[0][0] - res[1][0]) < 1e-13
        assert (res[0][1] - res[1][1]).abs().max() < 1e-12 and (res[0][2] - res[1][2]).abs().max() < 1e-12


def test_entropy_bonus_refuses_a_detached_entropy_and_survives_masked_vocabulary():
    """policy_loss with entropy_coeff > 0 on statistics whose entropy is detached is an error, not a
    silently missing bonus; a -inf logit (a masked vocabulary entry) gives a finite entropy gradient."""
    logits, tokens, old, adv, mask = token_batch(4)
    z = logits.clone().requires_grad_(True)
    stats = candidate_stats(z, tokens, mask)
    with pytest.raises(ValueError, match="entropy_grad"):
        policy_loss(stats, old, adv, mask, LossConfig(loss="grpo", entropy_coeff=0.01))
    masked = logits.clone()
    masked[..., -1] = float("-inf")
    tokens = tokens.masked_fill(tokens == logits.shape[-1] - 1, 0)
    _, g, _ = grad_of(lambda z: method_loss(z, tokens, old, adv, mask, loss="grpo", entropy_coeff=0.1), masked)
    assert torch.isfinite(g).all()


# ----------------------------------------------------------------------------------------------------
# The table


def test_method_table_and_config():
    """Every --loss name is a row of METHODS with callable parts; LossConfig names the paper defaults and
    refuses impossible values; a one-call loss refuses another method's hyperparameter; the rows a
    method needs (A = 0 responses) and whether stacked seeds may be rescaled follow from the table."""
    assert list(METHODS) == ["grpo", "casp", "psr", "nsr", "w-reinforce", "passk", "entropy-adv", "kl-cov", "clip-cov"]
    cfg = LossConfig()
    assert (cfg.lambda_pos, cfg.passk_k, cfg.kl_cov_k, cfg.kl_cov_beta, cfg.clip_cov_r, cfg.clip_cov_low,
            cfg.clip_cov_high, cfg.entropy_adv_alpha, cfg.entropy_adv_kappa, cfg.entropy_coeff) == \
        (0.1, 4, 0.002, 1.0, 2e-4, 1.0, 5.0, 0.4, 2.0, 0.0)
    for bad in (dict(loss="dapo"), dict(kl_cov_k=0), dict(clip_cov_low=5.0, clip_cov_high=1.0), dict(passk_k=0),
                dict(entropy_coeff=-1.0), dict(entropy_adv_kappa=0)):
        with pytest.raises(ValueError):
            LossConfig(**bad)
    logits, tokens, old, adv, mask = token_batch()
    with pytest.raises(TypeError):
        method_loss(logits, tokens, old, adv, mask, loss="kl-cov", alpha=0.1)
    with pytest.raises(TypeError):
        method_loss(logits, tokens, old, adv, mask, loss="grpo", kl_cov_k=0.1)
    matter = {n: casp.zero_advantage_rows_matter(LossConfig(loss=n)) for n in METHODS}
    assert matter == {n: n in ("kl-cov", "clip-cov") for n in METHODS}
    assert casp.zero_advantage_rows_matter(LossConfig(loss="grpo", entropy_coeff=0.001))
    assert {n for n in METHODS if casp.rescalable(LossConfig(loss=n))} == {"grpo", "casp", "psr", "nsr",
                                                                           "w-reinforce", "passk"}
    r = rewards_batch()
    assert torch.equal(advantages(r, 8, LossConfig(loss="kl-cov")), group_advantages(r, 8))
    assert torch.equal(advantages(r, 8, LossConfig(loss="grpo", normalize_std=False)),
                       group_advantages(r, 8, normalize_std=False))


@pytest.mark.parametrize("loss", list(METHODS))
def test_every_method_runs_and_a_zero_advantage_row_is_inert_unless_coupled(loss):
    """Each method gives a finite loss and gradient; adding a row with A = 0 changes nothing for the
    uncoupled methods (their rows may be skipped) when the denominator is fixed."""
    logits, tokens, old, adv, mask = token_batch(6)
    keep = adv != 0
    denom = float(mask.sum())
    torch.manual_seed(0)
    l_all, g_all, _ = grad_of(lambda z: method_loss(z, tokens, old, adv, mask, loss=loss, loss_denom=denom), logits)
    assert torch.isfinite(g_all).all() and torch.isfinite(l_all)
    if casp.zero_advantage_rows_matter(LossConfig(loss=loss)):
        return
    torch.manual_seed(0)
    l_some, g_some, _ = grad_of(lambda z: method_loss(z, tokens[keep], old[keep], adv[keep], mask[keep], loss=loss,
                                                      loss_denom=denom), logits[keep])
    assert abs(l_all.item() - l_some.item()) < 1e-14 and (g_all[keep] - g_some).abs().max() < 1e-15
    assert g_all[~keep].abs().max() == 0
