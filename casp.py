"""The GRPO and CaSP policy losses (arXiv 2510.14807, "Beyond the Sampled Token: Preserving Candidate
Support in RLVR"; v1-v2 titled "SimKO"), written so that each term can be matched against the paper.

One training step, as this file sees it: the sampler produced G responses per prompt, a verifier
gave each a reward r_i; `group_advantages` turns rewards into A_i; the model scores the responses
again (logits, or hidden states + output weight for the memory-efficient path); `casp_loss` (or the
`grpo_loss` reference beside it) returns one scalar to call .backward() on.

GRPO (the baseline, `grpo_loss`)
    A_i   = (r_i - mean_j r_j) / (std_j r_j + 1e-6)            std with Bessel's correction
    rho_t = pi_theta(y_t | s_t) / pi_old(y_t | s_t)
    l_t   = max( -A_i * rho_t , -A_i * clip(rho_t, 1 - eps, 1 + eps_high) )     eps_high = eps unless DAPO
    L     = sum_{valid t} l_t / n_valid                          "token-mean" over the mini-batch

CaSP (`casp_loss`), per valid token t of response i, with p = pi_theta(. | s_t),
c_1..c_N = top-N ids of the current (detached) p, H_t = entropy of p (detached):
    w_t       = 1[ H_t > quantile_tau( {H_s : s valid token of response i} ) ]    (1 everywhere if gate off)
    A_i > 0:  rho~_t = (1 - a w_t) rho_t + (a w_t / N) sum_k sg(rho_t / rho_t,k) rho_t,k
              rho_t,k = pi_theta(c_k | s_t) / pi_old(c_k | s_t),  sg = stop-gradient
              forward value rho~_t == rho_t, gradient rho_t [(1 - a w) dlog p(y) + (a w / N) sum_k dlog p(c_k)]
              in logits: dl_t/dz = -A rho_t (q - p),  q = (1 - a w) e_y + (a w / N) sum_k e_{c_k}
    A_i < 0:  A_i -> lambda * A_i where y_t == argmax p and w_t = 1;  dl_t/dz = -lambda A rho_t (e_y - p)
    l_t and L as in GRPO with rho~_t in place of rho_t. A clipped token (the clipped branch strictly
    larger) has zero gradient, top-N part included.

Paper symbol -> name here
    r_i, A_i              rewards, adv (advantages: one per response, (B,))
    y_t, s_t              tokens[b, t], the prefix that logits[b, t] scores
    pi_theta(y_t|s_t)     logp_y = log p(y_t), from logits in float32 (float64 if given float64)
    pi_old(y_t|s_t)       old_logprobs (from the policy that sampled)
    rho_t, rho~_t         rho, rho_mix
    c_1..c_N, N           topn_ids, top_n (clamped to the vocabulary size V)
    log pi_theta(c_k|s_t) logp_topn
    H_t, tau, w_t         entropy, entropy_quantile, w_gate
    a, lambda             alpha, neg_scale
    eps, eps_high         clip_eps, clip_eps_high (DAPO's clip-higher)
    n_valid               loss_denom (see "The one denominator" below)

The one denominator
    L = (1 / loss_denom) * sum_{b,t} mask[b,t] * l[b,t],   loss_denom = sum_{b,t} mask[b,t] over the
    whole optimizer mini-batch. Default: the mask of this call (clamped to >= 1). With gradient
    accumulation pass the mini-batch total, then sum_micro L_micro == L_minibatch exactly (loss and
    gradient): the only cross-row coupling in CaSP, the entropy gate, is per row, so splitting by rows
    changes nothing else.

Where this departs from the paper or from the authors' released code (CLR-Lab/SimKO, a verl fork)
    1. "Positive"/"negative" is the sign of the advantage; the released code uses reward == 1 / 0.
       Identical for 0/1 rewards: a group whose rewards are all equal has A = 0 and no gradient
       either way.
    2. sg(rho/rho_k) * rho_k is computed as sg(rho) * exp(logp_k - sg(logp_k)): pi_old(c_k) cancels, so
       old top-N logprobs are never needed, and there is no +1e-8 in a denominator (the released
       code's epsilon makes the forward value differ from rho by ~1e-8 relative).
    3. The gate of a response with no valid token: the released code falls back to the quantile of the
       whole padded row; here such a row has no tokens, so its (NaN) threshold is never used.
    4. Aggregation: exact token-mean over the mini-batch via loss_denom. The released verl code takes
       a token-mean per micro-batch and averages micro-batches, which weights tokens of short
       micro-batches more.
    5. `entropy_quantile=None` switches the gate off (w = 1): the v3 abstract does not mention it.
    6. The logged approx_kl is the k3 estimator of KL(pi_old || pi_theta) (verl logs k1).
    7. Optional `kl_coef` (default 0, as in the paper): + kl_coef * k3(pi_theta || pi_ref) per token,
       the DeepSeekMath GRPO penalty. No entropy bonus is offered (the paper uses none, and the
       chunked path would need the entropy's gradient too).
    8. Entropy, argmax and top-N come from the same temperature-scaled logits as the ratio (the
       logits the sampler used), as in verl.

Memory-efficient path (`casp_loss_from_hidden`, `grpo_loss_from_hidden`): the same losses from the
final hidden states and the output weight, the float32 logits computed only for `chunk_size` valid
tokens at a time (padding costs nothing). See `ChunkedCandidateLogprobs` for its cost. GRPO on this
path is `grpo_loss_from_hidden` (equal to `casp_loss_from_hidden(..., alpha=0, neg_scale=1)`).

Use in a training step, one optimizer mini-batch split by rows into micro-batches:
    n_tok = sum(mb.mask.sum() for mb in micro_batches)     # the one denominator, fixed per mini-batch
    for mb in micro_batches:
        hidden = ...                                       # (b, T, D) final hidden states, aligned so
                                                           # hidden[i, t] predicts mb.tokens[i, t]
        loss, metrics = casp_loss_from_hidden(hidden, lm_head_weight, mb.tokens, mb.old_logprobs,
                                              mb.adv, mb.mask, temperature=T_sample, loss_denom=n_tok)
        loss.backward()                                    # no further division by the micro-batch count
"""
from typing import NamedTuple

