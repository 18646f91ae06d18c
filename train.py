"""
train.py: the GRPO / CaSP training loop (RLVR on one GPU, several GPUs through FSDP2, or a laptop CPU).

    python train.py                                  # the CPU demo: tiny model, built-in task, < 5 min
    python train.py --model qwen-1.5b                # the paper's setting on MATH train (one GPU)
    torchrun --nproc_per_node 8 train.py --model qwen-7b --fsdp

One step (the paper's Algorithm, as the released verl code runs it), `rl_step` top to bottom:
    1. draw `prompts_per_step` problems                                   (PromptStream: seeded, resumable)
    2. sample G = `group_size` responses per prompt                        (rollout.rollout -> sampler.generate)
    3. verify every response -> reward r in {0, 1}; truncated -> 0        (rollout.rollout -> verifier.verify)
    4. A_i = (r_i - mean_group) / (std_group + 1e-6)                       (casp.group_advantages)
    5. old log-probs pi_old(y_t) recomputed by the training forward pass   (old_logprobs; no grad)
    6. `update`: split the prompts into `mini_batches` mini-batches; for each, for each micro-batch of at
       most `micro_batch_tokens` tokens: hidden states -> candidate statistics (token_stats, the output
       layer in chunks) -> casp.policy_loss (CaSP or GRPO, one LossConfig) divided by the valid-token count
       of the WHOLE mini-batch (token-mean) -> backward; then clip the grad norm and take an AdamW step
    7. log one line and one JSON object (metrics.jsonl); eval and save periodically

Around it: runtime.py (processes and FSDP2, the memory pre-flight, the run folder, checkpoints), tiny.py
(the CPU demo's task, tokenizer and warm start), rollout.py (sample + decode + verify, shared with eval.py).

Numerics. At lr 1e-6 an AdamW update moves a weight by ~1e-6, far below bfloat16's resolution (~4e-3
of the weight): bf16 weights would silently drop almost every update. So the trained weights and the
AdamW state are float32 ("master weights"); forward/backward run under bf16 autocast (`--dtype
bfloat16`, the default on CUDA), and sampling uses a bf16 copy refreshed after every step.

Departures from the paper / released code, all deliberate:
    - rows whose advantage is exactly 0 (groups with equal rewards) are not run through forward/backward:
      their loss and gradient are exactly 0, but their tokens still count in the token-mean denominator,
      so the update is the same as verl's.
    - the demo (`--model tiny`) uses its own defaults (DEMO_DEFAULTS, e.g. a larger lr); the config
      logged in the output folder shows every value actually used.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import math
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

import data
import tiny
from casp import LossConfig, add_metrics, candidate_stats_from_hidden, group_advantages, mean_metrics, policy_loss
from data import UserError, at_least, between, positive
from model import MODEL_NAMES, ModelConfig, Transformer, casp_home, load_model, load_tokenizer, resolve_model_path
from runtime import (Dist, check_resume_config, claim_run_folder, estimate_memory, latest_checkpoint,
                     interrupted_message, load_checkpoint, current_memory, peak_memory_gb, preflight, save_checkpoint, setup_dist, shard_model,
                     start_metrics_file, write_json_atomic)
from eval import pass_at_k
from rollout import rollout

# -----------------------------------------------------------------------------
# Configuration: one argparse block, logged verbatim (vars(args)) as the run's config.

# The CPU demo's values where they differ from the paper's (a 1M-parameter model learns at lr 1e-6 in
# no useful number of steps). Applied only when --model tiny and the flag is not given explicitly.
DEMO_DEFAULTS = dict(lr=2e-4, steps=30, prompts_per_step=32, mini_batches=2, max_response_len=48,
                     max_prompt_len=64, micro_batch_tokens=8192, eval_every=0, eval_prompts=64,
                     save_every=0, dtype="float32", weight_decay=0.0)


class HelpFormatter(data.HelpFormatter):
    presets = {"--model tiny": DEMO_DEFAULTS}


def get_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[1], formatter_class=HelpFormatter)
    g = p.add_argument_group("model and data")
    g.add_argument("--model", default="tiny", help=f"a name ({', '.join(MODEL_NAMES)}) or a HF model folder")
    g.add_argument("--init", default="checkpoint", choices=["checkpoint", "random"],
                   help="random: the named architecture with random weights (timing, memory)")
    g.add_argument("--tokenizer", default=None, help="folder or tokenizer.json (default: the model's folder)")
    g.add_argument("--data", default=None, help="training problems: a dataset name or JSONL path "
                   "(default: the built-in task for tiny, math_train otherwise)")
    g.add_argument("--heldout", default=None, help="held-out problems for periodic pass@1 "
                   "(default: the built-in task's held-out split for tiny, math500 otherwise)")
    g.add_argument("--data-dir", default=None, help="folder of the dataset files (default: $CASP_DATA, else "
                   "~/.cache/casp/data; `python data.py prepare` writes them)")
    g.add_argument("--answer-mode", default="strict", choices=["strict", "lenient"],
                   help="what the verifier reads as the answer: strict = the last \\boxed{} only (the paper's "
                   "reward); lenient = also 'the answer is ...' and a final-line fallback")
    g = p.add_argument_group("loss (paper defaults)")
    g.add_argument("--loss", default="casp", choices=["casp", "grpo"])
    g.add_argument("--top-n", type=at_least(1), default=3, help="N: candidates that share the positive gradient")
    g.add_argument("--alpha", type=between(0, 1, low_open=False, high_open=False), default=0.01,
                   help="a: share of the positive push moved to the top-N")
    g.add_argument("--entropy-quantile", type=between(0, 1), default=0.8, help="tau of the entropy gate")
    g.add_argument("--no-entropy-gate", action="store_true", help="w = 1 at every token")
    g.add_argument("--neg-scale", type=positive, default=1.1, help="lambda: push on top-1 of wrong answers")
    g.add_argument("--clip-eps", type=between(0, 1), default=0.2, help="PPO clip range")
    g.add_argument("--clip-eps-high", type=positive, default=None,
                   help="DAPO clip-higher (default: --clip-eps)")
    g.add_argument("--no-std-norm", action="store_true", help="Dr. GRPO advantages (no std division)")
    g = p.add_argument_group("optimisation")
    g.add_argument("--lr", type=positive, default=1e-6, help="constant learning rate")
    g.add_argument("--weight-decay", type=at_least(0.0, float), default=0.01, help="AdamW weight decay (verl's)")
    g.add_argument("--grad-clip", type=positive, default=1.0, help="gradient norm clip")
    g.add_argument("--steps", type=at_least(1), default=200, help="RL steps")
    g.add_argument("--prompts-per-step", type=at_least(1), default=1024, help="prompts sampled per step")
    g.add_argument("--mini-batches", type=at_least(1), default=4, help="optimizer steps per training step")
    g.add_argument("--micro-batch-tokens", type=at_least(1), default=16384, help="padded tokens per forward/backward")
    g = p.add_argument_group("rollout")
    g.add_argument("--group-size", type=at_least(2), default=8, help="G: responses per prompt (>= 2)")
    g.add_argument("--temperature", type=positive, default=1.0, help="sampling temperature")
    g.add_argument("--top-p", type=between(0, 1, high_open=False), default=1.0, help="nucleus sampling")
    g.add_argument("--max-prompt-len", type=at_least(1), default=1024, help="longer prompts are skipped and counted")
    g.add_argument("--max-response-len", type=at_least(1), default=3072,
                   help="tokens per response; a response cut off here scores 0")
    g.add_argument("--rollout-batch", type=at_least(1), default=256, help="rows sampled at once (KV-cache memory)")
    g = p.add_argument_group("system")
    g.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="cuda or cpu")
    g.add_argument("--dtype", default=None, choices=["bfloat16", "float32"],
                   help="compute dtype (weights and AdamW state stay float32); default: bfloat16 on CUDA, "
                   "float32 on the CPU")
    g.add_argument("--grad-checkpoint", action="store_true", help="activation checkpointing per block")
    g.add_argument("--fsdp", action="store_true", help="shard with FSDP2 (launch with torchrun)")
    g.add_argument("--seed", type=int, default=0, help="seed of everything random")
    g.add_argument("--out", default=None, help="run folder (default: runs/<model>-<loss>)")
    g.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    g.add_argument("--overwrite", action="store_true", help="delete the run already in --out and start anew")
    g.add_argument("--force", action="store_true", help="run even if the memory estimate exceeds free memory")
    g.add_argument("--eval-every", type=at_least(0), default=25, help="held-out pass@1 every k steps (0: off)")
    g.add_argument("--eval-prompts", type=at_least(1), default=500, help="held-out problems evaluated")
    g.add_argument("--save-every", type=at_least(0), default=50, help="checkpoint every k steps (0: only at the end)")
    g.add_argument("--keep", type=at_least(1), default=2, help="checkpoints kept")
    g.add_argument("--warm-start-steps", type=at_least(1), default=300, help="tiny demo: supervised steps (cached)")
    args = p.parse_args(argv)
    if args.model == "tiny":  # the demo's own defaults, unless given on the command line
        p.set_defaults(**DEMO_DEFAULTS)
        args = p.parse_args(argv)
    return check_args(p, args)


def check_args(p: argparse.ArgumentParser, args):
    """The checks that involve several flags (one flag's own range is checked by its type), and the
    defaults that depend on others."""
    if args.dtype is None:
        args.dtype = "bfloat16" if str(args.device).startswith("cuda") else "float32"
    if args.prompts_per_step % args.mini_batches:
        p.error(f"--prompts-per-step {args.prompts_per_step} is not a multiple of --mini-batches "
                f"{args.mini_batches}")
    if args.resume and args.overwrite:
        p.error("--resume and --overwrite contradict each other: choose one")
    if str(args.device).startswith("cuda") and not torch.cuda.is_available():
        p.error(f"--device {args.device}: CUDA is not available here (use --device cpu)")
    if args.out is None:
        args.out = str(Path("runs") / f"{Path(str(args.model).rstrip('/')).name}-{args.loss}")
    return args


# -----------------------------------------------------------------------------
# Data: problems, prompts, and a resumable stream over them


class PromptStream:
    """Problems in a seeded random order, epoch after epoch. The position is the whole state."""

    def __init__(self, n: int, seed: int):
        self.n, self.seed, self.epoch, self.pos = n, seed, 0, 0

    def _order(self):
        return np.random.default_rng([self.seed, self.epoch]).permutation(self.n)

    def take(self, k: int) -> list[int]:
        out = []
        while len(out) < k:
            order = self._order()
            need = k - len(out)
            out += order[self.pos:self.pos + need].tolist()
            self.pos += need
            if self.pos >= self.n:
                self.epoch, self.pos = self.epoch + 1, 0
        return out

    def state_dict(self):
        return {"epoch": self.epoch, "pos": self.pos}

    def load_state_dict(self, s):
        self.epoch, self.pos = s["epoch"], s["pos"]


def load_problems(args, tokenizer):
    """(train problems, held-out problems), each a list of dicts with prompt_ids."""
    if args.model == "tiny" and args.data is None:
        train = tiny.synthetic_problems(5000, seed=args.seed, split="train")
        held = tiny.synthetic_problems(args.eval_prompts, seed=args.seed, split="heldout")
    else:
        train = data.load_dataset(args.data or "math_train", args.data_dir)
        held = data.load_dataset(args.heldout or "math500", args.data_dir)[:args.eval_prompts]
    train, skipped = data.encode_prompts(train, tokenizer, args.max_prompt_len)
    held, _ = data.encode_prompts(held, tokenizer, args.max_prompt_len)
    if not train:
        raise UserError(f"no training prompt fits --max-prompt-len {args.max_prompt_len} ({skipped} skipped)")
    return train, held, skipped


# -----------------------------------------------------------------------------
# One RL step, top to bottom: the paper's algorithm (module docstring, steps 2-7)


def rl_step(step: int, model, policy, opt, tokenizer, problems: list[dict], cfg: LossConfig, args,
            dist: Dist) -> dict:
    """Sample -> verify -> advantages -> old log-probs -> update (mini-batches of micro-batches) ->
    metrics. `problems` are this rank's prompts of the step; `policy` samples, `model` is trained."""
    dev = dist.device
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    t0 = time.time()

    # 2-3. G responses per prompt from the sampling copy, each verified: r in {0, 1} (truncated: 0)
    policy.eval()
    seed = args.seed * 1_000_003 + step * 7919 + dist.rank * 104729     # every rank its own samples
    ro = rollout(policy, tokenizer, problems, args.group_size, max_new_tokens=args.max_response_len,
                 temperature=args.temperature, top_p=args.top_p, top_n=cfg.top_n, seed=seed,
                 slots=args.rollout_batch, answer_mode=args.answer_mode)
    t_sample = time.time() - t0

    # 4. A_i = (r_i - mean_group) / (std_group + 1e-6), broadcast to the response's tokens
    batch = build_batch(problems, ro, args.group_size, normalize_std=not args.no_std_norm)
    active = torch.nonzero(batch.adv != 0).flatten()   # A = 0 rows: zero loss and gradient, skipped

    # 5. pi_old(y_t): the training forward pass re-scores the sampled tokens (no grad)
    model.train()
    old = old_logprobs(model, batch, active, cfg, args, dist)                           # (R, S)

    # 6. mini-batches of whole prompt groups; gradients accumulated over micro-batches; clip; AdamW
    t1 = time.time()
    m = update(model, opt, batch, old, cfg, args, dist)
    refresh_sampling_copy(policy, model)
    t_update = time.time() - t1

    # 7. metrics: the loss's (over the tokens it saw), the rollout's, the system's
    m.update(rollout_metrics(ro, batch, old, args.group_size, dist),
             step=step + 1, lr=opt.param_groups[0]["lr"], time_sample=t_sample - ro.verify_s,
             time_verify=ro.verify_s, time_update=t_update, peak_mem_gb=peak_memory_gb(dev),
             tokens_per_s=float(ro.mask.sum()) / max(time.time() - t0, 1e-9))
    return m


def update(model, opt, batch: Batch, old: torch.Tensor, cfg: LossConfig, args, dist: Dist) -> dict:
    """`mini_batches` AdamW steps, one pass over the batch. Each micro-batch's loss is divided by the
    valid-token count of its WHOLE mini-batch (token-mean), so accumulating micro-batches gives the
    mini-batch's gradient exactly. Returns the loss metrics, means over every token the loss saw."""
    dev = dist.device
    sums, grad_norms, nan_skipped = {}, [], 0
    for rows in mini_batches(batch.group, args.mini_batches):
        # the one denominator, summed over ranks; FSDP averages gradients over ranks, hence the world factor
        loss_denom = max(dist.all_sum(float(batch.resp_mask[rows].sum())), 1.0) / dist.world
        opt.zero_grad(set_to_none=True)
        finite = True
        for idx, S, mask in micro_batches(batch, rows[batch.adv[rows] != 0], args.micro_batch_tokens, dist):
            stats = token_stats(model, batch.seq[idx, :S], mask, cfg, args.dtype, dev)
            loss, m = policy_loss(stats, old[idx, 1:S].to(dev), batch.adv[idx].to(dev), mask.to(dev), cfg,
                                  loss_denom=loss_denom)
            loss.backward()   # even when NaN: under FSDP every rank must run the same passes
            finite &= bool(torch.isfinite(loss))   # a host sync per micro-batch
            add_metrics(sums, m)
        if dist.all_sum(0.0 if finite else 1.0) > 0:   # a NaN on any rank: every rank skips this step
            opt.zero_grad(set_to_none=True)
            nan_skipped += 1
            continue
        norm = torch.nn.utils.clip_grad_norm_(model.parameters(), args.grad_clip)
        grad_norms.append(float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm))
        opt.step()
    # Free the last mini-batch's float32 gradients (4 bytes per parameter: 6 GB for 1.5B) before the next
    # rollout, which would otherwise hold them while its KV cache is allocated. The memory pre-flight
    # counts gradients in the update phase only.
    opt.zero_grad(set_to_none=True)
    out = mean_metrics(all_sum_metrics(sums, dist)) if sums else {}
    out.update(grad_norm=float(np.mean(grad_norms)) if grad_norms else float("nan"), nan_skipped=nan_skipped)
    return out


