"""Every documented flag of train.py and eval.py reaches what it controls: each test fails when a flag is
ignored (dropped at its call site, or replaced by its default).

Where a flag's effect is a number the run can show (checkpoints kept, rows evaluated, pass@k keys, an
error) the test checks that effect; where the effect is a setting handed to a component (the sampler's
temperature, the loss's clip range, AdamW's weight decay) the test records what the component received,
one level below train.py / eval.py (the sampler's `generate`, the verifier, the loss, the optimizer), and
compares it with the flag. The components' own behaviour under those settings is tested in their own
files (test_sampler.py, test_casp.py, test_verifier.py). The flags exercised elsewhere are named where
they are: --loss, --resume, --overwrite, --max-prompt-len, --data-dir (train.py) in test_train*.py;
--no-std-norm, --dtype (the sampling copy), --grad-clip, --mini-batches, --keep (the rotation itself) in
test_train.py's direct computations; --rescore, --compare, --plot-metrics in test_eval.py.
"""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import data
import eval as ev
import model as model_module
import rollout
import tiny
import train
from casp import LossConfig
from cli import UserError
from model import load_model, load_tokenizer
from test_train import build_model, metrics, run_args

pytestmark = pytest.mark.usefixtures("one_thread")

ROOT = Path(__file__).resolve().parent.parent


class Spy:
    """Records the arguments of every call of a wrapped function: its keywords, positional ones as
    "args", and the prompts (as lists) when prompts_arg names their position."""

    def __init__(self, monkeypatch, owner, name, prompts_arg=None):
        self.calls, real = [], getattr(owner, name)

        def wrapper(*args, **kw):
            rec = dict(kw, args=args)
            if prompts_arg is not None:
                rec["n_prompts"] = len(args[prompts_arg])
                rec["prompts"] = [list(p) for p in args[prompts_arg]]
            self.calls.append(rec)
            return real(*args, **kw)
        monkeypatch.setattr(owner, name, wrapper)


def problems_file_of(path, problems):
    path.write_text("".join(json.dumps(p) + "\n" for p in problems))
    return path


# -----------------------------------------------------------------------------
# train.py