import torch

# ----------------------------------------------------------------------------------------------------
# Advantages


def group_advantages(rewards, group_size, normalize_std=True, eps=1e-6):
    """GRPO advantages: rewards (P*G,) ordered prompt by prompt -> (P*G,) A_i = (r_i - mean) / (std + eps).

    std uses Bessel's correction (torch.std). normalize_std=False gives Dr. GRPO's A_i = r_i - mean.
    A group whose rewards are all equal gets exactly 0 (also for group_size 1, where std is NaN).
    """
    r = rewards.reshape(-1, group_size)  # (P, G)
    if not r.is_floating_point():
        r = r.float()
    adv = r - r.mean(dim=1, keepdim=True)  # (P, G)
    if normalize_std and group_size > 1:  # G = 1: std is undefined, and the group is all-equal anyway
        adv = adv / (r.std(dim=1, keepdim=True) + eps)  # (P, G)
    # Zero all-equal groups explicitly: mean of e.g. eight 0.3s need not round back to 0.3 exactly.
    all_equal = (r == r[:, :1]).all(dim=1, keepdim=True)  # (P, 1)
    return adv.masked_fill(all_equal, 0.0).reshape(-1)  # (P*G,)


# ----------------------------------------------------------------------------------------------------
# Per-token candidate statistics (everything the losses need from the V-sized distribution)


class CandidateStats(NamedTuple):
    """Per valid token (M = number of valid tokens, in row-major order of the mask)."""
    logp_y: torch.Tensor     # (M,)   log p(y_t), differentiable
    logp_topn: torch.Tensor  # (M, N) log p(c_k), differentiable
    entropy: torch.Tensor    # (M,)   H_t, detached
    topn_ids: torch.Tensor   # (M, N) c_1..c_N, ids of the N largest p (rank 1 first)
    is_argmax: torch.Tensor  # (M,)   bool, y_t == c_1