@torch.no_grad()
def old_logprobs(model, batch: Batch, rows: torch.Tensor, cfg: LossConfig, args, dist: Dist) -> torch.Tensor:
    """log pi_old(y_t) of the sampled tokens of `rows` under the training forward pass, (R, S) float32, 0
    elsewhere. (The sampler's own numbers differ by kernel rounding and, in bf16, by the weight copy;
    their gap is logged as logprob_mismatch.)"""
    old = torch.zeros(batch.seq.shape)                                                  # (R, S)
    for idx, S, mask in micro_batches(batch, rows, args.micro_batch_tokens, dist):
        stats = token_stats(model, batch.seq[idx, :S], mask, cfg, args.dtype, dist.device)
        old[idx, 1:S] = old[idx, 1:S].masked_scatter(mask, stats.logp_y.float().cpu())
    return old


# -----------------------------------------------------------------------------
# The pieces of the step


def loss_config(args) -> LossConfig:
    """The loss's hyperparameters, built once from the command line (casp.LossConfig)."""
    return LossConfig(loss=args.loss, top_n=args.top_n, alpha=args.alpha, neg_scale=args.neg_scale,
                      entropy_quantile=None if args.no_entropy_gate else args.entropy_quantile,
                      clip_eps=args.clip_eps, clip_eps_high=args.clip_eps_high, temperature=args.temperature)


