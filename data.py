"""
data.py: problems in, prompt token ids out.

A problem is a dict with at least
    problem   the question text shown to the model
    answer    the gold final answer (a string) the verifier compares against
    task      "math" | "code" | "logic": which verifier branch scores it (verifier.reward's `task`)
    id        a stable name ("math500/17"); eval.py keys its resumable sample files on it
and whatever extra fields the verifier needs, passed through unchanged (HumanEval: prompt, test,
entry_point; knights-and-knaves: names, solution, terms; OlympiadBench: unit, multiple_answers). Rows of
BBH, SynLogic and LiveCodeBench also name their `benchmark` and `subtask` (BBH's task, SynLogic's task type,
LiveCodeBench's difficulty): verifier.verify hands them to benchmarks.py, eval.py reports each subtask.

Files are JSONL, one problem per line, one file per dataset: <data folder>/<name>.jsonl. The data folder
is $CASP_DATA if set, else ~/.cache/casp/data ($CASP_HOME/data); train.py and eval.py take --data-dir,
and a --data value that is a path is read as it is. Nothing else is searched.

`python data.py prepare [NAMES...] [--out DIR] [--from DIR] [--force]` writes the files from their
public sources (SOURCES below; `python data.py sources` lists them with the download commands). A dataset
that cannot be made (no network, a folder missing from --from) does not stop the others: the closing table
says what was and was not written, then one `error:` line and exit status 2.

    name            task    source
    math_train      math    EleutherAI/hendrycks_math, 7 subjects, train (MATH train, the paper's: 7,496 rows
                            of its 7,500; 4 solutions have no \\boxed{} answer)
    math_test       math    EleutherAI/hendrycks_math, 7 subjects, test (MATH test, 5,000: the authors' validation)
    simplelr_gsm8k_level1  math  the authors' Llama training set: GSM8K + MATH level-1, 8,388 rows
                            (SimpleRL-Zoo's simplelr_abel data), their parquet file in CLR-Lab/SimKO
    math500         math    HuggingFaceH4/MATH-500
    aime2024        math    AI-MO/aimo-validation-aime, the 2024 rows (AIME 2024 I and II)
    aime2025        math    opencompass/AIME2025 (AIME 2025 I and II)
    amc23           math    AI-MO/aimo-validation-amc, the 2023 rows
    minerva_math    math    math-ai/minervamath (Minerva OCWCourses)
    olympiadbench   math    Hothan/OlympiadBench, OE_TO_maths_en_COMP (fields unit, multiple_answers)
    gsm8k_train/test math   openai/gsm8k (main); answer = the number after ####
    humaneval       code    openai/openai_humaneval (fields prompt, test, entry_point; problem = prompt)
    knights_knaves  logic   reasoning-gym 0.1.25 knights_knaves, seed 2026, 300 puzzles of 3 people
    zebra_puzzles   logic   reasoning-gym 0.1.25 zebra_puzzles, seed 2026, 200 puzzles (answer: one name)
    bbh             logic   lukaemon/bbh (BIG-Bench Hard), the 27 subtasks, test (6,511; subtask kept per row)
    synlogic        logic   MiniMaxAI/SynLogic, config easy, validation (the task types benchmarks.py can check)
    livecodebench   code    livecodebench/code_generation_lite, release_v6 (1,055; tests decoded beside the file)
    synthetic       math    built in (tiny.py): the CPU demo's task; nothing to download

Prompt (`build_prompt`): one user turn = problem + an instruction. Math and logic ask for step-by-step
reasoning and a final \\boxed{} answer (the Qwen2.5-Math instruction); code asks for the completed function
in a ```python block. A problem may carry its own `instruction` (the synthetic task does: an empty one, see
below). SynLogic questions state their own answer format and LiveCodeBench's problem text is
LiveCodeBench's own prompt (its Qwen template, lcb_runner), so both carry an empty instruction; BBH gets
the logic instruction above. Two formats (`--prompt-format`):
    template   the model's chat template (whatever system message it inserts; built-in ChatML or Llama 3
               headers without a template), no system message of our own
    authors    the authors' fixed ChatML text for every model (their rl_dataset.py, prompt_template_type
               "qwen"): AUTHORS_PROMPT below, byte for byte, encoded without added special tokens

Departures: MATH500's file wraps each problem as "Question:\\n...\\nAnswer:\\nLet's think step by
step.\\n"; that wrapper is removed (no other benchmark has it, and it would precede our own instruction).
"""
from __future__ import annotations

import base64
import contextlib
import gzip
import io
import json
import os
import pickle
import pickletools
import re
import sys
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from cli import ArgumentParser, HelpFormatter, UserError, atomic_path, one_line_errors

# -----------------------------------------------------------------------------
# Datasets by name

# fields the verifier needs beyond problem/answer, per task
TASK_FIELDS = {"math": (), "logic": (), "code": ("prompt", "test", "entry_point")}

MATH_INSTRUCTION = "Please reason step by step, and put your final answer within \\boxed{}."
CODE_INSTRUCTION = ("Complete the following Python function. Reply with the complete function "
                    "(signature included) in a ```python code block.")
INSTRUCTIONS = {"math": MATH_INSTRUCTION, "logic": MATH_INSTRUCTION, "code": CODE_INSTRUCTION}
# rows graded by benchmarks.py: the fields their grader needs instead of the task's (LiveCodeBench also
# needs its tests: `tests` inline or `tests_file`, a path relative to the JSONL file's folder)
BENCHMARK_FIELDS = {"bbh": ("subtask",), "synlogic": ("subtask", "game"), "livecodebench": ("subtask", "test_style")}


# The authors' prompt (CLR-Lab/SimKO @ 306f4ff, verl/utils/dataset/rl_dataset.py, prompt_template_type
# "qwen", used for their Qwen and their Llama runs alike): `{content}` is the problem followed by "\n" and
# the instruction, so for math the text is theirs byte for byte.
AUTHORS_PROMPT = ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n{content}"
                  "<|im_end|>\n<|im_start|>assistant\n")
PROMPT_FORMATS = ("template", "authors")


class DataError(UserError, ValueError):
    """A data file or dataset name that cannot be used; the message names the file and line."""


class DataNotFound(UserError, FileNotFoundError):
    """A data file that is not there; the message says where it was looked for and how to get it."""


