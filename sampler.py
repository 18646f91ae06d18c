"""
sampler.py: batched, KV-cached sampling of G answers per prompt, recording the candidate distribution.

    generate(model, prompts, n_samples=G, max_new_tokens, ...) -> Rollout

Per generated position t of every answer it records what the RLVR loss and the paper's diagnostics need:
the sampled token y_t, log pi_old(y_t | s_t) under the distribution it was drawn from (after temperature,
top-k, top-p), and the *candidate distribution* of the temperature-1 policy: its top-N ids c_1..c_N and
probabilities p(1) >= ... >= p(N), and its entropy H_t (CASP.md: the entropy gate and the p(1..N) plots).

How one rollout runs
    prefill           each prompt once, right-padded, chunk by chunk; its cache copied to its G rows
    repeat            sample -> record -> decode_one_token, one token for all R = P * G rows at once
    stop              a row is done after its stop token; done rows keep running (static batch) but are
                      masked out and write 0; the loop ends when all rows are done or at max_new_tokens

Randomness (why not torch.multinomial): the answers of a prompt must not depend on which other prompts
share the batch or where the prompt sits in the list. A batch-wide generator hands out numbers in batch
order, so it fails that. Here every row owns a counter-based stream: a 64-bit key
    key = blake2b(seed, the prompt's token ids, how many identical prompts came before it, sample index j)
and its uniform at step t is hash32(key, t), a fixed integer hash. The (R, max_new_tokens) table of uniforms
is computed up front on the CPU in integer ops (bitwise identical on every device, no generator state)
and the step reads column t. The token is drawn by inverse CDF: the first id whose cumulative probability
exceeds u * total. One uniform and one cumsum per row and step, instead of V hashed uniforms for
Gumbel-max: the cheapest exact sampler that is also trivially capturable in a CUDA graph.
Resolution: u has 23 bits and the cumsum is float32, so a token's probability is realised to within
about 1e-7 absolute (a token of probability 1e-7 is drawn about once per 10M draws).
Duplicated prompts in one list get different streams (the occurrence count is in the key), so they act
as more samples of the same problem, not as copies.

Where the time goes (PERF.md, H100, Qwen2.5-1.5B, B=64): a decode step reads ~3.1 GB of weights plus the
KV cache (a ~1.3 ms floor), but an eager step launches ~560 small kernels whose launch overhead is most
of the cost: eager PyTorch takes 20-33 ms per step, transformers 78 ms. So on CUDA the whole step
(sample + record + the model's forward for one token) is captured once into a CUDA graph and replayed: one
launch per token. `compile=True` additionally runs the step through torch.compile (inductor fuses the
RMSNorm, RoPE, SiLU*up and sampling elementwise chains) before capture: fewer kernels per replay.
Over the vocabulary the step makes one log_softmax, one top-N, one cumsum and one searchsorted pass
(plus one more softmax only when temperature / top-k / top-p change the sampling distribution).
The CPU path runs the same step function eagerly.

Departures: none from the paper. Conventions: ids >= vocab_size are excluded by slicing the logits
(Qwen's 151,936 output rows vs 151,665 tokenizer ids), so every distribution here is over the real
vocabulary; top-k keeps ties at the k-th value; top-p keeps token i iff the mass strictly more
probable than i is below p (ties in or out together); greedy rows report the temperature-1 log-prob.
"""
from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass

import torch

from model import KVCache, Transformer


@dataclass
class Rollout:
    tokens: torch.Tensor        # (R, L) long: generated ids; 0 after a row ended. Row r answers prompt r // n_samples
    mask: torch.Tensor          # (R, L) bool: real generated tokens, INCLUDING the stop token that ended the row
    logprobs: torch.Tensor      # (R, L) float32: log-prob of each token under the distribution it was sampled from
    topn_ids: torch.Tensor      # (R, L, N) long: top-N ids of the temperature-1 next-token distribution
    topn_probs: torch.Tensor    # (R, L, N) float32: their probabilities
    entropy: torch.Tensor       # (R, L) float32: entropy of the temperature-1 distribution
    prompt_index: torch.Tensor  # (R,) long: index into `prompts` (the GRPO group)
    finish_reason: list[str]    # "stop" or "length" per row
    lengths: torch.Tensor       # (R,) long: number of real tokens per row (mask.sum(1))