def test_train_flags_reach_the_sampler_verifier_loss_optimizer_and_checkpoints(tiny_dir, problems_file, tmp_path,
                                                                              monkeypatch):
    """One 3-step run with non-default values of the flags below, checking what each reached:
    the sampler's generate (--group-size, --max-response-len, --temperature, --top-p, --rollout-batch,
    --top-n, --prompts-per-step), the verifier (--answer-mode), the loss's LossConfig (--loss, --top-n,
    --alpha, --entropy-quantile, --neg-scale, --clip-eps, --clip-eps-high, --temperature), the forward
    passes (--micro-batch-tokens 1: one per row with A != 0, for the old log-probs and again for the
    update), AdamW (--lr, --weight-decay, --mini-batches optimizer steps per step), the gradient clip
    (--grad-clip), activation checkpointing (--grad-checkpoint), the held-out evaluation (--eval-every,
    --eval-prompts, --heldout: its first problems, once, at step 2, sampled with the same settings),
    the checkpoints (--save-every, --keep) and the log (--steps lines, lr and p(1..N) in each)."""
    heldout = problems_file_of(tmp_path / "held.jsonl", data.load_dataset("synthetic", limit=9)[4:])
    out = tmp_path / "run"
    gen = Spy(monkeypatch, rollout, "generate", prompts_arg=1)
    ver = Spy(monkeypatch, rollout, "verify")
    loss = Spy(monkeypatch, train, "policy_loss")
    fwd = Spy(monkeypatch, train, "token_stats")
    clip = Spy(monkeypatch, torch.nn.utils, "clip_grad_norm_")
    batches, opts, real_update, real_build = [], [], train.update, train.build_model
    monkeypatch.setattr(train, "update", lambda model, opt, batch, *a: batches.append(batch) or
                        real_update(model, opt, batch, *a))

    def build(*a, **k):
        model, opt = real_build(*a, **k)
        opts.append((model, opt, []))
        step = opt.step
        opt.step = lambda *x, **k: opts[0][2].append(1) or step(*x, **k)
        return model, opt
    monkeypatch.setattr(train, "build_model", build)
    train.main(run_args(tiny_dir, problems_file, out, "--heldout", str(heldout), "--steps", "3",
                        "--group-size", "4", "--prompts-per-step", "2", "--max-response-len", "24",
                        "--temperature", "0.9", "--top-p", "0.95", "--rollout-batch", "6", "--top-n", "2",
                        "--answer-mode", "lenient", "--alpha", "0.3", "--entropy-quantile", "0.6",
                        "--neg-scale", "1.4", "--clip-eps", "0.15", "--clip-eps-high", "0.25",
                        "--micro-batch-tokens", "1", "--lr", "3e-4", "--weight-decay", "0.05",
                        "--grad-clip", "0.5", "--grad-checkpoint", "--eval-every", "2", "--eval-prompts", "3",
                        "--save-every", "1", "--keep", "3"))
    train_calls = [c for c in gen.calls if c["n_samples"] != 1]
    held_calls = [c for c in gen.calls if c["n_samples"] == 1]
    assert len(train_calls) == 3
    for c in train_calls:
        assert (c["n_samples"], c["max_new_tokens"], c["temperature"], c["top_p"], c["slots"], c["top_n"],
                c["n_prompts"]) == (4, 24, 0.9, 0.95, 6, 2, 2)
    tok = load_tokenizer(tiny_dir)
    held_ids = [p["prompt_ids"] for p in data.encode_prompts(data.load_jsonl(heldout), tok, 64)[0]]
    assert len(held_calls) == 1 and held_calls[0]["prompts"] == held_ids[:3]
    c = held_calls[0]                                     # the held-out pass@1 samples as training does
    assert (c["max_new_tokens"], c["temperature"], c["top_p"], c["slots"], c["top_n"]) == (24, 0.9, 0.95, 6, 2)
    assert ver.calls and {c["mode"] for c in ver.calls} == {"lenient"}
    want = LossConfig(loss="casp", top_n=2, alpha=0.3, entropy_quantile=0.6, neg_scale=1.4, clip_eps=0.15,
                      clip_eps_high=0.25, temperature=0.9)
    assert loss.calls and {c["args"][4] for c in loss.calls} == {want}
    n_active = sum(int((b.adv != 0).sum()) for b in batches)
    assert n_active > 0 and len(fwd.calls) == 2 * n_active
    model, opt, steps = opts[0]
    assert len(steps) == 3 * 2                                            # --mini-batches 2 per step
    assert opt.param_groups[0]["lr"] == 3e-4 and opt.param_groups[0]["weight_decay"] == 0.05
    assert model.gradient_checkpointing
    assert len(clip.calls) == 6 and {c["args"][1] for c in clip.calls} == {0.5}
    m = metrics(out)
    assert [x["step"] for x in m] == [1, 2, 3] and all(x["lr"] == 3e-4 for x in m)
    assert all(len(x["topn_probs"]) == 2 and len(x["sampler_topn_probs"]) == 2 for x in m)
    assert ["heldout_pass@1" in x for x in m] == [False, True, False]
    assert sorted(p.name for p in out.glob("ckpt-*")) == ["ckpt-000001", "ckpt-000002", "ckpt-000003"]


def test_seed_changes_the_samples_and_the_random_init(tiny_dir, problems_file, tmp_path, monkeypatch):
    """--seed: one step with seed 0 and with seed 1 samples different responses to the same prompts (the
    rollout's streams are keyed by it; compared prompt by prompt, since the seed also reorders the prompt
    stream); --init random draws the architecture's weights from the seed instead of loading them."""
    samples, real = [], rollout.generate

    def record(model, prompts, **kw):
        ro = real(model, prompts, **kw)
        n = kw["n_samples"]
        samples.append({tuple(p): sorted(tuple(t[m].tolist()) for t, m in zip(ro.tokens[i * n:(i + 1) * n],
                                                                               ro.mask[i * n:(i + 1) * n]))
                        for i, p in enumerate(prompts)})
        return ro
    monkeypatch.setattr(rollout, "generate", record)
    for seed in ("0", "1"):
        train.main(run_args(tiny_dir, problems_file, tmp_path / seed, "--steps", "1", "--seed", seed))
    assert samples[0].keys() == samples[1].keys() and len(samples[0]) == 4
    assert any(samples[0][p] != samples[1][p] for p in samples[0])
    loaded = load_model(tiny_dir).state_dict()
    rand = {s: build_model(train.get_args(run_args(tiny_dir, problems_file, "x", "--init", "random", "--seed", str(s))),
                           train.Dist())[0].state_dict()
            for s in (0, 1)}
    assert not any(torch.equal(rand[0][k], loaded[k]) for k in loaded if loaded[k].numel() > 64)
    assert not torch.equal(rand[0]["model.embed_tokens.weight"], rand[1]["model.embed_tokens.weight"])