def float_dtype(dtype):
    """The dtype log-softmax runs in: float64 if given float64, else float32 (bf16 is too coarse)."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def stats_from_logp(logp, y, top_n):
    """logp (M, V) log-probabilities, y (M,) sampled ids -> CandidateStats. top_n is clamped to V."""
    if top_n < 1:
        raise ValueError(f"top_n must be >= 1, got {top_n}")
    n = min(top_n, logp.shape[-1])
    with torch.no_grad():
        topn_ids = logp.topk(n, dim=-1).indices  # (M, N)
        # entr(0) = 0, so a -inf logit (a masked vocabulary entry) does not turn H into NaN.
        entropy = torch.special.entr(logp.exp()).sum(-1)  # (M,)
    logp_y = logp.gather(-1, y[:, None]).squeeze(-1)  # (M,)
    logp_topn = logp.gather(-1, topn_ids)  # (M, N); y may be among them, then it gets both pushes
    return CandidateStats(logp_y, logp_topn, entropy, topn_ids, y == topn_ids[:, 0])


def candidate_stats(logits, tokens, mask, top_n=3):
    """The reference path: logits (B, T, V) -> CandidateStats of the valid tokens.

    Selecting the valid tokens first means padded positions never enter log-softmax or a gather (their
    token ids may be anything, e.g. -100). The boolean selection is a CPU-GPU sync point
    (data-dependent shape) and copies (M, V); the chunked path avoids the copy.
    """
    valid = mask.bool()  # (B, T)
    z = logits[valid]  # (M, V)
    logp = torch.log_softmax(z.to(float_dtype(logits.dtype)), dim=-1)  # (M, V)
    return stats_from_logp(logp, tokens[valid], top_n)


def entropy_gate(entropy, mask, entropy_quantile=0.8):
    """w_t: 1 where entropy (B, T) is strictly above the entropy_quantile quantile (torch.quantile's
    linear interpolation) of the valid entropies of the same row, else 0. None -> 1 everywhere.

    Returns a bool (B, T) tensor, False at masked positions. The threshold of a row with no valid
    token is NaN and compares False; the gate is never differentiated, so it cannot leak NaN gradients.
    """
    valid = mask.bool()  # (B, T)
    if entropy_quantile is None:
        return valid
    with torch.no_grad():
        h = entropy.masked_fill(~valid, float("nan"))  # (B, T) not in place: the caller's tensor stays
        # nanquantile == torch.quantile over the valid entries of each row, for all rows at once.
        thresh = torch.nanquantile(h, entropy_quantile, dim=1, keepdim=True)  # (B, 1)
        return (entropy > thresh) & valid  # (B, T)


def per_token(x, valid, dtype):
    """A (B, T) tensor or a (B,) per-response tensor -> its values at the valid tokens, (M,)."""
    if x.dim() == 1:
        x = x[:, None].expand(valid.shape)  # (B, T) one advantage per response, broadcast to its tokens
    return x[valid].to(dtype)  # (M,)


def gate_of_valid_tokens(stats, valid, entropy_quantile):
    """w_gate at the valid tokens (M,), from the per-token entropies laid back out per row."""
    h = stats.entropy.new_full(valid.shape, float("nan"))  # (B, T)
    h[valid] = stats.entropy
    return entropy_gate(h, valid, entropy_quantile)[valid]  # (M,) bool


# ----------------------------------------------------------------------------------------------------
# The pieces of the surrogate


def ppo_clip(rho, adv, clip_eps=0.2, clip_eps_high=None):
    """Per-token PPO-clip loss max(-A rho, -A clip(rho, 1-eps, 1+eps_high)) and whether the clipped
    branch is (strictly) the active one, i.e. the token gets no gradient."""
    eps_high = clip_eps if clip_eps_high is None else clip_eps_high
    surr = -adv * rho  # (M,)
    surr_clipped = -adv * rho.clamp(1.0 - clip_eps, 1.0 + eps_high)  # (M,)
    # Inside the clip range the two are equal; torch.maximum then splits the gradient half/half
    # and clamp passes its half through, so the token gets the full -A drho.
    return torch.maximum(surr, surr_clipped), surr_clipped > surr


def candidate_ratio(rho, logp_topn, alpha_w):
    """CaSP's top-N mixture rho~ = (1 - a w) rho + (a w / N) sum_k sg(rho / rho_k) rho_k.

    rho (M,), logp_topn (M, N) log pi_theta(c_k), alpha_w (M,) = a * w (0 where the mixture is off).
    sg(rho / rho_k) * rho_k = sg(rho) * p(c_k) / sg(p(c_k)): pi_old(c_k) cancels, and the forward
    value of each term is exactly sg(rho), so rho~ == rho in value (up to one rounding) and only
    the gradient moves: rho [(1 - a w) dlog p(y) + (a w / N) sum_k dlog p(c_k)].
    """
    n = logp_topn.shape[-1]
    rho_k_terms = rho.detach()[:, None] * torch.exp(logp_topn - logp_topn.detach())  # (M, N)
    return (1.0 - alpha_w) * rho + (alpha_w / n) * rho_k_terms.sum(-1)  # (M,)


def k3_kl(logp_sample, logp_other):
    """Schulman's k3 estimate of KL(pi_sample || pi_other) at tokens drawn from pi_sample:
    r - 1 - log r with r = pi_other / pi_sample. Non-negative, unbiased, low variance."""
    log_r = logp_other - logp_sample
    return torch.exp(log_r) - 1.0 - log_r


def aggregate(l, loss_denom):
    """L = sum_{valid t} l_t / loss_denom (l holds only valid tokens). Default loss_denom: n_valid of
    this call, clamped to 1 so an all-masked batch gives 0, not 0/0."""
    if loss_denom is None:
        loss_denom = max(l.shape[0], 1)
    return l.sum() / loss_denom


def metrics_of(stats, rho, clipped, old_logp, extra):
    """Logged diagnostics, detached 0-dim tensors (no .item(): that would be a CPU-GPU sync per
    micro-batch; the caller converts once per step). Means over valid tokens; n_tokens lets the
    caller weight micro-batches."""
    with torch.no_grad():
        n = max(rho.shape[0], 1)
        topn_probs = stats.logp_topn.detach().exp().sum(0) / n  # (N,) mean p of ranks 1..N
        out = {
            "clip_frac": clipped.to(rho.dtype).sum() / n,
            "entropy": stats.entropy.sum() / n,
            "top1_prob": topn_probs[0],
            "topn_probs": list(topn_probs.unbind(0)),
            "approx_kl": k3_kl(old_logp, stats.logp_y.detach()).sum() / n,
            "n_tokens": float(rho.shape[0]),
        }
        out.update({k: v.detach() if torch.is_tensor(v) else v for k, v in extra.items()})
        return out


def kl_penalty(stats, ref_logprobs, valid, kl_coef):
    """kl_coef * k3(pi_theta || pi_ref) per valid token (M,), or None when off."""
    if not kl_coef:
        return None
    if ref_logprobs is None:
        raise ValueError("kl_coef > 0 needs ref_logprobs")
    ref = per_token(ref_logprobs, valid, stats.logp_y.dtype)  # (M,)
    return kl_coef * k3_kl(stats.logp_y, ref)  # (M,)


# ----------------------------------------------------------------------------------------------------
# GRPO (the reference) and CaSP, from per-token statistics


def grpo_loss_from_stats(stats, old_logprobs, advantages, mask, clip_eps=0.2, clip_eps_high=None,
                         kl_coef=0.0, ref_logprobs=None, loss_denom=None):
    """GRPO's token-level PPO-clip loss from CandidateStats; see grpo_loss."""
    valid = mask.bool()  # (B, T)
    dtype = stats.logp_y.dtype
    old_logp = per_token(old_logprobs, valid, dtype)  # (M,)
    adv = per_token(advantages, valid, dtype)  # (M,)
    rho = torch.exp(stats.logp_y - old_logp)  # (M,)
    l, clipped = ppo_clip(rho, adv, clip_eps, clip_eps_high)  # (M,)
    kl = kl_penalty(stats, ref_logprobs, valid, kl_coef)
    extra = {}
    if kl is not None:
        l = l + kl
        extra["ref_kl"] = kl.detach().sum() / max(l.shape[0], 1) / kl_coef
    return aggregate(l, loss_denom), metrics_of(stats, rho, clipped, old_logp, extra)