def default_data_dir() -> Path:
    """Where datasets are read from and `python data.py prepare` writes them: $CASP_DATA if set, else
    ~/.cache/casp/data ($CASP_HOME/data when $CASP_HOME is set). There is no other fallback."""
    if os.environ.get("CASP_DATA"):
        return Path(os.environ["CASP_DATA"]).expanduser()
    return Path(os.environ.get("CASP_HOME", Path.home() / ".cache" / "casp")).expanduser() / "data"


def _json_int(text: str):
    """JSON integers as Python ints, except those too long for Python to convert (over 4300 digits, the
    interpreter's limit): kept as their digit string, which is what an answer needs."""
    return int(text) if len(text) <= 4300 else text


def load_jsonl(path, required=("problem", "answer")) -> list[dict]:
    """One dict per non-blank line. Errors name the file and the 1-based line number; bytes that are not
    UTF-8 are named with their offset in the file. A numeric field becomes its string where a string is
    required (huge integers keep every digit)."""
    path = Path(path)
    if not path.is_file():
        raise DataNotFound(f"{path}: data file not found")
    rows, offset = [], 0
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            start, offset = offset, offset + len(raw)
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise DataError(f"{path}: not UTF-8 text (byte 0x{raw[e.start]:02x} at offset {start + e.start}, "
                                f"line {lineno})") from None
            if lineno == 1:
                line = line.removeprefix("\ufeff")   # a byte-order mark some editors write
            if not line.strip():
                continue
            try:
                row = json.loads(line, parse_int=_json_int)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}:{lineno}: malformed JSON ({e.msg} at column {e.colno})") from None
            except ValueError as e:   # e.g. a number too large to read
                raise DataError(f"{path}:{lineno}: unreadable JSON ({e})") from None
            if not isinstance(row, dict):
                raise DataError(f"{path}:{lineno}: expected a JSON object, got {type(row).__name__}")
            missing = [k for k in required if k not in row]
            if missing:
                raise DataError(f"{path}:{lineno}: missing field(s) {', '.join(map(repr, missing))} "
                                 f"(has: {', '.join(row)})")
            for k in ("problem", "answer"):
                if k in required and not isinstance(row[k], str):
                    if k == "answer" and isinstance(row[k], (int, float)) and not isinstance(row[k], bool):
                        row[k] = str(row[k])   # a numeric gold answer is common in hand-made files
                    else:
                        raise DataError(f"{path}:{lineno}: field {k!r} must be a string, "
                                         f"got {type(row[k]).__name__}")
            row["_line"] = lineno
            rows.append(row)
    if not rows:
        raise DataError(f"{path}: empty dataset (no problems)")
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
            raise DataError(f"unknown dataset {name!r}: use one of {', '.join(DATA_SOURCES)}, "
                             "'synthetic', or a path to a .jsonl file")
        folder = Path(data_dir) if data_dir else default_data_dir()
        path, stem = folder / f"{name}.jsonl", name
        if not path.is_file():
            raise DataNotFound(
                f"{path}: dataset {name!r} not found. Write it with `python data.py prepare {name}`, or "
                f"point $CASP_DATA or --data-dir at a folder that has it. Source: {DATA_SOURCES[name][1]}")
    default_task = DATA_SOURCES.get(stem, ("math", ""))[0]
    rows = load_jsonl(path)
    out = []
    for row in rows:
        task = row.get("task", default_task)
        if task not in TASK_FIELDS:
            raise DataError(f"{path}:{row['_line']}: unknown task {task!r} (expected math, code or logic)")
        bench = row.get("benchmark")
        missing = [k for k in BENCHMARK_FIELDS.get(bench, TASK_FIELDS[task]) if k not in row]
        if bench == "livecodebench" and "tests" not in row and "tests_file" not in row:
            missing.append("tests' or 'tests_file")
        if missing:
            raise DataError(f"{path}:{row['_line']}: a {bench or task} problem needs field(s) "
                             f"{', '.join(map(repr, missing))}")
        # code is scored by its tests and SynLogic by its puzzle's rules (prepare keeps only rows whose
        # reference verifies), not by the answer string
        if task != "code" and bench != "synlogic" and not row["answer"].strip():
            raise DataError(f"{path}:{row['_line']}: empty answer: the problem could never be scored "
                            "right (it would count as 0 in every reward and pass@k)")
        if not row["problem"].strip():
            raise DataError(f"{path}:{row['_line']}: empty problem")
        prob = {k: v for k, v in row.items() if k != "_line"}
        if prob.get("tests_file") and not os.path.isabs(prob["tests_file"]):
            prob["tests_file"] = str(path.parent / prob["tests_file"])
        prob["problem"] = clean_problem(prob["problem"])
        prob["task"] = task
        prob.setdefault("id", f"{stem}/{row['_line']}")
        prob["id"] = str(prob["id"])
        out.append(prob)
    return out[:limit] if limit else out


# -----------------------------------------------------------------------------
# `python data.py prepare`: every dataset file, written from its public source
#
# Each source row becomes one JSONL row through a small pure function (convert_*), so what a file holds
# can be checked against its source row by row. A converter returns the row, or a string: the reason the
# row is dropped. The rows come from the `datasets` library (network), or with --from DIR from files the
# user downloaded into DIR/<name>/ (parquet, JSON or JSONL; no network):
#     hf download --repo-type dataset <repo> --local-dir DIR/<name>
# The two logic sets are generated by reasoning-gym (a pip package), seed and settings fixed below, so
# every user gets the same puzzles. Optional dependencies: requirements-data.txt.

LOGIC_SEED = 2026                   # reasoning-gym seed of both logic sets
REASONING_GYM_VERSION = "0.1.25"    # the generator version the files were made with (pinned in requirements-data)


