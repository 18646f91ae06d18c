"""The GRPO and CaSP policy losses (arXiv 2510.14807, "Beyond the Sampled Token: Preserving Candidate
Support in RLVR"; v1-v2 titled "SimKO"), written so that each term can be matched against the paper,
and the exploration methods CaSP is compared with, each a row of one table (METHODS).

One training step, as this file sees it: the sampler produced G responses per prompt, a verifier
gave each a reward r_i; `advantages` (the method's row: `group_advantages` for GRPO and CaSP) turns
rewards into A_i; the model scores the responses again and each token's V-sized distribution is
reduced to its `CandidateStats` (`candidate_stats` from logits, or `candidate_stats_from_hidden` from
hidden states and the output weight, chunk by chunk, never building the float32 logits whole: see
`ChunkedCandidateLogprobs` for its cost); `policy_loss`, with the hyperparameters of one `LossConfig`,
returns the scalar to call .backward() on: the method's per-token loss (`casp_token_loss`, or
`ppo_token_loss`, GRPO's, beside it), token-mean. The public `casp_loss` and `grpo_loss` (on logits),
`method_loss` (any method) and `casp_loss_from_hidden`, `grpo_loss_from_hidden` do both steps in one call.

GRPO (the baseline, `grpo_loss_from_stats`)
    A_i   = (r_i - mean_j r_j) / (std_j r_j + 1e-6)            std with Bessel's correction
    rho_t = pi_theta(y_t | s_t) / pi_old(y_t | s_t)
    l_t   = max( -A_i * rho_t , -A_i * clip(rho_t, 1 - eps, 1 + eps_high) )     eps_high = eps unless DAPO
    L     = sum_{valid t} l_t / n_valid                          "token-mean" over the mini-batch
    No KL penalty to a reference model; no entropy bonus unless asked (entropy_coeff, below).

CaSP (`casp_loss_from_stats`), per valid token t of response i, with p = pi_theta(. | s_t),
c_1..c_N = top-N ids of the current (detached) p, H_t = entropy of p (detached):
    w_t       = 1[ H_t > quantile_tau( {H_s : s valid token of response i} ) ]    (1 everywhere if gate off)
    A_i > 0:  rho~_t = (1 - a w_t) rho_t + (a w_t / N) sum_k sg(rho_t / rho_t,k) rho_t,k
              rho_t,k = pi_theta(c_k | s_t) / pi_old(c_k | s_t),  sg = stop-gradient
              forward value rho~_t == rho_t, gradient rho_t [(1 - a w) dlog p(y) + (a w / N) sum_k dlog p(c_k)]
              in logits: dl_t/dz = -A rho_t (q - p),  q = (1 - a w) e_y + (a w / N) sum_k e_{c_k}
    A_i < 0:  A_i -> lambda * A_i where y_t == argmax p and w_t = 1;  dl_t/dz = -lambda A rho_t (e_y - p)
    l_t and L as in GRPO with rho~_t in place of rho_t. A clipped token (the clipped branch strictly
    larger) has zero gradient, top-N part included.

The methods CaSP is compared with (`--loss NAME`; METHODS maps each name to its functions). The
advantage-only ones reuse GRPO's PPO-clip token loss unchanged:
    psr           A_i = r_i                                   only correct responses are pushed up
    nsr           A_i = r_i - 1                               only wrong responses are pushed down
    w-reinforce   A_i = lambda_pos if r_i = 1, r_i - 1 = -1 if r_i = 0      lambda_pos = 0.1
        Zhu et al. 2025, "The Surprising Effectiveness of Negative Reinforcement in LLM Reasoning"
        (arXiv 2506.01347): CLR-Lab/SimKO @ 306f4ff, verl/trainer/ppo/core_algos.py,
        compute_psr_nsr_outcome_advantage (advantage 'positive' / 'negative' / 'weighted'); lambda_pos =
        0.1 is the value TianHongZXY/RLVR-Decomposed @ a5d4e7c, README.md recommends.
    passk         per group (n = G, c correct): R = 1 - C(n-c, k) / C(n, k), sigma = sqrt(R (1 - R)),
                  A_pos = (1 - R) / (sigma + 1e-6), A_neg = (1 - R - C(n-c-1, k-1) / C(n-1, k-1)) / (sigma + 1e-6)
        Chen et al. 2025, "Pass@k Training for Adaptively Balancing Exploration and Exploitation of
        Large Reasoning Models" (arXiv 2508.10751): RUCAIBox/Passk_Training @ c3ba575, code/passk_adv.py,
        calc_adv (the +1e-6 is theirs). k = 4 is this project's choice (their code takes K as an argument;
        k <= G is required).
    entropy-adv   A_t = A_i + min(alpha * sg(H_t), |A_i| / kappa)  per token      alpha = 0.4, kappa = 2
        Cheng et al. 2025, "Reasoning with Exploration: An Entropy Perspective" (arXiv 2506.14758),
        Sec. 3 (the clipped, detached entropy term added to GRPO's advantage). No reference code was
        found; alpha and kappa are the values the paper reports for its GRPO runs.
The token-loss methods change l_t; Cov_t = (A_t - mean A)(log pi(y_t) - mean log pi), the means over
the valid tokens of the call, detached:
    kl-cov        l_t = -A rho_t + beta |log rho_t| * 1[t among the max(1, int(k M)) largest Cov_t],
                  else -A rho_t: no PPO clip                                   k = 0.002, beta = 1
    clip-cov      PPO-clip l_t, times 0 at max(1, int(r M)) tokens drawn at random among those PPO did not
                  clip with omega_low < Cov_t < omega_high                     r = 2e-4, omega = (1, 5)
        Cui et al. 2025, "The Entropy Mechanism of Reinforcement Learning for Reasoning Language Models"
        (arXiv 2505.22617): volcengine/verl @ b178a3c, verl/trainer/ppo/core_algos.py,
        compute_policy_loss_kl_cov and compute_policy_loss_clip_cov (adapted there from
        PRIME-RL/Entropy-Mechanism-of-RL @ 8850579); k = 0.2% from that repository's
        recipe/dapo/7b_kl_cov.sh (k_percent=0.2, ppo_kl_coef=1), r and omega from 7b_clip_cov.sh.
And with any method, the entropy bonus (LossConfig.entropy_coeff = c, default 0):
    l_t -> l_t - c H_t, with H_t's gradient live
        verl's actor loss pg_loss - entropy_coeff * token-mean(H): CLR-Lab/SimKO @ 306f4ff,
        verl/workers/actor/dp_actor.py (update_policy); verl's default c = 0.001, which the authors'
        Qwen GRPO script inherits (their CaSP path detaches H, so there it has no effect).

Paper symbol -> name here
    r_i, A_i              rewards, adv (advantages: one per response, (B,))
    y_t, s_t              tokens[b, t], the prefix that logits[b, t] scores
    T                     temperature (the sampler's): p is softmax(logits / T)
    pi_theta(y_t|s_t)     logp_y = log p(y_t), from logits in float32 (float64 if given float64)
    pi_old(y_t|s_t)       old_logprobs (from the policy that sampled)
    rho_t, rho~_t         rho, rho_mix
    c_1..c_N, N           topn_ids, top_n (clamped to the vocabulary size V)
    log pi_theta(c_k|s_t) logp_topn
    H_t, tau, w_t         entropy, entropy_quantile, w_gate
    a, lambda             alpha, neg_scale
    lambda (W-REINFORCE)  lambda_pos;  k (pass@k) passk_k;  k, beta (KL-Cov) kl_cov_k, kl_cov_beta
    r, omega_low/high     clip_cov_r, clip_cov_low, clip_cov_high (Clip-Cov)
    alpha, kappa          entropy_adv_alpha, entropy_adv_kappa (Entropy-Adv);  c  entropy_coeff
    eps, eps_high         clip_eps, clip_eps_high (DAPO's clip-higher)
    n_valid               loss_denom (see "The one denominator" below)

The one denominator
    L = (1 / loss_denom) * sum_{b,t} mask[b,t] * l[b,t],   loss_denom = sum_{b,t} mask[b,t] over the
    whole optimizer mini-batch. Default: the mask of this call (clamped to >= 1). With gradient
    accumulation pass the mini-batch total, then sum_micro L_micro == L_minibatch exactly (loss and
    gradient): the only cross-row coupling in CaSP, the entropy gate, is per row, so splitting by rows
    changes nothing else. KL-Cov and Clip-Cov are the exception: their covariance means and token
    budget are over the tokens of one call (one micro-batch, as in the reference code), so for them
    the micro-batch split is part of the method.

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
       a token-mean per micro-batch and weights it by the micro-batch's share of the mini-batch's
       sequences (dp_actor.py: loss * len(micro) / ppo_mini_batch_size), so the update differs from
       verl's: a token of a micro-batch with few long sequences counts more there than here.
    5. `entropy_quantile=None` switches the gate off (w = 1): the v3 abstract does not mention it.
    6. The logged approx_kl is the k3 estimator of KL(pi_old || pi_theta) (verl logs k1).
    7. Entropy, argmax and top-N come from the same temperature-scaled logits as the ratio (the
       logits the sampler used), as in verl.
    8. PSR and NSR: the reference trainer drops the responses of the other sign from the batch, so its
       token-mean is over the kept responses only; here they stay, with A = 0, in the denominator (same
       direction, a step smaller by the share of tokens they hold; AdamW largely undoes such a scale).
    9. Clip-Cov: its reference scripts also widen the PPO clip range to eps = 1; here eps is the run's
       own (clip_eps), the same for every method, so that only the method differs.

Logged metrics: each is defined once, in `loss_metrics`, as a sum over a set of tokens divided by
that set's count (`count_of`); `add_metrics` and `mean_metrics` combine micro-batches and ranks by
summing both, so a step's value is the mean over all its tokens, not a mean of means.

Use in a training step, one optimizer mini-batch split by rows into micro-batches:
    cfg = LossConfig(loss="casp", temperature=T_sample)    # once, from the command line
    n_tok = sum(mb.mask.sum() for mb in micro_batches)     # the one denominator, fixed per mini-batch
    sums = {}
    for mb in micro_batches:
        hidden = ...                                       # (b, T, D) final hidden states, aligned so
                                                           # hidden[i, t] predicts mb.tokens[i, t]
        stats = candidate_stats_from_hidden(hidden, lm_head_weight, mb.tokens, mb.mask,
                                            top_n=cfg.top_n, temperature=cfg.temperature)
        loss, metrics = policy_loss(stats, mb.old_logprobs, mb.adv, mb.mask, cfg, loss_denom=n_tok)
        loss.backward()                                    # no further division by the micro-batch count
        add_metrics(sums, metrics)
    logged = mean_metrics(sums)                            # after an all-reduce of `sums` across ranks
"""
import math
from dataclasses import dataclass
from typing import Callable, NamedTuple

