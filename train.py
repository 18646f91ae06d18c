"""
train.py: the RLVR training loop for CaSP and the methods it is compared with (one GPU, several GPUs
through FSDP2, or a laptop CPU).

    python train.py                                  # the CPU demo: tiny model, built-in task, < 5 min
    python train.py --model qwen-1.5b                # one GPU: the authors' Qwen recipe scaled down (below)
    python train.py --recipe authors-qwen7b --model qwen-1.5b --loss grpo   # their run, every setting, 1.5B
    torchrun --nproc_per_node 8 train.py --recipe authors-qwen7b --fsdp     # their Qwen2.5-Math-7B run

From `python train.py` to `opt.step()`: main -> run (the loop) -> rl_step (one step) -> update. One step is
the paper's Algorithm as the released verl code runs it; on the right, where each part lives:
    1. draw `prompts_per_step` problems                             run: PromptStream (seeded, resumable)
    2. sample G = `group_size` responses per prompt                  rl_step: rollout.rollout -> sampler.generate
    3. the rewards r in {0, 1}, the verifier's; a truncated          rl_step: rollout.rollout -> verifier.verify
       response scores 0 (--truncated-reward grade: verified)
    4. the method's advantages; GRPO's and CaSP's are                rl_step: casp.advantages (casp.METHODS)
       A_i = (r_i - mean_group) / (std_group + 1e-6)
    5. old log-probs pi_old(y_t), by the training forward pass       old_logprobs -> token_stats
    6. `mini_batches` AdamW steps, each over micro-batches of at     update
       most `micro_batch_tokens` tokens: hidden states ->
       candidate statistics (the output layer in chunks) ->          token_stats -> casp.candidate_stats_from_hidden
       the method's loss / the valid-token count of the WHOLE        casp.policy_loss (one casp.LossConfig)
       mini-batch (token-mean) -> backward; clip the grad norm;
       opt.step()
    7. one log line and one JSON object (metrics.jsonl); held-out    run: log_line, heldout_metrics,
       pass@1 and a checkpoint periodically                          runtime.save_checkpoint
Every setting a step reads is one StepConfig (the loss's: one casp.LossConfig), made once by step_config.

Around it: get_args (flags, recipes, the demo's defaults) and setup (run folder, model, data, optimizer)
here; runtime.py (processes and FSDP2, the memory pre-flight, the run folder, checkpoints, signals);
tiny.py (the CPU demo: its task, tokenizer, warm start and what the demo does differently); rollout.py
(sample + decode + verify, shared with eval.py); cli.py (one-line errors, flag types, atomic writes).

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
    - the demo (`--model tiny`) uses its own defaults (tiny.DEMO_DEFAULTS, e.g. a larger lr); the config
      logged in the output folder shows every value actually used.
"""
from __future__ import annotations

import argparse
import contextlib
import functools
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

import cli
import data
import tiny
from casp import (METHODS, LossConfig, add_metrics, advantages, candidate_stats_from_hidden, mean_metrics, policy_loss,
                  zero_advantage_rows_matter)
from cli import ArgumentParser, UserError, at_least, between, check_output_folder, positive, write_atomic
from model import MODEL_NAMES, ModelConfig, Transformer, load_model, load_tokenizer, resolve_model_path
from passk import pass_at_k
from rollout import rollout
from runtime import (Dist, StopSignals, WriteFailed, append_metrics, check_resume_config, claim_run_folder,
                     estimate_memory, latest_checkpoint, interrupted_message, lock_run_folder, current_memory,
                     peak_memory_gb, preflight, release_run_folders, resume_checkpoint, save_checkpoint,
                     setup_dist, shard_model, start_metrics_file)

# -----------------------------------------------------------------------------
# Configuration: one argparse block, logged verbatim (vars(args)) as the run's config.


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


class HelpFormatter(cli.HelpFormatter):
    presets = {"--model tiny": tiny.DEMO_DEFAULTS}


