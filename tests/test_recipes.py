"""The authors' runs as train.py reproduces them, and every method through the training loop: the recipe
resolves every value of the authors' scripts (config printed by --dry-run, the same dict config.json
holds), --epochs with drop-last gives their step count, the authors' prompt is their string byte for byte,
every --loss trains a step on the tiny model, --truncated-reward and greedy held-out validation reach the
rollout, and A = 0 rows are skipped only where the method allows it.

About 2 minutes on 2 CPU cores (most of it the dry run encoding the 7,500 MATH prompts).
"""
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import data
import train
from casp import METHODS, LossConfig
from model import load_model, load_tokenizer

pytestmark = pytest.mark.usefixtures("one_thread")
ROOT = Path(__file__).resolve().parent.parent

# Verbatim from CLR-Lab/SimKO @ 306f4ff4e84ace53e92501939692fcfeb32596b5, verl/utils/dataset/rl_dataset.py
# (prompt_template_type == 'qwen', the default of their ppo_trainer.yaml, used by all four run scripts):
AUTHORS_TEMPLATE = "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n{input}\nPlease reason step by step, and put your final answer within \\boxed{}.<|im_end|>\n<|im_start|>assistant\n"


def test_authors_prompt_is_their_string_byte_for_byte(qwen_tokenizer_dir):
    """--prompt-format authors renders exactly their template with the problem in place of {input} (their
    rl_dataset.py: str.replace), encoded as verl encodes it (no added special tokens), for every model;
    the template format renders the model's own (here the built-in ChatML, no system message)."""
    tok = load_tokenizer(qwen_tokenizer_dir)
    prob = {"problem": "Let $f(x) = x^2$. Find $f(3)$ {not a field}.", "answer": "9", "task": "math"}
    ids = data.build_prompt(prob, tok, "authors")
    want = AUTHORS_TEMPLATE.replace("{input}", prob["problem"])
    assert tok.decode(ids, skip_special_tokens=False) == want
    assert ids == tok.tok.encode(want, add_special_tokens=False).ids
    assert ids[0] == tok.token_to_id("<|im_start|>")
    own = tok.decode(data.build_prompt(prob, tok), skip_special_tokens=False)
    assert "system" not in own and own != want
    assert data.prompt_source(tok, "authors").startswith("authors")


def dry_run(args, tmp_path):
    r = subprocess.run([sys.executable, str(ROOT / "train.py"), *args, "--dry-run", "--device", "cpu",
                        "--out", str(tmp_path / "never")], capture_output=True, text=True, cwd=ROOT, timeout=900,
                       env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)})
    assert r.returncode == 0, r.stderr[-3000:]
    line = next(x for x in r.stdout.splitlines() if x.startswith("config: "))
    return json.loads(line[len("config: "):]), r.stdout


