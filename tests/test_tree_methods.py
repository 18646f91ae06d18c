"""experiments/miniature.py's comparison of every method (`tree --methods all`): the CLI writes every
method for both policies, the table's paired differences are those of the per-seed values it stores,
and the per-seed loss calls a non-linear method needs give each seed exactly its own loss's gradient
(and, for a linear method, the same gradient as the stacked call). About 20 s on 2 CPU cores."""
import json

import pytest
import torch

import casp
from experiments import miniature as mn
from experiments import theory
from test_miniature import F64, small_cfg


def test_tree_methods_all_writes_every_method_and_a_paired_table(tmp_path):
    """`tree --methods all` on a small setting: tree.json holds every method of COMPARISON (each method of
    casp.METHODS, and GRPO with the entropy bonus) for both policies with its final per-seed p(1), p(2);
    tree_methods.md's cells are the mean and the paired difference to GRPO (eval: mean of per-seed
    differences, 1.96 standard errors); --replot redraws tree_methods.png."""
    out = tmp_path / "cmp"
    mn.main(["tree", "--methods", "all", "--out", str(out), "--seeds", "3", "--steps", "2", "--problems", "3",
             "--shared-problems", "3", "--workers", "1"])
    res = json.loads((out / "tree.json").read_text())
    names = set(mn.COMPARISON)
    assert set(casp.METHODS) < names and "grpo+entropy" in names
    assert set(res["methods"]) == names | {f"shared_{n}" for n in names}
    for m in res["methods"].values():
        assert len(m["final_seeds"]["p1_forks"]) == 3 and m["final_seeds"]["p1_forks"] != m["final_seeds"]["p2_forks"]
        assert m["final_seeds"]["p1_forks"][0] == pytest.approx(m["p1_forks"][-1] * 3 - sum(m["final_seeds"]["p1_forks"][1:]),
                                                                 abs=1e-5)
    table = (out / "tree_methods.md").read_text()
    assert table.count("| kl-cov |") == 2 and "pass@256" in table
    nsr, grpo = res["methods"]["nsr"], res["methods"]["grpo"]
    d = [a - b for a, b in zip(nsr["passk_seeds"]["16"], grpo["passk_seeds"]["16"])]
    mean = sum(d) / 3
    half = 1.96 * (sum((x - mean) ** 2 for x in d) / 2) ** 0.5 / 3 ** 0.5
    row = next(line for line in table.splitlines() if line.startswith("| nsr |"))
    assert f"({mean:+.3f} +- {half:.3f})" in row.split("|")[5]
    assert res["methods"]["kl-cov"]["passk"] != res["methods"]["grpo"]["passk"]
    pytest.importorskip("matplotlib")
    png = out / "tree_methods.png"
    assert png.stat().st_size > 10_000
    png.unlink()
    mn.main(["--replot", str(out)])
    assert png.is_file() and not (out / "tree.png").exists()


@pytest.mark.parametrize("name", ["entropy-adv", "kl-cov", "grpo+entropy"])
def test_per_seed_calls_give_each_seed_its_own_loss_gradient(name):
    """A method that is not rescalable runs one loss call per seed: each seed's raw gradient equals that of
    casp.method_loss on that seed's rows alone with its own token count (the second mini-batch too)."""
    cfg = small_cfg(mini_batches=2, methods=("all",))
    method = mn.tree_methods(cfg)[name]
    assert not casp.rescalable(casp.LossConfig(**method))
    shape = theory.TreeShape(cfg.depth, cfg.branching, cfg.forks)
    inst = mn.tree_instances(shape, cfg, "table")
    policy = mn.TreePolicy(inst, F64)
    trace = []
    mn.tree_rl_step(shape, policy, mn.make_opt(policy, cfg), inst["correct"], method, cfg,
                    torch.Generator().manual_seed(1), trace)
    for tr in trace:
        S, p, G, D = tr["tokens"].shape
        for s in range(S):
            z = tr["param_before"][s].clone().requires_grad_(True)
            rows = z[tr["chunk"][:, None, None], tr["nodes"][s]]                    # (p, G, D, V)
            loss, _ = casp.method_loss(rows.reshape(-1, D, cfg.branching), tr["tokens"][s].reshape(-1, D),
                                       tr["old"][s].reshape(-1, D), tr["adv"][s].reshape(-1),
                                       tr["mask"][s].reshape(-1, D), **method)
            loss.backward()
            assert torch.allclose(tr["grad_raw"][s], z.grad, atol=1e-14, rtol=1e-10)


def test_stacked_and_per_seed_calls_agree_for_a_linear_method(monkeypatch):
    """For a rescalable method (PSR) the stacked call and one call per seed give the same gradients."""
    cfg = small_cfg(mini_batches=2)
    shape = theory.TreeShape(cfg.depth, cfg.branching, cfg.forks)
    inst = mn.tree_instances(shape, cfg, "shared")
    grads = []
    for stacked in (True, False):
        monkeypatch.setattr(mn.casp, "rescalable", lambda c, stacked=stacked: stacked)
        policy = mn.TreePolicy(inst, F64)
        trace = []
        mn.tree_rl_step(shape, policy, mn.make_opt(policy, cfg), inst["correct"], {"loss": "psr"}, cfg,
                        torch.Generator().manual_seed(2), trace)
        grads.append(torch.stack([t["grad_raw"] for t in trace]))
    assert grads[0].abs().max() > 1e-4 and torch.allclose(grads[0], grads[1], atol=1e-14, rtol=1e-10)