def casp_loss_from_stats(stats, old_logprobs, advantages, mask, alpha=0.01, entropy_quantile=0.8,
                         neg_scale=1.1, clip_eps=0.2, clip_eps_high=None, kl_coef=0.0,
                         ref_logprobs=None, loss_denom=None):
    """CaSP's loss from CandidateStats; see casp_loss."""
    valid = mask.bool()  # (B, T)
    dtype = stats.logp_y.dtype
    old_logp = per_token(old_logprobs, valid, dtype)  # (M,)
    adv = per_token(advantages, valid, dtype)  # (M,)
    w_gate = gate_of_valid_tokens(stats, valid, entropy_quantile)  # (M,) bool
    rho = torch.exp(stats.logp_y - old_logp)  # (M,)

    # 1. correct responses: spread a*w of the positive push over the current top-N candidates.
    alpha_w = alpha * (w_gate & (adv > 0)).to(dtype)  # (M,)
    rho_mix = candidate_ratio(rho, stats.logp_topn, alpha_w)  # (M,) == rho in value

    # 2. incorrect responses: push the top-1 candidate down harder at gated tokens.
    neg_scaled = (adv < 0) & stats.is_argmax & w_gate  # (M,)
    adv = torch.where(neg_scaled, neg_scale * adv, adv)  # (M,)

    l, clipped = ppo_clip(rho_mix, adv, clip_eps, clip_eps_high)  # (M,)
    kl = kl_penalty(stats, ref_logprobs, valid, kl_coef)
    n = max(l.shape[0], 1)
    extra = {
        "gate_frac": w_gate.to(dtype).sum() / n,
        "neg_scaled_frac": neg_scaled.to(dtype).sum() / (adv < 0).sum().clamp(min=1),  # of negative tokens
    }
    if kl is not None:
        l = l + kl
        extra["ref_kl"] = kl.detach().sum() / n / kl_coef
    return aggregate(l, loss_denom), metrics_of(stats, rho, clipped, old_logp, extra)


