"""experiments/miniature.py's token-tree experiment: exact pass@K equals Monte Carlo sampling of the same
policy, one training step reproduces the loss's closed-form update (the gradient tests/test_casp.py
derives, summed per tree node, then AdamW's first step), stacking seeds equals running them one by one,
and the CLI writes the documented tree.json in seconds. The lm part's own statistics are tested at the
end (its entropy gate is casp.entropy_gate, tested in tests/test_casp.py)."""
import json
import math

import pytest
import torch

import casp
from cli import UserError
from experiments import miniature as mn
from experiments import theory

F64 = torch.float64


def small_cfg(**kw):
    base = dict(depth=5, branching=4, forks=(0, 2), problems=4, shared_problems=5, features=3, seeds=3,
                steps=3, workers=1, dtype="float64")
    base.update(kw)
    return mn.TreeConfig(**base)


def test_tree_shape_and_exact_leaf_probabilities():
    """Node counts follow the fork structure, and the full-length answers plus the derailed responses
    (a non-0 id at a non-fork depth) carry probability 1 in total: by hand, in tree_exact and in
    theory.response_probs."""
    shape = theory.TreeShape(5, 4, (0, 2))
    assert shape.width == [1, 4, 4, 16, 16] and shape.n_nodes == 41 and shape.n_leaves == 16
    with pytest.raises(ValueError):
        theory.TreeShape(3, 4, (3,))
    cfg = small_cfg()
    inst = mn.tree_instances(shape, cfg, "table")
    z = inst["init"]
    ex = mn.tree_exact(shape, z, inst["correct"])
    p = torch.softmax(z, -1)
    derail = torch.zeros(ex["leaf"].shape[:2], dtype=F64)
    # derailing at depth 1 (after fork 0): node index = the fork-0 id; at depth 3, 4: index = (id0, id2)
    reach1 = p[:, :, 0]                                                               # (S, P, 4)
    derail += (reach1 * (1 - p[:, :, 1:5, 0])).sum(-1)
    reach3 = (reach1 * p[:, :, 1:5, 0])[..., None] * p[:, :, 5:9]                     # (S, P, 4, 4)
    reach3 = reach3.reshape(*reach3.shape[:2], 16)
    derail += (reach3 * (1 - p[:, :, 9:25, 0])).sum(-1)
    reach4 = reach3 * p[:, :, 9:25, 0]
    derail += (reach4 * (1 - p[:, :, 25:41, 0])).sum(-1)
    assert torch.allclose(ex["leaf"], reach4 * p[:, :, 25:41, 0], atol=1e-15)
    assert torch.allclose(ex["leaf"].sum(-1) + derail, torch.ones_like(derail), atol=1e-12)
    pi = theory.response_probs(shape, z)                      # the responses that end early come after the leaves
    assert torch.equal(pi[..., :shape.n_leaves], ex["leaf"]) and pi.shape[-1] == 16 + (4 + 16 + 16) * 3
    assert torch.allclose(pi[..., shape.n_leaves:].sum(-1), derail, atol=1e-15)
    assert inst["correct"].sum(-1).min() >= 1