@dataclass(frozen=True)
class Source:
    """Where one dataset file comes from: a Hugging Face dataset (repo, configs, split) or reasoning-gym."""
    repo: str                        # HF dataset repo, or "reasoning-gym:<generator>"
    split: str = "train"
    configs: tuple = (None,)         # HF configs read one after the other (None: the default config)
    convert: Callable | None = None  # source row -> JSONL row (dict) or the reason it is dropped (str)
    size: int = 0                    # reasoning-gym: how many puzzles
    settings: tuple = ()             # reasoning-gym: generator settings, (name, value) pairs
    task: str = "math"               # which verifier branch scores its problems
    files: tuple = ()                # only these files of the repo (a release's files), fetched one by one
    row_config: bool = False         # each row carries the config it came from (`_config`, `_index`)
    sidecar: str | None = None       # a bulky field written beside the JSONL, one gzip JSON file per row
    url: str = ""                    # a parquet file to fetch instead of an HF dataset (repo names its home)

    @property
    def about(self) -> str:
        """One line for messages and listings: where the rows come from."""
        if self.url:
            return f"{self.repo}: {self.url}"
        if self.repo.startswith("reasoning-gym:"):
            return (f"reasoning-gym {REASONING_GYM_VERSION} {self.repo.split(':', 1)[1]}, seed {LOGIC_SEED}, "
                    f"{self.size} puzzles, " + ", ".join(f"{k}={v}" for k, v in self.settings))
        configs = ", ".join(c for c in self.configs if c)
        if len(self.configs) > 3:
            configs = f"{len(self.configs)} configs"
        files = f", files {', '.join(self.files)}" if self.files else ""
        return f"{self.repo}{f' ({configs})' if configs else ''}, split {self.split}{files}"


def last_boxed(text: str) -> str | None:
    """Content of the last \\boxed{...} (or \\fbox{...}) with nested braces; None without a closed one."""
    start = max(text.rfind("\\boxed{"), text.rfind("\\fbox{"))
    if start < 0:
        return None
    i = text.index("{", start)
    depth = 0
    for j in range(i, len(text)):
        depth += {"{": 1, "}": -1}.get(text[j], 0)
        if depth == 0:
            return text[i + 1:j].strip()
    return None


def _field(row: dict, *names):
    """The first of `names` the source row has (sources spell their columns differently)."""
    for n in names:
        if row.get(n) is not None:
            return row[n]
    raise KeyError(f"none of the fields {', '.join(names)} (row has: {', '.join(row)})")


def _integer_string(x) -> str:
    """AIME/AMC answers are integers; sources store them as int, float (27.0) or a digit string, kept as it
    is ("045": AIME writes three digits; the verifier reads leading zeros as the same number)."""
    s = str(x).strip()
    return s if s.isdigit() else str(int(float(s)))


def convert_math(row: dict) -> dict | str:
    """MATH (train split and MATH-500): answer = the source's `answer`, else the last \\boxed{} of the
    solution (Hendrycks et al.'s last_boxed_only_string)."""
    answer = row.get("answer") or last_boxed(row["solution"])
    if not answer:
        return "no answer (empty, or no \\boxed{} in the solution)"
    out = {"problem": row["problem"], "answer": answer, "solution": row["solution"],
           "subject": _field(row, "subject", "type"), "level": row.get("level")}
    if row.get("unique_id"):
        out["id"] = row["unique_id"]          # MATH-500 names its problems ("test/algebra/1.json")
    return out


def convert_minerva(row: dict) -> dict | str:
    """Minerva OCWCourses: answer = the source's `answer`, else the last \\boxed{} of the solution."""
    solution = row.get("solution") or ""
    answer = row.get("answer") or last_boxed(solution)
    if not answer:
        return "no answer (empty, or no \\boxed{} in the solution)"
    out = {"problem": _field(row, "problem", "question"), "answer": str(answer)}
    if solution:
        out["solution"] = solution
    if row.get("type") or row.get("subject"):
        out["subject"] = _field(row, "subject", "type")
    return out


def convert_competition(year: str):
    """AIME/AMC rows of one year (the AI-MO validation sets hold several years; the year is in the url).
    Rows without a url (opencompass/AIME2025 holds one year only) are kept. Answer: an integer string."""
    def convert(row: dict) -> dict | str:
        url = row.get("url") or ""
        if url and year not in url:
            return f"not from {year}"
        out = {"problem": _field(row, "problem", "question", "Problem"),
               "answer": _integer_string(_field(row, "answer", "Answer"))}
        if row.get("id") is not None:
            out["source_id"] = row["id"]
        for k in ("solution", "url"):
            if row.get(k):
                out[k] = row[k]
        return out
    return convert


def convert_olympiadbench(row: dict) -> dict | str:
    """OlympiadBench (OE_TO_maths_en_COMP): `final_answer` is a list (several answers joined by ", ");
    `unit`, `answer_type` and `is_multiple_answer` are what its judger needs."""
    final = row["final_answer"]
    answers = [str(a) for a in (final if isinstance(final, (list, tuple)) else [final]) if str(a).strip()]
    if not answers:
        return "no final answer"
    return {"problem": row["question"], "answer": ", ".join(answers), "unit": row.get("unit") or None,
            "answer_type": row.get("answer_type"), "multiple_answers": bool(row.get("is_multiple_answer")),
            "subject": row.get("subfield") or row.get("subject"), "source_id": row.get("id")}


_GSM8K_FINAL = re.compile(r"####\s*(.+?)\s*\Z", re.S)


def convert_gsm8k(row: dict) -> dict | str:
    """GSM8K: answer = the number after '####' with thousands separators removed ("1,000" -> "1000")."""
    m = _GSM8K_FINAL.search(row["answer"])
    if not m:
        return "no '####' answer line"
    answer = re.sub(r"(?<=\d),(?=\d{3}\b)", "", m.group(1)).replace("$", "").strip()
    return {"problem": row["question"], "answer": answer, "solution": row["answer"]}


def convert_simplelr(row: dict) -> dict | str:
    """The authors' Llama training set (verl parquet rows, data_source "simplelr_abel"): the problem is the
    user turn's content (what their prompt template receives), the answer the reward model's ground truth;
    `target` (a GSM8K worked solution ending in "# Answer", or a MATH answer) is kept as the solution."""
    answer = str((row.get("reward_model") or {}).get("ground_truth") or "").strip()
    prompt = row.get("prompt")
    if not answer or not prompt:
        return "no problem or no ground truth"
    extra = row.get("extra_info") or {}
    return {"problem": prompt[0]["content"], "answer": answer, "solution": row.get("target"),
            "level": extra.get("level"), "source_id": extra.get("index")}


