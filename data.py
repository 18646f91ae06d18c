"""
data.py: problems in, prompt token ids out.

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

The synthetic task of the CPU demo (name `synthetic`) lives in tiny.py with the tiny model.

Departures: MATH500's file wraps each problem as "Question:\\n...\\nAnswer:\\nLet's think step by
step.\\n"; that wrapper is removed (no other benchmark has it, and it would precede our own instruction).
"""
from __future__ import annotations

import json
import os
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
        import tiny  # the task lives with the tiny model that learns it
        probs = tiny.synthetic_problems(500 if name == "synthetic" else 5000, seed=0,
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
