"""
data.py: problems in, prompt token ids out.

A problem is a dict with at least
    problem   the question text shown to the model
    answer    the gold final answer (a string) the verifier compares against
    task      "math" | "code" | "logic": which verifier branch scores it (verifier.reward's `task`)
    id        a stable name ("math500/17"); eval.py keys its resumable sample files on it
and whatever extra fields the verifier needs, passed through unchanged (HumanEval: prompt, test,
entry_point; knights-and-knaves: names, solution, terms; OlympiadBench: unit, multiple_answers).

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
    synthetic       math    built in (tiny.py): the CPU demo's task; nothing to download

Prompt (CASP.md): the model's chat template with one user turn = problem + an instruction. Math and logic
ask for step-by-step reasoning and a final \\boxed{} answer (the Qwen2.5-Math instruction); code asks for
the completed function in a ```python block. A problem may carry its own `instruction` (the synthetic task
does: an empty one, see below). No system message is inserted.

Departures: MATH500's file wraps each problem as "Question:\\n...\\nAnswer:\\nLet's think step by
step.\\n"; that wrapper is removed (no other benchmark has it, and it would precede our own instruction).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

# -----------------------------------------------------------------------------
# Datasets by name

# fields the verifier needs beyond problem/answer, per task
TASK_FIELDS = {"math": (), "logic": (), "code": ("prompt", "test", "entry_point")}

MATH_INSTRUCTION = "Please reason step by step, and put your final answer within \\boxed{}."
CODE_INSTRUCTION = ("Complete the following Python function. Reply with the complete function "
                    "(signature included) in a ```python code block.")
INSTRUCTIONS = {"math": MATH_INSTRUCTION, "logic": MATH_INSTRUCTION, "code": CODE_INSTRUCTION}


class UserError(Exception):
    """A mistake in what the user gave (a path, a line of a file, a flag, a name): the command-line tools
    print `error: <message>` and exit with status 2, without a traceback. Unexpected errors keep theirs."""


class ArgumentParser(argparse.ArgumentParser):
    """argparse for the command-line tools: a mistake on the command line (`--steps -1`, an unknown flag,
    a missing value) is one line `error: ...` on stderr and exit status 2, like every other user error,
    instead of argparse's usage block followed by `prog: error: ...`. Sub-commands inherit it."""

    def error(self, message):
        print(f"error: {message} (see {self.prog} --help)", file=sys.stderr)
        raise SystemExit(2)


class HelpFormatter(argparse.HelpFormatter):
    """--help with each flag's default shown once: `(default: X)` unless the help text already says it,
    plus, where a preset changes it (train.py's demo), `PRESET: value` beside it. On/off switches
    (`--no-plot`, `--force`) show none: their name says what they do."""
    presets: dict[str, dict] = {}       # label -> {dest: value}

    def _get_help_string(self, action):
        text = action.help or ""
        if ("default" in text or not action.option_strings or action.nargs == 0
                or action.default in (None, False, argparse.SUPPRESS)):
            return text
        extra = "".join(f"; {label}: {values[action.dest]}" for label, values in self.presets.items()
                        if action.dest in values)
        return f"{text} (default: {action.default}{extra})"


def at_least(low, kind=int):
    """An argparse type: a number >= low (`--steps -1` is refused with the flag's name, not run)."""
    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {'an integer' if kind is int else 'a number'}, got {text!r}")
        if value < low or value != value:  # NaN compares false with everything
            raise argparse.ArgumentTypeError(f"must be >= {low}, got {text}")
        return value
    return parse


def between(low, high, low_open=True, high_open=True):
    """An argparse type: a float in the interval (low, high), ends open or closed as given."""
    def parse(text):
        value = at_least(float("-inf"), float)(text)
        if value < low or value > high or (low_open and value == low) or (high_open and value == high):
            raise argparse.ArgumentTypeError(f"must be in {'(' if low_open else '['}{low}, {high}"
                                             f"{')' if high_open else ']'}, got {text}")
        return value
    return parse


def positive(text):
    """An argparse type: a float > 0."""
    return between(0.0, float("inf"))(text)


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


def load_jsonl(path, required=("problem", "answer")) -> list[dict]:
    """One dict per non-blank line. Errors name the file and the 1-based line number."""
    path = Path(path)
    if not path.is_file():
        raise DataNotFound(f"{path}: data file not found")
    rows = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}:{lineno}: malformed JSON ({e.msg} at column {e.colno})") from None
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
        missing = [k for k in TASK_FIELDS[task] if k not in row]
        if missing:
            raise DataError(f"{path}:{row['_line']}: a {task} problem needs field(s) "
                             f"{', '.join(map(repr, missing))}")
        prob = {k: v for k, v in row.items() if k != "_line"}
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

    @property
    def about(self) -> str:
        """One line for messages and listings: where the rows come from."""
        if self.repo.startswith("reasoning-gym:"):
            return (f"reasoning-gym {REASONING_GYM_VERSION} {self.repo.split(':', 1)[1]}, seed {LOGIC_SEED}, "
                    f"{self.size} puzzles, " + ", ".join(f"{k}={v}" for k, v in self.settings))
        configs = ", ".join(c for c in self.configs if c)
        return f"{self.repo}{f' ({configs})' if configs else ''}, split {self.split}"


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