import torch

# ----------------------------------------------------------------------------------------------------
# Hyperparameters


@dataclass(frozen=True)
class LossConfig:
    """The loss's hyperparameters (each method's paper defaults), built once from the command line and
    passed whole. `loss` names a row of METHODS; a method reads only its own fields (METHODS[loss].params)
    plus the shared ones (top_n, clip_eps, clip_eps_high, temperature, normalize_std, entropy_coeff).
    GRPO's logged metrics also use top_n and, when set, entropy_quantile (p(1..N) at the tokens CaSP's
    gate would select, for comparison)."""
    loss: str = "casp"                    # a name of METHODS: "casp", "grpo" (the reference), ...
    top_n: int = 3                        # N
    alpha: float = 0.01                   # a
    entropy_quantile: float | None = 0.8  # tau; None switches the gate off (w = 1)
    neg_scale: float = 1.1                # lambda
    clip_eps: float = 0.2                 # eps
    clip_eps_high: float | None = None    # eps_high, DAPO's clip-higher (None: eps)
    temperature: float = 1.0              # T, the sampler's: p = softmax(logits / T)
    normalize_std: bool = True            # GRPO's A divides by the group's std (False: Dr. GRPO)
    entropy_coeff: float = 0.0            # c of the entropy bonus -c H_t (verl's entropy_coeff), any method
    lambda_pos: float = 0.1               # W-REINFORCE's lambda: A = lambda_pos on correct responses
    passk_k: int = 4                      # k of Pass@k Training (<= G)
    kl_cov_k: float = 0.002               # KL-Cov's k: share of tokens that get the KL penalty
    kl_cov_beta: float = 1.0              # KL-Cov's beta: the penalty's coefficient
    clip_cov_r: float = 2e-4              # Clip-Cov's r: share of tokens whose gradient is detached
    clip_cov_low: float = 1.0             # Clip-Cov's omega_low  (exclusive bounds of Cov)
    clip_cov_high: float = 5.0            # Clip-Cov's omega_high
    entropy_adv_alpha: float = 0.4        # Entropy-Adv's alpha
    entropy_adv_kappa: float = 2.0        # Entropy-Adv's kappa

    def __post_init__(self):  # fail at start-up, not at the first loss after minutes of sampling
        q = self.entropy_quantile
        checks = {
            f"loss: one of {', '.join(METHODS)}": self.loss in METHODS,
            "top_n >= 1": self.top_n >= 1, "temperature > 0": self.temperature > 0,
            "entropy_quantile in [0, 1] or None": q is None or 0 <= q <= 1,
            "entropy_coeff >= 0": self.entropy_coeff >= 0, "lambda_pos >= 0": self.lambda_pos >= 0,
            "passk_k >= 1": self.passk_k >= 1, "kl_cov_k in (0, 1]": 0 < self.kl_cov_k <= 1,
            "kl_cov_beta >= 0": self.kl_cov_beta >= 0, "clip_cov_r in (0, 1]": 0 < self.clip_cov_r <= 1,
            "clip_cov_low < clip_cov_high": self.clip_cov_low < self.clip_cov_high,
            "entropy_adv_alpha >= 0": self.entropy_adv_alpha >= 0, "entropy_adv_kappa > 0": self.entropy_adv_kappa > 0,
        }
        failed = [rule for rule, ok in checks.items() if not ok]
        if failed:
            raise ValueError(f"invalid {self}: {'; '.join(failed)}")


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


