"""
miniature.py: the paper's mechanism in miniature, exactly on a token tree and visibly on the tiny model.

    python experiments/miniature.py tree --out DIR      # exact; ~2 min on a 2-core CPU -> tree.json, tree.png
    python experiments/miniature.py tree --methods all  # every method of casp.METHODS -> tree_methods.md, .png
    python experiments/miniature.py lm --out DIR        # the tiny language model (3 seeds x 2 losses, 256 x 64 eval)
    python experiments/miniature.py lm --full --out DIR # 200 RL steps, 5 seeds, 512 problems (hours)
    python experiments/miniature.py --replot DIR        # redraw every figure of DIR from its saved results

What the paper says (arXiv 2510.14807): under GRPO the next-token distribution concentrates on its top-1
candidate (p(1) rises, p(2..N) fall), distinct correct paths disappear and pass@K for large K drops;
CaSP's two changes, a share alpha of the positive push spread over the top-N candidates and a push
lambda times harder on the top-1 of wrong answers (both only at high-entropy tokens), counteract it.

1. The token tree (`tree`): no sampling noise in what is measured.
   A response is `depth` tokens from a vocabulary of `branching` ids. At the fork depths every id
   continues the response (real alternatives); elsewhere id 0 continues and any other id ends the
   response, wrong (a near-deterministic token: the initial policy puts ~99% on id 0). So a problem has
   branching^len(forks) full-length answers, some of them correct (1 to 4 per problem; about half the
   problems have their initial all-top-1 answer wrong).
   Two policies, each trained from the same initial distribution and the same random numbers per seed:
     table   one logit vector per (problem, node): problems share nothing;
     shared  log-linear: logit(problem i, node n, id a) = sum_e x_i[e] U[n, a, e], x_i[0] = 1 and
             `features - 1` random features per problem, so every update of U moves every problem.
             Some correct answers are "popular" (correct for many problems): concentration on them is
             concentration that generalises across problems, as in a language model.
   Training is the RL loop of train.py on these logits: each step samples G = 8 answers per problem,
   rewards 1/0, advantages by `casp.advantages` (GRPO's for GRPO and CaSP), old log-probs from the sampling policy, then
   `mini_batches` mini-batches (problems split in a random order), each one call of the project's own
   `casp.method_loss` (as `casp.grpo_loss`, `casp.casp_loss`) on the (rows, depth, branching) logits gathered
   from the policy (PPO clipping with eps = 0.2, entropy gate per response, top-N = 3), per-seed grad-norm clip 1.0 and
   AdamW (betas 0.9/0.999, eps 1e-8, weight decay 0.01: train.py's) with its own lr. All seeds run as one
   batch: each seed's advantages are multiplied by n_all / n_seed and the loss is divided by n_all, which
   equals each seed's own token-mean loss exactly (the loss is linear in A, and A's sign is all the
   gate and the clip read), and no parameter is shared between seeds.
   Measured exactly, by enumerating every leaf after every step:
     p1_forks, p2_forks, p3_forks   p(1), p(2), p(3) at the forks: the expectation, over the forks a
                                    response of the policy passes, of the k-th largest probability
                                    (what a sampler would log at those tokens), mean over problems
     p1_all                         the same over every token (dominated by the deterministic ones)
     entropy_forks                  the entropy at the forks, likewise
     pass1                          mean probability of a correct answer
     n_correct_1pct                 correct answers holding >= 1% of the mass, per problem
     top_correct_share              largest correct answer's share of the correct mass (problems with
                                    >= 2 correct answers): 1 = all correct mass on one answer
     passk                          exact pass@K = mean over problems of 1 - (1 - p_correct)^K, K = 1..256
   tree.json = {"settings": {...}, "methods": {name: M}}, names: grpo, casp, casp_alpha_only,
   casp_lambda_only, casp_alpha=A (lambda 1.1), casp_lambda=L (alpha 0.01), casp_gate_off, and the same with
   "shared_" in front for the shared policy. Each M has
     seeds                      how many seeds (instances) it averages
     p1_forks, p2_forks, p3_forks, p1_all, entropy_forks, pass1, n_correct_1pct, top_correct_share
                                per training step (index 0 = before training), mean over seeds
     <same>_std                 their standard deviation over seeds
     passk, passk_std           final exact pass@K ({"1": .., "256": ..}), mean and std over seeds
     passk_step0                exact pass@K before training
     passk_seeds                final pass@K per seed for K in 1, 4, 16, 64, 256 (paired comparisons)
     correct_leaf_probs, correct_leaf_probs_step0
                                mean probability of the most, 2nd, 3rd, 4th likeliest correct answer
     loss                       the loss and its settings (alpha, neg_scale, entropy_quantile, top_n)
   tree.png: p(1..3) at forks over steps, correct answers kept, pass@K, and the alpha / lambda sweeps.
   `--methods all` trains instead every method CaSP is compared with (COMPARISON: casp.METHODS at each
   paper's defaults, and GRPO with the entropy bonus 0.001) under the same instances, random numbers,
   optimizer and clip; a method whose loss is not linear in A (entropy-adv, kl-cov, clip-cov, any entropy
   bonus: casp.rescalable) gets one loss call per seed instead of the stacked call. Each M then also has
     final_seeds                {"p1_forks": [...], "p2_forks": [...]}: the final values per seed
   and tree_methods.md / tree_methods.png give per policy the final p(1), p(2) at the forks and exact
   pass@1 / pass@16 / pass@256 of every method, each minus GRPO's paired by seed with a 95% interval.

2. The tiny language model (`lm`): the same comparison on tiny.py's built-in task, through train.py and
   eval.py's command lines (see the comment above LM_TASK and docs/results.md). lm.json holds every number
   of lm.png; --replot redraws both figures from tree.json / lm.json.

The token tree itself (its shape, sampling, the probability of reaching each node) is theory.py's, the
entropy gate casp.py's, the figure helpers eval.py's.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the project's modules
import casp  # noqa: E402
import data  # noqa: E402
import cli  # noqa: E402
from cli import UserError, write_atomic  # noqa: E402
from eval import _pyplot, _save  # noqa: E402  (matplotlib optional: without it, no PNG)
from experiments.theory import TreeShape, at_least_once, tree_sample, walk  # noqa: E402

# =============================================================================
# 1. The token tree


@dataclass
class TreeConfig:
    depth: int = 8                    # tokens per full-length response
    branching: int = 5                # vocabulary size (top-N = 3 needs more than 3)
    forks: tuple = (1, 4, 7)          # depths where every id continues the response
    problems: int = 16                # problems of the table policy
    shared_problems: int = 24         # problems of the shared (log-linear) policy
    features: int = 4                 # shared policy: x_i has this many entries (x_i[0] = 1)
    n_correct: tuple = (1, 2, 3, 4)   # correct answers per problem, drawn uniformly from this list
    top1_wrong: float = 0.5           # fraction of problems whose initial all-top-1 answer is wrong
    popular: int = 2                  # popular answers (correct for many problems)
    popular_frac: float = 0.6         # fraction of problems for which one popular answer is correct
    fork_scale: float = 1.5           # initial fork logits ~ N(0, fork_scale^2)
    det_logit: float = 6.0            # initial logit of id 0 at the other depths (p ~ 0.99)
    problem_scale: float = 0.5        # shared policy: initial std of U[..., e >= 1]
    correct_power: float = 1.0        # correct answers drawn with probability ~ (initial p)^power
    seeds: int = 24
    steps: int = 100
    group: int = 8                    # G: samples per problem and step
    mini_batches: int = 2
    lr: float = 0.1
    weight_decay: float = 0.01
    clip_eps: float = 0.2
    grad_clip: float = 1.0
    top_n: int = 3
    entropy_quantile: float = 0.8
    alphas: tuple = (0.0, 0.01, 0.03, 0.1, 0.3)
    lambdas: tuple = (1.0, 1.1, 1.2, 1.5, 2.0)
    policies: tuple = ("table", "shared")
    max_k: int = 256
    seed: int = 0                     # base seed: instance s of the run uses seed + s
    dtype: str = "float32"            # of the trained logits (the exact statistics are float64)
    workers: int = 2                  # processes (one method each at a time)
    methods: tuple = ("ablations",)   # "ablations" (CaSP's), "all" (COMPARISON), or names of COMPARISON


PAPER = dict(alpha=0.01, neg_scale=1.1, entropy_quantile=0.8)
PASSK_SEED_KS = (1, 4, 16, 64, 256)


# The methods CaSP is compared with (casp.METHODS), each at its paper's defaults (casp.LossConfig), plus
# GRPO with verl's entropy bonus (the coefficient of the authors' GRPO run): `tree --methods all`.
COMPARISON = {"grpo": {"loss": "grpo"}, "casp": {"loss": "casp", **PAPER, "top_n": 3}, "psr": {"loss": "psr"},
              "nsr": {"loss": "nsr"}, "w-reinforce": {"loss": "w-reinforce"}, "passk": {"loss": "passk"},
              "entropy-adv": {"loss": "entropy-adv"}, "kl-cov": {"loss": "kl-cov"}, "clip-cov": {"loss": "clip-cov"},
              "grpo+entropy": {"loss": "grpo", "entropy_coeff": 0.001}}


def tree_methods(cfg: TreeConfig) -> dict[str, dict]:
    """name -> loss settings (casp.LossConfig's fields). cfg.methods "all": COMPARISON; names: those of
    COMPARISON; "ablations" (default): GRPO, CaSP and its ablations (casp_alpha_only: lambda = 1;
    casp_lambda_only: alpha = 0; sweeps of alpha and lambda; gate off)."""
    if tuple(cfg.methods) != ("ablations",):
        names = list(COMPARISON) if tuple(cfg.methods) == ("all",) else list(cfg.methods)
        unknown = [n for n in names if n not in COMPARISON]
        if unknown:
            raise UserError(f"--methods: unknown {unknown} (all, ablations, or of {', '.join(COMPARISON)})")
        m = {n: dict(COMPARISON[n]) for n in (["grpo"] if "grpo" not in names else []) + names}
        for v in m.values():
            if v["loss"] == "casp":
                v["top_n"], v["entropy_quantile"] = cfg.top_n, cfg.entropy_quantile
        return m
    m = {"grpo": {"loss": "grpo"},
         "casp": {"loss": "casp", **PAPER},
         "casp_alpha_only": {"loss": "casp", **PAPER, "neg_scale": 1.0},
         "casp_lambda_only": {"loss": "casp", **PAPER, "alpha": 0.0}}
    for a in cfg.alphas:
        if a not in (0.0, PAPER["alpha"]):
            m[f"casp_alpha={a:g}"] = {"loss": "casp", **PAPER, "alpha": a}
    for lam in cfg.lambdas:
        if lam not in (1.0, PAPER["neg_scale"]):
            m[f"casp_lambda={lam:g}"] = {"loss": "casp", **PAPER, "neg_scale": lam}
    m["casp_gate_off"] = {"loss": "casp", **PAPER, "entropy_quantile": None}
    for v in m.values():
        if v["loss"] == "casp":
            v["top_n"] = cfg.top_n
            if v["entropy_quantile"] is not None:
                v["entropy_quantile"] = cfg.entropy_quantile
    return m


def sweep_members(methods: dict, prefix: str = ""):
    """The sweeps among tree.json's methods of one policy (prefix "" or "shared_"): ([(alpha, name)] at
    lambda 1.1, [(lambda, name)] at alpha 0.01), sorted, gate on."""
    alphas, lambdas = {}, {}
    for name, M in methods.items():
        m = M["loss"]
        if name[:len(prefix)] != prefix or name[len(prefix):].startswith("shared_") or m["loss"] != "casp" \
                or m.get("entropy_quantile") is None:
            continue
        if m["neg_scale"] == PAPER["neg_scale"]:
            alphas[m["alpha"]] = name
        if m["alpha"] == PAPER["alpha"]:
            lambdas[m["neg_scale"]] = name
    return sorted(alphas.items()), sorted(lambdas.items())


@torch.no_grad()
def tree_exact(shape: TreeShape, logits: torch.Tensor, correct: torch.Tensor, max_k: int = 256,
               passk: bool = True) -> dict:
    """Exact statistics of the policy (logits (S, P, n_nodes, V)) against the correct answers (S, P,
    n_leaves) bool, per seed (tensors with a leading S), in float64. See the module docstring."""
    S, P, _, V = logits.shape
    reaches, probs, leaf = walk(shape, logits)            # reach (S, P, W) and p (S, P, W, V) per depth
    n_top = min(3, V)
    fork_pk = torch.zeros(S, P, n_top, dtype=torch.float64)
    fork_mass = torch.zeros(S, P, dtype=torch.float64)
    fork_h = torch.zeros(S, P, dtype=torch.float64)
    all_p1 = torch.zeros(S, P, dtype=torch.float64)
    all_mass = torch.zeros(S, P, dtype=torch.float64)
    for d, (reach, pd) in enumerate(zip(reaches, probs)):
        all_mass += reach.sum(-1)
        if shape.is_fork[d]:
            top = pd.topk(n_top, dim=-1).values                                       # (S, P, W, 3)
            all_p1 += (reach * top[..., 0]).sum(-1)
            fork_pk += (reach[..., None] * top).sum(2)
            fork_mass += reach.sum(-1)
            fork_h += (reach * torch.special.entr(pd).sum(-1)).sum(-1)
        else:
            all_p1 += (reach * pd.amax(-1)).sum(-1)
    pc_leaf = leaf * correct                                                          # (S, P, L)
    p_correct = pc_leaf.sum(-1)                                                       # (S, P)
    if passk:   # 1 - (1 - p)^K per problem, averaged over problems: (S, K)
        passk = at_least_once(p_correct, torch.arange(1, max_k + 1, dtype=torch.float64)).mean(1)
    multi = correct.sum(-1) >= 2                                                      # (S, P)
    share = pc_leaf.max(-1).values / p_correct.clamp(min=1e-300)
    top_share = torch.where(multi, share, 0).sum(1) / multi.sum(1).clamp(min=1)
    ranked = torch.where(correct, leaf, -1.0).sort(-1, descending=True).values[..., :4]   # (S, P, 4)
    has = ranked >= 0
    leaf_probs = (ranked.clamp(min=0) * has).sum(1) / has.sum(1).clamp(min=1)          # (S, 4)
    pk = fork_pk / fork_mass[..., None]
    return {
        "p1_forks": pk[..., 0].mean(1), "p2_forks": pk[..., 1].mean(1), "p3_forks": pk[..., 2].mean(1),
        "entropy_forks": (fork_h / fork_mass).mean(1), "p1_all": (all_p1 / all_mass).mean(1),
        "pass1": p_correct.mean(1), "n_correct_1pct": ((leaf >= 0.01) & correct).sum(-1).double().mean(1),
        "top_correct_share": top_share, "passk": passk, "correct_leaf_probs": leaf_probs,
        "p_correct": p_correct, "leaf": leaf,
    }


def tree_instances(shape: TreeShape, cfg: TreeConfig, policy: str) -> dict:
    """The initial policy and the correct answers of every seed, stacked over seeds.
    table: {"init": (S, P, Nn, V)}; shared: {"init": U (S, Nn, V, E), "x": (S, P, E)}; both "correct"."""
    P = cfg.problems if policy == "table" else cfg.shared_problems
    V, Nn, L = shape.branching, shape.n_nodes, shape.n_leaves
    fork_node = torch.zeros(Nn, dtype=torch.bool)
    for d in shape.forks:
        fork_node[shape.offset[d]:shape.offset[d] + shape.width[d]] = True
    inits, xs, corrects = [], [], []
    for s in range(cfg.seeds):
        g = torch.Generator().manual_seed(1_000_003 * (cfg.seed + s) + (0 if policy == "table" else 7))

        def base(n):
            """(n, Nn, V) initial logits: random at forks, id 0 at det_logit elsewhere."""
            z = torch.randn(n, Nn, V, generator=g, dtype=torch.float64) * cfg.fork_scale
            det = torch.randn(n, Nn, V, generator=g, dtype=torch.float64) * 0.3
            det[..., 0] = cfg.det_logit
            return torch.where(fork_node[None, :, None], z, det)

        if policy == "table":
            init = base(P)                                                            # (P, Nn, V)
            logits = init
        else:
            E = cfg.features
            u = torch.randn(Nn, V, E, generator=g, dtype=torch.float64) * cfg.problem_scale
            u[..., 0] = base(1)[0]
            x = torch.randn(P, E, generator=g, dtype=torch.float64)
            x[:, 0] = 1.0
            init, logits = u, torch.einsum("nve,pe->pnv", u, x)
            xs.append(x)
        ex = tree_exact(shape, logits[None], torch.zeros(1, P, L, dtype=torch.bool), 1)
        p0 = ex["leaf"][0]                                                            # (P, L)
        greedy = p0.argmax(-1)                                                        # (P,)
        popular = torch.multinomial(p0.mean(0), cfg.popular, generator=g)             # (popular,)
        correct = torch.zeros(P, L, dtype=torch.bool)
        for i in range(P):
            k = cfg.n_correct[int(torch.randint(len(cfg.n_correct), (1,), generator=g))]
            banned = torch.zeros(L, dtype=torch.bool)
            if float(torch.rand(1, generator=g)) < cfg.top1_wrong:
                banned[greedy[i]] = True
            pop = popular[~banned[popular]]
            if len(pop) and float(torch.rand(1, generator=g)) < cfg.popular_frac:
                correct[i, pop[int(torch.randint(len(pop), (1,), generator=g))]] = True
            w = p0[i].pow(cfg.correct_power).masked_fill(banned | correct[i], 0.0)
            need = k - int(correct[i].sum())
            if need > 0:
                correct[i, torch.multinomial(w, need, generator=g)] = True
        inits.append(init)
        corrects.append(correct)
    out = {"init": torch.stack(inits), "correct": torch.stack(corrects)}
    if xs:
        out["x"] = torch.stack(xs)
    return out


class TreePolicy:
    """The trainable logits of all seeds: table (one logit per (seed, problem, node, id)) or shared
    (log-linear, U (S, Nn, V, E) with fixed problem features x (S, P, E))."""

    def __init__(self, inst: dict, dtype=torch.float32):
        self.param = inst["init"].to(dtype).clone().requires_grad_(True)
        self.x = inst["x"].to(dtype) if "x" in inst else None

    def logits(self) -> torch.Tensor:
        if self.x is None:
            return self.param                                                         # (S, P, Nn, V)
        return torch.einsum("snve,spe->spnv", self.param, self.x)


def loss_call(method: dict, logits, tokens, old_logprobs, adv, mask, loss_denom, clip_eps):
    """One call of the project's own loss (casp.method_loss: casp.grpo_loss, casp.casp_loss, ... by name)."""
    return casp.method_loss(logits, tokens, old_logprobs, adv, mask, loss_denom=loss_denom, clip_eps=clip_eps,
                            **method)