@dataclass
class Batch:
    """G responses for each of P prompts, as right-padded prompt+response rows."""
    seq: torch.Tensor            # (R, S) long: prompt ids then response ids, 0-padded
    resp_mask: torch.Tensor      # (R, S) bool: True at response tokens (the ones the loss scores)
    sampler_logprobs: torch.Tensor  # (R, S) float32: the sampler's log-prob of each response token
    adv: torch.Tensor            # (R,) float32
    rewards: torch.Tensor        # (R,) float32
    group: torch.Tensor          # (R,) long: index of the prompt in this step

    def rows(self, idx):
        return Batch(self.seq[idx], self.resp_mask[idx], self.sampler_logprobs[idx], self.adv[idx],
                     self.rewards[idx], self.group[idx])


def build_batch(problems, ro, group_size: int, normalize_std: bool = True) -> Batch:
    """Right-padded rows [prompt, response] for every sampled response, with the group advantages."""
    R = ro.tokens.shape[0]
    group = torch.arange(R) // group_size                                            # (R,) prompt of each row
    prompts = [problems[g]["prompt_ids"] for g in group.tolist()]
    lengths = ro.mask.sum(1).tolist()                                                # (R,) response lengths
    S = max(len(p) + n for p, n in zip(prompts, lengths))
    seq = torch.zeros(R, S, dtype=torch.long)                                        # (R, S)
    resp = torch.zeros(R, S, dtype=torch.bool)                                       # (R, S)
    slp = torch.zeros(R, S)                                                          # (R, S)
    for i, (p, n) in enumerate(zip(prompts, lengths)):
        a, b = len(p), len(p) + n
        seq[i, :a] = torch.tensor(p)
        seq[i, a:b] = ro.tokens[i, :n]
        resp[i, a:b] = True
        slp[i, a:b] = ro.logprobs[i, :n]
    adv = group_advantages(ro.rewards, group_size, normalize_std=normalize_std)
    return Batch(seq, resp, slp, adv.float(), ro.rewards, group)