# -----------------------------------------------------------------------------
# Per-row random numbers, independent of the batch

_M32 = 0xFFFFFFFF


def hash32(x: torch.Tensor) -> torch.Tensor:
    """A bijective 32-bit integer hash (xorshift-multiply rounds) on int64 tensors holding values < 2^32.

    Multipliers are odd and below 2^31, so every product stays below 2^63: no signed overflow anywhere."""
    for mult, shift in ((0x7FEB352D, 15), (0x5BD1E995, 13), (0x27D4EB2D, 16)):
        x = x ^ (x >> 16)
        x = (x * mult) & _M32
        x = x ^ (x >> shift)
    return x


def row_keys(prompts: list[list[int]], n_samples: int, seed: int) -> torch.Tensor:
    """(R, 2) int64: two 32-bit keys per row from (seed, prompt ids, occurrence of that prompt, sample j)."""
    seen: dict[tuple, int] = {}
    keys = []
    for p in prompts:
        occurrence = seen.get(tuple(p), 0)
        seen[tuple(p)] = occurrence + 1
        h = hashlib.blake2b(",".join(map(str, p)).encode(), digest_size=16, key=f"{seed}:{occurrence}".encode())
        prompt_key = int.from_bytes(h.digest(), "little")
        for j in range(n_samples):
            k = int.from_bytes(hashlib.blake2b(f"{prompt_key}:{j}".encode(), digest_size=8).digest(), "little")
            keys.append((k & _M32, k >> 32))
    return torch.tensor(keys, dtype=torch.int64).view(-1, 2)


def row_uniforms(keys: torch.Tensor, n_steps: int) -> torch.Tensor:
    """(R, 2) keys -> (R, n_steps) float32 uniforms in [0, 1 - 2^-23]. Column t depends only on (key, t)."""
    t = torch.arange(n_steps, dtype=torch.int64)                                  # (S,)
    x = hash32((keys[:, 1:] + t * 0x9E3779B9) & _M32)                               # (R, S)
    x = hash32(keys[:, :1] ^ x)                                                   # (R, S)
    # 23 bits, so u * total < total exactly in float32 (see sample_inverse_cdf)
    return (x >> 9).to(torch.float32) * 2.0**-23


# -----------------------------------------------------------------------------
# Sampling: one next-token distribution per row -> token, its log-prob, and the candidate distribution


def top_k_top_p_mask(logits: torch.Tensor, top_k: int = 0, top_p: float = 1.0) -> torch.Tensor:
    """(B, V) logits (already divided by the temperature) -> (B, V) bool: the tokens that may be sampled.

    top-k: keep tokens whose logit is >= the k-th largest (ties at the boundary are all kept).
    top-p: over the top-k renormalised distribution q, keep token i iff sum_{j: q_j > q_i} q_j < top_p,
    i.e. the smallest set of most probable tokens holding >= top_p of the mass, ties in or out together.
    """
    keep = torch.ones_like(logits, dtype=torch.bool)                              # (B, V)
    if 0 < top_k < logits.shape[-1]:
        kth = logits.topk(top_k, dim=-1).values[:, -1:]                           # (B, 1)
        keep = logits >= kth
    if top_p < 1.0:
        q = torch.softmax(logits.masked_fill(~keep, float("-inf")), dim=-1)      # (B, V)
        sorted_q = q.sort(dim=-1, descending=True).values                         # (B, V): a full-vocab sort
        mass_before = sorted_q.cumsum(-1) - sorted_q                             # (B, V) exclusive cumsum
        n_keep = (mass_before < top_p).sum(-1, keepdim=True)                      # (B, 1), >= 1
        threshold = sorted_q.gather(-1, n_keep - 1)                               # (B, 1)
        # the first of a tie group has mass_before = the mass strictly above it, so ties go together
        keep = keep & (q >= threshold)
    return keep


