"""
data.py: problems in, prompt token ids out; plus the built-in synthetic task of the CPU demo.

A problem is a dict with at least
    problem   the question text shown to the model
    answer    the gold final answer (a string) the verifier compares against
    task      "math" | "code" | "logic": which verifier branch scores it (verifier.reward's `task`)
    id        a stable name ("math500/17"); eval.py keys its resumable sample files on it
and whatever extra fields the verifier needs, passed through unchanged (HumanEval: prompt, test,
entry_point; knights-and-knaves: names, solution, terms; OlympiadBench: unit, multiple_answers).

Files are JSONL, one problem per line, in the format of the project's data layout (../shared/data):

    name            file                 task    where a user gets it (convert to JSONL: problem, answer)
    math500         math500.jsonl        math    HuggingFaceH4/MATH-500
    math_train      math_train.jsonl     math    MATH train split (hendrycks/competition_math), answer = last \\boxed{}
    aime2024 ...    aime2024.jsonl       math    ... see DATA_SOURCES below
    humaneval       humaneval.jsonl      code    openai/openai_humaneval (problem = prompt)
    knights_knaves  knights_knaves.jsonl logic   reasoning-gym (knights_knaves), 3 people
    zebra_puzzles   zebra_puzzles.jsonl  logic   reasoning-gym (zebra_puzzles)
    synthetic       (built in)           math    the arithmetic task below; nothing to download

The data folder is $CASP_DATA, else ../shared/data next to the repository.

Prompt (CASP.md): the model's chat template with one user turn = problem + an instruction. Math and logic
ask for step-by-step reasoning and a final \\boxed{} answer (the Qwen2.5-Math instruction); code asks for
the completed function in a ```python block. A problem may carry its own `instruction` (the synthetic task
does: an empty one, see below). No system message is inserted.

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

Departures: MATH500's file wraps each problem as "Question:\\n...\\nAnswer:\\nLet's think step by
step.\\n"; that wrapper is removed (no other benchmark has it, and it would precede our own instruction).
"""
from __future__ import annotations

import hashlib
import json
import os
import random
import re
from pathlib import Path

# -----------------------------------------------------------------------------
# Datasets by name

# name -> (task, where to get it). The file is always <data_dir>/<name>.jsonl.
DATA_SOURCES: dict[str, tuple[str, str]] = {
    "math500": ("math", "HuggingFaceH4/MATH-500 (fields problem, answer)"),
    "math_train": ("math", "MATH train split, hendrycks/competition_math; answer = last \\boxed{} of the solution"),
    "aime2024": ("math", "AI-MO/aimo-validation-aime or Maxwell-Jia/AIME_2024 (AIME 2024 I and II)"),
    "aime2025": ("math", "opencompass/AIME2025 (AIME 2025 I and II)"),
    "amc23": ("math", "AI-MO/aimo-validation-amc (AMC 12 2023)"),
    "minerva_math": ("math", "Minerva OCWCourses (e.g. math-ai/minervamath); answer = last \\boxed{}"),
    "olympiadbench": ("math", "Hothan/OlympiadBench, OE_TO_maths_en_COMP (fields unit, multiple_answers)"),
    "gsm8k_test": ("math", "openai/gsm8k test; answer = the number after ####"),
    "gsm8k_train": ("math", "openai/gsm8k train; answer = the number after ####"),
    "humaneval": ("code", "openai/openai_humaneval (fields prompt, test, entry_point; problem = prompt)"),
    "knights_knaves": ("logic", "reasoning-gym knights_knaves (fields names, solution, terms)"),
    "zebra_puzzles": ("logic", "reasoning-gym zebra_puzzles (answer = one name)"),
}
# fields the verifier needs beyond problem/answer, per task
TASK_FIELDS = {"math": (), "logic": (), "code": ("prompt", "test", "entry_point")}

MATH_INSTRUCTION = "Please reason step by step, and put your final answer within \\boxed{}."
CODE_INSTRUCTION = ("Complete the following Python function. Reply with the complete function "
                    "(signature included) in a ```python code block.")
INSTRUCTIONS = {"math": MATH_INSTRUCTION, "logic": MATH_INSTRUCTION, "code": CODE_INSTRUCTION}


def default_data_dir() -> Path:
    """$CASP_DATA, else the ../shared/data layout next to the repository."""
    if os.environ.get("CASP_DATA"):
        return Path(os.environ["CASP_DATA"])
    return Path(__file__).resolve().parent.parent / "shared" / "data"