def mini_batches(group: torch.Tensor, n: int) -> list[torch.Tensor]:
    """Rows of each of n mini-batches of consecutive whole prompt groups (verl's ppo_mini_batch_size)."""
    P = int(group.max()) + 1
    per = math.ceil(P / n)
    return [torch.nonzero((group >= k * per) & (group < (k + 1) * per)).flatten() for k in range(n)]


def micro_batches(batch: Batch, rows: torch.Tensor, max_tokens: int, dist: Dist):
    """(row indices, length S, response mask (b, S-1)) of micro-batches of at most max_tokens padded
    tokens: rows sorted by length so similar lengths share padding, each micro-batch trimmed to its
    longest row. Under FSDP every forward/backward is a collective, so every rank runs as many as the
    busiest one: a rank with fewer gets passes over one row with an all-False mask (zero loss, zero
    gradient, same collectives)."""
    length = batch.seq.shape[1] - batch.resp_mask.flip(1).int().argmax(1)     # (R,) end of each row
    length[~batch.resp_mask.any(1)] = 2
    order = rows[torch.argsort(length[rows], descending=True, stable=True)].tolist()
    groups, cur = [], []
    for r in order:
        if cur and (len(cur) + 1) * int(length[cur[0]]) > max_tokens:
            groups.append(cur)
            cur = []
        cur.append(r)
    groups += [cur] if cur else []
    out = [(torch.tensor(g), int(length[g[0]])) for g in groups]
    out = [(idx, S, batch.resp_mask[idx, 1:S]) for idx, S in out]
    idle = (torch.tensor([0]), 2, torch.zeros(1, 1, dtype=torch.bool))
    return out + [idle] * (int(dist.all_max(len(out))) - len(out))


