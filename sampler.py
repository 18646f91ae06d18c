"""
sampler.py: batched, KV-cached sampling of G answers per prompt, recording the candidate distribution.

    generate(model, prompts, n_samples=G, max_new_tokens, slots=S, ...) -> Rollout

Per generated token t it records the sampled token y_t, log pi_old(y_t | s_t) under the distribution it was
drawn from (after temperature, top-k, top-p), and the temperature-1 policy's top-N ids c_1..c_N with their
probabilities p(1) >= ... >= p(N) and its entropy H_t (what CaSP's entropy gate and the p(1..N) plots read).

One rollout of P prompts x G samples:
    slots      the decode loop runs a fixed set of S rows (train.py's --rollout-batch; default all);
               memory is the KV cache of S rows, whatever P x G is
    queue      samples wait in prefill-plan order: prompts sorted by length, cut into chunks of at most
               `prefill_tokens` padded tokens and MAX_PAD_WASTE padding; each prompt is prefilled once for
               its G samples, and an admitted sample's slot gets a copy of its prompt's cache row
    step       sample -> record -> decode_one_token, one token for all S slots at once
    stop       a sample ends after a stop token or at max_new_tokens; the host frees its slot every
               `check_every` steps (a sync)
    schedule   "refill" (default): a free slot takes the next waiting sample at once; "static": slots are
               refilled only when all are free. Both give the same samples.
Attention: "prefix" (default) attends each row over its filled prefix only: on CUDA a compiled FlexAttention
kernel with a per-row block mask (PrefixAttention), on the CPU the dense masked kernel (the same values);
"full" attends the whole buffer. On CUDA the step is captured in one CUDA graph per call and replayed once
per token; compile=True runs it through torch.compile first, and a failed compile prints one line and
falls back to attention="full" and an eager step.
Randomness: each sample owns a counter-based stream, key = blake2b(seed, the prompt's ids, its occurrence
among identical prompts, the sample index), with uniform u_t = hash32(key, t) at its step t; the token is
the first id whose cumulative probability exceeds u_t * total. A sample does not depend on the batch,
slot or step it runs in.
Work counters (`stats`, defined in `generate`) count what a rollout reads and computes, machine-independently.
Why the sampler is built this way, and what is measured: docs/performance.md.

Conventions: ids >= vocab_size are excluded by slicing the logits (Qwen's 151,936 output rows vs 151,665
tokenizer ids); top-k keeps ties at the k-th value; top-p keeps token i iff the mass strictly more probable
than i is below p (ties in or out together); greedy rows report the temperature-1 log-prob.
"""
from __future__ import annotations

import hashlib
import sys
import time
from dataclasses import dataclass

import torch

from model import KVCache, Transformer

MAX_PAD_WASTE = 0.25     # at most this fraction of a prefill chunk's padded tokens is padding
BLOCK = 128              # positions per block of the length-aware kernel's block mask; buffers round up to it
FLEX_RECOMPILE_LIMIT = 64  # distinct (slots, buffer length) shapes the compiled kernel is compiled for


@dataclass
class Rollout:
    tokens: torch.Tensor        # (R, L) long: generated ids; 0 after a row ended. Row r answers prompt r // n_samples
    mask: torch.Tensor          # (R, L) bool: real generated tokens, INCLUDING the stop token that ended the row
    logprobs: torch.Tensor      # (R, L) float32: log-prob of each token under the distribution it was sampled from
    topn_ids: torch.Tensor      # (R, L, N) long: top-N ids of the temperature-1 next-token distribution
    topn_probs: torch.Tensor    # (R, L, N) float32: their probabilities
    entropy: torch.Tensor       # (R, L) float32: entropy of the temperature-1 distribution
    finish_reason: list[str]    # "stop" or "length" per row
    lengths: torch.Tensor       # (R,) long: number of real tokens per row (mask.sum(1))


