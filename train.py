"""
train.py: the RLVR training loop for CaSP and the methods it is compared with (one GPU, several GPUs
through FSDP2, or a laptop CPU).

    python train.py                                  # the CPU demo: tiny model, built-in task, < 5 min
    python train.py --model qwen-1.5b                # one GPU: the authors' Qwen recipe scaled down (below)
    python train.py --recipe authors-qwen7b --model qwen-1.5b --loss grpo   # their run, every setting, 1.5B
    torchrun --nproc_per_node 8 train.py --recipe authors-qwen7b --fsdp     # their Qwen2.5-Math-7B run

One step (the paper's Algorithm, as the released verl code runs it), `rl_step` top to bottom:
    1. draw `prompts_per_step` problems                                   (PromptStream: seeded, resumable)
    2. sample G = `group_size` responses per prompt                        (rollout.rollout -> sampler.generate)
    3. verify every response -> reward r in {0, 1}; truncated -> 0 (or graded: --truncated-reward)
    4. the method's advantages, GRPO's A_i = (r_i - mean_group) / (std_group + 1e-6) by default
                                                                           (casp.advantages: casp.METHODS)
    5. old log-probs pi_old(y_t) recomputed by the training forward pass   (old_logprobs; no grad)
    6. `update`: split the prompts into `mini_batches` mini-batches; for each, for each micro-batch of at
       most `micro_batch_tokens` tokens: hidden states -> candidate statistics (token_stats, the output
       layer in chunks) -> casp.policy_loss (the method of --loss, one LossConfig) divided by the
       valid-token count of the WHOLE mini-batch (token-mean) -> backward; then clip the grad norm and take
       an AdamW step
    7. log one line and one JSON object (metrics.jsonl); eval and save periodically

Around it: runtime.py (processes and FSDP2, the memory pre-flight, the run folder, checkpoints), tiny.py
(the CPU demo's task, tokenizer and warm start), rollout.py (sample + decode + verify, shared with eval.py).

Numerics. At lr 1e-6 an AdamW update moves a weight by ~1e-6, far below bfloat16's resolution (~4e-3
of the weight): bf16 weights would silently drop almost every update. So the trained weights and the
AdamW state are float32 ("master weights"); forward/backward run under bf16 autocast (`--dtype
bfloat16`, the default on CUDA), and sampling uses a bf16 copy refreshed after every step.

The authors' runs (`--recipe`, RECIPES): Qwen2.5-Math-7B on MATH train and Llama-3.2-3B-Instruct on GSM8K
+ MATH level 1, 1024 prompts x 8 responses x 3072 tokens, 20 epochs with the last partial batch dropped,
their fixed ChatML prompt, truncated responses graded, greedy validation on MATH test, AIME 2025 and AMC
2023. `--model qwen-1.5b` with the defaults is this project's one-GPU scale-down of their Qwen run: the
same loss, batch and lengths, but 200 steps (not 20 epochs), the model's own chat template, truncated
responses scored 0, no entropy bonus, and sampled pass@1 on MATH-500 as validation.

Departures from the paper / released code, all deliberate:
    - the update is not verl's: the loss is the exact token-mean over the whole mini-batch (casp.py,
      "The one denominator"); verl weights each micro-batch's token-mean by its share of the
      mini-batch's sequences, so tokens of different micro-batches weigh differently there.
    - rows whose advantage is exactly 0 (groups with equal rewards) are not run through forward/backward:
      their loss and gradient are exactly 0 (unless the method or the entropy bonus reads them:
      casp.zero_advantage_rows_matter), but their tokens still count in the token-mean denominator.
    - the demo (`--model tiny`) uses its own defaults (DEMO_DEFAULTS, e.g. a larger lr); the config
      logged in the output folder shows every value actually used.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import math
import random
import shlex
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

import data
import tiny
from casp import (METHODS, LossConfig, add_metrics, advantages, candidate_stats_from_hidden, mean_metrics, policy_loss,
                  zero_advantage_rows_matter)
from data import UserError, at_least, between, check_output_folder, positive
from model import MODEL_NAMES, ModelConfig, Transformer, casp_home, load_model, load_tokenizer, resolve_model_path
from runtime import (Dist, StopSignals, WriteFailed, append_metrics, check_resume_config, claim_run_folder,
                     estimate_memory, latest_checkpoint, interrupted_message, lock_run_folder, current_memory,
                     peak_memory_gb, preflight, release_run_folders, resume_checkpoint, save_checkpoint,
                     setup_dist, shard_model, start_metrics_file, stop_now, write_json_atomic)
from eval import pass_at_k
from rollout import rollout

# -----------------------------------------------------------------------------
# Configuration: one argparse block, logged verbatim (vars(args)) as the run's config.

# The CPU demo's values where they differ from the paper's (a 1M-parameter model learns at lr 1e-6 in
# no useful number of steps). Applied only when --model tiny and the flag is not given explicitly.
DEMO_DEFAULTS = dict(lr=2e-4, steps=30, prompts_per_step=32, mini_batches=2,
                     max_response_len=tiny.SYNTH_RESPONSE_TOKENS, max_prompt_len=64, micro_batch_tokens=8192,
                     eval_every=0, eval_prompts=64, save_every=0, dtype="float32", weight_decay=0.0)


# The authors' runs (CLR-Lab/SimKO @ 306f4ff: run_qwen2.5-math-7b_{SimKO,grpo}.sh and
# run_llama3.2-3b_{SimKO,grpo}.sh, with the verl defaults of verl/trainer/config/ppo_trainer.yaml they do
# not override), every value a flag here controls; the loss comes from --loss. `per_loss`: where their
# CaSP (SimKO) script differs from their GRPO one: the CaSP path detaches the entropy (coefficient 0 in
# effect) and the Qwen SimKO script validates every 14 steps. Explicit flags win over a recipe, so
# `--recipe authors-qwen7b --model qwen-1.5b` is their Qwen run scaled down to one GPU.
AUTHORS = dict(prompt_format="authors", prompts_per_step=1024, mini_batches=4, group_size=8, max_prompt_len=1024,
               max_response_len=3072, epochs=20, truncated_reward="grade", lr=1e-6, weight_decay=0.01, grad_clip=1.0,
               clip_eps=0.2, temperature=1.0, top_p=1.0, top_n=3, alpha=0.01, entropy_quantile=0.8, neg_scale=1.1,
               answer_mode="strict", heldout=["math_test", "aime2025", "amc23"], eval_decoding="greedy",
               eval_prompts=5000)
RECIPES = {
    "authors-qwen7b": dict(values=dict(AUTHORS, model="qwen-7b", data="math_train", entropy_coeff=0.001,
                                       eval_every=7, save_every=7),
                           per_loss={"casp": dict(entropy_coeff=0.0, eval_every=14)},
                           about="Qwen2.5-Math-7B on MATH train (their run_qwen2.5-math-7b_*.sh)"),
    "authors-llama3b": dict(values=dict(AUTHORS, model="llama-3b", data="simplelr_gsm8k_level1", entropy_coeff=0.0,
                                        eval_every=8, save_every=8),
                            per_loss={}, about="Llama-3.2-3B-Instruct on GSM8K + MATH level 1 (run_llama3.2-3b_*.sh)"),
}


class HelpFormatter(data.HelpFormatter):
    presets = {"--model tiny": DEMO_DEFAULTS}


def _show_recipes():
    """--help shows, beside each flag's default, the value each recipe sets where it differs."""
    defaults = get_parser().parse_args([])
    HelpFormatter.presets.update({f"--recipe {name}": {k: v for k, v in r["values"].items()
                                                        if getattr(defaults, k) != v}
                                  for name, r in RECIPES.items()})