def token_stats(model, seq: torch.Tensor, mask: torch.Tensor, cfg: LossConfig, dtype: str, dev):
    """The candidate statistics of the response tokens: hidden states of the training model, then the
    output layer applied in chunks of 1024 tokens, so the (b, S-1, V) float32 logits never exist whole
    (with bf16: bf16 operands, float32 logits; casp.matmul_float).
    Under FSDP2 the root module (embeddings, output layer) stays gathered after forward until backward,
    so its weight is the full matrix here."""
    with torch.autocast(dev.type, dtype=torch.bfloat16) if dtype == "bfloat16" else contextlib.nullcontext():
        hidden = model(seq[:, :-1].to(dev), return_hidden=True)                            # (b, S-1, D)
    return candidate_stats_from_hidden(hidden, model.output_weight, seq[:, 1:].to(dev), mask.to(dev),
                                       top_n=cfg.top_n, temperature=cfg.temperature,
                                       matmul_dtype=torch.bfloat16 if dtype == "bfloat16" else None)


def all_sum_metrics(sums: dict, dist: Dist) -> dict:
    """Metric sums and counts added over ranks (every rank holds the same keys), so that the means are
    over every token of the step."""
    if dist.world == 1:
        return sums
    return {k: (torch.tensor([dist.all_sum(float(x)) for x in v.flatten()]).view(v.shape) if torch.is_tensor(v)
                else dist.all_sum(float(v))) for k, v in sums.items()}