def psr_advantages(rewards):
    """PSR (positive sample reinforcement): A_i = r_i. Only correct responses get a gradient."""
    return rewards.float() if not rewards.is_floating_point() else rewards.clone()  # (R,)


def nsr_advantages(rewards):
    """NSR (negative sample reinforcement): A_i = r_i - 1. Only wrong responses get a gradient."""
    return (rewards.float() if not rewards.is_floating_point() else rewards) - 1.0  # (R,)


def w_reinforce_advantages(rewards, lambda_pos=0.1):
    """W-REINFORCE: A_i = lambda_pos on a correct response (r = 1), r_i - 1 = -1 on a wrong one (r = 0)."""
    r = rewards.float() if not rewards.is_floating_point() else rewards
    return torch.where(r == 1, lambda_pos * r, r - 1.0)  # (R,)


def passk_advantages(rewards, group_size, k=4, eps=1e-6):
    """Pass@k Training's analytic group advantage for 0/1 rewards (P*G,) -> (P*G,). Per group of n = G
    responses with c correct:
        R_group = 1 - C(n - c, k) / C(n, k)              the group's expected pass@k reward
        sigma   = sqrt(R_group (1 - R_group))
        A_pos   = (1 - R_group) / (sigma + eps)
        A_neg   = (1 - R_group - C(n - c - 1, k - 1) / C(n - 1, k - 1)) / (sigma + eps)
    All-correct and all-wrong groups get exactly 0. k = 1 is GRPO with the population std."""
    if not 1 <= k <= group_size:
        raise ValueError(f"pass@k training needs 1 <= k <= group size, got k={k}, G={group_size}")
    r = rewards.reshape(-1, group_size)  # (P, G)
    n, out = group_size, torch.zeros(r.shape, dtype=torch.float64)
    for g, row in enumerate(r.tolist()):   # P small python loops, exact binomials (math.comb)
        c = sum(v == 1 for v in row)
        if c in (0, n):
            continue
        r_group = 1 - math.comb(n - c, k) / math.comb(n, k)
        sigma = math.sqrt(r_group * (1 - r_group))
        a_pos = (1 - r_group) / (sigma + eps)
        a_neg = (1 - r_group - math.comb(n - c - 1, k - 1) / math.comb(n - 1, k - 1)) / (sigma + eps)
        out[g] = torch.tensor([a_pos if v == 1 else a_neg for v in row], dtype=torch.float64)
    return out.to(r.dtype if r.is_floating_point() else torch.float32).reshape(-1)  # (P*G,)


def entropy_advantages(adv, entropy, alpha=0.4, kappa=2.0):
    """Entropy-Adv, per token: A_t + min(alpha * H_t, |A_t| / kappa) with H_t detached. The clip keeps
    the term below |A_t| / kappa, so it never flips the sign of A_t (and A_t = 0 stays 0)."""
    return adv + torch.minimum(alpha * entropy.detach(), adv.abs() / kappa)  # (M,)


# ----------------------------------------------------------------------------------------------------
# Per-token candidate statistics (everything the losses need from the V-sized distribution)


class CandidateStats(NamedTuple):
    """Per valid token (M = number of valid tokens, in row-major order of the mask)."""
    logp_y: torch.Tensor     # (M,)   log p(y_t), differentiable
    logp_topn: torch.Tensor  # (M, N) log p(c_k), differentiable
    entropy: torch.Tensor    # (M,)   H_t, detached (differentiable when made with entropy_grad=True)
    topn_ids: torch.Tensor   # (M, N) c_1..c_N, ids of the N largest p (rank 1 first)
    is_argmax: torch.Tensor  # (M,)   bool, y_t == c_1


