"""train.py: learning happens, resume is exact, gradient accumulation and FSDP change nothing but memory,
float32 master weights keep updates that bfloat16 weights lose, saves are atomic, bad input is reported.

All runs use the shared `tiny_dir` model (tests/conftest.py: 2 layers, fitted to 4 synthetic problems,
sometimes right) on those 4 problems, so that groups have mixed rewards and the loss has a gradient.
"""
import argparse
import json
import os
import socket
from pathlib import Path

import pytest
import numpy as np
import torch

import data
import runtime
import train
from casp import group_advantages
from model import load_model, load_tokenizer
from rollout import rollout


pytestmark = pytest.mark.usefixtures("one_thread")


def run_args(tiny_dir, problems_file, out, *extra):
    return ["--model", str(tiny_dir), "--data", str(problems_file), "--heldout", str(problems_file),
            "--out", str(out), "--prompts-per-step", "4", "--mini-batches", "2", "--group-size", "8",
            "--max-response-len", "40", "--max-prompt-len", "64", "--lr", "1e-3", "--eval-every", "0",
            "--save-every", "0", "--device", "cpu", "--dtype", "float32", "--weight-decay", "0", *extra]


def metrics(out):
    return [json.loads(line) for line in open(Path(out) / "metrics.jsonl")]


def weights(ckpt_dir):
    return load_model(ckpt_dir / "model").state_dict()


def build_model(args, dist):
    """train.build_model with the settings of the command line `args` (as train.setup calls it)."""
    return train.build_model(args.model, None, dist, init=args.init, seed=args.seed, grad_checkpoint=args.grad_checkpoint,
                             fsdp=args.fsdp, dtype=args.dtype, lr=args.lr, weight_decay=args.weight_decay)


def all_rows(batch):
    return torch.ones(batch.seq.shape[0], dtype=torch.bool)


# -----------------------------------------------------------------------------
# learning


def test_reward_rises_on_the_builtin_task(tiny_dir, problems_file, tmp_path):
    """CaSP at lr 2e-3 for 24 steps (seed 0) on the built-in task: pass@1 on the problems (256 samples,
    standard error ~0.03) rises by more than 0.1, and the mean training reward of the last 6 steps
    exceeds that of the first 6. Measured when written: pass@1 0.51 -> 0.69, training reward 0.51 -> 0.62."""
    out = tmp_path / "run"
    args = run_args(tiny_dir, problems_file, out, "--steps", "24", "--eval-every", "24", "--lr", "2e-3",
                    "--prompts-per-step", "8")
    model = load_model(tiny_dir)
    tok = load_tokenizer(tiny_dir)
    held, _ = data.encode_prompts(data.load_jsonl(problems_file), tok, 64)
    ns = train.step_config(train.get_args(args))
    before = train.heldout_pass(model, tok, held * 4, ns, n=16, seed=123)["pass@1"]
    train.main(args)
    m = metrics(out)
    first = sum(x["reward_mean"] for x in m[:6]) / 6
    last = sum(x["reward_mean"] for x in m[-6:]) / 6
    after = train.heldout_pass(load_model(out / "ckpt-000024" / "model"), tok, held * 4, ns, n=16,
                               seed=123)["pass@1"]
    print(f"reward {first:.2f} -> {last:.2f}; held-out pass@1 {before:.2f} -> {after:.2f}")
    assert after > before + 0.1
    assert last > first
    assert "heldout_pass@1" in m[-1]
    for key in ("step", "reward_mean", "frac_mixed_groups", "response_len", "entropy", "topn_probs",
                "clip_frac", "grad_norm", "lr", "time_sample", "time_verify", "time_update",
                "tokens_per_s", "peak_mem_gb", "logprob_mismatch"):
        assert key in m[0], key
    assert len(m[0]["topn_probs"]) == 3
    # float32 on the CPU: the training forward re-scores the sampled tokens almost exactly
    assert m[0]["logprob_mismatch"] < 1e-4


def test_grpo_runs_on_the_same_seed(tiny_dir, problems_file, tmp_path):
    """--loss grpo runs the baseline; its first step samples exactly what CaSP's first step samples
    (same seed, same weights), so the two differ only by the update."""
    train.main(run_args(tiny_dir, problems_file, tmp_path / "g", "--steps", "1", "--loss", "grpo"))
    train.main(run_args(tiny_dir, problems_file, tmp_path / "c", "--steps", "1"))
    g, c = metrics(tmp_path / "g")[0], metrics(tmp_path / "c")[0]
    assert g["reward_mean"] == c["reward_mean"] and g["response_len"] == c["response_len"]
    assert "n_negative" in c and "n_negative" not in g
    assert "gated_top1_prob" in g    # where CaSP's gate would act: logged for GRPO runs too, to compare