def convert_humaneval(row: dict) -> dict | str:
    """HumanEval: the verifier runs `prompt + completion` against `test` (check(entry_point)); the gold
    answer is the canonical solution, the problem shown is the prompt."""
    return {"id": row["task_id"], "problem": row["prompt"], "answer": row["canonical_solution"],
            "prompt": row["prompt"], "canonical_solution": row["canonical_solution"], "test": row["test"],
            "entry_point": row["entry_point"]}


def convert_knights_knaves(item: dict) -> dict | str:
    """reasoning-gym knights_knaves item -> the verifier's fields: names, solution (True = truth-teller),
    terms (the puzzle's own words for knight and knave)."""
    meta = item["metadata"]
    return {"problem": item["question"], "answer": item["answer"], "names": meta["names"],
            "solution": meta["solution"], "terms": meta["knight_knave_terms"]}


def convert_zebra(item: dict) -> dict | str:
    """reasoning-gym zebra_puzzles item: the answer is one name."""
    return {"problem": item["question"], "answer": item["answer"]}


BBH_SUBTASKS = ("boolean_expressions", "causal_judgement", "date_understanding", "disambiguation_qa", "dyck_languages",
                "formal_fallacies", "geometric_shapes", "hyperbaton", "logical_deduction_five_objects",
                "logical_deduction_seven_objects", "logical_deduction_three_objects", "movie_recommendation",
                "multistep_arithmetic_two", "navigate", "object_counting", "penguins_in_a_table",
                "reasoning_about_colored_objects", "ruin_names", "salient_translation_error_detection", "snarks",
                "sports_understanding", "temporal_sequences", "tracking_shuffled_objects_five_objects",
                "tracking_shuffled_objects_seven_objects", "tracking_shuffled_objects_three_objects", "web_of_lies",
                "word_sorting")


def convert_bbh(row: dict) -> dict | str:
    """BBH (lukaemon/bbh, or the authors' bbh/<subtask>.json "examples"): input -> problem, target -> answer;
    the subtask is the config (or file) the row came from, and names the row: bbh/<subtask>/<index>."""
    if row.get("_config") not in BBH_SUBTASKS:
        return "not one of the 27 BBH subtasks"
    if not str(row.get("target", "")).strip():
        return "empty target"
    return {"problem": row["input"], "answer": str(row["target"]).strip(), "benchmark": "bbh",
            "subtask": row["_config"], "source_id": f"{row['_config']}/{row['_index']}"}


def convert_synlogic(row: dict) -> dict | str:
    """SynLogic (MiniMaxAI/SynLogic): the puzzle is extra_info.game_data_str (JSON: question, answer,
    metadata), its type the last part of data_source. A type benchmarks.py has no rule for is dropped with
    its name; a row whose own reference answer (benchmarks.synlogic_reference) fails its rule is dropped too."""
    import benchmarks   # the graders (and verifier.py) only when SynLogic is converted

    extra = row.get("extra_info") or {}
    if isinstance(extra, str):
        extra = json.loads(extra)
    raw = extra.get("game_data_str") or row.get("game_data_str")
    if not raw:
        return "no game_data_str"
    game = json.loads(raw) if isinstance(raw, str) else raw
    task = benchmarks.synlogic_task(row.get("data_source") or extra.get("source_file", "").split("/")[0])
    if task not in benchmarks.SYNLOGIC_CHECKS:
        why = benchmarks.SYNLOGIC_UNSUPPORTED.get(task, "no rule for it")
        return f"unsupported type {task} ({why})"
    question = game.get("question") or next((m["content"] for m in reversed(row.get("prompt") or [])
                                             if isinstance(m, dict) and m.get("role") == "user"), "")
    if not question:
        return "no question"
    gold = game.get("answer")
    state = {"answer": gold, "metadata": game.get("metadata") or {}}
    ref = benchmarks.synlogic_reference(task, state)
    if ref is not None and benchmarks.verify_synlogic(ref, "", subtask=task, game=state, problem=question).reward != 1:
        return f"reference answer does not verify ({task})"
    index = extra.get("index")
    return {"problem": question, "answer": gold if isinstance(gold, str) else json.dumps(gold, ensure_ascii=False),
            "benchmark": "synlogic", "subtask": task, "game": state, "instruction": "",
            "source_id": f"{task}/{index if index is not None else row.get('_index', '')}".rstrip("/")}


# LiveCodeBench's prompt for Qwen models (lcb_runner/prompts/code_generation.py), without the chat tokens
LCB_PROMPT = ("You will be given a question (problem specification) and will generate a correct Python program "
              "that matches the specification and passes all tests. You will NOT return anything except for "
              "the program.\n\nQuestion: {question}\n\n{format}\n```python\n{code}\n```\n")
LCB_FORMAT_STARTER = ("You will use the following starter code to write the solution to the problem and enclose "
                      "your code within delimiters.")
LCB_FORMAT_STDIN = ("Read the inputs from stdin solve the problem and write the answer to stdout (do not directly "
                    "test on the sample inputs). Enclose your code within delimiters as follows. Ensure that when "
                    "the python program runs, it reads the inputs, runs the algorithm and writes output to STDOUT.")
# release_v6 (May 2023 - Apr 2025, 1,055 problems), the latest release before the paper (Oct 2025): its files
LCB_RELEASE_FILES = ("test.jsonl", "test2.jsonl", "test3.jsonl", "test4.jsonl", "test5.jsonl", "test6.jsonl")
MAX_TESTS_BYTES = 1 << 30       # a decompressed test set larger than this is refused (a zlib bomb)

# The pickle opcodes a pickled str consists of (pickle.dumps(str) under protocols 0-5): nothing that can
# name a global, call it or build an object. Any other opcode refuses the payload before it is loaded.
_STRING_OPCODES = {"PROTO", "FRAME", "STOP", "MEMOIZE", "PUT", "BINPUT", "LONG_BINPUT", "UNICODE",
                   "SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8"}


class _StringsOnly(pickle.Unpickler):
    """An unpickler that cannot import anything (a second line behind the opcode check)."""

    def find_class(self, module, name):
        raise pickle.UnpicklingError(f"refused: the pickle names {module}.{name}")

    def persistent_load(self, pid):
        raise pickle.UnpicklingError("refused: the pickle uses a persistent id")