# ----------------------------------------------------------------------------------------------------
# Public losses on logits


def grpo_loss(logits, tokens, old_logprobs, advantages, mask, clip_eps=0.2, clip_eps_high=None,
              kl_coef=0.0, ref_logprobs=None, loss_denom=None, top_n=3):
    """GRPO: token-level PPO-clip surrogate, token-mean over the valid tokens. Returns (loss, metrics).

    logits (B, T, V) aligned so logits[b, t] scores tokens[b, t], at the sampling temperature;
    tokens, old_logprobs, mask (B, T); advantages (B,). clip_eps_high: DAPO's clip-higher.
    kl_coef > 0 adds the k3 penalty against ref_logprobs (B, T). loss_denom: see the module docstring.
    top_n only sets how many candidate probabilities (ranks 1..N) are logged in metrics["topn_probs"].
    """
    stats = candidate_stats(logits, tokens, mask, top_n)
    return grpo_loss_from_stats(stats, old_logprobs, advantages, mask, clip_eps, clip_eps_high,
                                kl_coef, ref_logprobs, loss_denom)


def casp_loss(logits, tokens, old_logprobs, advantages, mask, top_n=3, alpha=0.01, entropy_quantile=0.8,
              neg_scale=1.1, clip_eps=0.2, clip_eps_high=None, kl_coef=0.0, ref_logprobs=None,
              loss_denom=None):
    """CaSP: GRPO with the top-N mixture ratio on positive responses and lambda-scaled advantages at
    gated argmax tokens of negative responses. Same inputs and outputs as grpo_loss.

    alpha = a, neg_scale = lambda, entropy_quantile = tau (None: gate off, w = 1). With neg_scale = 1
    the loss value equals grpo_loss's; with also alpha = 0 the gradients are identical.
    """
    stats = candidate_stats(logits, tokens, mask, top_n)
    return casp_loss_from_stats(stats, old_logprobs, advantages, mask, alpha, entropy_quantile,
                                neg_scale, clip_eps, clip_eps_high, kl_coef, ref_logprobs, loss_denom)