# -----------------------------------------------------------------------------
# exact resume, atomic saves


def test_resume_is_exact(tiny_dir, problems_file, tmp_path):
    """4 steps straight give bit-identical weights and metrics to 2 steps + --resume + 2 steps; the
    checkpoint (with its tokenizer) loads in transformers."""
    train.main(run_args(tiny_dir, problems_file, tmp_path / "a", "--steps", "4"))
    train.main(run_args(tiny_dir, problems_file, tmp_path / "b", "--steps", "2"))
    train.main(run_args(tiny_dir, problems_file, tmp_path / "b", "--steps", "4", "--resume"))
    wa, wb = weights(tmp_path / "a" / "ckpt-000004"), weights(tmp_path / "b" / "ckpt-000004")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    drop = ("time_sample", "time_verify", "time_update", "tokens_per_s", "peak_mem_gb", "peak_mem_estimate_gb")
    ma = [{k: v for k, v in m.items() if k not in drop} for m in metrics(tmp_path / "a")]
    mb = [{k: v for k, v in m.items() if k not in drop} for m in metrics(tmp_path / "b")]
    assert ma == mb
    assert (tmp_path / "b" / "latest").read_text() == "ckpt-000004"
    # the checkpoint is a plain Hugging Face folder: transformers loads it, with the same logits
    transformers = pytest.importorskip("transformers")
    ckpt = tmp_path / "b" / "ckpt-000004" / "model"
    assert (ckpt / "tokenizer.json").is_file()
    tokens = torch.randint(0, 64, (2, 12))
    with torch.no_grad():
        ref = transformers.AutoModelForCausalLM.from_pretrained(ckpt).eval()(tokens).logits
        assert (ref - load_model(ckpt)(tokens)).abs().max().item() < 1e-4


def test_killed_save_leaves_previous_checkpoint(tiny_dir, problems_file, tmp_path, monkeypatch):
    """A crash in the middle of writing checkpoint 2 (after some of its files exist) leaves `latest`
    pointing at checkpoint 1, which is complete, loads, and resumes."""
    out = tmp_path / "run"
    real_save = runtime.save_model
    calls = []

    def crashing_save(model, path, **kw):
        calls.append(path)
        if len(calls) == 2:
            Path(path).mkdir(parents=True, exist_ok=True)
            (Path(path) / "model.safetensors").write_bytes(b"half a file")
            raise KeyboardInterrupt("killed during save")
        return real_save(model, path, **kw)

    monkeypatch.setattr(runtime, "save_model", crashing_save)
    with pytest.raises(SystemExit) as e:  # train.py turns the interrupt into a message and status 130
        train.main(run_args(tiny_dir, problems_file, out, "--steps", "2", "--save-every", "1"))
    assert e.value.code == 130
    monkeypatch.setattr(runtime, "save_model", real_save)
    assert (out / "latest").read_text() == "ckpt-000001"
    assert not (out / "ckpt-000002").exists()
    load_model(out / "ckpt-000001" / "model")
    train.main(run_args(tiny_dir, problems_file, out, "--steps", "2", "--resume"))
    assert (out / "latest").read_text() == "ckpt-000002"
    assert [m["step"] for m in metrics(out)] == [1, 2]


# -----------------------------------------------------------------------------
# the update: accumulation, numerics, NaN


def rollout_batch(tiny_dir, problems_file, **overrides):
    """One step's sampled, verified batch and the matching args, without updating anything."""
    args = train.get_args(run_args(tiny_dir, problems_file, "unused", "--steps", "1"))
    for k, v in overrides.items():
        setattr(args, k, v)
    model = load_model(tiny_dir)
    tok = load_tokenizer(tiny_dir)
    probs, _ = data.encode_prompts(data.load_jsonl(problems_file), tok, 64)
    ro = rollout(model, tok, probs, args.group_size, max_new_tokens=args.max_response_len, seed=7,
                 answer_mode=args.answer_mode)
    batch = train.build_batch(probs, ro, group_advantages(ro.rewards, args.group_size))
    assert (batch.adv != 0).any(), "the fixture model should give mixed groups"
    return model, batch, args


