"""
rollout.py: one rollout = sample G responses per problem, decode them, verify them. train.py (the RL
step and its held-out pass@1) and eval.py (pass@K) both call `rollout`, so the two can never score the
same response differently.

    ro = rollout(policy, tokenizer, problems, 8, max_new_tokens=3072, seed=0, slots=256, answer_mode="strict")
    ro.tokens, ro.mask, ro.logprobs, ro.topn_probs, ro.entropy, ro.finish_reason   # sampler.Rollout's fields
    ro.texts, ro.verdicts, ro.rewards                                              # decoded and verified

Row r answers problems[r // n_samples]. Rewards: verifier.verify's, except that a response cut off at
max_new_tokens (finish reason "length") scores 0 when `truncated_scores_zero` (training: the paper's
setting, a truncated text has no final answer and any number in it is noise); evaluation keeps the
verifier's verdict and reports the truncated fraction beside it.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import torch

import data
from sampler import Rollout, generate
from verifier import Verdict, verify, verify_batch


@dataclass
class VerifiedRollout(Rollout):
    texts: list[str]             # (R,) decoded responses (special tokens dropped)
    verdicts: list[Verdict]      # (R,) the verifier's reward, extracted answer and reason
    rewards: torch.Tensor        # (R,) float32: the training reward (0 for truncated when asked)
    verify_s: float              # seconds spent verifying


def rollout(policy, tokenizer, problems: list[dict], n_samples: int, *, max_new_tokens: int,
            temperature: float = 1.0, top_p: float = 1.0, top_k: int = 0, top_n: int = 3, seed: int = 0,
            slots: int | None = None, answer_mode: str = "strict", truncated_scores_zero: bool = True,
            workers: int | None = None) -> VerifiedRollout:
    """Sample n_samples responses to each problem (each must carry `prompt_ids`) with at most `slots`
    rows decoded at once, decode and verify them. Math and logic are verified in this process (~10k
    responses/s); a batch with code runs the sandboxed checks in `workers` processes."""
    ro = generate(policy, [p["prompt_ids"] for p in problems], n_samples=n_samples, max_new_tokens=max_new_tokens,
                  temperature=temperature, top_p=top_p, top_k=top_k, stop_ids=tokenizer.stop_ids, top_n=top_n,
                  seed=seed, vocab_size=tokenizer.vocab_size, slots=slots)
    texts = [tokenizer.decode(t[m].tolist()) for t, m in zip(ro.tokens, ro.mask)]
    owners = [p for p in problems for _ in range(n_samples)]
    t0 = time.time()
    tasks = [p.get("task", "math") for p in owners]
    answers = [p["answer"] for p in owners]
    fields = [data.verifier_fields(p) for p in owners]
    if "code" in tasks:
        verdicts = verify_batch(texts, answers, task=tasks, fields=fields, max_workers=workers, mode=answer_mode)
    else:
        verdicts = [verify(r, a, t, mode=answer_mode, **f) for r, a, t, f in zip(texts, answers, tasks, fields)]
    rewards = training_rewards(verdicts, ro.finish_reason, truncated_scores_zero)
    return VerifiedRollout(**vars(ro), texts=texts, verdicts=verdicts, rewards=rewards, verify_s=time.time() - t0)


def training_rewards(verdicts, finish_reasons, truncated_scores_zero: bool = True) -> torch.Tensor:
    """(R,) float32 rewards: the verifier's, and 0 for a response cut off at the length limit ("length")
    when truncated_scores_zero."""
    return torch.tensor([0.0 if truncated_scores_zero and why == "length" else float(v.reward)
                         for v, why in zip(verdicts, finish_reasons)], dtype=torch.float32)