MATH_SUBJECTS = ("algebra", "counting_and_probability", "geometry", "intermediate_algebra", "number_theory",
                 "prealgebra", "precalculus")

SOURCES: dict[str, Source] = {
    # the training set of the paper's math runs: MATH train (Hendrycks et al.), 7,500 problems, 7,496 with an answer
    "math_train": Source("EleutherAI/hendrycks_math", "train", MATH_SUBJECTS, convert_math),
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
}
# name -> (task, source): the named datasets as load_dataset and the error messages see them
DATA_SOURCES: dict[str, tuple[str, str]] = {name: (src.task, src.about) for name, src in SOURCES.items()}

_DATA_FILES = (".parquet", ".jsonl", ".json")


def _read_rows(path: Path) -> list[dict]:
    """Rows of one downloaded file: parquet (needs pyarrow, which `datasets` installs), JSONL, or JSON
    (a list of rows, or {"data"|"rows": [...]})."""
    if path.suffix == ".parquet":
        try:
            import pyarrow.parquet as pq
        except ImportError:
            raise UserError(f"{path}: reading parquet needs pyarrow: pip install -r requirements-data.txt") from None
        return pq.read_table(path).to_pylist()
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".jsonl":
        rows = []
        for lineno, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise UserError(f"{path}:{lineno}: malformed JSON ({e.msg} at column {e.colno})") from None
        return rows
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        raise UserError(f"{path}:{e.lineno}: malformed JSON ({e.msg})") from None
    rows = obj.get("data") or obj.get("rows") if isinstance(obj, dict) else obj
    if not isinstance(rows, list):
        raise UserError(f"{path}: expected a JSON list of rows")
    return rows


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
    else fetched. The logic sets are generated, not downloaded: without files of their own in from_dir
    they are generated here, --from or not."""
    generated = src.repo.startswith("reasoning-gym:")
    if from_dir is not None:
        folder = from_dir / name
        if not folder.exists() and (from_dir / f"{name}.jsonl").is_file():
            folder = from_dir / f"{name}.jsonl"
        if folder.exists():
            files = local_files(folder, src)
            if not files:
                raise UserError(f"{folder}: no .parquet, .jsonl or .json file in it")
            return [row for f in files for row in _read_rows(f)]
        if not generated:
            raise UserError(f"{folder}: not found (--from expects DIR/{name}/, downloaded with "
                            f"`hf download --repo-type dataset {src.repo} --local-dir {folder}`)")
    return generate_rows(src) if generated else fetch_rows(name, src)


def convert_rows(name: str, rows) -> tuple[list[dict], dict[str, int]]:
    """(JSONL rows with ids, {reason: count} of the dropped rows)."""
    kept, dropped = [], {}
    for row in rows:
        out = SOURCES[name].convert(dict(row))
        if isinstance(out, str):
            dropped[out] = dropped.get(out, 0) + 1
            continue
        out = {k: v for k, v in out.items() if v is not None or k == "unit"}
        out["id"] = f"{name}/{out.pop('source_id', len(kept))}" if "id" not in out else out["id"]
        kept.append({"id": out.pop("id"), **out})
    return kept, dropped


def write_jsonl_atomic(path: Path, rows: list[dict]):
    """Write to a temporary file in the same folder, then rename: a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    os.replace(tmp, path)


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
        try:
            kept, dropped = convert_rows(name, source_rows(name, src, from_dir))
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
    try:
        if args.command == "sources":
            for name, src in SOURCES.items():
                how = (src.about + " (generated here, no download)" if src.repo.startswith("reasoning-gym") else
                       f"hf download --repo-type dataset {src.repo} --local-dir DIR/{name}")
                print(f"{name:<15} {how}")
            return None
        unknown = [n for n in args.names if n not in SOURCES]
        if unknown:
            raise UserError(f"unknown dataset(s) {', '.join(unknown)}: use {', '.join(SOURCES)}")
        if args.from_dir is not None and not args.from_dir.is_dir():
            raise UserError(f"--from {args.from_dir}: no such folder")
        out = args.out or default_data_dir()
        report = prepare(args.names or list(SOURCES), out, args.from_dir, args.force)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    print(format_report(report))
    if any(r["status"] in ("written", "exists") for r in report):
        print(f"data folder: {out}; {where_tools_read(out)}")
    sys.stdout.flush()   # the table before the error line below
    failed = [r for r in report if r["status"] == "failed"]
    if failed:
        not_written = sum(r["status"] in ("failed", "not tried") for r in report)
        more = f" ({not_written} of {len(report)} datasets not written: see the table)" if not_written > 1 else ""
        print(f"error: {failed[0]['error']}{more}", file=sys.stderr)
        raise SystemExit(2)
    return report




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


if __name__ == "__main__":
    main()
