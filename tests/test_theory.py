"""theory.py: the expected number of distinct responses, exact on token trees, by Monte Carlo on trees and
through the sampler on a real model, and its collapse to 1 as every top-1 probability goes to 1."""
import math

import pytest
import torch
import torch.nn.functional as F

import theory
from model import ModelConfig, Transformer


TREE = [("a", 0.6, [("x", 0.9, []), ("y", 0.1, [])]),
        ("b", 0.3, []),
        ("c", 0.1, [("z", 1.0, [])])]


def test_expected_distinct_exact_on_a_hand_tree():
    """pi = {ax: .54, ay: .06, b: .3, cz: .1}; E[#distinct] = sum 1-(1-pi)^K by hand; the bound holds."""
    probs = theory.response_probs(TREE)
    assert probs == pytest.approx({("a", "x"): 0.54, ("a", "y"): 0.06, ("b",): 0.3, ("c", "z"): 0.1})
    for K in (1, 2, 5, 50):
        hand = sum(1 - (1 - p) ** K for p in (0.54, 0.06, 0.3, 0.1))
        assert theory.expected_distinct(TREE, K) == pytest.approx(hand, abs=1e-12)
        assert theory.expected_distinct(TREE, K) <= theory.distinct_upper_bound(TREE, K) + 1e-12
    assert theory.greedy_response(TREE) == (("a", "x"), pytest.approx(0.54))
    with pytest.raises(ValueError, match="summing"):
        theory.response_probs([("a", 0.5, [])])


def test_monte_carlo_on_the_tree_agrees_with_exact():
    """MC mean over 4000 trials within 4 standard errors of the exact value (false failure ~6e-5 each)."""
    for K in (2, 8):
        exact = theory.expected_distinct(TREE, K)
        mean, se = theory.mc_distinct_tree(TREE, K, trials=4000, seed=K)
        assert abs(mean - exact) < 4 * se, (K, mean, exact, se)
    tree = theory.peaked_tree(depth=3, branching=3, top1=0.7)
    mean, se = theory.mc_distinct_tree(tree, 16, trials=2000, seed=1)
    assert abs(mean - theory.expected_distinct(tree, 16)) < 4 * se


def test_distinct_responses_tend_to_one_as_top1_tends_to_one():
    """On a depth-8, 4-way tree with every per-step top-1 probability q: E[#distinct among K=64] falls
    toward 1 as q -> 1, stays under 1 + K(1 - q^8), and is within 1e-3 of 1 at q = 1 - 1e-7."""
    K, prev = 64, math.inf
    for q in (0.5, 0.9, 0.99, 0.999, 0.9999, 1 - 1e-7):
        tree = theory.peaked_tree(depth=8, branching=4, top1=q)
        e = theory.expected_distinct(tree, K)
        bound = theory.distinct_upper_bound(tree, K)
        assert bound == pytest.approx(1 + K * (1 - q ** 8))
        assert 1 - 1e-12 <= e <= bound + 1e-9 and e < prev
        prev = e
    assert prev - 1 < 1e-3
    assert theory.expected_distinct(theory.peaked_tree(8, 4, 0.5), K) > 50   # a flat policy: almost all distinct


def test_monte_carlo_through_the_sampler_agrees_with_exact_model_probabilities():
    """A random 2-layer model with a 5-token vocabulary and 2 new tokens: pi(y1 y2) computed exactly from
    its forward pass over all 25 responses; the sampler's Monte Carlo count (600 trials of K = 4) lies
    within 4 standard errors."""
    cfg = ModelConfig(vocab_size=5, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    model = Transformer(cfg)
    model.init_weights(std=0.6, generator=torch.Generator().manual_seed(3))
    model.eval()
    prompt = [1, 2, 3]
    with torch.no_grad():
        seqs = torch.tensor([prompt + [a] for a in range(5)])                           # (5, 4)
        logp = F.log_softmax(model(seqs).float(), -1)                                   # (5, 4, 5)
    probs = {(a, b): math.exp(logp[0, 2, a] + logp[a, 3, b]) for a in range(5) for b in range(5)}
    assert sum(probs.values()) == pytest.approx(1.0, abs=1e-5)
    K = 4
    exact = theory.expected_distinct(probs, K)
    mean, se = theory.mc_distinct_model(model, prompt, K, trials=600, max_new_tokens=2, seed=0)
    assert abs(mean - exact) < 4 * se, (mean, exact, se)
    assert 1.2 < exact < 3.9            # neither collapsed nor uniform: the check can fail