def unpickle_string(payload: bytes) -> str:
    """The str a pickle holds, or ValueError. Every opcode is checked (pickletools.genops only parses)
    before anything is unpickled, so a crafted payload (GLOBAL/REDUCE: "call os.system") runs nothing."""
    try:
        ops = {op.name for op, _, _ in pickletools.genops(payload)}
    except Exception as e:
        raise ValueError(f"not a pickle ({type(e).__name__}: {e})") from None
    if not ops <= _STRING_OPCODES:
        raise ValueError("refused: the pickle is not a plain string "
                         f"(opcodes {', '.join(sorted(ops - _STRING_OPCODES))})")
    obj = _StringsOnly(io.BytesIO(payload)).load()
    if type(obj) is not str:
        raise ValueError(f"refused: the pickle holds a {type(obj).__name__}, not a string")
    return obj


def decode_lcb_tests(field: str) -> list[dict]:
    """LiveCodeBench's private_test_cases: JSON, or base64(zlib(pickle(JSON string))) as lcb_runner decodes
    it, here with unpickle_string instead of pickle.loads. A list of {input, output, testtype}."""
    try:
        tests = json.loads(field)
    except ValueError:
        try:
            d = zlib.decompressobj()
            raw = d.decompress(base64.b64decode(field.encode("ascii"), validate=True), MAX_TESTS_BYTES)
        except (zlib.error, ValueError) as e:          # binascii.Error is a ValueError
            raise ValueError(f"neither JSON nor base64 zlib ({e})") from None
        if d.unconsumed_tail:
            raise ValueError(f"refused: the tests decompress to more than {MAX_TESTS_BYTES >> 20} MiB") from None
        tests = json.loads(unpickle_string(raw))
    if not isinstance(tests, list) or not all(isinstance(t, dict) and isinstance(t.get("input"), str)
                                              and isinstance(t.get("output"), str) for t in tests):
        raise ValueError("tests are not a list of {input, output} strings")
    return tests


def convert_livecodebench(row: dict) -> dict | str:
    """LiveCodeBench code generation: the prompt is LiveCodeBench's own, the tests public + private (as
    lcb_runner's get_evaluation_sample), decoded here; `fn_name` (metadata func_name) makes them
    functional (LeetCode: call Solution().fn_name), else stdin/stdout. No reference solution: answer is ''."""
    try:
        tests = json.loads(row["public_test_cases"]) + decode_lcb_tests(row["private_test_cases"])
    except (ValueError, TypeError, pickle.UnpicklingError) as e:
        return f"tests refused or unreadable ({str(e).split(' (')[0][:60]})"
    if not tests:
        return "no tests"
    meta = row.get("metadata") or {}
    meta = json.loads(meta) if isinstance(meta, str) else meta
    fn_name = meta.get("func_name") or ""
    starter = row.get("starter_code") or ""
    text = LCB_PROMPT.format(question=row["question_content"], code=starter or "# YOUR CODE HERE",
                             format=LCB_FORMAT_STARTER if starter else LCB_FORMAT_STDIN)
    return {"id": f"livecodebench/{row['question_id']}", "problem": text, "answer": "", "benchmark": "livecodebench",
            "subtask": row.get("difficulty") or "unknown", "instruction": "", "question_id": row["question_id"],
            "question_title": row.get("question_title"), "platform": row.get("platform"),
            "contest_date": str(row.get("contest_date") or ""), "starter_code": starter, "fn_name": fn_name,
            "test_style": "functional" if fn_name else "stdin",
            "tests": {"inputs": [t["input"] for t in tests], "outputs": [t["output"] for t in tests]}}


MATH_SUBJECTS = ("algebra", "counting_and_probability", "geometry", "intermediate_algebra", "number_theory",
                 "prealgebra", "precalculus")

# The authors' own copy of their Llama training set (8,388 rows; the same data appears on the Hugging Face
# Hub as hkust-nlp/SimpleRL-Zoo-Data, folder simplelr_abel_gsm8k_level1), pinned to the commit of their code.
SIMPLELR_URL = ("https://raw.githubusercontent.com/CLR-Lab/SimKO/306f4ff4e84ace53e92501939692fcfeb32596b5/"
                "data/gsm8k_level1/train.parquet")

SOURCES: dict[str, Source] = {
    # the training set of the paper's math runs: MATH train (Hendrycks et al.), 7,500 problems, 7,496 with an answer
    "math_train": Source("EleutherAI/hendrycks_math", "train", MATH_SUBJECTS, convert_math),
    # the authors' validation set (MATH test, 5,000) and their Llama training set (GSM8K + MATH level 1)
    "math_test": Source("EleutherAI/hendrycks_math", "test", MATH_SUBJECTS, convert_math),
    "simplelr_gsm8k_level1": Source("github.com/CLR-Lab/SimKO", convert=convert_simplelr, url=SIMPLELR_URL),
    # the paper's six math benchmarks
    "math500": Source("HuggingFaceH4/MATH-500", "test", convert=convert_math),
    "aime2024": Source("AI-MO/aimo-validation-aime", "train", convert=convert_competition("2024")),
    "aime2025": Source("opencompass/AIME2025", "test", ("AIME2025-I", "AIME2025-II"), convert_competition("2025")),
    "amc23": Source("AI-MO/aimo-validation-amc", "train", convert=convert_competition("2023")),
    "minerva_math": Source("math-ai/minervamath", "test", convert=convert_minerva),
    "olympiadbench": Source("Hothan/OlympiadBench", "train", ("OE_TO_maths_en_COMP",), convert_olympiadbench),
    # GSM8K (the paper's Llama runs), code and logic
    "gsm8k_train": Source("openai/gsm8k", "train", ("main",), convert_gsm8k),
    "gsm8k_test": Source("openai/gsm8k", "test", ("main",), convert_gsm8k),
    "humaneval": Source("openai/openai_humaneval", "test", convert=convert_humaneval, task="code"),
    "knights_knaves": Source("reasoning-gym:knights_knaves", convert=convert_knights_knaves, size=300,
                             settings=(("n_people", 3), ("depth_constraint", 2), ("width_constraint", 2)),
                             task="logic"),
    "zebra_puzzles": Source("reasoning-gym:zebra_puzzles", convert=convert_zebra, size=200,
                            settings=(("num_people", 4), ("num_characteristics", 4)), task="logic"),
    # the paper's logic benchmarks and its second coding benchmark (graded by benchmarks.py)
    "bbh": Source("lukaemon/bbh", "test", BBH_SUBTASKS, convert_bbh, task="logic", row_config=True),
    "synlogic": Source("MiniMaxAI/SynLogic", "validation", ("easy",), convert_synlogic, task="logic"),
    "livecodebench": Source("livecodebench/code_generation_lite", "test", convert=convert_livecodebench, task="code",
                            files=LCB_RELEASE_FILES, sidecar="tests"),
}
# name -> (task, source): the named datasets as load_dataset and the error messages see them
DATA_SOURCES: dict[str, tuple[str, str]] = {name: (src.task, src.about) for name, src in SOURCES.items()}

