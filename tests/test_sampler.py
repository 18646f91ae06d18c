"""sampler.py against slow reference computations: full forward passes without a cache, hand-made
distributions, and a chi-square goodness-of-fit test of the sampled frequencies.

All CPU tests use a small random float32 model (vocab 97 output rows, of which the first 90 are "real"
ids unless a test says otherwise). Tests whose outcome depends on random draws use fixed seeds, so they are
deterministic; their docstrings state the chance that a correct sampler would fail them under a fresh seed.
"""
import pytest
import torch

from model import KVCache, ModelConfig, Transformer
from sampler import (decode_one_token, generate, prefill, row_keys, row_uniforms, sample_inverse_cdf,
                     top_k_top_p_mask)

TOL = 1e-4
V_ROWS, V = 97, 90
PROMPTS = [[5, 17, 2, 40, 33], [8, 1, 64, 12, 9, 70, 3, 21, 44], [60, 7, 19]]


def small_model(vocab_rows=V_ROWS, tie=True, std=0.2, seed=0):
    cfg = ModelConfig(vocab_size=vocab_rows, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                      tie_word_embeddings=tie)
    model = Transformer(cfg).eval()
    model.init_weights(std=std, generator=torch.Generator().manual_seed(seed))
    return model


@pytest.fixture(scope="module")
def model():
    return small_model()


def full_logits(model, prompt, generated, vocab=V):
    """Logits (n, vocab) predicting each generated token, from one uncached forward of prompt + generated."""
    with torch.no_grad():
        seq = torch.tensor([prompt + generated])
        return model(seq)[0, len(prompt) - 1:len(prompt) - 1 + len(generated), :vocab]


# ----------------------------------------------------------------------------- model calls

def test_cached_decoding_matches_full_recompute(model):
    """prefill (right-padded, 3 prompt lengths) + decode_one_token give the logits of a full uncached forward
    pass of each sequence so far, at every one of 8 steps (float32, max abs diff < 1e-4)."""
    g = torch.Generator().manual_seed(1)
    forced = torch.randint(0, V, (len(PROMPTS), 8), generator=g)               # teacher-forced tokens
    worst = 0.0
    with torch.no_grad():
        pre, logits = prefill(model, PROMPTS, V)                                # (P, V)
        cache = KVCache(model.config, len(PROMPTS), pre.max_len + 8)
        cache.copy_rows_(pre, torch.arange(len(PROMPTS)))
        for t in range(8):
            for b, p in enumerate(PROMPTS):
                ref = full_logits(model, p, forced[b, :t + 1].tolist())[-1]
                worst = max(worst, (ref - logits[b]).abs().max().item())
            logits = decode_one_token(model, forced[:, t], cache, V)
    print(f"max |cached - full| = {worst:.2e}")
    assert worst < TOL