@pytest.mark.parametrize("policy", ["table", "shared"])
def test_exact_passk_equals_monte_carlo(policy):
    """pass@K = mean over problems of 1 - (1 - p_correct)^K, exactly, equals the fraction of K-sample
    draws (the training sampler, tree_sample) holding a correct answer, within 4 standard errors of the
    Monte Carlo mean (the SE from the exact per-problem variances); so do the answer frequencies."""
    cfg = small_cfg()
    shape = theory.TreeShape(cfg.depth, cfg.branching, cfg.forks)
    inst = mn.tree_instances(shape, cfg, policy)
    z = mn.TreePolicy(inst, F64).logits().detach()                                    # (S, P, Nn, V)
    S, P = z.shape[:2]
    ex = mn.tree_exact(shape, z, inst["correct"])
    pc = ex["p_correct"]                                                              # (S, P)
    assert (pc > 0.02).any() and (pc < 0.98).all()
    g = torch.Generator().manual_seed(0)
    n = 4096
    u = torch.rand(S, P, n, cfg.depth, generator=g, dtype=F64)
    tokens, mask, nodes, logp, leaf, finished = theory.tree_sample(shape, z, u)
    hit = finished & inst["correct"].gather(2, leaf)                                  # (S, P, n)
    for K in (1, 4, 16):
        trials = hit.reshape(S, P, n // K, K).any(-1).double()                        # (S, P, T)
        mc = trials.mean((1, 2))                                                      # (S,)
        p_k = 1 - (1 - pc) ** K                                                       # (S, P)
        se = (p_k * (1 - p_k)).sum(1).sqrt() / (P * math.sqrt(n // K))                # (S,)
        assert torch.allclose(ex["passk"][:, K - 1], p_k.mean(1), atol=1e-12)
        assert ((mc - ex["passk"][:, K - 1]).abs() <= 4 * se + 1e-12).all(), (K, mc, ex["passk"][:, K - 1], se)
    # frequencies of each full-length answer, and the recorded log-probs are the policy's
    counts = torch.zeros(S, P, shape.n_leaves, dtype=F64).scatter_add_(2, leaf, finished.double())
    q = ex["leaf"]
    se = (q * (1 - q) / n).sqrt()
    assert ((counts / n - q).abs() <= 5 * se + 1e-9).all()
    lp = torch.log_softmax(z, -1).reshape(-1, cfg.branching)
    flat = ((torch.arange(S)[:, None] * P + torch.arange(P)) * shape.n_nodes)[..., None, None] + nodes
    want = lp[flat].gather(-1, tokens[..., None]).squeeze(-1)
    assert torch.allclose(logp[mask], want[mask], atol=1e-12)


def closed_form_table_grad(shape, z, tr, alpha, neg_scale, q, top_n=3):
    """The closed form of tests/test_casp.py (dL/dz_t = -A rho (q_t - p_t) / n for positive responses,
    -lambda A rho (e_y - p) / n for negative ones, lambda only at gated argmax tokens), with rho = 1 (the
    first mini-batch: pi_theta = pi_old), summed into the table's node logits; A from the hand formula."""
    S, P, G, D = tr["tokens"].shape
    V = z.shape[-1]
    grad = torch.zeros_like(z)
    for s in range(S):
        n_tok = int(tr["mask"][s].sum())
        for i, prob in enumerate(tr["chunk"].tolist()):
            r = tr["rewards"][s, i]
            mean, std = r.mean(), r.std()
            adv = torch.zeros(G, dtype=F64) if bool((r == r[0]).all()) else (r - mean) / (std + 1e-6)
            for j in range(G):
                A = adv[j].item()
                m = tr["mask"][s, i, j]
                nodes, ys = tr["nodes"][s, i, j][m].tolist(), tr["tokens"][s, i, j][m].tolist()
                ps = [torch.softmax(z[s, prob, nd], -1) for nd in nodes]
                H = torch.stack([-(p * p.log()).sum() for p in ps])
                thr = torch.quantile(H, q).item() if q is not None else None
                for t, (nd, y, p) in enumerate(zip(nodes, ys, ps)):
                    if A == 0:
                        continue
                    w = 1.0 if thr is None else float(H[t].item() > thr)
                    top = torch.topk(p, min(top_n, V)).indices.tolist()
                    e_y = torch.zeros(V, dtype=F64)
                    e_y[y] = 1.0
                    if A > 0:
                        qv = (1 - alpha * w) * e_y
                        for c in top:
                            qv[c] += alpha * w / len(top)
                        grad[s, prob, nd] += -A * (qv - p) / n_tok
                    else:
                        lam = neg_scale if (y == top[0] and w == 1.0) else 1.0
                        grad[s, prob, nd] += -lam * A * (e_y - p) / n_tok
    return grad


@pytest.mark.parametrize("method", [
    {"loss": "grpo"},
    {"loss": "casp", "alpha": 0.3, "neg_scale": 1.5, "entropy_quantile": 0.8, "top_n": 3},   # exaggerated
    {"loss": "casp", "alpha": 0.01, "neg_scale": 1.1, "entropy_quantile": 0.8, "top_n": 3},  # the paper's
    {"loss": "casp", "alpha": 0.3, "neg_scale": 1.5, "entropy_quantile": None, "top_n": 3},  # gate off
])
def test_one_correct_answer_single_step_is_the_closed_form_update(method):
    """A tree whose problems have exactly one correct answer: one RL step (one mini-batch, so rho = 1)
    through casp.grpo_loss / casp.casp_loss gives, per seed and node, the closed-form gradient of the
    loss, and the parameters move by AdamW's closed-form first step
    theta - lr wd theta - lr g / (|g| + eps) (after the per-seed norm clip, here inactive).
    Positive answers all follow the correct answer's path, so GRPO raises its ids' logits."""
    cfg = small_cfg(n_correct=(1,), mini_batches=1, seeds=2, problems=6, top1_wrong=0.0, correct_power=2.0)
    shape = theory.TreeShape(cfg.depth, cfg.branching, cfg.forks)
    inst = mn.tree_instances(shape, cfg, "table")
    assert (inst["correct"].sum(-1) == 1).all()
    policy = mn.TreePolicy(inst, F64)
    opt = mn.make_opt(policy, cfg)
    trace = []
    mn.tree_rl_step(shape, policy, opt, inst["correct"], method, cfg, torch.Generator().manual_seed(3), trace)
    (tr,) = trace
    r = tr["rewards"]
    mixed = (r.amax(-1) != r.amin(-1))
    assert mixed.sum() >= 3, "the test needs groups with both correct and wrong answers"
    z0 = tr["param_before"]
    alpha = method.get("alpha", 0.0)
    lam = method.get("neg_scale", 1.0)
    q = method.get("entropy_quantile") if method["loss"] == "casp" else None
    want = closed_form_table_grad(shape, z0, tr, alpha, lam, q)
    assert tr["grad_norm"].max() < cfg.grad_clip       # the clip is inactive: the gradient is the raw one
    assert (tr["grad"] - want).abs().max().item() < 1e-12
    g = want
    step = z0 * (1 - cfg.lr * cfg.weight_decay) - cfg.lr * g / (g.abs() + 1e-8)
    assert (policy.param.detach() - step).abs().max().item() < 1e-10   # g / |g| amplifies rounding of tiny g
    if method["loss"] == "grpo":   # the correct answer's path: every id on it went up where its group was mixed
        s, i = torch.nonzero(mixed)[0].tolist()
        prob = tr["chunk"][i].item()
        leaf = int(inst["correct"][s, prob].nonzero())
        ids = [(leaf // cfg.branching ** (len(cfg.forks) - 1 - k)) % cfg.branching for k in range(len(cfg.forks))]
        if bool((r[s, i] > 0).any()):
            for d, a in zip(cfg.forks, ids):
                node = shape.offset[d] + (0 if d == cfg.forks[0] else ids[0])
                assert g[s, prob, node, a] < 0       # descent raises that logit


def test_stacked_seeds_equal_one_loss_call_per_seed():
    """All seeds in one loss call (advantages scaled by n_all / n_seed, loss / n_all) give each seed the
    gradient of its own token-mean loss: the same as one casp_loss call per seed, second mini-batch
    included (rho != 1, clipping possible)."""
    cfg = small_cfg(mini_batches=2, seeds=3, problems=6)
    shape = theory.TreeShape(cfg.depth, cfg.branching, cfg.forks)
    inst = mn.tree_instances(shape, cfg, "table")
    policy = mn.TreePolicy(inst, F64)
    opt = mn.make_opt(policy, cfg)
    method = {"loss": "casp", "alpha": 0.3, "neg_scale": 1.5, "entropy_quantile": 0.8, "top_n": 3}
    trace = []
    mn.tree_rl_step(shape, policy, opt, inst["correct"], method, cfg, torch.Generator().manual_seed(1), trace)
    for tr in trace:
        S, p, G, D = tr["tokens"].shape
        for s in range(S):
            z = tr["param_before"][s].clone().requires_grad_(True)                     # (P, Nn, V)
            rows = z[tr["chunk"][:, None, None], tr["nodes"][s]]                       # (p, G, D, V)
            loss, _ = casp.casp_loss(rows.reshape(-1, D, cfg.branching), tr["tokens"][s].reshape(-1, D),
                                     tr["old"][s].reshape(-1, D), tr["adv"][s].reshape(-1),
                                     tr["mask"][s].reshape(-1, D), top_n=3, alpha=0.3, neg_scale=1.5,
                                     entropy_quantile=0.8)
            loss.backward()
            assert torch.allclose(tr["grad_raw"][s], z.grad, atol=1e-14, rtol=1e-10)


def test_grpo_equals_casp_with_alpha_0_and_lambda_1():
    """The plumbing: CaSP with alpha = 0 and lambda = 1 trains exactly like GRPO."""
    cfg = small_cfg(steps=4)
    shape = theory.TreeShape(cfg.depth, cfg.branching, cfg.forks)
    inst = mn.tree_instances(shape, cfg, "shared")
    a = mn.train_tree(shape, inst, {"loss": "grpo"}, cfg)
    b = mn.train_tree(shape, inst, {"loss": "casp", "alpha": 0.0, "neg_scale": 1.0, "entropy_quantile": 0.8,
                                    "top_n": 3}, cfg)
    assert a["p1_forks"] == b["p1_forks"] and a["passk"] == b["passk"]
    assert a["p1_forks"][-1] != a["p1_forks"][0]


def test_tree_cli_writes_the_documented_json(tmp_path):
    """`miniature.py tree` on a small setting: tree.json = {"settings", "methods"}; every method has
    p1_forks per step (step 0 first), passk for K = "1".."256" (exact, non-decreasing in K), seeds;
    --replot redraws tree.png from the JSON."""
    out = tmp_path / "tree"
    mn.main(["tree", "--out", str(out), "--seeds", "3", "--steps", "4", "--problems", "3",
             "--shared-problems", "4", "--workers", "1"])
    res = json.loads((out / "tree.json").read_text())
    assert set(res) == {"settings", "methods"}
    need = {"grpo", "casp", "casp_alpha_only", "casp_lambda_only", "casp_alpha=0.03", "casp_alpha=0.1",
            "casp_alpha=0.3", "casp_lambda=1.5", "casp_lambda=2", "shared_grpo", "shared_casp",
            "shared_casp_alpha_only", "shared_casp_lambda_only"}
    assert need <= set(res["methods"])
    for name, m in res["methods"].items():
        assert m["seeds"] == 3
        assert len(m["p1_forks"]) == 5 and all(0 < v <= 1 for v in m["p1_forks"])
        assert list(m["passk"]) == [str(k) for k in range(1, 257)]
        v = list(m["passk"].values())
        assert all(0 <= a <= b + 1e-12 <= 1 + 1e-12 for a, b in zip(v, v[1:]))
    assert res["methods"]["grpo"]["p1_forks"][0] == res["methods"]["casp"]["p1_forks"][0]
    assert res["settings"]["steps"] == 4 and res["settings"]["paper"]["alpha"] == 0.01
    pytest.importorskip("matplotlib")
    png = out / "tree.png"
    assert png.stat().st_size > 10_000
    png.unlink()
    mn.main(["--replot", str(out)])
    assert png.is_file()


def legend_hits(fig) -> dict[str, int]:
    """Per panel with a legend: how many plotted points of its lines the legend box covers (display
    coordinates, after drawing)."""
    fig.canvas.draw()
    hits = {}
    for ax in fig.axes:
        if ax.get_legend() is not None:
            box = ax.get_legend().get_window_extent()
            hits[ax.get_title()] = sum(bool(box.contains(x, y)) for line in ax.get_lines()
                                       for x, y in line.get_transform().transform(line.get_xydata()))
    return hits


def test_tree_figure_is_readable(tmp_path, monkeypatch):
    """tree.png: every panel names its policy; no legend covers a plotted point (the methods' legend is
    the figure's, below the panels); the sweep panels show pass@K minus GRPO in points (the value plotted
    equals 100 x the paired mean difference from tree.json) on one common y range of at least +-1 point."""
    pytest.importorskip("matplotlib")
    out = tmp_path / "tree"
    mn.main(["tree", "--out", str(out), "--seeds", "2", "--steps", "6", "--problems", "3",
             "--shared-problems", "4", "--workers", "1", "--no-plot"])
    figs, real = [], mn._save
    monkeypatch.setattr(mn, "_save", lambda plt, fig, path, rect=(0, 0, 1, 1):
                        figs.append((fig, legend_hits(fig) if fig.tight_layout(rect=rect) is None else None))
                        or real(plt, fig, path, rect))
    mn.main(["--replot", str(out)])
    (fig, hits), = figs
    titles = [ax.get_title() for ax in fig.axes]
    assert len(titles) == 10 and all(t.startswith(("table policy: ", "shared policy: ")) for t in titles), titles
    assert hits and all(n == 0 for n in hits.values()), hits
    assert fig.legends and not any(ax.get_legend() for ax in fig.axes if "correct answers" in ax.get_title()
                                   or "final pass@K" in ax.get_title())
    sweeps = [ax for ax in fig.axes if "sweep of" in ax.get_title()]
    assert len(sweeps) == 4 and len({ax.get_ylim() for ax in sweeps}) == 1
    lo, hi = sweeps[0].get_ylim()
    assert lo <= -1 and hi >= 1
    res = json.loads((out / "tree.json").read_text())["methods"]
    alphas, _ = mn.sweep_members(res)
    line = sweeps[0].get_lines()[0]                                  # pass@1 along the alpha sweep, table policy
    want = [100 * sum(a - b for a, b in zip(res[n]["passk_seeds"]["1"], res["grpo"]["passk_seeds"]["1"])) / 2
            for _, n in alphas]
    assert list(line.get_ydata()) == pytest.approx(want, abs=1e-9)


# -----------------------------------------------------------------------------
# The tiny language model part: its own statistics


def test_lm_valid_paths_and_method_specs():
    """A response counts as a solution path only if it is one of the enumerated valid worked solutions;
    method specs parse into the loss settings train.py gets."""
    import tiny
    sols = tiny.synthetic_solutions({"problem": "2+3+4+1"})
    assert len(sols) == 17 and all(mn.valid_path("2+3+4+1", s + "\n") for s in sols)   # 18 orders, 2 give one text
    assert not mn.valid_path("2+3+4+1", "=5+5+0\n=10\n\\boxed{10}")
    assert mn.parse_method("grpo") == {"loss": "grpo"}
    m = mn.parse_method("casp:alpha=0.1,neg_scale=1.5,entropy_quantile=none")
    assert m == {"loss": "casp", "alpha": 0.1, "neg_scale": 1.5, "entropy_quantile": None, "top_n": 3}
    with pytest.raises(UserError, match="unknown setting 'beta'"):
        mn.parse_method("casp:beta=1")


def test_lm_summaries_from_saved_samples(tmp_path):
    """pass@K per problem (unbiased estimator), distinct valid paths and answers from eval-style sample
    files, then the mean of seeds per problem with a bootstrap interval that contains it, and the
    difference of two methods paired by seed (with intervals over problems and over seeds + problems)."""
    import tiny
    ks = [1, 2, 4]
    probs = ["1+2+3+4", "2+2+2+2", "3+1+4+1"]

    def write(folder, n_correct_valid):
        recs = []
        for p, c in zip(probs, n_correct_valid):
            sols = tiny.synthetic_solutions({"problem": p})
            resp = sols[:c] + ["=0\n\\boxed{0}"] * (4 - c)
            recs.append({"id": f"lm/{p}", "benchmark": "heldout", "task": "math", "answer": str(eval(p)), "n": 4,
                         "n_correct": c, "rewards": [1.0] * c + [0.0] * (4 - c),
                         "extracted": [str(eval(p))] * c + ["0"] * (4 - c), "responses": resp,
                         "lengths": [10] * 4, "finish": ["stop"] * 4,
                         "cand": {"n_tokens": 0, "topn_probs": [], "entropy": 0}})
        (folder / "eval" / "samples").mkdir(parents=True)
        (folder / "eval" / "samples" / "heldout.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
        stats = [{"step": 0, "p_all": [0.8, 0.1, 0.05], "p_gated": [0.5, 0.2, 0.1]}]
        (folder / "stats.json").write_text(json.dumps(stats))

    write(tmp_path / "warm", [1, 2, 0])
    write(tmp_path / "grpo-seed0", [4, 0, 0])
    write(tmp_path / "grpo-seed1", [4, 1, 0])
    write(tmp_path / "casp-seed0", [2, 2, 1])
    st = {"eval_n": 4, "methods": {"grpo": {"loss": "grpo"}, "casp": mn.parse_method("casp")}}
    arr = mn.eval_arrays(tmp_path / "warm" / "eval", ks)
    assert arr["paths"] == [1, 2, 0] and arr["answers"] == [2, 2, 1]
    assert arr["passk"][0] == [0.25, 0.5, 1.0]
    res = mn.summarize_lm(tmp_path, dict(st, eval_n=4))
    g = res["policies"]["grpo"]
    assert g["seeds"] == 2 and g["problems"] == 3
    want1 = (1.0 + 0.125 + 0.0) / 3                     # per problem mean of the two seeds' pass@1
    assert g["passk"]["1"] == pytest.approx(want1)
    assert g["passk_lo"]["1"] <= want1 <= g["passk_hi"]["1"]
    d = res["diff"]["casp - grpo"]      # paired by seed, over the seeds both have (casp has one)
    assert d["seeds"] == 1 and d["passk"]["1"] == pytest.approx((2 + 2 + 1) / 12 - (1 + 0 + 0) / 3)
    assert d["per_seed"][0]["1"] == pytest.approx(d["passk"]["1"])
    assert d["lo_seeds"]["1"] <= d["passk"]["1"] <= d["hi_seeds"]["1"]
    assert "casp - grpo" in mn.format_lm(res)


def test_lm_pipeline_end_to_end_on_a_tiny_setting(tmp_path, tiny_dir):
    """`miniature.py lm` with the test suite's tiny model as the warm start, 1 seed, 2 RL steps, 6
    held-out problems x 4 samples: train.py and eval.py run through their command lines, every job
    leaves its statistics and samples, lm.json has pass@K with intervals for every policy, and
    --replot redraws lm.png from lm.json."""
    out = tmp_path / "lm"
    mn.main(["lm", "--out", str(out), "--warm-dir", str(tiny_dir), "--seeds", "1", "--steps", "2",
             "--stats-every", "1", "--eval-problems", "6", "--eval-n", "4", "--stats-prompts", "3", "--stats-n", "2",
             "--prompts", "4", "--max-new-tokens", "24", "--workers", "1"])
    res = json.loads((out / "lm.json").read_text())
    assert set(res["policies"]) == {"warm start", "grpo", "casp"}
    for p in res["policies"].values():
        assert p["problems"] == 6 and p["n"] == 4
        for k in ("1", "2", "4"):
            assert 0 <= p["passk_lo"][k] <= p["passk"][k] <= p["passk_hi"][k] <= 1
    steps = [s["step"] for s in res["policies"]["grpo"]["stats"][0]]
    assert steps == [1, 2]
    assert len(res["policies"]["casp"]["stats"][0][0]["p_gated"]) == 3
    assert "casp - grpo" in res["diff"]
    pytest.importorskip("matplotlib")
    (out / "lm.png").unlink()
    mn.main(["--replot", str(out)])
    assert (out / "lm.png").is_file()