def test_recipe_authors_qwen7b_sets_every_value_of_their_script(qwen_tokenizer_dir, data_dir, tmp_path):
    """`--recipe authors-qwen7b --init random`: every value of run_qwen2.5-math-7b_{grpo,SimKO}.sh (and
    the verl defaults they inherit) in the logged config, 20 epochs of 7 steps = 140 steps on MATH train
    at 1024 prompts (drop-last), their ChatML prompt; the CaSP run detaches the entropy (coefficient 0)
    and validates every 14 steps; --model qwen-1.5b changes the model only. Nothing is written."""
    d = tmp_path / "data"
    d.mkdir()
    for name in ("math_train", "aime2025", "amc23"):
        shutil.copy(data_dir / f"{name}.jsonl", d / f"{name}.jsonl")
    shutil.copy(data_dir / "math500.jsonl", d / "math_test.jsonl")   # a stand-in: only its presence matters
    base = ["--recipe", "authors-qwen7b", "--init", "random", "--tokenizer", str(qwen_tokenizer_dir),
            "--data-dir", str(d)]
    cfg, out = dry_run(base + ["--loss", "grpo"], tmp_path)
    theirs = {  # run_qwen2.5-math-7b_grpo.sh, then verl's ppo_trainer.yaml for what it does not set
        "model": "qwen-7b", "data": "math_train", "heldout": ["math_test", "aime2025", "amc23"],
        "prompt_format": "authors", "prompts_per_step": 1024, "max_prompt_len": 1024, "max_response_len": 3072,
        "lr": 1e-6, "mini_batches": 4, "group_size": 8, "epochs": 20, "steps": 140, "eval_every": 7,
        "save_every": 7, "entropy_coeff": 0.001, "truncated_reward": "grade", "eval_decoding": "greedy",
        "clip_eps": 0.2, "grad_clip": 1.0, "weight_decay": 0.01, "temperature": 1.0, "top_p": 1.0,
        "loss": "grpo", "recipe": "authors-qwen7b", "no_std_norm": False, "clip_eps_high": None,
    }
    assert {k: cfg[k] for k in theirs} == theirs
    assert "7489 training prompts (7 over --max-prompt-len skipped), 140 steps" in out and "authors" in out
    assert not (tmp_path / "never").exists()
    casp_cfg, _ = dry_run(base + ["--loss", "casp"], tmp_path)   # run_qwen2.5-math-7b_SimKO.sh
    assert {k: casp_cfg[k] for k in ("entropy_coeff", "eval_every", "top_n", "alpha", "entropy_quantile",
                                     "neg_scale", "steps")} == \
        {"entropy_coeff": 0.0, "eval_every": 14, "top_n": 3, "alpha": 0.01, "entropy_quantile": 0.8,
         "neg_scale": 1.1, "steps": 140}
    small, _ = dry_run(base + ["--loss", "grpo", "--model", "qwen-1.5b"], tmp_path)
    assert {k: v for k, v in small.items() if small[k] != cfg[k]} == {"model": "qwen-1.5b"}


def test_llama_recipe_and_explicit_flags_win():
    """authors-llama3b: Llama-3.2-3B-Instruct on their GSM8K + MATH level-1 set, no entropy bonus for any
    loss, validation and checkpoints every 8 steps; an explicit flag beats the recipe; --help lists both
    recipes and the values they set."""
    a = train.get_args(["--recipe", "authors-llama3b", "--loss", "grpo"])
    assert (a.model, a.data, a.entropy_coeff, a.eval_every, a.save_every, a.epochs, a.prompt_format) == \
        ("llama-3b", "simplelr_gsm8k_level1", 0.0, 8, 8, 20, "authors")
    a = train.get_args(["--recipe", "authors-llama3b", "--prompts-per-step", "64", "--truncated-reward", "zero"])
    assert (a.prompts_per_step, a.truncated_reward, a.max_response_len) == (64, "zero", 3072)
    text = " ".join(train.get_parser().format_help().split())
    assert "authors-qwen7b" in text and "authors-llama3b" in text and "--recipe authors-qwen7b: grade" in text
    assert all(name in text for name in METHODS)


def test_prompt_stream_drops_the_last_partial_batch():
    """Each epoch is one seeded permutation cut into floor(n / k) steps; the rest of it is dropped and a
    step never mixes two epochs (verl's drop_last); a set smaller than a step wraps around."""
    s = train.PromptStream(10, seed=3)
    steps = [s.take(3) for _ in range(9)]
    for e in range(3):
        flat = [i for st in steps[3 * e:3 * e + 3] for i in st]
        ref = train.PromptStream(10, seed=3)
        ref.epoch = e
        assert len(set(flat)) == 9 and flat == ref._order()[:9].tolist()
    assert s.state_dict() == {"epoch": 2, "pos": 9}
    small = train.PromptStream(3, seed=0)
    assert sorted(small.take(5)[:3]) == [0, 1, 2]