def get_parser() -> argparse.ArgumentParser:
    p = data.ArgumentParser(description=__doc__.split("\n")[1], formatter_class=HelpFormatter)
    g = p.add_argument_group("model and data")
    g.add_argument("--recipe", default=None, choices=list(RECIPES),
                   help="every setting of the authors' run: " + "; ".join(f"{n}: {r['about']}" for n, r in RECIPES.items())
                   + " (flags given explicitly win, e.g. --model qwen-1.5b)")
    g.add_argument("--model", default="tiny", help=f"a name ({', '.join(MODEL_NAMES)}) or a HF model folder")
    g.add_argument("--init", default="checkpoint", choices=["checkpoint", "random"],
                   help="random: the named architecture with random weights (timing, memory)")
    g.add_argument("--tokenizer", default=None, help="folder or tokenizer.json (default: the model's folder)")
    g.add_argument("--data", default=None, help="training problems: a dataset name or JSONL path "
                   "(default: the built-in task for tiny, math_train otherwise)")
    g.add_argument("--heldout", default=None, nargs="+", help="held-out sets for periodic pass@1, each a name or a "
                   "JSONL path (default: the built-in task's held-out split for tiny, math500 otherwise)")
    g.add_argument("--prompt-format", default="template", choices=list(data.PROMPT_FORMATS),
                   help="template: the model's chat template; authors: the authors' fixed ChatML text for every model")
    g.add_argument("--data-dir", default=None, help="folder of the dataset files (default: $CASP_DATA, else "
                   "~/.cache/casp/data; `python data.py prepare` writes them)")
    g.add_argument("--answer-mode", default="strict", choices=["strict", "lenient"],
                   help="what the verifier reads as the answer: strict = the last \\boxed{} only (the paper's "
                   "reward); lenient = also 'the answer is ...' and a final-line fallback")
    g = p.add_argument_group("loss (each method's paper defaults)")
    g.add_argument("--loss", default="casp", choices=list(METHODS),
                   help="; ".join(f"{n}: {m.about}" for n, m in METHODS.items()))
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
    g.add_argument("--entropy-coeff", type=at_least(0.0, float), default=0.0,
                   help="entropy bonus -c H_t with any loss (verl's entropy_coeff; their Qwen GRPO run: 0.001)")
    g.add_argument("--lambda-pos", type=at_least(0.0, float), default=0.1, help="w-reinforce: A on correct responses")
    g.add_argument("--passk-k", type=at_least(1), default=4, help="passk: the k of pass@k training (<= --group-size)")
    g.add_argument("--kl-cov-k", type=between(0, 1, high_open=False), default=0.002,
                   help="kl-cov: share of tokens penalised")
    g.add_argument("--kl-cov-beta", type=at_least(0.0, float), default=1.0, help="kl-cov: KL penalty coefficient")
    g.add_argument("--clip-cov-r", type=between(0, 1, high_open=False), default=2e-4,
                   help="clip-cov: share of tokens detached")
    g.add_argument("--clip-cov-low", type=float, default=1.0, help="clip-cov: lower covariance bound")
    g.add_argument("--clip-cov-high", type=float, default=5.0, help="clip-cov: upper covariance bound")
    g.add_argument("--entropy-adv-alpha", type=at_least(0.0, float), default=0.4, help="entropy-adv: alpha")
    g.add_argument("--entropy-adv-kappa", type=positive, default=2.0, help="entropy-adv: kappa")
    g = p.add_argument_group("optimisation")
    g.add_argument("--lr", type=positive, default=1e-6, help="constant learning rate")
    g.add_argument("--weight-decay", type=at_least(0.0, float), default=0.01, help="AdamW weight decay (verl's)")
    g.add_argument("--grad-clip", type=positive, default=1.0, help="gradient norm clip")
    g.add_argument("--steps", type=at_least(1), default=200, help="RL steps")
    g.add_argument("--epochs", type=at_least(1), default=None,
                   help="passes over the training set, the last partial batch of each dropped (overrides --steps)")
    g.add_argument("--prompts-per-step", type=at_least(1), default=1024, help="prompts sampled per step")
    g.add_argument("--mini-batches", type=at_least(1), default=4, help="optimizer steps per training step")
    g.add_argument("--micro-batch-tokens", type=at_least(1), default=16384, help="padded tokens per forward/backward")
    g = p.add_argument_group("rollout")
    g.add_argument("--group-size", type=at_least(2), default=8, help="G: responses per prompt (>= 2)")
    g.add_argument("--temperature", type=positive, default=1.0, help="sampling temperature")
    g.add_argument("--top-p", type=between(0, 1, high_open=False), default=1.0, help="nucleus sampling")
    g.add_argument("--max-prompt-len", type=at_least(1), default=1024, help="longer prompts are skipped and counted")
    g.add_argument("--max-response-len", type=at_least(1), default=3072, help="tokens per response")
    g.add_argument("--truncated-reward", default="zero", choices=["zero", "grade"],
                   help="a response cut off at --max-response-len: zero (scores 0) or grade (verified like any "
                   "other, as the authors do)")
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
    g.add_argument("--dry-run", action="store_true", help="resolve every setting (recipe, data, --epochs -> steps, "
                   "memory estimate), print the config the run would log, and exit without writing anything")
    g.add_argument("--eval-every", type=at_least(0), default=25, help="held-out pass@1 every k steps (0: off)")
    g.add_argument("--eval-prompts", type=at_least(1), default=500, help="held-out problems evaluated per set")
    g.add_argument("--eval-decoding", default="sample", choices=["sample", "greedy"],
                   help="held-out pass@1: one sample at --temperature, or greedy decoding (the authors' validation)")
    g.add_argument("--save-every", type=at_least(0), default=50, help="checkpoint every k steps (0: only at the end)")
    g.add_argument("--keep", type=at_least(1), default=2, help="checkpoints kept")
    g.add_argument("--warm-start-steps", type=at_least(1), default=300, help="tiny demo: supervised steps (cached)")
    return p