def one_update(model, batch, args, opt_cls=torch.optim.SGD, lr=1.0):
    """rl_step's steps 5-6 on `batch`: old log-probs and the update over the rows loss_rows keeps."""
    dist, cfg = train.Dist(), train.step_config(args)
    active = train.loss_rows(batch.adv, cfg.loss)
    old = train.old_logprobs(model, batch, active, cfg, dist)
    opt = opt_cls(model.parameters(), lr=lr)
    m = train.update(model, opt, batch, old, active, cfg, dist)
    return m, {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_gradient_accumulation_equals_one_big_batch(tiny_dir, problems_file):
    """Micro-batches of one row each (many backward calls, each divided by the mini-batch's token count)
    give the same SGD update as one micro-batch holding the whole mini-batch (max diff < 1e-6)."""
    model, batch, args = rollout_batch(tiny_dir, problems_file, mini_batches=1)
    start = {k: v.clone() for k, v in model.state_dict().items()}
    args.micro_batch_tokens = 10**9
    _, big = one_update(model, batch, args)
    model.load_state_dict(start)
    args.micro_batch_tokens = 1  # every row alone
    _, small = one_update(model, batch, args)
    diff = max((big[k] - small[k]).abs().max().item() for k in big)
    moved = max((big[k] - start[k]).abs().max().item() for k in big)
    print(f"max |W_big - W_micro| = {diff:.2e}, update size {moved:.2e}")
    assert moved > 1e-3 and diff < 1e-6


def test_metrics_over_no_token_are_null_not_zero(tiny_dir, problems_file, tmp_path, capsys):
    """A step without a mixed group computes no loss: the step's metrics over the loss's tokens are absent,
    grad_norm and logprob_mismatch are null (not a made-up 0.0), metrics.jsonl holds no NaN, and the log
    line prints `-` for them. (--max-response-len 1 cuts every response: every reward is 0.)"""
    out = tmp_path / "run"
    train.main(run_args(tiny_dir, problems_file, out, "--steps", "1", "--max-response-len", "1"))
    text = (out / "metrics.jsonl").read_text()
    m = json.loads(text)
    assert m["frac_mixed_groups"] == 0 and "NaN" not in text
    assert m["grad_norm"] is None and m["logprob_mismatch"] is None
    assert not {"entropy", "topn_probs", "clip_frac", "gated_top1_prob"} & set(m)
    line = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("step")][0]
    assert "| H - | p1..N - | gated - | clip - | gnorm - |" in line and "nan" not in line, line


def test_grad_norm_is_over_the_mini_batches_that_had_a_gradient(tiny_dir, problems_file):
    """A mini-batch whose rows all have A = 0 computes no gradient: grad_norm is the mean over the other
    mini-batches only, equal to the norm of that mini-batch updated alone (not halved by a 0)."""
    model, batch, args = rollout_batch(tiny_dir, problems_file, mini_batches=2)
    first, second = train.mini_batches(batch.group, 2)
    batch.adv[first] = 0
    assert (batch.adv[second] != 0).any()
    m, _ = one_update(model, batch, args, lr=0.0)        # lr 0: the weights stay as they were
    alone, _ = one_update(model, batch.rows(second), args, lr=0.0)
    assert m["grad_norm"] > 0 and m["grad_norm"] == pytest.approx(alone["grad_norm"], rel=1e-5)  # float32 sums


def test_fp32_master_weights_keep_what_bf16_weights_lose(tiny_dir, problems_file):
    """One AdamW step at lr 1e-6. bf16 autocast compute with float32 master weights moves the weights
    like the all-float32 reference (same sign of the update for > 95% of the entries, same size),
    while bf16 weights (the broken setting) keep fewer than 5% of the updates: 1e-6 is below the
    bfloat16 spacing of typical weights (~4e-3 relative)."""
    model, batch, args = rollout_batch(tiny_dir, problems_file, mini_batches=1)
    start = {k: v.clone() for k, v in model.state_dict().items()}
    _, ref = one_update(model, batch, args, torch.optim.AdamW, lr=1e-6)
    model.load_state_dict(start)
    args.dtype = "bfloat16"
    _, mixed = one_update(model, batch, args, torch.optim.AdamW, lr=1e-6)
    d_ref = torch.cat([(ref[k] - start[k]).flatten() for k in start])
    d_mix = torch.cat([(mixed[k] - start[k]).flatten() for k in start])
    moved = d_ref != 0
    agree = (torch.sign(d_ref[moved]) == torch.sign(d_mix[moved])).float().mean().item()
    print(f"fp32-master bf16-compute update agrees in sign with fp32 on {agree:.1%} of {moved.sum()} entries")
    assert moved.float().mean() > 0.5
    assert agree > 0.95
    assert torch.allclose(d_mix.abs().mean(), d_ref.abs().mean(), rtol=0.05)

    bf16 = load_model(tiny_dir, dtype=torch.bfloat16)
    b_start = {k: v.clone() for k, v in bf16.state_dict().items()}
    args.dtype = "float32"  # all in bf16: weights, gradients and AdamW state
    _, b_after = one_update(bf16, batch, args, torch.optim.AdamW, lr=1e-6)
    kept = torch.cat([(b_after[k] != b_start[k]).flatten() for k in b_start]).float().mean().item()
    print(f"bf16 weights kept {kept:.1%} of the updates")
    assert kept < 0.05