def float_dtype(dtype):
    """The dtype log-softmax runs in: float64 if given float64, else float32 (bf16 is too coarse)."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def stats_from_logp(logp, y, top_n, entropy_grad=False):
    """logp (M, V) log-probabilities, y (M,) sampled ids -> CandidateStats. top_n is clamped to V.
    entropy_grad: H_t keeps its graph (the entropy bonus needs it); otherwise it is detached."""
    if top_n < 1:
        raise ValueError(f"top_n must be >= 1, got {top_n}")
    n = min(top_n, logp.shape[-1])
    with torch.no_grad():
        topn_ids = logp.topk(n, dim=-1).indices  # (M, N)
        if not entropy_grad:  # entr(0) = 0: a -inf logit (a masked vocabulary entry) does not give NaN
            entropy = torch.special.entr(logp.exp()).sum(-1)  # (M,)
    if entropy_grad:
        entropy = live_entropy(logp)  # (M,)
    logp_y = logp.gather(-1, y[:, None]).squeeze(-1)  # (M,)
    logp_topn = logp.gather(-1, topn_ids)  # (M, N); y may be among them, then it gets both pushes
    return CandidateStats(logp_y, logp_topn, entropy, topn_ids, y == topn_ids[:, 0])


def live_entropy(logp):
    """H = -sum_v p_v log p_v with its graph, from logp (M, V). log p is clamped to the dtype's lowest
    finite value so that a -inf logit contributes 0 * finite (not 0 * inf = NaN) to value and gradient."""
    return -(logp.exp() * logp.clamp(min=torch.finfo(logp.dtype).min)).sum(-1)  # (M,)


def candidate_stats(logits, tokens, mask, *, top_n=3, temperature=1.0, entropy_grad=False):
    """The reference path: logits (B, T, V) -> CandidateStats of the valid tokens under
    softmax(logits / temperature). entropy_grad: H_t differentiable (for the entropy bonus).

    Selecting the valid tokens first means padded positions never enter log-softmax or a gather (their
    token ids may be anything, e.g. -100). The boolean selection is a CPU-GPU sync point
    (data-dependent shape) and copies (M, V); the chunked path avoids the copy.
    """
    valid = mask.bool()  # (B, T)
    z = logits[valid].to(float_dtype(logits.dtype)) / temperature  # (M, V)
    return stats_from_logp(torch.log_softmax(z, dim=-1), tokens[valid], top_n, entropy_grad)


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


def ratio_and_advantage(stats, old_logprobs, advantages, mask):
    """rho_t and A at the valid tokens, (M,) each; old_logprobs (B, T) and advantages (B,) are read
    only at valid tokens, so padding may hold anything (NaN, garbage)."""
    valid = mask.bool()  # (B, T)
    old_logp = per_token(old_logprobs, valid, stats.logp_y.dtype)  # (M,)
    return torch.exp(stats.logp_y - old_logp), per_token(advantages, valid, stats.logp_y.dtype)


def aggregate(l, loss_denom):
    """L = sum_{valid t} l_t / loss_denom (l holds only valid tokens). Default loss_denom: n_valid of
    this call, clamped to 1 so an all-masked batch gives 0, not 0/0."""
    if loss_denom is None:
        loss_denom = max(l.shape[0], 1)
    return l.sum() / loss_denom


# ----------------------------------------------------------------------------------------------------
# The per-token losses: (stats, rho, A, valid, cfg) -> (l (M,), clipped (M,), diagnostics for loss_metrics)


def ppo_token_loss(stats, rho, adv, valid, cfg):
    """GRPO's (and every advantage-only method's) per-token PPO-clip loss."""
    l, clipped = ppo_clip(rho, adv, cfg.clip_eps, cfg.clip_eps_high)  # (M,)
    return l, clipped, {}


def casp_token_loss(stats, rho, adv, valid, cfg):
    """CaSP: the top-N mixture ratio on positive responses and lambda-scaled advantages at gated argmax
    tokens of negative responses, then PPO-clip. a = cfg.alpha, lambda = cfg.neg_scale, tau =
    cfg.entropy_quantile (None: gate off, w = 1)."""
    w_gate = gate_of_valid_tokens(stats, valid, cfg.entropy_quantile)  # (M,) bool

    # 1. correct responses: spread a*w of the positive push over the current top-N candidates.
    alpha_w = cfg.alpha * (w_gate & (adv > 0)).to(rho.dtype)  # (M,)
    rho_mix = candidate_ratio(rho, stats.logp_topn, alpha_w)  # (M,) == rho in value

    # 2. incorrect responses: push the top-1 candidate down harder at gated tokens.
    neg_scaled = (adv < 0) & stats.is_argmax & w_gate  # (M,)
    adv_scaled = torch.where(neg_scaled, cfg.neg_scale * adv, adv)  # (M,)

    l, clipped = ppo_clip(rho_mix, adv_scaled, cfg.clip_eps, cfg.clip_eps_high)  # (M,)
    return l, clipped, dict(w_gate=w_gate, negative=adv < 0, neg_scaled=neg_scaled)


def centered_covariance(adv, logp):
    """Cui et al.'s per-token Cov_t = (A_t - mean A) (log pi(y_t) - mean log pi) over the tokens of this
    call (M,), detached: it only selects tokens."""
    with torch.no_grad():
        return (adv - adv.mean()) * (logp.detach() - logp.detach().mean())  # (M,)


def kl_cov_token_loss(stats, rho, adv, valid, cfg):
    """KL-Cov: the k-share of tokens with the largest Cov_t get a KL penalty beta |log rho_t|; every token
    gets the unclipped -A rho_t (no PPO clip, as in the reference code). The token budget is
    max(1, int(k * M)) over this call's M tokens."""
    l = -adv * rho  # (M,)
    selected = torch.zeros_like(rho, dtype=torch.bool)  # (M,)
    if rho.shape[0]:
        cov = centered_covariance(adv, stats.logp_y)  # (M,)
        top = cov.topk(max(1, int(rho.shape[0] * cfg.kl_cov_k))).indices
        selected[top] = True
        l = l + torch.where(selected, cfg.kl_cov_beta * rho.log().abs(), 0.0)  # |log rho| = |KL estimate|
    return l, torch.zeros_like(selected), dict(cov_selected=selected)


def clip_cov_token_loss(stats, rho, adv, valid, cfg):
    """Clip-Cov: PPO-clip, then among the tokens PPO did not clip and whose Cov_t lies strictly inside
    (omega_low, omega_high), max(1, int(r * M)) drawn at random lose their gradient (loss 0). The draw
    uses torch's global CPU generator (torch.randperm), as the reference code does."""
    l, clipped = ppo_clip(rho, adv, cfg.clip_eps, cfg.clip_eps_high)  # (M,)
    selected = torch.zeros_like(clipped)  # (M,)
    if rho.shape[0]:
        cov = centered_covariance(adv, stats.logp_y)  # (M,)
        pool = torch.nonzero((cov > cfg.clip_cov_low) & (cov < cfg.clip_cov_high) & ~clipped).flatten()
        if len(pool):  # a CPU-GPU sync (data-dependent size), once per call
            pick = pool[torch.randperm(len(pool))[:max(1, int(cfg.clip_cov_r * rho.shape[0]))].to(pool.device)]
            selected[pick] = True
        l = l * (~selected).to(l.dtype)
    return l, clipped, dict(cov_selected=selected)