def get_args(argv=None):
    p = get_parser()
    args = p.parse_args(argv)
    if args.recipe:  # the recipe's values, unless given on the command line
        recipe = RECIPES[args.recipe]
        p.set_defaults(**{**recipe["values"], **recipe["per_loss"].get(args.loss, {})})
        args = p.parse_args(argv)
    elif args.model == "tiny":  # the demo's own defaults, unless given on the command line
        p.set_defaults(**DEMO_DEFAULTS)
        args = p.parse_args(argv)
    return check_args(p, args)


_show_recipes()   # --help: beside each default, the value each recipe sets


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
    if "passk_k" in METHODS[args.loss].params and args.passk_k > args.group_size:
        p.error(f"--passk-k {args.passk_k} is larger than --group-size {args.group_size}")
    if args.clip_cov_low >= args.clip_cov_high:
        p.error(f"--clip-cov-low {args.clip_cov_low} must be below --clip-cov-high {args.clip_cov_high}")
    if str(args.device).startswith("cuda") and not torch.cuda.is_available():
        p.error(f"--device {args.device}: CUDA is not available here (use --device cpu)")
    if args.out is None:
        args.out = str(Path("runs") / f"{Path(str(args.model).rstrip('/')).name}-{args.loss}")
    return args


# -----------------------------------------------------------------------------
# Data: problems, prompts, and a resumable stream over them