# ----------------------------------------------------------------------------------------------------
# Memory-efficient path: the same statistics from hidden states, chunk by chunk


class ChunkedCandidateLogprobs(torch.autograd.Function):
    """log p(y) and log p(c_1..c_N) (plus entropy, top-N ids) from hidden (M, D) and the output weight
    (V, D), without ever holding more than (chunk_size, V) logits.

    forward: per chunk, z = h W^T / temperature in float32, then exactly stats_from_logp. Only hidden,
    W and the (M, 1+N) selected ids are saved.
    backward: per chunk, recompute z, p = softmax(z), and use d log p_j / dz = e_j - p:
        dz = sum_j g_j e_j - (sum_j g_j) p        (ids j = y, c_1..c_N; duplicates add up)
        dh = dz W / temperature,   dW += dz^T h / temperature
    Cost: 4 lm-head-sized matmuls (forward, recompute, dh, dW) instead of 3 on the plain path, and a
    float32 (V, D) accumulator for dW (summed over chunks in float32, cast to W's dtype at the end).
    Peak extra memory: a few (chunk_size, V) float32 tensors (~4 bytes * chunk_size * V each).
    """

    @staticmethod
    def forward(ctx, hidden, out_weight, tokens, top_n, temperature, chunk_size):
        if top_n < 1:
            raise ValueError(f"top_n must be >= 1, got {top_n}")
        m, v = hidden.shape[0], out_weight.shape[0]
        n = min(top_n, v)
        dtype = float_dtype(hidden.dtype)
        logp_y = torch.empty(m, dtype=dtype, device=hidden.device)  # (M,)
        logp_topn = torch.empty(m, n, dtype=dtype, device=hidden.device)  # (M, N)
        entropy = torch.empty(m, dtype=dtype, device=hidden.device)  # (M,)
        topn_ids = torch.empty(m, n, dtype=torch.long, device=hidden.device)  # (M, N)
        for s in range(0, m, chunk_size):
            z = (hidden[s:s + chunk_size] @ out_weight.T).to(dtype) / temperature  # (m, V)
            st = stats_from_logp(torch.log_softmax(z, dim=-1), tokens[s:s + chunk_size], n)
            logp_y[s:s + chunk_size] = st.logp_y
            logp_topn[s:s + chunk_size] = st.logp_topn
            entropy[s:s + chunk_size] = st.entropy
            topn_ids[s:s + chunk_size] = st.topn_ids
        ctx.save_for_backward(hidden, out_weight, torch.cat([tokens[:, None], topn_ids], dim=1))
        ctx.temperature, ctx.chunk_size = temperature, chunk_size
        ctx.mark_non_differentiable(entropy, topn_ids)
        return logp_y, logp_topn, entropy, topn_ids

    @staticmethod
    def backward(ctx, g_y, g_topn, _g_entropy, _g_ids):
        hidden, out_weight, ids = ctx.saved_tensors  # (M, D), (V, D), (M, 1+N)
        t, c = ctx.temperature, ctx.chunk_size
        g = torch.cat([g_y[:, None], g_topn], dim=1)  # (M, 1+N) dL/dlog p(id)
        dtype = float_dtype(hidden.dtype)
        d_hidden = torch.zeros_like(hidden) if ctx.needs_input_grad[0] else None  # (M, D)
        d_weight = (torch.zeros(out_weight.shape, dtype=torch.promote_types(out_weight.dtype, torch.float32),
                                device=out_weight.device) if ctx.needs_input_grad[1] else None)  # (V, D)
        for s in range(0, hidden.shape[0], c):
            h = hidden[s:s + c]  # (m, D)
            p = torch.softmax((h @ out_weight.T).to(dtype) / t, dim=-1)  # (m, V) recomputed, never stored
            gs = g[s:s + c]  # (m, 1+N)
            dz = (-gs.sum(-1, keepdim=True) * p).scatter_add_(1, ids[s:s + c], gs) / t  # (m, V)
            dz = dz.to(hidden.dtype)  # matmuls in the input dtype, as autograd would do on the plain path
            if d_hidden is not None:
                d_hidden[s:s + c] = dz @ out_weight  # (m, D)
            if d_weight is not None:
                d_weight += dz.T @ h  # (V, D)
        if d_weight is not None:
            d_weight = d_weight.to(out_weight.dtype)
        return d_hidden, d_weight, None, None, None, None


