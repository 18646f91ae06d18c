"""experiments/theory.py: the expected number of distinct responses, exact on token trees (the same tree
miniature.py trains), by Monte Carlo on trees and through the sampler on a real model, and its collapse to
1 as every top-1 probability goes to 1."""
import math

import pytest
import torch
import torch.nn.functional as F

from experiments import theory
from model import ModelConfig, Transformer


def hand_tree(root=(0.6, 0.3, 0.1)):
    """Depth 2, ids {0, 1, 2}, fork at depth 1: at the root id 0 continues and ids 1, 2 end the response;
    after id 0 every id ends it at full length. Responses: 00, 01, 02 (leaves), then 1 and 2."""
    shape = theory.TreeShape(2, 3, (1,))
    logits = torch.tensor([root, (0.9, 0.06, 0.04)], dtype=torch.float64).log()        # (n_nodes, V)
    return shape, logits


def test_expected_distinct_exact_on_a_hand_tree():
    """pi = {00: .54, 01: .036, 02: .024, 1: .3, 2: .1}; E[#distinct] = sum 1-(1-pi)^K by hand; the bound
    1 + K(1 - pi(y*)) holds, with y* the all-top-1 response, also when y* ends early."""
    shape, z = hand_tree()
    pi = theory.response_probs(shape, z)
    hand = [0.54, 0.036, 0.024, 0.3, 0.1]
    assert pi.tolist() == pytest.approx(hand, abs=1e-15)
    for K in (1, 2, 5, 50):
        want = sum(1 - (1 - p) ** K for p in hand)
        e = theory.expected_distinct(pi, K).item()
        assert e == pytest.approx(want, abs=1e-12)
        assert e <= theory.distinct_upper_bound(shape, z, K) + 1e-12
    assert theory.greedy_response(shape, z) == ((0, 0), pytest.approx(0.54))
    shape, z = hand_tree(root=(0.3, 0.6, 0.1))                  # the greedy response is "1", one token
    assert theory.greedy_response(shape, z) == ((1,), pytest.approx(0.6))
    assert theory.distinct_upper_bound(shape, z, 4) == pytest.approx(1 + 4 * 0.4)


def test_n_distinct_counts_token_sequences():
    """A response is its ids up to its end: a response that ends after id 1 differs from a full-length
    one whose second id is 0; equal sequences count once."""
    tokens = torch.tensor([[[0, 0], [0, 0], [1, 0], [1, 0], [0, 2]]])                   # (1, K=5, D=2)
    mask = torch.tensor([[[True, True], [True, True], [True, False], [True, True], [True, True]]])
    assert theory.n_distinct(tokens, mask, 3).tolist() == [4]
    assert theory.n_distinct(tokens[:, :2], mask[:, :2], 3).tolist() == [1]


def test_monte_carlo_on_the_tree_agrees_with_exact():
    """tree_sample's Monte Carlo mean over 4000 trials within 4 standard errors of the exact value (false
    failure ~6e-5 each), on the hand tree (40% of its mass on responses that end early) and a peaked one."""
    shape, z = hand_tree()
    for K in (2, 8):
        exact = theory.expected_distinct(theory.response_probs(shape, z), K).item()
        mean, se = theory.mc_distinct_tree(shape, z, K, trials=4000, seed=K)
        assert abs(mean - exact) < 4 * se, (K, mean, exact, se)
    shape, z = theory.peaked_tree(depth=3, branching=3, top1=0.7)
    mean, se = theory.mc_distinct_tree(shape, z, 16, trials=2000, seed=1)
    assert abs(mean - theory.expected_distinct(theory.response_probs(shape, z), 16).item()) < 4 * se


def test_distinct_responses_tend_to_one_as_top1_tends_to_one():
    """On a depth-8, 4-way tree with every per-step top-1 probability q: E[#distinct among K=64] falls
    toward 1 as q -> 1, stays under 1 + K(1 - q^8), and is within 1e-3 of 1 at q = 1 - 1e-7."""
    K, prev = 64, math.inf
    for q in (0.5, 0.9, 0.99, 0.999, 0.9999, 1 - 1e-7):
        shape, z = theory.peaked_tree(depth=8, branching=4, top1=q)
        e = theory.expected_distinct(theory.response_probs(shape, z), K).item()
        bound = theory.distinct_upper_bound(shape, z, K)
        assert bound == pytest.approx(1 + K * (1 - q ** 8))
        assert 1 - 1e-12 <= e <= bound + 1e-9 and e < prev
        prev = e
    assert prev - 1 < 1e-3
    shape, z = theory.peaked_tree(8, 4, 0.5)
    assert theory.expected_distinct(theory.response_probs(shape, z), K) > 50   # a flat policy: almost all distinct


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
    probs = (logp[0, 2, :, None] + logp[:, 3, :]).double().exp()                        # (5, 5) pi(a b)
    assert probs.sum().item() == pytest.approx(1.0, abs=1e-5)
    K = 4
    exact = theory.expected_distinct(probs.flatten(), K).item()
    mean, se = theory.mc_distinct_model(model, prompt, K, trials=600, max_new_tokens=2, seed=0)
    assert abs(mean - exact) < 4 * se, (mean, exact, se)
    assert 1.2 < exact < 3.9            # neither collapsed nor uniform: the check can fail