class PromptStream:
    """Problems in a seeded random order, epoch after epoch. The position is the whole state.

    An epoch yields floor(n / k) steps of k prompts and drops the rest (verl's DataLoader(drop_last=True)),
    so `--epochs E` is E * floor(n / k) steps; a set smaller than one step wraps around instead."""

    def __init__(self, n: int, seed: int):
        self.n, self.seed, self.epoch, self.pos = n, seed, 0, 0

    def _order(self):
        return np.random.default_rng([self.seed, self.epoch]).permutation(self.n)

    def take(self, k: int) -> list[int]:
        if k <= self.n:  # drop-last: a step never spans two epochs
            if self.pos + k > self.n:
                self.epoch, self.pos = self.epoch + 1, 0
            self.pos += k
            return self._order()[self.pos - k:self.pos].tolist()
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


def heldout_used(args) -> bool:
    """Whether the run evaluates held-out problems: every --eval-every steps, and the demo before and after."""
    return args.eval_every > 0 or args.model == "tiny"


def load_problems(args, tokenizer):
    """(train problems, {held-out set name: problems}, prompts skipped), problems as dicts with prompt_ids.
    The held-out sets are read only when the run uses them (heldout_used): with --eval-every 0 a missing
    math500 is not an error."""
    held = {}
    if args.model == "tiny" and args.data is None:
        train = tiny.synthetic_problems(5000, seed=args.seed, split="train")
        held = {"synthetic": tiny.synthetic_problems(args.eval_prompts, seed=args.seed, split="heldout")}
    else:
        train = data.load_dataset(args.data or "math_train", args.data_dir)
        if heldout_used(args):
            held = {Path(name).stem if name.endswith(".jsonl") else name:
                    data.load_dataset(name, args.data_dir)[:args.eval_prompts] for name in args.heldout or ["math500"]}
    fmt = dict(prompt_format=args.prompt_format)
    train, skipped = data.encode_prompts(train, tokenizer, args.max_prompt_len, **fmt)
    held = {name: data.encode_prompts(probs, tokenizer, args.max_prompt_len, **fmt)[0] for name, probs in held.items()}
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
                 slots=args.rollout_batch, answer_mode=args.answer_mode,
                 truncated_scores_zero=args.truncated_reward == "zero")
    t_sample = time.time() - t0

    # 4. the method's advantages (GRPO's: A_i = (r_i - mean_group) / (std_group + 1e-6)), per response
    batch = build_batch(problems, ro, args.group_size, cfg)
    active = loss_rows(batch, torch.arange(len(batch.adv)), cfg)   # A = 0 rows: zero loss and gradient, skipped

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
        active = loss_rows(batch, rows, cfg)
        seen = dist.all_sum(float(batch.resp_mask[active].sum()))   # tokens the loss sees, over ranks
        for idx, S, mask in micro_batches(batch, active, args.micro_batch_tokens, dist):
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
        if seen:   # all rows A = 0: no gradient was computed, and its "norm" 0 is not a measurement
            grad_norms.append(float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm))
        opt.step()
    # Free the last mini-batch's float32 gradients (4 bytes per parameter: 6 GB for 1.5B) before the next
    # rollout, which would otherwise hold them while its KV cache is allocated. The memory pre-flight
    # counts gradients in the update phase only.
    opt.zero_grad(set_to_none=True)
    # no token with A != 0 in the whole step (no mixed group): no loss metric at all, grad_norm None
    out = mean_metrics(all_sum_metrics(sums, dist)) if sums else {}
    out.update(grad_norm=float(np.mean(grad_norms)) if grad_norms else None, nan_skipped=nan_skipped)
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
                      clip_eps=args.clip_eps, clip_eps_high=args.clip_eps_high, temperature=args.temperature,
                      normalize_std=not args.no_std_norm, entropy_coeff=args.entropy_coeff,
                      lambda_pos=args.lambda_pos, passk_k=args.passk_k, kl_cov_k=args.kl_cov_k,
                      kl_cov_beta=args.kl_cov_beta, clip_cov_r=args.clip_cov_r, clip_cov_low=args.clip_cov_low,
                      clip_cov_high=args.clip_cov_high, entropy_adv_alpha=args.entropy_adv_alpha,
                      entropy_adv_kappa=args.entropy_adv_kappa)


