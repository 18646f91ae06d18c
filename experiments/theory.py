"""
theory.py: the token tree, and on it the paper's theory check on the number of distinct responses.

A token tree is a TreeShape and one logit vector per node, logits (..., n_nodes, V) (any leading dims:
miniature.py stacks seeds and problems). A response is at most `depth` tokens from a vocabulary of
V = `branching` ids. At the fork depths every id continues the response; at the other depths id 0
continues and any other id ends it there. So a tree has V^len(forks) full-length responses (its
leaves, `leaf` order) and the responses that end early; `forks = range(depth)` gives the complete tree.
One implementation serves both uses: `walk` (the probability of reaching every node), `tree_sample`
(sampling by inverse CDF) and `at_least_once` are what miniature.py's RL experiment measures and trains
with, and what the check below is computed with.

The check (arXiv 2510.14807): for K i.i.d. responses y ~ pi(.|x),
    E[#distinct] = sum_y [1 - (1 - pi(y))^K]  <=  1 + K (1 - pi(y*)),   pi(y*) = prod_l p_l(1),
where y* is the greedy (all top-1) response: y* counts at most once, every other y at most K pi(y).
`expected_distinct` computes it exactly from `response_probs`; `mc_distinct_tree` estimates it by Monte
Carlo on the tree, `mc_distinct_model` on a language model through the project's sampler. `peaked_tree`
builds trees whose every per-step top-1 probability is a given value: as it goes to 1, E[#distinct]
goes to 1 for any K (the collapse CaSP counteracts).
"""
from __future__ import annotations

import math

import torch


class TreeShape:
    """Node bookkeeping. Nodes at depth d are indexed by the fork choices made before d: there are
    branching^k(d) of them (k(d) = forks before d), numbered offset[d] + index. A fork child of index i
    via id t has index i * branching + t; a non-fork child (id 0) keeps index i."""

    def __init__(self, depth: int, branching: int, forks):
        forks = sorted(set(int(f) for f in forks))
        if not forks or forks[0] < 0 or forks[-1] >= depth:
            raise ValueError(f"forks {forks} must be a non-empty subset of 0..depth-1={depth - 1}")
        if branching < 2:
            raise ValueError("branching must be >= 2")
        self.depth, self.branching, self.forks = depth, branching, forks
        self.is_fork = [d in forks for d in range(depth)]
        k = [sum(f < d for f in forks) for d in range(depth)]
        self.width = [branching ** kd for kd in k]
        self.offset = [sum(self.width[:d]) for d in range(depth)]
        self.n_nodes = sum(self.width)
        self.n_leaves = branching ** len(forks)     # full-length answers (the only ones that can be correct)


def walk(shape: TreeShape, logits: torch.Tensor):
    """The probability of reaching every node, in float64. logits (..., n_nodes, V). Returns reach, probs
    (lists over depths d: (..., W_d) the probability of reaching each node of depth d, and (..., W_d, V)
    its next-token distribution, the softmax of its logits) and leaf (..., n_leaves): the probability
    of each full-length response."""
    lead = logits.shape[:-2]
    reach = torch.ones(*lead, 1, dtype=torch.float64, device=logits.device)
    reaches, probs = [], []
    for d in range(shape.depth):
        z = logits[..., shape.offset[d]:shape.offset[d] + shape.width[d], :].double()
        pd = torch.softmax(z, -1)                                                     # (..., W, V)
        reaches.append(reach)
        probs.append(pd)
        if shape.is_fork[d]:
            reach = (reach[..., None] * pd).reshape(*lead, -1)                        # (..., W * V)
        else:
            reach = reach * pd[..., 0]                                                # (..., W)
    return reaches, probs, reach


def response_probs(shape: TreeShape, logits: torch.Tensor) -> torch.Tensor:
    """pi(y) of every response, (..., R): the full-length ones (leaf order), then those that end early
    (a non-0 id at a non-fork depth), by depth, node and id. They sum to 1."""
    reaches, probs, leaf = walk(shape, logits)
    ended = [(reach[..., None] * pd[..., 1:]).flatten(-2)                            # (..., W * (V - 1))
             for d, (reach, pd) in enumerate(zip(reaches, probs)) if not shape.is_fork[d]]
    return torch.cat([leaf, *ended], -1)


def at_least_once(p: torch.Tensor, K):
    """1 - (1 - p)^K, the probability that an outcome of probability p is among K i.i.d. draws, as
    -expm1(K log1p(-p)): accurate for tiny p, where 1 - p rounds to 1. K: a number, or a 1-D tensor of
    them (then the result has a trailing dim, one entry per K)."""
    log_miss = torch.log1p(-p.clamp(max=1.0))
    return -torch.expm1(K * log_miss[..., None] if torch.is_tensor(K) else K * log_miss)


def expected_distinct(probs: torch.Tensor, K: int) -> torch.Tensor:
    """E[#distinct responses among K i.i.d. samples] = sum_y [1 - (1 - pi(y))^K], exactly. probs: pi(y)
    of every response (..., R), e.g. response_probs of a tree."""
    return at_least_once(probs.double(), K).sum(-1)


def greedy_response(shape: TreeShape, logits: torch.Tensor) -> tuple[tuple[int, ...], float]:
    """(y*, pi(y*)) of one tree (logits (n_nodes, V)): the all-top-1 response and prod_l p_l(1)."""
    y, prob, i = (), 1.0, 0
    for d in range(shape.depth):
        p = torch.softmax(logits[shape.offset[d] + i].double(), -1)                  # (V,)
        t = int(p.argmax())
        y, prob = y + (t,), prob * float(p[t])
        if shape.is_fork[d]:
            i = i * shape.branching + t
        elif t != 0:
            break                                                                     # the response ends here
    return y, prob