def test_tokenizer_flag_is_read_from_its_folder(tiny_dir, problems_file, tmp_path):
    """A model folder without tokenizer files trains and evaluates with --tokenizer pointing at one
    (without it both refuse with one error line naming the missing tokenizer)."""
    bare = tmp_path / "bare"
    shutil.copytree(tiny_dir, bare)
    (bare / "tokenizer.json").unlink()
    with pytest.raises(SystemExit) as e:
        train.main(run_args(bare, problems_file, tmp_path / "a", "--steps", "1"))
    assert e.value.code == 2
    train.main(run_args(bare, problems_file, tmp_path / "b", "--steps", "1", "--tokenizer", str(tiny_dir)))
    assert metrics(tmp_path / "b")[0]["step"] == 1
    eval_args = ["--model", str(bare), "--data", "synthetic", "--limit", "1", "--n", "2", "--max-new-tokens", "8",
                 "--workers", "1", "--no-progress", "--no-plot"]
    with pytest.raises(SystemExit):
        ev.main(eval_args + ["--out", str(tmp_path / "e1")])
    assert ev.main(eval_args + ["--out", str(tmp_path / "e2"), "--tokenizer", str(tiny_dir)])["synthetic"]["n"] == 2


def test_force_runs_past_the_memory_preflight(tiny_dir, problems_file):
    """--force: a run whose estimate exceeds the free memory (10^6 prompts x 4096 samples here) is
    refused without it and only reported with it."""
    big = ["--prompts-per-step", "1000000", "--group-size", "4096", "--mini-batches", "1"]
    def memory_check(*flags):
        args = train.get_args(run_args(tiny_dir, problems_file, "x", *big, *flags))
        return train.memory_check(train.model_config(args.model, args.init), train.Dist(), 64, train.step_config(args),
                                  prompts_per_step=args.prompts_per_step, fsdp=args.fsdp,
                                  grad_checkpoint=args.grad_checkpoint, force=args.force)
    with pytest.raises(UserError):
        memory_check()
    line, _ = memory_check("--force")
    assert "not checked: --force" in line


def test_loss_flags_build_the_loss_config():
    """--loss, --top-n, --alpha, --entropy-quantile / --no-entropy-gate, --neg-scale, --clip-eps,
    --clip-eps-high and --temperature are the LossConfig's fields (the paper's defaults without them)."""
    assert train.step_config(train.get_args([])).loss == LossConfig()
    args = train.get_args(["--loss", "grpo", "--top-n", "5", "--alpha", "0.2", "--entropy-quantile", "0.7",
                           "--neg-scale", "1.3", "--clip-eps", "0.1", "--clip-eps-high", "0.3", "--temperature", "0.7"])
    assert train.step_config(args).loss == LossConfig(loss="grpo", top_n=5, alpha=0.2, entropy_quantile=0.7,
                                                      neg_scale=1.3, clip_eps=0.1, clip_eps_high=0.3, temperature=0.7)
    assert train.step_config(train.get_args(["--no-entropy-gate"])).loss.entropy_quantile is None


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_device_flag_is_checked():
    """--device cuda on a machine without CUDA is refused by name (the flag is read, not defaulted)."""
    with pytest.raises(SystemExit) as e:
        train.get_args(["--device", "cuda"])
    assert e.value.code == 2