_DATA_FILES = (".parquet", ".jsonl", ".json")


def _read_rows(path: Path) -> list[dict]:
    """Rows of one downloaded file: parquet (needs pyarrow, which `datasets` installs), JSONL (read lazily),
    or JSON (a list of rows, or {"data"|"rows"|"examples": [...]})."""
    if path.suffix == ".parquet":
        try:
            import pyarrow.parquet as pq
        except ImportError:
            raise UserError(f"{path}: reading parquet needs pyarrow: pip install -r requirements-data.txt") from None
        return pq.read_table(path).to_pylist()
    if path.suffix == ".jsonl":
        return _jsonl_rows(path)
    text = path.read_text(encoding="utf-8")
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        raise UserError(f"{path}:{e.lineno}: malformed JSON ({e.msg})") from None
    rows = obj.get("data") or obj.get("rows") or obj.get("examples") if isinstance(obj, dict) else obj
    if not isinstance(rows, list):
        raise UserError(f"{path}: expected a JSON list of rows")
    return rows


def _jsonl_rows(path: Path):
    """The rows of a JSONL file, one line at a time (LiveCodeBench's files are gigabytes)."""
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if line.strip():
                try:
                    yield json.loads(line)
                except json.JSONDecodeError as e:
                    raise UserError(f"{path}:{lineno}: malformed JSON ({e.msg} at column {e.colno})") from None


def local_files(folder: Path, src: Source) -> list[Path]:
    """The data files of `src` in a folder the user downloaded the repo into, in sorted order: every
    .parquet/.jsonl/.json file below it, narrowed to those whose path names one of the source's configs
    (if any does), then to those whose path names the split (if any does). Two files that differ only in
    their format (`test.json` and `test.jsonl`, as Qwen2.5-Math's evaluation folders hold) are one split
    twice: refused, since reading both would count every problem twice."""
    if folder.is_file():
        return [folder]
    files = sorted(f for f in folder.rglob("*") if f.suffix in _DATA_FILES and f.is_file()
                   and not any(part.startswith(".") for part in f.relative_to(folder).parts))
    if src.files:
        return sorted((f for f in files if f.name in src.files), key=lambda f: src.files.index(f.name))
    if src.row_config:
        return [f for f in files if _file_config(folder, f, src) is not None]
    for keys in ([c for c in src.configs if c], [src.split]):
        narrowed = [f for f in files if any(k in str(f.relative_to(folder)) for k in keys)]
        files = narrowed or files
    by_stem: dict[Path, list[Path]] = {}
    for f in files:
        by_stem.setdefault(f.with_suffix(""), []).append(f)
    twins = next((fs for fs in by_stem.values() if len(fs) > 1), None)
    if twins:
        raise UserError(f"{folder}: {' and '.join(f.name for f in twins)} hold the same split in two formats "
                        f"(reading both would count every problem twice): remove all but one")
    return files


def _file_config(folder: Path, f: Path, src: Source) -> str | None:
    """The config a downloaded file holds: the one that is a folder on its path or its file name
    (lukaemon/bbh: boolean_expressions/test-*.parquet; the authors' files: bbh/boolean_expressions.json)."""
    parts = set(f.relative_to(folder).parent.parts) | {f.stem}
    return next((c for c in src.configs if c in parts), None)


def _with_config(rows, config: str):
    for i, row in enumerate(rows):
        yield {**row, "_config": config, "_index": i}


class FetchError(UserError):
    """A dataset that could not be downloaded; `offline` when the network (or the Hub) is not reachable,
    so that the other downloads are not tried (each would wait through the same retries)."""

    def __init__(self, message: str, offline: bool):
        super().__init__(message)
        self.offline = offline


def _is_fetch_error(e: Exception) -> bool:
    """A failure to download (no network, offline mode, a repository not found or not allowed), as the
    datasets / huggingface_hub / HTTP libraries raise it, as opposed to a bug, which keeps its traceback."""
    return isinstance(e, OSError) or type(e).__module__.split(".")[0] in (
        "datasets", "huggingface_hub", "httpx", "httpcore", "requests", "urllib3", "fsspec", "aiohttp")


def _is_offline(e: Exception) -> bool:
    return isinstance(e, (ConnectionError, TimeoutError)) or any(
        w in type(e).__name__ for w in ("Connect", "Timeout", "Offline", "Network"))


def fetch_rows(name: str, src: Source) -> list[dict]:
    """The source rows of an HF dataset through the `datasets` library (its cache, else the network)."""
    try:
        import datasets
    except ImportError:
        raise UserError("`python data.py prepare` downloads with the `datasets` library: "
                        "pip install -r requirements-data.txt (or pass --from DIR with files you downloaded)") from None
    try:
        if src.url:
            return list(datasets.load_dataset("parquet", data_files={"train": src.url}, split="train"))
        if src.files:       # a release of raw files (LiveCodeBench's loading script is not run: it is code)
            from huggingface_hub import hf_hub_download
            paths = [Path(hf_hub_download(src.repo, f, repo_type="dataset")) for f in src.files]
            return (row for p in paths for row in _read_rows(p))      # read one row at a time: it is large
        if src.row_config:
            return [row for config in src.configs
                    for row in _with_config(datasets.load_dataset(src.repo, config, split=src.split), config)]
        return [row for config in src.configs for row in datasets.load_dataset(src.repo, config, split=src.split)]
    except Exception as e:
        if not _is_fetch_error(e):
            raise
        why = " ".join(str(e).split()) or type(e).__name__
        raise FetchError(f"{name}: could not download {src.repo} ({why}). Connect to the network and run this "
                         f"again, or download the files on a machine that can (`python data.py sources` prints "
                         f"one command per dataset) and convert them with `python data.py prepare --from DIR`",
                         offline=_is_offline(e)) from None