def test_no_gradient_outlives_the_step(tiny_dir, problems_file):
    """When an RL step (rl_step: rollout, two mini-batches of updates) returns, no parameter holds a
    gradient: the last mini-batch's gradients are freed before the next rollout, not kept through it.
    The step did update the weights."""
    args = train.get_args(run_args(tiny_dir, problems_file, "unused", "--steps", "1"))
    model, tok = load_model(tiny_dir), load_tokenizer(tiny_dir)
    probs, _ = data.encode_prompts(data.load_jsonl(problems_file), tok, 64)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    start = {k: v.clone() for k, v in model.state_dict().items()}
    m = train.rl_step(0, model, model, opt, tok, probs, train.step_config(args), train.Dist())
    assert m["grad_norm"] > 0 and any(not torch.equal(start[k], v) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters())


def test_nan_loss_skips_the_mini_batch(tiny_dir, problems_file):
    """A NaN loss (here: a NaN advantage) skips that mini-batch's optimizer step, is counted, and leaves
    the weights untouched; the run goes on."""
    model, batch, args = rollout_batch(tiny_dir, problems_file, mini_batches=1)
    start = {k: v.clone() for k, v in model.state_dict().items()}
    batch.adv[torch.nonzero(batch.adv).flatten()[0]] = float("nan")
    m, after = one_update(model, batch, args)
    assert m["nan_skipped"] == 1
    assert all(torch.equal(start[k], after[k]) for k in start)
    assert "NaN loss" in train.log_line({**m, "step": 1, "reward_mean": 0, "frac_mixed_groups": 0,
                                         "response_len": 0, "entropy": 0, "time_sample": 0,
                                         "time_verify": 0, "time_update": 0, "tokens_per_s": 0,
                                         "peak_mem_gb": 0})


# -----------------------------------------------------------------------------
# FSDP: two CPU processes (gloo) == one process


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _fsdp_worker(rank, world, port, tiny_dir, batch_file, out_file):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world))
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo", rank=rank, world_size=world)
    saved = torch.load(batch_file, weights_only=True)   # tensors and plain values only, as everywhere
    batch, cfg = train.Batch(**saved["batch"]), train.step_config(argparse.Namespace(**saved["args"]))
    # rank r keeps the prompt groups r, r + world, ... (as train_step does), renumbered locally
    mine = torch.nonzero(batch.group % world == rank).flatten()
    local = batch.rows(mine)
    local.group = local.group // world
    model = train.shard_model(load_model(tiny_dir), torch.float32)
    dist = train.Dist(rank, world, torch.device("cpu"))
    old = saved["old"][mine]
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    train.update(model, opt, local, old, train.loss_rows(local.adv, cfg.loss), cfg, dist)
    full = runtime.full_state_model(model, dist)
    if rank == 0:
        torch.save({k: v.clone() for k, v in full.state_dict().items()}, out_file)
    torch.distributed.destroy_process_group()


def test_fsdp_two_processes_equal_one(tiny_dir, problems_file, tmp_path):
    """One update (2 mini-batches, SGD) sharded over 2 CPU processes with FSDP2 (gloo): each rank holds
    half of the prompt groups, the token-mean denominator is summed over ranks, gradients are averaged
    by FSDP, and the ranks run different numbers of micro-batches. The updated weights equal those of
    one process on the whole batch (max diff < 1e-5)."""
    import torch.multiprocessing as mp
    model, batch, args = rollout_batch(tiny_dir, problems_file)
    # one row per micro-batch, and group 2 (rank 0's) without signal: rank 0 runs fewer micro-batches
    # than rank 1 and must keep its FSDP collectives in step with zero passes
    args.micro_batch_tokens = 1
    batch.adv[batch.group == 2] = 0.0
    start = {k: v.clone() for k, v in model.state_dict().items()}
    old = train.old_logprobs(model, batch, all_rows(batch), train.step_config(args), train.Dist())
    _, single = one_update(model, batch, args)
    torch.save({"batch": vars(batch), "args": vars(args), "old": old}, tmp_path / "batch.pt")
    mp.start_processes(_fsdp_worker, args=(2, _free_port(), tiny_dir, tmp_path / "batch.pt", tmp_path / "w.pt"),
                       nprocs=2, join=True, start_method="spawn")
    sharded = torch.load(tmp_path / "w.pt", weights_only=True)
    diff = max((single[k] - sharded[k]).abs().max().item() for k in single)
    moved = max((single[k] - start[k]).abs().max().item() for k in single)
    print(f"max |W_1proc - W_fsdp2| = {diff:.2e} (update size {moved:.2e})")
    assert moved > 1e-3 and diff < 1e-5