def loss_config(method: dict) -> "casp.LossConfig":
    return casp.LossConfig(**method)


def per_seed_clip_(grad: torch.Tensor, max_norm: float) -> torch.Tensor:
    """torch.nn.utils.clip_grad_norm_ applied to each seed's slice (the leading dim) on its own."""
    norms = grad.flatten(1).norm(dim=1)                                               # (S,)
    coef = (max_norm / (norms + 1e-6)).clamp(max=1.0)
    grad.mul_(coef.view(-1, *[1] * (grad.dim() - 1)))
    return norms


def tree_rl_step(shape, policy: TreePolicy, opt, correct, method: dict, cfg: TreeConfig, gen, trace=None):
    """One RL step of every seed: sample G answers per problem, reward, advantages, then cfg.mini_batches
    mini-batches of loss + backward + per-seed clip + AdamW. `trace` (a list) receives each mini-batch's
    inputs and gradient (for tests)."""
    with torch.no_grad():
        z = policy.logits().detach()
    S, P, _, V = z.shape
    G, D = cfg.group, shape.depth
    u = torch.rand(S, P, G, D, generator=gen, dtype=torch.float64).to(z.dtype)
    tokens, mask, nodes, old, leaf, finished = tree_sample(shape, z, u)
    rewards = (finished & correct.gather(2, leaf)).to(z.dtype)                        # (S, P, G)
    adv = casp.advantages(rewards.reshape(-1), G, loss_config(method)).to(z.dtype).reshape(S, P, G)
    flat = ((torch.arange(S)[:, None] * P + torch.arange(P)[None, :]) * shape.n_nodes)[..., None, None] + nodes
    order = torch.randperm(P, generator=gen)
    for chunk in order.chunk(cfg.mini_batches):
        zc = policy.logits().reshape(-1, V)[flat[:, chunk]]                          # (S, p, G, D, V)
        m = mask[:, chunk]
        n_seed = m.flatten(1).sum(1).double()                                          # (S,) tokens per seed
        n_all = float(n_seed.sum())
        if casp.rescalable(loss_config(method)):   # all seeds in one call: the loss is linear in A
            a = adv[:, chunk] * (n_all / n_seed)[:, None, None]   # so that sum / n_all == each seed's token-mean
            rows = S * len(chunk) * G
            loss, _ = loss_call(method, zc.reshape(rows, D, V), tokens[:, chunk].reshape(rows, D),
                                old[:, chunk].reshape(rows, D), a.reshape(rows), m.reshape(rows, D), n_all,
                                cfg.clip_eps)
        else:   # one call per seed: the loss reads A beyond its sign, or couples a call's tokens
            rows = len(chunk) * G
            loss = sum(loss_call(method, zc[s].reshape(rows, D, V), tokens[s, chunk].reshape(rows, D),
                                 old[s, chunk].reshape(rows, D), adv[s, chunk].reshape(rows), m[s].reshape(rows, D),
                                 float(n_seed[s]), cfg.clip_eps)[0] for s in range(S))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        raw = policy.param.grad.clone() if trace is not None else None
        norms = per_seed_clip_(policy.param.grad, cfg.grad_clip)
        if trace is not None:
            trace.append(dict(chunk=chunk, tokens=tokens[:, chunk], mask=m, nodes=nodes[:, chunk],
                              old=old[:, chunk], adv=adv[:, chunk], rewards=rewards[:, chunk], grad_raw=raw,
                              grad=policy.param.grad.clone(), grad_norm=norms,
                              param_before=policy.param.detach().clone()))
        opt.step()
    return rewards