def test_warm_start_steps_and_the_demo_defaults(tmp_path, monkeypatch):
    """--model tiny without a cached model: the warm start runs --warm-start-steps supervised steps (3
    here) into CASP_HOME/tiny, then the demo runs with its own defaults where no flag is given
    (DEMO_DEFAULTS: lr 2e-4, 48 response tokens) and the flags where given (--steps 1)."""
    monkeypatch.setenv("CASP_HOME", str(tmp_path / "home"))
    steps, real = [], tiny.warm_start_tiny
    monkeypatch.setattr(tiny, "warm_start_tiny", lambda path, n, *a, **k: steps.append(n) or real(path, n, *a, **k))
    gen = Spy(monkeypatch, rollout, "generate")
    train.main(["--model", "tiny", "--warm-start-steps", "3", "--steps", "1", "--prompts-per-step", "2",
                "--mini-batches", "1", "--group-size", "2", "--eval-prompts", "2", "--out", str(tmp_path / "run"),
                "--device", "cpu"])
    assert steps == [3] and (tmp_path / "home" / "tiny" / "config.json").is_file()
    m = metrics(tmp_path / "run")
    assert len(m) == 1 and m[0]["lr"] == 2e-4
    assert {c["max_new_tokens"] for c in gen.calls} == {48}


def test_fsdp_flag_shards_over_two_processes(tiny_dir, problems_file, tmp_path):
    """--fsdp under torchrun with 2 CPU processes (gloo): one run, its checkpoint written by 2 ranks (one
    optimizer shard each, world 2 in the trainer state), its metrics one line per step. Without the flag
    the two processes would be two unrelated runs in one folder."""
    out = tmp_path / "run"
    args = run_args(tiny_dir, problems_file, out, "--steps", "1", "--fsdp")
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                        str(ROOT / "train.py"), *args], cwd=ROOT, capture_output=True, text=True, timeout=600,
                       env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr[-3000:]
    ckpt = out / "ckpt-000001"
    assert json.loads((ckpt / "trainer_state.json").read_text())["world"] == 2
    assert (ckpt / "optimizer.rank0.pt").is_file() and (ckpt / "optimizer.rank1.pt").is_file()
    assert [m["step"] for m in metrics(out)] == [1]


# -----------------------------------------------------------------------------
# eval.py


def test_eval_flags_reach_the_sampler_verifier_and_model(tiny_dir, tmp_path, monkeypatch, capsys):
    """One evaluation with non-default values of: --limit (the first 4 problems of the file), --max-prompt-tokens
    (the 2nd of them is too long: skipped and reported), --n, --k (the table's pass@k keys), --batch-prompts
    (2 problems per sampler call), --max-rows, --max-new-tokens, --temperature, --top-p, --top-k, --top-n,
    --seed (what the sampler's generate received), --answer-mode (what the verifier received), --workers
    (what rollout received), --dtype and --device (what load_model received), --no-plot (no PNG),
    --no-progress (no progress bar on stderr)."""
    probs = data.load_dataset("synthetic", limit=5)
    probs[1] = dict(probs[1], problem="1+" * 60 + "1")
    src = problems_file_of(tmp_path / "five.jsonl", probs)
    out = tmp_path / "run"
    gen = Spy(monkeypatch, rollout, "generate", prompts_arg=1)
    ver = Spy(monkeypatch, rollout, "verify")
    ro = Spy(monkeypatch, rollout, "rollout")
    loads, real_load = [], model_module.load_model          # records the device, loads on the CPU
    monkeypatch.setattr(model_module, "load_model", lambda name, device, dtype: loads.append((device, dtype)) or
                        real_load(name, device="cpu", dtype=dtype))
    capsys.readouterr()
    table = ev.main(["--model", str(tiny_dir), "--data", str(src), "--limit", "4", "--max-prompt-tokens", "64",
                     "--n", "4", "--k", "1", "2", "--batch-prompts", "2", "--max-rows", "6", "--max-new-tokens", "20",
                     "--temperature", "0.8", "--top-p", "0.9", "--top-k", "5", "--top-n", "2", "--seed", "5",
                     "--answer-mode", "strict", "--workers", "1", "--dtype", "bfloat16", "--device", "cpu:0",
                     "--out", str(out), "--no-plot", "--no-progress"])
    cap = capsys.readouterr()
    recs = ev.read_samples(out / "samples" / "five.jsonl")
    assert [r["id"] for r in recs] == [probs[i]["id"] for i in (0, 2, 3)]
    assert "five: 1 prompts longer than --max-prompt-tokens 64 skipped" in cap.out
    assert all(r["n"] == 4 and len(r["cand"]["topn_probs"]) == 2 for r in recs)
    assert sorted(k for k in table["five"] if k.startswith("pass@")) == ["pass@1", "pass@2"]
    assert [c["n_prompts"] for c in gen.calls] == [2, 1]
    for c in gen.calls:
        assert (c["n_samples"], c["max_new_tokens"], c["temperature"], c["top_p"], c["top_k"], c["top_n"],
                c["seed"], c["slots"]) == (4, 20, 0.8, 0.9, 5, 2, 5, 6)
    assert ver.calls and {c["mode"] for c in ver.calls} == {"strict"}
    assert {(c["workers"], c["answer_mode"], c["truncated_scores_zero"]) for c in ro.calls} == {(1, "strict", False)}
    assert loads == [("cpu:0", torch.bfloat16)]
    assert not list(out.glob("*.png")) and "problem" not in cap.err