@pytest.mark.parametrize("loss", list(METHODS))
def test_every_method_trains_a_step(tiny_dir, problems_file, tmp_path, loss):
    """`--loss NAME` (and the entropy bonus with it) runs a training step on the tiny model: finite
    gradient norm, the method's own metrics logged, config.json records the loss and its settings."""
    out = tmp_path / loss
    extra = ["--entropy-coeff", "0.01"] if loss in ("grpo", "kl-cov") else []
    train.main(["--model", str(tiny_dir), "--data", str(problems_file), "--heldout", str(problems_file),
                "--out", str(out), "--steps", "1", "--prompts-per-step", "4", "--mini-batches", "2",
                "--group-size", "4", "--max-response-len", "24", "--max-prompt-len", "64", "--lr", "1e-3",
                "--eval-every", "0", "--save-every", "0", "--device", "cpu", "--dtype", "float32", "--loss", loss,
                "--passk-k", "2", "--kl-cov-k", "0.05", "--clip-cov-r", "0.05", *extra])
    m = json.loads((out / "metrics.jsonl").read_text())
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["loss"] == loss and cfg["passk_k"] == 2
    assert m["n_tokens"] > 0 and m["frac_mixed_groups"] > 0   # seed 0: some groups have mixed rewards
    assert 0 < m["grad_norm"] < float("inf") and m["nan_skipped"] == 0
    assert ("cov_selected_frac" in m) == (loss in ("kl-cov", "clip-cov"))


def test_truncated_reward_and_greedy_validation_reach_the_rollout(tiny_dir, problems_file, monkeypatch):
    """--truncated-reward decides the rollout's truncated_scores_zero in training and validation; greedy
    validation decodes one response per problem at temperature 0; several held-out sets give a pass@1 per
    set and one over all their problems (weighted by problems)."""
    calls = []
    real = train.rollout

    def spy(*a, **kw):
        calls.append((a[3], kw["temperature"], kw["truncated_scores_zero"]))
        return real(*a, **kw)

    monkeypatch.setattr(train, "rollout", spy)
    tok = load_tokenizer(tiny_dir)
    held, _ = data.encode_prompts(data.load_jsonl(problems_file), tok, 64)
    model = load_model(tiny_dir)
    for flag, zero in (("grade", False), ("zero", True)):
        args = train.get_args(["--model", str(tiny_dir), "--truncated-reward", flag, "--eval-decoding", "greedy",
                               "--max-response-len", "40"])
        m = train.heldout_metrics(model, tok, {"a": held[:1], "b": held[1:]}, train.step_config(args), n=8, seed=0)
        assert calls[-1] == (1, 0.0, zero) and calls[-2] == (1, 0.0, zero)
        assert set(m) == {"heldout_a_pass@1", "heldout_b_pass@1", "heldout_pass@1"}
        assert m["heldout_pass@1"] == pytest.approx((m["heldout_a_pass@1"] + 3 * m["heldout_b_pass@1"]) / 4)
        ro = real(model, tok, held, 1, max_new_tokens=40, temperature=0.0, answer_mode="strict",
                  truncated_scores_zero=zero)
        assert m["heldout_pass@1"] == pytest.approx(float(ro.rewards.mean()))


def test_zero_advantage_rows_are_skipped_only_where_the_method_allows():
    """train.loss_rows: rows with A = 0 leave the forward/backward for GRPO-like methods, but stay for
    KL-Cov, Clip-Cov (their covariance and token budget count every token) and with the entropy bonus."""
    adv = torch.tensor([0.5, 0.0, -0.5, 0.0])
    assert train.loss_rows(adv, LossConfig(loss="grpo")).tolist() == [True, False, True, False]
    assert train.loss_rows(adv, LossConfig(loss="entropy-adv")).tolist() == [True, False, True, False]
    assert train.loss_rows(adv, LossConfig(loss="clip-cov")).tolist() == [True] * 4
    assert train.loss_rows(adv, LossConfig(loss="grpo", entropy_coeff=0.001)).tolist() == [True] * 4
