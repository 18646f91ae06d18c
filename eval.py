"""
eval.py: pass@K over the whole K spectrum, candidate diagnostics, comparisons and plots.

    python eval.py --model qwen-1.5b --data math500 aime2024 --n 64 --k 1 2 4 8 16 32 64 --out runs/eval/base
    python eval.py --rescore runs/eval/base                       # the table again, from saved samples only
    python eval.py --compare runs/eval/base runs/eval/casp --out runs/cmp   # one table + compare.png
    python eval.py --plot-metrics runs/grpo/metrics.jsonl runs/casp/metrics.jsonl --out runs/cmp
    python eval.py --model runs/x/ckpt-000140/model --data aime2025 amc23 math_test --authors-eval  # n 256, T 0.6

What it measures
    pass@k     1 - C(n-c, k) / C(n, k) per problem (n samples, c correct), averaged over problems: the
               unbiased estimator of Chen et al. (2021), computed as 1 - prod_{i=n-c+1}^{n} (1 - k/i)
               (no huge binomials; exact to float rounding for n up to 4096 and beyond): passk.pass_at_k
    acc        mean of c/n (= pass@1)
    #ans       distinct final answers per problem (verifier-normalized); #resp: distinct response texts
    len        response length in tokens (stop token included); trunc: fraction that hit --max-new-tokens
    p(1..N)    mean probability of the top-1..N candidates of the temperature-1 next-token distribution,
               over every generated token of every response (token-weighted); H: mean entropy (nats)
A benchmark's row averages its problems; the "average" row averages the benchmarks (macro, as the paper).
Benchmarks with subtasks (BBH's 27 tasks, SynLogic's task types, LiveCodeBench's difficulties) also get one
row per subtask in a second table ("bbh/navigate"), saved as results.json's "subtasks".

Samples are written one line per problem as soon as the problem is verified:
    OUT/samples/<benchmark>.jsonl   {"id", "benchmark", "task", "answer", "n", "n_correct", "rewards",
                                     "extracted", "responses", "lengths", "finish", "cand": {"n_tokens",
                                     "topn_probs", "entropy"}, and "subtask" where the problem has one}
so an interrupted run resumes where it stopped (finished problems are never resampled; a torn last line is
dropped) and every table can be recomputed without the model (--rescore). OUT/eval_config.json holds the
sampling settings; resuming with different ones is refused (a folder without samples is simply reused).
One evaluation writes a folder at a time (OUT/.lock). OUT/results.json holds the table.

Randomness: the sampler draws every row from its own counter-based stream keyed by (seed, prompt, sample
index), so a problem's n samples do not depend on which problems share its batch, and a resumed run
produces the samples an uninterrupted one would have. At most --max-rows rows are decoded at once (the
KV cache's memory); which rows share the decoder does not change any sample.

The paper's theory check on the number of distinct responses is in experiments/theory.py.

Seeing the tokens (explore.py): with --explore each problem's record also gets an "explore" field (the problem
text and, for its first --explore-samples responses, every token's id, log-prob, entropy and top-N candidates,
about 60 bytes per token; explore.py gives the format) and the run ends by writing OUT/explore.html. A run
without --explore stores nothing of it. --explore RUN draws the page from saved samples; --explore-compare
puts two runs side by side.

matplotlib is optional (imported only to draw); without it the tables are printed and no PNG is written.
torch, the model and the sampler are imported only when sampling, so verifier worker processes and
--rescore start fast.
"""
from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path

import data
from cli import (ArgumentParser, HelpFormatter, UserError, at_least, between, check_output_folder, one_line_errors,
                 write_atomic)
from passk import pass_at_k

# -----------------------------------------------------------------------------
# Saved samples


def read_samples(path: Path, repair: bool = False) -> list[dict]:
    """Records of one samples file. A torn last line (a run killed mid-write) is dropped, and with
    repair=True removed from the file; a malformed line elsewhere is an error naming file and line."""
    path = Path(path)
    if not path.is_file():
        return []
    text = path.read_text(encoding="utf-8")
    lines = text.split("\n")
    records, torn = [], False
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            if lineno == len(lines):       # the last, unterminated line
                torn = True
                continue
            raise data.DataError(f"{path}:{lineno}: malformed sample record") from None
    if repair and (torn or (text and not text.endswith("\n"))):   # the next append starts a fresh line
        write_atomic(path, "".join(json.dumps(r) + "\n" for r in records))
    return records


def load_run(path) -> list[dict]:
    """All sample records of a run: a samples file, or a folder (its samples/*.jsonl, else its *.jsonl)."""
    path = Path(path)
    if path.is_file():
        return read_samples(path)
    if not path.is_dir():
        raise data.DataNotFound(f"{path}: no such samples file or folder")
    files = sorted((path / "samples").glob("*.jsonl")) or sorted(path.glob("*.jsonl"))
    records = [r for f in files for r in read_samples(f)]
    if not records:
        raise data.DataNotFound(f"{path}: no sample records (expected samples/<benchmark>.jsonl)")
    return records