def _show_recipes():
    """--help shows, beside each flag's default, the value each recipe sets where it differs."""
    defaults = get_parser().parse_args([])
    HelpFormatter.presets.update({f"--recipe {name}": {k: v for k, v in r["values"].items()
                                                        if getattr(defaults, k) != v}
                                  for name, r in RECIPES.items()})


def get_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(description=__doc__.split("\n")[1], formatter_class=HelpFormatter)
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
    elif tiny.is_demo(args.model):  # the demo's own defaults, unless given on the command line
        p.set_defaults(**tiny.DEMO_DEFAULTS)
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


@dataclass(frozen=True)
class StepConfig:
    """Every setting one RL step reads (rl_step and what it calls, and the held-out evaluation), made once
    from the command line (step_config); the names are the flags'."""
    loss: LossConfig              # the method of --loss with its hyperparameters (casp.py)
    group_size: int               # G: responses per prompt
    max_response_len: int         # tokens per response
    temperature: float            # of the sampler (the loss reads the same value: loss.temperature)
    top_p: float                  # nucleus sampling
    rollout_batch: int            # rows sampled at once (KV-cache memory)
    answer_mode: str              # what the verifier reads as the answer: "strict" (last \boxed{}) or "lenient"
    truncated_reward: str         # "zero": a response cut off at max_response_len scores 0; "grade": verified
    mini_batches: int             # optimizer steps per RL step
    micro_batch_tokens: int       # padded tokens per forward/backward
    grad_clip: float              # gradient norm clip
    dtype: str                    # compute dtype: "bfloat16" (autocast over float32 weights) or "float32"
    seed: int                     # the rollout's seed (with the step and the rank)
    eval_decoding: str            # held-out pass@1: "sample" (one sample at `temperature`) or "greedy"


def step_config(args) -> StepConfig:
    """The step's settings and the loss's (casp.LossConfig), built once from the command line."""
    loss = LossConfig(loss=args.loss, top_n=args.top_n, alpha=args.alpha, neg_scale=args.neg_scale,
                      entropy_quantile=None if args.no_entropy_gate else args.entropy_quantile,
                      clip_eps=args.clip_eps, clip_eps_high=args.clip_eps_high, temperature=args.temperature,
                      normalize_std=not args.no_std_norm, entropy_coeff=args.entropy_coeff,
                      lambda_pos=args.lambda_pos, passk_k=args.passk_k, kl_cov_k=args.kl_cov_k,
                      kl_cov_beta=args.kl_cov_beta, clip_cov_r=args.clip_cov_r, clip_cov_low=args.clip_cov_low,
                      clip_cov_high=args.clip_cov_high, entropy_adv_alpha=args.entropy_adv_alpha,
                      entropy_adv_kappa=args.entropy_adv_kappa)
    return StepConfig(loss=loss, group_size=args.group_size, max_response_len=args.max_response_len,
                      temperature=args.temperature, top_p=args.top_p, rollout_batch=args.rollout_batch,
                      answer_mode=args.answer_mode, truncated_reward=args.truncated_reward,
                      mini_batches=args.mini_batches, micro_batch_tokens=args.micro_batch_tokens,
                      grad_clip=args.grad_clip, dtype=args.dtype, seed=args.seed, eval_decoding=args.eval_decoding)


# -----------------------------------------------------------------------------
# Main and the loop


def main(argv=None):
    """The command line: parse, set up, run the loop. A user's mistake is one `error:` line (exit status
    2); an interrupt before the loop (warm start, loading) prints what to run again (the loop has its own)."""
    args = get_args(argv)
    argv = sys.argv[1:] if argv is None else list(argv)
    with cli.one_line_errors(interrupted=lambda: interrupted_message(Path(args.out), argv)):
        try:
            r = setup(args)
            return None if r is None else run(r, argv)   # None: --dry-run
        finally:
            release_run_folders()


