"""
train.py: the GRPO / CaSP training loop (RLVR on one GPU, several GPUs through FSDP2, or a laptop CPU).

    python train.py                                  # the CPU demo: tiny model, built-in task, < 5 min
    python train.py --model qwen-1.5b                # the paper's setting on MATH train (one GPU)
    torchrun --nproc_per_node 8 train.py --model qwen-7b --fsdp

One step (the paper's Algorithm, as the released verl code runs it):
    1. draw `prompts_per_step` problems                                   (PromptStream: seeded, resumable)
    2. sample G = `group_size` responses per prompt                        (sampler.generate, KV cache)
    3. verify every response -> reward r in {0, 1}                         (verifier.reward)
    4. A_i = (r_i - mean_group) / (std_group + 1e-6)                       (casp.group_advantages)
    5. old log-probs pi_old(y_t) recomputed by the training forward pass   (no grad; logged vs the sampler's)
    6. split the prompts into `mini_batches` mini-batches; for each, accumulate the gradient of the
       CaSP (or GRPO) loss over micro-batches of at most `micro_batch_tokens` tokens, each divided by the
       valid-token count of the WHOLE mini-batch (token-mean), clip the grad norm, AdamW step
    7. log one line and one JSON object (metrics.jsonl); eval and save periodically

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
import os
import random
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

import data
import tiny
from casp import casp_loss_from_hidden, candidate_stats_from_hidden, grpo_loss_from_hidden, group_advantages
from data import UserError, at_least, between, positive
from model import MODEL_NAMES, ModelConfig, Transformer, casp_home, load_model, load_tokenizer, resolve_model_path
from runtime import (Dist, check_resume_config, claim_run_folder, estimate_memory, latest_checkpoint,
                     load_checkpoint, current_memory, peak_memory_gb, preflight, save_checkpoint, setup_dist, shard_model,
                     write_json_atomic)
from sampler import generate
from verifier import batch_reward, reward as verify_reward

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
# Rollout: sample, verify, build the training batch


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


def score(responses: list[str], problems: list[dict], finish_reasons: list[str], mode: str) -> torch.Tensor:
    """Reward of each response. A response cut off at --max-response-len ("length") scores 0 without
    being read (the paper's setting: a truncated text has no final answer, and any number in it is noise).
    The verifier never raises; `mode` is its answer extraction (--answer-mode). Math and logic are
    verified in this process (~10k responses/s); code runs in sandboxed worker processes."""
    tasks = [p.get("task", "math") for p in problems]
    answers = [p["answer"] for p in problems]
    fields = [data.verifier_fields(p) for p in problems]
    if "code" in tasks:
        rewards = batch_reward(responses, answers, task=tasks, fields=fields, mode=mode)
    else:
        rewards = [verify_reward(r, a, task=t, mode=mode, **f) for r, a, t, f in zip(responses, answers, tasks, fields)]
    return torch.tensor([0.0 if why == "length" else r for r, why in zip(rewards, finish_reasons)],
                        dtype=torch.float32)


def sample_and_score(policy, tokenizer, problems, args, seed, n_samples):
    """Sample n_samples responses per problem in chunks of --rollout-batch rows; verify them.

    Every chunk gets the same seed: the sampler keys each row by (seed, prompt ids, occurrence of that
    prompt in the call, sample index), so the samples do not depend on --rollout-batch. (A prompt that
    occurs twice in one step, in two different chunks, would draw the same samples twice.)"""
    per_call = max(1, args.rollout_batch // n_samples)
    rollouts, texts = [], []
    for i in range(0, len(problems), per_call):
        chunk = problems[i:i + per_call]
        ro = generate(policy, [p["prompt_ids"] for p in chunk], n_samples=n_samples,
                      max_new_tokens=args.max_response_len, temperature=args.temperature, top_p=args.top_p,
                      stop_ids=tokenizer.stop_ids, top_n=args.top_n, seed=seed,
                      vocab_size=tokenizer.vocab_size)
        rollouts.append(ro)
        texts += [tokenizer.decode(t[m].tolist()) for t, m in zip(ro.tokens, ro.mask)]
    # rows are prompt-major across chunks: row r answers problems[r // n_samples]
    expanded = [p for p in problems for _ in range(n_samples)]
    t0 = time.time()
    finish = [why for ro in rollouts for why in ro.finish_reason]
    rewards = score(texts, expanded, finish, args.answer_mode)
    return rollouts, rewards, time.time() - t0


def build_batch(problems, rollouts, rewards, args) -> Batch:
    """Right-padded rows [prompt, response] for every sampled response, with the group advantages."""
    responses = [(t[m], lp[m]) for ro in rollouts for t, m, lp in zip(ro.tokens, ro.mask, ro.logprobs)]
    group = torch.arange(len(responses)) // args.group_size                        # (R,) prompt of each row
    prompts = [problems[g]["prompt_ids"] for g in group.tolist()]
    S = max(len(p) + len(t) for p, (t, _) in zip(prompts, responses))
    seq = torch.zeros(len(responses), S, dtype=torch.long)                         # (R, S)
    resp = torch.zeros(len(responses), S, dtype=torch.bool)                        # (R, S)
    slp = torch.zeros(len(responses), S)                                           # (R, S)
    for i, (p, (toks, lp)) in enumerate(zip(prompts, responses)):
        a, b = len(p), len(p) + len(toks)
        seq[i, :a] = torch.tensor(p)
        seq[i, a:b] = toks
        resp[i, a:b] = True
        slp[i, a:b] = lp
    adv = group_advantages(rewards, args.group_size, normalize_std=not args.no_std_norm)
    return Batch(seq, resp, slp, adv.float(), rewards, group)


def micro_batches(batch: Batch, rows: torch.Tensor, max_tokens: int):
    """Split `rows` into micro-batches of at most max_tokens padded tokens (rows sorted by length, so
    that rows of similar length share padding). Each micro-batch is trimmed to its longest row."""
    length = batch.seq.shape[1] - batch.resp_mask.flip(1).int().argmax(1)     # (R,) end of each row
    length[~batch.resp_mask.any(1)] = 1
    order = rows[torch.argsort(length[rows], descending=True, stable=True)]
    out, cur = [], []
    for r in order.tolist():
        longest = int(length[cur[0]]) if cur else int(length[r])
        if cur and (len(cur) + 1) * longest > max_tokens:
            out.append(cur)
            cur = []
        cur.append(r)
    if cur:
        out.append(cur)
    return [(torch.tensor(c), int(length[c[0]])) for c in out]


def synced_micro_batches(batch: Batch, rows: torch.Tensor, max_tokens: int, dist: Dist):
    """micro_batches(), padded with None to the same count on every rank: under FSDP each forward and
    backward is a collective (it all-gathers parameters), so every rank must run as many as the busiest
    one. A None stands for a pass that contributes exactly zero (see `zero_pass`)."""
    mbs = micro_batches(batch, rows, max_tokens)
    return mbs + [None] * (int(dist.all_max(len(mbs))) - len(mbs))


def zero_pass(model, batch: Batch, args, device, backward: bool):
    """A forward (and backward) whose loss and gradients are exactly 0: keeps the FSDP collectives of a
    rank with fewer micro-batches in step with the others."""
    head = lambda h, w: h.sum() * 0.0 + w.sum() * 0.0
    loss = run_head(model, batch.seq[:1, :2], head, args, device)
    if backward:
        loss.backward()


# -----------------------------------------------------------------------------
# The update: old log-probs, then mini-batches of micro-batches


def autocast(args, device):
    if args.dtype == "bfloat16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def run_head(model, seq, head, args, device):
    """model(seq[:, :-1]) with `head(hidden, output_weight)` in place of the output layer, so that the
    (b, S-1, V) float32 logits are never built whole (casp.py applies the output layer in chunks)."""
    with autocast(args, device):
        return model(seq[:, :-1].to(device), head=head)


@torch.no_grad()
def recompute_old_logprobs(model, batch: Batch, rows, args, dist: Dist) -> torch.Tensor:
    """pi_old(y_t) under the training forward pass (the sampler's numbers differ by kernel rounding and,
    in bf16, by the weight copy): (R, S) float32, 0 outside responses."""
    device = dist.device
    old = torch.zeros(batch.seq.shape, dtype=torch.float32)
    for mb in synced_micro_batches(batch, rows, args.micro_batch_tokens, dist):
        if mb is None:
            zero_pass(model, batch, args, device, backward=False)
            continue
        idx, S = mb
        seq, mask = batch.seq[idx, :S], batch.resp_mask[idx, 1:S]
        head = lambda h, w: candidate_stats_from_hidden(h, w, seq[:, 1:].to(device), mask.to(device),
                                                        top_n=args.top_n, temperature=args.temperature)
        lp = torch.zeros(mask.shape)
        lp[mask] = run_head(model, seq, head, args, device).logp_y.float().cpu()
        old[idx, 1:S] = lp
    return old


def policy_loss(model, batch: Batch, idx, S, old, args, device, loss_denom):
    """(loss, metrics) of micro-batch `idx` (rows trimmed to S tokens): CaSP or the GRPO reference."""
    seq = batch.seq[idx, :S]
    inputs = dict(tokens=seq[:, 1:].to(device), old_logprobs=old[idx, 1:S].to(device),
                  advantages=batch.adv[idx].to(device), mask=batch.resp_mask[idx, 1:S].to(device),
                  temperature=args.temperature, clip_eps=args.clip_eps, clip_eps_high=args.clip_eps_high,
                  loss_denom=loss_denom, top_n=args.top_n)
    if args.loss == "grpo":
        head = lambda h, w: grpo_loss_from_hidden(h, w, **inputs)
    else:
        gate = None if args.no_entropy_gate else args.entropy_quantile
        head = lambda h, w: casp_loss_from_hidden(h, w, alpha=args.alpha, neg_scale=args.neg_scale,
                                                  entropy_quantile=gate, **inputs)
    return run_head(model, seq, head, args, device)


def update(model, opt, batch: Batch, old, args, dist: Dist):
    """`mini_batches` AdamW steps over the batch (one pass). Returns metrics averaged over tokens."""
    device = dist.device
    P = int(batch.group.max()) + 1
    groups_per_mb = math.ceil(P / args.mini_batches)
    sums, n_tok_total, grad_norms, nan_skipped = {}, 0.0, [], 0
    for mb in range(args.mini_batches):
        in_mb = (batch.group >= mb * groups_per_mb) & (batch.group < (mb + 1) * groups_per_mb)
        rows = torch.nonzero(in_mb).flatten()
        # the one denominator: valid tokens of the whole mini-batch (over all ranks); FSDP averages the
        # gradients over ranks, hence the world-size factor that turns the average back into a sum
        n_valid = dist.all_sum(float(batch.resp_mask[rows].sum()))
        loss_denom = max(n_valid, 1.0) / dist.world
        active = rows[batch.adv[rows] != 0]  # A = 0 rows: zero loss and gradient, tokens still counted
        opt.zero_grad(set_to_none=True)
        finite = True
        for mb in synced_micro_batches(batch, active, args.micro_batch_tokens, dist):
            if mb is None:
                zero_pass(model, batch, args, device, backward=True)
                continue
            idx, S = mb
            loss, m = policy_loss(model, batch, idx, S, old, args, device, loss_denom)
            loss.backward()  # even when NaN: under FSDP every rank must run the same passes
            if not torch.isfinite(loss):  # a host sync per micro-batch; the mini-batch is dropped below
                finite = False
                continue
            n = float(batch.resp_mask[idx, 1:S].sum())
            for k, v in m.items():  # kept on the device: converted once per step, not per micro-batch
                if isinstance(v, (int, float)) or (torch.is_tensor(v) and v.numel() == 1):
                    sums[k] = sums.get(k, 0.0) + v * n
            n_tok_total += n
        if not dist.all_sum(0.0 if finite else 1.0) == 0:  # every rank skips together
            opt.zero_grad(set_to_none=True)
            nan_skipped += 1
            continue
        norm = torch.nn.utils.clip_grad_norm_(model.parameters(), args.grad_clip)
        norm = norm.full_tensor() if hasattr(norm, "full_tensor") else norm
        grad_norms.append(float(norm))
        opt.step()
    out = {k: float(v) / max(n_tok_total, 1.0) for k, v in sums.items()}
    out["grad_norm"] = float(np.mean(grad_norms)) if grad_norms else float("nan")
    out["nan_skipped"] = nan_skipped
    return out


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
    """pass@1 (and pass@n) on held-out problems, n samples each at the training temperature."""
    from eval import pass_at_k
    if not problems:
        return {}
    _, rewards, _ = sample_and_score(policy, tokenizer, problems, args, seed, n)
    correct = rewards.view(len(problems), n).sum(1).long().tolist()
    out = {f"pass@{k}": float(np.mean([pass_at_k(n, c, k) for c in correct])) for k in sorted({1, n})}
    return out


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


def run(args, argv: list[str]):
    dist = setup_dist(args.fsdp, args.device)
    device = dist.device
    out = Path(args.out)
    claim_run_folder(out, args.resume, args.overwrite and dist.main)
    if args.resume:
        check_resume_config(out, vars(args))
    torch.manual_seed(args.seed)
    random.seed(args.seed)
    np.random.seed(args.seed)
    compute_dtype = torch.bfloat16 if args.dtype == "bfloat16" else torch.float32

    # --- model, tokenizer, data; nothing large is allocated before the memory pre-flight
    if args.model == "tiny" and not (casp_home() / "tiny" / "config.json").is_file() and dist.main:
        print(f"[warm start] training the tiny model on the built-in task -> {casp_home() / 'tiny'}")
        tiny.warm_start_tiny(casp_home() / "tiny", args.warm_start_steps, args.seed, device)
    dist.barrier()
    try:
        config = model_config(args)
        tokenizer = load_tokenizer(args.tokenizer or _model_dir(args.model))
    except (FileNotFoundError, ValueError) as e:
        raise UserError(str(e)) from None
    train_set, heldout, n_skipped = load_problems(args, tokenizer)
    memory, expected_gb = memory_check(args, config, dist, max(len(p["prompt_ids"]) for p in train_set))
    ckpt = latest_checkpoint(out) if args.resume else None
    model = load_model(ckpt / "model" if ckpt else args.model, device=device, dtype=torch.float32,
                       init="checkpoint" if ckpt else args.init, seed=args.seed)
    model.gradient_checkpointing = args.grad_checkpoint
    if args.fsdp:
        model = shard_model(model, compute_dtype)
    # fused AdamW (one kernel, no full-size temporaries) on a single GPU; FSDP's DTensors take the default
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay,
                            betas=(0.9, 0.999), eps=1e-8, fused=device.type == "cuda" and not args.fsdp)
    stream = PromptStream(len(train_set), args.seed)
    start = 0
    if ckpt:
        start, stream_state = load_checkpoint(ckpt, opt, dist)
        stream.load_state_dict(stream_state)
    policy = make_sampling_copy(model, args, dist)

    metrics_file = out / "metrics.jsonl"
    if dist.main:
        out.mkdir(parents=True, exist_ok=True)
        write_json_atomic(out / "config.json", vars(args))
        print("config:", json.dumps(vars(args)))
        print(f"[run] {out}" + (f" (resumed from {ckpt} at step {start})" if ckpt else ""))
        print(f"[model] {args.model}: {config.num_params() / 1e6:.1f}M parameters; prompts: {tokenizer.chat_source}")
        print(f"[data] {len(train_set)} training prompts ({n_skipped} over --max-prompt-len skipped), "
              f"{len(heldout)} held-out")
        print(memory)
        # a resumed run re-runs the steps after its checkpoint: their old lines go (written again, equal)
        keep = [line for line in metrics_file.read_text().splitlines()
                if json.loads(line)["step"] <= start] if ckpt and metrics_file.exists() else []
        tmp = out / ".metrics.jsonl.tmp"
        tmp.write_text("".join(line + "\n" for line in keep))
        os.replace(tmp, metrics_file)

    demo = args.model == "tiny"
    if demo and start == 0 and dist.main:
        before = heldout_pass(policy, tokenizer, heldout, args, n=8, seed=10**6)
        print(f"[before] held-out pass@1 {before['pass@1']:.3f} | pass@8 {before['pass@8']:.3f}")

    # --- the loop
    bar = tqdm(range(start, args.steps), desc=f"RL ({args.loss})", initial=start, total=args.steps,
               disable=not dist.main, dynamic_ncols=True)
    try:
        for step in bar:
            m = train_step(step, model, policy, opt, tokenizer, train_set, stream, args, dist)
            m["prompts_skipped_too_long"] = n_skipped
            m["peak_mem_estimate_gb"] = expected_gb
            if args.eval_every and (step + 1) % args.eval_every == 0:
                m.update({f"heldout_{k}": v for k, v in
                          heldout_pass(policy, tokenizer, heldout, args, n=1, seed=10**6 + step).items()})
            if dist.main:
                with open(metrics_file, "a") as f:
                    f.write(json.dumps(m) + "\n")
                bar.write(log_line(m))
            if (args.save_every and (step + 1) % args.save_every == 0) or step + 1 == args.steps:
                save_checkpoint(out, step + 1, model, opt, stream.state_dict(), args.keep, dist,
                                Path(tokenizer.source).parent)
    except KeyboardInterrupt:
        bar.close()
        if dist.main:
            last = latest_checkpoint(out)
            again = [a for a in argv if a != "--overwrite"] + ([] if "--resume" in argv else ["--resume"])
            if "--out" not in argv:
                again += ["--out", str(out)]
            print(f"\ninterrupted; last complete checkpoint: {last or 'none (nothing to resume)'}"
                  + (f"; resume with: python train.py {shlex.join(again)}" if last else ""), file=sys.stderr)
        raise SystemExit(130) from None

    if demo and dist.main:
        after = heldout_pass(policy, tokenizer, heldout, args, n=8, seed=10**6)
        print(f"[after {args.loss}] held-out pass@1 {after['pass@1']:.3f} | pass@8 {after['pass@8']:.3f}")
    if dist.main:
        print(f"[done] run folder {out}: config.json, metrics.jsonl (one JSON line per step), "
              f"checkpoint {latest_checkpoint(out)} (model/ loads in transformers and eval.py); "
              f"plot: python eval.py --plot-metrics {metrics_file}")
    if args.fsdp:
        torch.distributed.destroy_process_group()
    return model


def _model_dir(name):
    try:
        return resolve_model_path(name)
    except FileNotFoundError as e:
        raise UserError(f"{e}\n(the tokenizer comes from the model's folder: pass --tokenizer PATH to use another)") from None


def train_step(step, model, policy, opt, tokenizer, train_set, stream, args, dist: Dist) -> dict:
    """One RL step (see the module docstring). Returns its metrics."""
    device = dist.device
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    # 1. prompts: every rank draws the same global list and keeps its own share of whole groups
    idx = stream.take(args.prompts_per_step)[dist.rank::dist.world]
    problems = [train_set[i] for i in idx]
    # 2-3. sample and verify
    t0 = time.time()
    policy.eval()
    rollouts, rewards, t_verify = sample_and_score(policy, tokenizer, problems, args,
                                                   seed=args.seed * 1_000_003 + step * 7919 + dist.rank * 104729,
                                                   n_samples=args.group_size)
    t_sample = time.time() - t0 - t_verify
    # 4. advantages, the padded batch
    batch = build_batch(problems, rollouts, rewards, args)
    # 5. old log-probs from the training forward pass
    t1 = time.time()
    model.train()
    all_rows = torch.nonzero(batch.adv != 0).flatten()
    old = recompute_old_logprobs(model, batch, all_rows, args, dist)
    # 6. mini-batch updates
    m = update(model, opt, batch, old, args, dist)
    refresh_sampling_copy(policy, model)
    t_update = time.time() - t1

    mask = torch.cat([ro.mask.flatten() for ro in rollouts])
    n_tokens = int(mask.sum())
    topn = torch.cat([ro.topn_probs.flatten(0, 1) for ro in rollouts])[mask]               # (tokens, N)
    ent = torch.cat([ro.entropy.flatten() for ro in rollouts])[mask]
    groups = rewards.view(-1, args.group_size)
    active = batch.adv != 0
    mismatch = (old - batch.sampler_logprobs).abs()[batch.resp_mask & active[:, None]]
    total_time = time.time() - t0
    m.update(
        step=step + 1,
        reward_mean=float(rewards.mean()),
        frac_mixed_groups=float(((groups.min(1).values != groups.max(1).values)).float().mean()),
        response_len=n_tokens / max(len(rewards), 1),
        entropy=float(ent.mean()) if n_tokens else 0.0,
        topn_probs=topn.mean(0).tolist() if n_tokens else [],
        lr=opt.param_groups[0]["lr"],
        time_sample=t_sample,
        time_verify=t_verify,
        time_update=t_update,
        tokens_per_s=n_tokens / max(total_time, 1e-9),
        peak_mem_gb=peak_memory_gb(device),
        logprob_mismatch=float(mismatch.mean()) if mismatch.numel() else 0.0,
        finished_frac=float(np.mean([r == "stop" for ro in rollouts for r in ro.finish_reason])),
    )
    if dist.world > 1:  # rank 0 logs the means over ranks of the rollout statistics
        for k in ("reward_mean", "frac_mixed_groups", "response_len", "entropy"):
            m[k] = dist.all_sum(m[k]) / dist.world
    return m


def log_line(m: dict) -> str:
    topn = "/".join(f"{p:.2f}" for p in m.get("topn_probs", []))
    s = (f"step {m['step']:4d} | reward {m['reward_mean']:.3f} | mixed {m['frac_mixed_groups']:.2f} | "
         f"len {m['response_len']:6.1f} | H {m['entropy']:.3f} | p1..N {topn} | "
         f"clip {m.get('clip_frac', 0):.3f} | gnorm {m['grad_norm']:.3f} | "
         f"t {m['time_sample']:.1f}+{m['time_verify']:.1f}+{m['time_update']:.1f}s | "
         f"{m['tokens_per_s']:.0f} tok/s")
    if "heldout_pass@1" in m:
        s += f" | held-out pass@1 {m['heldout_pass@1']:.3f}"
    if m.get("nan_skipped"):
        s += f" | NaN loss: {m['nan_skipped']} mini-batch(es) skipped"
    return s


if __name__ == "__main__":
    main()