# ----------------------------------------------------------------------------------------------------
# The methods: one table. Every name `--loss` takes maps to
#   advantages        (rewards (R,), G, cfg) -> A (R,), one per response, computed after the rollout
#   token_advantages  (A (M,), H (M,) detached, cfg) -> A (M,), per token at loss time, or None
#   token_loss        per-token loss over the candidate statistics (above)
# and says which LossConfig fields are its own (params), whether its loss is linear in A (A read
# elsewhere only through its sign: rows may be rescaled, and A = 0 rows contribute nothing), and whether
# a token's loss depends on the other tokens of the same call (coupled: KL-Cov's and Clip-Cov's
# covariance means and token budget; then A = 0 rows must be run too, as the reference code does).


class Method(NamedTuple):
    advantages: Callable
    token_advantages: Callable | None
    token_loss: Callable
    params: tuple = ()
    linear: bool = True
    coupled: bool = False
    about: str = ""


def _grpo_adv(r, G, c):
    return group_advantages(r, G, normalize_std=c.normalize_std)


METHODS: dict[str, Method] = {
    "grpo": Method(_grpo_adv, None, ppo_token_loss, about="group-normalised A, PPO-clip"),
    "casp": Method(_grpo_adv, None, casp_token_loss, ("alpha", "entropy_quantile", "neg_scale"),
                   about="top-N share on correct, lambda on the wrong top-1, at high-entropy tokens"),
    "psr": Method(lambda r, G, c: psr_advantages(r), None, ppo_token_loss, about="A = r"),
    "nsr": Method(lambda r, G, c: nsr_advantages(r), None, ppo_token_loss, about="A = r - 1"),
    "w-reinforce": Method(lambda r, G, c: w_reinforce_advantages(r, c.lambda_pos), None, ppo_token_loss,
                          ("lambda_pos",), about="A = lambda_pos on correct, -1 on wrong"),
    "passk": Method(lambda r, G, c: passk_advantages(r, G, c.passk_k), None, ppo_token_loss, ("passk_k",),
                    about="pass@k training's analytic group advantage"),
    "entropy-adv": Method(_grpo_adv, lambda a, h, c: entropy_advantages(a, h, c.entropy_adv_alpha,
                                                                        c.entropy_adv_kappa),
                          ppo_token_loss, ("entropy_adv_alpha", "entropy_adv_kappa"), linear=False,
                          about="A + min(alpha H, |A| / kappa) per token"),
    "kl-cov": Method(_grpo_adv, None, kl_cov_token_loss, ("kl_cov_k", "kl_cov_beta"), linear=False,
                     coupled=True, about="KL penalty on the top-k covariance tokens"),
    "clip-cov": Method(_grpo_adv, None, clip_cov_token_loss, ("clip_cov_r", "clip_cov_low", "clip_cov_high"),
                       linear=False, coupled=True, about="gradient detached at r of the high-covariance tokens"),
}


def advantages(rewards, group_size, cfg: LossConfig):
    """The method's per-response advantages: rewards (P*G,) ordered prompt by prompt -> (P*G,)."""
    return METHODS[cfg.loss].advantages(rewards, group_size, cfg)


def zero_advantage_rows_matter(cfg: LossConfig) -> bool:
    """Whether a response with A = 0 can still change the loss's gradient: under a coupled method
    (its tokens enter the covariance and the token budget) or with the entropy bonus (every token)."""
    return METHODS[cfg.loss].coupled or cfg.entropy_coeff > 0


def rescalable(cfg: LossConfig) -> bool:
    """Whether multiplying a row's A by a positive constant multiplies its loss by that constant and
    changes nothing else (linear, uncoupled, no entropy bonus): what experiments/miniature.py's stacked
    seeds use."""
    m = METHODS[cfg.loss]
    return m.linear and not m.coupled and cfg.entropy_coeff == 0


def policy_loss(stats, old_logprobs, advantages, mask, cfg: LossConfig, *, loss_denom=None):
    """The training step's loss: L = sum_{valid t} (l_t - c H_t) / loss_denom with l_t the per-token loss
    of cfg.loss's row of METHODS (after its per-token advantage reshaping, if any) and c =
    cfg.entropy_coeff. Returns (loss, metrics). stats: CandidateStats of the valid tokens of mask (B, T),
    made with cfg.top_n and cfg.temperature (and entropy_grad=True when c > 0); old_logprobs (B, T);
    advantages (B,) or (B, T); padding may hold anything. loss_denom: see the module docstring."""
    method = METHODS[cfg.loss]
    valid = mask.bool()  # (B, T)
    rho, adv = ratio_and_advantage(stats, old_logprobs, advantages, mask)  # (M,), (M,)
    if method.token_advantages is not None:
        adv = method.token_advantages(adv, stats.entropy.detach(), cfg)  # (M,)
    l, clipped, diag = method.token_loss(stats, rho, adv, valid, cfg)  # (M,)
    if cfg.entropy_coeff > 0:
        if torch.is_grad_enabled() and stats.logp_y.requires_grad and not stats.entropy.requires_grad:
            raise ValueError("entropy_coeff > 0 needs a differentiable entropy: make the statistics with "
                             "entropy_grad=True")
        l = l - cfg.entropy_coeff * stats.entropy  # (M,) the entropy bonus, -c H_t
    if "w_gate" not in diag and cfg.entropy_quantile is not None:  # diagnostics: where CaSP's gate would act
        diag["w_gate"] = gate_of_valid_tokens(stats, valid, cfg.entropy_quantile)
    return aggregate(l, loss_denom), loss_metrics(stats, rho, clipped, **diag)


def grpo_loss_from_stats(stats, old_logprobs, advantages, mask, *, clip_eps=0.2, clip_eps_high=None,
                         loss_denom=None, gate_quantile=None):
    """GRPO's token-level PPO-clip loss, token-mean over the valid tokens. Returns (loss, metrics).

    stats: CandidateStats of the valid tokens of mask (B, T); old_logprobs (B, T); advantages (B,);
    padding may hold anything. clip_eps_high: DAPO's clip-higher. loss_denom: see the module docstring.
    gate_quantile: diagnostics only (the loss is unchanged): also log p(1..N) at the tokens CaSP's entropy
    gate would select, so that GRPO and CaSP runs compare where CaSP acts.
    """
    cfg = LossConfig(loss="grpo", clip_eps=clip_eps, clip_eps_high=clip_eps_high, entropy_quantile=gate_quantile)
    return policy_loss(stats, old_logprobs, advantages, mask, cfg, loss_denom=loss_denom)


