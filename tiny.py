"""
tiny.py: the CPU demo: the built-in synthetic task, its character-level tokenizer, the tiny model's
supervised warm start, and everything `python train.py` (--model tiny) does differently from a run on a
real model (DEMO_DEFAULTS, the built-in task's problems, the warm start when the model is not cached,
the held-out lines before and after training).

The synthetic task (the CPU demo's stand-in for MATH): an expression of 3 or 4 one-digit operands joined
by + (and by * too with ops="+*"), with an integer value of at most 99, e.g. "3+4+5+7". A worked solution
rewrites the expression one operation at a time, one line per step, and ends with the boxed value:

    =3+9+7
    =12+7
    =19
    \\boxed{19}

At each step ANY legal pair may be combined: two factors of one product, or two terms of the sum once
both are plain numbers (the result takes the left one's place). So "2+3+4" has 3 solutions
("=5+4", "=6+3", "=2+7", ...): a policy can be right along several paths, which is what pass@K with
K > 1 measures and what CaSP's top-N candidates are meant to keep alive. Every intermediate value is at
most the final value (positive operands, + and *), so all numbers stay below 100. The demo uses + only:
the tiny model (0.8M parameters) learns the 3-4 operand sums in a 2-minute warm start to held-out
pass@1 0.35 and pass@8 0.98 (measured, seed 0), leaving room for RL; with * it must also learn a
multiplication table and starts far lower.
Its prompt is the bare expression (no instruction): the warm start teaches the answer format, and an
instruction would add a third to the compute of every sequence.
The held-out split is fixed by a hash of the expression (1 in 8 expressions), so train and held-out
never share a problem, whatever the seeds.

The tiny model's tokenizer is character-level (tokenizers' WordLevel over single characters): 60
characters (digits, lowercase letters, 24 symbols incl. space and newline) + <|unk|> + the ChatML specials
<|im_start|>, <|im_end|>, <|endoftext|> = 64 ids, exactly the tiny config's vocab_size. Any text made of those characters round-trips exactly.
"""
from __future__ import annotations

import copy
import hashlib
import math
import random
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from cli import atomic_path
from model import MODEL_NAMES, Transformer, casp_home, save_model

# -----------------------------------------------------------------------------
# The synthetic arithmetic task

SYNTH_INSTRUCTION = ""        # the tiny model learns the \\boxed{} format from its warm start
SYNTH_HELDOUT_EVERY = 8       # 1 in 8 expressions (by hash) is held out
SYNTH_RESPONSE_TOKENS = 48    # response length limit of the task (demo training, eval): the longest worked
                              # solution is 30 tokens with its stop token; the rest is room to wander


def _split_of(expr: str) -> str:
    h = int.from_bytes(hashlib.blake2b(expr.encode(), digest_size=8).digest(), "little")
    return "heldout" if h % SYNTH_HELDOUT_EVERY == 0 else "train"


def _parse(expr: str) -> list[list[int]]:
    """'3+4*5' -> [[3], [4, 5]]: a sum of products."""
    return [[int(f) for f in term.split("*")] for term in expr.split("+")]


def _render(terms: list[list[int]]) -> str:
    return "+".join("*".join(map(str, t)) for t in terms)


def _value(terms) -> int:
    total = 0
    for t in terms:
        prod = 1
        for f in t:
            prod *= f
        total += prod
    return total


def synthetic_problems(n: int, seed: int = 0, split: str = "train", operands=(3, 4), max_operand: int = 9,
                       max_value: int = 99, ops: str = "+") -> list[dict]:
    """`n` distinct problems of one split, deterministic in (n, seed, split). Raises if the split has
    fewer than n distinct expressions under the given limits."""
    if split not in ("train", "heldout"):
        raise ValueError(f"split={split!r}: expected 'train' or 'heldout'")
    rng = random.Random(f"casp-synthetic/{seed}/{split}")
    seen, out, tries = set(), [], 0
    while len(out) < n:
        tries += 1
        if tries > 200 * n + 100_000:
            raise ValueError(f"only {len(out)} distinct {split} problems found under the limits (wanted {n})")
        k = rng.choice(operands)
        nums = [rng.randint(1, max_operand) for _ in range(k)]
        signs = [rng.choice(ops) for _ in range(k - 1)]
        expr = str(nums[0]) + "".join(o + str(x) for o, x in zip(signs, nums[1:]))
        if expr in seen or _split_of(expr) != split:
            continue
        value = _value(_parse(expr))
        if value > max_value:
            continue
        seen.add(expr)
        out.append({"id": f"synthetic/{expr}", "problem": expr, "answer": str(value), "task": "math",
                    "instruction": SYNTH_INSTRUCTION, "split": split})
    return out


