"""sampler.py against slow reference computations: full forward passes without a cache, hand-made
distributions, and a chi-square goodness-of-fit test of the sampled frequencies.

All CPU tests use a small random float32 model (vocab 97 output rows, of which the first 90 are "real"
ids unless a test says otherwise). Tests whose outcome depends on random draws use fixed seeds, so they are
deterministic; their docstrings state the chance that a correct sampler would fail them under a fresh seed.
"""
import pytest
import torch

from model import MODEL_NAMES, KVCache, ModelConfig, Transformer
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


@pytest.mark.parametrize("T,k,top_p,slots", [(1.0, 0, 1.0, None), (0.7, 20, 0.9, None), (1.0, 0, 1.0, 2)])
def test_candidate_distribution_and_logprobs_match_full_forward(model, T, k, top_p, slots):
    """topn_ids/topn_probs equal topk(softmax(logits)) of a full forward pass over the generated sequence,
    entropy likewise (both at temperature 1 whatever the sampling temperature), and logprobs equal
    log_softmax(masked logits / T) at the sampled token, which the mask allows (max abs diff < 1e-4);
    also with 2 slots for 9 samples (refilled slots hold caches copied in mid-run), rows stopping early."""
    r = generate(model, PROMPTS, n_samples=3, max_new_tokens=10, temperature=T, top_k=k, top_p=top_p,
                 top_n=4, vocab_size=V, seed=3, slots=slots, stop_ids=[] if slots is None else [5, 9, 40])
    assert r.topn_ids.shape == (9, r.tokens.shape[1], 4) and r.tokens.shape[1] == 10
    assert slots is None or 0 < int(r.lengths.min()) < 10
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


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_top_p_boundary_is_strict(dtype):
    """top-p exactly at a cumulative sum (dyadic probabilities, so every sum is exact in float): token i is
    kept iff the mass strictly more probable than it is < p, so at p = 0.5 a token with 0.5 above it is
    out, at p = 0.75 in; a tie group is in or out whole."""
    z = torch.tensor([[0.5, 0.25, 0.25, 0.0],
                      [0.125, 0.5, 0.125, 0.25],
                      [0.25, 0.25, 0.25, 0.25]], dtype=dtype).log()
    assert top_k_top_p_mask(z, 0, 0.5).int().tolist() == [[1, 0, 0, 0], [0, 1, 0, 0], [1, 1, 1, 1]]
    assert top_k_top_p_mask(z, 0, 0.75).int().tolist() == [[1, 1, 1, 0], [0, 1, 0, 1], [1, 1, 1, 1]]
    assert top_k_top_p_mask(z, 0, 0.875).int().tolist() == [[1, 1, 1, 0], [1, 1, 1, 1], [1, 1, 1, 1]]

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
    """Shapes, dtypes, CPU placement, lengths = mask.sum(1), tokens 0 outside the mask."""
    r = generate(model, PROMPTS, n_samples=2, max_new_tokens=9, vocab_size=V, stop_ids=[1, 2], top_n=3)
    R, L = 6, r.tokens.shape[1]
    assert r.mask.shape == r.logprobs.shape == r.entropy.shape == (R, L) and r.topn_probs.shape == (R, L, 3)
    assert r.tokens.dtype == r.topn_ids.dtype == r.lengths.dtype == torch.long
    assert r.mask.dtype == torch.bool and r.logprobs.dtype == r.topn_probs.dtype == torch.float32
    assert all(t.device.type == "cpu" for t in (r.tokens, r.mask, r.logprobs, r.topn_ids, r.entropy))
    assert torch.equal(r.lengths, r.mask.sum(1)) and L == int(r.lengths.max()) and len(r.finish_reason) == R
    assert not r.tokens[~r.mask].any() and (r.logprobs[r.mask] < 0).all()


# ----------------------------------------------------------------------------- scheduling: slots, refill, static

def successor_model(vocab=16):
    """A model whose next token is (last token + 1) mod vocab, by a margin of 40 logits: one-hot embeddings
    (hidden size = vocab), attention and MLP outputs zeroed (the residual stream is the embedding of the
    current token), and an untied output layer whose row j reads the one-hot of j - 1. Response lengths
    are then known by hand: a prompt ending in token a answers a+1, a+2, ... until a stop id."""
    cfg = ModelConfig(vocab_size=vocab, hidden_size=vocab, intermediate_size=8, num_hidden_layers=1,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                      tie_word_embeddings=False)
    m = Transformer(cfg).eval()
    with torch.no_grad():
        for p in m.parameters():
            p.zero_()
        for norm in (m.model.norm, m.model.layers[0].input_layernorm, m.model.layers[0].post_attention_layernorm):
            norm.weight.fill_(1.0)
        m.model.embed_tokens.weight.copy_(torch.eye(vocab))
        m.lm_head.weight.copy_(10.0 * torch.eye(vocab).roll(1, dims=0))   # row j = e_{j-1}: logit 40 at a+1
    return m