def casp_loss_from_stats(stats, old_logprobs, advantages, mask, *, alpha=0.01, entropy_quantile=0.8,
                         neg_scale=1.1, clip_eps=0.2, clip_eps_high=None, loss_denom=None):
    """CaSP: GRPO with the top-N mixture ratio on positive responses and lambda-scaled advantages at
    gated argmax tokens of negative responses. Same inputs and outputs as grpo_loss_from_stats.

    alpha = a, neg_scale = lambda, entropy_quantile = tau (None: gate off, w = 1). With neg_scale = 1
    the loss value equals GRPO's; with also alpha = 0 the gradients are identical.
    """
    cfg = LossConfig(loss="casp", alpha=alpha, entropy_quantile=entropy_quantile, neg_scale=neg_scale,
                     clip_eps=clip_eps, clip_eps_high=clip_eps_high)
    return policy_loss(stats, old_logprobs, advantages, mask, cfg, loss_denom=loss_denom)


# ----------------------------------------------------------------------------------------------------
# Logged metrics


def count_of(name):
    """The count a logged mean is a mean over (None for a count itself). Counts add up over micro-batches
    and ranks, so a whole step's value is sum(mean * count) / sum(count): add_metrics, mean_metrics."""
    if name.startswith("n_"):
        return None
    if name.startswith("gated_"):
        return "n_gated"     # the tokens the entropy gate selects (w_t = 1)
    if name == "neg_scaled_frac":
        return "n_negative"  # the tokens with A < 0
    return "n_tokens"        # all valid tokens


def divide_by_counts(sums):
    """Sums over tokens -> means (per count_of); counts pass through. A mean over no token is 0."""
    clamp = lambda c: c.clamp(min=1) if torch.is_tensor(c) else max(c, 1.0)
    return {k: v if count_of(k) is None else v / clamp(sums[count_of(k)]) for k, v in sums.items()}


def loss_metrics(stats, rho, clipped, w_gate=None, negative=None, neg_scaled=None, cov_selected=None):
    """The logged diagnostics of one loss call, each defined here once: a sum over the valid tokens
    of this call (or the subset count_of names) divided by their count. All of pi_theta, the policy
    being trained, at temperature T. Detached 0-dim tensors (n_tokens: a float; topn_probs: a list of
    N, kept for the public API), never .item(): that would be a CPU-GPU sync per micro-batch.
    The gate's entries exist when w_gate is given (CaSP; the other methods through policy_loss, as a
    diagnostic of where CaSP would act), the negative ones for CaSP only, cov_selected_frac for KL-Cov
    and Clip-Cov (the share of tokens their covariance rule selected)."""
    with torch.no_grad():
        rho = rho.detach()  # (M,)
        dtype = rho.dtype
        p_topn = stats.logp_topn.detach().exp()  # (M, N) p(c_1) >= ... >= p(c_N)
        sums = {
            "n_tokens": float(rho.shape[0]),           # valid (response) tokens
            "entropy": stats.entropy.sum(),            # H_t = -sum_v p_v log p_v, nats
            "topn_probs": p_topn.sum(0),               # (N,) p(k), the k-th largest probability
            "top1_prob": p_topn[:, 0].sum(),           # p(1) again (topn_probs[0]), under its own name
            "clip_frac": clipped.to(dtype).sum(),      # clipped branch strictly active: zero gradient
            "approx_kl": (rho - 1 - rho.log()).sum(),  # k3 estimate of KL(pi_old || pi_theta)
        }
        if w_gate is not None:
            w = w_gate.to(dtype)  # (M,)
            gated = (p_topn * w[:, None]).sum(0)  # (N,)
            sums.update(
                n_gated=w.sum(),                              # tokens with w_t = 1
                gate_frac=w.sum(),                            # n_gated / n_tokens
                **{f"gated_top{k + 1}_prob": g for k, g in enumerate(gated.unbind())},  # p(k) where CaSP acts
            )
        if negative is not None:
            sums.update(
                n_negative=negative.to(dtype).sum(),          # tokens with A < 0
                neg_scaled_frac=neg_scaled.to(dtype).sum(),   # of those, the ones lambda scales
            )
        if cov_selected is not None:
            sums["cov_selected_frac"] = cov_selected.to(dtype).sum()  # KL-Cov: penalised; Clip-Cov: detached
        means = divide_by_counts(sums)
        means["topn_probs"] = list(means["topn_probs"].unbind())
        return means


def add_metrics(sums, metrics):
    """Add one loss call's metrics to running sums (a dict, empty at first; also returned): each mean
    times its count, counts as they are. Summed over micro-batches (and all-reduced over ranks), then
    mean_metrics gives the step's means over all its tokens."""
    for k, v in metrics.items():
        v = torch.stack(v) if isinstance(v, list) else v  # (N,) for topn_probs
        if count_of(k) is not None:
            v = v * metrics[count_of(k)]
        sums[k] = sums[k] + v if k in sums else v
    return sums


def mean_metrics(sums):
    """add_metrics' sums -> the step's metrics as Python numbers (lists for p(1..N)). A mean over no token
    (a step without a gated token, or without a token with A < 0) is None, logged as null: there is
    nothing to average, and divide_by_counts' 0 would read as a measurement. One CPU-GPU sync per entry,
    once per step."""
    empty = {k for k in sums if count_of(k) is not None and float(sums[count_of(k)]) == 0}
    return {k: None if k in empty else v.tolist() if torch.is_tensor(v) else v
            for k, v in divide_by_counts(sums).items()}


# ----------------------------------------------------------------------------------------------------
# Memory-efficient path: the same statistics from hidden states, chunk by chunk