def _legal_steps(terms: list[list[int]]) -> list[tuple]:
    """Every legal single operation: ('*', term, i, j) multiplies factors i<j of one product,
    ('+', i, j) adds terms i<j that are both plain numbers."""
    steps = [("*", t, i, j) for t, fs in enumerate(terms) for i in range(len(fs)) for j in range(i + 1, len(fs))]
    plain = [t for t, fs in enumerate(terms) if len(fs) == 1]
    steps += [("+", a, b) for x, a in enumerate(plain) for b in plain[x + 1:]]
    return steps


def _apply(terms, step):
    terms = [list(t) for t in terms]
    if step[0] == "*":
        _, t, i, j = step
        terms[t][i] *= terms[t][j]
        del terms[t][j]
    else:
        _, a, b = step
        terms[a][0] += terms[b][0]
        del terms[b]
    return terms


def synthetic_solution(problem: dict, rng: random.Random) -> str:
    """A random valid worked solution: one legal operation per line, then \\boxed{value}."""
    terms = _parse(problem["problem"])
    lines = []
    while True:
        steps = _legal_steps(terms)
        if not steps:
            break
        terms = _apply(terms, rng.choice(steps))
        lines.append("=" + _render(terms))
    value = _value(terms)
    lines.append(f"\\boxed{{{value}}}")
    return "\n".join(lines)


def synthetic_solutions(problem: dict) -> list[str]:
    """All distinct valid worked solutions of a problem (for tests and the theory check)."""
    out = []

    def walk(terms, lines):
        steps = _legal_steps(terms)
        if not steps:
            out.append("\n".join(lines + [f"\\boxed{{{_value(terms)}}}"]))
        for s in steps:
            nxt = _apply(terms, s)
            walk(nxt, lines + ["=" + _render(nxt)])

    walk(_parse(problem["problem"]), [])
    return sorted(set(out))


# -----------------------------------------------------------------------------
# The tiny model's character-level tokenizer

TINY_CHARS = ("0123456789abcdefghijklmnopqrstuvwxyz" + " \n\\{}()[]+-*/^=<>.,:?$_'")
TINY_SPECIALS = ["<|im_start|>", "<|im_end|>", "<|endoftext|>"]
TINY_UNK = "<|unk|>"


def make_tiny_tokenizer(path):
    """Write a character-level tokenizer.json to the folder `path` and return it loaded with
    model.load_tokenizer (chat format chatml, stop ids <|im_end|> and <|endoftext|>).

    ids: 0..59 the characters of TINY_CHARS, 60 <|unk|>, 61..63 the ChatML specials; 64 ids in all.
    """
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers

    from model import load_tokenizer

    vocab = {c: i for i, c in enumerate(TINY_CHARS)}
    vocab[TINY_UNK] = len(vocab)
    tok = Tokenizer(models.WordLevel(vocab, unk_token=TINY_UNK))
    # every character is its own piece (newlines included); Fuse joins them back without separators
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    tok.decoder = decoders.Fuse()
    tok.add_special_tokens(TINY_SPECIALS)
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    with atomic_path(path / "tokenizer.json") as tmp:
        tok.save(str(tmp))
    return load_tokenizer(path)


def prompt_ids(problem: dict, tokenizer) -> list[int]:
    """The prompt of a synthetic problem: one user turn holding the bare expression, in the tokenizer's
    chat format. It is data.build_prompt's for the task (its instruction is empty, SYNTH_INSTRUCTION) in
    the default prompt format, which tests/test_tiny.py checks."""
    return tokenizer.encode_chat([{"role": "user", "content": problem["problem"]}])


# -----------------------------------------------------------------------------
# The tiny demo model: a short supervised warm start so that it solves some problems


