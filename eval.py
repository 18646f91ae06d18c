"""
eval.py: pass@K over the whole K spectrum, candidate diagnostics, comparisons and plots.

    python eval.py --model qwen-1.5b --data math500 aime2024 --n 64 --k 1 2 4 8 16 32 64 --out runs/eval/base
    python eval.py --rescore runs/eval/base                       # the table again, from saved samples only
    python eval.py --compare runs/eval/base runs/eval/casp --out runs/cmp   # one table + compare.png
    python eval.py --plot-metrics runs/grpo/metrics.jsonl runs/casp/metrics.jsonl --out runs/cmp

What it measures (CASP.md, "What the paper measures")
    pass@k     1 - C(n-c, k) / C(n, k) per problem (n samples, c correct), averaged over problems: the
               unbiased estimator of Chen et al. (2021), computed as 1 - prod_{i=n-c+1}^{n} (1 - k/i)
               (no huge binomials; exact to float rounding for n up to 4096 and beyond)
    acc        mean of c/n (= pass@1)
    #ans       distinct final answers per problem (verifier-normalized); #resp: distinct response texts
    len        response length in tokens (stop token included); trunc: fraction that hit --max-new-tokens
    p(1..N)    mean probability of the top-1..N candidates of the temperature-1 next-token distribution,
               over every generated token of every response (token-weighted); H: mean entropy (nats)
A benchmark's row averages its problems; the "average" row averages the benchmarks (macro, as the paper).

Samples are written one line per problem as soon as the problem is verified:
    OUT/samples/<benchmark>.jsonl   {"id", "benchmark", "task", "answer", "n", "n_correct", "rewards",
                                     "extracted", "responses", "lengths", "finish", "cand": {"n_tokens",
                                     "topn_probs", "entropy"}}
so an interrupted run resumes where it stopped (finished problems are never resampled; a torn last line is
dropped) and every table can be recomputed without the model (--rescore). OUT/eval_config.json holds the
sampling settings; resuming with different ones is refused. OUT/results.json holds the table.

Randomness: the sampler draws every row from its own counter-based stream keyed by (seed, prompt, sample
index), so a problem's n samples do not depend on which problems share its batch, and a resumed run
produces the samples an uninterrupted one would have. At most --max-rows rows are decoded at once (the
KV cache's memory); which rows share the decoder does not change any sample.

The paper's theory check on the number of distinct responses is in theory.py.

matplotlib is optional (imported only to draw); without it the tables are printed and no PNG is written.
torch, the model and the sampler are imported only when sampling, so verifier worker processes and
--rescore start fast.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import data
from data import HelpFormatter, at_least, between

# -----------------------------------------------------------------------------
# pass@k


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples with c correct: 1 - C(n-c, k) / C(n, k).

    Product form: C(n-c, k) / C(n, k) = prod_{i=n-c+1}^{n} (1 - k/i), c factors each in [0, 1), so nothing
    overflows and no catastrophic cancellation happens before the final 1 - x.
    """
    for name, v in (("n", n), ("c", c), ("k", k)):
        if isinstance(v, bool) or not isinstance(v, int):
            raise ValueError(f"pass_at_k: {name}={v!r} must be an int")
    if n < 1:
        raise ValueError(f"pass_at_k: n={n} must be >= 1")
    if not 0 <= c <= n:
        raise ValueError(f"pass_at_k: c={c} must be in [0, n={n}]")
    if not 1 <= k <= n:
        raise ValueError(f"pass_at_k: k={k} must be in [1, n={n}] (draw at least k samples per problem)")
    if n - c < k:       # every k-subset holds a correct sample
        return 1.0
    prod = 1.0
    for i in range(n - c + 1, n + 1):
        prod *= 1.0 - k / i
    return 1.0 - prod


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
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
        os.replace(tmp, path)
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
    return {"id": prob["id"], "benchmark": bench, "task": prob.get("task", "math"), "answer": prob["answer"],
            "n": len(responses), "n_correct": int(sum(r > 0.5 for r in rewards)), "rewards": rewards,
            "extracted": [v.extracted for v in verdicts], "responses": responses, "lengths": lengths,
            "finish": finish, "cand": cand}


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
    """pass@K curves (log-scale K) and candidate probability by rank, one line / bar group per run.
    runs: {label: summarize_run(...)}; plots the given benchmark row (default: the average)."""
    plt = _pyplot()
    if plt is None:
        return None
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    width = 0.8 / max(1, len(runs))
    all_ks = set()
    for j, (label, table) in enumerate(runs.items()):
        row = table.get(bench) or next(iter(table.values()))
        ks = sorted(int(key[5:]) for key in row if key.startswith("pass@"))
        all_ks.update(ks)
        ax1.plot(ks, [100 * row[f"pass@{k}"] for k in ks], marker="o", label=label)
        tp = row.get("topn_probs", [])
        ax2.bar([i + 1 + (j - (len(runs) - 1) / 2) * width for i in range(len(tp))], tp, width, label=label)
    ax1.set_xscale("log", base=2)
    ax1.set_xticks(sorted(all_ks), [str(k) for k in sorted(all_ks)])
    ax1.minorticks_off()
    ax1.set(xlabel="K", ylabel="pass@K (%)", title=f"pass@K ({bench})")
    ax2.set(xlabel="candidate rank", ylabel="mean probability", title="candidate probability by rank")
    ax2.set_xticks(range(1, 1 + max((len(t.get(bench, {}).get("topn_probs", [])) for t in runs.values()),
                                    default=0)))
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
        ax.legend()
    return _save(plt, fig, path)