def loss_rows(batch: "Batch", rows: torch.Tensor, cfg: LossConfig) -> torch.Tensor:
    """The rows the loss needs run through forward/backward: those with A != 0, unless a row with A = 0
    can still move the gradient (casp.zero_advantage_rows_matter: KL-Cov, Clip-Cov, the entropy bonus)."""
    return rows if zero_advantage_rows_matter(cfg) else rows[batch.adv[rows] != 0]


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


def build_batch(problems, ro, group_size: int, cfg: LossConfig = LossConfig(loss="grpo")) -> Batch:
    """Right-padded rows [prompt, response] for every sampled response, with the method's advantages."""
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
    adv = advantages(ro.rewards, group_size, cfg)                                  # (R,) casp.METHODS[cfg.loss]
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
                                       matmul_dtype=torch.bfloat16 if dtype == "bfloat16" else None,
                                       entropy_grad=cfg.entropy_coeff > 0 and torch.is_grad_enabled())


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
    mismatch = (old - batch.sampler_logprobs).abs()[active]                          # (tokens with A != 0,)
    m = dict(reward_mean=float(ro.rewards.mean()),
             frac_mixed_groups=float((groups.min(1).values != groups.max(1).values).float().mean()),
             response_len=float(mask.sum()) / mask.shape[0],
             truncated_frac=float(np.mean([r == "length" for r in ro.finish_reason])),
             sampler_entropy=float(ro.entropy[mask].sum()) / n,
             sampler_topn_probs=(ro.topn_probs[mask].sum(0) / n).tolist())
    if dist.world > 1:
        m = {k: ([dist.all_sum(x) / dist.world for x in v] if isinstance(v, list) else dist.all_sum(v) / dist.world)
             for k, v in m.items()}
    # over the tokens of every rank; None when no row has A != 0 (old log-probs were not computed)
    n_active = dist.all_sum(float(mismatch.numel()))
    m["logprob_mismatch"] = dist.all_sum(float(mismatch.sum())) / n_active if n_active else None
    return m