# -----------------------------------------------------------------------------
# bad input


def test_too_long_prompts_are_skipped_and_counted(tiny_dir, problems_file, tmp_path):
    """Prompts over --max-prompt-len are skipped and counted in the metrics; none fitting is an error."""
    mixed = tmp_path / "mixed.jsonl"
    rows = data.load_jsonl(problems_file)
    long = dict(rows[0], problem="1+" * 40 + "1", id="long")
    mixed.write_text("".join(json.dumps(r) + "\n" for r in rows + [long]))
    train.main(run_args(tiny_dir, mixed, tmp_path / "m", "--steps", "1"))
    assert metrics(tmp_path / "m")[0]["prompts_skipped_too_long"] == 1
    with pytest.raises(SystemExit) as e:
        train.main(run_args(tiny_dir, problems_file, tmp_path / "n", "--steps", "1", "--max-prompt-len", "5"))
    assert e.value.code == 2


@pytest.mark.gpu
def test_one_bf16_step_on_the_gpu(tiny_dir, problems_file, tmp_path):
    """On CUDA: bf16 autocast, the bf16 sampling copy with the CUDA-graph sampler, activation
    checkpointing; one step runs, logs peak memory, and the sampler's log-probs agree with the training
    forward's to bf16 accuracy."""
    out = tmp_path / "gpu"
    run = run_args(tiny_dir, problems_file, out, "--steps", "1", "--grad-checkpoint")
    run[run.index("--device") + 1], run[run.index("--dtype") + 1] = "cuda", "bfloat16"
    train.main(run)
    m = metrics(out)[0]
    assert m["peak_mem_gb"] > 0 and m["logprob_mismatch"] < 0.05


def test_rollout_slots_do_not_change_the_samples(tiny_dir, problems_file):
    """--rollout-batch only bounds memory: sampling 4 problems x 8 with 256 slots or with 8 gives the same
    tokens and rewards (the sampler keys each sample's random stream by prompt and index, not by slot)."""
    model, tok = load_model(tiny_dir), load_tokenizer(tiny_dir)
    probs, _ = data.encode_prompts(data.load_jsonl(problems_file), tok, 64)
    rollouts = [rollout(model, tok, probs, 8, max_new_tokens=40, seed=3, slots=slots) for slots in (256, 8)]
    batches = [train.build_batch(probs, ro, group_advantages(ro.rewards, 8)) for ro in rollouts]
    assert torch.equal(batches[0].seq, batches[1].seq) and torch.equal(batches[0].rewards, batches[1].rewards)


def test_step_metrics_equal_a_direct_computation(tiny_dir, problems_file):
    """The update's logged loss metrics over one mini-batch, accumulated over one-row micro-batches, equal
    a direct computation from the policy's full logits over the response tokens of the rows with A != 0:
    n_tokens is their count; entropy, p(1..3) (all tokens and the gate-selected ones) and the gate fraction
    are their means; clip_frac is 0 (rho = 1 exactly before the first optimizer step)."""
    import torch.nn.functional as F
    from casp import entropy_gate
    model, batch, args = rollout_batch(tiny_dir, problems_file, mini_batches=1)
    args.micro_batch_tokens = 1
    rows = torch.nonzero(batch.adv != 0).flatten()
    with torch.no_grad():
        logp = F.log_softmax(model(batch.seq[rows, :-1]).double(), -1)                   # (r, S-1, V)
    mask = batch.resp_mask[rows, 1:]                                                      # (r, S-1)
    ent = -(logp.exp() * logp).sum(-1)                                                    # (r, S-1)
    top = logp.exp().topk(3, -1).values                                                   # (r, S-1, 3)
    gate = entropy_gate(ent, mask, 0.8)                                                   # (r, S-1)
    m, _ = one_update(model, batch, args)
    assert m["n_tokens"] == int(mask.sum())
    assert m["entropy"] == pytest.approx(ent[mask].mean().item(), abs=1e-5)
    assert m["topn_probs"] == pytest.approx(top[mask].mean(0).tolist(), abs=1e-5)
    assert m["gate_frac"] == pytest.approx((gate & mask).sum().item() / mask.sum().item(), abs=1e-6)
    assert m["gated_top1_prob"] == pytest.approx(top[gate][:, 0].mean().item(), abs=1e-5)
    assert m["clip_frac"] == 0.0 and 0 < m["gate_frac"] < 1