def rollout_metrics(ro, batch: Batch, old: torch.Tensor, group_size: int, dist: Dist) -> dict:
    """What the sampler saw (sampler_*: the sampling copy's distribution at the sampled tokens, all
    responses) and how the rollout went; means over ranks under FSDP."""
    mask = ro.mask                                                                   # (R, L)
    n = max(int(mask.sum()), 1)
    groups = ro.rewards.view(-1, group_size)                                         # (P, G)
    active = batch.resp_mask & (batch.adv != 0)[:, None]
    mismatch = (old - batch.sampler_logprobs).abs()[active]
    m = dict(reward_mean=float(ro.rewards.mean()),
             frac_mixed_groups=float((groups.min(1).values != groups.max(1).values).float().mean()),
             response_len=float(mask.sum()) / mask.shape[0],
             truncated_frac=float(np.mean([r == "length" for r in ro.finish_reason])),
             sampler_entropy=float(ro.entropy[mask].sum()) / n,
             sampler_topn_probs=(ro.topn_probs[mask].sum(0) / n).tolist(),
             logprob_mismatch=float(mismatch.mean()) if mismatch.numel() else 0.0)
    if dist.world > 1:
        m = {k: ([dist.all_sum(x) / dist.world for x in v] if isinstance(v, list) else dist.all_sum(v) / dist.world)
             for k, v in m.items()}
    return m


def log_line(m: dict) -> str:
    """One line per step; the fields are explained in README.md ("The log line")."""
    topn = "/".join(f"{p:.2f}" for p in m.get("topn_probs", []))
    gated = "/".join(f"{m[k]:.2f}" for k in ("gated_top1_prob", "gated_top2_prob", "gated_top3_prob") if k in m)
    s = (f"step {m['step']:4d} | reward {m['reward_mean']:.3f} | mixed {m['frac_mixed_groups']:.2f} | "
         f"len {m['response_len']:6.1f} | H {m.get('entropy', float('nan')):.3f} | p1..N {topn}"
         + (f" | gated {gated}" if gated else "") +
         f" | clip {m.get('clip_frac', 0):.3f} | gnorm {m['grad_norm']:.3f} | "
         f"t {m['time_sample']:.1f}+{m['time_verify']:.1f}+{m['time_update']:.1f}s | "
         f"{m['tokens_per_s']:.0f} tok/s | mem {m['peak_mem_gb']:.1f} GB")
    if "heldout_pass@1" in m:
        s += f" | held-out pass@1 {m['heldout_pass@1']:.3f}"
    if m.get("nan_skipped"):
        s += f" | NaN loss: {m['nan_skipped']} mini-batch(es) skipped"
    return s


# -----------------------------------------------------------------------------
# Sampling copy of the weights, evaluation


def refresh_sampling_copy(policy: Transformer, model: Transformer):
    """Copy the (float32, possibly sharded) training weights into the bf16 sampling model. Under FSDP
    every parameter is all-gathered ONCE here, for the whole rollout, not per decode step."""
    if policy is model:
        return
    with torch.no_grad():
        for p_s, p in zip(policy.parameters(), model.parameters()):
            full = p.full_tensor() if hasattr(p, "full_tensor") else p
            p_s.copy_(full)


def make_sampling_copy(model: Transformer, args, dist: Dist):
    if args.dtype == "float32" and not args.fsdp:
        return model  # sample with the training weights themselves
    with torch.device("meta"):
        policy = Transformer(model.config)
    policy = policy.to_empty(device=dist.device).to(torch.bfloat16 if args.dtype == "bfloat16" else torch.float32)
    policy.tie_weights()
    policy.eval()
    for p in policy.parameters():
        p.requires_grad_(False)
    refresh_sampling_copy(policy, model)
    return policy


def heldout_pass(policy, tokenizer, problems, args, n: int, seed: int) -> dict:
    """pass@1 (and pass@n) on held-out problems, n samples each at the training temperature, scored
    as in training (--answer-mode; truncated responses 0)."""
    if not problems:
        return {}
    ro = rollout(policy, tokenizer, problems, n, max_new_tokens=args.max_response_len, temperature=args.temperature,
                 top_p=args.top_p, top_n=args.top_n, seed=seed, slots=args.rollout_batch, answer_mode=args.answer_mode)
    correct = ro.rewards.view(len(problems), n).sum(1).long().tolist()
    return {f"pass@{k}": float(np.mean([pass_at_k(n, c, k) for c in correct])) for k in sorted({1, n})}