# Prompts (call order A, B, C, D) with stop id 15 and a cap of 6 tokens, answered by successor_model:
#   A = [3, 14]          -> 15                 1 token, stops at its first token
#   B = [1, 2, 14]       -> 15                 1 token
#   C = [5, 8]           -> 9 10 11 12 13 14   6 tokens, hits the cap
#   D = [0, 0, 0, 0, 12] -> 13 14 15           3 tokens
# Admission order is the prefill plan's (by prompt length): A, C, B, D. The minimum KV read is, per sample,
# sum over its tokens t of (prompt length + t + 1): A 3, C 3+4+5+6+7+8 = 33, B 4, D 6+7+8 = 21; 61 in all.
HAND_PROMPTS = [[3, 14], [1, 2, 14], [5, 8], [0, 0, 0, 0, 12]]
HAND_TOKENS = [[15], [15], [9, 10, 11, 12, 13, 14], [13, 14, 15]]


@pytest.mark.parametrize("schedule,slots,attention,steps,kv_read,kv_longest", [
    # refill, 2 slots: step 1 A|C, A ends -> B; step 2 B|C, B ends -> D; steps 3-5 D|C, D ends;
    # step 6 idle|C, C hits the cap. 12 rows computed; the one idle row-step attends 1 position.
    # Longest-live-row kernel: (max length + 1) x 2 per step = 3x2 + 4x2 + 6x2 + 7x2 + 8x2 + 8x2 = 72.
    ("refill", 2, "prefix", 6, 61 + 1, 72),
    # static, 2 slots: batch A|C runs 6 steps (A idles for 5), then batch B|D runs 3 (B idles for 2).
    ("static", 2, "prefix", 9, 61 + 7, 3 * 2 + 4 * 2 + 5 * 2 + 6 * 2 + 7 * 2 + 8 * 2 + 6 * 2 + 7 * 2 + 8 * 2),
    # every sample at once (the default): 4 rows x 6 steps, 13 idle row-steps; the longest live row is
    # D (positions 5, 6, 7) for 3 steps, then C (5, 6, 7).
    ("refill", None, "prefix", 6, 61 + 13, 4 * (6 + 7 + 8 + 6 + 7 + 8)),
    # the whole buffer (5 + 6 positions, rounded up to one 128-position block) for every row and step
    ("refill", 2, "full", 6, 12 * 128, 72),
])
def test_work_counters_hand_computed(schedule, slots, attention, steps, kv_read, kv_longest):
    """useful_tokens, row_steps, kv_slots_read (and its minimum, and what a kernel reading every row up to
    the longest live row would read) equal the hand-computed values above, as do the tokens, lengths and
    finish reasons: rows ending at their first token and a row hitting the cap, with slots refilled."""
    stats = {}
    r = generate(successor_model(), HAND_PROMPTS, n_samples=1, max_new_tokens=6, stop_ids=[15], greedy=True,
                 schedule=schedule, slots=slots, attention=attention, stats=stats)
    assert [r.tokens[i, :n].tolist() for i, n in enumerate(r.lengths.tolist())] == HAND_TOKENS
    assert r.finish_reason == ["stop", "stop", "length", "stop"] and r.tokens.shape == (4, 6)
    n_slots = slots or 4
    assert stats["steps"] == steps and stats["slots"] == n_slots
    assert stats["useful_tokens"] == 11 and stats["row_steps"] == steps * n_slots
    assert stats["kv_slots_min"] == 61 and stats["kv_slots_read"] == kv_read
    assert stats["kv_slots_read_longest"] == kv_longest
    # the prefill plan, by length A C B D: 4 slots: [A, C, B] (9 padded tokens for 7: 22% padding), then
    # [D] alone (5 for 5: with it, 20 for 12); 2 slots: chunks of 2 prompts, [A, C] (4), [B, D] (10 for 8)
    assert stats["prefill_tokens"] == 12 and stats["prefill_padded_tokens"] == (9 + 5 if slots is None else 4 + 10)