# The output layer's precision. Under bf16 autocast the hidden states reach the loss in float32 (the
# residual stream and the final RMSNorm stay float32) and the output weight is the float32 master copy,
# so a plain `h @ W.T` would run the V x D products (forward, backward recompute, dh, dW: for a 151k
# vocabulary among the largest of the step) in full float32, a fraction of bf16 speed. The choice made
# here: bf16 OPERANDS with float32 accumulation and a float32 RESULT (not TF32, not bf16 logits).
# `matmul_dtype=torch.bfloat16` casts the hidden chunk and the weight to bf16 (as autocast would) and
# multiplies them with float32 accumulation, returning float32: on CUDA one cuBLAS call (torch.mm's
# out_dtype); elsewhere the float32 product of the same bf16-valued operands (the same numbers up to
# summation order: a product of two bf16 values is exact in float32). The logits are never rounded to
# bf16 (that would cost up to 2^-9 of a logit: 0.06 nats at a logit of 30); the operands' rounding moves
# a log-prob by ~1e-3 (tests/test_casp.py bounds it against float64). The weight gradient is summed over
# chunks in float32.


def matmul_float(a, b):
    """a @ b returned in float32 (float64 for float64 operands), accumulated in float32 or better.
    bf16 operands on CUDA: one bf16 GEMM with a float32 result (torch.mm's out_dtype, torch >= 2.8)."""
    if a.dtype == b.dtype == torch.bfloat16 and a.is_cuda:
        return torch.mm(a, b, out_dtype=torch.float32)
    dtype = float_dtype(torch.promote_types(a.dtype, b.dtype))
    return a.to(dtype) @ b.to(dtype)


def chunk_logits(h, out_weight, temperature):
    """(m, D) hidden states, (V, D) weight in the matmul dtype -> (m, V) logits / T in float32 (float64
    if given float64)."""
    return matmul_float(h, out_weight.T) / temperature


class ChunkedCandidateLogprobs(torch.autograd.Function):
    """log p(y) and log p(c_1..c_N) (plus entropy, top-N ids) from hidden (M, D) and the output weight
    (V, D), without ever holding more than (chunk_size, V) logits.

    forward: per chunk, z = h W^T / temperature in float32, then exactly stats_from_logp. Only hidden,
    W and the (M, 1+N) selected ids are saved. matmul_dtype (None: hidden's dtype): the dtype of the
    matrix products' operands (bf16: see the note above `matmul_float`); W is cast once per pass.
    backward: per chunk, recompute z, p = softmax(z), and use d log p_j / dz = e_j - p:
        dz = sum_j g_j e_j - (sum_j g_j) p        (ids j = y, c_1..c_N; duplicates add up)
        dh = dz W / temperature,   dW += dz^T h / temperature
    Cost: 4 lm-head-sized matmuls (forward, recompute, dh, dW) instead of 3 on the plain path, and a
    float32 (V, D) accumulator for dW (summed over chunks in float32, cast to W's dtype at the end).
    Peak extra memory: a few (chunk_size, V) float32 tensors (~4 bytes * chunk_size * V each), and with
    a cast the (V, D) weight in the matmul dtype (2 bytes * V * D for bf16) while a pass runs.
    entropy_grad (only for the entropy bonus): H is differentiable too, and backward adds
        dz += g_H * dH/dz,   dH/dz = -p (log p + H)          (entropy_logit_grad)
    one more (chunk_size, V) log and product per chunk; with entropy_grad False nothing changes.
    """

    @staticmethod
    def forward(ctx, hidden, out_weight, tokens, top_n, temperature, chunk_size, matmul_dtype=None,
                entropy_grad=False):
        dt = matmul_dtype or hidden.dtype
        w = out_weight.to(dt)  # (V, D) once per pass (a no-op without a cast)
        c, parts = chunk_size, []  # parts: one CandidateStats per chunk
        for s in range(0, max(hidden.shape[0], 1), c):  # M = 0: one empty chunk, so torch.cat has a part
            z = chunk_logits(hidden[s:s + c].to(dt), w, temperature)  # (m, V) float32
            parts.append(stats_from_logp(torch.log_softmax(z, dim=-1), tokens[s:s + c], top_n))
        logp_y, logp_topn, entropy, topn_ids, _ = (torch.cat(field) for field in zip(*parts))
        ctx.save_for_backward(hidden, out_weight, torch.cat([tokens[:, None], topn_ids], dim=1))
        ctx.temperature, ctx.chunk_size, ctx.matmul_dtype = temperature, chunk_size, dt
        ctx.entropy_grad = entropy_grad
        ctx.mark_non_differentiable(topn_ids, *([] if entropy_grad else [entropy]))
        return logp_y, logp_topn, entropy, topn_ids

    @staticmethod
    def backward(ctx, g_y, g_topn, g_entropy, _g_ids):
        hidden, out_weight, ids = ctx.saved_tensors  # (M, D), (V, D), (M, 1+N)
        t, c, dt = ctx.temperature, ctx.chunk_size, ctx.matmul_dtype
        w = out_weight.to(dt)  # (V, D) cast again rather than kept from forward: memory over a cheap copy
        g = torch.cat([g_y[:, None], g_topn], dim=1)  # (M, 1+N) dL/dlog p(id)
        d_hidden = torch.zeros_like(hidden) if ctx.needs_input_grad[0] else None  # (M, D)
        d_weight = (torch.zeros(out_weight.shape, dtype=torch.promote_types(out_weight.dtype, torch.float32),
                                device=out_weight.device) if ctx.needs_input_grad[1] else None)  # (V, D)
        for s in range(0, hidden.shape[0], c):
            h = hidden[s:s + c].to(dt)  # (m, D)
            p = torch.softmax(chunk_logits(h, w, t), dim=-1)  # (m, V) recomputed, never stored
            gs = g[s:s + c]  # (m, 1+N)
            dz = (-gs.sum(-1, keepdim=True) * p).scatter_add_(1, ids[s:s + c], gs) / t  # (m, V)
            if ctx.entropy_grad:  # the entropy bonus's gradient, only when it is on
                dz = dz + entropy_logit_grad(p, g_entropy[s:s + c]) / t  # (m, V)
            dz = dz.to(dt)  # matmul operands in the matmul dtype, as autograd would do on the plain path
            if d_hidden is not None:
                d_hidden[s:s + c] = matmul_float(dz, w)  # (m, D)
            if d_weight is not None:
                d_weight += matmul_float(dz.T, h)  # (V, D) summed in float32
        if d_weight is not None:
            d_weight = d_weight.to(out_weight.dtype)
        return d_hidden, d_weight, None, None, None, None, None, None