def test_eval_plot_progress_and_data_dir(tiny_dir, tmp_path, monkeypatch, capsys):
    """The defaults the flags above switch off: a pass@K plot is written and a progress bar shown. A named
    benchmark is read from --data-dir (the default data folder is empty here). Without --batch-prompts,
    --max-rows 2 with --n 2 samples one problem per sampler call."""
    pytest.importorskip("matplotlib")
    monkeypatch.setenv("CASP_DATA", str(tmp_path / "empty"))
    folder = tmp_path / "data"
    folder.mkdir()
    problems_file_of(folder / "math500.jsonl", data.load_dataset("synthetic", limit=2))
    gen = Spy(monkeypatch, rollout, "generate", prompts_arg=1)
    capsys.readouterr()
    table = ev.main(["--model", str(tiny_dir), "--data", "math500", "--data-dir", str(folder), "--n", "2",
                     "--max-new-tokens", "8", "--workers", "1", "--max-rows", "2", "--out", str(tmp_path / "run")])
    assert table["math500"]["problems"] == 2
    assert [c["n_prompts"] for c in gen.calls] == [1, 1]      # default --batch-prompts: max(1, max_rows // n)
    assert (tmp_path / "run" / "passk.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "math500: 100%" in capsys.readouterr().err


def test_dtype_bfloat16_runs_the_training_forward_under_autocast(tiny_dir, problems_file):
    """--dtype bfloat16: the training forward (old log-probs and the loss) runs under bf16 autocast. Its
    log-probs equal a plain forward under torch.autocast(bfloat16), the output layer on bf16 operands
    accumulated in float32, then a float32 log-softmax (within
    1e-5; 0 when written), and differ from the float32 forward (--dtype float32) by bf16's rounding (up to
    0.24 when written)."""
    import torch.nn.functional as F
    from test_train import rollout_batch
    model, batch, args = rollout_batch(tiny_dir, problems_file)
    rows = torch.ones(batch.seq.shape[0], dtype=torch.bool)
    old = {}
    for dtype in ("float32", "bfloat16"):
        args.dtype = dtype
        old[dtype] = train.old_logprobs(model, batch, rows, train.step_config(args), train.Dist())
    mask = batch.resp_mask[:, 1:]                                                          # (R, S-1)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        hidden = model(batch.seq[:, :-1], return_hidden=True)                              # (R, S-1, D) bf16
    # the loss's output layer takes bf16 operands with float32 accumulation (casp.matmul_float)
    logits = hidden.bfloat16().float() @ model.output_weight.T.bfloat16().float()          # (R, S-1, V)
    want = F.log_softmax(logits, -1).gather(-1, batch.seq[:, 1:, None]).squeeze(-1)        # (R, S-1)
    got = old["bfloat16"][:, 1:]
    gap = (old["bfloat16"] - old["float32"])[:, 1:][mask].abs()
    print(f"bf16 vs float32 old log-probs: max {gap.max():.2e}, mean {gap.mean():.2e}; "
          f"vs the autocast reference: max {(got - want)[mask].abs().max():.2e}")
    assert (got - want)[mask].abs().max() < 1e-5 and gap.max() > 1e-2