def _norm_answer(a: str) -> str:
    from verifier import normalize   # never raises (an internal failure is counted there)
    return normalize(a)[0]


def problem_record(prob: dict, bench: str, responses, verdicts, lengths, finish, cand) -> dict:
    rewards = [float(v.reward) for v in verdicts]
    rec = {"id": prob["id"], "benchmark": bench, "task": prob.get("task", "math"), "answer": prob["answer"],
           "n": len(responses), "n_correct": int(sum(r > 0.5 for r in rewards)), "rewards": rewards,
           "extracted": [v.extracted for v in verdicts], "responses": responses, "lengths": lengths,
           "finish": finish, "cand": cand}
    if prob.get("subtask"):          # BBH's task, SynLogic's task type, LiveCodeBench's difficulty
        rec["subtask"] = prob["subtask"]
    return rec


# -----------------------------------------------------------------------------
# Tables


def default_ks(n: int) -> list[int]:
    ks = [2 ** i for i in range(n.bit_length()) if 2 ** i <= n]
    return ks + ([n] if ks[-1] != n else [])


def summarize(records: list[dict], ks) -> dict:
    """The metrics of one benchmark (see the module docstring), from its problem records."""
    n_min = min(r["n"] for r in records)
    out = {"problems": len(records), "n": n_min}
    for k in ks:
        if k <= n_min:
            out[f"pass@{k}"] = sum(pass_at_k(r["n"], r["n_correct"], k) for r in records) / len(records)
    out["acc"] = sum(r["n_correct"] / r["n"] for r in records) / len(records)
    out["distinct_answers"] = sum(len({_norm_answer(a) for a in r["extracted"] if a is not None})
                                  for r in records) / len(records)
    out["distinct_responses"] = sum(len(set(r["responses"])) for r in records) / len(records)
    n_resp = sum(r["n"] for r in records)
    out["response_len"] = sum(sum(r["lengths"]) for r in records) / n_resp
    out["truncated"] = sum(f == "length" for r in records for f in r["finish"]) / n_resp
    tokens = sum(r["cand"]["n_tokens"] for r in records)
    if tokens:
        N = max(len(r["cand"]["topn_probs"]) for r in records)
        out["topn_probs"] = [sum(r["cand"]["topn_probs"][i] * r["cand"]["n_tokens"] for r in records
                                 if r["cand"]["n_tokens"]) / tokens for i in range(N)]
        out["entropy"] = sum(r["cand"]["entropy"] * r["cand"]["n_tokens"] for r in records) / tokens
    return out


def summarize_run(records: list[dict], ks) -> dict:
    """{benchmark: metrics, ..., "average": macro-average over the benchmarks}."""
    by_bench: dict[str, list] = {}
    for r in records:
        by_bench.setdefault(r["benchmark"], []).append(r)
    table = {b: summarize(rs, ks) for b, rs in sorted(by_bench.items())}
    if table:
        rows = list(table.values())
        avg = {"problems": sum(r["problems"] for r in rows), "n": min(r["n"] for r in rows)}
        for key in rows[0]:
            if key in avg:
                continue
            if all(key in r for r in rows):
                vals = [r[key] for r in rows]
                avg[key] = ([sum(v[i] for v in vals) / len(vals) for i in range(min(map(len, vals)))]
                            if isinstance(vals[0], list) else sum(vals) / len(vals))
        table["average"] = avg
    return table


def summarize_subtasks(records: list[dict], ks) -> dict:
    """{"<benchmark>/<subtask>": metrics} for the records that name a subtask (BBH, SynLogic,
    LiveCodeBench); the benchmark's own row in summarize_run averages all its problems."""
    groups: dict[str, list] = {}
    for r in records:
        if r.get("subtask"):
            groups.setdefault(f"{r['benchmark']}/{r['subtask']}", []).append(r)
    return {name: summarize(rs, ks) for name, rs in sorted(groups.items())}