def entropy_logit_grad(p, g_h):
    """g_h * dH/dz for H = -sum_v p_v log p_v, p = softmax(z): g_h[:, None] * -p (log p + H), (m, V).
    log p is clamped to the lowest finite value, so p = 0 entries contribute 0, not NaN."""
    logp = p.log().clamp(min=torch.finfo(p.dtype).min)  # (m, V)
    h = -(p * logp).sum(-1, keepdim=True)  # (m, 1)
    return -g_h[:, None] * p * (logp + h)  # (m, V)


def candidate_stats_from_hidden(hidden, out_weight, tokens, mask, *, top_n=3, temperature=1.0,
                                chunk_size=1024, matmul_dtype=None, entropy_grad=False):
    """CandidateStats of the valid tokens from hidden (B, T, D) and out_weight (V, D) (lm_head has no
    bias), equal to candidate_stats(hidden @ out_weight.T, ..., temperature=temperature) without the
    (B, T, V) logits. Only valid tokens are chunked, so padding costs no matmul. Logits are float32
    (float64 for float64 inputs) whatever the operands' dtype. matmul_dtype: the dtype the output
    layer's products take their operands in (None: hidden's; torch.bfloat16 for bf16 training, see the
    note above `matmul_float`); gradients come back in hidden's and out_weight's own dtypes.
    entropy_grad: H_t differentiable (for the entropy bonus; off, the backward is the same as without it)."""
    valid = mask.bool()  # (B, T)
    h = hidden[valid]  # (M, D); its backward scatters into a (B, T, D) zero tensor, cheap next to V
    y = tokens[valid]  # (M,)
    logp_y, logp_topn, entropy, topn_ids = ChunkedCandidateLogprobs.apply(
        h, out_weight, y, top_n, temperature, chunk_size, matmul_dtype, entropy_grad)
    return CandidateStats(logp_y, logp_topn, entropy, topn_ids, y == topn_ids[:, 0])


# ----------------------------------------------------------------------------------------------------
# The public one-call losses: statistics (from logits, or chunked from hidden states), then the loss.
# Hyperparameters are LossConfig's fields by keyword (defaults: the paper's).


def config_for(loss, hyper):
    """The LossConfig of a one-call loss. A hyperparameter of another method (GRPO given CaSP's a, tau
    or lambda) is a TypeError, like any keyword a function does not take, rather than a silently
    ignored setting."""
    foreign = sorted(hyper.keys() & {f for n, m in METHODS.items() if n != loss for f in m.params}
                     - set(METHODS[loss].params))
    if foreign:
        raise TypeError(f"{loss} takes no {foreign}: those are other methods' hyperparameters")
    if loss == "grpo":  # no gate diagnostics either: GRPO's one-call metrics are GRPO's own
        return LossConfig(loss=loss, entropy_quantile=None, **hyper)
    return LossConfig(loss=loss, **hyper)


def method_loss(logits, tokens, old_logprobs, advantages, mask, *, loss="grpo", loss_denom=None, **hyper):
    """Any method of METHODS from logits, as grpo_loss (advantages: the method's own, e.g. from
    `advantages`); hyper: LossConfig's fields."""
    cfg = config_for(loss, hyper)
    stats = candidate_stats(logits, tokens, mask, top_n=cfg.top_n, temperature=cfg.temperature,
                            entropy_grad=cfg.entropy_coeff > 0)
    return policy_loss(stats, old_logprobs, advantages, mask, cfg, loss_denom=loss_denom)


def grpo_loss(logits, tokens, old_logprobs, advantages, mask, *, loss_denom=None, **hyper):
    """GRPO from logits (B, T, V), aligned so logits[b, t] scores tokens[b, t] and divided by
    `temperature` (the sampler's); tokens, old_logprobs, mask (B, T); advantages (B,). hyper: clip_eps,
    clip_eps_high, temperature, top_n (only how many candidate probabilities are logged). Returns
    (loss, metrics); loss_denom: see the module docstring."""
    return method_loss(logits, tokens, old_logprobs, advantages, mask, loss="grpo", loss_denom=loss_denom, **hyper)


def casp_loss(logits, tokens, old_logprobs, advantages, mask, *, loss_denom=None, **hyper):
    """CaSP from logits; inputs and outputs as grpo_loss. hyper: top_n, alpha, entropy_quantile,
    neg_scale, clip_eps, clip_eps_high, temperature (LossConfig's fields)."""
    return method_loss(logits, tokens, old_logprobs, advantages, mask, loss="casp", loss_denom=loss_denom, **hyper)


def grpo_loss_from_hidden(hidden, out_weight, tokens, old_logprobs, advantages, mask, *, chunk_size=1024,
                          loss_denom=None, matmul_dtype=None, **hyper):
    """grpo_loss(hidden @ out_weight.T, ...): same loss, gradients (w.r.t. hidden and out_weight) and
    metrics, without materializing the (B, T, V) float32 logits. matmul_dtype: as in
    candidate_stats_from_hidden (torch.bfloat16: bf16 operands, float32 logits)."""
    return loss_from_hidden(config_for("grpo", hyper), hidden, out_weight, tokens, old_logprobs, advantages,
                            mask, chunk_size, loss_denom, matmul_dtype)


def casp_loss_from_hidden(hidden, out_weight, tokens, old_logprobs, advantages, mask, *, chunk_size=1024,
                          loss_denom=None, matmul_dtype=None, **hyper):
    """casp_loss(hidden @ out_weight.T, ...) on the memory-efficient path, as grpo_loss_from_hidden."""
    return loss_from_hidden(config_for("casp", hyper), hidden, out_weight, tokens, old_logprobs, advantages,
                            mask, chunk_size, loss_denom, matmul_dtype)


def loss_from_hidden(cfg, hidden, out_weight, tokens, old_logprobs, advantages, mask, chunk_size, loss_denom,
                     matmul_dtype=None):
    stats = candidate_stats_from_hidden(hidden, out_weight, tokens, mask, top_n=cfg.top_n,
                                        temperature=cfg.temperature, chunk_size=chunk_size,
                                        entropy_grad=cfg.entropy_coeff > 0)
    return policy_loss(stats, old_logprobs, advantages, mask, cfg, loss_denom=loss_denom)
