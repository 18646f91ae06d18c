"""eval.py: the pass@k estimator against enumeration and exact arithmetic, and an end-to-end evaluation of a
tiny model on the synthetic task: rescoring without the model reproduces the table, an interrupted run
resumes without resampling, plots render."""
import itertools
import json
import math
import shutil
import sys
from fractions import Fraction

import pytest
import torch

import data
import eval as ev
from eval import pass_at_k


# -----------------------------------------------------------------------------
# pass@k


pytestmark = pytest.mark.usefixtures("one_thread")


def test_pass_at_k_equals_enumeration_over_all_subsets():
    """For every n <= 10, c, k: the fraction of k-subsets of n samples (c of them correct) that contain a
    correct one. Max abs difference reported by the assert."""
    worst = 0.0
    for n in range(1, 11):
        for c in range(n + 1):
            for k in range(1, n + 1):
                subsets = list(itertools.combinations(range(n), k))
                brute = sum(any(i < c for i in s) for s in subsets) / len(subsets)
                worst = max(worst, abs(pass_at_k(n, c, k) - brute))
    assert worst < 1e-12, worst


def test_pass_at_k_limits_and_monotone_in_k():
    """0 when nothing is correct, 1 when everything is, and non-decreasing in k (up to n = 4096)."""
    for n in (1, 2, 7, 64, 1024, 4096):
        assert all(pass_at_k(n, 0, k) == 0.0 and pass_at_k(n, n, k) == 1.0 for k in (1, n))
        for c in sorted({1, 2, n // 3, n - 1} & set(range(n + 1))):
            vals = [pass_at_k(n, c, k) for k in range(1, n + 1)]
            assert all(b >= a for a, b in zip(vals, vals[1:])), (n, c)
            assert vals[0] == pytest.approx(c / n, abs=1e-12)


def test_pass_at_k_matches_exact_rationals_for_large_n():
    """1 - C(n-c,k)/C(n,k) with Python's exact integers: agreement within 1e-12 (absolute) for n = 1024
    (k = 1024 included) and n = 4096."""
    cases = [(1024, c, 1024) for c in (0, 1, 5, 1024)]
    cases += [(1024, c, k) for c in (1, 3, 50, 500, 1000) for k in (1, 10, 100, 512, 1000, 1023)]
    cases += [(4096, c, k) for c in (1, 7, 300, 4000) for k in (1, 64, 1024, 4000)]
    worst = 0.0
    for n, c, k in cases:
        exact = 1 - Fraction(math.comb(n - c, k), math.comb(n, k))
        worst = max(worst, abs(pass_at_k(n, c, k) - float(exact)))
    assert worst < 1e-12, worst


def test_pass_at_k_rejects_invalid_arguments():
    for args in [(4, 1, 5), (4, 1, 0), (4, 5, 1), (4, -1, 1), (0, 0, 1), (4.0, 1, 1), (4, 1, True)]:
        with pytest.raises(ValueError):
            pass_at_k(*args)


# -----------------------------------------------------------------------------
# End to end on the tiny model


def eval_args(tiny_dir, out, *extra):
    return ["--model", str(tiny_dir), "--data", "synthetic", "--limit", "4", "--n", "8", "--k", "1", "2", "4", "8",
            "--max-new-tokens", "40", "--out", str(out), "--workers", "1", "--no-progress", "--no-plot",
            "--batch-prompts", "2", *extra]


def test_end_to_end_eval_and_rescore_reproduce_the_table(tiny_dir, tmp_path):
    """The CLI samples 8 answers to 4 synthetic problems, verifies them, saves one record per problem, and
    the table recomputed from the saved samples alone (--rescore) is identical."""
    table = ev.main(eval_args(tiny_dir, tmp_path / "run"))
    recs = ev.read_samples(tmp_path / "run" / "samples" / "synthetic.jsonl")
    assert [r["id"] for r in recs] == [p["id"] for p in data.load_dataset("synthetic", limit=4)]
    assert all(r["n"] == 8 and len(r["responses"]) == len(r["rewards"]) == len(r["lengths"]) == 8 for r in recs)
    row = table["synthetic"]
    assert row["problems"] == 4 and 0 < row["acc"] < 1      # the fitted model is sometimes right
    assert row["pass@1"] == pytest.approx(row["acc"]) and row["pass@8"] >= row["pass@4"] >= row["pass@1"]
    assert len(row["topn_probs"]) == 3 and row["topn_probs"][0] >= row["topn_probs"][1] > 0
    assert row["distinct_responses"] >= row["distinct_answers"] >= 1
    assert ev.main(["--rescore", str(tmp_path / "run")]) == table
    assert json.loads((tmp_path / "run" / "results.json").read_text())["table"] == table


def test_interrupted_eval_resumes_without_resampling(tiny_dir, tmp_path, monkeypatch, capsys):
    """Kill simulation: keep 2 finished records plus a torn half line. The rerun samples only the 2
    missing problems, and its samples equal the uninterrupted run's. Other sampling settings are refused."""
    import rollout

    full = tmp_path / "full"
    ev.main(eval_args(tiny_dir, full))
    run = tmp_path / "cut"
    shutil.copytree(full, run)
    f = run / "samples" / "synthetic.jsonl"
    lines = f.read_text().splitlines(keepends=True)
    f.write_text(lines[0] + lines[1] + lines[2][: len(lines[2]) // 2])
    sampled, real = [], rollout.generate
    monkeypatch.setattr(rollout, "generate", lambda model, prompts, **kw: sampled.append(len(prompts)) or
                        real(model, prompts, **kw))
    table = ev.main(eval_args(tiny_dir, run))
    assert sum(sampled) == 2
    assert ev.read_samples(f) == ev.read_samples(full / "samples" / "synthetic.jsonl")
    assert table == ev.main(["--rescore", str(full)])
    sampled.clear()
    ev.main(eval_args(tiny_dir, run))       # everything done: nothing sampled
    assert sampled == []
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:     # other sampling settings: refused, one error line, status 2
        ev.main(eval_args(tiny_dir, run, "--temperature", "0.7"))
    assert e.value.code == 2 and "temperature: 1.0 -> 0.7" in capsys.readouterr().err


def test_compare_and_plots_render_png(tiny_dir, tmp_path):
    """--compare of two runs gives one table per benchmark and compare.png; --plot-metrics draws a
    metrics.jsonl (with held-out pass@1 on some steps) to metrics.png."""
    pytest.importorskip("matplotlib")
    ev.main(eval_args(tiny_dir, tmp_path / "a"))
    ev.main(eval_args(tiny_dir, tmp_path / "b", "--seed", "1"))
    runs = ev.main(["--compare", str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(tmp_path / "cmp")])
    assert set(runs) == {"a", "b"} and set(runs["a"]) == {"synthetic", "average"}
    png = (tmp_path / "cmp" / "compare.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    metrics = tmp_path / "train" / "metrics.jsonl"
    metrics.parent.mkdir()
    metrics.write_text("".join(json.dumps({"step": s, "reward_mean": 0.1 * s, "entropy": 1 / (s + 1),
                                           "topn_probs": [0.7 + 0.02 * s, 0.2, 0.05],
                                           **({"heldout_pass@1": 0.05 * s} if s % 2 == 0 else {})}) + "\n"
                               for s in range(6)))
    ev.main(["--plot-metrics", str(metrics), "--out", str(tmp_path / "cmp")])
    assert (tmp_path / "cmp" / "metrics.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert ev.plot_compare(runs, tmp_path / "one.png", bench="synthetic").is_file()


def captured_figures(monkeypatch) -> list:
    """Every figure eval.py saves after this call, as [(panel title, y limits, lines, bar heights)] per figure."""
    figs, real = [], ev._save
    def grab(plt, fig, path):
        figs.append([(ax.get_title(), ax.get_ylim(), [list(line.get_ydata()) for line in ax.get_lines()],
                      [p.get_height() for p in ax.patches]) for ax in fig.axes])
        return real(plt, fig, path)
    monkeypatch.setattr(ev, "_save", grab)
    return figs


def test_figures_show_what_moves_on_honest_scales(tmp_path, monkeypatch):
    """metrics.png: no held-out panel when no run measured it; p(1..3) at the gated tokens (what CaSP acts on)
    beside the all-token p(1..3), both on 0..1, values as logged; a step that logged null is skipped.
    passk.png with every pass@K 0: the y axis is 0..10%, not a band of +-0.04% around 0. compare.png of two
    runs: a third panel with the second run's p(k) minus the first's, in points."""
    pytest.importorskip("matplotlib")
    figs = captured_figures(monkeypatch)
    metrics = tmp_path / "demo" / "metrics.jsonl"
    metrics.parent.mkdir()
    rows = [{"step": s, "reward_mean": 0.3, "entropy": 0.4, "topn_probs": [0.84, 0.07, 0.04],
             **{f"gated_top{k}_prob": 0.4 - 0.1 * k + 0.01 * s for k in (1, 2, 3)}} for s in range(1, 5)]
    rows[2] = {"step": 3, "reward_mean": 0.0, "grad_norm": None}          # no mixed group: no loss metrics
    metrics.write_text("".join(json.dumps(r) + "\n" for r in rows))
    ev.plot_metrics([metrics], tmp_path / "m.png")
    panels = {title: (ylim, lines) for title, ylim, lines, _ in figs[-1]}
    assert list(panels) == ["reward", "p(1..N), all tokens", "p(1..N), gated tokens", "entropy"]
    ylim, lines = panels["p(1..N), gated tokens"]
    assert ylim == (0, 1) and panels["p(1..N), all tokens"][0] == (0, 1)
    assert lines[0] == [r["gated_top1_prob"] for r in rows if "gated_top1_prob" in r]
    (metrics.parent / "held.jsonl").write_text(json.dumps({**rows[0], "heldout_pass@1": 0.3}) + "\n")
    ev.plot_metrics([metrics, metrics.parent / "held.jsonl"], tmp_path / "m.png")
    assert "held-out pass@1" in [title for title, *_ in figs[-1]]

    zero = {"problems": 4, "n": 8, "pass@1": 0.0, "pass@8": 0.0, "topn_probs": [0.9, 0.06, 0.02]}
    ev.plot_compare({"zeros": {"b": zero, "average": zero}}, tmp_path / "passk.png")
    assert figs[-1][0][1] == (0, 10) and len(figs[-1]) == 2
    other = dict(zero, topn_probs=[0.88, 0.07, 0.03])
    ev.plot_compare({"a": {"average": zero}, "b": {"average": other}}, tmp_path / "compare.png")
    title, _, _, bars = figs[-1][2]
    assert title == "p(k) minus a's" and bars == pytest.approx([-2.0, 1.0, 1.0])


def test_tables_only_without_matplotlib(tmp_path, monkeypatch):
    """With matplotlib missing the plot functions write nothing and return None; the table still prints."""
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    rec = {"id": "p", "benchmark": "b", "n": 2, "n_correct": 1, "rewards": [1.0, 0.0], "extracted": ["1", "2"],
           "responses": ["x", "y"], "lengths": [3, 5], "finish": ["stop", "length"],
           "cand": {"n_tokens": 8, "topn_probs": [0.5, 0.3, 0.1], "entropy": 1.0}}
    table = ev.summarize_run([rec], [1, 2])
    assert table["b"]["pass@2"] == 1.0 and table["b"]["truncated"] == 0.5 and table["b"]["response_len"] == 4
    assert "| b | 1 | 2 | 50.0 | 100.0 |" in ev.format_table(table, [1, 2])
    assert ev.plot_compare({"r": table}, tmp_path / "x.png") is None and not (tmp_path / "x.png").exists()


def test_sample_file_repair_and_malformed_lines(tmp_path):
    """A torn last line is dropped (and removed with repair=True), a complete last line without its
    newline gets one (so the next append starts a fresh line); a bad line elsewhere names file and line."""
    f = tmp_path / "s.jsonl"
    f.write_text('{"id": 1}\n{"id": 2')
    assert ev.read_samples(f) == [{"id": 1}] and f.read_text().endswith("2")
    assert ev.read_samples(f, repair=True) == [{"id": 1}] and f.read_text() == '{"id": 1}\n'
    f.write_text('{"id": 1}\n{"id": 2}')
    assert ev.read_samples(f, repair=True) == [{"id": 1}, {"id": 2}] and f.read_text().endswith("}\n")
    f.write_text('{"id": 1}\nnot json\n{"id": 2}\n')
    with pytest.raises(ValueError, match=r"s\.jsonl:2: malformed"):
        ev.read_samples(f)


# -----------------------------------------------------------------------------
# The response length fits the model


def test_max_new_tokens_default_fits_the_model_and_the_task(tiny_dir, tmp_path, capsys):
    """Without --max-new-tokens: a train.py checkpoint (OUT/ckpt-STEP/model) is evaluated at its run's
    --max-response-len (OUT/config.json), which the printed line names, and no response is longer; the
    built-in synthetic task on another model gets the task's 48; anything else the paper's 3072. The
    demo's closing `evaluate:` command runs as printed (here on 2 problems) with that length."""
    import shlex

    import tiny
    import train
    run = tmp_path / "runs" / "tiny-casp"
    shutil.copytree(tiny_dir, run / "ckpt-000030" / "model")
    config = vars(train.get_args(["--max-response-len", "12"]))
    (run / "config.json").write_text(json.dumps(config))
    command = train.eval_command(vars(train.get_args([])), run / "ckpt-000030")
    assert command == f"python eval.py --model {run / 'ckpt-000030' / 'model'} --data synthetic --n 16"
    args = shlex.split(command)[2:] + ["--limit", "2", "--out", str(tmp_path / "e"), "--workers", "1", "--no-plot"]
    ev.main(args)
    out = capsys.readouterr().out
    assert f"[sampling] --max-new-tokens 12 (the training run's --max-response-len, {run / 'config.json'})" in out
    recs = ev.read_samples(tmp_path / "e" / "samples" / "synthetic.jsonl")
    assert len(recs) == 2 and max(n for r in recs for n in r["lengths"]) <= 12
    assert json.loads((tmp_path / "e" / "eval_config.json").read_text())["max_new_tokens"] == 12
    assert ev.default_max_new_tokens(tiny_dir, ["synthetic"])[0] == tiny.SYNTH_RESPONSE_TOKENS == 48
    assert ev.default_max_new_tokens(tiny_dir, ["synthetic", "math500"])[0] == 3072
    assert ev.default_max_new_tokens("qwen-1.5b", ["math500"])[0] == 3072


def test_small_models_decode_with_one_cpu_thread(tiny_dir):
    """The tiny model on the CPU decodes with one intra-op thread (several make it many times slower when
    other processes share the cores); a real-size model (Qwen2.5-0.5B's shape, built on the meta device)
    and any model on CUDA keep the threads they have."""
    import torch

    from model import MODEL_NAMES, Transformer, load_model
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        with torch.device("meta"):
            big = Transformer(MODEL_NAMES["qwen-0.5b"][1])
        ev.one_thread_if_small(big, "cpu")
        ev.one_thread_if_small(load_model(tiny_dir), "cuda")
        assert torch.get_num_threads() == 2
        ev.one_thread_if_small(load_model(tiny_dir), "cpu")
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
# The table's definitions against direct computations


def test_summary_weights_tokens_and_responses_and_averages_benchmarks_macro():
    """summarize's definitions on hand-made records of different sizes, each computed here directly:
    p(1..N) and H are means over every token (a problem with 3x the tokens weighs 3x, not a mean of
    per-problem means), len and trunc means over every response, acc the mean of c/n over problems,
    #ans the distinct verifier-normalised answers per problem (\\dfrac{1}{2} = \\frac{1}{2}, $5$ = 5,
    10,455 = 10455), #resp the distinct texts; the "average" row is the mean of the benchmarks' rows."""
    a = {"id": "a", "benchmark": "b1", "n": 2, "n_correct": 1, "rewards": [1.0, 0.0], "responses": ["x", "x"],
         "extracted": ["\\dfrac{1}{2}", "\\frac{1}{2}"], "lengths": [2, 4], "finish": ["stop", "length"],
         "cand": {"n_tokens": 10, "topn_probs": [0.5, 0.2], "entropy": 1.0}}
    b = {"id": "b", "benchmark": "b1", "n": 4, "n_correct": 1, "rewards": [1.0, 0, 0, 0], "responses": list("wxyz"),
         "extracted": ["$5$", "5", "10,455", None], "lengths": [10] * 4, "finish": ["stop"] * 4,
         "cand": {"n_tokens": 30, "topn_probs": [0.9, 0.05], "entropy": 3.0}}
    c = {"id": "c", "benchmark": "b2", "n": 2, "n_correct": 2, "rewards": [1.0, 1.0], "responses": ["u", "v"],
         "extracted": ["10455", "10455"], "lengths": [1, 1], "finish": ["stop"] * 2,
         "cand": {"n_tokens": 2, "topn_probs": [0.7, 0.1], "entropy": 0.5}}
    t = ev.summarize_run([a, b, c], [1, 2])
    b1 = t["b1"]
    assert b1["entropy"] == pytest.approx((1.0 * 10 + 3.0 * 30) / 40)
    assert b1["topn_probs"] == pytest.approx([(0.5 * 10 + 0.9 * 30) / 40, (0.2 * 10 + 0.05 * 30) / 40])
    assert b1["response_len"] == pytest.approx((2 + 4 + 40) / 6) and b1["truncated"] == pytest.approx(1 / 6)
    assert b1["acc"] == pytest.approx((1 / 2 + 1 / 4) / 2) and b1["pass@1"] == pytest.approx(b1["acc"])
    assert b1["pass@2"] == pytest.approx((1.0 + (1 - 3 / 6)) / 2)
    assert b1["distinct_answers"] == pytest.approx((1 + 2) / 2) and b1["distinct_responses"] == pytest.approx(2.5)
    assert (b1["problems"], b1["n"]) == (2, 2)
    avg = t["average"]
    assert avg["problems"] == 3 and avg["acc"] == pytest.approx((b1["acc"] + 1.0) / 2)
    assert avg["entropy"] == pytest.approx((b1["entropy"] + 0.5) / 2)
    assert avg["topn_probs"] == pytest.approx([(x + y) / 2 for x, y in zip(b1["topn_probs"], [0.7, 0.1])])


def test_saved_candidate_records_and_table_equal_the_sampler_tokens(tiny_dir, tmp_path, monkeypatch):
    """End to end: each saved record's cand (n_tokens, mean p(1..3), mean H) and the table's p(1..3) and H
    equal the sampler's per-token records of the same rollout, averaged over tokens here: over the
    problem's responses for a record, over all the benchmark's tokens for the table."""
    import rollout
    seen, real = [], rollout.rollout
    monkeypatch.setattr(rollout, "rollout", lambda *a, **k: seen.append(real(*a, **k)) or seen[-1])
    table = ev.main(eval_args(tiny_dir, tmp_path / "run"))
    recs = ev.read_samples(tmp_path / "run" / "samples" / "synthetic.jsonl")
    H, P, per_problem = [], [], []
    for ro in seen:
        for q in range(ro.mask.shape[0] // 8):
            rows = slice(8 * q, 8 * q + 8)
            mask = ro.mask[rows]
            per_problem.append((int(mask.sum()), ro.entropy[rows][mask].double(), ro.topn_probs[rows][mask].double()))
            H.append(per_problem[-1][1])
            P.append(per_problem[-1][2])
    assert len(per_problem) == len(recs) == 4 and len({n for n, _, _ in per_problem}) > 1
    for rec, (n, h, p) in zip(recs, per_problem):
        assert rec["cand"]["n_tokens"] == n
        assert rec["cand"]["entropy"] == pytest.approx(h.mean().item(), rel=1e-9)
        assert rec["cand"]["topn_probs"] == pytest.approx(p.mean(0).tolist(), rel=1e-9)
    row = table["synthetic"]
    assert row["entropy"] == pytest.approx(torch.cat(H).mean().item(), rel=1e-9)
    assert row["topn_probs"] == pytest.approx(torch.cat(P).mean(0).tolist(), rel=1e-9)


def test_default_ks_are_powers_of_two_then_n():
    """Without --k: K = 1, 2, 4, ... up to n, and n itself when it is not a power of two."""
    assert ev.default_ks(1) == [1] and ev.default_ks(8) == [1, 2, 4, 8]
    assert ev.default_ks(6) == [1, 2, 4, 6] and ev.default_ks(100) == [1, 2, 4, 8, 16, 32, 64, 100]