def format_table(rows: dict[str, dict], ks) -> str:
    """A Markdown table, one row per label; pass@k and acc in percent."""
    ks = [k for k in ks if any(f"pass@{k}" in r for r in rows.values())]
    N = max((len(r.get("topn_probs", [])) for r in rows.values()), default=0)
    head = (["", "problems", "n"] + [f"pass@{k}" for k in ks] + ["acc", "#ans", "#resp", "len", "trunc"]
            + [f"p({i + 1})" for i in range(N)] + ["H"])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for label, r in rows.items():
        cells = [label, str(r["problems"]), str(r["n"])]
        cells += [f"{100 * r[f'pass@{k}']:.1f}" if f"pass@{k}" in r else "-" for k in ks]
        cells += [f"{100 * r['acc']:.1f}", f"{r['distinct_answers']:.2f}", f"{r['distinct_responses']:.2f}",
                  f"{r['response_len']:.1f}", f"{r['truncated']:.3f}"]
        tp = r.get("topn_probs", [])
        cells += [f"{tp[i]:.3f}" if i < len(tp) else "-" for i in range(N)]
        cells += [f"{r['entropy']:.3f}" if "entropy" in r else "-"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


# -----------------------------------------------------------------------------
# Plots (matplotlib optional)


def _pyplot():
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        return plt
    except ImportError:
        print("matplotlib is not installed: tables only, no plot", file=sys.stderr)
        return None


def plot_compare(runs: dict[str, dict], path, bench: str = "average") -> Path | None:
    """pass@K curves (log-scale K, y from 0) and the candidate probabilities by rank, one colour per run;
    with two runs or more a third panel shows each run's p(k) minus the first run's, in points (runs
    differ by a few points, which bars of height ~0.8 side by side do not show).
    runs: {label: summarize_run(...)}; plots the given benchmark row (default: the average)."""
    plt = _pyplot()
    if plt is None:
        return None
    rows = {label: table.get(bench) or next(iter(table.values())) for label, table in runs.items()}
    labels = list(rows)
    N = max((len(r.get("topn_probs", [])) for r in rows.values()), default=0)
    with_diff = len(rows) > 1 and N > 0
    fig, axes = plt.subplots(1, 3 if with_diff else 2, figsize=(16.5 if with_diff else 11, 4))
    ax1, ax2 = axes[0], axes[1]
    width = 0.8 / max(1, len(rows))
    all_ks, top = set(), 0.0
    for j, (label, row) in enumerate(rows.items()):
        ks = sorted(int(key[5:]) for key in row if key.startswith("pass@"))
        all_ks.update(ks)
        ys = [100 * row[f"pass@{k}"] for k in ks]
        top = max([top] + ys)
        ax1.plot(ks, ys, marker="o", color=f"C{j}", label=label, clip_on=False)   # points at 0 stay whole
        tp = row.get("topn_probs", [])
        bars = ax2.bar([i + 1 + (j - (len(rows) - 1) / 2) * width for i in range(len(tp))], tp, width,
                       color=f"C{j}", label=label)
        ax2.bar_label(bars, fmt="%.3f", fontsize=7)
    ax1.set_xscale("log", base=2)
    ax1.set_xticks(sorted(all_ks), [str(k) for k in sorted(all_ks)])
    ax1.minorticks_off()
    ax1.set_ylim(0, min(100.0, max(10.0, 1.12 * top)))   # all zeros: 0..10%, not a +-0.04% band around 0
    ax1.set(xlabel="K", ylabel="pass@K (%)", title=f"pass@K ({bench})")
    ax2.set(xlabel="candidate rank", ylabel="mean probability", title="candidate probability by rank",
            ylim=(0, 1.08))
    ax2.set_xticks(range(1, N + 1))
    if with_diff:
        ax3, base, others = axes[2], rows[labels[0]].get("topn_probs", []), labels[1:]
        w, span = 0.8 / len(others), 1.0
        for j, label in enumerate(others, 1):
            tp = rows[label].get("topn_probs", [])
            d = [100 * (tp[i] - base[i]) for i in range(min(len(tp), len(base)))]
            span = max([span] + [abs(v) for v in d])
            bars = ax3.bar([i + 1 + (j - 1 - (len(others) - 1) / 2) * w for i in range(len(d))], d, w,
                           color=f"C{j}", label=f"{label} - {labels[0]}")
            ax3.bar_label(bars, fmt="%+.2f", fontsize=7)
        ax3.axhline(0, color="k", lw=0.8)
        ax3.set_ylim(-1.3 * span, 1.3 * span)             # at least +-1.3 points: noise stays small
        ax3.set_xticks(range(1, N + 1))
        ax3.set(xlabel="candidate rank", ylabel="difference (points)", title=f"p(k) minus {labels[0]}'s")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return _save(plt, fig, path)


def _save(plt, fig, path, rect=(0, 0, 1, 1)) -> Path:
    fig.tight_layout(rect=rect)      # rect: the part of the figure the panels fill (a legend below: less)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def read_metrics(path) -> list[dict]:
    out = []
    for lineno, line in enumerate(Path(path).read_text().splitlines(), 1):
        if line.strip():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                raise data.DataError(f"{path}:{lineno}: malformed metrics line") from None
    return out


RANK_STYLES = ("-", "--", ":")     # line style of p(1), p(2), p(3..N)


def plot_metrics(files, path) -> Path | None:
    """A training run's metrics.jsonl over steps: reward; held-out pass@1 (only when a run measured it);
    p(1..N) over all the loss's tokens and, beside it on the same 0..1 scale, at the tokens the entropy
    gate selects (where CaSP acts, and where the distribution moves: over all tokens it hardly does);
    entropy. p(1) solid, p(2) dashed, p(3..N) dotted; several runs overlaid, one colour each (label = the run's folder).
    A step that logged null for a metric (no mixed group) is skipped in that panel."""
    plt = _pyplot()
    if plt is None:
        return None
    runs = [(Path(f).parent.name or Path(f).stem, [r for r in read_metrics(f) if "step" in r]) for f in files]
    held = any(k.endswith("pass@1") and r[k] is not None for _, rows in runs for r in rows for k in r)
    gated = any(r.get("gated_top1_prob") is not None for _, rows in runs for r in rows)
    panels = (["reward"] + (["held-out pass@1"] if held else []) + ["p(1..N), all tokens"]
              + (["p(1..N), gated tokens"] if gated else []) + ["entropy"])
    fig, axes = plt.subplots(1, len(panels), figsize=(4.3 * len(panels), 3.8))
    ax = dict(zip(panels, axes))
    for j, (label, rows) in enumerate(runs):
        c = f"C{j}"
        def series(key):
            pts = [(r["step"], r[key]) for r in rows if isinstance(r.get(key), (int, float))]
            return [p[0] for p in pts], [p[1] for p in pts]
        ax["reward"].plot(*series("reward_mean"), color=c, label=label)
        pass_key = next((k for r in rows for k in r if k.endswith("pass@1") and r[k] is not None), None)
        if held and pass_key:
            ax["held-out pass@1"].plot(*series(pass_key), marker=".", color=c, label=f"{label} ({pass_key})")
        tp = [(r["step"], r["topn_probs"]) for r in rows if r.get("topn_probs")]
        for i in range(max((len(p) for _, p in tp), default=0)):
            ax["p(1..N), all tokens"].plot([s for s, p in tp if len(p) > i], [p[i] for s, p in tp if len(p) > i],
                                           color=c, ls=RANK_STYLES[min(i, 2)], label=f"{label} p({i + 1})")
        for i in range(1, 10):
            if gated and any(r.get(f"gated_top{i}_prob") is not None for r in rows):
                ax["p(1..N), gated tokens"].plot(*series(f"gated_top{i}_prob"), color=c, ls=RANK_STYLES[min(i - 1, 2)],
                                                 label=f"{label} p({i})")
        ax["entropy"].plot(*series("entropy"), color=c, label=label)
    for name, a in ax.items():
        a.set(xlabel="step", title=name)
        if name.startswith("p(1..N)"):
            a.set(ylim=(0, 1), ylabel="probability")
        a.grid(alpha=0.3)
        if a.get_legend_handles_labels()[0]:
            a.legend(fontsize=7)
    return _save(plt, fig, path)


# -----------------------------------------------------------------------------
# Sampling and verification


SAMPLING_KEYS = ("model", "n", "max_new_tokens", "temperature", "top_p", "top_k", "top_n", "seed",
                 "max_prompt_tokens", "max_rows", "answer_mode", "prompt_format")
SAMPLING_ADDED = {"prompt_format": "template"}   # keys a saved eval_config.json may lack: their value then

# The sampling of the pass@K curves in the evaluation code of the repository the authors' code was forked
# from (TianHongZXY/RLVR-Decomposed @ a5d4e7c, eval.sh: --num_generation=256 --temperature=0.6 --top_p=0.95
# --max_tokens=4096), with the authors' prompt. The CaSP paper's text does not state its own settings.
AUTHORS_EVAL = dict(n=256, temperature=0.6, top_p=0.95, max_new_tokens=4096, prompt_format="authors")


def _bar(total, desc, enabled):
    try:
        from tqdm import tqdm
        return tqdm(total=total, desc=desc, unit="problem", disable=not enabled)
    except ImportError:
        class _NoBar:
            def update(self, n=1): pass
            def close(self): pass
        return _NoBar()


def evaluate_benchmark(model, tokenizer, bench: str, problems: list[dict], args, path: Path) -> list[dict]:
    """Sample, verify and append one record per unfinished problem to `path`; return all records.
    Problems go through rollout.rollout (the training step's own sample + decode + verify) in groups of
    --batch-prompts, at most --max-rows rows decoded at once; each group is on disk before the next."""
    from rollout import rollout

    done = {r["id"]: r for r in read_samples(path, repair=True)}
    todo = [p for p in problems if p["id"] not in done]
    per_call = args.batch_prompts or max(1, args.max_rows // args.n)
    bar = _bar(len(problems), bench, args.progress)
    bar.update(len(problems) - len(todo))
    with open(path, "a", encoding="utf-8") as f:
        for i in range(0, len(todo), per_call):
            group = todo[i:i + per_call]
            ro = rollout(model, tokenizer, group, args.n, max_new_tokens=args.max_new_tokens,
                         temperature=args.temperature, top_p=args.top_p, top_k=args.top_k, top_n=args.top_n,
                         seed=args.seed, slots=args.max_rows, answer_mode=args.answer_mode,
                         truncated_scores_zero=False, workers=args.workers)
            for q, prob in enumerate(group):
                rows = slice(q * args.n, (q + 1) * args.n)
                mask = ro.mask[rows]                                                         # (n, L)
                tok = max(int(mask.sum()), 1)
                cand = {"n_tokens": int(mask.sum()),                                      # sampler's, temperature 1
                        "topn_probs": (ro.topn_probs[rows][mask].double().sum(0) / tok).tolist(),
                        "entropy": float(ro.entropy[rows][mask].double().sum()) / tok}
                rec = problem_record(prob, bench, ro.texts[rows], ro.verdicts[rows], ro.lengths[rows].tolist(),
                                     ro.finish_reason[rows], cand)
                if getattr(args, "explore", None):   # only with --explore: per-token records, bounded
                    from explore import explore_record
                    first = range(q * args.n, q * args.n + min(args.explore_samples, args.n))
                    rec["explore"] = explore_record(prob, ro, first, tokenizer)
                f.write(json.dumps(rec) + "\n")
                done[prob["id"]] = rec
            f.flush()      # each finished problem is on disk before the next batch is sampled
            bar.update(len(group))
    bar.close()
    return [done[p["id"]] for p in problems if p["id"] in done]


PAPER_RESPONSE_TOKENS = 3072   # the paper's response length (training and evaluation)


def training_config(model) -> tuple[dict, Path] | None:
    """The train.py run config of a checkpoint's model folder (OUT/ckpt-STEP/model -> OUT/config.json,
    written beside the checkpoints), or None when --model is not such a folder."""
    f = Path(os.path.expanduser(str(model))).parent.parent / "config.json"
    if Path(os.path.expanduser(str(model))).parent.name.startswith("ckpt-") and f.is_file():
        try:
            cfg = json.loads(f.read_text())
        except json.JSONDecodeError:
            return None
        return (cfg, f) if isinstance(cfg, dict) and "max_response_len" in cfg else None
    return None


def default_max_new_tokens(model, benchmarks) -> tuple[int, str]:
    """--max-new-tokens when not given, with where it comes from: the length the checkpoint was trained to
    answer in (its run's --max-response-len); else the built-in synthetic task's length when every benchmark
    is that task; else the paper's 3072. A tiny model that never stops would otherwise decode 3072 tokens
    per sample (13+ minutes on a CPU instead of about one)."""
    run = training_config(model)
    if run:
        return int(run[0]["max_response_len"]), f"the training run's --max-response-len, {run[1]}"
    if all(str(b) in ("synthetic", "synthetic_train") for b in benchmarks):
        import tiny
        return tiny.SYNTH_RESPONSE_TOKENS, "the length of the built-in synthetic task"
    return PAPER_RESPONSE_TOKENS, "the paper's response length"


def _bench_label(name: str) -> str:
    p = Path(name)
    return p.stem if p.suffix == ".jsonl" else name


def default_out(model) -> Path:
    """runs/eval/NAME. A train.py checkpoint, RUN/ckpt-STEP/model, is named RUN-STEP (runs/tiny-casp/
    ckpt-000030/model -> runs/eval/tiny-casp-000030), so the checkpoints of a run, whose folders are all
    called `model`, never share one; any other model is named by its folder or its name."""
    p = Path(str(model).rstrip("/"))
    step = re.fullmatch(r"ckpt-(\d+)", p.parent.name)
    return Path("runs") / "eval" / (f"{p.parent.parent.name}-{step[1]}" if p.name == "model" and step
                                    and p.parent.parent.name else p.name)


def _check_config(out: Path, args):
    """Write OUT/eval_config.json, or, where OUT already holds samples, refuse when they were drawn with
    other settings (a resumed evaluation must sample as the first part did). A folder without samples
    (an evaluation that failed or stopped before its first problem) never blocks: it is reused."""
    cfg = {k: getattr(args, k) for k in SAMPLING_KEYS}
    f = out / "eval_config.json"
    has_samples = any(p.stat().st_size for p in (out / "samples").glob("*.jsonl"))
    if has_samples:
        try:
            old = json.loads(f.read_text())
        except (OSError, ValueError):
            raise UserError(f"{out} holds samples but no readable eval_config.json (their settings are "
                                 "unknown); use another --out to start fresh") from None
        diff = {k: (old.get(k, SAMPLING_ADDED.get(k)), v) for k, v in cfg.items()
                if old.get(k, SAMPLING_ADDED.get(k)) != v}
        if diff:
            raise UserError(f"{out} holds samples drawn with other settings "
                                 f"({', '.join(f'{k}: {a!r} -> {b!r}' for k, (a, b) in diff.items())}); "
                                 "use another --out to start fresh")
    out.mkdir(parents=True, exist_ok=True)
    write_atomic(f, json.dumps(cfg, indent=2))


SMALL_MODEL_PARAMS = 50e6   # below this, one CPU thread decodes as fast as several (tiny matmuls)


def one_thread_if_small(model, device: str):
    """On the CPU, a small model (the tiny demo model: 0.8M parameters) decodes with one intra-op thread:
    its matmuls are too small to split, and when other processes share the cores, threads that wait for
    each other make decoding many times slower (measured on a 2-core CPU under load: 500 problems x 16
    samples took 41 s with one thread, more than 300 s with two)."""
    import torch
    if str(device).startswith("cpu") and sum(p.numel() for p in model.parameters()) < SMALL_MODEL_PARAMS:
        torch.set_num_threads(1)


def run_eval(args) -> dict:
    import torch

    from model import load_tokenizer, resolve_model_path
    from runtime import lock_run_folder, release_run_folders

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16,
             "auto": torch.bfloat16 if device.startswith("cuda") else torch.float32}[args.dtype]
    out = Path(args.out) if args.out else default_out(args.model)
    # everything is checked before the model loads and before anything is written: the output location,
    # the tokenizer, every benchmark; a failed start leaves no folder behind (the lock's is removed again)
    check_output_folder(out)
    try:
        tokenizer = load_tokenizer(args.tokenizer or resolve_model_path(args.model))
    except (FileNotFoundError, ValueError) as e:
        raise UserError(str(e)) from None
    benchmarks = []
    for name in args.data:
        bench = _bench_label(name)
        problems = data.load_dataset(name, args.data_dir, limit=args.limit)
        problems, skipped = data.encode_prompts(problems, tokenizer, args.max_prompt_tokens,
                                                prompt_format=args.prompt_format)
        if skipped:
            print(f"{bench}: {skipped} prompts longer than --max-prompt-tokens {args.max_prompt_tokens} skipped")
        if not problems:
            print(f"{bench}: no problem left to evaluate")
            continue
        benchmarks.append((bench, problems))
    lock_run_folder(out)   # one evaluation per folder (two would interleave their sample lines)
    try:
        return _evaluate(args, out, tokenizer, benchmarks, device, dtype)
    finally:
        release_run_folders()


def _evaluate(args, out: Path, tokenizer, benchmarks, device, dtype) -> dict:
    from model import load_model

    try:
        model = load_model(args.model, device=device, dtype=dtype)
    except (FileNotFoundError, ValueError) as e:
        raise UserError(str(e)) from None
    model.eval()
    one_thread_if_small(model, device)
    _check_config(out, args)
    (out / "samples").mkdir(parents=True, exist_ok=True)
    print(f"[model] {args.model} on {device} ({dtype}); prompts: {data.prompt_source(tokenizer, args.prompt_format)}; "
          f"answers: {args.answer_mode}")
    records = []
    for bench, problems in benchmarks:
        records += evaluate_benchmark(model, tokenizer, bench, problems, args, out / "samples" / f"{bench}.jsonl")
    table = summarize_run(records, args.k)
    print(format_table(table, args.k))
    subtasks = summarize_subtasks(records, args.k)
    if subtasks:
        print("\nper subtask\n" + format_table(subtasks, args.k))
    (out / "results.json").write_text(json.dumps({"config": vars(args),
                                                  "prompts": data.prompt_source(tokenizer, args.prompt_format),
                                                  "table": table, "subtasks": subtasks}, indent=2))
    png = plot_compare({Path(out).name: table}, out / "passk.png") if args.plot else None
    print(f"[done] {out}: samples/<benchmark>.jsonl (every response, verdict and candidate record), "
          f"results.json (the table)" + (f", {png}" if png else ""))
    if args.explore:
        _explore_page([out], out / "explore.html", args.explore_samples)
    return table


# -----------------------------------------------------------------------------
# CLI


def get_args(argv=None):
    ap = ArgumentParser(description="pass@K, candidate diagnostics, comparisons and plots",
                                 formatter_class=HelpFormatter)
    g = ap.add_argument_group("what to evaluate")
    g.add_argument("--model", help="model name (see model.MODEL_NAMES) or a Hugging Face model folder")
    g.add_argument("--tokenizer", default=None, help="tokenizer folder (default: the model's)")
    g.add_argument("--data", nargs="+", default=["math500"],
                   help="benchmark names (data.DATA_SOURCES, 'synthetic') or .jsonl paths")
    g.add_argument("--data-dir", default=None, help="data folder (default: $CASP_DATA, else ~/.cache/casp/data; "
                   "`python data.py prepare` writes it)")
    g.add_argument("--limit", type=at_least(1), default=None, help="first N problems of each benchmark")
    g.add_argument("--answer-mode", default="lenient", choices=["strict", "lenient"],
                   help="strict: only the last \\boxed{} is the answer (the training reward); lenient: also "
                   "'the answer is ...' and a final-line fallback (as the Qwen2.5-Math and math-verify evaluators)")
    g.add_argument("--prompt-format", default="template", choices=list(data.PROMPT_FORMATS),
                   help="template: the model's chat template; authors: the authors' fixed ChatML text")
    g.add_argument("--authors-eval", action="store_true",
                   help="the pass@K sampling of the evaluation code the authors' repository comes from: "
                   + ", ".join(f"--{k.replace('_', '-')} {v}" for k, v in AUTHORS_EVAL.items())
                   + " (flags given explicitly win)")
    g = ap.add_argument_group("sampling")
    g.add_argument("--n", type=at_least(1), default=64, help="samples per problem (>= the largest K)")
    g.add_argument("--k", type=at_least(1), nargs="+", default=None, help="K values (default: 1, 2, 4, ..., n)")
    g.add_argument("--max-new-tokens", type=at_least(1), default=None,
                   help="tokens per response (default: what fits the model and the task: a train.py "
                   "checkpoint's --max-response-len, else 48 for the built-in synthetic task, else the "
                   f"paper's {PAPER_RESPONSE_TOKENS})")
    g.add_argument("--max-prompt-tokens", type=at_least(1), default=1024, help="longer prompts are skipped and counted")
    g.add_argument("--temperature", type=at_least(0.0, float), default=1.0, help="0: greedy")
    g.add_argument("--top-p", type=between(0, 1, high_open=False), default=1.0, help="nucleus sampling")
    g.add_argument("--top-k", type=at_least(0), default=0, help="0: off")
    g.add_argument("--top-n", type=at_least(1), default=3, help="candidates recorded per token (the paper's N)")
    g.add_argument("--batch-prompts", type=at_least(1), default=None, help="prompts per sampler call "
                   "(default: max(1, max_rows // n))")
    g.add_argument("--max-rows", type=at_least(1), default=512, help="sampled rows per sampler call (KV-cache memory)")
    g.add_argument("--seed", type=int, default=0, help="sampling seed")
    g.add_argument("--dtype", choices=["auto", "float32", "bfloat16"], default="auto",
                   help="auto: bfloat16 on CUDA, float32 on CPU")
    g.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    g.add_argument("--workers", type=at_least(1), default=None, help="verifier processes (default: all cores)")
    g = ap.add_argument_group("output, rescoring, comparison, plots")
    g.add_argument("--out", default=None, help="output folder (default: runs/eval/<model name>; a checkpoint "
                   "RUN/ckpt-STEP/model: runs/eval/RUN-STEP)")
    g.add_argument("--rescore", default=None, metavar="DIR_OR_FILE", help="the table from saved samples, no model")
    g.add_argument("--compare", nargs="+", default=None, metavar="RUN",
                   help="saved sample folders/files: one table and compare.png")
    g.add_argument("--plot-metrics", nargs="+", default=None, metavar="METRICS_JSONL",
                   help="plot training metrics.jsonl files over steps (metrics.png)")
    g.add_argument("--no-plot", dest="plot", action="store_false", help="tables only")
    g.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")
    g = ap.add_argument_group("explore page (explore.py): every token of the responses and its top-N candidates")
    g.add_argument("--explore", nargs="?", const=True, default=None, metavar="RUN",
                   help="with --model: store per-token records and write OUT/explore.html; --explore RUN: the "
                   "page of a saved run (folder or samples file), no model (written beside it, or into --out)")
    g.add_argument("--explore-samples", type=at_least(1), default=None, metavar="K",
                   help="responses per problem whose tokens are stored and shown (default: 8)")
    g.add_argument("--explore-compare", nargs=2, default=None, metavar=("RUN_A", "RUN_B"),
                   help="two saved runs side by side in --out/explore_compare.html (same problems and seeds: "
                   "response j of one beside response j of the other, first difference marked)")
    args = ap.parse_args(argv)
    if args.authors_eval:
        ap.set_defaults(**AUTHORS_EVAL)
        args = ap.parse_args(argv)
    if args.explore_samples is not None and not (args.explore or args.explore_compare):
        ap.error("--explore-samples needs --explore or --explore-compare")
    args.explore_samples = args.explore_samples or 8
    if args.explore is True and not args.model:
        ap.error("--explore alone needs --model (it samples); --explore RUN draws the page of a saved run")
    if isinstance(args.explore, str) and args.model:
        ap.error(f"--explore {args.explore}: with --model give --explore alone (the page goes into --out); "
                 "--explore RUN draws a saved run without a model")
    if args.explore_compare and not args.out:
        ap.error("--explore-compare needs --out DIR (the folder of explore_compare.html)")
    if args.k is not None and (min(args.k) < 1 or (not (args.rescore or args.compare) and max(args.k) > args.n)):
        ap.error(f"every --k must be in [1, --n={args.n}]: pass@k needs at least k samples per problem")
    return args


def _ks_for(args, records) -> list[int]:
    n = min(r["n"] for r in records)
    return sorted(k for k in args.k if k <= n) if args.k else default_ks(n)


def main(argv=None) -> dict:
    """Run the CLI; returns the table ({benchmark: metrics}, or {run: {benchmark: metrics}} for --compare).
    A user's mistake (a path, a file line, a setting) ends in one `error:` line and exit status 2."""
    args = get_args(argv)
    # a full disk, an I/O error, an interrupt (Ctrl-C, SIGTERM): what happened; finished problems are on disk
    saved = "every finished problem is saved: run the same command again to resume"
    with one_line_errors(interrupted=lambda: f"interrupted; {saved}", os_error=lambda e: f"{e}; {saved}"):
        return _main(args)


def _explore_page(runs, path, explore_samples: int) -> Path:
    """explore.py's page of one saved run, or of two side by side, written to `path`."""
    import explore

    data_ = explore.page_data([{"label": explore.run_label(r), "records": load_run(r), "config": explore.run_config(r)}
                               for r in runs], max_responses=explore_samples)
    if not data_["problems"]:
        raise UserError(f"{' and '.join(map(str, runs))}: no problem in common to show")
    path = explore.write_page(path, data_)
    size = path.stat().st_size
    print(f"[explore] {path} ({size / 1e6:.1f} MB, {len(data_['problems'])} problems, {data_['tokens']} tokens "
          f"with their top-{data_['top_n']} candidates): open it in a browser")
    return path


def _main(args) -> dict:
    if args.explore_compare:
        _explore_page(args.explore_compare, Path(args.out) / "explore_compare.html", args.explore_samples)
        return {}
    if isinstance(args.explore, str):
        import explore
        run = Path(args.explore)
        _explore_page([run], Path(args.out or explore.run_folder(run)) / "explore.html", args.explore_samples)
        return {}
    if args.plot_metrics:
        out = check_output_folder(Path(args.out) if args.out else Path(args.plot_metrics[0]).parent)
        p = plot_metrics(args.plot_metrics, out / "metrics.png") if args.plot else None
        if p:
            print(f"wrote {p}")
        if not (args.compare or args.rescore or args.model):
            return {}
    if args.compare:
        check_output_folder(args.out or Path("runs") / "compare")
        runs, labels = {}, set()
        all_records = {r: load_run(r) for r in args.compare}
        ks = _ks_for(args, [x for recs in all_records.values() for x in recs])
        for run, recs in all_records.items():
            label = Path(run).name if Path(run).is_dir() else f"{Path(run).parent.name}/{Path(run).stem}"
            while label in labels:
                label += "'"
            labels.add(label)
            runs[label] = summarize_run(recs, ks)
        benches = sorted({b for t in runs.values() for b in t if b != "average"}) + ["average"]
        for b in benches:
            print(f"\n{b}\n" + format_table({lab: t[b] for lab, t in runs.items() if b in t}, ks))
        out = Path(args.out or Path("runs") / "compare")
        out.mkdir(parents=True, exist_ok=True)
        (out / "compare.json").write_text(json.dumps(runs, indent=2))
        p = plot_compare(runs, out / "compare.png") if args.plot else None
        if p:
            print(f"wrote {p}")
        return runs
    if args.rescore:
        if args.out:
            check_output_folder(args.out)
        records = load_run(args.rescore)
        ks = _ks_for(args, records)
        table = summarize_run(records, ks)
        print(format_table(table, ks))
        subtasks = summarize_subtasks(records, ks)
        if subtasks:
            print("\nper subtask\n" + format_table(subtasks, ks))
        if args.out:
            Path(args.out).mkdir(parents=True, exist_ok=True)
            (Path(args.out) / "results.json").write_text(json.dumps({"rescored": args.rescore, "table": table,
                                                                     "subtasks": subtasks}, indent=2))
        return table
    if not args.model:
        raise UserError("--model is required (or --rescore / --compare / --plot-metrics)")
    args.k = args.k or default_ks(args.n)
    if args.max_new_tokens is None:
        args.max_new_tokens, source = default_max_new_tokens(args.model, args.data)
        print(f"[sampling] --max-new-tokens {args.max_new_tokens} ({source})")
    return run_eval(args)


if __name__ == "__main__":
    main()