def _save(plt, fig, path) -> Path:
    fig.tight_layout()
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


def plot_metrics(files, path) -> Path | None:
    """A training run's metrics.jsonl over steps: reward, held-out pass@1, candidate probabilities
    (p(1) solid, p(2..N) dashed) and entropy; several runs overlaid (label = the run's folder)."""
    plt = _pyplot()
    if plt is None:
        return None
    fig, axes = plt.subplots(1, 4, figsize=(17, 3.8))
    for f in files:
        rows = [r for r in read_metrics(f) if "step" in r]
        label = Path(f).parent.name or Path(f).stem
        def series(key):
            pts = [(r["step"], r[key]) for r in rows if isinstance(r.get(key), (int, float))]
            return [p[0] for p in pts], [p[1] for p in pts]
        axes[0].plot(*series("reward_mean"), label=label)
        pass_key = next((k for r in rows for k in r if k.endswith("pass@1")), None)
        if pass_key:
            axes[1].plot(*series(pass_key), marker=".", label=f"{label} ({pass_key})")
        tp = [(r["step"], r["topn_probs"]) for r in rows if r.get("topn_probs")]
        for i in range(max((len(p) for _, p in tp), default=0)):
            axes[2].plot([s for s, p in tp if len(p) > i], [p[i] for s, p in tp if len(p) > i],
                         ls="-" if i == 0 else "--", label=f"{label} p({i + 1})")
        axes[3].plot(*series("entropy"), label=label)
    for ax, title in zip(axes, ["reward", "held-out pass@1", "candidate probability", "entropy"]):
        ax.set(xlabel="step", title=title)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    return _save(plt, fig, path)


# -----------------------------------------------------------------------------
# Sampling and verification


SAMPLING_KEYS = ("model", "n", "max_new_tokens", "temperature", "top_p", "top_k", "top_n", "seed",
                 "max_prompt_tokens", "max_rows", "answer_mode")


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
                f.write(json.dumps(rec) + "\n")
                done[prob["id"]] = rec
            f.flush()      # each finished problem is on disk before the next batch is sampled
            bar.update(len(group))
    bar.close()
    return [done[p["id"]] for p in problems if p["id"] in done]


def _bench_label(name: str) -> str:
    p = Path(name)
    return p.stem if p.suffix == ".jsonl" else name


def _check_config(out: Path, args):
    cfg = {k: getattr(args, k) for k in SAMPLING_KEYS}
    f = out / "eval_config.json"
    if f.is_file():
        old = json.loads(f.read_text())
        diff = {k: (old.get(k), v) for k, v in cfg.items() if old.get(k) != v}
        if diff:
            raise data.UserError(f"{out} holds samples drawn with other settings "
                                 f"({', '.join(f'{k}: {a!r} -> {b!r}' for k, (a, b) in diff.items())}); "
                                 "use another --out to start fresh")
    else:
        out.mkdir(parents=True, exist_ok=True)
        f.write_text(json.dumps(cfg, indent=2))


