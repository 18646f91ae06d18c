"""
passk.py: pass@k, the unbiased estimator of Chen et al. (2021) from n samples of which c are correct.

    pass@k = 1 - C(n-c, k) / C(n, k)

train.py (its held-out pass@1 and pass@n) and eval.py (the pass@K tables) both use `pass_at_k`;
casp.passk_advantages (Pass@k Training) is built on the same quantity for a group of G responses.
Plain Python: importing it loads neither torch nor a command-line tool.
"""
from __future__ import annotations


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples with c correct: 1 - C(n-c, k) / C(n, k).

    Product form: C(n-c, k) / C(n, k) = prod_{i=n-c+1}^{n} (1 - k/i), c factors each in [0, 1), so nothing
    overflows and no catastrophic cancellation happens before the final 1 - x.
    """
    for name, v in (("n", n), ("c", c), ("k", k)):
        if isinstance(v, bool) or not isinstance(v, int):
            raise ValueError(f"pass_at_k: {name}={v!r} must be an int")
    if n < 1:
        raise ValueError(f"pass_at_k: n={n} must be >= 1")
    if not 0 <= c <= n:
        raise ValueError(f"pass_at_k: c={c} must be in [0, n={n}]")
    if not 1 <= k <= n:
        raise ValueError(f"pass_at_k: k={k} must be in [1, n={n}] (draw at least k samples per problem)")
    if n - c < k:       # every k-subset holds a correct sample
        return 1.0
    prod = 1.0
    for i in range(n - c + 1, n + 1):
        prod *= 1.0 - k / i
    return 1.0 - prod