def generate_rows(src: Source) -> list[dict]:
    """The puzzles of a reasoning-gym source, generated here (seed and settings fixed: no download)."""
    try:
        import reasoning_gym
    except ImportError:
        raise UserError("the logic sets are generated by reasoning-gym: pip install -r requirements-data.txt") from None
    ds = reasoning_gym.create_dataset(src.repo.split(":", 1)[1], seed=LOGIC_SEED, size=src.size,
                                      **dict(src.settings))
    return [ds[i] for i in range(src.size)]


def source_rows(name: str, src: Source, from_dir: Path | None):
    """The source rows of dataset `name`: from files under from_dir/<name> (or from_dir/<name>.jsonl),
    else fetched; an iterable (a large source is read one row at a time). The logic sets are generated,
    not downloaded: without files of their own in from_dir they are generated here, --from or not."""
    generated = src.repo.startswith("reasoning-gym:")
    if from_dir is not None:
        folder = from_dir / name
        if not folder.exists() and (from_dir / f"{name}.jsonl").is_file():
            folder = from_dir / f"{name}.jsonl"
        if folder.exists():
            files = local_files(folder, src)
            if not files:
                raise UserError(f"{folder}: no .parquet, .jsonl or .json file in it"
                                + (f" named {', '.join(src.files)}" if src.files else ""))
            if src.row_config:
                return (row for f in files for row in _with_config(_read_rows(f), _file_config(folder, f, src)))
            return (row for f in files for row in _read_rows(f))
        if not generated:
            raise UserError(f"{folder}: not found (--from expects DIR/{name}/, downloaded with "
                            f"`{download_command(name, src, folder)}`)")
    return generate_rows(src) if generated else fetch_rows(name, src)


def download_command(name: str, src: Source, folder) -> str:
    """The command that puts a source's files where --from looks for them."""
    if src.url:
        return f"curl -L --create-dirs -o {folder}/train.parquet {src.url}"
    files = "".join(f" {f}" for f in src.files)     # a release: only its own files
    return f"hf download --repo-type dataset {src.repo}{files} --local-dir {folder}"


def convert_rows(name: str, rows, sidecar_dir: Path | None = None) -> tuple[list[dict], dict[str, int]]:
    """(JSONL rows with ids, {reason: count} of the dropped rows). With sidecar_dir, the source's sidecar
    field of each row goes to sidecar_dir/<n>.json.gz (readable by this user only: a sandboxed program run
    as another user cannot read its own expected outputs) and the row keeps `<field>_file`, the path
    relative to the JSONL's folder."""
    kept, dropped = [], {}
    field = SOURCES[name].sidecar
    for row in rows:
        out = SOURCES[name].convert(dict(row))
        if isinstance(out, str):
            dropped[out] = dropped.get(out, 0) + 1
            continue
        out = {k: v for k, v in out.items() if v is not None or k == "unit"}
        out["id"] = f"{name}/{out.pop('source_id', len(kept))}" if "id" not in out else out["id"]
        if field and sidecar_dir is not None and field in out:
            rel = f"{sidecar_dir.name.removesuffix('.tmp')}/{len(kept)}.json.gz"
            fd = os.open(sidecar_dir / f"{len(kept)}.json.gz", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "wb") as raw, gzip.open(raw, "wt", encoding="utf-8", compresslevel=6) as f:
                json.dump(out.pop(field), f, ensure_ascii=False)
            out[f"{field}_file"] = rel
        kept.append({"id": out.pop("id"), **out})
    return kept, dropped


def write_jsonl_atomic(path: Path, rows: list[dict]):
    """Write to a temporary file in the same folder, then rename (cli.atomic_path): a reader never sees
    half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def prepare(names, out_dir: Path, from_dir: Path | None = None, force: bool = False) -> list[dict]:
    """Write <out_dir>/<name>.jsonl for each name; an existing file is kept unless force. Returns one
    report row per dataset: name, status, rows written, rows dropped (with reasons), path, error.

    status: "written"; "exists" (kept); "failed" (error says why; nothing written for it); "not tried"
    (the network was found down at an earlier download; the logic sets, generated here, are still made).
    One dataset's failure does not stop the others: the report says what was and was not written."""
    report, offline = [], None
    for name in names:
        path, src = out_dir / f"{name}.jsonl", SOURCES[name]
        row = dict(name=name, status="written", written=None, dropped={}, path=path, error=None)
        report.append(row)
        if path.is_file() and not force:
            row["status"] = "exists"
            continue
        local = from_dir is not None and ((from_dir / name).exists() or (from_dir / f"{name}.jsonl").is_file())
        if offline is not None and not local and not src.repo.startswith("reasoning-gym:"):
            row.update(status="not tried", error=f"no network: {offline} could not be downloaded")
            continue
        # the sidecar folder is written as <name>_<field>.tmp/ and swapped in just before the JSONL
        side = out_dir / f"{name}_{src.sidecar}" if src.sidecar else None
        try:
            with atomic_path(side, tmp=f"{side}.tmp") if side else contextlib.nullcontext() as side_tmp:
                if side_tmp is not None:
                    side_tmp.mkdir(parents=True, mode=0o700)
                kept, dropped = convert_rows(name, source_rows(name, src, from_dir), side_tmp)
                if not kept:
                    raise UserError(f"{name}: no row converted ({dropped or 'the source is empty'})")
        except UserError as e:
            row.update(status="failed", error=str(e))
            if isinstance(e, FetchError) and e.offline:
                offline = name
            continue
        write_jsonl_atomic(path, kept)
        row.update(written=len(kept), dropped=dropped)
    return report


def format_report(report: list[dict]) -> str:
    """The table `python data.py prepare` ends with: every dataset asked for, written or not, and why."""
    lines = [f"{'dataset':<15} {'status':<10} {'rows':>6} {'dropped':>8}  {'why dropped':<52} path, or why not written"]
    for r in report:
        if r["status"] in ("failed", "not tried"):   # the reason up to its details (stderr has the whole first one)
            lines.append(f"{r['name']:<15} {r['status']:<10} {'-':>6} {'-':>8}  {'-':<52} {r['error'].split(' (')[0]}")
            continue
        why = "; ".join(f"{n} {k}" for k, n in r["dropped"].items()) or "-"
        rows = r["written"] if r["status"] == "written" else "kept"
        lines.append(f"{r['name']:<15} {r['status']:<10} {rows!s:>6} {sum(r['dropped'].values()):>8}  {why:<52} {r['path']}")
    if any(r["status"] == "exists" for r in report):
        lines.append("kept: the file was already there (--force rewrites it)")
    return "\n".join(lines)