def sample_inverse_cdf(probs: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """(B, V) probabilities (need not sum to exactly 1), (B,) uniforms in [0, 1 - 2^-23] -> (B,) ids.

    The first id whose cumulative probability exceeds u * total. Zero-probability ids are never chosen:
    their cumulative value equals their predecessor's, so they are never the *first* to exceed."""
    cdf = probs.cumsum(-1)                                                        # (B, V)
    target = u[:, None] * cdf[:, -1:]                                             # (B, 1), < total
    return torch.searchsorted(cdf, target, right=True)[:, 0].clamp_(max=probs.shape[-1] - 1)  # (B,)


def sample(logits: torch.Tensor, u: torch.Tensor, temperature: float = 1.0, top_k: int = 0,
           top_p: float = 1.0, top_n: int = 3, greedy: bool = False):
    """(B, V) float32 logits over the real vocabulary, (B,) uniforms ->
    token (B,), its log-prob (B,) under the sampling distribution, topn_ids (B, N), topn_probs (B, N),
    entropy (B,) of the temperature-1 distribution."""
    logp = torch.log_softmax(logits, dim=-1)                                      # (B, V) temperature 1
    p = logp.exp()                                                                # (B, V)
    entropy = -(p * logp).sum(-1)                                                 # (B,) finite: logits are
    topn_probs, topn_ids = p.topk(top_n, dim=-1)                                  # (B, N)
    if greedy:
        token = logits.argmax(-1)                                                 # (B,)
        return token, logp.gather(-1, token[:, None])[:, 0], topn_ids, topn_probs, entropy
    if temperature == 1.0 and top_k == 0 and top_p >= 1.0:
        logq, q = logp, p                     # the RL default: sample from the candidate distribution itself
    else:
        z = logits / temperature                                                  # (B, V)
        z = z.masked_fill(~top_k_top_p_mask(z, top_k, top_p), float("-inf"))
        logq = torch.log_softmax(z, dim=-1)                                       # (B, V)
        q = logq.exp()
    token = sample_inverse_cdf(q, u)                                              # (B,)
    return token, logq.gather(-1, token[:, None])[:, 0], topn_ids, topn_probs, entropy


# -----------------------------------------------------------------------------
# Model calls


def prefill(model: Transformer, prompts: list[list[int]], vocab_size: int):
    """Right-padded batched forward of the prompts -> (their KVCache, last-token logits (P, V) float32).

    Only the last real position goes through the output layer: the full (P, T, 151936) logits of a batch
    of long prompts would cost gigabytes."""
    device, dtype = model.output_weight.device, model.output_weight.dtype
    lens = torch.tensor([len(p) for p in prompts], device=device)                # (P,)
    padded = torch.zeros(len(prompts), max(len(p) for p in prompts), dtype=torch.long)
    for i, p in enumerate(prompts):
        padded[i, :len(p)] = torch.tensor(p, dtype=torch.long)
    cache = KVCache(model.config, len(prompts), padded.shape[1], device, dtype)
    h = model(padded.to(device), kv_cache=cache, return_hidden=True)              # (P, T, D)
    cache.lengths.copy_(lens)         # the padding slots get overwritten by the first generated tokens
    last = h[torch.arange(len(prompts), device=device), lens - 1]                 # (P, D)
    return cache, model.lm_head(last)[:, :vocab_size].float()                     # (P, V)


def decode_one_token(model: Transformer, token: torch.Tensor, cache: KVCache, vocab_size: int):
    """(B,) ids at each row's current position -> next-token logits (B, V) float32 (V = vocab_size:
    slicing off the untrained rows >= vocab_size is a view, free)."""
    return model(token[:, None], kv_cache=cache)[:, -1, :vocab_size].float()    # (B, V)


# -----------------------------------------------------------------------------
# The decode loop over static buffers


class _Decoder:
    """Every tensor a decode step reads or writes, allocated once (static addresses: a CUDA graph replays
    against them), and `step()`, which samples token t for all rows, records it and feeds it back."""

    def __init__(self, model, cache, logits, uniforms, stop_ids, max_new_tokens, vocab_size, top_n, params):
        R, dev = logits.shape[0], logits.device
        self.model, self.cache, self.logits, self.vocab_size, self.params = model, cache, logits, vocab_size, params
        self.uniforms = uniforms                                                  # (R, S) float32
        self.stop_ids = stop_ids                                                  # (n_stop,) long
        self.t = torch.zeros(1, dtype=torch.long, device=dev)                     # step counter, on device
        self.done = torch.zeros(R, dtype=torch.bool, device=dev)                  # (R,) row has stopped
        S, N = max_new_tokens, top_n
        self.tokens = torch.zeros(R, S, dtype=torch.long, device=dev)
        self.mask = torch.zeros(R, S, dtype=torch.bool, device=dev)
        self.logprobs = torch.zeros(R, S, dtype=torch.float32, device=dev)
        self.topn_ids = torch.zeros(R, S, N, dtype=torch.long, device=dev)
        self.topn_probs = torch.zeros(R, S, N, dtype=torch.float32, device=dev)
        self.entropy = torch.zeros(R, S, dtype=torch.float32, device=dev)

    def step(self):
        # No Python branch depends on tensor values and nothing is read back to the host: this whole
        # function is one CUDA graph. The column index `t` is a device tensor for the same reason.
        u = self.uniforms.index_select(1, self.t)[:, 0]                           # (R,)
        token, logprob, topn_ids, topn_probs, entropy = sample(self.logits, u, **self.params)
        alive = ~self.done                                                        # (R,)
        token = token.masked_fill(self.done, 0)                                   # (R,)
        col = lambda x: torch.where(alive.view(-1, *[1] * x.dim()), x.unsqueeze(1), 0)  # (R, 1[, N]), 0 if done
        self.tokens.index_copy_(1, self.t, col(token))
        self.mask.index_copy_(1, self.t, alive[:, None])
        self.logprobs.index_copy_(1, self.t, col(logprob))
        self.topn_ids.index_copy_(1, self.t, col(topn_ids))
        self.topn_probs.index_copy_(1, self.t, col(topn_probs))
        self.entropy.index_copy_(1, self.t, col(entropy))
        self.done |= alive & (token[:, None] == self.stop_ids).any(-1)            # the stop token itself counts
        # the model forward: ~all of the step's bytes (weights + cache) and most of its kernels
        self.logits.copy_(decode_one_token(self.model, token, self.cache, self.vocab_size))
        self.t += 1


def _capture_cuda_graph(dec: _Decoder, step_fn):
    """Record `step_fn` as a CUDA graph. Warm-up steps (cuBLAS handles, torch.compile) run on a side stream
    as PyTorch requires, then the state they advanced is restored; capture itself executes nothing."""
    saved = [x.clone() for x in (dec.cache.lengths, dec.logits, dec.t, dec.done)]
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(min(3, dec.tokens.shape[1])):  # t must stay a valid column
            step_fn()
    torch.cuda.current_stream().wait_stream(side)
    for x, s in zip((dec.cache.lengths, dec.logits, dec.t, dec.done), saved):
        x.copy_(s)  # cache slots written by the warm-up lie beyond every row's length: masked, then overwritten
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        step_fn()
    return graph


# -----------------------------------------------------------------------------
# Public entry point


@torch.inference_mode()
def generate(model: Transformer, prompts: list[list[int]], n_samples: int, max_new_tokens: int,
             temperature: float = 1.0, top_p: float = 1.0, top_k: int = 0, stop_ids=(), top_n: int = 3,
             seed: int = 0, vocab_size: int | None = None, greedy: bool = False, progress: bool = False,
             cuda_graph: bool | None = None, compile: bool = False, prefill_tokens: int = 32768,
             check_every: int | None = None, stats: dict | None = None) -> Rollout:
    """Sample `n_samples` answers to each prompt (rows p*n_samples .. (p+1)*n_samples-1 answer prompt p).

    temperature 0 or greedy=True: argmax decoding. cuda_graph: None = on when the model is on CUDA.
    compile: torch.compile the step before capture. prefill_tokens: padded prompt tokens per prefill
    chunk (bounds prefill memory). check_every: steps between `all rows done?` host checks (a sync);
    default 1 on CPU, 16 on CUDA. stats: if a dict is given, it receives the seconds spent in prefill,
    in CUDA-graph warm-up + capture (and torch.compile on a first call) and in the decode loop, and the
    number of decode steps run.
    """
    if not prompts or n_samples < 1 or max_new_tokens < 1 or any(len(p) == 0 for p in prompts):
        raise ValueError("need at least one non-empty prompt, n_samples >= 1 and max_new_tokens >= 1")
    device, dtype = model.output_weight.device, model.output_weight.dtype
    V = min(vocab_size or model.config.vocab_size, model.config.vocab_size)
    greedy = greedy or temperature == 0
    params = dict(temperature=temperature, top_k=top_k, top_p=top_p, top_n=min(top_n, V), greedy=greedy)
    on_cuda = device.type == "cuda"
    cuda_graph = on_cuda if cuda_graph is None else cuda_graph
    check_every = check_every or (16 if on_cuda else 1)
    P, G = len(prompts), n_samples
    R = P * G
    sync = torch.cuda.synchronize if on_cuda else (lambda: None)
    t0 = time.perf_counter()

    # --- prefill each prompt once, copy its cache into its G rows
    max_len = max(len(p) for p in prompts) + max_new_tokens
    if compile:
        max_len = -(-max_len // 256) * 256  # few distinct shapes, so torch.compile reuses its kernels
    cache = KVCache(model.config, R, max_len, device, dtype)  # the static cache: (layers, R, Hkv, max_len, hd)
    logits = torch.empty(R, V, dtype=torch.float32, device=device)                # (R, V)
    order = sorted(range(P), key=lambda i: len(prompts[i]))  # similar lengths together: less padding
    start = 0
    while start < P:  # chunks of prompts with at most `prefill_tokens` padded tokens (memory bound)
        end = start + 1
        while end < P and (end + 1 - start) * len(prompts[order[end]]) <= prefill_tokens:
            end += 1
        idx = order[start:end]
        pre, last = prefill(model, [prompts[i] for i in idx], V)                 # (n, V)
        for j, i in enumerate(idx):  # prompt i owns rows i*G .. i*G+G-1
            cache.narrow(i * G, G).copy_rows_(pre.narrow(j, 1), torch.zeros(G, dtype=torch.long))
            logits[i * G:(i + 1) * G] = last[j]
        start = end
    del pre, last
    sync()
    t_prefill = time.perf_counter()

    # --- decode
    uniforms = row_uniforms(row_keys(prompts, G, seed), max_new_tokens).to(device)   # (R, S)
    stop = torch.tensor(sorted(set(stop_ids)), dtype=torch.long, device=device).view(-1)  # (n_stop,)
    dec = _Decoder(model, cache, logits, uniforms, stop, max_new_tokens, V, params["top_n"], params)
    step_fn = torch.compile(dec.step, dynamic=False) if compile else dec.step
    graph = _capture_cuda_graph(dec, step_fn) if cuda_graph else None
    sync()
    t_capture = time.perf_counter()
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=max_new_tokens, desc="sampling", unit="tok", leave=False)
    steps = 0
    for steps in range(1, max_new_tokens + 1):
        graph.replay() if graph is not None else step_fn()
        if bar is not None:
            bar.update(1)
        # `.all()` read on the host is a CPU-GPU sync: on CUDA only every check_every steps, so up to
        # check_every - 1 steps may run after the last row finished (they are masked out anyway)
        if steps % check_every == 0 and bool(dec.done.all()):
            break
    if bar is not None:
        bar.close()
    sync()
    t_end = time.perf_counter()
    if stats is not None:
        stats.update(prefill_s=t_prefill - t0, capture_s=t_capture - t_prefill, decode_s=t_end - t_capture,
                     steps=steps, rows=R)

    # --- trim to the longest row and move to the CPU
    mask = dec.mask[:, :steps].cpu()                                              # (R, L)
    lengths = mask.sum(1)                                                         # (R,)
    L = int(lengths.max())
    done = dec.done.cpu()
    del graph
    return Rollout(
        tokens=dec.tokens[:, :L].cpu(), mask=mask[:, :L].contiguous(), logprobs=dec.logprobs[:, :L].cpu(),
        topn_ids=dec.topn_ids[:, :L].cpu(), topn_probs=dec.topn_probs[:, :L].cpu(),
        entropy=dec.entropy[:, :L].cpu(), prompt_index=torch.arange(P).repeat_interleave(G),
        finish_reason=["stop" if d else "length" for d in done.tolist()], lengths=lengths)