# -----------------------------------------------------------------------------
# Main


def main(argv=None):
    """The command line: parse, run, and turn a user's mistake into one `error:` line (exit status 2)."""
    args = get_args(argv)
    try:
        return run(args, sys.argv[1:] if argv is None else list(argv))
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None


def model_config(args) -> ModelConfig:
    """The architecture, read before any weight is loaded (for the memory pre-flight)."""
    if args.model == "tiny" or (args.init == "random" and args.model in MODEL_NAMES):
        with contextlib.suppress(FileNotFoundError):
            return ModelConfig.from_json(resolve_model_path(args.model) / "config.json")
        return MODEL_NAMES[args.model][1]
    return ModelConfig.from_json(resolve_model_path(args.model) / "config.json")


def memory_check(args, config: ModelConfig, dist: Dist, longest_prompt: int) -> tuple[str, float]:
    """The memory pre-flight (runtime.estimate_memory): refuses a run that cannot fit, unless --force.
    -> (the summary line, the expected peak in GB: the estimate plus what the process holds already)."""
    rows = args.prompts_per_step * args.group_size // dist.world
    parts = estimate_memory(
        config, rollout_rows=min(rows, max(args.rollout_batch, args.group_size)), total_rows=rows,
        max_prompt_len=longest_prompt, max_response_len=args.max_response_len, mini_batches=args.mini_batches,
        micro_batch_tokens=args.micro_batch_tokens, compute_bytes=2 if args.dtype == "bfloat16" else 4,
        sampling_bytes=0 if args.dtype == "float32" and not args.fsdp else (2 if args.dtype == "bfloat16" else 4),
        grad_checkpoint=args.grad_checkpoint, world=dist.world, top_n=args.top_n)
    expected = (parts["peak"] + current_memory(dist.device)) / 1e9
    if args.force:
        return f"[memory] estimated peak {parts['peak'] / 1e9:.1f} GB (not checked: --force)", expected
    return preflight(parts, dist.device), expected


@dataclass
class Run:
    """Everything a run holds between steps (made by `setup`)."""
    dist: Dist
    out: Path
    model: Transformer            # float32 master weights (sharded under FSDP), trained
    policy: Transformer           # the sampling copy (bf16 on CUDA; the model itself in float32)
    opt: torch.optim.Optimizer
    tokenizer: object
    train_set: list[dict]
    heldout: list[dict]
    n_skipped: int                # training prompts over --max-prompt-len
    stream: PromptStream
    start: int                    # steps already done (resumed runs)
    loss_cfg: LossConfig
    expected_gb: float            # the memory pre-flight's expected peak


def setup(args) -> Run:
    """Processes, run folder, model, data, optimizer; refuses (UserError) before anything large is
    allocated when the run folder, the resume or the memory does not allow the run."""
    dist = setup_dist(args.fsdp, args.device)
    out = Path(args.out)
    claim_run_folder(out, args.resume, args.overwrite, delete=dist.main)
    dist.barrier()   # the other ranks read the folder only after rank 0 has cleared it
    if args.resume:
        check_resume_config(out, vars(args))
    torch.manual_seed(args.seed)
    random.seed(args.seed)
    np.random.seed(args.seed)
    if args.model == "tiny" and not (casp_home() / "tiny" / "config.json").is_file() and dist.main:
        print(f"[warm start] training the tiny model on the built-in task -> {casp_home() / 'tiny'}")
        tiny.warm_start_tiny(casp_home() / "tiny", args.warm_start_steps, args.seed, dist.device)
    dist.barrier()
    try:
        config = model_config(args)
        tokenizer = load_tokenizer(args.tokenizer or _model_dir(args.model))
    except (FileNotFoundError, ValueError) as e:
        raise UserError(str(e)) from None
    train_set, heldout, n_skipped = load_problems(args, tokenizer)
    memory, expected_gb = memory_check(args, config, dist, max(len(p["prompt_ids"]) for p in train_set))
    ckpt = latest_checkpoint(out) if args.resume else None
    model, opt = build_model(args, ckpt, dist)
    stream, start = PromptStream(len(train_set), args.seed), 0
    if ckpt:
        start, stream_state = load_checkpoint(ckpt, opt, dist)
        stream.load_state_dict(stream_state)
    if dist.main:
        out.mkdir(parents=True, exist_ok=True)
        write_json_atomic(out / "config.json", vars(args))
        print("config:", json.dumps(vars(args)))
        print(f"[run] {out}" + (f" (resumed from {ckpt} at step {start})" if ckpt else ""))
        print(f"[model] {args.model}: {config.num_params() / 1e6:.1f}M parameters; prompts: {tokenizer.chat_source}")
        print(f"[data] {len(train_set)} training prompts ({n_skipped} over --max-prompt-len skipped), "
              f"{len(heldout)} held-out\n{memory}")
        start_metrics_file(out / "metrics.jsonl", start)
    return Run(dist, out, model, make_sampling_copy(model, args, dist), opt, tokenizer, train_set, heldout,
               n_skipped, stream, start, loss_config(args), expected_gb)