def where_tools_read(out: Path) -> str:
    """How train.py and eval.py find the files just written in `out` (the data folder rule of
    default_data_dir: --data-dir, else $CASP_DATA, else ~/.cache/casp/data)."""
    if out.resolve() != default_data_dir().resolve():
        return f"train.py and eval.py read it with --data-dir {out}, or with CASP_DATA={out} set"
    if os.environ.get("CASP_DATA"):
        return f"train.py and eval.py read it while CASP_DATA={os.environ['CASP_DATA']} is set, else with --data-dir {out}"
    return "train.py and eval.py read it by default"


def main(argv=None):
    ap = ArgumentParser(prog="data.py", description="Dataset files for train.py and eval.py.")
    sub = ap.add_subparsers(dest="command", required=True)
    p = sub.add_parser("prepare", help="write the dataset files from their public sources",
                       formatter_class=HelpFormatter)
    p.add_argument("names", nargs="*", metavar="NAME", help=f"datasets (default: all): {', '.join(SOURCES)}")
    p.add_argument("--out", type=Path, default=None, help="output folder (default: $CASP_DATA, else ~/.cache/casp/data)")
    p.add_argument("--from", dest="from_dir", type=Path, default=None, metavar="DIR",
                   help="convert files already downloaded into DIR/<name>/ (no network; the logic sets, "
                   "generated rather than downloaded, are made here unless DIR has them)")
    p.add_argument("--force", action="store_true", help="rewrite files that already exist")
    sub.add_parser("sources", help="where each dataset comes from (and the download command for --from)")
    args = ap.parse_args(argv)
    with one_line_errors():
        if args.command == "sources":
            for name, src in SOURCES.items():
                how = (src.about + " (generated here, no download)" if src.repo.startswith("reasoning-gym") else
                       download_command(name, src, f"DIR/{name}"))
                print(f"{name:<15} {how}")
            return None
        unknown = [n for n in args.names if n not in SOURCES]
        if unknown:
            raise UserError(f"unknown dataset(s) {', '.join(unknown)}: use {', '.join(SOURCES)}")
        if args.from_dir is not None and not args.from_dir.is_dir():
            raise UserError(f"--from {args.from_dir}: no such folder")
        out = args.out or default_data_dir()
        report = prepare(args.names or list(SOURCES), out, args.from_dir, args.force)
        print(format_report(report))
        if any(r["status"] in ("written", "exists") for r in report):
            print(f"data folder: {out}; {where_tools_read(out)}")
        sys.stdout.flush()   # the table before the error line
        failed = [r for r in report if r["status"] == "failed"]
        if failed:
            not_written = sum(r["status"] in ("failed", "not tried") for r in report)
            more = f" ({not_written} of {len(report)} datasets not written: see the table)" if not_written > 1 else ""
            raise UserError(f"{failed[0]['error']}{more}")
        return report




# -----------------------------------------------------------------------------
# Prompts


def build_prompt(problem: dict, tokenizer, prompt_format: str = "template") -> list[int]:
    """Token ids of the chat prompt: one user turn = problem + instruction, then the assistant header, in
    the model's chat template ("template") or the authors' fixed ChatML text ("authors")."""
    task = problem.get("task", "math")
    instruction = problem.get("instruction", INSTRUCTIONS.get(task, MATH_INSTRUCTION))
    text = problem["problem"]
    if task == "code" and "```" not in text:
        text = f"```python\n{text.rstrip()}\n```"
    content = f"{text}\n{instruction}" if instruction else text
    if prompt_format == "authors":   # their text as it is, special-token strings become their ids
        return tokenizer.encode(AUTHORS_PROMPT.format(content=content))
    if prompt_format != "template":
        raise ValueError(f"prompt_format {prompt_format!r}: expected one of {PROMPT_FORMATS}")
    return tokenizer.encode_chat([{"role": "user", "content": content}])


def prompt_source(tokenizer, prompt_format: str = "template") -> str:
    """What a run's prompts are, for the `prompts:` log line."""
    return "authors (fixed ChatML text, system: You are a helpful assistant.)" if prompt_format == "authors" \
        else tokenizer.chat_source


def encode_prompts(problems: list[dict], tokenizer, max_prompt_tokens: int | None = None,
                   prompt_format: str = "template"):
    """(problems with a `prompt_ids` field, number skipped): prompts over the limit are skipped and
    counted, never fatal (the authors filter the same way: max prompt 1024). A problem whose text is so long
    that no tokenization can fit it is skipped before it is tokenized: tokenizing a 50 MB row alone takes
    gigabytes."""
    kept, skipped = [], 0
    longest = sure_too_long_chars(tokenizer, max_prompt_tokens)
    for prob in problems:
        if len(prob["problem"]) > longest:
            skipped += 1
            continue
        ids = build_prompt(prob, tokenizer, prompt_format)
        if max_prompt_tokens is not None and len(ids) > max_prompt_tokens:
            skipped += 1
            continue
        kept.append(dict(prob, prompt_ids=ids))
    return kept, skipped


def sure_too_long_chars(tokenizer, max_tokens: int | None) -> float:
    """A text length (characters) above which a text surely takes more than max_tokens tokens: no token
    covers more characters than the longest vocabulary entry (Qwen2.5: 128), and a factor 4 covers
    normalizers that merge characters (NFC). inf when unknown."""
    longest = getattr(tokenizer, "longest_token_chars", None)
    return float("inf") if max_tokens is None or longest is None else 4 * max_tokens * longest


def verifier_fields(problem: dict) -> dict:
    """The keyword fields verifier.verify(response, answer, task, **fields) gets for this problem."""
    drop = ("answer", "task", "prompt_ids", "instruction", "id", "split")
    return {k: v for k, v in problem.items() if k not in drop}


if __name__ == "__main__":
    main()