# -----------------------------------------------------------------------------
# the update, the rollout metrics and the sampling copy against direct computations


def reference_grpo_update(model, batch, old, mini_batches, grad_clip, lr, clip_eps=0.2):
    """The update written out in plain torch (none of train.py's or casp.py's code): the prompts split
    into `mini_batches` consecutive runs of whole groups; per mini-batch the full logits, rho = exp(log p(y) -
    old), the PPO-clip loss summed over the response tokens of EVERY row (A = 0 rows included) divided by
    their count, backward, the gradient scaled to norm <= grad_clip, one SGD step. -> the pre-clip norms."""
    params = list(model.parameters())
    P = int(batch.group.max()) + 1
    per = -(-P // mini_batches)
    norms = []
    for k in range(mini_batches):
        rows = (batch.group >= k * per) & (batch.group < (k + 1) * per)                  # (R,)
        seq, mask = batch.seq[rows], batch.resp_mask[rows, 1:]                             # (r, S), (r, S-1)
        logp = torch.log_softmax(model(seq[:, :-1]).float(), -1)                           # (r, S-1, V)
        logp_y = logp.gather(-1, seq[:, 1:, None]).squeeze(-1)                             # (r, S-1)
        rho = torch.exp(logp_y - old[rows, 1:])                                            # (r, S-1)
        A = batch.adv[rows][:, None]                                                       # (r, 1)
        l = torch.maximum(-A * rho, -A * rho.clamp(1 - clip_eps, 1 + clip_eps))            # (r, S-1)
        loss = (l * mask).sum() / mask.sum()
        for p in params:
            p.grad = None
        loss.backward()
        norm = torch.sqrt(sum((p.grad.double() ** 2).sum() for p in params if p.grad is not None)).item()
        scale = min(1.0, grad_clip / (norm + 1e-6))
        with torch.no_grad():
            for p in params:
                if p.grad is not None:
                    p -= lr * scale * p.grad
        norms.append(norm)
    return norms


@pytest.mark.parametrize("grad_clip", [1e9, 0.05])
def test_update_equals_a_direct_computation(tiny_dir, problems_file, grad_clip):
    """`update` (GRPO, 2 mini-batches, one-row micro-batches, SGD) moves the weights as the plain-torch
    reference above, within 2e-5 (float32, chunked vs full log-softmax), and logs the mean of its
    pre-clip gradient norms. The batch holds a group with A = 0 in each mini-batch, so a token-mean that
    left their tokens out of the denominator would differ; grad_clip 0.05 is below every norm here (the
    clip is active: ignoring it would move the weights several times further), 1e9 never clips."""
    model, batch, args = rollout_batch(tiny_dir, problems_file, loss="grpo", grad_clip=grad_clip,
                                       micro_batch_tokens=1)
    batch.adv[(batch.group == 1) | (batch.group == 3)] = 0.0
    assert (batch.adv[batch.group == 0] != 0).any() and (batch.adv[batch.group == 2] != 0).any()
    start = {k: v.clone() for k, v in model.state_dict().items()}
    old = train.old_logprobs(model, batch, all_rows(batch), train.step_config(args), train.Dist())
    m, got = one_update(model, batch, args, lr=0.5)
    model.load_state_dict(start)
    norms = reference_grpo_update(model, batch, old, 2, grad_clip, lr=0.5)
    want = model.state_dict()
    diff = max((got[k] - want[k]).abs().max().item() for k in want)
    moved = max((want[k] - start[k]).abs().max().item() for k in want)
    print(f"pre-clip norms {norms}; max |W_update - W_reference| = {diff:.2e} (update size {moved:.2e})")
    assert (min(norms) > grad_clip) == (grad_clip < 1)
    assert moved > 1e-3 and diff < 2e-5
    assert m["grad_norm"] == pytest.approx(sum(norms) / 2, rel=1e-4)


def test_rollout_metrics_equal_a_direct_computation(tiny_dir, problems_file):
    """The step's rollout metrics from a real rollout (4 prompts x 8, some responses cut off at 30 tokens)
    whose rewards are set to 3 mixed groups and 1 all-correct group, each against its definition
    computed here row by row: reward_mean; frac_mixed_groups = 3/4 (groups whose rewards are not all
    equal); response_len (tokens per response); truncated_frac; sampler_entropy and sampler_topn_probs
    (means over every generated token, not over responses); logprob_mismatch (mean |old - sampler|
    log-prob over the response tokens of the rows with A != 0, here with noise added to `old`)."""
    model, tok = load_model(tiny_dir), load_tokenizer(tiny_dir)
    probs, _ = data.encode_prompts(data.load_jsonl(problems_file), tok, 64)
    ro = rollout(model, tok, probs, 8, max_new_tokens=30, seed=11)
    ro.rewards = torch.tensor([float(i % 3 == 0) for i in range(32)])
    ro.rewards[8:16] = 1.0                                                 # group 1: all correct, A = 0
    batch = train.build_batch(probs, ro, group_advantages(ro.rewards, 8))
    args = train.get_args(run_args(tiny_dir, problems_file, "unused", "--steps", "1"))
    old = train.old_logprobs(model, batch, all_rows(batch), train.step_config(args), train.Dist())
    old = old + 0.01 * torch.randn(old.shape, generator=torch.Generator().manual_seed(0))
    m = train.rollout_metrics(ro, batch, old, 8, train.Dist())

    lengths = [int(n) for n in ro.mask.sum(1)]
    groups = [ro.rewards[8 * g:8 * g + 8].tolist() for g in range(4)]
    tokens_h = torch.cat([ro.entropy[i, :n] for i, n in enumerate(lengths)])                    # (M,)
    tokens_p = torch.cat([ro.topn_probs[i, :n] for i, n in enumerate(lengths)])                 # (M, 3)
    gaps = []
    for i, n in enumerate(lengths):
        if groups[i // 8].count(groups[i // 8][0]) < 8:                                         # A != 0
            a = len(probs[i // 8]["prompt_ids"])
            gaps += (old[i, a:a + n] - ro.logprobs[i, :n]).abs().tolist()
    truncated = sum(f == "length" for f in ro.finish_reason)
    assert 0 < truncated < 32 and len(set(lengths)) > 2
    assert m["reward_mean"] == pytest.approx(sum(map(sum, groups)) / 32)
    assert m["frac_mixed_groups"] == 0.75
    assert m["response_len"] == pytest.approx(sum(lengths) / 32)
    assert m["truncated_frac"] == pytest.approx(truncated / 32)
    assert m["sampler_entropy"] == pytest.approx(tokens_h.mean().item(), rel=1e-5)
    assert m["sampler_topn_probs"] == pytest.approx(tokens_p.mean(0).tolist(), rel=1e-5)
    assert m["logprob_mismatch"] == pytest.approx(sum(gaps) / len(gaps), rel=1e-5)


def test_bf16_sampling_copy_is_refreshed_after_the_update(tiny_dir, problems_file):
    """--dtype bfloat16: sampling uses a separate bf16 copy of the float32 master weights. After one
    rl_step every parameter of the copy equals the updated master weight rounded to bf16 (and the copy
    did change: lr 1e-3 moves weights by more than bf16's spacing)."""
    args = train.get_args(run_args(tiny_dir, problems_file, "unused", "--steps", "1", "--dtype", "bfloat16"))
    dist = train.Dist()
    model, opt = build_model(args, dist)
    policy = train.make_sampling_copy(model, args.dtype, args.fsdp, dist.device)
    assert policy is not model and next(policy.parameters()).dtype == torch.bfloat16
    before = [p.clone() for p in policy.parameters()]
    tok = load_tokenizer(tiny_dir)
    probs, _ = data.encode_prompts(data.load_jsonl(problems_file), tok, 64)
    m = train.rl_step(0, model, policy, opt, tok, probs, train.step_config(args), dist)
    assert m["n_tokens"] > 0
    for p_s, p, b in zip(policy.parameters(), model.parameters(), before):
        assert torch.equal(p_s, p.detach().to(torch.bfloat16))
    assert any(not torch.equal(p_s, b) for p_s, b in zip(policy.parameters(), before))


def test_no_std_norm_reaches_the_advantages(tiny_dir, problems_file, monkeypatch):
    """The advantages the update receives from rl_step, against r - mean(r) per group, divided by
    (Bessel std + 1e-6) by default and not with --no-std-norm (Dr. GRPO); all-equal groups 0. The step's
    groups are mixed with std != 1, so the two settings give different advantages."""
    seen, real = [], train.update
    monkeypatch.setattr(train, "update", lambda model, opt, batch, *a: seen.append(batch) or
                        real(model, opt, batch, *a))
    tok = load_tokenizer(tiny_dir)
    probs, _ = data.encode_prompts(data.load_jsonl(problems_file), tok, 64)
    for flags in ([], ["--no-std-norm"]):
        args = train.get_args(run_args(tiny_dir, problems_file, "unused", "--steps", "1", *flags))
        model = load_model(tiny_dir)
        opt = torch.optim.SGD(model.parameters(), lr=0.0)
        train.rl_step(0, model, model, opt, tok, probs, train.step_config(args), train.Dist())
    for batch, std_norm in zip(seen, (True, False)):
        r = batch.rewards.view(-1, 8).double()                                             # (P, G)
        want = r - r.mean(1, keepdim=True)
        if std_norm:
            want = want / (r.std(1, keepdim=True) + 1e-6)
        want[(r == r[:, :1]).all(1)] = 0.0
        mixed = ~(r == r[:, :1]).all(1)
        assert mixed.any() and (r[mixed].std(1) < 0.9).all()
        assert torch.allclose(batch.adv.view(-1, 8).double(), want, atol=1e-5), (std_norm, batch.adv, want)


def test_keep_rotation_deletes_exactly_the_oldest(tiny_dir, tmp_path):
    """save_checkpoint with keep = 1, 2, 3 over 5 saves: after save s exactly the checkpoints
    max(1, s - keep + 1) .. s remain (nothing is deleted until there are more than `keep`, then the
    oldest one per save), and `latest` names s."""
    model = load_model(tiny_dir)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for keep in (1, 2, 3):
        out = tmp_path / f"keep{keep}"
        for s in range(1, 6):
            runtime.save_checkpoint(out, s, model, opt, {"epoch": 0, "pos": s}, keep, train.Dist())
            want = [f"ckpt-{k:06d}" for k in range(max(1, s - keep + 1), s + 1)]
            assert sorted(p.name for p in out.glob("ckpt-*")) == want, (keep, s)
            assert (out / "latest").read_text() == f"ckpt-{s:06d}"


def test_prompt_stream_is_a_fresh_permutation_each_epoch_and_resumes():
    """PromptStream over 10 problems, taken 4 at a time: an epoch is floor(10 / 4) = 2 steps whose 8 draws
    are the first 8 of that epoch's seeded permutation (the last partial batch dropped, verl's drop_last),
    so no step spans two epochs; the seed changes the order; a stream rebuilt from a state_dict continues
    with exactly the draws of the original. A set smaller than one step wraps around instead."""
    s = train.PromptStream(10, seed=3)
    draws = [s.take(4) for _ in range(8)]                                         # 8 steps: 4 epochs
    for e in range(4):
        want = np.random.default_rng([3, e]).permutation(10)[:8].tolist()
        assert draws[2 * e] + draws[2 * e + 1] == want, e
    assert draws[0] + draws[1] != draws[2] + draws[3]
    assert draws[0] != train.PromptStream(10, seed=4).take(4)
    a = train.PromptStream(10, seed=3)
    a.take(4)
    b = train.PromptStream(10, seed=3)
    b.load_state_dict(a.state_dict())
    assert [b.take(4) for _ in range(5)] == [a.take(4) for _ in range(5)] == draws[1:6]
    small = train.PromptStream(3, seed=0)                                         # k > n: wraps, no drop
    got = small.take(5)
    assert got == (np.random.default_rng([0, 0]).permutation(3).tolist()
                   + np.random.default_rng([0, 1]).permutation(3)[:2].tolist())


def test_heldout_pass_equals_a_direct_computation(tiny_dir, problems_file, monkeypatch):
    """The held-out pass@1 and pass@n of train.py: from the rollout's own rewards (n = 4 samples of each of
    the 4 problems, recorded here), pass@1 is the mean reward and pass@4 the fraction of problems with at
    least one correct sample."""
    seen, real = [], train.rollout
    monkeypatch.setattr(train, "rollout", lambda *a, **k: seen.append(real(*a, **k)) or seen[-1])
    args = train.get_args(run_args(tiny_dir, problems_file, "unused", "--steps", "1"))
    tok = load_tokenizer(tiny_dir)
    probs, _ = data.encode_prompts(data.load_jsonl(problems_file), tok, 64)
    got = train.heldout_pass(load_model(tiny_dir), tok, probs, train.step_config(args), n=4, seed=5)
    r = seen[0].rewards.view(4, 4)                                                      # (problems, samples)
    assert 0 < r.mean() < r.max(1).values.mean()                 # pass@1 and pass@4 differ here
    assert got == pytest.approx({"pass@1": r.mean().item(), "pass@4": r.max(1).values.mean().item()})