def compare_rollouts(a, b, tol=0.0):
    assert torch.equal(a.tokens, b.tokens) and torch.equal(a.mask, b.mask) and torch.equal(a.lengths, b.lengths)
    assert torch.equal(a.topn_ids, b.topn_ids) and a.finish_reason == b.finish_reason
    for x, y in ((a.logprobs, b.logprobs), (a.topn_probs, b.topn_probs), (a.entropy, b.entropy)):
        assert torch.equal(x, y) if tol == 0 else (x - y).abs().max() <= tol


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.float32, 1e-5)])
def test_refill_equals_static(dtype, tol):
    """Same seed: refill and static scheduling give the same tokens, log-probs, top-N records, entropies
    and finish reasons, on mixed prompt lengths, a duplicated prompt, rows ending at their first token,
    rows hitting the cap, 5 slots for 21 samples. BIT FOR BIT with the same number of slots when the CPU
    kernels run on one thread (float64 and float32: each row's arithmetic does not depend on which rows
    share its step nor on its slot). At the machine's own thread count (checked too, so the test holds on
    any core count) a multi-threaded matmul may split a batch's rows between threads by position, so a
    row's rounding may depend on its slot: the tokens are equal and the floats within `tol`, as against
    every sample at once (other batch shapes: other matmul blocking). tol: a log-prob or entropy here is
    a sum over 90 ids after two layers of 64-wide dot products, float32's unit roundoff 6e-8 times those
    sums' terms gives ~1e-6 absolute for values of order 1-10 (1.7e-6 measured between batch shapes), so
    1e-5; float64's 1.1e-16 likewise gives 1e-12."""
    m = small_model().to(dtype)
    prompts = PROMPTS + [PROMPTS[1], [7] * 14, [30, 31]]                          # PROMPTS[1] twice
    kw = dict(n_samples=3, max_new_tokens=12, vocab_size=V, seed=4)
    free = generate(m, prompts, **kw)
    stop = {int(free.tokens[0, 0]), int(free.tokens[7, 4])}                     # row 0 ends at its first token
    schedules = lambda: {s: generate(m, prompts, **kw, stop_ids=stop, slots=5, schedule=s) for s in ("refill", "static")}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        runs = schedules()
    finally:
        torch.set_num_threads(threads)
    compare_rollouts(runs["refill"], runs["static"])
    here = schedules()                                                          # the ambient thread count
    compare_rollouts(here["refill"], here["static"], tol)
    compare_rollouts(here["refill"], runs["refill"], tol)
    compare_rollouts(runs["refill"], generate(m, prompts, **kw, stop_ids=stop), tol)
    r = runs["refill"]
    assert int(r.lengths[0]) == 1 and int(r.lengths.max()) == 12 and "stop" in r.finish_reason
    assert "length" in r.finish_reason and not torch.equal(r.tokens[3:6], r.tokens[9:12])   # duplicate: fresh