def run_eval(args) -> dict:
    import torch

    from model import load_model, load_tokenizer, resolve_model_path

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16,
             "auto": torch.bfloat16 if device.startswith("cuda") else torch.float32}[args.dtype]
    out = Path(args.out or Path("runs") / "eval" / Path(str(args.model)).name)
    _check_config(out, args)
    (out / "samples").mkdir(parents=True, exist_ok=True)
    try:
        tokenizer = load_tokenizer(args.tokenizer or resolve_model_path(args.model))
        model = load_model(args.model, device=device, dtype=dtype)
    except (FileNotFoundError, ValueError) as e:
        raise data.UserError(str(e)) from None
    model.eval()
    print(f"[model] {args.model} on {device} ({dtype}); prompts: {tokenizer.chat_source}; answers: {args.answer_mode}")
    records = []
    for name in args.data:
        bench = _bench_label(name)
        problems = data.load_dataset(name, args.data_dir, limit=args.limit)
        problems, skipped = data.encode_prompts(problems, tokenizer, args.max_prompt_tokens)
        if skipped:
            print(f"{bench}: {skipped} prompts longer than --max-prompt-tokens {args.max_prompt_tokens} skipped")
        if not problems:
            print(f"{bench}: no problem left to evaluate")
            continue
        records += evaluate_benchmark(model, tokenizer, bench, problems, args, out / "samples" / f"{bench}.jsonl")
    table = summarize_run(records, args.k)
    print(format_table(table, args.k))
    (out / "results.json").write_text(json.dumps({"config": vars(args), "prompts": tokenizer.chat_source,
                                                  "table": table}, indent=2))
    png = plot_compare({Path(out).name: table}, out / "passk.png") if args.plot else None
    print(f"[done] {out}: samples/<benchmark>.jsonl (every response, verdict and candidate record), "
          f"results.json (the table)" + (f", {png}" if png else ""))
    return table


# -----------------------------------------------------------------------------
# CLI


def get_args(argv=None):
    ap = argparse.ArgumentParser(description="pass@K, candidate diagnostics, comparisons and plots",
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
    g = ap.add_argument_group("sampling")
    g.add_argument("--n", type=at_least(1), default=64, help="samples per problem (>= the largest K)")
    g.add_argument("--k", type=at_least(1), nargs="+", default=None, help="K values (default: 1, 2, 4, ..., n)")
    g.add_argument("--max-new-tokens", type=at_least(1), default=3072, help="tokens per response")
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
    g.add_argument("--out", default=None, help="output folder (default: runs/eval/<model name>)")
    g.add_argument("--rescore", default=None, metavar="DIR_OR_FILE", help="the table from saved samples, no model")
    g.add_argument("--compare", nargs="+", default=None, metavar="RUN",
                   help="saved sample folders/files: one table and compare.png")
    g.add_argument("--plot-metrics", nargs="+", default=None, metavar="METRICS_JSONL",
                   help="plot training metrics.jsonl files over steps (metrics.png)")
    g.add_argument("--no-plot", dest="plot", action="store_false", help="tables only")
    g.add_argument("--no-progress", dest="progress", action="store_false")
    args = ap.parse_args(argv)
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
    try:
        return _main(args)
    except data.UserError as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    except KeyboardInterrupt:
        print("\ninterrupted; every finished problem is saved: run the same command again to resume",
              file=sys.stderr)
        raise SystemExit(130) from None


def _main(args) -> dict:
    if args.plot_metrics:
        out = Path(args.out) if args.out else Path(args.plot_metrics[0]).parent
        p = plot_metrics(args.plot_metrics, out / "metrics.png") if args.plot else None
        if p:
            print(f"wrote {p}")
        if not (args.compare or args.rescore or args.model):
            return {}
    if args.compare:
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
        records = load_run(args.rescore)
        ks = _ks_for(args, records)
        table = summarize_run(records, ks)
        print(format_table(table, ks))
        if args.out:
            Path(args.out).mkdir(parents=True, exist_ok=True)
            (Path(args.out) / "results.json").write_text(json.dumps({"rescored": args.rescore, "table": table},
                                                                    indent=2))
        return table
    if not args.model:
        raise data.UserError("--model is required (or --rescore / --compare / --plot-metrics)")
    args.k = args.k or default_ks(args.n)
    return run_eval(args)


if __name__ == "__main__":
    main()