def warm_start_tiny(path: Path, steps: int, seed: int, device, task: dict | None = None,
                    model_overrides: dict | None = None, batch: int = 64, lr: float = 3e-3,
                    n_problems: int = 5000) -> None:
    """Train the tiny model on worked solutions of the synthetic task (next-token cross-entropy on the
    response), then save it with its tokenizer to `path`. RL needs a policy that is sometimes right.

    task: keyword arguments of synthetic_problems (operands, max_operand, max_value, ops) for a variant
    of the task (miniature.py's); model_overrides: fields of the tiny ModelConfig to change (e.g. fewer
    layers). The solutions combine a uniformly random legal pair at every line, so the warm start keeps
    real alternatives at the first lines (the task's forks)."""
    torch.manual_seed(seed)
    with atomic_path(path) as tmp:   # the model folder appears whole, or not at all
        tokenizer = make_tiny_tokenizer(tmp)
        config = copy.deepcopy(MODEL_NAMES["tiny"][1])
        config.vocab_size = tokenizer.vocab_size
        for k, v in (model_overrides or {}).items():
            setattr(config, k, v)
        model = Transformer(config).to(device)
        model.init_weights(generator=torch.Generator(device=device).manual_seed(seed))
        opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
        rng = random.Random(seed)
        problems = synthetic_problems(n_problems, seed=seed, split="train", **(task or {}))
        end = tokenizer.stop_ids[0]
        bar = tqdm(range(steps), desc="warm start (supervised)", leave=False)
        for it in bar:
            rows, masks = [], []
            for prob in rng.sample(problems, batch):
                prompt = prompt_ids(prob, tokenizer)
                answer = tokenizer.encode(synthetic_solution(prob, rng)) + [end]
                rows.append(prompt + answer)
                masks.append([False] * len(prompt) + [True] * len(answer))
            S = max(map(len, rows))
            seq = torch.tensor([r + [0] * (S - len(r)) for r in rows], device=device)            # (B, S)
            m = torch.tensor([k + [False] * (S - len(k)) for k in masks], device=device)         # (B, S)
            logits = model(seq[:, :-1])                                                           # (B, S-1, V)
            loss = F.cross_entropy(logits[m[:, 1:]], seq[:, 1:][m[:, 1:]])
            for group in opt.param_groups:  # cosine decay to 0: the last steps settle the weights
                group["lr"] = lr * 0.5 * (1 + math.cos(math.pi * it / steps))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            bar.set_postfix(loss=f"{loss.item():.3f}")
        save_model(model, tmp)


# -----------------------------------------------------------------------------
# The demo: what train.py does differently for --model tiny

DEMO_MODEL = "tiny"
# The demo's values where they differ from the paper's (a 1M-parameter model learns at lr 1e-6 in no useful
# number of steps). train.py applies them when --model tiny and the flag is not given explicitly.
DEMO_DEFAULTS = dict(lr=2e-4, steps=30, prompts_per_step=32, mini_batches=2,
                     max_response_len=SYNTH_RESPONSE_TOKENS, max_prompt_len=64, micro_batch_tokens=8192,
                     eval_every=0, eval_prompts=64, save_every=0, dtype="float32", weight_decay=0.0)
DEMO_TRAIN_PROBLEMS = 5000     # training problems of the built-in task
DEMO_HELDOUT_SAMPLES = 8       # samples per held-out problem before and after training (pass@1, pass@8)
DEMO_EVAL_SAMPLES = 16         # --n of the eval.py command the demo suggests: 500 held-out problems x 16
                               # samples, pass@1..16, took 42 s on a 2-core CPU shared with other jobs


def is_demo(model) -> bool:
    """Whether a train.py run is the CPU demo: --model tiny, the warm-started model in CASP_HOME/tiny."""
    return str(model) == DEMO_MODEL


def uses_builtin_task(model, data) -> bool:
    """Whether a train.py run trains on the built-in task: the demo without --data."""
    return is_demo(model) and data is None


def demo_problems(seed: int, n_heldout: int) -> tuple[list[dict], dict[str, list[dict]]]:
    """The built-in task of a demo run: its training problems and `n_heldout` held-out ones (the set
    named "synthetic"), both drawn with the run's seed."""
    return (synthetic_problems(DEMO_TRAIN_PROBLEMS, seed=seed, split="train"),
            {"synthetic": synthetic_problems(n_heldout, seed=seed, split="heldout")})


def warm_start_if_missing(model, steps: int, seed: int, device) -> None:
    """--model tiny: train the tiny model (`steps` supervised steps) into CASP_HOME/tiny unless it is
    there already; any other model: nothing."""
    path = casp_home() / DEMO_MODEL
    if is_demo(model) and not (path / "config.json").is_file():
        print(f"[warm start] training the tiny model on the built-in task -> {path}")
        warm_start_tiny(path, steps, seed, device)


def heldout_line(label: str, metrics: dict) -> str:
    """The demo's line before and after training: pass@k over all its held-out problems."""
    return (f"[{label}] held-out "
            + " | ".join(f"{k[8:]} {v:.3f}" for k, v in metrics.items() if k.count("_") == 1))


def explore_line(seed: int, data, top_n: int, command: str) -> str:
    """The demo's last hint: the eval.py command that draws its final held-out evaluation as a page. Its
    built-in held-out set in eval.py (`synthetic`) holds the problems of --seed 0."""
    other = seed != 0 and data is None
    return (f"[explore] every token of {'an' if other else 'this'} evaluation and its top-{top_n} candidates, "
            f"as a page{' (the held-out problems of --seed 0)' if other else ''}: {command}")