def test_rl_workload_counters():
    """bench/bench_sampler.py's RL workload at CPU scale (lengths / 23: mean ~30, cap 132 = 3072 / 700 x 30, ~1-3% of the
    responses truncated; 32 prompts x 8 samples on 8 slots, as the paper's 1024 x 8 on 256 slots):
    with refill, utilization (useful tokens / rows computed) >= 0.9 and KV slots read <= 1.3x the minimum
    sum over samples and positions t of (prompt length + t + 1), the minimum recomputed here from the
    lengths. Printed beside it: static scheduling on the same samples (computed from their lengths: each
    batch of 8 runs until its longest row ends), utilization ~0.3."""
    from bench.bench_sampler import rl_workload
    m = small_model(vocab_rows=1024, std=0.02)
    prompts, stop_ids = rl_workload(1024, 32, mean_len=30, prompt_lens=(8, 32), seed=0)
    G, S, cap = 8, 8, 132
    stats = {}
    r = generate(m, prompts, n_samples=G, max_new_tokens=cap, stop_ids=stop_ids, slots=S, stats=stats)
    n = r.lengths
    prompt_len = torch.tensor([len(prompts[i // G]) for i in range(len(n))])
    minimum = int((n * prompt_len + n * (n + 1) // 2).sum())
    assert stats["useful_tokens"] == int(n.sum()) and stats["kv_slots_min"] == minimum
    assert stats["row_steps"] == stats["steps"] * S
    by_length = sorted(range(len(prompts)), key=lambda p: len(prompts[p]))     # the admission order
    order = [p * G + g for p in by_length for g in range(G)]
    static_row_steps = sum(S * int(n[order[i:i + S]].max()) for i in range(0, len(order), S))
    util, static_util = stats["useful_tokens"] / stats["row_steps"], int(n.sum()) / static_row_steps
    print(f"mean length {n.float().mean():.1f}, {(n == cap).float().mean():.1%} truncated; utilization refill "
          f"{util:.3f}, static {static_util:.3f}; KV read / minimum {stats['kv_slots_read'] / minimum:.3f} "
          f"(a longest-live-row kernel: {stats['kv_slots_read_longest'] / minimum:.2f})")
    assert 0.01 <= (n == cap).float().mean() <= 0.05 and 20 <= n.float().mean() <= 45
    assert util >= 0.9 and stats["kv_slots_read"] <= 1.3 * minimum
    assert static_util < 0.5


def test_prefill_pads_at_most_a_quarter():
    """64 prompts of MATH-500-like lengths (30..338 tokens) are prefilled in chunks of at most
    25% padding, not padded to the longest as one chunk; the samples do not change."""
    from sampler import prefill_plan
    lengths = [30 + (i ** 3 * 308) // 63 ** 3 for i in range(64)]                # 30 .. 338, most short
    g = torch.Generator().manual_seed(0)
    prompts = [torch.randint(0, V, (n,), generator=g).tolist() for n in lengths[::-1]]
    stats = {}
    r = generate(small_model(), prompts, n_samples=1, max_new_tokens=2, vocab_size=V, stats=stats)
    real, padded = stats["prefill_tokens"], stats["prefill_padded_tokens"]
    print(f"prefill: {real} real tokens, {padded} padded (one chunk padded to the longest: {64 * 338})")
    assert real == sum(lengths) and padded <= real / 0.75 and padded < 64 * 338 / 2
    one_chunk = generate(small_model(), prompts, n_samples=1, max_new_tokens=2, vocab_size=V,
                         prefill_tokens=10**9)
    assert torch.equal(r.tokens, one_chunk.tokens)
    # the plan itself, on random lengths: every prompt once, sorted, each chunk within both bounds
    for seed in range(20):
        lens = torch.randint(1, 400, (int(torch.randint(1, 60, (1,))),), generator=g.manual_seed(seed)).tolist()
        plan = prefill_plan(lens, max_tokens=2000, max_prompts=7)
        flat = [i for chunk in plan for i in chunk]
        assert sorted(flat) == list(range(len(lens))) and [lens[i] for i in flat] == sorted(lens)
        for chunk in plan:
            longest, total = max(lens[i] for i in chunk), sum(lens[i] for i in chunk)
            assert len(chunk) == 1 or (len(chunk) <= 7 and len(chunk) * longest <= 2000
                                       and total >= 0.75 * len(chunk) * longest)


def test_slots_and_arguments(model):
    """slots beyond the number of samples are clamped, one slot works, bad arguments are refused."""
    kw = dict(n_samples=2, max_new_tokens=5, vocab_size=V, seed=1)
    stats = {}
    a = generate(model, PROMPTS, **kw, slots=100, stats=stats)
    assert stats["slots"] == 6 and torch.equal(a.tokens, generate(model, PROMPTS, **kw, slots=1).tokens)
    for bad in (dict(schedule="greedy"), dict(attention="paged"), dict(slots=0)):
        with pytest.raises(ValueError):
            generate(model, PROMPTS, **kw, **bad)


@pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")
def test_prefix_attention_kernel_matches_masked_kernel():
    """The length-aware kernel that CUDA runs (PrefixAttention: FlexAttention over each row's filled
    blocks, the G query heads of a KV head as G query rows; here its unfused reference), set as
    KVCache.attend, gives the logits of the dense masked kernel over 6 decode steps of right-padded rows
    of different lengths (float64, < 1e-12); its block counts are ceil((length + 1) / 128) and its block
    mask lists exactly those blocks."""
    from sampler import BLOCK, PrefixAttention
    m = small_model().double()
    G = m.config.num_attention_heads // m.config.num_key_value_heads
    prompts = [[5] * 3, [9] * 140, [1] * 129, [7] * 127]                          # around the 128 boundary
    forced = torch.randint(0, V, (4, 6), generator=torch.Generator().manual_seed(0))
    logits = {}
    for name in ("dense", "prefix"):
        with torch.no_grad():
            pre, first = prefill(m, prompts, V)
            cache = KVCache(m.config, 4, 2 * BLOCK, dtype=torch.float64)
            cache.copy_rows_(pre, torch.arange(4))
            attention = PrefixAttention(cache.lengths, 2 * BLOCK, G, compiled=False) if name == "prefix" else None
            cache.attend = attention
            out = [first]
            for t in range(6):
                if attention is not None:
                    attention.sync_blocks()
                out.append(decode_one_token(m, forced[:, t], cache, V))
            logits[name] = torch.stack(out)
    assert (logits["dense"] - logits["prefix"]).abs().max() < 1e-12
    cache.lengths.copy_(torch.tensor([0, 127, 128, 255]))
    attention.sync_blocks()
    assert attention.num_blocks.view(-1).tolist() == [1, 1, 2, 2]
    assert attention.block_mask.to_dense()[:, 0, 0].tolist() == [[1, 0], [1, 0], [1, 1], [1, 1]]


# ----------------------------------------------------------------------------- compiled paths on the CPU
# torch.compile (inductor's C++ backend, compiled FlexAttention included) runs on the CPU, so the code that
# CUDA compiles is checked here too; only the CUDA graph and the Triton kernels need a GPU (gpu_checks.sh).

# (query heads, KV heads) of every named model with GQA, and small groups of one KV head
HEAD_LAYOUTS = sorted({(c.num_attention_heads, c.num_key_value_heads) for _, c in MODEL_NAMES.values()
                       if c.num_attention_heads != c.num_key_value_heads} | {(7, 1), (5, 1), (3, 1)})


def dense_reference(q, k, v, lengths):
    """One-token attention of row b over positions 0..lengths[b], in float64, through SDPA's GQA."""
    mask = torch.arange(k.shape[2])[None, :] <= lengths[:, None]                  # (B, S)
    return torch.nn.functional.scaled_dot_product_attention(
        q.double(), k.double(), v.double(), attn_mask=mask[:, None, None, :], enable_gqa=True)


def test_compiled_prefix_kernel_at_every_named_head_layout():
    """The compiled length-aware kernel (PrefixAttention, compiled=True: torch.compile'd FlexAttention with
    the G query heads of a KV head as G query rows) equals dense GQA attention at every named model's head
    layout (qwen-1.5b 12/2, qwen-0.5b 14/2, qwen-7b 28/4, qwen-32b 40/8, llama-3b 24/8) and at 7/1, 5/1,
    3/1, head dim 128, for rows whose lengths sit around the 128-position block boundaries: float32 within
    2e-5 of a float64 reference; bf16 (qwen-1.5b's layout) within 2e-2. And what flex receives is what its
    one-token decoding kernel needs: equal head counts, G < 128 query rows, no enable_gqa."""
    from sampler import BLOCK, PrefixAttention
    assert {(12, 2), (14, 2), (28, 4), (40, 8), (24, 8)} <= set(HEAD_LAYOUTS)
    B, S, hd = 4, 3 * BLOCK, 128
    lengths = torch.tensor([0, 127, 128, S - 1])
    g = torch.Generator().manual_seed(0)
    for (H, Hkv), dtype, tol in [(hl, torch.float32, 2e-5) for hl in HEAD_LAYOUTS] + [((12, 2), torch.bfloat16, 2e-2)]:
        q = torch.randn(B, H, 1, hd, generator=g).to(dtype)
        k, v = (torch.randn(B, Hkv, S, hd, generator=g).to(dtype) for _ in range(2))
        attention = PrefixAttention(lengths.clone(), S, H // Hkv, compiled=True)
        calls = []
        kernel = attention.kernel
        attention.kernel = lambda *a, **kw: calls.append((a, kw)) or kernel(*a, **kw)
        attention.sync_blocks()
        with torch.no_grad():
            err = (attention(q, k, v).double() - dense_reference(q, k, v, lengths)).abs().max().item()
        print(f"{H}/{Hkv} {dtype}: max |compiled flex - dense| = {err:.2e}")
        assert err < tol, (H, Hkv, dtype, err)
        (qg, kk, _), kw = calls[0]
        assert qg.shape == (B, Hkv, H // Hkv, hd) and kk.shape[1] == Hkv and "enable_gqa" not in kw


def test_compiled_step_compiles_once_for_any_depth():
    """generate(compile=True) with the length-aware kernel on a 12-layer model (6 query heads per 2 KV
    heads) compiles every frame once: dynamo is told to raise on any recompilation (a layer index passed to each
    block would specialise its frame: 8 recompiles, then the remaining layers run eagerly). A second call
    compiles nothing new. The tokens, log-probs and candidate records equal the eager step's (float32,
    log-probs within 1e-4)."""
    import torch._dynamo
    from torch._dynamo.utils import counters
    cfg = ModelConfig(vocab_size=V_ROWS, hidden_size=96, intermediate_size=128, num_hidden_layers=12,
                      num_attention_heads=6, num_key_value_heads=2, max_position_embeddings=512,
                      tie_word_embeddings=True)
    m = Transformer(cfg).eval()
    m.init_weights(std=0.2, generator=torch.Generator().manual_seed(0))
    kw = dict(n_samples=2, max_new_tokens=10, vocab_size=V, seed=3, stop_ids=[3], slots=4)
    eager = generate(m, PROMPTS, **kw)
    torch._dynamo.reset()
    counters.clear()
    stats = {}
    with torch._dynamo.config.patch(error_on_recompile=True):
        compiled = generate(m, PROMPTS, compile=True, stats=stats, **kw)
        graphs = counters["stats"]["unique_graphs"]
        again = generate(m, PROMPTS, compile=True, **kw)
    print(f"{graphs} graphs for 12 layers; second call: {counters['stats']['unique_graphs'] - graphs} more")
    assert stats["attention"] == "prefix" and 0 < graphs < cfg.num_hidden_layers
    assert counters["stats"]["unique_graphs"] == graphs
    for r in (compiled, again):
        assert torch.equal(r.tokens, eager.tokens) and torch.equal(r.mask, eager.mask)
        assert torch.equal(r.topn_ids, eager.topn_ids) and (r.logprobs - eager.logprobs).abs().max() < TOL


def test_compile_failure_falls_back_with_one_line(model, monkeypatch, capsys):
    """When compiling fails (forced here: every torch.compile'd function raises on its first call, as an
    inductor C++ compile error does), generate prints one line naming the cause and the fallback
    (attention="full", an eager step) and returns the eager tokens; the next call in the same process does
    not try again and prints nothing."""
    import sampler

    def broken_compile(fn, **_):
        def call(*a, **k):
            raise RuntimeError("CppCompileError: C++ compile error\n(no C compiler found, forced by the test)")
        return call

    monkeypatch.setattr(sampler, "_compile_failure", None)
    monkeypatch.setattr(sampler, "_compiled_flex", None)
    monkeypatch.setattr(torch, "compile", broken_compile)
    kw = dict(n_samples=2, max_new_tokens=8, vocab_size=V, seed=5, stop_ids=[3])
    eager_stats = {}
    eager = generate(model, PROMPTS, stats=eager_stats, **kw)
    capsys.readouterr()
    stats = {}
    r = generate(model, PROMPTS, compile=True, stats=stats, **kw)
    assert stats["kv_slots_read_longest"] == eager_stats["kv_slots_read_longest"]   # counters not polluted
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("warning: torch.compile failed (RuntimeError: CppCompileError")
    assert 'attention="full"' in err[0] and "eager decode step" in err[0]
    assert stats["attention"] == "full" and torch.equal(r.tokens, eager.tokens)
    assert (r.logprobs - eager.logprobs).abs().max() < TOL
    r2 = generate(model, PROMPTS, compile=True, **kw)
    assert capsys.readouterr().err == "" and torch.equal(r2.tokens, eager.tokens)


def test_no_c_compiler_falls_back(model, monkeypatch, capsys):
    """The failure a user meets on a machine without a C compiler (inductor's C++ compiler set to a path
    that does not exist, caches off so that it is needed): one line naming inductor's error, then the
    eager tokens with attention="full"."""
    import torch._dynamo
    import torch._inductor.config

    import sampler
    monkeypatch.setattr(sampler, "_compile_failure", None)
    monkeypatch.setattr(torch._inductor.config.cpp, "cxx", ("/nonexistent/c++",))
    monkeypatch.setattr(torch._inductor.config, "force_disable_caches", True)
    kw = dict(n_samples=2, max_new_tokens=6, vocab_size=V, seed=7, stop_ids=[3])
    eager = generate(model, PROMPTS, **kw)
    capsys.readouterr()
    stats = {}
    try:
        r = generate(model, PROMPTS, compile=True, stats=stats, **kw)
    finally:
        torch._dynamo.reset()   # no half-compiled state for later tests
    lines = [x for x in capsys.readouterr().err.splitlines() if x.startswith("warning: torch.compile failed")]
    assert len(lines) == 1 and "C++ compiler" in lines[0], lines
    assert stats["attention"] == "full" and torch.equal(r.tokens, eager.tokens)


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
    plain eager step, and the same sampled tokens for the same seed (float32): with the length-aware kernel
    (FlexAttention, compiled) and the whole-buffer kernel, every sample at once and on 5 refilled slots
    (also with schedule="static"); and the same greedy tokens as the CPU."""
    m = small_model().cuda()
    kw = dict(n_samples=4, max_new_tokens=40, vocab_size=V, stop_ids=[3])
    for extra in (dict(greedy=True), dict(seed=1, top_p=0.9)):
        plain = generate(m, PROMPTS, cuda_graph=False, attention="full", **kw, **extra)
        for attention, slots, schedule in (("full", None, "refill"), ("prefix", None, "refill"),
                                           ("prefix", 5, "refill"), ("prefix", 5, "static"), ("full", 5, "refill")):
            stats = {}
            fast = generate(m, PROMPTS, cuda_graph=True, compile=compile, attention=attention, slots=slots,
                            schedule=schedule, stats=stats, **kw, **extra)
            assert torch.equal(plain.tokens, fast.tokens) and torch.equal(plain.mask, fast.mask)
            assert (plain.logprobs - fast.logprobs).abs().max() < TOL
            assert stats["useful_tokens"] == int(fast.lengths.sum())
        cpu = generate(small_model(), PROMPTS, **kw, **extra)
        if extra.get("greedy"):  # float32 without TF32: argmax flips between devices are ~1e-3 likely
            assert torch.equal(cpu.tokens, plain.tokens)
    short = generate(m, PROMPTS, n_samples=2, max_new_tokens=1, vocab_size=V, compile=compile)
    assert short.tokens.shape == (6, 1)


@pytest.fixture
def flex_decoding_choices(monkeypatch):
    """What inductor decides, for each flex_attention it lowers, about its one-token decoding kernel
    (True: FlashDecoding; False: the general kernel). Caches are off so that every kernel is lowered."""
    import importlib

    import torch._dynamo
    import torch._inductor.config
    for name in ("torch._inductor.kernel.flex.flex_attention", "torch._inductor.kernel.flex_attention"):
        try:   # where inductor's flex lowering lives: torch >= 2.9, then 2.8
            lowering = importlib.import_module(name)
            break
        except ImportError:
            continue
    choices, decide = [], lowering._use_flex_decoding
    monkeypatch.setattr(lowering, "_use_flex_decoding", lambda *a, **k: choices.append(decide(*a, **k)) or choices[-1])
    monkeypatch.setattr(torch._inductor.config, "force_disable_caches", True)
    torch._dynamo.reset()
    return choices


@pytest.mark.gpu
@pytest.mark.parametrize("H,Hkv,dtype", [(h, kv, torch.bfloat16) for h, kv in HEAD_LAYOUTS] + [(12, 2, torch.float32)])
def test_cuda_prefix_kernel_in_a_cuda_graph(H, Hkv, dtype, flex_decoding_choices):
    """The production decode path on CUDA: the compiled length-aware kernel (PrefixAttention) inside a
    captured CUDA graph, at every named head layout with head dim 128, gives the logits of the dense masked
    kernel run eagerly, over 40 teacher-forced steps of rows whose lengths cross the 128-position block
    boundaries: against float32 dense logits, its error is at most 1.5x the dense kernel's own in the same
    dtype plus 1e-5 of the largest logit (float32: both ~1e-6; bf16: rounding); and inductor chose flex's
    one-token decoding kernel for it."""
    from sampler import BLOCK, PrefixAttention
    cfg = ModelConfig(vocab_size=V_ROWS, hidden_size=256, intermediate_size=512, num_hidden_layers=2,
                      num_attention_heads=H, num_key_value_heads=Hkv, head_dim=128,
                      max_position_embeddings=1024, tie_word_embeddings=True)
    base = Transformer(cfg).eval()
    base.init_weights(std=0.2, generator=torch.Generator().manual_seed(0))
    prompts = [[5] * 3, [9] * 125, [1] * 128, [7] * 300]                          # cross 128 and 256
    forced = torch.randint(0, V, (4, 40), generator=torch.Generator().manual_seed(1)).cuda()
    logits = {}
    with torch.inference_mode():
        for name, dt in (("reference", torch.float32), ("dense", dtype), ("prefix", dtype)):
            m = base.to("cuda", dt)
            pre, _ = prefill(m, prompts, V)
            cache = KVCache(cfg, 4, 3 * BLOCK, "cuda", dt)
            cache.copy_rows_(pre, torch.arange(4))
            token, out = torch.zeros(4, dtype=torch.long, device="cuda"), torch.zeros(4, V, device="cuda")
            if name == "prefix":
                cache.attend = PrefixAttention(cache.lengths, cache.max_len, H // Hkv, compiled=True)

            def step():
                if cache.attend is not None:
                    cache.attend.sync_blocks()
                out.copy_(decode_one_token(m, token, cache, V))

            graph = None
            if name == "prefix":   # warm up (compiles) on a side stream, then capture; rewind the lengths
                lengths = cache.lengths.clone()
                side = torch.cuda.Stream()
                side.wait_stream(torch.cuda.current_stream())
                with torch.cuda.stream(side):
                    step()
                torch.cuda.current_stream().wait_stream(side)
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph):
                    step()
                cache.lengths.copy_(lengths)
            rows = []
            for t in range(forced.shape[1]):
                token.copy_(forced[:, t])
                graph.replay() if graph is not None else step()
                rows.append(out.clone())
            logits[name] = torch.stack(rows).float()                               # (40, 4, V)
    err = {k: (logits[k] - logits["reference"]).abs().max().item() for k in ("dense", "prefix")}
    scale = logits["reference"].abs().max().item()
    print(f"{H}/{Hkv} {dtype}: max error vs float32 dense: prefix in a graph {err['prefix']:.2e}, dense "
          f"{err['dense']:.2e} (largest logit {scale:.1f})")
    assert err["prefix"] <= 1.5 * err["dense"] + 1e-5 * scale
    assert flex_decoding_choices and all(flex_decoding_choices), flex_decoding_choices


@pytest.mark.gpu
def test_cuda_prefill_runs_without_the_math_kernel():
    """Prefill on CUDA (bf16, 12/2 heads, right-padded prompts into an empty cache) runs with SDPA's math
    kernel disabled, i.e. in a fused kernel that never materialises the (rows, heads, T, T) scores, and
    gives the logits of the math kernel within bf16 rounding."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    cfg = ModelConfig(vocab_size=V_ROWS, hidden_size=256, intermediate_size=512, num_hidden_layers=2,
                      num_attention_heads=12, num_key_value_heads=2, head_dim=128, tie_word_embeddings=True)
    m = Transformer(cfg).eval()
    m.init_weights(generator=torch.Generator().manual_seed(0))
    m = m.to("cuda", torch.bfloat16)
    prompts = [[5] * 300, [9] * 1000, [1] * 17]
    with torch.inference_mode():
        with sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.CUDNN_ATTENTION]):
            _, fused = prefill(m, prompts, V)
        with sdpa_kernel([SDPBackend.MATH]):
            _, math = prefill(m, prompts, V)
    assert (fused - math).abs().max().item() < 0.02 * math.abs().max().item()


@pytest.mark.gpu
def test_cuda_compiled_step_compiles_once_28_layers():
    """generate(compile=True) on CUDA, inside the CUDA graph, with the length-aware kernel on a 28-layer
    model at qwen-1.5b's head layout (12/2 heads, head dim 128; narrow widths, float32): no frame is
    recompiled (dynamo raises on any recompilation) and the tokens equal the eager step's."""
    import torch._dynamo
    cfg = ModelConfig(vocab_size=V_ROWS, hidden_size=256, intermediate_size=512, num_hidden_layers=28,
                      num_attention_heads=12, num_key_value_heads=2, head_dim=128,
                      max_position_embeddings=1024, tie_word_embeddings=True)
    m = Transformer(cfg).eval()
    m.init_weights(std=0.2, generator=torch.Generator().manual_seed(0))
    m = m.cuda()
    kw = dict(n_samples=4, max_new_tokens=40, vocab_size=V, seed=3, stop_ids=[3], slots=8)
    eager = generate(m, PROMPTS, cuda_graph=False, attention="full", **kw)
    torch._dynamo.reset()
    stats = {}
    with torch._dynamo.config.patch(error_on_recompile=True):
        compiled = generate(m, PROMPTS, compile=True, stats=stats, **kw)
        again = generate(m, PROMPTS, compile=True, **kw)
    assert stats["attention"] == "prefix"
    for r in (compiled, again):
        assert torch.equal(r.tokens, eager.tokens) and (r.logprobs - eager.logprobs).abs().max() < TOL