def distinct_upper_bound(shape: TreeShape, logits: torch.Tensor, K: int) -> float:
    """The paper's bound 1 + K (1 - pi(y*)) on E[#distinct]: y* counts at most 1, every other response
    y at most K pi(y) (Bernoulli's inequality)."""
    return 1.0 + K * (1.0 - greedy_response(shape, logits)[1])


def peaked_tree(depth: int, branching: int, top1: float) -> tuple[TreeShape, torch.Tensor]:
    """A complete tree (every depth a fork) in which every node puts `top1` on id 0 and spreads the rest
    evenly: (shape, logits (n_nodes, V)), the logits log-probabilities."""
    shape = TreeShape(depth, branching, range(depth))
    p = torch.tensor([top1] + [(1.0 - top1) / (branching - 1)] * (branching - 1), dtype=torch.float64)
    return shape, p.log().expand(shape.n_nodes, branching).clone()


def tree_sample(shape: TreeShape, logits: torch.Tensor, u: torch.Tensor):
    """Sample responses of the policy with logits (S, P, n_nodes, V) (no grad), by inverse CDF with the
    uniforms u (S, P, G, depth). Returns tokens, mask, nodes, logprobs (S, P, G, depth): the sampled ids,
    which positions are part of the response, the node each token was drawn at (0 where masked) and its
    log-probability (log_softmax of the node's logits); leaf (S, P, G): the full-length answer reached;
    finished (S, P, G): whether the response reached full length (only those can be correct)."""
    S, P, _, V = logits.shape
    G = u.shape[2]
    idx = torch.zeros(S, P, G, dtype=torch.long)
    alive = torch.ones(S, P, G, dtype=torch.bool)
    tokens = torch.zeros(S, P, G, shape.depth, dtype=torch.long)
    mask = torch.zeros(S, P, G, shape.depth, dtype=torch.bool)
    nodes = torch.zeros(S, P, G, shape.depth, dtype=torch.long)
    logprobs = torch.zeros(S, P, G, shape.depth, dtype=logits.dtype)
    for d in range(shape.depth):
        node = shape.offset[d] + idx                                                  # (S, P, G)
        lp = torch.log_softmax(logits.gather(2, node[..., None].expand(S, P, G, V)), -1)  # (S, P, G, V)
        cdf = lp.exp().cumsum(-1)
        tok = (cdf <= u[..., d:d + 1] * cdf[..., -1:]).sum(-1).clamp(max=V - 1)       # (S, P, G)
        tok = torch.where(alive, tok, 0)
        tokens[..., d] = tok
        mask[..., d] = alive
        nodes[..., d] = torch.where(alive, node, 0)
        logprobs[..., d] = torch.where(alive, lp.gather(-1, tok[..., None]).squeeze(-1), 0.0)
        if shape.is_fork[d]:
            idx = idx * V + tok
        else:
            alive = alive & (tok == 0)
    return tokens, mask, nodes, logprobs, idx, alive


def n_distinct(tokens: torch.Tensor, mask: torch.Tensor, V: int) -> torch.Tensor:
    """The number of distinct responses in each row of K sampled responses, tokens and mask (..., K, D)
    with ids < V: each response is coded as one integer, its ids + 1 as digits base V + 1 (0 after its
    end), so two codes are equal exactly when the token sequences are."""
    D = tokens.shape[-1]
    if (V + 1) ** D >= 2 ** 63:
        raise ValueError(f"responses of {D} tokens from {V} ids do not fit one int64 code")
    digits = torch.where(mask, tokens + 1, 0)                                         # (..., K, D)
    codes = (digits * (V + 1) ** torch.arange(D)).sum(-1).sort(-1).values            # (..., K)
    return (codes.diff(dim=-1) != 0).sum(-1) + 1


def _mean_stderr(xs: list[float]) -> tuple[float, float]:
    m = sum(xs) / len(xs)
    if len(xs) < 2:
        return m, float("nan")
    var = sum((x - m) ** 2 for x in xs) / (len(xs) - 1)
    return m, math.sqrt(var / len(xs))


def mc_distinct_tree(shape: TreeShape, logits: torch.Tensor, K: int, trials: int = 1000,
                     seed: int = 0) -> tuple[float, float]:
    """Monte Carlo (mean, standard error) of #distinct among K samples of one tree (logits (n_nodes, V)),
    drawn by tree_sample: `trials` independent draws of K."""
    u = torch.rand(1, 1, trials * K, shape.depth, generator=torch.Generator().manual_seed(seed),
                   dtype=torch.float64)
    tokens, mask, *_ = tree_sample(shape, logits.double()[None, None], u)
    counts = n_distinct(tokens.reshape(trials, K, -1), mask.reshape(trials, K, -1), shape.branching)
    return _mean_stderr(counts.double().tolist())


def mc_distinct_model(model, prompt_ids: list[int], K: int, trials: int = 100, max_new_tokens: int = 64,
                      stop_ids=(), temperature: float = 1.0, top_p: float = 1.0, seed: int = 0,
                      vocab_size: int | None = None) -> tuple[float, float]:
    """Monte Carlo (mean, standard error) of #distinct responses (token sequences) among K samples of a
    model: one sampler call with the prompt repeated `trials` times (each copy gets its own random streams)
    and K samples per copy."""
    import sampler

    ro = sampler.generate(model, [list(prompt_ids)] * trials, n_samples=K, max_new_tokens=max_new_tokens,
                          temperature=temperature, top_p=top_p, stop_ids=stop_ids, seed=seed,
                          vocab_size=vocab_size)
    rows = [tuple(t[m].tolist()) for t, m in zip(ro.tokens, ro.mask)]
    return _mean_stderr([len(set(rows[i * K:(i + 1) * K])) for i in range(trials)])
