"""Mutation check: does a plausible one-line bug in the core math or behaviour make a test fail?

    python tests/mutations.py                  # every mutation: a table of killed / survived and seconds
    python tests/mutations.py --only ppo-clip-max-to-min --only grad-clip-ignored
    python tests/mutations.py --list           # the table of mutations, nothing run
    python tests/mutations.py --jobs 2         # two mutations at a time (only worth it with idle cores)

Each entry of MUTATIONS is a small, plausible bug: (name, file, exact old text, new text, the tests that
cover it, what breaks). One at a time, the repository is copied to a temporary folder, the old text is
replaced by the new one there, and the covering tests run in the copy (`pytest -x`). A mutation is
*killed* when a test fails (or the mutated code no longer imports), *survived* when every test passes:
a behaviour users rely on that no test pins. The exit status is 0 only when every mutation is killed.

The old text must occur exactly once in its file, so the table cannot rot silently when the code
changes: a stale entry is reported (and tests/test_mutations_table.py fails) instead of testing nothing.

Not part of the default test run (it runs the covering tests once per mutation: minutes). The habit:
a change to a core behaviour adds its mutation here, and every mutation is killed.
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# the covering test sets (pytest arguments; tests marked slow are skipped unless -m names them)
CASP = ("tests/test_casp.py",)
TRAIN = ("tests/test_train.py", "tests/test_train_cli.py", "tests/test_flags.py")
EVAL = ("tests/test_eval.py", "tests/test_flags.py")
SAMPLER = ("tests/test_sampler.py", "tests/test_theory.py")
MODEL = ("tests/test_model.py", "tests/test_sampler.py")
VERIFIER = ("tests/test_verifier.py", "tests/test_verifier_cases.py", "tests/test_eval.py")
MEMORY = ("tests", "-k", "memory or preflight or estimate")   # wherever the estimate's tests live


@dataclass(frozen=True)
class Mutation:
    name: str
    file: str
    old: str
    new: str
    tests: tuple[str, ...]
    breaks: str
    first: tuple[str, ...] = ()   # tests (node ids) that should kill it, run first: a quick verdict when they do


MUTATIONS = [
    # ---- advantages (casp.group_advantages)
    Mutation("adv-std-without-bessel", "casp.py",
             "adv = adv / (r.std(dim=1, keepdim=True) + eps)", "adv = adv / (r.std(dim=1, keepdim=True, correction=0) + eps)",
             CASP, "GRPO's std without Bessel's correction"),
    Mutation("adv-all-equal-not-zeroed", "casp.py",
             "return adv.masked_fill(all_equal, 0.0).reshape(-1)", "return adv.reshape(-1)",
             CASP, "all-equal groups keep a rounding-sized advantage"),
    Mutation("no-std-norm-ignored", "train.py",
             "normalize_std=not args.no_std_norm", "normalize_std=True",
             TRAIN, "--no-std-norm (Dr. GRPO advantages) ignored",
             first=('tests/test_train.py::test_no_std_norm_reaches_the_advantages',)),
    # ---- the loss (casp.py)
    Mutation("ppo-clip-max-to-min", "casp.py",
             "return torch.maximum(surr, surr_clipped), surr_clipped > surr",
             "return torch.minimum(surr, surr_clipped), surr_clipped > surr",
             CASP, "the PPO surrogate takes the optimistic branch"),
    Mutation("clip-lower-bound-fixed", "casp.py",
             "rho.clamp(1.0 - clip_eps, 1.0 + eps_high)", "rho.clamp(0.8, 1.0 + eps_high)",
             CASP, "the lower clip bound ignores clip_eps (equal at the default 0.2)"),
    Mutation("clip-higher-ignored", "casp.py",
             "eps_high = clip_eps if clip_eps_high is None else clip_eps_high", "eps_high = clip_eps",
             CASP, "DAPO's clip-higher ignored"),
    Mutation("lambda-at-zero-advantage", "casp.py",
             "neg_scaled = (adv < 0) & stats.is_argmax & w_gate", "neg_scaled = (adv <= 0) & stats.is_argmax & w_gate",
             CASP, "CaSP's lambda mask taken at A <= 0 (the logged fraction changes, not the loss)"),
    Mutation("mixture-ungated", "casp.py",
             "alpha_w = cfg.alpha * (w_gate & (adv > 0)).to(rho.dtype)", "alpha_w = cfg.alpha * (adv > 0).to(rho.dtype)",
             CASP, "the top-N mixture ignores the entropy gate"),
    Mutation("mixture-no-stop-gradient", "casp.py",
             "rho_k_terms = rho.detach()[:, None] * torch.exp(logp_topn - logp_topn.detach())",
             "rho_k_terms = rho[:, None] * torch.exp(logp_topn - logp_topn.detach())",
             CASP, "sg(rho / rho_k) loses its stop-gradient"),
    Mutation("gate-not-strict", "casp.py",
             "return (entropy > thresh) & valid", "return (entropy >= thresh) & valid",
             CASP, "the entropy gate includes the quantile itself"),
    Mutation("gate-quantile-flipped", "casp.py",
             "thresh = torch.nanquantile(h, entropy_quantile, dim=1, keepdim=True)",
             "thresh = torch.nanquantile(h, 1 - entropy_quantile, dim=1, keepdim=True)",
             CASP, "the gate keeps the top 80% instead of the top 20%"),
    Mutation("chunked-backward-no-temperature", "casp.py",
             "dz = (-gs.sum(-1, keepdim=True) * p).scatter_add_(1, ids[s:s + c], gs) / t",
             "dz = (-gs.sum(-1, keepdim=True) * p).scatter_add_(1, ids[s:s + c], gs)",
             CASP, "the chunked path's gradient forgets the 1 / temperature"),
    # ---- the update (train.py)
    Mutation("grad-clip-ignored", "train.py",
             "clip_grad_norm_(model.parameters(), cfg.grad_clip)", 'clip_grad_norm_(model.parameters(), float("inf"))',
             TRAIN, "--grad-clip ignored (the norm still logged)",
             first=('tests/test_train.py::test_update_equals_a_direct_computation',)),
    Mutation("token-mean-drops-zero-adv-rows", "train.py",
             "loss_denom = max(dist.all_sum(float(batch.resp_mask[rows].sum())), 1.0) / dist.world",
             "loss_denom = max(dist.all_sum(float(batch.resp_mask[rows][batch.adv[rows] != 0].sum())), 1.0) / dist.world",
             TRAIN, "the token-mean denominator leaves out the tokens of A = 0 rows",
             first=('tests/test_train.py::test_update_equals_a_direct_computation',)),
    Mutation("one-mini-batch", "train.py",
             "per = math.ceil(P / n)", "per = P",
             TRAIN, "--mini-batches ignored: one optimizer step per training step",
             first=('tests/test_train.py::test_update_equals_a_direct_computation',)),
    Mutation("sampling-copy-not-refreshed", "train.py",
             "    refresh_sampling_copy(policy, model)\n    t_update", "    t_update",
             TRAIN, "the bf16 / FSDP sampling copy is never refreshed after an update",
             first=('tests/test_train.py::test_bf16_sampling_copy_is_refreshed_after_the_update',)),
    Mutation("nan-step-taken", "train.py",
             "if dist.all_sum(0.0 if finite else 1.0) > 0:", "if False:",
             TRAIN, "a NaN loss's optimizer step is taken",
             first=('tests/test_train.py::test_nan_loss_skips_the_mini_batch',)),
    Mutation("rollout-top-p-ignored", "train.py",
             "temperature=cfg.temperature, top_p=cfg.top_p, top_n=cfg.loss.top_n, seed=seed,",
             "temperature=cfg.temperature, top_p=1.0, top_n=cfg.loss.top_n, seed=seed,",
             TRAIN, "--top-p ignored by the training rollout",
             first=("tests/test_flags.py::test_train_flags_reach_the_sampler_verifier_loss_optimizer_and_checkpoints",)),
    Mutation("mixed-groups-inverted", "train.py",
             "(groups.min(1).values != groups.max(1).values)", "(groups.min(1).values == groups.max(1).values)",
             TRAIN, "frac_mixed_groups logs the fraction of all-equal groups",
             first=('tests/test_train.py::test_rollout_metrics_equal_a_direct_computation',)),
    Mutation("sampler-entropy-mean-of-row-means", "train.py",
             "sampler_entropy=float(ro.entropy[mask].sum()) / n,",
             "sampler_entropy=float((ro.entropy * mask).sum(1).div(mask.sum(1).clamp(min=1)).mean()),",
             TRAIN, "the sampler's entropy is a mean of per-response means, not token-weighted",
             first=('tests/test_train.py::test_rollout_metrics_equal_a_direct_computation',)),
    # ---- resume and checkpoints (train.py, runtime.py)
    Mutation("resume-forgets-data-position", "train.py",
             "        stream.load_state_dict(stream_state)\n", "",
             TRAIN, "a resumed run restarts the prompt stream",
             first=('tests/test_train.py::test_resume_is_exact',)),
    Mutation("keep-rotation-deletes-newest", "runtime.py",
             'for old in checkpoints(out)[keep:]:', 'for old in checkpoints(out)[::-1][keep:]:',
             TRAIN, "--keep deletes the newest checkpoints instead of the oldest",
             first=('tests/test_train.py::test_keep_rotation_deletes_exactly_the_oldest',)),
    Mutation("keep-rotation-off-by-one", "runtime.py",
             'for old in checkpoints(out)[keep:]:', 'for old in checkpoints(out)[keep + 1:]:',
             TRAIN, "--keep N keeps N + 1 checkpoints",
             first=('tests/test_train.py::test_keep_rotation_deletes_exactly_the_oldest',)),
    # ---- memory estimate (runtime.py); 7 and 8 of the audit: their tests come with the estimate's recalibration
    Mutation("memory-activations-halved", "runtime.py",
             '"activations": T * (', '"activations": 0.5 * T * (',
             MEMORY, "the memory estimate's activation factor halved"),
    Mutation("memory-sampling-copy-free", "runtime.py",
             '"sampling copy of the weights": sampling_bytes * P,', '"sampling copy of the weights": 0 * P,',
             MEMORY, "the sampling copy counted as 0 bytes in the memory estimate"),
    Mutation("memory-kv-cache-one-tensor", "runtime.py",
             "kv_width = config.vocab_size, 2 * config.num_key_value_heads * config.head_dim",
             "kv_width = config.vocab_size, config.num_key_value_heads * config.head_dim",
             MEMORY, "the KV cache estimate counts K but not V"),
    # ---- sampler, KV cache, RoPE (sampler.py, model.py)
    Mutation("top-p-boundary", "sampler.py",
             "n_keep = (mass_before < top_p).sum(-1, keepdim=True)", "n_keep = (mass_before <= top_p).sum(-1, keepdim=True)",
             SAMPLER, "top-p keeps one token too many at the boundary",
             first=('tests/test_sampler.py::test_top_p_boundary_is_strict',)),
    Mutation("inverse-cdf-left", "sampler.py",
             "torch.searchsorted(cdf, target, right=True)", "torch.searchsorted(cdf, target, right=False)",
             SAMPLER, "a zero-probability id can be drawn"),
    Mutation("sampling-temperature-ignored", "sampler.py",
             "z = logits / temperature                                                  # (B, V)",
             "z = logits                                                                # (B, V)",
             SAMPLER, "--temperature ignored by the sampler"),
    Mutation("kv-cache-positions-reset", "model.py",
             "positions = kv_cache.lengths[:, None] + torch.arange(T, device=tokens.device)",
             "positions = torch.arange(T, device=tokens.device).expand(B, T) + 0 * kv_cache.lengths[:, None]",
             MODEL, "cached decoding puts every new token at position 0"),
    Mutation("rope-rotation-sign", "model.py",
             "return x * cos + torch.cat([-x2, x1], dim=-1) * sin", "return x * cos + torch.cat([x2, -x1], dim=-1) * sin",
             MODEL, "RoPE rotates the wrong way"),
    # ---- verifier rules (verifier.py)
    Mutation("normaliser-raises", "verifier.py",
             "    s = ans.strip()\n    if _PLAIN_NUM_RE.fullmatch(s):", "    raise RuntimeError('mutant')\n    if 0:",
             VERIFIER, "the answer normaliser raises at its first line (swallowed by the verifier)",
             first=('tests/test_verifier.py::test_each_equivalence_rule_accepts_its_example',)),
    Mutation("public-normalize-raises", "verifier.py",
             "        s, percent, _ = _normalize(ans)\n", "        raise RuntimeError('mutant')\n",
             VERIFIER, "the public normalize raises (eval's distinct-answer count falls back silently)",
             first=('tests/test_eval.py::test_summary_weights_tokens_and_responses_and_averages_benchmarks_macro',)),
    Mutation("percent-times-hundred", "verifier.py",
             "cands.append(x / 100 if pct_a else x * 100)", "cands.append(x * 100 if pct_a else x / 100)",
             VERIFIER, "a percentage no longer equals its fraction"),
    Mutation("units-both-sides-ignored", "verifier.py",
             "if p_unit and g_unit and p_unit != g_unit:", "if False:",
             VERIFIER, "5 cm equals 5 m"),
    Mutation("interval-closedness-ignored", "verifier.py",
             "and (x[2] == y[2] or math.isinf(x[0])) and (x[5] == y[5] or math.isinf(x[3]))", "",
             VERIFIER, "[0, 1) equals (0, 1] as solution sets"),
    Mutation("strict-mode-lenient", "verifier.py",
             'ans = None if mode == "strict" else _lenient_answer(t)', "ans = _lenient_answer(t)",
             VERIFIER, "strict mode (the training reward) reads unboxed answers"),
    Mutation("tails-degree-counts-as-percent", "verifier.py",
             'percent = percent or (kind == "percent" and n > 0)', "percent = percent or n > 0",
             VERIFIER, "a dropped tail (a degree sign, a full stop) marks the answer as a percentage",
             first=('tests/test_verifier.py::test_each_tail_row_gives_its_example',)),
    # ---- the code sandbox (sandbox.py)
    Mutation("sandbox-rlimits-dropped", "sandbox.py",
             "preexec_fn=_preexec(limits))", "preexec_fn=None)",
             ("tests/test_sandbox.py", "tests/test_benchmarks.py"), "the sandboxed child runs without its rlimits",
             first=('tests/test_sandbox.py::test_child_applies_its_limits_and_cleans_up',)),
    # ---- pass@K (passk.py) and eval's tables (eval.py)
    Mutation("pass-at-k-off-by-one", "passk.py",
             "for i in range(n - c + 1, n + 1):", "for i in range(n - c, n + 1):",
             EVAL, "pass@k multiplies one factor too many",
             first=('tests/test_eval.py::test_pass_at_k_equals_enumeration_over_all_subsets',)),
    Mutation("eval-entropy-mean-of-means", "eval.py",
             'out["entropy"] = sum(r["cand"]["entropy"] * r["cand"]["n_tokens"] for r in records) / tokens',
             'out["entropy"] = sum(r["cand"]["entropy"] for r in records) / len(records)',
             EVAL, "eval's entropy: mean of per-problem means instead of token-weighted",
             first=('tests/test_eval.py::test_summary_weights_tokens_and_responses_and_averages_benchmarks_macro',)),
    Mutation("eval-truncated-scored-zero", "eval.py",
             "truncated_scores_zero=False, workers=args.workers", "truncated_scores_zero=True, workers=args.workers",
             EVAL, "eval scores truncated responses 0 (the verifier's verdict is the documented one)",
             first=('tests/test_flags.py::test_eval_flags_reach_the_sampler_verifier_and_model',)),
]


# -----------------------------------------------------------------------------
# Applying and running


def stale_entries(root: Path = ROOT, mutations=MUTATIONS) -> list[str]:
    """The entries whose old text does not occur exactly once in their file (empty: the table is usable)."""
    problems, seen = [], set()
    for m in mutations:
        if m.name in seen:
            problems.append(f"{m.name}: duplicate name")
        seen.add(m.name)
        path = root / m.file
        n = path.read_text(encoding="utf-8").count(m.old) if path.is_file() else -1
        if n != 1:
            problems.append(f"{m.name}: its old text occurs {n if n >= 0 else 'in no file'} times in {m.file} "
                            "(expected exactly once)")
    return problems


def repository_files(root: Path) -> list[Path]:
    """Tracked and untracked-but-not-ignored files (git), else everything but caches and run folders."""
    try:
        out = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=root, check=True,
                             capture_output=True).stdout.decode()
        return [Path(p) for p in out.split("\0") if p and (root / p).is_file()]
    except (OSError, subprocess.CalledProcessError):
        skip = {".git", "__pycache__", ".pytest_cache", ".hypothesis", "runs", "out"}
        return [p.relative_to(root) for p in root.rglob("*") if p.is_file() and not skip & set(p.parts)]


def mutated_copy(m: Mutation, dest: Path, files: list[Path], root: Path = ROOT) -> None:
    """The repository copied to dest with m applied (its old text must occur exactly once)."""
    for rel in files:
        if not (root / rel).is_file():       # deleted since the list was made
            continue
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(root / rel, dest / rel)
    path = dest / m.file
    text = path.read_text(encoding="utf-8")
    if text.count(m.old) != 1:
        raise SystemExit(f"error: {m.name}: its old text occurs {text.count(m.old)} times in {m.file}")
    path.write_text(text.replace(m.old, m.new), encoding="utf-8")


def run_mutation(m: Mutation, timeout: float) -> tuple[str, float, str]:
    """(verdict, seconds, the last lines of pytest's output). Verdicts: killed, killed (no import),
    killed (timeout), survived, error (pytest ran no test: the table names tests that do not exist)."""
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1", "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    shared = ROOT.parent / "shared"   # as .ci/run: real data from a shared/ folder beside the repository, if any
    if (shared / "data").is_dir():
        env.setdefault("CASP_DATA", str(shared / "data"))
    if (shared / "tokenizers" / "qwen2.5").is_dir():
        env.setdefault("CASP_QWEN_TOKENIZER", str(shared / "tokenizers" / "qwen2.5"))
    t0 = time.time()
    with tempfile.TemporaryDirectory(prefix=f"mutant-{m.name}-") as tmp:
        repo = Path(tmp) / "repo"
        mutated_copy(m, repo, repository_files(ROOT))   # listed now: the tree may change during a long run
        for tests in ([m.first] if m.first else []) + [m.tests]:
            cmd = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *tests]
            try:
                r = subprocess.run(cmd, cwd=repo, env=env, capture_output=True, text=True,
                                   timeout=max(timeout - (time.time() - t0), 1))
            except subprocess.TimeoutExpired:
                return "killed (timeout)", time.time() - t0, ""
            if r.returncode != 0:
                break
    tail = "\n".join((r.stdout + r.stderr).strip().splitlines()[-6:])
    verdict = {0: "survived", 1: "killed", 2: "killed (no import)"}.get(r.returncode, "error")
    return verdict, time.time() - t0, tail


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--only", action="append", default=[], metavar="NAME", help="run this mutation (repeatable)")
    ap.add_argument("--list", action="store_true", help="print the table of mutations and exit")
    ap.add_argument("--jobs", type=int, default=1, help="mutations run at once (default 1)")
    ap.add_argument("--timeout", type=float, default=900, help="seconds per mutation before it counts as killed")
    ap.add_argument("-v", "--verbose", action="store_true", help="print pytest's last lines for each mutation")
    args = ap.parse_args(argv)
    stale = stale_entries()
    if stale:
        print("error: the mutation table is stale:\n  " + "\n  ".join(stale), file=sys.stderr)
        return 2
    unknown = sorted(set(args.only) - {m.name for m in MUTATIONS})
    if unknown:
        print(f"error: unknown mutation(s) {', '.join(unknown)} (see --list)", file=sys.stderr)
        return 2
    chosen = [m for m in MUTATIONS if not args.only or m.name in args.only]
    width = max(len(m.name) for m in chosen)
    if args.list:
        for m in chosen:
            print(f"{m.name:<{width}}  {m.file:<11}  {m.breaks}")
        return 0
    print(f"{len(chosen)} mutation(s); covering tests run with pytest -x in a temporary copy of {ROOT}")
    print(f"| {'mutation':<{width}} | verdict            | seconds |")
    print(f"|{'-' * (width + 2)}|--------------------|---------|")
    results = []

    def report(m, verdict, secs, tail):
        results.append((m, verdict))
        print(f"| {m.name:<{width}} | {verdict:<18} | {secs:7.1f} |", flush=True)
        if args.verbose or verdict in ("survived", "error"):
            print("    " + m.breaks + "\n" + "\n".join("    " + line for line in tail.splitlines()), flush=True)

    if args.jobs > 1:
        from concurrent.futures import ThreadPoolExecutor
        with ThreadPoolExecutor(args.jobs) as ex:
            futures = [(m, ex.submit(run_mutation, m, args.timeout)) for m in chosen]
            for m, f in futures:
                report(m, *f.result())
    else:
        for m in chosen:
            report(m, *run_mutation(m, args.timeout))
    alive = [m.name for m, v in results if not v.startswith("killed")]
    print(f"\n{len(results) - len(alive)} of {len(results)} killed" +
          (f"; not killed: {', '.join(alive)}" if alive else ""))
    return 1 if alive else 0


if __name__ == "__main__":
    sys.exit(main())