def candidate_stats_from_hidden(hidden, out_weight, tokens, mask, top_n=3, temperature=1.0, chunk_size=1024):
    """CandidateStats of the valid tokens from hidden (B, T, D) and out_weight (V, D) (lm_head has no
    bias), equal to candidate_stats(hidden @ out_weight.T / temperature, ...) without the (B, T, V)
    logits. Only valid tokens are chunked, so padding costs no matmul."""
    valid = mask.bool()  # (B, T)
    h = hidden[valid]  # (M, D); its backward scatters into a (B, T, D) zero tensor, cheap next to V
    logp_y, logp_topn, entropy, topn_ids = ChunkedCandidateLogprobs.apply(
        h, out_weight, tokens[valid], top_n, temperature, chunk_size)
    y = tokens[valid]  # (M,)
    return CandidateStats(logp_y, logp_topn, entropy, topn_ids, y == topn_ids[:, 0])


def casp_loss_from_hidden(hidden, out_weight, tokens, old_logprobs, advantages, mask, temperature=1.0,
                          chunk_size=1024, top_n=3, alpha=0.01, entropy_quantile=0.8, neg_scale=1.1,
                          clip_eps=0.2, clip_eps_high=None, kl_coef=0.0, ref_logprobs=None, loss_denom=None):
    """casp_loss(hidden @ out_weight.T / temperature, ...) with the same loss, gradients (w.r.t. hidden
    and out_weight) and metrics, without materializing the (B, T, V) float32 logits.

    hidden (B, T, D) may be bf16: each chunk's logits are cast to float32 before log-softmax.
    GRPO from this path: grpo_loss_from_hidden (identical to alpha=0, neg_scale=1 here).
    """
    stats = candidate_stats_from_hidden(hidden, out_weight, tokens, mask, top_n, temperature, chunk_size)
    return casp_loss_from_stats(stats, old_logprobs, advantages, mask, alpha, entropy_quantile,
                                neg_scale, clip_eps, clip_eps_high, kl_coef, ref_logprobs, loss_denom)


def grpo_loss_from_hidden(hidden, out_weight, tokens, old_logprobs, advantages, mask, temperature=1.0,
                          chunk_size=1024, clip_eps=0.2, clip_eps_high=None, kl_coef=0.0, ref_logprobs=None,
                          loss_denom=None, top_n=3):
    """grpo_loss(hidden @ out_weight.T / temperature, ...) on the memory-efficient path."""
    stats = candidate_stats_from_hidden(hidden, out_weight, tokens, mask, top_n, temperature, chunk_size)
    return grpo_loss_from_stats(stats, old_logprobs, advantages, mask, clip_eps, clip_eps_high,
                                kl_coef, ref_logprobs, loss_denom)