def load_jsonl(path, required=("problem", "answer")) -> list[dict]:
    """One dict per non-blank line. Errors name the file and the 1-based line number."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: data file not found")
    rows = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{lineno}: malformed JSON ({e.msg} at column {e.colno})") from None
            if not isinstance(row, dict):
                raise ValueError(f"{path}:{lineno}: expected a JSON object, got {type(row).__name__}")
            missing = [k for k in required if k not in row]
            if missing:
                raise ValueError(f"{path}:{lineno}: missing field(s) {', '.join(map(repr, missing))} "
                                 f"(has: {', '.join(row)})")
            for k in ("problem", "answer"):
                if k in required and not isinstance(row[k], str):
                    if k == "answer" and isinstance(row[k], (int, float)) and not isinstance(row[k], bool):
                        row[k] = str(row[k])   # a numeric gold answer is common in hand-made files
                    else:
                        raise ValueError(f"{path}:{lineno}: field {k!r} must be a string, "
                                         f"got {type(row[k]).__name__}")
            row["_line"] = lineno
            rows.append(row)
    if not rows:
        raise ValueError(f"{path}: empty dataset (no problems)")
    return rows


_MATH500_WRAPPER = re.compile(r"^Question:\n(.*)\nAnswer:\nLet's think step by step\.\n?\Z", re.S)


def clean_problem(text: str) -> str:
    """Remove a file's own prompt wrapper (MATH500's "Question: ... Answer: Let's think step by step.")."""
    m = _MATH500_WRAPPER.match(text)
    return m.group(1).strip() if m else text


def load_dataset(name_or_path, data_dir=None, limit: int | None = None) -> list[dict]:
    """Problems of a named benchmark (see DATA_SOURCES), the built-in `synthetic` task, or a JSONL path.

    `synthetic` is the held-out split of the synthetic task (500 problems, seed 0); `synthetic_train` its
    train split (5000 problems). The task comes from each row's `task` field, else from the name
    (humaneval: code; knights_knaves, zebra_puzzles: logic), else math.
    """
    name = str(name_or_path)
    if name in ("synthetic", "synthetic_train"):
        probs = synthetic_problems(500 if name == "synthetic" else 5000, seed=0,
                                   split="heldout" if name == "synthetic" else "train")
        return probs[:limit] if limit else probs
    p = Path(os.path.expanduser(name))
    if p.suffix == ".jsonl" or p.is_file() or os.sep in name:
        path, stem = p, p.stem
    else:
        if name not in DATA_SOURCES:
            raise ValueError(f"unknown dataset {name!r}: use one of {', '.join(DATA_SOURCES)}, "
                             "'synthetic', or a path to a .jsonl file")
        folder = Path(data_dir) if data_dir else default_data_dir()
        path, stem = folder / f"{name}.jsonl", name
        if not path.is_file():
            raise FileNotFoundError(
                f"{path}: dataset {name!r} not found. Put the data folder there, set $CASP_DATA or pass "
                f"--data-dir. Source: {DATA_SOURCES[name][1]}; format: JSONL, one object per line with "
                f"'problem' and 'answer' (strings) plus the verifier's fields.")
    default_task = DATA_SOURCES.get(stem, ("math", ""))[0]
    rows = load_jsonl(path)
    out = []
    for row in rows:
        task = row.get("task", default_task)
        if task not in TASK_FIELDS:
            raise ValueError(f"{path}:{row['_line']}: unknown task {task!r} (expected math, code or logic)")
        missing = [k for k in TASK_FIELDS[task] if k not in row]
        if missing:
            raise ValueError(f"{path}:{row['_line']}: a {task} problem needs field(s) "
                             f"{', '.join(map(repr, missing))}")
        prob = {k: v for k, v in row.items() if k != "_line"}
        prob["problem"] = clean_problem(prob["problem"])
        prob["task"] = task
        prob.setdefault("id", f"{stem}/{row['_line']}")
        prob["id"] = str(prob["id"])
        out.append(prob)
    return out[:limit] if limit else out


# -----------------------------------------------------------------------------
# Prompts


def build_prompt(problem: dict, tokenizer) -> list[int]:
    """Token ids of the chat prompt: one user turn = problem + instruction, then the assistant header."""
    task = problem.get("task", "math")
    instruction = problem.get("instruction", INSTRUCTIONS.get(task, MATH_INSTRUCTION))
    text = problem["problem"]
    if task == "code" and "```" not in text:
        text = f"```python\n{text.rstrip()}\n```"
    content = f"{text}\n{instruction}" if instruction else text
    return tokenizer.encode_chat([{"role": "user", "content": content}])


def encode_prompts(problems: list[dict], tokenizer, max_prompt_tokens: int | None = None):
    """(problems with a `prompt_ids` field, number skipped): prompts over the limit are skipped and
    counted, never fatal (CASP.md: max prompt 1024)."""
    kept, skipped = [], 0
    for prob in problems:
        ids = build_prompt(prob, tokenizer)
        if max_prompt_tokens is not None and len(ids) > max_prompt_tokens:
            skipped += 1
            continue
        kept.append(dict(prob, prompt_ids=ids))
    return kept, skipped


def verifier_fields(problem: dict) -> dict:
    """The keyword fields verifier.verify(response, answer, task, **fields) gets for this problem."""
    drop = ("answer", "task", "prompt_ids", "instruction", "id", "split")
    return {k: v for k, v in problem.items() if k not in drop}


# -----------------------------------------------------------------------------
# The synthetic arithmetic task

SYNTH_INSTRUCTION = ""        # the tiny model learns the \\boxed{} format from its warm start
SYNTH_HELDOUT_EVERY = 8       # 1 in 8 expressions (by hash) is held out


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
    tmp = path / "tokenizer.json.tmp"
    tok.save(str(tmp))
    os.replace(tmp, path / "tokenizer.json")
    return load_tokenizer(path)