def make_opt(policy: TreePolicy, cfg: TreeConfig):
    """train.py's optimizer: AdamW, betas (0.9, 0.999), eps 1e-8, its weight decay; the tree's lr."""
    return torch.optim.AdamW([policy.param], lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.999),
                             eps=1e-8)


SERIES = ("p1_forks", "p2_forks", "p3_forks", "p1_all", "entropy_forks", "pass1", "n_correct_1pct",
          "top_correct_share")


def train_tree(shape, inst: dict, method: dict, cfg: TreeConfig) -> dict:
    """Train every seed of one policy with one loss; exact statistics after every step -> M."""
    policy = TreePolicy(inst, getattr(torch, cfg.dtype))
    opt = make_opt(policy, cfg)
    gen = torch.Generator().manual_seed(cfg.seed + 12345)   # the same random numbers for every method
    torch.manual_seed(cfg.seed + 777)                       # Clip-Cov's draw uses torch's global generator
    hist = []
    ex0 = tree_exact(shape, policy.logits().detach(), inst["correct"], cfg.max_k)
    hist.append({k: ex0[k] for k in SERIES})
    ex = ex0
    for step in range(cfg.steps):
        tree_rl_step(shape, policy, opt, inst["correct"], method, cfg, gen)
        ex = tree_exact(shape, policy.logits().detach(), inst["correct"], cfg.max_k, passk=step + 1 == cfg.steps)
        hist.append({k: ex[k] for k in SERIES})
    S = inst["correct"].shape[0]
    out = {"seeds": S, "loss": method}
    for k in SERIES:
        series = torch.stack([h[k] for h in hist])                                    # (steps+1, S)
        out[k] = [round(v, 6) for v in series.mean(1).tolist()]
        out[k + "_std"] = [round(v, 6) for v in (series.std(1) if S > 1 else torch.zeros(len(hist))).tolist()]
    ks = range(1, cfg.max_k + 1)
    out["passk"] = {str(k): round(v, 6) for k, v in zip(ks, ex["passk"].mean(0).tolist())}
    out["passk_std"] = {str(k): round(v, 6) for k, v in
                        zip(ks, (ex["passk"].std(0) if S > 1 else torch.zeros(cfg.max_k)).tolist())}
    out["passk_step0"] = {str(k): round(v, 6) for k, v in zip(ks, ex0["passk"].mean(0).tolist())}
    out["passk_seeds"] = {str(k): [round(v, 6) for v in ex["passk"][:, k - 1].tolist()]
                          for k in PASSK_SEED_KS if k <= cfg.max_k}
    out["final_seeds"] = {k: [round(v, 6) for v in hist[-1][k].tolist()] for k in ("p1_forks", "p2_forks")}
    out["correct_leaf_probs"] = [round(v, 6) for v in ex["correct_leaf_probs"].mean(0).tolist()]
    out["correct_leaf_probs_step0"] = [round(v, 6) for v in ex0["correct_leaf_probs"].mean(0).tolist()]
    return out


_INSTANCES: dict = {}


def _tree_job(cfg: TreeConfig, policy: str, name: str) -> dict:
    """One (policy, method) training run; instances are built once per process and policy."""
    torch.set_num_threads(1)
    shape = TreeShape(cfg.depth, cfg.branching, cfg.forks)
    key = (json.dumps(asdict(cfg), sort_keys=True), policy)
    if key not in _INSTANCES:
        _INSTANCES.clear()
        _INSTANCES[key] = tree_instances(shape, cfg, policy)
    return train_tree(shape, _INSTANCES[key], tree_methods(cfg)[name], cfg)