def run(args, argv: list[str]):
    """The RL loop: a step, its log line, the periodic held-out pass@1 and checkpoint."""
    r = setup(args)
    dist, demo = r.dist, args.model == "tiny"
    if demo and r.start == 0 and dist.main:
        before = heldout_pass(r.policy, r.tokenizer, r.heldout, args, n=8, seed=10**6)
        print(f"[before] held-out pass@1 {before['pass@1']:.3f} | pass@8 {before['pass@8']:.3f}")
    bar = tqdm(range(r.start, args.steps), desc=f"RL ({args.loss})", initial=r.start, total=args.steps,
               disable=not dist.main, dynamic_ncols=True)
    try:
        for step in bar:
            # 1. this step's prompts: every rank draws the same list and keeps its share of whole groups
            problems = [r.train_set[i] for i in r.stream.take(args.prompts_per_step)[dist.rank::dist.world]]
            m = rl_step(step, r.model, r.policy, r.opt, r.tokenizer, problems, r.loss_cfg, args, dist)
            m.update(prompts_skipped_too_long=r.n_skipped, peak_mem_estimate_gb=r.expected_gb)
            if args.eval_every and (step + 1) % args.eval_every == 0:
                m.update({f"heldout_{k}": v for k, v in
                          heldout_pass(r.policy, r.tokenizer, r.heldout, args, n=1, seed=10**6 + step).items()})
            if dist.main:
                with open(r.out / "metrics.jsonl", "a") as f:
                    f.write(json.dumps(m) + "\n")
                bar.write(log_line(m))
            if (args.save_every and (step + 1) % args.save_every == 0) or step + 1 == args.steps:
                save_checkpoint(r.out, step + 1, r.model, r.opt, r.stream.state_dict(), args.keep, dist,
                                r.tokenizer.folder)
    except KeyboardInterrupt:
        bar.close()
        if dist.main:
            print("\n" + interrupted_message(r.out, argv), file=sys.stderr)
        raise SystemExit(130) from None
    if demo and dist.main:
        after = heldout_pass(r.policy, r.tokenizer, r.heldout, args, n=8, seed=10**6)
        print(f"[after {args.loss}] held-out pass@1 {after['pass@1']:.3f} | pass@8 {after['pass@8']:.3f}")
    if dist.main:
        print(f"[done] run folder {r.out}: config.json, metrics.jsonl (one JSON line per step), checkpoint "
              f"{latest_checkpoint(r.out)} (model/ loads in transformers and eval.py); "
              f"plot: python eval.py --plot-metrics {r.out / 'metrics.jsonl'}")
    if args.fsdp:
        torch.distributed.destroy_process_group()
    return r.model


def build_model(args, ckpt: Path | None, dist: Dist):
    """The float32 master model (from the checkpoint when resuming; sharded under FSDP) and its AdamW."""
    model = load_model(ckpt / "model" if ckpt else args.model, device=dist.device, dtype=torch.float32,
                       init="checkpoint" if ckpt else args.init, seed=args.seed)
    model.gradient_checkpointing = args.grad_checkpoint
    if args.fsdp:
        model = shard_model(model, torch.bfloat16 if args.dtype == "bfloat16" else torch.float32)
    # fused AdamW (one kernel, no full-size temporaries) on a single GPU; FSDP's DTensors take the default
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay,
                            betas=(0.9, 0.999), eps=1e-8, fused=dist.device.type == "cuda" and not args.fsdp)
    return model, opt


def _model_dir(name):
    try:
        return resolve_model_path(name)
    except FileNotFoundError as e:
        raise UserError(f"{e}\n(the tokenizer comes from the model's folder: pass --tokenizer PATH to use another)") from None


if __name__ == "__main__":
    main()