def log_line(m: dict) -> str:
    """One line per step; the fields are explained in docs/training.md ("The log line")."""
    # `-`: a metric over an empty token set (no mixed group: no loss token; no gated token), never nan or 0
    num = lambda key, spec: "-" if m.get(key) is None else format(m[key], spec)
    topn = "/".join(f"{p:.2f}" for p in m["topn_probs"]) if m.get("topn_probs") else "-"
    gated_keys = [k for k in ("gated_top1_prob", "gated_top2_prob", "gated_top3_prob") if k in m]
    gated = "/".join(num(k, ".2f") for k in gated_keys) if any(m[k] is not None for k in gated_keys) else "-"
    s = (f"step {m['step']:4d} | reward {m['reward_mean']:.3f} | mixed {m['frac_mixed_groups']:.2f} | "
         f"len {m['response_len']:6.1f} | H {num('entropy', '.3f')} | p1..N {topn}"
         + (f" | gated {gated}" if gated_keys or "n_tokens" not in m else "") +
         f" | clip {num('clip_frac', '.3f')} | gnorm {num('grad_norm', '.3f')} | "
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
    """pass@1 (and pass@n) on held-out problems, n samples each at the training temperature, or with
    --eval-decoding greedy one greedy response each (pass@1 only); scored as in training (--answer-mode,
    --truncated-reward)."""
    if not problems:
        return {}
    greedy = args.eval_decoding == "greedy"
    n = 1 if greedy else n
    ro = rollout(policy, tokenizer, problems, n, max_new_tokens=args.max_response_len,
                 temperature=0.0 if greedy else args.temperature, top_p=args.top_p, top_n=args.top_n, seed=seed,
                 slots=args.rollout_batch, answer_mode=args.answer_mode,
                 truncated_scores_zero=args.truncated_reward == "zero")
    correct = ro.rewards.view(len(problems), n).sum(1).long().tolist()
    return {f"pass@{k}": float(np.mean([pass_at_k(n, c, k) for c in correct])) for k in sorted({1, n})}


def explore_command(args, out: Path, ckpt: Path) -> str:
    """The eval.py command that draws the demo's final held-out evaluation again, with the same problems,
    seed, settings and rows per sampler call (so the same samples), and writes its explore page."""
    from shlex import quote

    if args.model == "tiny" and args.data is None:   # eval's `synthetic` is the held-out split drawn with seed 0
        data_args = "--data synthetic"
    else:
        data_args = (f"--data {' '.join(quote(h) for h in args.heldout or ['math500'])}"
                     + (f" --data-dir {quote(args.data_dir)}" if args.data_dir else ""))
    cmd = (f"python eval.py --model {quote(str(ckpt / 'model'))} {data_args} --limit {args.eval_prompts} --n 8 "
           f"--max-new-tokens {args.max_response_len} --max-prompt-tokens {args.max_prompt_len} --seed {10**6} "
           f"--answer-mode {args.answer_mode} --max-rows {args.rollout_batch} --batch-prompts {args.eval_prompts}")
    for flag, value, default in (("--temperature", args.temperature, 1.0), ("--top-p", args.top_p, 1.0),
                                 ("--top-n", args.top_n, 3)):
        cmd += f" {flag} {value}" if value != default else ""
    cmd += f" --prompt-format {args.prompt_format}" if args.prompt_format != "template" else ""
    cmd += f" --dtype {args.dtype} --device {args.device}" if args.dtype == "float32" else ""
    return cmd + f" --explore --out {quote(str(out.parent / 'eval' / out.name))}"
def heldout_metrics(policy, tokenizer, sets: dict, args, n: int, seed: int) -> dict:
    """heldout_pass on every held-out set: heldout_pass@k over all their problems (each problem counts
    once) and, with several sets, heldout_<set>_pass@k per set."""
    out, sums, total = {}, {}, 0
    for name, probs in sets.items():
        for k, v in heldout_pass(policy, tokenizer, probs, args, n, seed).items():
            if len(sets) > 1:
                out[f"heldout_{name}_{k}"] = v
            sums[k] = sums.get(k, 0.0) + v * len(probs)
        total += len(probs)
    out.update({f"heldout_{k}": v / total for k, v in sums.items()})
    return out


# -----------------------------------------------------------------------------
# Main


def main(argv=None):
    """The command line: parse, run, and turn a user's mistake into one `error:` line (exit status 2)."""
    args = get_args(argv)
    argv = sys.argv[1:] if argv is None else list(argv)
    sigterm = signal.signal(signal.SIGTERM, stop_now)   # until the loop takes over: SIGTERM acts as Ctrl-C
    try:
        return run(args, argv)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    except KeyboardInterrupt as e:   # before the first step (warm start, loading); the loop has its own
        print("\n" + interrupted_message(Path(args.out), argv), file=sys.stderr)
        raise SystemExit(128 + getattr(e, "signum", signal.SIGINT)) from None
    finally:
        signal.signal(signal.SIGTERM, sigterm)
        release_run_folders()


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
    heldout: dict[str, list[dict]]  # held-out set name -> problems
    n_skipped: int                # training prompts over --max-prompt-len
    stream: PromptStream
    start: int                    # steps already done (resumed runs)
    loss_cfg: LossConfig
    expected_gb: float            # the memory pre-flight's expected peak


def setup(args) -> Run:
    """Processes, run folder, model, data, optimizer; refuses (UserError) before anything large is
    allocated when the run folder, the resume or the memory does not allow the run. The output folder is
    checked first (a file, read-only), then locked for the run's life (one writer), before any model loads."""
    dist = setup_dist(args.fsdp, args.device)
    out = Path(args.out)
    if not args.dry_run:   # a dry run writes nothing, so it neither checks nor locks the folder
        check_output_folder(out)
        refused = None
        if dist.main:
            try:
                lock_run_folder(out)
            except UserError as e:
                refused = e
        if dist.all_max(1.0 if refused else 0.0):
            raise refused or UserError(f"{out} is in use by another run")
        note = claim_run_folder(out, args.resume, args.overwrite, delete=dist.main)
        if note and dist.main:
            print(note)
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
        tokenizer = load_tokenizer(args.tokenizer or _model_dir(args.model, args.init))
    except (FileNotFoundError, ValueError) as e:
        raise UserError(str(e)) from None
    train_set, heldout, n_skipped = load_problems(args, tokenizer)
    if args.epochs:   # E passes, the last partial batch of each dropped (PromptStream)
        per_epoch = len(train_set) // args.prompts_per_step
        if per_epoch == 0:
            raise UserError(f"--epochs: {len(train_set)} training prompts make no full step of "
                            f"--prompts-per-step {args.prompts_per_step}")
        args.steps = args.epochs * per_epoch
    if args.dry_run:   # every setting resolved; nothing large allocated, nothing written
        line, _ = memory_check(argparse.Namespace(**{**vars(args), "force": True}), config, dist,
                               max(len(p["prompt_ids"]) for p in train_set))
        print("config:", json.dumps(vars(args)))
        print(f"[data] {len(train_set)} training prompts ({n_skipped} over --max-prompt-len skipped), {args.steps} "
              f"steps; prompts: {data.prompt_source(tokenizer, args.prompt_format)}\n{line}")
        return None
    memory, expected_gb = memory_check(args, config, dist, max(len(p["prompt_ids"]) for p in train_set))
    stream, ckpt, start = PromptStream(len(train_set), args.seed), None, 0
    if args.resume:   # the newest complete checkpoint (a damaged one is named and skipped)
        ckpt, model, opt, start, stream_state = resume_checkpoint(out, lambda c: build_model(args, c, dist), dist)
        stream.load_state_dict(stream_state)
    else:
        model, opt = build_model(args, None, dist)
    if dist.main:
        try:
            write_json_atomic(out / "config.json", vars(args))
            torn = start_metrics_file(out / "metrics.jsonl", start)
        except OSError as e:
            raise WriteFailed(f"writing {out} failed ({e.strerror})") from None
        print("config:", json.dumps(vars(args)))
        print(f"[run] {out}" + (f" (resumed from {ckpt} at step {start})" if ckpt else ""))
        print(f"[model] {args.model}: {config.num_params() / 1e6:.1f}M parameters; prompts: "
              f"{data.prompt_source(tokenizer, args.prompt_format)}")
        print(f"[data] {len(train_set)} training prompts ({n_skipped} over --max-prompt-len skipped), "
              + (f"{args.epochs} epochs = {args.steps} steps, " if args.epochs else "")
              + (f"held-out: {', '.join(f'{k} {len(v)}' for k, v in heldout.items())}" if heldout_used(args)
                 else "no held-out set (--eval-every 0)")
              + f"\n{memory}" + (f"\n{torn}" if torn else ""))
    return Run(dist, out, model, make_sampling_copy(model, args, dist), opt, tokenizer, train_set, heldout,
               n_skipped, stream, start, loss_config(args), expected_gb)


def run(args, argv: list[str]):
    """The RL loop: a step, its log line, the periodic held-out pass@1 and checkpoint."""
    r = setup(args)
    if r is None:   # --dry-run
        return None
    dist, demo = r.dist, args.model == "tiny"
    if demo and r.start == 0 and dist.main:
        before = heldout_metrics(r.policy, r.tokenizer, r.heldout, args, n=8, seed=10**6)
        print("[before] held-out " + " | ".join(f"{k[8:]} {v:.3f}" for k, v in before.items() if k.count("_") == 1))
    bar = tqdm(range(r.start, args.steps), desc=f"RL ({args.loss})", initial=r.start, total=args.steps,
               disable=not dist.main, dynamic_ncols=True)
    stop = StopSignals().install()   # from here SIGINT/SIGTERM finish the step, save, print the resume command
    done = saved = r.start           # steps finished; the step of the last checkpoint
    try:
        for step in bar:
            if stop.requested(dist):   # a signal came during the step before: save it, then stop
                bar.close()
                if done > saved:
                    save_checkpoint(r.out, done, r.model, r.opt, r.stream.state_dict(), args.keep, dist,
                                    r.tokenizer.folder)
                if dist.main:
                    print(interrupted_message(r.out, argv, f"interrupted ({stop.name}) after step {done}"),
                          file=sys.stderr)
                raise SystemExit(128 + stop.signum)
            # 1. this step's prompts: every rank draws the same list and keeps its share of whole groups
            problems = [r.train_set[i] for i in r.stream.take(args.prompts_per_step)[dist.rank::dist.world]]
            m = rl_step(step, r.model, r.policy, r.opt, r.tokenizer, problems, r.loss_cfg, args, dist)
            m.update(prompts_skipped_too_long=r.n_skipped, peak_mem_estimate_gb=r.expected_gb)
            if args.eval_every and (step + 1) % args.eval_every == 0:
                m.update(heldout_metrics(r.policy, r.tokenizer, r.heldout, args, n=1, seed=10**6 + step))
            if dist.main:
                append_metrics(r.out / "metrics.jsonl", m)
                bar.write(log_line(m))
            done = step + 1
            if (args.save_every and (step + 1) % args.save_every == 0) or step + 1 == args.steps:
                save_checkpoint(r.out, step + 1, r.model, r.opt, r.stream.state_dict(), args.keep, dist,
                                r.tokenizer.folder)
                saved = done
    except KeyboardInterrupt as e:   # a second signal, or an interrupt from elsewhere: stop at once
        bar.close()
        if dist.main:
            print("\n" + interrupted_message(r.out, argv), file=sys.stderr)
        raise SystemExit(128 + getattr(e, "signum", signal.SIGINT)) from None
    except WriteFailed as e:   # a full disk: what failed, and how to go on once there is room
        bar.close()
        raise UserError(f"{e}; {interrupted_message(r.out, argv, 'stopped')}") from None
    finally:
        stop.restore()
    if demo and dist.main:
        after = heldout_metrics(r.policy, r.tokenizer, r.heldout, args, n=8, seed=10**6)
        print(f"[after {args.loss}] held-out " + " | ".join(f"{k[8:]} {v:.3f}" for k, v in after.items()
                                                           if k.count("_") == 1))
        other = args.seed != 0 and args.data is None   # eval's `synthetic` problems are those of seed 0
        print(f"[explore] every token of {'an' if other else 'this'} evaluation and its top-{args.top_n} candidates, "
              f"as a page{' (the held-out problems of --seed 0)' if other else ''}: "
              f"{explore_command(args, r.out, latest_checkpoint(r.out))}")
    if dist.main:
        ckpt = latest_checkpoint(r.out)
        print(f"[done] run folder {r.out}: config.json, metrics.jsonl (one JSON line per step), checkpoint "
              f"{ckpt} (model/ loads in transformers and eval.py)\n"
              f"plot: python eval.py --plot-metrics {shlex.quote(str(r.out / 'metrics.jsonl'))}"
              + (f"\nevaluate: {eval_command(args, ckpt)}" if ckpt else ""))
    if args.fsdp:
        torch.distributed.destroy_process_group()
    return r.model


def eval_command(args, ckpt: Path) -> str:
    """The eval.py command for a finished run's checkpoint, on its held-out set. eval.py takes the response
    length from the run's config.json; the demo's command is sized to finish in about a minute on a CPU
    (500 held-out problems x 16 samples, pass@1..16: 42 s on a 2-core CPU shared with other jobs)."""
    demo_task = args.model == "tiny" and args.data is None
    held = ["synthetic"] if demo_task else (args.heldout or ["math500"])
    command = (f"python eval.py --model {shlex.quote(str(ckpt / 'model'))} --data "
               + " ".join(shlex.quote(h) for h in held))
    return command + (" --n 16" if demo_task else "")


def build_model(args, ckpt: Path | None, dist: Dist):
    """The float32 master model (from the checkpoint when resuming; sharded under FSDP) and its AdamW."""
    try:
        model = load_model(ckpt / "model" if ckpt else args.model, device=dist.device, dtype=torch.float32,
                           init="checkpoint" if ckpt else args.init, seed=args.seed)
    except (FileNotFoundError, ValueError) as e:
        if ckpt:
            raise   # resume_checkpoint names the damaged checkpoint and tries the previous one
        raise UserError(str(e)) from None
    model.gradient_checkpointing = args.grad_checkpoint
    if args.fsdp:
        model = shard_model(model, torch.bfloat16 if args.dtype == "bfloat16" else torch.float32)
    # fused AdamW (one kernel, no full-size temporaries) on a single GPU; FSDP's DTensors take the default
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay,
                            betas=(0.9, 0.999), eps=1e-8, fused=dist.device.type == "cuda" and not args.fsdp)
    return model, opt


def _model_dir(name, init: str = "checkpoint"):
    """The model's folder, where its tokenizer is read from (unless --tokenizer). Its absence is one line
    naming the download; with --init random (no weights needed) only the small files it needs."""
    try:
        return resolve_model_path(name)
    except FileNotFoundError as e:
        repo = MODEL_NAMES.get(str(name), (None,))[0]
        if init == "random" and repo:
            raise UserError(f"--init random builds {name}'s architecture without its weights, but the tokenizer "
                            f"comes from the model's folder, which is not in the Hugging Face cache: download "
                            f"the tokenizer and config only (a few MB) with `hf download {repo} config.json "
                            f"generation_config.json tokenizer.json tokenizer_config.json`, or pass --tokenizer "
                            f"PATH (a folder or a tokenizer.json)") from None
        raise UserError(" ".join(str(e).split()) + " (the tokenizer comes from the model's folder: pass "
                        "--tokenizer PATH to use another)") from None


if __name__ == "__main__":
    main()