def run_tree(cfg: TreeConfig, out_dir: Path, plot: bool = True, log=print) -> dict:
    """All methods on both policies (cfg.workers processes) -> out_dir/tree.json (+ tree.png)."""
    t0 = time.time()
    shape = TreeShape(cfg.depth, cfg.branching, cfg.forks)
    jobs = [(policy, name) for policy in cfg.policies for name in tree_methods(cfg)]
    result = {"settings": {**asdict(cfg), "n_nodes": shape.n_nodes, "n_answers": shape.n_leaves,
                           "paper": PAPER}, "methods": {}}

    def done(policy, name, m):
        key = name if policy == "table" else f"shared_{name}"
        result["methods"][key] = m
        log(f"[tree] {key:28s} p1_forks {m['p1_forks'][0]:.3f} -> {m['p1_forks'][-1]:.3f} | pass@1 "
            f"{m['passk']['1']:.3f} pass@{cfg.max_k} {m['passk'][str(cfg.max_k)]:.3f} (before "
            f"{m['passk_step0']['1']:.3f}, {m['passk_step0'][str(cfg.max_k)]:.3f}) | correct >= 1% "
            f"{m['n_correct_1pct'][0]:.2f} -> {m['n_correct_1pct'][-1]:.2f} | {time.time() - t0:.0f}s")

    if cfg.workers > 1:
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor
        with ProcessPoolExecutor(cfg.workers, mp_context=mp.get_context("spawn")) as pool:
            futures = [(p, n, pool.submit(_tree_job, cfg, p, n)) for p, n in jobs]
            for p, n, f in futures:
                done(p, n, f.result())
    else:
        threads = torch.get_num_threads()
        for p, n in jobs:
            done(p, n, _tree_job(cfg, p, n))
        torch.set_num_threads(threads)
    order = [n if p == "table" else f"shared_{n}" for p, n in jobs]
    result["methods"] = {k: result["methods"][k] for k in order}
    result["settings"]["seconds"] = round(time.time() - t0, 1)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_atomic(out_dir / "tree.json", json.dumps(result))
    if is_comparison(result):
        table = format_tree_methods(result)
        (out_dir / "tree_methods.md").write_text(table + "\n")
        log(table)
    if plot:
        plot_tree_methods(result, out_dir / "tree_methods.png") if is_comparison(result) else \
            plot_tree(result, out_dir / "tree.png")
    return result


def is_comparison(result: dict) -> bool:
    """Whether tree.json holds the comparison of methods (--methods all or names), not CaSP's ablations."""
    return tuple(result["settings"].get("methods", ("ablations",))) != ("ablations",)


TREE_COLUMNS = (("p1_forks", "p(1) forks"), ("p2_forks", "p(2) forks"), ("1", "pass@1"), ("16", "pass@16"),
                ("256", "pass@256"))


def method_vs_grpo(methods: dict, name: str, prefix: str = "") -> dict:
    """Per column of TREE_COLUMNS: (final mean over seeds, paired difference to GRPO's, its 95% half-width)."""
    m, g = methods[prefix + name], methods[prefix + "grpo"]
    out = {}
    for key, _ in TREE_COLUMNS:
        if key in m.get("final_seeds", {}):
            a, b = m["final_seeds"][key], g["final_seeds"][key]
        elif key in m["passk_seeds"]:
            a, b = m["passk_seeds"][key], g["passk_seeds"][key]
        else:
            continue
        out[key] = (sum(a) / len(a), *paired_diff(a, b))
    return out


def format_tree_methods(result: dict) -> str:
    """The comparison as a Markdown table per policy: final p(1), p(2) at the forks and exact pass@1/16/256
    (mean over seeds), each with its difference to GRPO paired by seed and the 95% half-width."""
    methods, lines = result["methods"], []
    for prefix, title in (("", "table policy"), ("shared_", "shared (log-linear) policy")):
        names = [n for n in methods if n.startswith(prefix) and not (prefix == "" and n.startswith("shared_"))]
        if not names:
            continue
        seeds = methods[prefix + "grpo"]["seeds"]
        lines += [f"{title}, {seeds} seeds, {result['settings']['steps']} steps; cells: mean (minus GRPO, paired by "
                  "seed, +- 95%)", "| method | " + " | ".join(c for _, c in TREE_COLUMNS) + " |",
                  "|---|" + "---|" * len(TREE_COLUMNS)]
        for key in names:
            name = key[len(prefix):]
            cols = method_vs_grpo(methods, name, prefix)
            cells = [f"{v:.3f}" if name == "grpo" else f"{v:.3f} ({d:+.3f} +- {h:.3f})" for v, d, h in
                     (cols[k] for k, _ in TREE_COLUMNS if k in cols)]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines).rstrip()


def plot_tree_methods(result: dict, path: Path):
    """tree_methods.png, one row per policy: p(1) and p(2) at the forks over steps for every method, and
    the final pass@1 / pass@16 / pass@256 minus GRPO's (paired by seed, 95% intervals)."""
    plt = _pyplot()
    if plt is None:
        return None
    methods = result["methods"]
    prefixes = [p for p in ("", "shared_") if p + "grpo" in methods]
    fig, axes = plt.subplots(len(prefixes), 3, figsize=(20, 4.8 * len(prefixes)), squeeze=False)
    cmap = plt.get_cmap("tab10")
    for r, prefix in enumerate(prefixes):
        names = [n[len(prefix):] for n in methods if n.startswith(prefix) and
                 not (prefix == "" and n.startswith("shared_"))]
        title = "table policy" if not prefix else "shared (log-linear) policy"
        for c, key in enumerate(("p1_forks", "p2_forks")):
            ax = axes[r][c]
            for j, name in enumerate(names):
                ax.plot(methods[prefix + name][key], color=cmap(j % 10), lw=2.0 if name in ("grpo", "casp") else 1.0,
                        ls="-" if j < 10 else "--", label=name)
            ax.set(xlabel="RL step", ylabel="probability",
                   title=f"{title}: p({c + 1}) at the forks (mean of {methods[prefix + 'grpo']['seeds']} seeds)")
            ax.legend(fontsize=7, ncol=2)
        ax = axes[r][2]
        others = [n for n in names if n != "grpo"]
        width = 0.8 / 3
        for i, (k, color) in enumerate((("1", "tab:orange"), ("16", "tab:green"), ("256", "tab:purple"))):
            pts = [method_vs_grpo(methods, n, prefix)[k] for n in others]
            ax.errorbar([x + (i - 1) * width for x in range(len(others))], [p[1] for p in pts],
                        yerr=[p[2] for p in pts], fmt="o", capsize=3, color=color, label=f"pass@{k}")
        ax.axhline(0, color="k", lw=0.8)
        ax.set_xticks(range(len(others)), others, rotation=30, fontsize=8)
        ax.set(ylabel="minus GRPO (paired by seed, 95% CI)", title=f"{title}: final exact pass@K vs GRPO")
        ax.legend(fontsize=7)
        for ax in axes[r]:
            ax.grid(alpha=0.3)
    return _save(plt, fig, path)


def paired_diff(a: list[float], b: list[float]) -> tuple[float, float]:
    """Mean of a - b over seeds (paired) and its 95% half-width (1.96 standard errors)."""
    d = [x - y for x, y in zip(a, b)]
    m = sum(d) / len(d)
    if len(d) < 2:
        return m, float("nan")
    sd = math.sqrt(sum((x - m) ** 2 for x in d) / (len(d) - 1))
    return m, 1.96 * sd / math.sqrt(len(d))


TREE_STYLE = {"grpo": ("GRPO", "tab:red", "-"), "casp": ("CaSP (paper: a=0.01, l=1.1)", "tab:blue", "-"),
              "casp_alpha_only": ("alpha only", "tab:cyan", "--"),
              "casp_lambda_only": ("lambda only", "tab:purple", "--"),
              "casp_alpha=0.3": ("CaSP a=0.3", "tab:green", "-"),
              "casp_lambda=2": ("CaSP l=2", "tab:olive", "-"),
              "casp_gate_off": ("CaSP, gate off", "tab:gray", ":")}