def test_greedy_equals_argmax_loop(model):
    """greedy=True (and temperature=0) equals a step-by-step argmax over full forward passes, every sample
    row of a prompt is the same, and greedy log-probs are the temperature-1 log-probs of those tokens."""
    r = generate(model, PROMPTS, n_samples=2, max_new_tokens=12, greedy=True, vocab_size=V)
    r0 = generate(model, PROMPTS, n_samples=2, max_new_tokens=12, temperature=0.0, vocab_size=V)
    assert torch.equal(r.tokens, r0.tokens)
    for row in range(r.tokens.shape[0]):
        p = PROMPTS[row // 2]
        seq = []
        for _ in range(12):
            seq.append(int(full_logits(model, p, seq + [0])[-1].argmax()))
        assert r.tokens[row].tolist() == seq
        ref = torch.log_softmax(full_logits(model, p, seq), -1).gather(1, torch.tensor(seq)[:, None])[:, 0]
        assert (r.logprobs[row] - ref).abs().max() < TOL
    assert r.mask.all() and r.finish_reason == ["length"] * 6


@pytest.mark.parametrize("T,k,top_p", [(1.0, 0, 1.0), (0.7, 20, 0.9)])
def test_candidate_distribution_and_logprobs_match_full_forward(model, T, k, top_p):
    """topn_ids/topn_probs equal topk(softmax(logits)) of a full forward pass over the generated sequence,
    entropy likewise (both at temperature 1 whatever the sampling temperature), and logprobs equal
    log_softmax(masked logits / T) at the sampled token, which the mask allows (max abs diff < 1e-4)."""
    r = generate(model, PROMPTS, n_samples=3, max_new_tokens=10, temperature=T, top_k=k, top_p=top_p,
                 top_n=4, vocab_size=V, seed=3)
    assert r.topn_ids.shape == (9, 10, 4)
    for row in range(9):
        n = int(r.lengths[row])
        gen = r.tokens[row, :n]
        logits = full_logits(model, PROMPTS[row // 3], gen.tolist())                # (n, V)
        p = torch.softmax(logits, -1)
        probs, ids = p.topk(4, -1)
        assert torch.equal(r.topn_ids[row, :n], ids)
        assert (r.topn_probs[row, :n] - probs).abs().max() < TOL
        entropy = -(p * p.log()).sum(-1)
        assert (r.entropy[row, :n] - entropy).abs().max() < TOL
        z = logits / T
        keep = top_k_top_p_mask(z, k, top_p)
        assert keep.gather(1, gen[:, None]).all()
        logq = torch.log_softmax(z.masked_fill(~keep, float("-inf")), -1).gather(1, gen[:, None])[:, 0]
        assert (r.logprobs[row, :n] - logq).abs().max() < TOL


# ----------------------------------------------------------------------------- masks and the draw

def test_top_k_top_p_mask_hand_made():
    """Exactly the right tokens survive on hand-made distributions, ties at the boundary included (top_p
    values sit 0.01 away from cumulative sums, so float rounding cannot move the boundary)."""
    probs = torch.tensor([[0.4, 0.2, 0.2, 0.1, 0.1],            # ties at ranks 2-3 and 4-5
                          [0.1, 0.1, 0.4, 0.2, 0.2],            # the same, shuffled
                          [0.25, 0.25, 0.25, 0.25, 0.0]])       # all tied (plus an impossible token)
    z = probs.log()

    def keep(k=0, p=1.0):
        return top_k_top_p_mask(z, k, p).int().tolist()

    assert keep() == [[1, 1, 1, 1, 1], [1, 1, 1, 1, 1], [1, 1, 1, 1, 1]]
    assert keep(k=1) == [[1, 0, 0, 0, 0], [0, 0, 1, 0, 0], [1, 1, 1, 1, 0]]
    assert keep(k=2) == [[1, 1, 1, 0, 0], [0, 0, 1, 1, 1], [1, 1, 1, 1, 0]]
    assert keep(k=4) == [[1, 1, 1, 1, 1], [1, 1, 1, 1, 1], [1, 1, 1, 1, 0]]
    # top-p: keep i iff the mass strictly above q_i is < p
    assert keep(p=0.39) == [[1, 0, 0, 0, 0], [0, 0, 1, 0, 0], [1, 1, 1, 1, 0]]
    assert keep(p=0.41) == [[1, 1, 1, 0, 0], [0, 0, 1, 1, 1], [1, 1, 1, 1, 0]]
    assert keep(p=0.79) == [[1, 1, 1, 0, 0], [0, 0, 1, 1, 1], [1, 1, 1, 1, 0]]
    assert keep(p=0.81) == [[1, 1, 1, 1, 1], [1, 1, 1, 1, 1], [1, 1, 1, 1, 0]]
    # top-k first, then top-p on the renormalised top-k distribution: [0.5, 0.25, 0.25]
    assert keep(k=3, p=0.49) == [[1, 0, 0, 0, 0], [0, 0, 1, 0, 0], [1, 1, 1, 1, 0]]
    assert keep(k=3, p=0.51) == [[1, 1, 1, 0, 0], [0, 0, 1, 1, 1], [1, 1, 1, 1, 0]]


def test_inverse_cdf_edges():
    """Zero-probability ids are never drawn, also at the extreme uniforms 0 and 1 - 2^-23."""
    probs = torch.tensor([[0.0, 0.5, 0.0, 0.5, 0.0]] * 4)
    u = torch.tensor([0.0, 0.5 - 2**-23, 0.5, 1 - 2**-23])
    assert sample_inverse_cdf(probs, u).tolist() == [1, 1, 3, 3]


def test_row_uniforms_are_counter_based():
    """A row's uniform at step t depends only on its key and t: a prefix of a longer table, in [0, 1)."""
    keys = row_keys(PROMPTS, 4, seed=0)
    u = row_uniforms(keys, 50)
    assert torch.equal(row_uniforms(keys, 20), u[:, :20])
    assert torch.equal(row_uniforms(keys[5:7], 50), u[5:7])
    assert u.min() >= 0 and u.max() < 1 and len(set(u.flatten().tolist())) == u.numel()


# ----------------------------------------------------------------------------- rollout semantics

def test_stop_tokens_end_rows(model):
    """A row ends at its first stop token: that token is kept (mask True, finish "stop"); afterwards the row
    has mask False, token 0, logprob 0, no candidates, entropy 0. Before the stop the row is exactly what
    the same seed gives without stop ids (stopping changes nothing earlier)."""
    free = generate(model, PROMPTS, n_samples=4, max_new_tokens=16, vocab_size=V, seed=5)
    stop = {int(free.tokens[0, 3]), int(free.tokens[5, 6])}
    r = generate(model, PROMPTS, n_samples=4, max_new_tokens=16, vocab_size=V, seed=5, stop_ids=stop)
    assert torch.equal(r.lengths, r.mask.sum(1)) and r.tokens.shape[1] == int(r.lengths.max())
    n_stopped = 0
    for row in range(12):
        seq = free.tokens[row].tolist()
        first = next((i for i, t in enumerate(seq) if t in stop), None)
        n = 16 if first is None else first + 1
        assert int(r.lengths[row]) == n
        assert r.finish_reason[row] == ("length" if first is None else "stop")
        assert r.tokens[row, :n].tolist() == seq[:n] and r.mask[row, :n].all()
        assert (r.logprobs[row, :n] - free.logprobs[row, :n]).abs().max() < 1e-6
        after = slice(n, None)
        assert not r.mask[row, after].any() and not r.tokens[row, after].any()
        assert not r.logprobs[row, after].any() and not r.entropy[row, after].any()
        assert not r.topn_ids[row, after].any() and not r.topn_probs[row, after].any()
        n_stopped += first is not None
    assert n_stopped >= 2


def test_all_rows_stopped_ends_loop(model):
    """When every row has stopped the loop ends early and the result is trimmed to the longest row."""
    r = generate(model, PROMPTS, n_samples=2, max_new_tokens=50, vocab_size=V, stop_ids=range(V))
    assert r.tokens.shape == (6, 1) and r.finish_reason == ["stop"] * 6 and r.mask.all()


def test_batch_independence(model):
    """A prompt's samples are identical whether it is sampled alone or third in a batch with prompts that
    are longer and shorter than it (same seed): its rows' tokens match exactly."""
    target = PROMPTS[0]
    alone = generate(model, [target], n_samples=4, max_new_tokens=20, vocab_size=V, seed=7, stop_ids=[3])
    mixed = generate(model, [PROMPTS[1], PROMPTS[2], target, [11] * 12], n_samples=4, max_new_tokens=20,
                     vocab_size=V, seed=7, stop_ids=[3])
    rows = slice(8, 12)
    L = alone.tokens.shape[1]
    assert torch.equal(mixed.tokens[rows, :L], alone.tokens) and not mixed.mask[rows, L:].any()
    assert torch.equal(mixed.mask[rows, :L], alone.mask)
    assert (mixed.logprobs[rows, :L] - alone.logprobs).abs().max() < 1e-5
    # a duplicated prompt gets fresh samples (more draws for the same problem), not copies
    twice = generate(model, [target, target], n_samples=4, max_new_tokens=20, vocab_size=V, seed=7)
    assert not torch.equal(twice.tokens[:4], twice.tokens[4:])


def test_chunked_prefill_same_tokens(model):
    """Prefilling one prompt per chunk gives the same samples as one batched prefill."""
    a = generate(model, PROMPTS, n_samples=3, max_new_tokens=10, vocab_size=V, seed=2)
    b = generate(model, PROMPTS, n_samples=3, max_new_tokens=10, vocab_size=V, seed=2, prefill_tokens=1)
    assert torch.equal(a.tokens, b.tokens)


def test_same_seed_same_tokens(model):
    """Same seed: the same tokens; another seed: different tokens."""
    kw = dict(n_samples=3, max_new_tokens=12, vocab_size=V, top_p=0.95)
    a, b, c = (generate(model, PROMPTS, seed=s, **kw) for s in (11, 11, 12))
    assert torch.equal(a.tokens, b.tokens) and torch.equal(a.logprobs, b.logprobs)
    assert not torch.equal(a.tokens, c.tokens)


def test_ids_at_or_above_vocab_size_never_sampled():
    """Output rows >= vocab_size are never sampled nor listed as candidates, even when their logits are the
    largest by far (and they would be sampled without the vocab_size limit: the test can fail)."""
    m = small_model(tie=False)
    with torch.no_grad():
        m.lm_head.weight[80:] *= 50.0
    kw = dict(n_samples=8, max_new_tokens=15, seed=0)
    for T in (1.0, 3.0):
        r = generate(m, PROMPTS, vocab_size=80, temperature=T, **kw)
        assert r.tokens.max() < 80 and r.topn_ids.max() < 80
    assert generate(m, PROMPTS, **kw).tokens.max() >= 80


def test_rollout_layout(model):
    """Shapes, dtypes, CPU placement, prompt_index = row // n_samples, tokens 0 outside the mask."""
    r = generate(model, PROMPTS, n_samples=2, max_new_tokens=9, vocab_size=V, stop_ids=[1, 2], top_n=3)
    R, L = 6, r.tokens.shape[1]
    assert r.mask.shape == r.logprobs.shape == r.entropy.shape == (R, L) and r.topn_probs.shape == (R, L, 3)
    assert r.tokens.dtype == r.topn_ids.dtype == r.prompt_index.dtype == r.lengths.dtype == torch.long
    assert r.mask.dtype == torch.bool and r.logprobs.dtype == r.topn_probs.dtype == torch.float32
    assert all(t.device.type == "cpu" for t in (r.tokens, r.mask, r.logprobs, r.topn_ids, r.entropy))
    assert r.prompt_index.tolist() == [0, 0, 1, 1, 2, 2] and len(r.finish_reason) == R
    assert not r.tokens[~r.mask].any() and (r.logprobs[r.mask] < 0).all()


# ----------------------------------------------------------------------------- the sampled distribution

def chi_square_pvalue(counts: torch.Tensor, expected: torch.Tensor) -> float:
    """Pearson's chi-square test; bins with expected count < 5 are pooled into one."""
    small = expected < 5
    counts = torch.cat([counts[~small], counts[small].sum()[None]]).double()
    expected = torch.cat([expected[~small], expected[small].sum()[None]]).double()
    if expected[-1] == 0:
        counts, expected = counts[:-1], expected[:-1]
    stat = ((counts - expected) ** 2 / expected).sum()
    df = torch.tensor(len(counts) - 1, dtype=torch.float64)
    return torch.special.gammaincc(df / 2, stat / 2).item()  # survival function of chi2(df)


@pytest.mark.parametrize("T,top_k,top_p", [(1.0, 0, 1.0), (0.8, 12, 0.9)])
def test_sampled_frequencies_match_softmax(T, top_k, top_p):
    """Chi-square goodness of fit of 20000 draws, at step 1 against the (filtered) softmax of the prompt's
    logits and at step 2 against the conditional distribution given the most frequent first token.
    Each check fails a correct sampler with probability 1e-6 (threshold p < 1e-6; 4 checks: < 4e-6 in
    all); the seed is fixed, so the outcome is deterministic. Tokens outside top-k/top-p never occur."""
    m = small_model(vocab_rows=40, std=0.15, seed=4)
    prompt = [3, 14, 15, 9, 26]
    n = 20000
    r = generate(m, [prompt], n_samples=n, max_new_tokens=2, temperature=T, top_k=top_k, top_p=top_p, seed=0)

    def sampling_probs(generated):
        z = full_logits(m, prompt, generated + [0], vocab=40)[-1:] / T
        return torch.softmax(z.masked_fill(~top_k_top_p_mask(z, top_k, top_p), float("-inf")), -1)[0]

    first = r.tokens[:, 0]
    q1 = sampling_probs([])
    mode = int(first.bincount(minlength=40).argmax())
    second = r.tokens[first == mode, 1]
    q2 = sampling_probs([mode])
    for tokens, q in ((first, q1), (second, q2)):
        counts = tokens.bincount(minlength=40)
        assert not counts[q == 0].any()
        p = chi_square_pvalue(counts, q * len(tokens))
        print(f"chi-square p = {p:.3g} over {len(tokens)} draws")
        assert p > 1e-6


# ----------------------------------------------------------------------------- CUDA fast path

@pytest.mark.gpu
@pytest.mark.parametrize("compile", [False, True])
def test_cuda_graph_matches_plain_path(compile):
    """On CUDA the graph-captured decode step (optionally torch.compile'd) gives the same greedy tokens as the
    plain eager step, and the same sampled tokens for the same seed (float32)."""
    m = small_model().cuda()
    kw = dict(n_samples=4, max_new_tokens=40, vocab_size=V, stop_ids=[3])
    for extra in (dict(greedy=True), dict(seed=1, top_p=0.9)):
        plain = generate(m, PROMPTS, cuda_graph=False, **kw, **extra)
        fast = generate(m, PROMPTS, cuda_graph=True, compile=compile, **kw, **extra)
        assert torch.equal(plain.tokens, fast.tokens) and torch.equal(plain.mask, fast.mask)
        assert (plain.logprobs - fast.logprobs).abs().max() < TOL
        cpu = generate(small_model(), PROMPTS, **kw, **extra)
        if extra.get("greedy"):  # float32 without TF32: argmax flips between devices are ~1e-3 likely
            assert torch.equal(cpu.tokens, plain.tokens)
    short = generate(m, PROMPTS, n_samples=2, max_new_tokens=1, vocab_size=V, compile=compile)
    assert short.tokens.shape == (6, 1)