def run(r: Run, argv: list[str]) -> Transformer:
    """The RL loop: a step, its log line, the periodic held-out pass@1 and checkpoint. From the first step
    SIGINT/SIGTERM finish the step, save a checkpoint and print the resume command."""
    dist, cfg = r.dist, r.cfg
    if r.demo and r.start == 0 and dist.main:
        print(tiny.heldout_line("before", heldout_metrics(r.policy, r.tokenizer, r.heldout, cfg,
                                                          n=tiny.DEMO_HELDOUT_SAMPLES, seed=HELDOUT_SEED)))
    bar = tqdm(range(r.start, r.steps), desc=f"RL ({cfg.loss.loss})", initial=r.start, total=r.steps,
               disable=not dist.main, dynamic_ncols=True)
    stop = StopSignals().install()
    done = saved = r.start           # steps finished; the step of the last checkpoint
    try:
        for step in bar:
            if stop.requested(dist):   # a signal came during the step before: save it, then stop
                bar.close()
                if done > saved:
                    save_checkpoint(r.out, done, r.model, r.opt, r.stream.state_dict(), r.keep, dist,
                                    r.tokenizer.folder)
                if dist.main:
                    print(interrupted_message(r.out, argv, f"interrupted ({stop.name}) after step {done}"),
                          file=sys.stderr)
                raise SystemExit(128 + stop.signum)
            # 1. this step's prompts: every rank draws the same list and keeps its share of whole groups
            problems = [r.train_set[i] for i in r.stream.take(r.prompts_per_step)[dist.rank::dist.world]]
            m = rl_step(step, r.model, r.policy, r.opt, r.tokenizer, problems, cfg, dist)
            m.update(prompts_skipped_too_long=r.n_skipped, peak_mem_estimate_gb=r.expected_gb)
            if r.eval_every and (step + 1) % r.eval_every == 0:
                m.update(heldout_metrics(r.policy, r.tokenizer, r.heldout, cfg, n=1, seed=HELDOUT_SEED + step))
            if dist.main:
                append_metrics(r.out / "metrics.jsonl", m)
                bar.write(log_line(m))
            done = step + 1
            if (r.save_every and (step + 1) % r.save_every == 0) or step + 1 == r.steps:
                save_checkpoint(r.out, step + 1, r.model, r.opt, r.stream.state_dict(), r.keep, dist,
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
    if dist.main:
        ckpt = latest_checkpoint(r.out)
        if r.demo:
            print(tiny.heldout_line(f"after {cfg.loss.loss}", heldout_metrics(
                r.policy, r.tokenizer, r.heldout, cfg, n=tiny.DEMO_HELDOUT_SAMPLES, seed=HELDOUT_SEED)))
            print(tiny.explore_line(cfg.seed, r.config["data"], cfg.loss.top_n,
                                    eval_command(r.config, ckpt, explore=r.out.parent / "eval" / r.out.name)))
        print(f"[done] run folder {r.out}: config.json, metrics.jsonl (one JSON line per step), checkpoint "
              f"{ckpt} (model/ loads in transformers and eval.py)\n"
              f"plot: python eval.py --plot-metrics {shlex.quote(str(r.out / 'metrics.jsonl'))}"
              + (f"\nevaluate: {eval_command(r.config, ckpt)}" if ckpt else ""))
    if torch.distributed.is_available() and torch.distributed.is_initialized():   # --fsdp
        torch.distributed.destroy_process_group()
    return r.model


# -----------------------------------------------------------------------------
# One RL step, top to bottom: the paper's algorithm (module docstring, steps 2-7)


def rl_step(step: int, model, policy, opt, tokenizer, problems: list[dict], cfg: StepConfig, dist: Dist) -> dict:
    """Sample -> rewards -> advantages -> old log-probs -> update (mini-batches of micro-batches) ->
    metrics. `problems` are this rank's prompts of the step; `policy` samples, `model` is trained."""
    dev = dist.device
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    t0 = time.time()

    # 2. G responses per prompt from the sampling copy, decoded and verified (rollout.py)
    policy.eval()
    seed = cfg.seed * 1_000_003 + step * 7919 + dist.rank * 104729     # every rank its own samples
    ro = rollout(policy, tokenizer, problems, cfg.group_size, max_new_tokens=cfg.max_response_len,
                 temperature=cfg.temperature, top_p=cfg.top_p, top_n=cfg.loss.top_n, seed=seed,
                 slots=cfg.rollout_batch, answer_mode=cfg.answer_mode,
                 truncated_scores_zero=cfg.truncated_reward == "zero")
    t_sample = time.time() - t0

    # 3. the rewards: the verifier's r in {0, 1}; 0 for a truncated response with --truncated-reward zero
    rewards = ro.rewards                                                             # (R,) R = P * G

    # 4. the method's advantages (GRPO's and CaSP's: A_i = (r_i - mean_group) / (std_group + 1e-6))
    adv = advantages(rewards, cfg.group_size, cfg.loss)                             # (R,) casp.METHODS
    batch = build_batch(problems, ro, adv)
    active = loss_rows(adv, cfg.loss)   # (R,) the rows forward/backward sees: A = 0 rows have no gradient

    # 5. pi_old(y_t): the training forward pass re-scores the sampled tokens (no grad)
    model.train()
    old = old_logprobs(model, batch, active, cfg, dist)                                 # (R, S)

    # 6. mini-batches of whole prompt groups; gradients accumulated over micro-batches; clip; AdamW
    t1 = time.time()
    m = update(model, opt, batch, old, active, cfg, dist)
    refresh_sampling_copy(policy, model)
    t_update = time.time() - t1

    # 7. metrics: the loss's (over the tokens it saw), the rollout's, the system's
    m.update(rollout_metrics(ro, batch, old, cfg.group_size, dist),
             step=step + 1, lr=opt.param_groups[0]["lr"], time_sample=t_sample - ro.verify_s,
             time_verify=ro.verify_s, time_update=t_update, peak_mem_gb=peak_memory_gb(dev),
             tokens_per_s=float(ro.mask.sum()) / max(time.time() - t0, 1e-9))
    return m


def update(model, opt, batch: Batch, old: torch.Tensor, active: torch.Tensor, cfg: StepConfig, dist: Dist) -> dict:
    """`mini_batches` AdamW steps, one pass over the batch; forward/backward sees the `active` rows
    (loss_rows). Each micro-batch's loss is divided by the valid-token count of its WHOLE mini-batch
    (token-mean, every row counted), so accumulating micro-batches gives the mini-batch's gradient
    exactly. Returns the loss metrics, means over every token the loss saw."""
    dev = dist.device
    sums, grad_norms, nan_skipped = {}, [], 0
    for rows in mini_batches(batch.group, cfg.mini_batches):
        # the one denominator, summed over ranks; FSDP averages gradients over ranks, hence the world factor
        loss_denom = max(dist.all_sum(float(batch.resp_mask[rows].sum())), 1.0) / dist.world
        opt.zero_grad(set_to_none=True)
        finite = True
        trained = rows[active[rows]]                                # the rows forward/backward sees
        seen = dist.all_sum(float(batch.resp_mask[trained].sum()))   # tokens the loss sees, over ranks
        for idx, S, mask in micro_batches(batch, trained, cfg.micro_batch_tokens, dist):
            stats = token_stats(model, batch.seq[idx, :S], mask, cfg.loss, cfg.dtype, dev)
            loss, m = policy_loss(stats, old[idx, 1:S].to(dev), batch.adv[idx].to(dev), mask.to(dev), cfg.loss,
                                  loss_denom=loss_denom)
            loss.backward()   # even when NaN: under FSDP every rank must run the same passes
            finite &= bool(torch.isfinite(loss))   # a host sync per micro-batch
            add_metrics(sums, m)
        if dist.all_sum(0.0 if finite else 1.0) > 0:   # a NaN on any rank: every rank skips this step
            opt.zero_grad(set_to_none=True)
            nan_skipped += 1
            continue
        norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
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
def old_logprobs(model, batch: Batch, active: torch.Tensor, cfg: StepConfig, dist: Dist) -> torch.Tensor:
    """log pi_old(y_t) of the sampled tokens of the `active` rows under the training forward pass, (R, S)
    float32, 0 elsewhere. (The sampler's own numbers differ by kernel rounding and, in bf16, by the weight
    copy; their gap is logged as logprob_mismatch.)"""
    old = torch.zeros(batch.seq.shape)                                                  # (R, S)
    for idx, S, mask in micro_batches(batch, torch.nonzero(active).flatten(), cfg.micro_batch_tokens, dist):
        stats = token_stats(model, batch.seq[idx, :S], mask, cfg.loss, cfg.dtype, dist.device)
        old[idx, 1:S] = old[idx, 1:S].masked_scatter(mask, stats.logp_y.float().cpu())
    return old


# -----------------------------------------------------------------------------
# The pieces of the step


def loss_rows(adv: torch.Tensor, cfg: LossConfig) -> torch.Tensor:
    """(R,) bool: the rows the loss needs run through forward/backward: those with A != 0, unless a row with
    A = 0 can still move the gradient (casp.zero_advantage_rows_matter: KL-Cov, Clip-Cov, the entropy bonus)."""
    return (adv != 0) | zero_advantage_rows_matter(cfg)


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


def build_batch(problems, ro, adv: torch.Tensor) -> Batch:
    """Right-padded rows [prompt, response] for every sampled response (row r answers problems[r // G]),
    with the responses' advantages `adv` (R,)."""
    R = ro.tokens.shape[0]
    group = torch.arange(R) // (R // len(problems))                                  # (R,) prompt of each row
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


def make_sampling_copy(model: Transformer, dtype: str, fsdp: bool, device) -> Transformer:
    """The model sampling uses: the training model itself in float32 without FSDP, else a copy of its
    weights in the compute dtype (bf16; float32 under FSDP, whose sharded weights cannot sample)."""
    if dtype == "float32" and not fsdp:
        return model  # sample with the training weights themselves
    with torch.device("meta"):
        policy = Transformer(model.config)
    policy = policy.to_empty(device=device).to(torch.bfloat16 if dtype == "bfloat16" else torch.float32)
    policy.tie_weights()
    policy.eval()
    for p in policy.parameters():
        p.requires_grad_(False)
    refresh_sampling_copy(policy, model)
    return policy


HELDOUT_SEED = 10**6   # the held-out evaluations' sampling seed (plus the step for the periodic one)


def heldout_pass(policy, tokenizer, problems, cfg: StepConfig, n: int, seed: int) -> dict:
    """pass@1 (and pass@n) on held-out problems, n samples each at the training temperature, or with
    --eval-decoding greedy one greedy response each (pass@1 only); scored as in training (--answer-mode,
    --truncated-reward)."""
    if not problems:
        return {}
    greedy = cfg.eval_decoding == "greedy"
    n = 1 if greedy else n
    ro = rollout(policy, tokenizer, problems, n, max_new_tokens=cfg.max_response_len,
                 temperature=0.0 if greedy else cfg.temperature, top_p=cfg.top_p, top_n=cfg.loss.top_n, seed=seed,
                 slots=cfg.rollout_batch, answer_mode=cfg.answer_mode,
                 truncated_scores_zero=cfg.truncated_reward == "zero")
    correct = ro.rewards.view(len(problems), n).sum(1).long().tolist()
    return {f"pass@{k}": float(np.mean([pass_at_k(n, c, k) for c in correct])) for k in sorted({1, n})}


def heldout_metrics(policy, tokenizer, sets: dict, cfg: StepConfig, n: int, seed: int) -> dict:
    """heldout_pass on every held-out set: heldout_pass@k over all their problems (each problem counts
    once) and, with several sets, heldout_<set>_pass@k per set."""
    out, sums, total = {}, {}, 0
    for name, probs in sets.items():
        for k, v in heldout_pass(policy, tokenizer, probs, cfg, n, seed).items():
            if len(sets) > 1:
                out[f"heldout_{name}_{k}"] = v
            sums[k] = sums.get(k, 0.0) + v * len(probs)
        total += len(probs)
    out.update({f"heldout_{k}": v / total for k, v in sums.items()})
    return out


def eval_command(config: dict, ckpt: Path, explore: Path | None = None) -> str:
    """The eval.py command for a checkpoint of a run, from the run's config (its config.json), on its
    held-out sets; eval.py takes the response length from that config.json. The demo's built-in task is
    eval.py's `synthetic` (the held-out split drawn with seed 0), with tiny.DEMO_EVAL_SAMPLES samples each.
    With `explore` (a folder): the command that draws the final held-out evaluation of the demo (run)
    again, with the same problems, seed, settings and rows per sampler call (so the same samples), and
    writes its explore page into that folder."""
    q, c = shlex.quote, config
    builtin = tiny.uses_builtin_task(c["model"], c["data"])
    held = ["synthetic"] if builtin else c["heldout"] or ["math500"]
    cmd = (f"python eval.py --model {q(str(ckpt / 'model'))} --data {' '.join(q(h) for h in held)}"
           + (f" --data-dir {q(c['data_dir'])}" if c["data_dir"] and not builtin else ""))
    if explore is None:
        return cmd + (f" --n {tiny.DEMO_EVAL_SAMPLES}" if builtin else "")
    cmd += (f" --limit {c['eval_prompts']} --n {tiny.DEMO_HELDOUT_SAMPLES} --max-new-tokens {c['max_response_len']}"
            f" --max-prompt-tokens {c['max_prompt_len']} --seed {HELDOUT_SEED} --answer-mode {c['answer_mode']}"
            f" --max-rows {c['rollout_batch']} --batch-prompts {c['eval_prompts']}")
    for flag, key, default in (("--temperature", "temperature", 1.0), ("--top-p", "top_p", 1.0),
                               ("--top-n", "top_n", 3)):
        cmd += f" {flag} {c[key]}" if c[key] != default else ""
    cmd += f" --prompt-format {c['prompt_format']}" if c["prompt_format"] != "template" else ""
    cmd += f" --dtype {c['dtype']} --device {c['device']}" if c["dtype"] == "float32" else ""
    return cmd + f" --explore --out {q(str(explore))}"


# -----------------------------------------------------------------------------
# Setup: run folder, model, data, optimizer


@dataclass
class Run:
    """Everything the loop holds (made by `setup`)."""
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
    cfg: StepConfig
    expected_gb: float            # the memory pre-flight's expected peak
    steps: int                    # the loop: --steps (or --epochs' steps), --prompts-per-step, --eval-every,
    prompts_per_step: int         # --save-every, --keep
    eval_every: int
    save_every: int
    keep: int
    demo: bool                    # the CPU demo (tiny.is_demo): held-out pass@k before and after training
    config: dict                  # the run's config (config.json), for the eval.py commands printed at the end


def setup(args) -> Run | None:
    """Processes, run folder, model, data, optimizer; refuses (UserError) before anything large is
    allocated when the run folder, the resume or the memory does not allow the run. The output folder is
    checked first (a file, read-only), then locked for the run's life (one writer), before any model loads.
    None after --dry-run (every setting resolved and printed, nothing large allocated, nothing written)."""
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
    if dist.main:
        tiny.warm_start_if_missing(args.model, args.warm_start_steps, args.seed, dist.device)
    dist.barrier()
    try:
        config = model_config(args.model, args.init)
        tokenizer = load_tokenizer(args.tokenizer or _model_dir(args.model, args.init))
    except (FileNotFoundError, ValueError) as e:
        raise UserError(str(e)) from None
    demo = tiny.is_demo(args.model)
    train_set, heldout, n_skipped = load_problems(
        tokenizer, args.data, args.heldout, data_dir=args.data_dir, eval_prompts=args.eval_prompts,
        max_prompt_len=args.max_prompt_len, prompt_format=args.prompt_format,
        builtin_seed=args.seed if tiny.uses_builtin_task(args.model, args.data) else None,
        evaluate=args.eval_every > 0 or demo)   # the demo evaluates before and after training
    if args.epochs:   # E passes, the last partial batch of each dropped (PromptStream)
        per_epoch = len(train_set) // args.prompts_per_step
        if per_epoch == 0:
            raise UserError(f"--epochs: {len(train_set)} training prompts make no full step of "
                            f"--prompts-per-step {args.prompts_per_step}")
        args.steps = args.epochs * per_epoch
    cfg = step_config(args)
    longest = max(len(p["prompt_ids"]) for p in train_set)
    memory = functools.partial(memory_check, config, dist, longest, cfg, prompts_per_step=args.prompts_per_step,
                               fsdp=args.fsdp, grad_checkpoint=args.grad_checkpoint)
    if args.dry_run:
        line, _ = memory(force=True)
        print("config:", json.dumps(vars(args)))
        print(f"[data] {len(train_set)} training prompts ({n_skipped} over --max-prompt-len skipped), {args.steps} "
              f"steps; prompts: {data.prompt_source(tokenizer, args.prompt_format)}\n{line}")
        return None
    memory_line, expected_gb = memory(force=args.force)
    build = functools.partial(build_model, args.model, dist=dist, init=args.init, seed=args.seed,
                              grad_checkpoint=args.grad_checkpoint, fsdp=args.fsdp, dtype=args.dtype, lr=args.lr,
                              weight_decay=args.weight_decay)
    stream, ckpt, start = PromptStream(len(train_set), args.seed), None, 0
    if args.resume:   # the newest complete checkpoint (a damaged one is named and skipped)
        ckpt, model, opt, start, stream_state = resume_checkpoint(out, build, dist)
        stream.load_state_dict(stream_state)
    else:
        model, opt = build(None)
    if dist.main:
        try:
            write_atomic(out / "config.json", json.dumps(vars(args), indent=2))
            torn = start_metrics_file(out / "metrics.jsonl", start)
        except OSError as e:
            raise WriteFailed(f"writing {out} failed ({e.strerror})") from None
        print("config:", json.dumps(vars(args)))
        print(f"[run] {out}" + (f" (resumed from {ckpt} at step {start})" if ckpt else ""))
        print(f"[model] {args.model}: {config.num_params() / 1e6:.1f}M parameters; prompts: "
              f"{data.prompt_source(tokenizer, args.prompt_format)}")
        print(f"[data] {len(train_set)} training prompts ({n_skipped} over --max-prompt-len skipped), "
              + (f"{args.epochs} epochs = {args.steps} steps, " if args.epochs else "")
              + (f"held-out: {', '.join(f'{k} {len(v)}' for k, v in heldout.items())}" if heldout
                 else "no held-out set (--eval-every 0)")
              + f"\n{memory_line}" + (f"\n{torn}" if torn else ""))
    return Run(dist, out, model, make_sampling_copy(model, args.dtype, args.fsdp, dist.device), opt, tokenizer,
               train_set, heldout, n_skipped, stream, start, cfg, expected_gb, steps=args.steps,
               prompts_per_step=args.prompts_per_step, eval_every=args.eval_every, save_every=args.save_every,
               keep=args.keep, demo=demo, config=vars(args))


def load_problems(tokenizer, train_data: str | None, heldout_data: list[str] | None, *, data_dir, eval_prompts: int,
                  max_prompt_len: int, prompt_format: str, builtin_seed: int | None, evaluate: bool):
    """(train problems, {held-out set name: problems}, prompts skipped), problems as dicts with prompt_ids:
    the demo's built-in task drawn with `builtin_seed` (tiny.demo_problems), else --data (default
    math_train) and --heldout (default math500, its first `eval_prompts` problems). The held-out sets are
    read only when the run evaluates: with --eval-every 0 a missing math500 is not an error."""
    if builtin_seed is not None:
        train, held = tiny.demo_problems(builtin_seed, eval_prompts)
    else:
        train = data.load_dataset(train_data or "math_train", data_dir)
        held = {Path(name).stem if name.endswith(".jsonl") else name: data.load_dataset(name, data_dir)[:eval_prompts]
                for name in (heldout_data or ["math500"] if evaluate else [])}
    fmt = dict(prompt_format=prompt_format)
    train, skipped = data.encode_prompts(train, tokenizer, max_prompt_len, **fmt)
    held = {name: data.encode_prompts(probs, tokenizer, max_prompt_len, **fmt)[0] for name, probs in held.items()}
    if not train:
        raise UserError(f"no training prompt fits --max-prompt-len {max_prompt_len} ({skipped} skipped)")
    return train, held, skipped


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


def model_config(name: str, init: str) -> ModelConfig:
    """The architecture, read before any weight is loaded (for the memory pre-flight): the model folder's
    config.json; for a named model whose folder is not there (--init random needs no weights; the tiny
    model's warm start makes it), the built-in config of MODEL_NAMES."""
    if tiny.is_demo(name) or (init == "random" and name in MODEL_NAMES):
        with contextlib.suppress(FileNotFoundError):
            return ModelConfig.from_json(resolve_model_path(name) / "config.json")
        return MODEL_NAMES[name][1]
    return ModelConfig.from_json(resolve_model_path(name) / "config.json")


def memory_check(config: ModelConfig, dist: Dist, longest_prompt: int, cfg: StepConfig, *, prompts_per_step: int,
                 fsdp: bool, grad_checkpoint: bool, force: bool) -> tuple[str, float]:
    """The memory pre-flight (runtime.estimate_memory): refuses a run that cannot fit, unless --force.
    -> (the summary line, the expected peak in GB: the estimate plus what the process holds already)."""
    rows = prompts_per_step * cfg.group_size // dist.world
    parts = estimate_memory(
        config, rollout_rows=min(rows, max(cfg.rollout_batch, cfg.group_size)), total_rows=rows,
        max_prompt_len=longest_prompt, max_response_len=cfg.max_response_len, mini_batches=cfg.mini_batches,
        micro_batch_tokens=cfg.micro_batch_tokens, compute_bytes=2 if cfg.dtype == "bfloat16" else 4,
        sampling_bytes=0 if cfg.dtype == "float32" and not fsdp else (2 if cfg.dtype == "bfloat16" else 4),
        grad_checkpoint=grad_checkpoint, world=dist.world, top_n=cfg.loss.top_n)
    if dist.device.type == "cpu":   # AdamW imports dynamo (~0.1 GB resident on the CPU): held before the step too
        import torch._dynamo  # noqa: F401
    expected = (parts["peak"] + current_memory(dist.device)) / 1e9
    if force:
        return f"[memory] estimated peak {parts['peak'] / 1e9:.1f} GB (not checked: --force)", expected
    return preflight(parts, dist.device), expected


def build_model(name, ckpt: Path | None, dist: Dist, *, init: str, seed: int, grad_checkpoint: bool, fsdp: bool,
                dtype: str, lr: float, weight_decay: float):
    """The float32 master model (from the checkpoint when resuming; sharded under FSDP) and its AdamW."""
    try:
        model = load_model(ckpt / "model" if ckpt else name, device=dist.device, dtype=torch.float32,
                           init="checkpoint" if ckpt else init, seed=seed)
    except (FileNotFoundError, ValueError) as e:
        if ckpt:
            raise   # resume_checkpoint names the damaged checkpoint and tries the previous one
        raise UserError(str(e)) from None
    model.gradient_checkpointing = grad_checkpoint
    if fsdp:
        model = shard_model(model, torch.bfloat16 if dtype == "bfloat16" else torch.float32)
    # fused AdamW (one kernel, no full-size temporaries) on a single GPU; FSDP's DTensors take the default
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay,
                            betas=(0.9, 0.999), eps=1e-8, fused=dist.device.type == "cuda" and not fsdp)
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