def plot_tree(result: dict, path: Path):
    """tree.png: one row per policy (table, shared), each panel titled with its policy; columns: p(1..3) at
    forks over steps, correct answers holding >= 1%, exact pass@K, and the alpha and lambda sweeps (pass@K
    minus GRPO's in points, paired over seeds, 95% intervals; every sweep panel on one y scale, at least
    +-1 point, so that a difference of a few thousandths of a point does not fill a panel). The methods'
    legend is below the panels, so that no legend covers a curve."""
    plt = _pyplot()
    if plt is None:
        return None
    from matplotlib.lines import Line2D
    methods = result["methods"]
    rows = [p for p in ("", "shared_") if p + "grpo" in methods]
    fig, axes = plt.subplots(len(rows), 5, figsize=(25, 4.6 * len(rows) + 0.8), squeeze=False)
    ranks = (("p1", "tab:red"), ("p2", "tab:blue"), ("p3", "tab:green"))
    forks_ls = (("grpo", "-"), ("casp", "--"), ("casp_alpha=0.3", ":"))
    sweep_axes, lo, hi = [], -1.0, 1.0        # points; the common y range of the sweep panels
    for r, prefix in enumerate(rows):
        policy = "table policy" if not prefix else "shared policy"
        seeds = methods[prefix + "grpo"]["seeds"]
        ax = axes[r][0]
        for name, ls in forks_ls:
            m = methods.get(prefix + name)
            if m is None:
                continue
            for k, color in ranks:
                y, sd = m[f"{k}_forks"], m[f"{k}_forks_std"]
                x = range(len(y))
                ax.plot(x, y, ls=ls, color=color)
                if name == "grpo":
                    ax.fill_between(x, [a - b for a, b in zip(y, sd)], [a + b for a, b in zip(y, sd)],
                                    color=color, alpha=0.12, lw=0)
        ax.plot(methods[prefix + "grpo"]["p1_all"], color="k", lw=0.8)
        ax.set(xlabel="RL step", ylabel="probability", title=f"{policy}: p(1..3) at the forks" + (" (log-linear)" if prefix else ""),
               ylim=(-0.03, 1.42), yticks=[0, 0.2, 0.4, 0.6, 0.8, 1.0])
        # colours are ranks, line styles methods; the legend sits above 1, where no probability can be
        handles = [Line2D([], [], color=c, label=k.replace("p", "p(") + ")") for k, c in ranks]
        handles += [Line2D([], [], color="k", lw=0.8, label="p(1) all tokens, GRPO")]
        handles += [Line2D([], [], color="gray", ls=ls, label=TREE_STYLE[n][0]) for n, ls in forks_ls
                    if prefix + n in methods]
        ax.legend(handles=handles, fontsize=7, ncol=2, loc="upper center")
        ax = axes[r][1]
        for name, (label, color, ls) in TREE_STYLE.items():
            m = methods.get(prefix + name)
            if m:
                ax.plot(m["n_correct_1pct"], color=color, ls=ls, label=label)
        ax.set(xlabel="RL step", ylabel="per problem", title=f"{policy}: correct answers >= 1% of the mass")
        ax = axes[r][2]
        ks = [int(k) for k in methods[prefix + "grpo"]["passk"]]
        ax.plot(ks, [methods[prefix + "grpo"]["passk_step0"][str(k)] for k in ks], color="k", label="before RL")
        for name, (label, color, ls) in TREE_STYLE.items():
            m = methods.get(prefix + name)
            if m:
                ax.plot(ks, [m["passk"][str(k)] for k in ks], color=color, ls=ls, label=label)
        ax.set_xscale("log", base=2)
        ax.set(xlabel="K", ylabel="exact pass@K", title=f"{policy}: final pass@K ({seeds} seeds)")
        alphas, lambdas = sweep_members(methods, prefix)
        for c, (sweep, sym) in enumerate(((alphas, "alpha (lambda 1.1)"), (lambdas, "lambda (alpha 0.01)"))):
            ax = axes[r][3 + c]
            base = methods[prefix + "grpo"]["passk_seeds"]
            for k, color in (("1", "tab:orange"), ("16", "tab:green"), ("256", "tab:purple")):
                if k not in base:
                    continue
                pts = [paired_diff([100 * v for v in methods[n]["passk_seeds"][k]], [100 * v for v in base[k]])
                       for _, n in sweep]
                ends = [(m - h, m + h) if h == h else (m, m) for m, h in pts]   # h is NaN with one seed
                lo, hi = min([lo] + [a for a, _ in ends]), max([hi] + [b for _, b in ends])
                ax.errorbar(range(len(sweep)), [p[0] for p in pts], yerr=[p[1] for p in pts], marker="o",
                            capsize=3, color=color, label=f"pass@{k}")
            ax.axhline(0, color="k", lw=0.8)
            ax.set_xticks(range(len(sweep)), [f"{v:g}" for v, _ in sweep])
            ax.set(xlabel=sym, ylabel="minus GRPO, points (paired, 95% CI)",
                   title=f"{policy}: sweep of {sym.split()[0]}")
            ax.legend(fontsize=7, loc="upper center", ncol=3)
            sweep_axes.append(ax)
        for ax in axes[r]:
            ax.grid(alpha=0.3)
    for ax in sweep_axes:      # headroom above the highest interval for the legend
        ax.set_ylim(lo - 0.08 * (hi - lo), hi + 0.22 * (hi - lo))
    labels = ["before RL"] + [label for name, (label, _, _) in TREE_STYLE.items()
                              if any(p + name in methods for p in rows)]
    handles = [Line2D([], [], color="k", label="before RL")] + [
        Line2D([], [], color=c, ls=ls, label=label) for name, (label, c, ls) in TREE_STYLE.items()
        if any(p + name in methods for p in rows)]
    fig.legend(handles=handles, labels=labels, loc="lower center", ncol=len(handles), fontsize=9,
               title="correct answers and pass@K panels", title_fontsize=9, frameon=False)
    return _save(plt, fig, path, rect=(0, 0.8 / (4.6 * len(rows) + 0.8), 1, 1))


# =============================================================================
# 2. The tiny language model
#
# The task is tiny.py's built-in one (sums of 3-4 one-digit numbers, one addition per line, any legal
# pair first: 3 to 18 solution paths per problem, chosen at the first lines, the forks); the model is the
# tiny model after the demo's supervised warm start on uniformly random paths (tiny.warm_start_tiny, 300
# steps, seed 0; cached in casp_home()), so its first lines have real alternatives. From it, `seeds` RL
# runs per method through train.main (its CLI, explicit flags, a fresh --out folder each), checkpoints
# every `stats_every` steps; per checkpoint, the candidate statistics of the policy's own samples on
# held-out prompts: p(1..3) and entropy at all tokens and at the tokens the entropy gate selects
# (recomputed here: train.py logs the all-token means only). At the end eval.main samples
# `eval_problems` held-out problems x `eval_n` per policy. lm.json, from the saved samples: pass@K with
# 95% bootstrap intervals over problems (per problem the mean of the seeds, problems resampled), each
# seed's pass@K, the paired CaSP - GRPO difference, and per problem: distinct final answers, distinct
# correct responses, distinct first lines of correct responses (the fork taken), distinct valid worked
# solutions (every line a right addition) and the fraction of responses that are one.

LM_TASK: dict = {}      # tiny.synthetic_problems' defaults: the built-in task (3-4 one-digit operands)
LM_MODEL: dict = {}     # the tiny model's config as it is
LM_PRESETS = {
    "default": dict(seeds=3, steps=50, lr=2e-4, prompts=32, group=8, mini_batches=2, warm_steps=300,
                    stats_every=10, stats_prompts=64, stats_n=8, eval_problems=256, eval_n=64,
                    max_new_tokens=40, workers=2),
    "full": dict(seeds=5, steps=200, lr=2e-4, prompts=32, group=8, mini_batches=2, warm_steps=300,
                 stats_every=25, stats_prompts=128, stats_n=8, eval_problems=512, eval_n=64,
                 max_new_tokens=40, workers=2),
}
LM_KS = (1, 2, 4, 8, 16, 32, 64)


def add_lm_args(p):
    p.add_argument("--out", default="runs/miniature-lm")
    p.add_argument("--full", action="store_true", help="the longer preset (more steps, seeds, problems)")
    for k, v in LM_PRESETS["default"].items():
        if k == "methods":
            continue
        p.add_argument("--" + k.replace("_", "-"), type=type(v), default=None,
                       help=f"default {v} ({LM_PRESETS['full'][k]} with --full)")
    p.add_argument("--methods", nargs="+", default=["grpo", "casp"],
                   help="grpo, casp, or casp:alpha=A,neg_scale=L,entropy_quantile=Q (a named variant)")
    p.add_argument("--warm-dir", default=None, help="use this warm start instead of the cached one")


def lm_settings(args) -> dict:
    st = dict(LM_PRESETS["full" if args.full else "default"])
    for k in st:
        v = getattr(args, k, None)
        if v is not None:
            st[k] = v
    st["methods"] = {m.replace(":", "_").replace(",", "_"): parse_method(m) for m in args.methods}
    st["task"], st["model"], st["paper"] = LM_TASK, LM_MODEL, PAPER
    return st


