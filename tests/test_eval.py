"""eval.py: the pass@k estimator against enumeration and exact arithmetic, the distinct-response theory
(exact vs Monte Carlo, on a tree and on a model through the sampler), and an end-to-end evaluation of a
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
import torch.nn.functional as F

import data
import eval as ev
from eval import pass_at_k
from model import ModelConfig, Transformer


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny matmuls: one intra-op thread is faster, and 35x faster when the cores are shared (2 threads
    spin-wait against other processes)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


# -----------------------------------------------------------------------------
# pass@k


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
# The distinct-response theory


TREE = [("a", 0.6, [("x", 0.9, []), ("y", 0.1, [])]),
        ("b", 0.3, []),
        ("c", 0.1, [("z", 1.0, [])])]


def test_expected_distinct_exact_on_a_hand_tree():
    """pi = {ax: .54, ay: .06, b: .3, cz: .1}; E[#distinct] = sum 1-(1-pi)^K by hand; the bound holds."""
    probs = ev.response_probs(TREE)
    assert probs == pytest.approx({("a", "x"): 0.54, ("a", "y"): 0.06, ("b",): 0.3, ("c", "z"): 0.1})
    for K in (1, 2, 5, 50):
        hand = sum(1 - (1 - p) ** K for p in (0.54, 0.06, 0.3, 0.1))
        assert ev.expected_distinct(TREE, K) == pytest.approx(hand, abs=1e-12)
        assert ev.expected_distinct(TREE, K) <= ev.distinct_upper_bound(TREE, K) + 1e-12
    assert ev.greedy_response(TREE) == (("a", "x"), pytest.approx(0.54))
    with pytest.raises(ValueError, match="summing"):
        ev.response_probs([("a", 0.5, [])])


def test_monte_carlo_on_the_tree_agrees_with_exact():
    """MC mean over 4000 trials within 4 standard errors of the exact value (false failure ~6e-5 each)."""
    for K in (2, 8):
        exact = ev.expected_distinct(TREE, K)
        mean, se = ev.mc_distinct_tree(TREE, K, trials=4000, seed=K)
        assert abs(mean - exact) < 4 * se, (K, mean, exact, se)
    tree = ev.peaked_tree(depth=3, branching=3, top1=0.7)
    mean, se = ev.mc_distinct_tree(tree, 16, trials=2000, seed=1)
    assert abs(mean - ev.expected_distinct(tree, 16)) < 4 * se


def test_distinct_responses_tend_to_one_as_top1_tends_to_one():
    """On a depth-8, 4-way tree with every per-step top-1 probability q: E[#distinct among K=64] falls
    toward 1 as q -> 1, stays under 1 + K(1 - q^8), and is within 1e-3 of 1 at q = 1 - 1e-7."""
    K, prev = 64, math.inf
    for q in (0.5, 0.9, 0.99, 0.999, 0.9999, 1 - 1e-7):
        tree = ev.peaked_tree(depth=8, branching=4, top1=q)
        e = ev.expected_distinct(tree, K)
        bound = ev.distinct_upper_bound(tree, K)
        assert bound == pytest.approx(1 + K * (1 - q ** 8))
        assert 1 - 1e-12 <= e <= bound + 1e-9 and e < prev
        prev = e
    assert prev - 1 < 1e-3
    assert ev.expected_distinct(ev.peaked_tree(8, 4, 0.5), K) > 50   # a flat policy: almost all distinct


def test_monte_carlo_through_the_sampler_agrees_with_exact_model_probabilities():
    """A random 2-layer model with a 5-token vocabulary and 2 new tokens: pi(y1 y2) computed exactly from
    its forward pass over all 25 responses; the sampler's Monte Carlo count (600 trials of K = 4) lies
    within 4 standard errors."""
    import sampler  # noqa: F401  (the model path needs it)
    cfg = ModelConfig(vocab_size=5, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    model = Transformer(cfg)
    model.init_weights(std=0.6, generator=torch.Generator().manual_seed(3))
    model.eval()
    prompt = [1, 2, 3]
    with torch.no_grad():
        seqs = torch.tensor([prompt + [a] for a in range(5)])                           # (5, 4)
        logp = F.log_softmax(model(seqs).float(), -1)                                   # (5, 4, 5)
    probs = {(a, b): math.exp(logp[0, 2, a] + logp[a, 3, b]) for a in range(5) for b in range(5)}
    assert sum(probs.values()) == pytest.approx(1.0, abs=1e-5)
    K = 4
    exact = ev.expected_distinct(probs, K)
    mean, se = ev.mc_distinct_model(model, prompt, K, trials=600, max_new_tokens=2, seed=0)
    assert abs(mean - exact) < 4 * se, (mean, exact, se)
    assert 1.2 < exact < 3.9            # neither collapsed nor uniform: the check can fail


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


def test_interrupted_eval_resumes_without_resampling(tiny_dir, tmp_path, monkeypatch):
    """Kill simulation: keep 2 finished records plus a torn half line. The rerun samples only the 2
    missing problems, and its samples equal the uninterrupted run's. Other sampling settings are refused."""
    import sampler

    full = tmp_path / "full"
    ev.main(eval_args(tiny_dir, full))
    run = tmp_path / "cut"
    shutil.copytree(full, run)
    f = run / "samples" / "synthetic.jsonl"
    lines = f.read_text().splitlines(keepends=True)
    f.write_text(lines[0] + lines[1] + lines[2][: len(lines[2]) // 2])
    sampled, real = [], sampler.generate
    monkeypatch.setattr(sampler, "generate", lambda model, prompts, **kw: sampled.append(len(prompts)) or
                        real(model, prompts, **kw))
    table = ev.main(eval_args(tiny_dir, run))
    assert sum(sampled) == 2
    assert ev.read_samples(f) == ev.read_samples(full / "samples" / "synthetic.jsonl")
    assert table == ev.main(["--rescore", str(full)])
    sampled.clear()
    ev.main(eval_args(tiny_dir, run))       # everything done: nothing sampled
    assert sampled == []
    with pytest.raises(SystemExit, match="temperature"):
        ev.main(eval_args(tiny_dir, run, "--temperature", "0.7"))


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
