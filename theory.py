"""
theory.py: the paper's theory check on the number of distinct responses (docs/paper.md, "The problem").

For K i.i.d. responses y ~ pi(.|x),
    E[#distinct] = sum_y [1 - (1 - pi(y))^K]  <=  1 + K (1 - pi(y*)),   pi(y*) = prod_l p_l(1),
where y* is the greedy (all top-1) response. It is computed exactly for an explicit token tree
(`expected_distinct`), estimated by Monte Carlo on the tree (`mc_distinct_tree`) or on a model through the
sampler (`mc_distinct_model`). `peaked_tree` builds trees whose every per-step top-1 probability is a
given value: as it goes to 1, E[#distinct] goes to 1 for any K (the collapse CaSP counteracts).

A token tree is a list of (token, prob, subtree) children of the root; an empty subtree ends the
response. The probabilities of each node's children sum to 1. `expected_distinct` also takes a
{response: probability} dict directly.
"""
from __future__ import annotations

import math
import random

# response. The probabilities of each node's children sum to 1.


def response_probs(tree, _prefix=()) -> dict[tuple, float]:
    """pi(y) of every complete response y (a tuple of tokens) of a token tree."""
    total = sum(p for _, p, _ in tree)
    if abs(total - 1.0) > 1e-9:
        raise ValueError(f"children of {_prefix or 'the root'} have probabilities summing to {total}, not 1")
    out: dict[tuple, float] = {}
    for tok, p, sub in tree:
        if p <= 0:
            continue
        y = _prefix + (tok,)
        for yy, q in (response_probs(sub, y).items() if sub else [(y, 1.0)]):
            out[yy] = out.get(yy, 0.0) + p * q
    return out


def expected_distinct(policy, K: int) -> float:
    """E[#distinct responses among K i.i.d. samples] = sum_y [1 - (1 - pi(y))^K], exactly.

    policy: a token tree or a dict {response: pi(response)}. (1 - p)^K is computed as exp(K log1p(-p)),
    accurate for tiny p where 1 - p rounds to 1."""
    probs = policy if isinstance(policy, dict) else response_probs(policy)
    return sum(-math.expm1(K * math.log1p(-p)) if p < 1 else 1.0 for p in probs.values())


def greedy_response(tree) -> tuple[tuple, float]:
    """(y*, pi(y*)): the all-top-1 response and its probability prod_l p_l(1)."""
    y, prob = (), 1.0
    while tree:
        tok, p, sub = max(tree, key=lambda child: child[1])
        y, prob, tree = y + (tok,), prob * p, sub
    return y, prob


def distinct_upper_bound(tree, K: int) -> float:
    """The paper's bound 1 + K (1 - pi(y*)) on E[#distinct]: y* counts at most 1, every other response
    y at most K pi(y) (Bernoulli's inequality)."""
    return 1.0 + K * (1.0 - greedy_response(tree)[1])


def peaked_tree(depth: int, branching: int, top1: float):
    """A complete tree in which every step puts `top1` on token 0 and spreads the rest evenly."""
    if depth == 0:
        return []
    rest = (1.0 - top1) / (branching - 1)
    sub = peaked_tree(depth - 1, branching, top1)
    return [(t, top1 if t == 0 else rest, sub) for t in range(branching)]


def sample_tree(tree, rng: random.Random) -> tuple:
    y = ()
    while tree:
        u, acc = rng.random(), 0.0
        for tok, p, sub in tree:
            acc += p
            if u < acc:
                break
        y, tree = y + (tok,), sub
    return y


def _mean_stderr(xs: list[float]) -> tuple[float, float]:
    m = sum(xs) / len(xs)
    if len(xs) < 2:
        return m, float("nan")
    var = sum((x - m) ** 2 for x in xs) / (len(xs) - 1)
    return m, math.sqrt(var / len(xs))


def mc_distinct_tree(tree, K: int, trials: int = 1000, seed: int = 0) -> tuple[float, float]:
    """Monte Carlo (mean, standard error) of #distinct among K samples drawn from the tree."""
    rng = random.Random(seed)
    return _mean_stderr([len({sample_tree(tree, rng) for _ in range(K)}) for _ in range(trials)])


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