def parse_method(spec: str) -> dict:
    """'grpo' | 'casp' | 'casp:alpha=0.1,neg_scale=1.5,entropy_quantile=none' -> loss settings."""
    name, _, rest = spec.partition(":")
    if name == "grpo":
        return {"loss": "grpo"}
    if name != "casp":
        raise UserError(f"unknown method {spec!r} (grpo, casp or casp:alpha=..,neg_scale=..)")
    m = {"loss": "casp", **PAPER, "top_n": 3}
    for kv in filter(None, rest.split(",")):
        k, _, v = kv.partition("=")
        if k not in ("alpha", "neg_scale", "entropy_quantile", "top_n"):
            raise UserError(f"{spec!r}: unknown setting {k!r}")
        m[k] = None if v.lower() == "none" else (int(v) if k == "top_n" else float(v))
    return m


def lm_problems(n: int, split: str, seed: int = 0) -> list[dict]:
    import tiny
    probs = tiny.synthetic_problems(n, seed=seed, split=split, **LM_TASK)
    return [dict(p, id=f"lm/{p['problem']}") for p in probs]


def write_jsonl(rows, path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def warm_start_dir(st: dict) -> Path:
    """The cached warm start of this task, model and step count (made once)."""
    from model import casp_home
    key = json.dumps([LM_TASK, LM_MODEL, st["warm_steps"], 0], sort_keys=True)
    import hashlib
    return casp_home() / f"miniature-lm-{hashlib.blake2b(key.encode(), digest_size=4).hexdigest()}"


def make_warm_start(st: dict, log=print) -> Path:
    import tiny
    path = warm_start_dir(st)
    if not (path / "config.json").is_file():
        log(f"[lm] warm start: {st['warm_steps']} supervised steps -> {path}")
        torch.set_num_threads(1)
        tiny.warm_start_tiny(path, st["warm_steps"], 0, "cpu", task=LM_TASK, model_overrides=LM_MODEL)
    return path


_VALID: dict = {}


def first_line(text: str) -> str:
    """The first line of a response: where the response commits to which pair it adds first (the fork)."""
    return text.strip().split("\n", 1)[0].strip()


def valid_path(problem: str, text: str) -> bool:
    """Whether a response is one of the problem's valid worked solutions (every line a legal addition,
    right, ending with the right box): tiny.synthetic_solutions enumerates them (18 for 4 operands)."""
    import tiny
    if problem not in _VALID:
        _VALID[problem] = set(tiny.synthetic_solutions({"problem": problem}))
    return text.strip() in _VALID[problem]


@torch.no_grad()
def candidate_stats_lm(model_dir: Path, problems: list[dict], n: int, seed: int, max_new_tokens: int,
                       q: float = 0.8, top_n: int = 3) -> dict:
    """Sample n responses per problem from the model and measure, over every token and over the tokens
    the entropy gate selects: mean p(1..top_n) and entropy; also accuracy, the gate's share of tokens and
    distinct correct paths per problem."""
    from model import load_model, load_tokenizer
    from sampler import generate
    from verifier import reward
    model = load_model(model_dir)
    model.eval()
    tok = load_tokenizer(model_dir)
    prompts = [data.build_prompt(p, tok) for p in problems]
    ro = generate(model, prompts, n_samples=n, max_new_tokens=max_new_tokens, stop_ids=tok.stop_ids,
                  top_n=top_n, seed=seed, vocab_size=tok.vocab_size)
    mask, H, tp = ro.mask, ro.entropy, ro.topn_probs.double()
    gate = casp.entropy_gate(H.double(), mask, q)                                      # (B, L) training's gate
    texts = [tok.decode(t[m].tolist()) for t, m in zip(ro.tokens, ro.mask)]
    r = [reward(x, problems[i // n]["answer"]) for i, x in enumerate(texts)]
    paths = [len({texts[i * n + j].strip() for j in range(n) if valid_path(problems[i]["problem"], texts[i * n + j])})
             for i in range(len(problems))]
    return {"p_all": tp[mask].mean(0).tolist(), "p_gated": tp[gate].mean(0).tolist(),
            "entropy_all": float(H[mask].double().mean()), "entropy_gated": float(H[gate].double().mean()),
            "gate_frac": float(gate.sum() / mask.sum()), "acc": sum(r) / len(r),
            "distinct_valid_paths": sum(paths) / len(paths), "len": float(mask.sum(1).double().mean())}


def _checkpoints(run: Path) -> list[tuple[int, Path]]:
    out = []
    for c in run.glob("ckpt-*"):
        if c.is_dir() and c.name[5:].isdigit():
            out.append((int(c.name[5:]), c / "model" if (c / "model").is_dir() else c))
    return sorted(out)


def _lm_job(job: dict) -> dict:
    """One worker job (own process, one thread, output to job['log']): an RL run (train.main) with its
    checkpoint statistics and final evaluation (eval.main), or the warm start's statistics and evaluation."""
    import contextlib
    torch.set_num_threads(1)
    st, folder = job["settings"], Path(job["folder"])
    folder.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    with open(folder / "log.txt", "a") as f, contextlib.redirect_stdout(f), contextlib.redirect_stderr(f):
        import eval as ev
        stats_probs = lm_problems(st["eval_problems"], "heldout")[:st["stats_prompts"]]
        stats = []
        if job["kind"] == "rl":
            import train
            m = job["method"]
            flags = ["--model", job["warm"], "--data", job["train_data"], "--heldout", job["heldout_data"],
                     "--loss", m["loss"], "--steps", str(st["steps"]), "--seed", str(job["seed"]),
                     "--lr", str(st["lr"]), "--weight-decay", "0", "--prompts-per-step", str(st["prompts"]),
                     "--group-size", str(st["group"]), "--mini-batches", str(st["mini_batches"]),
                     "--max-response-len", str(st["max_new_tokens"]), "--max-prompt-len", "64",
                     "--micro-batch-tokens", "8192", "--eval-every", "0", "--save-every", str(st["stats_every"]),
                     "--keep", str(st["steps"] // st["stats_every"] + 2), "--dtype", "float32", "--device", "cpu",
                     "--out", str(folder / "run")]
            if m["loss"] == "casp":
                flags += ["--alpha", str(m["alpha"]), "--neg-scale", str(m["neg_scale"]), "--top-n", str(m["top_n"])]
                flags += ["--no-entropy-gate"] if m["entropy_quantile"] is None else \
                    ["--entropy-quantile", str(m["entropy_quantile"])]
            train.main(flags)
            ckpts = _checkpoints(folder / "run")
            final = ckpts[-1][1]
        else:
            ckpts = [(0, Path(job["warm"]))]
            final = Path(job["warm"])
        for step, path in ckpts:
            s = candidate_stats_lm(path, stats_probs, st["stats_n"], 7, st["max_new_tokens"])
            stats.append({"step": step, **s})
        ev.main(["--model", str(final), "--data", job["heldout_data"], "--n", str(st["eval_n"]),
                 "--k", *[str(k) for k in LM_KS if k <= st["eval_n"]], "--max-new-tokens", str(st["max_new_tokens"]),
                 "--seed", "0", "--out", str(folder / "eval"), "--no-plot", "--no-progress", "--workers", "1",
                 "--device", "cpu", "--dtype", "float32"])
        sys.stdout.flush()
    (folder / "stats.json").write_text(json.dumps(stats))
    return {"folder": str(folder), "seconds": time.time() - t0}


def _bootstrap(x, n_boot: int = 2000, seed: int = 0):
    """Mean of x (problems along axis 0) and its 95% bootstrap interval over problems."""
    import numpy as np
    x = np.asarray(x, dtype=float)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(x), size=(n_boot, len(x)))
    means = x[idx].mean(1)
    lo, hi = np.percentile(means, [2.5, 97.5], axis=0)
    return np.atleast_1d(x.mean(0)).tolist(), np.atleast_1d(lo).tolist(), np.atleast_1d(hi).tolist()


def eval_arrays(eval_dir: Path, ks) -> dict:
    """Per problem (sorted by id): pass@K (unbiased, eval.pass_at_k), distinct correct paths, distinct
    final answers, from the saved samples of one evaluation."""
    import eval as ev
    recs = sorted(ev.load_run(eval_dir), key=lambda r: r["id"])
    out = {"ids": [r["id"] for r in recs],
           "passk": [[ev.pass_at_k(r["n"], r["n_correct"], k) for k in ks] for r in recs],
           "paths": [len({t.strip() for t in r["responses"] if valid_path(r["id"][3:], t)}) for r in recs],
           "valid_frac": [sum(valid_path(r["id"][3:], t) for t in r["responses"]) / r["n"] for r in recs],
           "correct_texts": [len({t.strip() for t, w in zip(r["responses"], r["rewards"]) if w > 0.5}) for r in recs],
           "first_lines": [len({first_line(t) for t, w in zip(r["responses"], r["rewards"]) if w > 0.5}) for r in recs],
           "answers": [len({a.strip() for a in r["extracted"] if a}) for r in recs],
           "n": min(r["n"] for r in recs)}
    return out


def summarize_lm(folder: Path, st: dict) -> dict:
    """lm.json from the saved samples and statistics of every job in `folder`."""
    ks = [k for k in LM_KS if k <= st["eval_n"]]
    res = {"settings": st, "ks": ks, "policies": {}, "diff": {}}

    def policy_summary(jobs):
        import numpy as np
        arrs = [eval_arrays(Path(j) / "eval", ks) for j in jobs]
        ids = arrs[0]["ids"]
        assert all(a["ids"] == ids for a in arrs), "evaluations on different problems"
        per_seed = np.array([a["passk"] for a in arrs])                      # (seeds, problems, K)
        m, lo, hi = _bootstrap(per_seed.mean(0))                             # per problem: mean of seeds
        out = {"seeds": len(arrs), "problems": len(ids), "n": arrs[0]["n"],
               "passk": dict(zip(map(str, ks), m)), "passk_lo": dict(zip(map(str, ks), lo)),
               "passk_hi": dict(zip(map(str, ks), hi)),
               "passk_seeds": [dict(zip(map(str, ks), a.mean(0).tolist())) for a in per_seed]}
        for key in ("paths", "answers", "valid_frac", "correct_texts", "first_lines"):
            v = np.mean([a[key] for a in arrs], axis=0)
            mm, lo1, hi1 = _bootstrap(v)
            out[f"distinct_{key}"], out[f"distinct_{key}_ci"] = mm[0], [lo1[0], hi1[0]]
            out[f"distinct_{key}_seeds"] = [float(np.mean(a[key])) for a in arrs]
        out["stats"] = [json.loads((Path(j) / "stats.json").read_text()) for j in jobs]
        return out, per_seed

    def seeded(name):
        jobs = sorted(folder.glob(f"{name}-seed*"), key=lambda j: int(j.name.rsplit("seed", 1)[1]))
        return [j for j in jobs if (j / "eval").is_dir() and (j / "stats.json").is_file()]

    res["policies"]["warm start"], _ = policy_summary([folder / "warm"])
    per_problem = {}
    for name in st["methods"]:
        jobs = seeded(name)
        if jobs:
            res["policies"][name], per_problem[name] = policy_summary(jobs)
    if "grpo" in per_problem:
        import numpy as np
        for name in [n for n in st["methods"] if n in per_problem and n != "grpo"]:
            n_common = min(len(per_problem[name]), len(per_problem["grpo"]))
            d = per_problem[name][:n_common] - per_problem["grpo"][:n_common]   # paired by seed index
            m, lo, hi = _bootstrap(d.mean(0))
            # seeds and problems resampled (paired seeds): the interval with the seed-to-seed spread in it
            rng = np.random.default_rng(1)
            boot = np.array([d[rng.integers(0, n_common, n_common)][:, rng.integers(0, d.shape[1], d.shape[1])]
                             .mean((0, 1)) for _ in range(2000)])
            slo, shi = np.percentile(boot, [2.5, 97.5], axis=0)
            key = lambda v: dict(zip(map(str, ks), np.atleast_1d(v).tolist()))  # noqa: E731
            res["diff"][f"{name} - grpo"] = {"passk": key(m), "lo": key(lo), "hi": key(hi), "seeds": n_common,
                                             "lo_seeds": key(slo), "hi_seeds": key(shi),
                                             "per_seed": [key(x) for x in d.mean(1)]}
    return res


def run_lm(args):
    """`miniature.py lm`: warm start (cached), RL runs and evaluations in worker processes, lm.json, lm.png.
    Re-running into a folder with finished jobs reuses them (every job writes a fresh folder)."""
    t0 = time.time()
    st = lm_settings(args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    train_data, heldout_data = out / "data" / "train.jsonl", out / "data" / "heldout.jsonl"
    write_jsonl(lm_problems(5000, "train"), train_data)
    write_jsonl(lm_problems(st["eval_problems"], "heldout"), heldout_data)
    warm = Path(args.warm_dir) if args.warm_dir else make_warm_start(st)
    st["warm_dir"] = str(warm)
    t_warm = time.time() - t0
    base = dict(settings=st, warm=str(warm), train_data=str(train_data), heldout_data=str(heldout_data))
    jobs = [dict(base, kind="warm", folder=str(out / "warm"))]
    for seed in range(st["seeds"]):
        for name, m in st["methods"].items():
            jobs.append(dict(base, kind="rl", method=m, seed=seed, folder=str(out / f"{name}-seed{seed}")))
    todo = [j for j in jobs if not (Path(j["folder"]) / "stats.json").is_file()]
    print(f"[lm] {len(jobs)} jobs ({len(jobs) - len(todo)} already done) in {st['workers']} processes; "
          f"logs in {out}/*/log.txt")
    for j in todo:
        import shutil
        shutil.rmtree(j["folder"], ignore_errors=True)      # a job interrupted earlier starts afresh
    if st["workers"] > 1 and len(todo) > 1:
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor, as_completed
        with ProcessPoolExecutor(st["workers"], mp_context=mp.get_context("spawn")) as pool:
            futs = [pool.submit(_lm_job, j) for j in todo]
            for f in as_completed(futs):
                r = f.result()
                print(f"[lm] done {Path(r['folder']).name} in {r['seconds']:.0f}s ({time.time() - t0:.0f}s)")
    else:
        for j in todo:
            r = _lm_job(j)
            print(f"[lm] done {Path(r['folder']).name} in {r['seconds']:.0f}s ({time.time() - t0:.0f}s)")
    res = summarize_lm(out, st)
    res["seconds"] = {"total": round(time.time() - t0, 1), "warm_start": round(t_warm, 1)}
    (out / "lm.json").write_text(json.dumps(res, indent=1))
    print(format_lm(res))
    for p in plot_lm(res, out):
        print(f"wrote {p}")
    return res


def format_lm(res: dict) -> str:
    """The table of lm.json: pass@K [95% CI] per policy, then per problem the distinct final answers,
    correct responses and first lines of correct responses, the share of valid worked solutions, and
    p(1..3) at gated / all tokens at the last checkpoint (mean of seeds)."""
    ks = res["ks"]
    lines = ["| policy | seeds | " + " | ".join(f"pass@{k}" for k in ks) + " | answers | correct responses | "
             "first lines (correct) | valid solutions | p(1..3) gated | p(1..3) all |", "|" + "---|" * (len(ks) + 8)]
    for name, p in res["policies"].items():
        cells = [f"{100 * p['passk'][str(k)]:.1f} "
                 f"[{100 * p['passk_lo'][str(k)]:.1f}, {100 * p['passk_hi'][str(k)]:.1f}]" for k in ks]
        last = [s[-1] for s in p["stats"]]
        g = "/".join(f"{sum(s['p_gated'][i] for s in last) / len(last):.3f}" for i in range(3))
        a = "/".join(f"{sum(s['p_all'][i] for s in last) / len(last):.3f}" for i in range(3))
        lines.append(f"| {name} | {p['seeds']} | " + " | ".join(cells) +
                     f" | {p['distinct_answers']:.2f} | {p['distinct_correct_texts']:.2f} | "
                     f"{p['distinct_first_lines']:.2f} | {100 * p['distinct_valid_frac']:.1f}% | {g} | {a} |")
    for name, d in res["diff"].items():
        lines.append(f"| {name} (CI: problems) | {d.get('seeds', '')} | " + " | ".join(
            f"{100 * d['passk'][str(k)]:+.1f} [{100 * d['lo'][str(k)]:+.1f}, {100 * d['hi'][str(k)]:+.1f}]"
            for k in ks) + " | | | | | | |")
        if "lo_seeds" in d:
            lines.append(f"| {name} (CI: seeds and problems) | {d['seeds']} | " + " | ".join(
                f"{100 * d['passk'][str(k)]:+.1f} [{100 * d['lo_seeds'][str(k)]:+.1f}, "
                f"{100 * d['hi_seeds'][str(k)]:+.1f}]" for k in ks) + " | | | | | | |")
    return "\n".join(lines)


LM_COLORS = {"warm start": "k", "grpo": "tab:red", "casp": "tab:blue"}


def plot_lm(res: dict, folder: Path) -> list[Path]:
    """lm.png: pass@K with 95% bands (mean of seeds; thin lines: each seed), CaSP - GRPO (paired, 95%),
    p(1..3) at gated tokens and at all tokens over steps (mean of seeds, band: min..max), distinct
    correct paths and answers per problem."""
    plt = _pyplot()
    if plt is None:
        return []
    ks = res["ks"]
    fig, axes = plt.subplots(1, 5, figsize=(26, 4.8))
    colors = dict(LM_COLORS)
    extra = iter(["tab:green", "tab:purple", "tab:orange", "tab:brown"])
    for name in res["policies"]:
        colors.setdefault(name, next(extra, "tab:gray"))
    ax = axes[0]
    for name, p in res["policies"].items():
        c = colors[name]
        ax.plot(ks, [p["passk"][str(k)] for k in ks], color=c, marker="o", ms=3,
                label=f"{name} ({p['seeds']} seed{'s' if p['seeds'] > 1 else ''})")
        ax.fill_between(ks, [p["passk_lo"][str(k)] for k in ks], [p["passk_hi"][str(k)] for k in ks],
                        color=c, alpha=0.15, lw=0)
        for s in p["passk_seeds"] if p["seeds"] > 1 else []:
            ax.plot(ks, [s[str(k)] for k in ks], color=c, lw=0.5, alpha=0.6)
    p0 = next(iter(res["policies"].values()))
    ax.set(xlabel="K", ylabel="pass@K", title=f"held-out pass@K ({p0['problems']} problems x {p0['n']} samples)")
    ax = axes[1]
    for j, (name, d) in enumerate(res["diff"].items()):
        c = colors.get(name.split(" - ")[0], "tab:blue")
        ax.plot(ks, [d["passk"][str(k)] for k in ks], color=c, marker="o", ms=3, label=name)
        ax.fill_between(ks, [d["lo"][str(k)] for k in ks], [d["hi"][str(k)] for k in ks], color=c, alpha=0.25, lw=0,
                        label="95%: problems resampled" if j == 0 else None)
        if "lo_seeds" in d:
            ax.fill_between(ks, [d["lo_seeds"][str(k)] for k in ks], [d["hi_seeds"][str(k)] for k in ks], color=c,
                            alpha=0.1, lw=0, label="95%: seeds and problems resampled" if j == 0 else None)
            for i, ps in enumerate(d["per_seed"]):
                ax.plot(ks, [ps[str(k)] for k in ks], color=c, lw=0.6, alpha=0.7,
                        label="each seed" if i == 0 and j == 0 else None)
    ax.axhline(0, color="k", lw=0.8)
    ax.set(xlabel="K", ylabel="difference of pass@K", title="paired difference (same seeds), 95% bootstrap")
    for ax in axes[:2]:
        ax.set_xscale("log", base=2)
        ax.set_xticks(ks, [str(k) for k in ks])
        ax.minorticks_off()
    warm_stats = res["policies"]["warm start"]["stats"][0][0]
    for ax, key, title in ((axes[2], "p_gated", "p(1..3) at gated tokens"),
                           (axes[3], "p_all", "p(1..3) at all tokens")):
        for name, p in res["policies"].items():
            if name == "warm start":
                continue
            for i, ls in enumerate(("-", "--", ":")):
                steps = [0] + [s["step"] for s in p["stats"][0]]
                ys = [[warm_stats[key][i]] + [s[key][i] for s in run] for run in p["stats"]]
                mean = [sum(v) / len(v) for v in zip(*ys)]
                ax.plot(steps, mean, color=colors[name], ls=ls, label=f"p({i + 1}) {name}")
                ax.fill_between(steps, [min(v) for v in zip(*ys)], [max(v) for v in zip(*ys)],
                                color=colors[name], alpha=0.12, lw=0)
        ax.set(xlabel="RL step", ylabel="mean probability", title=title + " (policy's own samples)")
    ax = axes[4]
    names = list(res["policies"])
    keys = (("answers", "final answers"), ("correct_texts", "correct responses"),
            ("first_lines", "first lines of correct"))
    for j, (key, label) in enumerate(keys):
        vals = [res["policies"][n][f"distinct_{key}"] for n in names]
        ci = [res["policies"][n][f"distinct_{key}_ci"] for n in names]
        xs = [i + (j - 1) * 0.27 for i in range(len(names))]
        ax.bar(xs, vals, 0.26, yerr=[[v - c[0] for v, c in zip(vals, ci)], [c[1] - v for v, c in zip(vals, ci)]],
               capsize=3, color=[colors[n] for n in names], alpha=(0.9, 0.6, 0.35)[j], edgecolor="k", lw=0.5)
        ax.bar([0], [0], 0, color="gray", alpha=(0.9, 0.6, 0.35)[j], edgecolor="k", lw=0.5, label=label)
    ax.set_xticks(range(len(names)), names, rotation=15, fontsize=8)
    ax.set(ylabel=f"distinct per problem (of {p0['n']} samples)",
           title="distinct answers / correct responses / first lines")
    for ax in axes:
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    return [_save(plt, fig, folder / "lm.png")]


# =============================================================================
# Command line


def _tree_config(args) -> TreeConfig:
    cfg = TreeConfig()
    for f in ("seeds", "steps", "problems", "shared_problems", "lr", "workers", "depth", "branching"):
        v = getattr(args, f, None)
        if v is not None:
            setattr(cfg, f, v)
    if args.forks:
        cfg.forks = tuple(args.forks)
    if args.policies:
        cfg.policies = tuple(args.policies)
    if args.methods:
        cfg.methods = tuple(args.methods)
    return cfg


def replot(folder: Path) -> list[Path]:
    """Redraw every figure of a results folder from its saved results (tree.json, lm.json)."""
    done = []
    if (folder / "tree.json").is_file():
        res = json.loads((folder / "tree.json").read_text())
        done.append(plot_tree_methods(res, folder / "tree_methods.png") if is_comparison(res)
                    else plot_tree(res, folder / "tree.png"))
    if (folder / "lm.json").is_file():
        done += plot_lm(json.loads((folder / "lm.json").read_text()), folder)
    if not done:
        raise UserError(f"{folder} holds neither tree.json nor lm.json")
    return [p for p in done if p]


def main(argv=None):
    p = cli.ArgumentParser(description=__doc__.split("\n")[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--replot", metavar="DIR", help="redraw the figures of DIR from its saved results")
    sub = p.add_subparsers(dest="cmd")
    t = sub.add_parser("tree", help="the exact token-tree experiment (about a minute)")
    t.add_argument("--out", default="runs/miniature")
    t.add_argument("--seeds", type=int, help=f"instances per method (default {TreeConfig.seeds})")
    t.add_argument("--steps", type=int, help=f"RL steps (default {TreeConfig.steps})")
    t.add_argument("--problems", type=int, help=f"table policy's problems (default {TreeConfig.problems})")
    t.add_argument("--shared-problems", type=int,
                   help=f"shared policy's problems (default {TreeConfig.shared_problems})")
    t.add_argument("--lr", type=float, help=f"AdamW learning rate (default {TreeConfig.lr})")
    t.add_argument("--depth", type=int, help=f"tokens per response (default {TreeConfig.depth})")
    t.add_argument("--branching", type=int, help=f"vocabulary (default {TreeConfig.branching})")
    t.add_argument("--forks", type=int, nargs="+", help=f"fork depths (default {TreeConfig.forks})")
    t.add_argument("--policies", nargs="+", choices=["table", "shared"], help="default: both")
    t.add_argument("--workers", type=int, help=f"processes (default {TreeConfig.workers})")
    t.add_argument("--methods", nargs="+", help="ablations (default: GRPO, CaSP and its ablations), all (every "
                   f"method of casp.METHODS and GRPO + entropy bonus), or names: {', '.join(COMPARISON)}")
    t.add_argument("--no-plot", action="store_true")
    lm = sub.add_parser("lm", help="the tiny language model (<= 15 min; --full: longer)")
    add_lm_args(lm)
    args = p.parse_args(argv)
    with cli.one_line_errors():
        run(p, args)


def run(p, args):
    if args.replot:
        for path in replot(Path(args.replot)):
            print(f"wrote {path}")
        return
    if args.cmd == "tree":
        out = Path(args.out)
        res = run_tree(_tree_config(args), out, plot=not args.no_plot)
        png = out / ("tree_methods.png" if is_comparison(res) else "tree.png")
        print(f"wrote {out / 'tree.json'}" + (f", {out / 'tree_methods.md'}" if is_comparison(res) else "")
              + ("" if args.no_plot else f" and {png}"))
    elif args.cmd == "lm":
        run_lm(args)
    else:
        p.print_help()


if __name__ == "__main__":
    main()