# -----------------------------------------------------------------------------
# Per-sample random numbers, independent of the batch

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


def prefill_plan(lengths: list[int], max_tokens: int, max_prompts: int | None = None,
                 max_waste: float = MAX_PAD_WASTE) -> list[list[int]]:
    """Prompt indices in chunks for batched, right-padded prefill: sorted by length (ties in list order),
    each chunk at most `max_prompts` prompts and `max_tokens` padded tokens (n x its longest; a longer
    prompt gets a chunk of its own), and at most `max_waste` of them padding. 64 MATH-500 prompts (5,640
    tokens) padded to the longest as one chunk cost 21,632 tokens; with 25% waste at most, <= 7,520."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    chunks, current, real = [], [], 0
    for i in order:
        padded = (len(current) + 1) * lengths[i]        # lengths ascend: prompt i is the chunk's longest
        if current and (len(current) == max_prompts or padded > max_tokens
                        or real + lengths[i] < (1 - max_waste) * padded):
            chunks.append(current)
            current, real = [], 0
        current.append(i)
        real += lengths[i]
    return chunks + [current] if current else chunks


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


_compiled_flex = None


class PrefixAttention:
    """One-token attention over each row's filled prefix only: FlexAttention with a block mask whose row
    b lists the blocks 0..lengths[b] // BLOCK and whose mask_mod admits positions <= lengths[b], where
    `lengths` is the cache's own (B,) length tensor (the query of row b sits at position lengths[b]). Set
    as `KVCache.attend`; call `sync_blocks()` before each forward (inside the captured step: the block
    counts are a device tensor updated in place, read by the kernel at replay, as are the lengths).

    Grouped-query heads as query rows: the G = H / Hkv query heads that share a KV head are handed to flex
    as G query rows of that head, q (B, Hkv, G, hd) against k, v (B, Hkv, S, hd), without `enable_gqa`
    (the dense path in model.py does the same). Same math as GQA (head h reads KV head h // G). Why: flex's
    one-token FlashDecoding kernel takes grouped heads only when G is a power of two, and none of the named
    models has one (qwen-1.5b 12/2 = 6, qwen-0.5b and qwen-7b 7, qwen-32b 5, llama-3b 3); otherwise flex
    takes its general kernel, whose 128-row query tiles are 127/128 padding for a one-row query, and every
    query head reads its KV again. With G rows per KV head the head counts are equal, the query has
    G < 128 rows and the batch is static (`dynamic=False`): the conditions under which inductor picks the
    decoding kernel (`_use_flex_decoding` in torch/_inductor/kernel/flex/flex_decoding.py).

    The mask reads the cache's lengths directly rather than a copy written inside the step: on the CPU,
    inductor's flex template finds no kernel when a mask_mod's tensor is computed in the same graph.

    compiled=True: the torch.compile'd kernel, one wrapper per process (`dynamic=False`; each new (slots,
    buffer length) compiles once more, up to FLEX_RECOMPILE_LIMIT shapes); False: flex's unfused
    reference (tests). In a torch.compile'd step (`generate(compile=True)`) the call is a graph break:
    the kernel stays a graph of its own (traced into the step's graph, flex gave wrong values from the
    second layer on in torch 2.13's CPU backend), and the model hands each layer its cache tensors, not
    its index (model.LayerCache), so the frames after the break compile once whatever the depth."""

    def __init__(self, lengths: torch.Tensor, max_len: int, group: int, compiled: bool):
        from torch.nn.attention.flex_attention import BlockMask, flex_attention

        assert max_len % BLOCK == 0, max_len
        batch, device, n_blocks = lengths.shape[0], lengths.device, max_len // BLOCK
        self.lengths, self.group = lengths, group
        self.num_blocks = torch.ones(batch, 1, 1, dtype=torch.int32, device=device)  # (B, heads 1, q blocks 1)
        indices = torch.arange(n_blocks, dtype=torch.int32, device=device).expand(batch, 1, 1, n_blocks)

        def attends(b, h, q_idx, kv_idx):
            return kv_idx <= lengths[b]

        # one query block of G rows (G <= 128), all of them row b's
        self.block_mask = BlockMask.from_kv_blocks(self.num_blocks, indices.contiguous(), BLOCK_SIZE=BLOCK,
                                                   mask_mod=attends, seq_lengths=(group, max_len))
        global _compiled_flex
        if compiled and _compiled_flex is None:  # one compiled wrapper per process: its kernels are reused
            _compiled_flex = torch.compile(flex_attention, dynamic=False)
        self.kernel = _compiled_flex if compiled else flex_attention
        # a graph break in a torch.compile'd step: the kernel is compiled on its own (see the class docstring);
        # applied here rather than as a decorator, so that importing sampler does not import dynamo (~1.3 s)
        self.attend = torch.compiler.disable(self._attend, recursive=False)

    def sync_blocks(self):
        """Row b's block count from its length: blocks 0..lengths[b] // BLOCK hold positions 0..lengths[b]."""
        self.num_blocks.copy_((self.lengths // BLOCK + 1).view(-1, 1, 1))

    def __call__(self, q, k, v):
        return self.attend(q, k, v)

    def _attend(self, q, k, v):
        """q (B, H, 1, hd), this layer's whole cache k, v (B, Hkv, S, hd) -> (B, H, 1, hd)."""
        B, H, _, hd = q.shape
        qg = q.reshape(B, H // self.group, self.group, hd)                         # (B, Hkv, G, hd)
        # Every compiled shape is a cache entry of flex_attention's code object; past dynamo's default
        # limit (8) the kernel would silently run unfused. A long run meets a new buffer length now and then.
        with torch._dynamo.config.patch(recompile_limit=FLEX_RECOMPILE_LIMIT):
            y = self.kernel(qg, k, v, block_mask=self.block_mask)                 # (B, Hkv, G, hd)
        return y.reshape(B, H, 1, hd)


def _decode_kernel(attention: str, cache: KVCache, config, compile: bool):
    """KVCache.attend for generate with attention="prefix": the compiled length-aware kernel on CUDA, and
    on the CPU when the step is compiled too (compile=True: CUDA's code path without the CUDA graph);
    otherwise None, the model's dense masked kernel over the whole buffer (on the CPU: the same values)."""
    if attention == "prefix" and (cache.lengths.device.type == "cuda" or compile):
        group = config.num_attention_heads // config.num_key_value_heads
        return PrefixAttention(cache.lengths, cache.max_len, group, compiled=True)
    return None


# -----------------------------------------------------------------------------
# The decode loop over static buffers


class _Decoder:
    """Every tensor a decode step reads or writes, one row per slot, allocated once (static addresses: a
    CUDA graph replays against them); `step()` samples one token for every slot, records it and feeds it
    back; `admit()` and `harvest()` put samples into slots and take their records out, between steps."""

    def __init__(self, model, cache, stop_ids, max_new_tokens, vocab_size, params):
        dev, S, N = cache.lengths.device, cache.lengths.shape[0], params["top_n"]
        self.model, self.cache, self.vocab_size, self.params = model, cache, vocab_size, params
        self.stop_ids, self.max_new = stop_ids, max_new_tokens
        self.slot = torch.arange(S, device=dev)                                    # (S,)
        self.logits = torch.zeros(S, vocab_size, dtype=torch.float32, device=dev)  # next-token logits
        # the sample's uniforms at its steps 0..max_new-1 (column max_new: read by finished slots, unused)
        self.uniforms = torch.zeros(S, max_new_tokens + 1, dtype=torch.float32, device=dev)
        self.t = torch.zeros(S, dtype=torch.long, device=dev)                      # tokens generated so far
        self.alive = torch.zeros(S, dtype=torch.bool, device=dev)                  # holds an unfinished sample
        self.useful = torch.zeros((), dtype=torch.long, device=dev)                # counters, see generate
        self.kv_read = torch.zeros((), dtype=torch.long, device=dev)
        self.kv_longest = torch.zeros((), dtype=torch.long, device=dev)
        # records, one row per slot; column max_new is where idle slots write (never read)
        L = max_new_tokens + 1
        self.records = (torch.zeros(S, L, dtype=torch.long, device=dev),          # tokens
                        torch.zeros(S, L, dtype=torch.float32, device=dev),       # logprobs
                        torch.zeros(S, L, N, dtype=torch.long, device=dev),       # topn_ids
                        torch.zeros(S, L, N, dtype=torch.float32, device=dev),    # topn_probs
                        torch.zeros(S, L, dtype=torch.float32, device=dev))       # entropy

    def step(self):
        # No Python branch depends on tensor values and nothing is read back to the host: this whole
        # function is one CUDA graph. Each slot's step counter `t` is a device tensor for the same reason.
        u = self.uniforms.gather(1, self.t[:, None])[:, 0]                        # (S,)
        token, *record = sample(self.logits, u, **self.params)
        col = torch.where(self.alive, self.t, self.max_new)                        # (S,) where to record
        for buf, x in zip(self.records, (token, *record)):
            buf.index_put_((self.slot, col), x)
        lengths = self.cache.lengths                                               # (S,) the new token's position
        self.useful += self.alive.sum()
        self.kv_read += (lengths + 1).sum()                                        # positions 0..length
        self.kv_longest += (lengths.max() + 1) * lengths.shape[0]
        if self.cache.attend is not None:                                         # the length-aware kernel
            self.cache.attend.sync_blocks()
        self.t += self.alive
        stopped = (token[:, None] == self.stop_ids).any(-1)                        # the stop token counts
        self.alive &= ~(stopped | (self.t == self.max_new))
        # the model forward: ~all of the step's bytes (weights + cache) and most of its kernels
        self.logits.copy_(decode_one_token(self.model, token, self.cache, self.vocab_size))
        lengths.mul_(self.alive)  # finished and free slots stay at length 0: they write and attend position 0

    def admit(self, slots: list[int], pre: KVCache, rows: list[int], logits: torch.Tensor, keys: torch.Tensor):
        """Slot slots[i] starts the sample of prefilled row rows[i] (`pre`, `logits`), whose random stream
        has the key keys[i] (its uniforms are computed here, on the CPU: integer ops, the same everywhere)."""
        s = torch.tensor(slots, device=self.slot.device)
        r = torch.tensor(rows, device=self.slot.device)
        n = pre.max_len
        self.cache.k[:, s, :, :n] = pre.k[:, r]
        self.cache.v[:, s, :, :n] = pre.v[:, r]
        self.cache.lengths[s] = pre.lengths[r]
        self.cache.empty = False
        self.logits[s] = logits[r]
        self.uniforms[s, :self.max_new] = row_uniforms(keys, self.max_new).to(s.device)
        self.t[s] = 0
        self.alive[s] = True

    def harvest(self, slots: list[int]):
        """The records of finished slots, on the CPU: tokens generated (n,) and the five (n, max_new[, N])
        record tensors, zero after each row's end."""
        s = torch.tensor(slots, device=self.slot.device)
        n = self.t[s].cpu()                                                        # (n,)
        written = torch.arange(self.max_new) < n[:, None]                         # (n, max_new)
        out = []
        for buf in self.records:
            x = buf[s, :self.max_new].cpu()
            out.append(torch.where(written.view(*written.shape, *[1] * (x.dim() - 2)), x, 0))
        return n, out


def _warm_up(dec: _Decoder, step_fn, cuda_graph: bool):
    """Run `step_fn` while every slot is free (a first call compiles what is compiled) and, with
    cuda_graph, record it as a CUDA graph (returned; else None). On CUDA the warm-up steps (cuBLAS
    handles, torch.compile) run on a side stream as PyTorch requires. Free slots record nothing and stay
    at length 0 (they write position 0 of their cache rows, which admission overwrites), so only the
    counters need resetting. Capture itself executes nothing."""
    graph = None
    if cuda_graph:
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(3):
                step_fn()
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            step_fn()
    else:
        step_fn()
    for counter in (dec.useful, dec.kv_read, dec.kv_longest):
        counter.zero_()
    return graph


# Why torch.compile failed in this process, once it has (then nothing is compiled again: the failure would
# repeat, and each attempt can cost minutes). See `generate`'s fallback.
_compile_failure: str | None = None


def _compile_failed(e: Exception) -> str:
    """Remember a compile failure and say, in one line on stderr, what failed and what runs instead."""
    global _compile_failure
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    _compile_failure = f"{type(e).__name__}: {lines[0][:200] if lines else '(no message)'}"
    print(f"warning: torch.compile failed ({_compile_failure}); the sampler falls back to attention=\"full\" "
          "and an eager decode step for the rest of this process", file=sys.stderr, flush=True)
    return _compile_failure


class _Queue:
    """The samples waiting for a slot, in prefill-plan order. A chunk of prompts is prefilled when its
    first sample is taken and kept until its last one is. A chunk holds at most as many prompts as fill
    the slots (ceil(slots / n_samples)): at most two chunks' caches are alive, 2 x that many prompts."""

    def __init__(self, model, prompts, n_samples, vocab_size, prefill_tokens, slots):
        self.model, self.prompts, self.vocab_size = model, prompts, vocab_size
        self.plan = prefill_plan([len(p) for p in prompts], prefill_tokens, -(-slots // n_samples))
        self.order = [(c, j, p * n_samples + g) for c, chunk in enumerate(self.plan)
                      for j, p in enumerate(chunk) for g in range(n_samples)]
        self.next, self.chunk, self.pre = 0, -1, None
        self.prefill_s, self.real_tokens, self.padded_tokens = 0.0, 0, 0

    def __len__(self):
        return len(self.order) - self.next

    def take(self, n: int):
        """Up to n waiting samples, grouped by chunk: [(sample ids, prefilled KVCache, its rows, logits)]."""
        groups = []
        for c, j, i in self.order[self.next:self.next + n]:
            if c != self.chunk:
                self.chunk, self.pre = c, self._prefill(self.plan[c])
            if not groups or groups[-1][1] is not self.pre[0]:
                groups.append(([], self.pre[0], [], self.pre[1]))
            groups[-1][0].append(i)
            groups[-1][2].append(j)
        self.next += n
        return groups

    def _prefill(self, chunk: list[int]):
        sync = torch.cuda.synchronize if self.model.output_weight.is_cuda else (lambda: None)
        t0 = time.perf_counter()
        prompts = [self.prompts[i] for i in chunk]
        out = prefill(self.model, prompts, self.vocab_size)
        sync()
        self.prefill_s += time.perf_counter() - t0
        self.real_tokens += sum(map(len, prompts))
        self.padded_tokens += len(prompts) * max(map(len, prompts))
        return out


# -----------------------------------------------------------------------------
# Public entry point


@torch.inference_mode()
def generate(model: Transformer, prompts: list[list[int]], n_samples: int, max_new_tokens: int,
             temperature: float = 1.0, top_p: float = 1.0, top_k: int = 0, stop_ids=(), top_n: int = 3,
             seed: int = 0, vocab_size: int | None = None, greedy: bool = False, progress: bool = False,
             cuda_graph: bool | None = None, compile: bool = False, prefill_tokens: int = 32768,
             check_every: int | None = None, stats: dict | None = None, schedule: str = "refill",
             slots: int | None = None, attention: str = "prefix") -> Rollout:
    """Sample `n_samples` answers to each prompt (rows p*n_samples .. (p+1)*n_samples-1 answer prompt p).

    slots: rows decoded at once (memory: their KV cache); default every sample at once. schedule:
    "refill" (free slots take the next waiting samples at once) or "static" (only when all are free).
    attention: "prefix" (each row attends its filled prefix only) or "full" (the whole buffer).
    The samples do not depend on slots, schedule, attention or the other prompts of the call.
    temperature 0 or greedy=True: argmax decoding. cuda_graph: None = on when the model is on CUDA.
    compile: torch.compile the step before capture. prefill_tokens: padded prompt tokens per prefill
    chunk (bounds prefill memory). check_every: steps between host checks for finished rows (a sync);
    default 1 on CPU, 16 on CUDA. stats: if a dict is given, it receives the seconds spent in prefill, in
    CUDA-graph warm-up + capture (and torch.compile on a first call) and in the decode loop, the number
    of decode steps, slots and rows, the prompt tokens prefilled (prefill_tokens) and padded
    (prefill_padded_tokens), and the work counters (one layer, machine-independent):
        useful_tokens          generated tokens
        row_steps              rows computed, summed over decode steps (slots x steps, idle slots included)
        kv_slots_read          cache positions attended, summed over rows and steps (a row its prefix, an
                               idle slot 1 position; attention="full": the whole buffer for every row)
        kv_slots_min           the minimum: sum over samples and their positions t of (prompt length + t + 1)
        kv_slots_read_longest  what a kernel reading every row up to the longest live row would read
    On CUDA the kernel loads whole 128-position blocks, up to 127 positions per row and step above kv_slots_read.
    """
    if not prompts or n_samples < 1 or max_new_tokens < 1 or any(len(p) == 0 for p in prompts):
        raise ValueError("need at least one non-empty prompt, n_samples >= 1 and max_new_tokens >= 1")
    if schedule not in ("refill", "static") or attention not in ("prefix", "full"):
        raise ValueError(f"schedule={schedule!r} (refill|static), attention={attention!r} (prefix|full)")
    if slots is not None and slots < 1:
        raise ValueError(f"slots={slots}: need at least 1")
    device, dtype = model.output_weight.device, model.output_weight.dtype
    V = min(vocab_size or model.config.vocab_size, model.config.vocab_size)
    greedy = greedy or temperature == 0
    params = dict(temperature=temperature, top_k=top_k, top_p=top_p, top_n=min(top_n, V), greedy=greedy)
    on_cuda = device.type == "cuda"
    cuda_graph = on_cuda if cuda_graph is None else cuda_graph
    check_every = check_every or (16 if on_cuda else 1)
    P, G = len(prompts), n_samples
    R = P * G
    S = min(slots or R, R)
    sync = torch.cuda.synchronize if on_cuda else (lambda: None)
    t0 = time.perf_counter()

    # --- the static buffers: the cache of S rows and the decoder state
    max_len = -(-(max(len(p) for p in prompts) + max_new_tokens) // BLOCK) * BLOCK  # few distinct shapes
    cache = KVCache(model.config, S, max_len, device, dtype)  # (layers, S, Hkv, max_len, hd)
    stop = torch.tensor(sorted(set(stop_ids)), dtype=torch.long, device=device).view(-1)  # (n_stop,)
    dec = _Decoder(model, cache, stop, max_new_tokens, V, params)
    # Something is compiled when compile=True, or when the length-aware kernel runs (CUDA). If compiling
    # fails (no C compiler, no usable Triton, a torch without FlexAttention, an inductor bug), say so once
    # and fall back to the dense kernel and an eager step, never silently; a process whose compile failed
    # does not try again.
    compiling = _compile_failure is None and (compile or (attention == "prefix" and on_cuda))
    step_fn, graph = dec.step, None
    try:
        if compiling:
            cache.attend = _decode_kernel(attention, cache, model.config, compile)
            step_fn = torch.compile(dec.step, dynamic=False) if compile else dec.step
        graph = _warm_up(dec, step_fn, cuda_graph) if (cuda_graph or compiling) else None
    except Exception as e:
        if not compiling or isinstance(e, torch.OutOfMemoryError):
            raise   # nothing was compiled: a real error
        _compile_failed(e)
        compiling, cache.attend, step_fn = False, None, dec.step
        graph = _warm_up(dec, step_fn, cuda_graph)   # also resets what a half-run compiled step counted
    if _compile_failure is not None and (compile or on_cuda):
        attention = "full"   # what ran instead (stats say so)
    sync()
    t_capture = time.perf_counter()

    # --- the loop: admit waiting samples into free slots, run steps, take finished rows back
    keys = row_keys(prompts, G, seed)                                              # (R, 2)
    queue = _Queue(model, prompts, G, V, prefill_tokens, S)
    out = [torch.zeros(R, max_new_tokens, *buf.shape[2:], dtype=buf.dtype) for buf in dec.records]
    n_tokens = torch.zeros(R, dtype=torch.long)
    owner = [-1] * S                                                               # sample in each slot
    free = list(range(S))
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=R, desc="sampling", unit="sample", leave=False)
    steps = 0
    while True:
        if queue and free and (schedule == "refill" or len(free) == S):
            for ids, pre, rows, logits in queue.take(min(len(free), len(queue))):
                slot_ids, free = free[:len(ids)], free[len(ids):]
                dec.admit(slot_ids, pre, rows, logits, keys[ids])
                for s, i in zip(slot_ids, ids):
                    owner[s] = i
        if len(free) == S:
            break
        for _ in range(check_every):
            graph.replay() if graph is not None else step_fn()
        steps += check_every
        # reading `alive` on the host is a CPU-GPU sync: on CUDA only every check_every steps, so a
        # finished row's slot may idle up to check_every - 1 steps before it is refilled
        alive = dec.alive.tolist()
        done = [s for s in range(S) if owner[s] >= 0 and not alive[s]]
        if done:
            ids = [owner[s] for s in done]
            n, records = dec.harvest(done)
            n_tokens[ids] = n
            for o, x in zip(out, records):
                o[ids] = x
            for s in done:
                owner[s] = -1
            free = sorted(free + done)
            if bar is not None:
                bar.update(len(done))
    if bar is not None:
        bar.close()
    sync()
    t_end = time.perf_counter()

    # --- trim to the longest row
    L = int(n_tokens.max())
    tokens, logprobs, topn_ids, topn_probs, entropy = (o[:, :L].contiguous() for o in out)
    mask = torch.arange(L) < n_tokens[:, None]                                     # (R, L)
    stop_set = set(stop.tolist())
    finish = ["stop" if n > 0 and int(tokens[i, n - 1]) in stop_set else "length"
              for i, n in enumerate(n_tokens.tolist())]
    if stats is not None:
        prompt_len = torch.tensor([len(prompts[i // G]) for i in range(R)])
        useful, row_steps = int(dec.useful), steps * S
        stats.update(
            prefill_s=queue.prefill_s, capture_s=t_capture - t0, decode_s=t_end - t_capture - queue.prefill_s,
            steps=steps, rows=R, slots=S, schedule=schedule, attention=attention,
            useful_tokens=useful, row_steps=row_steps,
            kv_slots_read=int(dec.kv_read) if attention == "prefix" else row_steps * max_len,
            kv_slots_min=int((n_tokens * prompt_len + n_tokens * (n_tokens + 1) // 2).sum()),
            kv_slots_read_longest=int(dec.kv_longest),
            prefill_tokens=queue.real_tokens, prefill_padded_tokens=queue.padded_tokens)
    del graph
    return Rollout(tokens=tokens, mask=mask, logprobs=logprobs, topn_ids=topn_ids, topn_probs=topn_probs,
                   entropy=entropy, finish_reason=finish, lengths=n_tokens)
