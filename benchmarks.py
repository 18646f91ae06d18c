"""
benchmarks.py: the graders of the paper's logic and coding benchmarks beyond the math sets: BBH (BIG-Bench
Hard), SynLogic and LiveCodeBench. A response -> a Verdict (reward in {0, 1}, extracted answer, reason).

verifier.verify sends a problem here when its row names one of these benchmarks (`benchmark` field, written
by `python data.py prepare bbh synlogic livecodebench`); every grader is a pure function of the response
and the row's fields and never raises, like the rest of verifier.py.

BBH (Suzgun et al. 2022; 27 subtasks, 6,511 problems)
    The answer is read from the last \\boxed{} (mode "strict", the training reward's rule) or, in mode
    "lenient", from the last \\boxed{} and otherwise from the last answer clause ("So the answer is (A).",
    "Answer: valid"). It then matches the gold target exactly after the normalisation of its answer type
    (BBH_ANSWER_TYPES), as BBH's own evaluation compares the text after "So the answer is":
      choice      a gold "(C)": "(C)", "C", "C)", "(C) <option text>", "Option C", \\text{(C)}; or the option's
                  text alone when it names exactly one option of the question ("heptagon"). Two options
                  named, or the letter with another option's text, is wrong.
      true/false, yes/no, valid/invalid   that word, any case ("\\text{Yes}", "**No**"); "not valid" is neither.
      number      the integer, with a sign (also the unicode minus), thousands commas or a trailing ".0".
      words       the sorted words, in order, separated by spaces or commas, any case.
      dyck        the closing brackets in order, spaces optional; LaTeX \\} \\rangle etc. read as } >.
      text        (three rows whose options the dataset split at a comma, e.g. gold "Monsters, Inc"):
                  the target text itself, case and spacing aside.
    Prompt (data.py): the question and the project's instruction "Please reason step by step, and put your
    final answer within \\boxed{}." (the paper's evaluation prompt is not stated in the text we have).

SynLogic (Liu et al. 2025, MiniMaxAI/SynLogic, the `easy` validation split)
    Each task type has its own rule, re-implemented here from the authors' verifier of that type
    (github.com/MiniMax-AI/SynLogic, games/tasks/<type>/scripts/<type>_verifier.py) on the row's game data
    (the puzzle's metadata and reference answer): exact answers (counts, words, sequences, sets), checked
    grids (every rule of the puzzle, not one stored solution), arithmetic expressions (evaluated exactly
    with fractions, never with eval) and coordinate sets. The answer is read from the response's answer
    region (the last <answer>...</answer>, else the text after </think>, else everything) in the format
    each question states (a \\boxed{}, a ```python block, [[...]], "The answer is ..."). Both answer modes
    grade alike: the format is part of the question. Task types without a rule here are listed in
    SYNLOGIC_UNSUPPORTED (data.py drops their rows, counted in the prepare table). Departures from the
    authors' verifiers, each a bug there: game of 24 checks the value (theirs compares the result with
    itself); norinori requires two cells in every region (theirs skips regions with none);
    dyck_language_errors does not read "invalid" as "valid"; the last answer in the region counts (some of
    theirs take the first).

LiveCodeBench (Jain et al. 2024, livecodebench/code_generation_lite, release_v6: 1,055 problems)
    The last fenced code block of the response runs against the problem's public and hidden tests in a
    sandboxed process of sandbox.py (rlimits, no network, uid nobody when run as root, the in-process
    guard), with LiveCodeBench's own rules (lcb_runner/evaluation/testing_util.py):
      stdin       the program runs once per test as __main__ with the test input on standard input; its
                  standard output matches when, after stripping, it has the same lines and each line is
                  equal or equal as a list of Decimals ("0.50" = "0.5").
      functional  class Solution (LeetCode) is instantiated once, its method `fn_name` is called per test
                  with the JSON arguments (one per input line); the result (a tuple read as a list) must
                  equal the JSON output.
    Both prefix the solution with LiveCodeBench's import header (`from typing import *`, collections, ...).
    Per-test time limit 6 s (LiveCodeBench's `timeout=6`), memory cap 4 GiB (its reliability guard's
    4 GB), the first failing test ends the run. Departures: no threads can be started (RLIMIT_NPROC = 0,
    which stops fork bombs, counts threads too), and only the standard library is importable (no numpy). The expected outputs never enter the sandboxed process:
    it only writes each test's output to a file and reports "done i" on a pipe; this process compares, and
    measures each test's time itself, so a program cannot lie about a test or its clock.

Public API: verify_bbh, verify_synlogic, verify_livecodebench, GRADERS (benchmark -> grader),
bbh_answer_type, synlogic_reference, run_tests, stdout_matches.
"""
from __future__ import annotations

import ast
import gzip
import json
import math
import os
import re
import select
import stat
import time
from collections import Counter
from decimal import Decimal, InvalidOperation
from fractions import Fraction
from functools import lru_cache

import sandbox
import verifier
from verifier import Verdict

MAX_LITERAL_CHARS = 20000       # a Python/JSON literal longer than this is not parsed (literal_eval is not linear)


def _last_box_escaped(s: str) -> tuple[str | None, bool]:
    """(content of the last \\boxed{...}, whether there is one): like verifier's box reading, except that
    escaped braces \\{ \\} do not count, so a box can hold unbalanced ones (BBH's dyck answers "\\} ] >")."""
    k = max(s.rfind("\\boxed"), s.rfind("\\fbox"))
    if k < 0:
        return None, False
    m = re.match(r"\\(?:boxed|fbox)\s*\{", s[k:])
    if not m:
        return None, True
    j = k + m.end() - 1
    depth, i = 0, j
    while i < len(s):
        c = s[i]
        if c == "\\" and i + 1 < len(s) and s[i + 1] in "{}":
            i += 2
            continue
        depth += {"{": 1, "}": -1}.get(c, 0)
        if depth == 0:
            return s[j + 1:i].strip(), True
        i += 1
    return None, True            # truncated inside its last box


# =============================================================================
# BBH


BBH_ANSWER_TYPES = {
    "boolean_expressions": "true/false", "causal_judgement": "yes/no", "navigate": "yes/no",
    "web_of_lies": "yes/no", "sports_understanding": "yes/no", "formal_fallacies": "valid/invalid",
    "multistep_arithmetic_two": "number", "object_counting": "number", "word_sorting": "words",
    "dyck_languages": "dyck",
    **{t: "choice" for t in (
        "date_understanding", "disambiguation_qa", "geometric_shapes", "hyperbaton", "logical_deduction_five_objects",
        "logical_deduction_seven_objects", "logical_deduction_three_objects", "movie_recommendation",
        "penguins_in_a_table", "reasoning_about_colored_objects", "ruin_names", "salient_translation_error_detection",
        "snarks", "temporal_sequences", "tracking_shuffled_objects_five_objects",
        "tracking_shuffled_objects_seven_objects", "tracking_shuffled_objects_three_objects")},
}
_BINARY = {"true/false": ("true", "false"), "yes/no": ("yes", "no"), "valid/invalid": ("valid", "invalid")}
_CHOICE_RE = re.compile(r"^\([A-Z]\)$")


def bbh_answer_type(subtask: str, gold: str) -> str:
    """The answer type of one BBH row: its subtask's, except "text" for a choice row whose target is not a
    letter (three rows of the dataset, where an option containing a comma was split in two)."""
    kind = BBH_ANSWER_TYPES.get(subtask)
    if kind is None:            # a subtask we do not know: read the type off the gold
        g = gold.strip().lower()
        kind = next((k for k, words in _BINARY.items() if g in words), None) or (
            "choice" if _CHOICE_RE.match(gold.strip()) else "number" if re.fullmatch(r"-?\d+", g) else "text")
    if kind == "choice" and not _CHOICE_RE.match(gold.strip()):
        return "text"
    return kind


_ANSWER_CLAUSE_RE = re.compile(r"(?:final\s+answer|\banswer)\s*(?:is|:)\s*:?", re.IGNORECASE)


def _bbh_candidate(response: str, mode: str) -> tuple[str | None, str]:
    """(the answer text, why none): the last box; in lenient mode else the last answer clause up to the end
    of its line."""
    t = verifier.clean_response(response)
    boxed, has_box = _last_box_escaped(t)
    if has_box:
        return boxed, "truncated inside \\boxed{}" if boxed is None else ""
    if mode == "strict":
        return None, "no \\boxed{} answer"
    clause = None
    for clause in _ANSWER_CLAUSE_RE.finditer(t[-verifier.TAIL_CHARS:]):
        pass
    if clause is None:
        return None, "no answer found"
    tail = t[-verifier.TAIL_CHARS:][clause.end():]
    line = tail.strip().split("\n")[0].strip()
    return (line or None), "no answer found"


_WRAP_RE = re.compile(r"\\(?:text|textbf|textit|textrm|textnormal|mathrm|mathbf|mbox|emph)\s*\{([^{}]*)\}")


def _bbh_clean(s: str) -> str:
    """Remove the wrapping a model puts around an answer: LaTeX text commands and $...$, markdown emphasis,
    quotes, a trailing period."""
    for _ in range(3):
        s = _WRAP_RE.sub(r"\1", s)
    s = s.replace("$", " ").replace("\\&", "&").replace("\\%", "%").replace("\u2212", "-")
    s = re.sub(r"\\[()\[\]]", " ", s)
    s = s.strip().strip("*_`").strip()
    s = re.sub(r"[.!]+$", "", s).strip().strip("*_`").strip()
    if len(s) >= 2 and s[0] == s[-1] and s[0] in "\"'":
        s = s[1:-1].strip()
    return s


def _norm_text(s: str) -> str:
    return re.sub(r"\s+", " ", re.sub(r"[.,;:!?\"']+$", "", s.strip().lower())).strip()


_OPTION_LINE_RE = re.compile(r"^\(([A-Z])\)\s*(.*?)\s*$", re.M)


def _bbh_options(problem: str) -> dict[str, str]:
    """{letter: option text} from the question's "Options:" lines."""
    return {m.group(1): m.group(2) for m in _OPTION_LINE_RE.finditer(problem or "")}


_LETTER_RE = re.compile(r"^(?:option|choice|answer)?\s*:?\s*(?:\(([A-Za-z])\)|([A-Z])(?![A-Za-z]))\s*[.:)]?\s*(.*)$",
                        re.IGNORECASE | re.S)


def _bbh_choice(s: str, options: dict[str, str]) -> str | None:
    """The option letter a cleaned answer names, or None (none, or more than one)."""
    m = _LETTER_RE.match(s)
    if m and not (m.group(2) and m.group(2).islower()):
        letter = (m.group(1) or m.group(2)).upper()
        rest = _norm_text(m.group(3))
        if not rest or (letter in options and _norm_text(options[letter]) == rest):
            return letter
        if any(_norm_text(v) == rest for v in options.values()):
            return None                           # "(B) <the text of option C>"
        others = set(re.findall(r"(?<![A-Za-z'])\(?([A-Z])\)?(?![A-Za-z'])", m.group(3))) - {letter}
        return None if others else letter         # "(A) or (B)", "B, C"
    by_text = [k for k, v in options.items() if _norm_text(v) == _norm_text(s)]
    return by_text[0] if len(by_text) == 1 else None


def _bbh_number(s: str):
    s = s.replace(" ", "")
    if re.fullmatch(r"[-+]?\d{1,3}(,\d{3})+(\.0+)?", s):
        s = s.replace(",", "")
    m = re.fullmatch(r"([-+]?\d+)(?:\.0+)?", s)
    return int(m.group(1)) if m else None


_DYCK_LATEX = (("\\left", ""), ("\\right", ""), ("\\langle", "<"), ("\\rangle", ">"), ("\\lbrace", "{"),
               ("\\rbrace", "}"), ("\\lbrack", "["), ("\\rbrack", "]"), ("\\{", "{"), ("\\}", "}"),
               ("\\lt", "<"), ("\\gt", ">"))


def _bbh_dyck(s: str) -> str | None:
    for a, b in _DYCK_LATEX:
        s = s.replace(a, b)
    s = re.sub(r"[\s,]", "", s)
    return s if s and set(s) <= set("()[]{}<>") else None


def _bbh_words(s: str) -> list[str]:
    words = [w.strip().strip("\"`").lower() for w in re.split(r"[\s,]+", s) if w.strip()]
    return [w[1:-1] if len(w) > 2 and w[0] == w[-1] == "'" else w for w in words]


def bbh_normal_form(text: str | None, kind: str, problem: str = "") -> str | None:
    """The canonical form of an answer of type `kind` (see the module docstring), or None if the text is
    not an answer of that type. Gold and prediction both go through it."""
    if text is None:
        return None
    s = _bbh_clean(text)
    if not s:
        return None
    if kind in _BINARY:
        w = s.lower()
        return w if w in _BINARY[kind] else None
    if kind == "choice":
        return _bbh_choice(s, _bbh_options(problem))
    if kind == "number":
        n = _bbh_number(s)
        return None if n is None else str(n)
    if kind == "words":
        return " ".join(_bbh_words(s)) or None
    if kind == "dyck":
        return _bbh_dyck(s)
    return _norm_text(s) or None


def verify_bbh(response: str, answer: str, *, mode: str = verifier.DEFAULT_MODE, subtask: str = "",
               problem: str = "", **_) -> Verdict:
    """A BBH response against its gold target (see the module docstring for what each type accepts)."""
    kind = bbh_answer_type(subtask, answer)
    pred, why = _bbh_candidate(response, mode)
    if pred is None:
        return Verdict(0.0, None, why)
    gold = bbh_normal_form(answer, kind, problem)
    got = bbh_normal_form(pred, kind, problem)
    if gold is None:
        return Verdict(0.0, pred, f"gold {answer!r} is not a {kind} answer")
    if got is None:
        return Verdict(0.0, pred, f"not a {kind} answer")
    ok = got == gold
    return Verdict(float(ok), pred, f"{kind} " + ("matches" if ok else "differs"))


# =============================================================================
# SynLogic


def _region(response: str) -> str:
    """The answer region: the last <answer>...</answer>, else the text after the last </think>, else all."""
    t = verifier.clean_response(response)
    if "</think>" in t:
        t = t.rsplit("</think>", 1)[1]
    tags = re.findall(r"<answer>(.*?)</answer>", t, re.S)
    return tags[-1] if tags else t


def _boxed(region: str) -> str | None:
    return verifier.last_boxed(region)[0]


def _code_blocks(region: str, lang: str = r"(?:python|py|json)?") -> list[str]:
    return [b.strip() for b in re.findall(r"```" + lang + r"[ \t]*\n?(.*?)```", region, re.S)]


def _literal(text: str | None):
    """A Python/JSON literal (lists, tuples, dicts, numbers, strings) or None; never evaluates code."""
    if text is None or len(text) > MAX_LITERAL_CHARS:
        return None
    text = re.sub(r"#[^\n]*", "", text).strip()
    text = re.sub(r"^\w+\s*=\s*", "", text)          # "grid = [[...]]"
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        try:
            return json.loads(text)
        except (ValueError, RecursionError):
            return None


def _last_bracketed(region: str, open_: str = "[[", close: str = "]]") -> str | None:
    """The last balanced span starting with `open_` (a 2-D list "[[...]]", "((...))")."""
    k = region.rfind(open_)
    while k >= 0:
        depth = 0
        for i in range(k, min(len(region), k + MAX_LITERAL_CHARS)):
            depth += {open_[0]: 1, close[0]: -1}.get(region[i], 0)
            if depth == 0:
                return region[k:i + 1]
        k = region.rfind(open_, 0, k)
    return None


def _grid_answer(region: str):
    """A 2-D list from the last code block holding one, else the last [[...]] / ((...)) span."""
    for block in reversed(_code_blocks(region)):
        v = _literal(block)
        if _is_grid(v):
            return [list(r) for r in v]
    for o, c in (("[[", "]]"), ("((", "))"), ("[", "]")):
        v = _literal(_last_bracketed(region, o, c))
        if _is_grid(v):
            return [list(r) for r in v]
    return None


def _is_grid(v) -> bool:
    return isinstance(v, (list, tuple)) and len(v) > 0 and all(isinstance(r, (list, tuple)) for r in v)


def _ints(grid, n: int, m: int | None = None) -> bool:
    m = n if m is None else m
    return (len(grid) == n and all(len(r) == m for r in grid)
            and all(type(x) is int for r in grid for x in r))


def _latin(grid, n: int) -> bool:
    want = set(range(1, n + 1))
    return all(set(r) == want for r in grid) and all({grid[i][j] for i in range(n)} == want for j in range(n))


# ---- checked grids


def _check_sudoku(region, game, problem):
    g = _grid_answer(region)
    orig = game["metadata"]["original_sudoku"]
    if g is None or not _ints(g, 9) or not _latin(g, 9):
        return False, g
    boxes = all({g[r + i][c + j] for i in range(3) for j in range(3)} == set(range(1, 10))
                for r in (0, 3, 6) for c in (0, 3, 6))
    kept = all(str(orig[i][j]) in ("0", "X", "x") or g[i][j] == int(orig[i][j]) for i in range(9) for j in range(9))
    return boxes and kept, g


def _visible(line) -> int:
    top, n = 0, 0
    for h in line:
        if h > top:
            top, n = h, n + 1
    return n


def _check_skyscraper(region, game, problem):
    md = game["metadata"]
    n = md["n"]
    g = _grid_answer(region)
    if g is None or not _ints(g, n) or not _latin(g, n):
        return False, g
    cols = [[g[i][j] for i in range(n)] for j in range(n)]
    ok = ([_visible(c) for c in cols] == list(md["top"]) and [_visible(c[::-1]) for c in cols] == list(md["bottom"])
          and [_visible(r) for r in g] == list(md["left"]) and [_visible(r[::-1]) for r in g] == list(md["right"]))
    return ok, g


def _check_kukurasu(region, game, problem):
    md = game["metadata"]
    n, m = md["n"], md["m"]
    g = _grid_answer(region)
    if g is None or len(g) != n or any(len(r) != m or any(x not in ("1", "X") for x in r) for r in g):
        return False, g
    rows = [sum(j + 1 for j, x in enumerate(r) if x == "1") for r in g]
    cols = [sum(i + 1 for i in range(n) if g[i][j] == "1") for j in range(m)]
    return rows == list(md["row_sums"]) and cols == list(md["col_sums"]), g


def _check_numbrix(region, game, problem):
    clue = game["metadata"]["grid"]
    n = len(clue)
    g = _grid_answer(region)
    if g is None or not _ints(g, n) or sorted(x for r in g for x in r) != list(range(1, n * n + 1)):
        return False, g
    if any(clue[i][j] != "X" and g[i][j] != int(clue[i][j]) for i in range(n) for j in range(n)):
        return False, g
    pos = {g[i][j]: (i, j) for i in range(n) for j in range(n)}
    ok = all(abs(pos[k][0] - pos[k + 1][0]) + abs(pos[k][1] - pos[k + 1][1]) == 1 for k in range(1, n * n))
    return ok, g


def _check_survo(region, game, problem):
    md = game["metadata"]
    orig, n = md["original_matrix"], md["n"]
    g = _grid_answer(region)
    if g is None or not _ints(g, n):
        return False, g
    if any(orig[i][j] != 0 and g[i][j] != orig[i][j] for i in range(n) for j in range(n)):
        return False, g
    filled = sorted(g[i][j] for i in range(n) for j in range(n) if orig[i][j] == 0)
    if filled != sorted(md["candidate_numbers"]):
        return False, g
    rows = all(sum(g[i][:n - 1]) == g[i][n - 1] for i in range(n - 1))
    cols = all(sum(g[i][j] for i in range(n - 1)) == g[n - 1][j] for j in range(n - 1))
    return rows and cols, g


def _neighbours8(i, j):
    return [(i + a, j + b) for a in (-1, 0, 1) for b in (-1, 0, 1) if a or b]


def _check_campsite(region, game, problem):
    md = game["metadata"]
    n, m, orig = md["n"], md["m"], md["grid"]
    g = _grid_answer(region)
    if g is None or len(g) != n or any(len(r) != m for r in g):
        return False, g
    if any((orig[i][j] == "T") != (g[i][j] == "T") for i in range(n) for j in range(m)):
        return False, g
    if any(x not in ("T", "C", "X") for r in g for x in r):
        return False, g
    tents = [(i, j) for i in range(n) for j in range(m) if g[i][j] == "C"]
    trees = [(i, j) for i in range(n) for j in range(m) if g[i][j] == "T"]
    if [sum(x == "C" for x in r) for r in g] != list(md["row_constraints"]):
        return False, g
    if [sum(g[i][j] == "C" for i in range(n)) for j in range(m)] != list(md["col_constraints"]):
        return False, g
    tent_set = set(tents)
    if any(q in tent_set for t in tents for q in _neighbours8(*t)) or len(tents) != len(trees):
        return False, g
    return _perfect_matching(tents, set(trees)), g


def _perfect_matching(tents, trees) -> bool:
    """Each tent paired with its own orthogonally adjacent tree (Kuhn's augmenting paths)."""
    match: dict = {}

    def augment(t, seen):
        for d in ((0, 1), (1, 0), (0, -1), (-1, 0)):
            tree = (t[0] + d[0], t[1] + d[1])
            if tree in trees and tree not in seen:
                seen.add(tree)
                if tree not in match or augment(match[tree], seen):
                    match[tree] = t
                    return True
        return False
    return all(augment(t, set()) for t in tents)


_PAIR_RE = re.compile(r"[(\[]\s*(\d+)\s*,\s*(\d+)\s*[)\]]")


def _last_outer_list(region: str) -> str | None:
    """The outermost [...] that ends at the last ']' of the region."""
    end = region.rfind("]")
    depth = 0
    for i in range(end, max(-1, end - MAX_LITERAL_CHARS), -1):
        depth += {"]": 1, "[": -1}.get(region[i], 0)
        if depth == 0:
            return region[i:end + 1]
    return None


def _check_minesweeper(region, game, problem):
    got = [(int(a), int(b)) for a, b in _PAIR_RE.findall(_last_outer_list(region) or "")]
    want = {tuple(x) for x in game["metadata"]["current_mines"]}
    return bool(got) and len(got) == len(set(got)) and set(got) == want, got


def _check_futoshiki(region, game, problem):
    md = game["metadata"]
    n = md["grid_size"]
    span = None
    for s in re.findall(r"\[\[([^\[\]]+)\]\]", region):
        span = s
    if span is None:
        return False, None
    g = [[int(x) for x in re.findall(r"\d+", row)] for row in span.split(",")]
    if not _ints(g, n) or not _latin(g, n):
        return False, g
    puzzle = _futoshiki_givens(problem, n)
    for (r, c) in md.get("prefilled_coords", []):
        if puzzle and puzzle[r][c] is not None and g[r][c] != puzzle[r][c]:
            return False, g
    for (a, b, sign) in md["constraints"]:
        x, y = g[a[0]][a[1]], g[b[0]][b[1]]
        if (sign == ">" and not x > y) or (sign == "<" and not x < y):
            return False, g
    return True, g


def _futoshiki_givens(problem: str, n: int):
    """The given numbers of the grid printed after "Current puzzle:" (None for an X), as theirs reads them."""
    lines, on = [], False
    for line in (problem or "").split("\n"):
        if "Current puzzle:" in line or "当前谜题" in line:
            on = True
            continue
        if on and line.strip() and "X" in line:
            lines.append(line.split())
        elif on and lines and line.strip():
            break
    cells = [[tok for tok in row if tok == "X" or tok.isdigit()] for row in lines][:n]
    if len(cells) != n or any(len(r) != n for r in cells):
        return None
    return [[None if tok == "X" else int(tok) for tok in r] for r in cells]


def _check_star_placement(region, game, problem):
    md = game["metadata"]
    n, k, regions = md["n"], md["k"], md["region_grid"]
    blocks = _code_blocks(region, r"(?:python|py)")
    d = None
    for b in reversed(blocks):
        m = re.search(r"\{[^{}]*\}", b, re.S)
        d = _literal(m.group(0)) if m else None
        if isinstance(d, dict):
            break
    if not isinstance(d, dict):
        return False, None
    stars = set()
    for coords in d.values():
        for rc in coords if isinstance(coords, (list, tuple)) else []:
            if not (isinstance(rc, (list, tuple)) and len(rc) == 2 and all(type(x) is int for x in rc)):
                return False, d
            r, c = rc[0] - 1, rc[1] - 1                    # the answer is 1-indexed
            if not (0 <= r < n and 0 <= c < n):
                return False, d
            stars.add((r, c))
    rows_ok = all(sum((i, j) in stars for j in range(n)) == k for i in range(n))
    cols_ok = all(sum((i, j) in stars for i in range(n)) == k for j in range(n))
    by_region = Counter(regions[i][j] for i, j in stars)
    regions_ok = all(by_region[r] == k for r in {x for row in regions for x in row})
    apart = not any(q in stars for s in stars for q in _neighbours8(*s))
    return rows_ok and cols_ok and regions_ok and apart, d


_DOMINO_RE = re.compile(r"\[\s*\(\s*(\d+)\s*,\s*(\d+)\s*\)\s*,\s*\(\s*(\d+)\s*,\s*(\d+)\s*\)\s*\]")


def _check_norinori(region, game, problem):
    regions = game["metadata"]["region_grid"]
    n = len(regions)
    span = _last_bracketed(region, "[[", "]]") or region
    dominoes = [((int(a) - 1, int(b) - 1), (int(c) - 1, int(d) - 1)) for a, b, c, d in _DOMINO_RE.findall(span)]
    if not dominoes:
        return False, None
    owner = {}
    for idx, (p, q) in enumerate(dominoes):
        if abs(p[0] - q[0]) + abs(p[1] - q[1]) != 1:
            return False, dominoes
        for (i, j) in (p, q):
            if not (0 <= i < n and 0 <= j < n) or (i, j) in owner:
                return False, dominoes
            owner[(i, j)] = idx
    for (i, j), idx in owner.items():            # dominoes never touch orthogonally
        for a, b in ((0, 1), (1, 0), (0, -1), (-1, 0)):
            if owner.get((i + a, j + b), idx) != idx:
                return False, dominoes
    if any(regions[i][j] == "X" and (i, j) not in owner for i in range(n) for j in range(n)):
        return False, dominoes
    count = Counter(regions[i][j] for (i, j) in owner if regions[i][j] != "X")
    names = {x for row in regions for x in row if x != "X"}
    return all(count[r] == 2 for r in names), dominoes


# ---- arithmetic expressions (exact: fractions, never eval)


class _ExprError(Exception):
    pass


_OPS = {ast.Add: lambda a, b: a + b, ast.Sub: lambda a, b: a - b, ast.Mult: lambda a, b: a * b,
        ast.Div: lambda a, b: a / b, ast.Mod: lambda a, b: a % b}


def _arith(text: str) -> Fraction:
    """The exact value of an integer arithmetic expression (+ - * / %, parentheses, unary minus)."""
    if len(text) > 500:
        raise _ExprError("too long")
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except (SyntaxError, ValueError, RecursionError) as e:
        raise _ExprError(str(e)) from None

    def ev(node, depth=0):
        if depth > 100:
            raise _ExprError("too deep")
        if isinstance(node, ast.Expression):
            return ev(node.body, depth + 1)
        if isinstance(node, ast.Constant) and type(node.value) is int:
            return Fraction(node.value)
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
            v = ev(node.operand, depth + 1)
            return -v if isinstance(node.op, ast.USub) else v
        if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
            a, b = ev(node.left, depth + 1), ev(node.right, depth + 1)
            if isinstance(node.op, (ast.Div, ast.Mod)) and b == 0:
                raise _ExprError("division by zero")
            return _OPS[type(node.op)](a, b)
        raise _ExprError(f"not arithmetic: {type(node).__name__}")
    return ev(tree)


def _check_game_of_24(region, game, problem):
    md = game["metadata"]
    blocks = _code_blocks(region, r"(?:python|py)")
    expr = blocks[-1] if blocks else None
    if not expr:
        return False, None
    ops = set(md.get("operators", ["+", "-", "*", "/"]))
    if any(c not in ops and c not in "() " and not c.isdigit() for c in expr):
        return False, expr
    if Counter(re.findall(r"\d+", expr)) != Counter(str(x) for x in md["numbers"]):
        return False, expr
    try:
        return _arith(expr) == Fraction(str(md["result"])), expr
    except _ExprError:
        return False, expr


def _check_math_path(region, game, problem):
    md = game["metadata"]
    spans = re.findall(r"\[\[(.*?)\]\]", region, re.S)
    if not spans:
        return False, None
    got = spans[-1].replace(" ", "").strip()
    query = md["query_expr"].replace(" ", "")
    qd = [c for c in query if c.isdigit() or c == "?"]
    gd = [c for c in got if c.isdigit()]
    if len(qd) != len(gd) or any(q != "?" and q != d for q, d in zip(qd, gd)):
        return False, got
    if [c for c in query if c in "+-*/%"] != [c for c in got if c in "+-*/%"] or got.count("=") != 1:
        return False, got
    lhs, rhs = got.split("=")
    try:
        return _arith(lhs) == _arith(rhs), got
    except _ExprError:
        return False, got


# ---- exact answers


def _boxed_int(region):
    b = _boxed(region)
    try:
        return int(b.strip()) if b is not None else None
    except ValueError:
        return None


def _check_boxed_int(region, game, problem):
    got = _boxed_int(region)
    return got is not None and got == int(str(game["answer"]).strip()), got


def _check_word_sorting(region, game, problem):
    b = _boxed(region)
    if b is None:
        return False, None
    split = lambda s: [w.strip() for w in s.replace("，", ",").replace(" ", "").split(",")]   # noqa: E731
    return split(b) == split(str(game["answer"])), b


def _check_word_sorting_mistake(region, game, problem):
    b = _boxed(region)
    gold = str(game["answer"] if game["answer"] is not None else "No").strip()
    if b is None:
        return False, None
    b = b.strip()
    if b.isdigit() and gold.isdigit():
        return int(b) == int(gold), b
    return b.lower() == gold.lower(), b


def _check_space_reasoning(region, game, problem):
    b = _boxed(region)
    return b is not None and b.strip().lower() == str(game["answer"]).strip().lower(), b


def _check_space_reasoning_tree(region, game, problem):
    b = _boxed(region)
    items = lambda s: set(s.replace("，", ",").replace(" ", "").split(","))   # noqa: E731
    return b is not None and items(b) == items(str(game["answer"])), b


def _check_boolean_expressions(region, game, problem):
    b = _boxed(region)
    letters = lambda s: {c.lower() for c in re.findall(r"[A-Za-z]", s)}      # noqa: E731
    return b is not None and letters(b) == letters(str(game["answer"])), b


def _check_operation(region, game, problem):
    b = _boxed(region)
    return b is not None and verifier.is_equivalent(b, str(game["answer"])), b


def _last_line(region: str) -> str:
    b = _boxed(region)
    if b is not None:
        return b
    lines = [ln.strip() for ln in region.strip().split("\n") if ln.strip()]
    return lines[-1] if lines else ""


def _check_dyck_language(region, game, problem):
    line = _last_line(region)
    blocks = _code_blocks(region, r"\w*")
    if blocks:
        line = blocks[-1]
    got = re.sub(r"\s+", "", line).strip("\"'`")
    return got == game["metadata"]["full_sequence"], got


def _check_dyck_language_errors(region, game, problem):
    md = game["metadata"]
    want = -1 if md["is_valid"] else int(md["first_error_pos"])
    line = _last_line(region)
    nums = re.findall(r"-?\d+", line)
    if nums:
        return int(nums[-1]) == want, nums[-1]
    says_valid = bool(re.search(r"(?<!in)valid|合法|correct", line, re.IGNORECASE)) and not re.search(
        r"invalid|不合法|incorrect", line, re.IGNORECASE)
    return says_valid and want == -1, line or None


def _check_dyck_reasoning_errors(region, game, problem):
    want = set(game["metadata"]["error_indices"])
    line = _last_line(region)
    none = r"\s*(?:no(?: errors?| mistakes?)?|all correct|无问题|无错误|\[\s*\])\s*\.?\s*"
    if re.fullmatch(none, line, re.IGNORECASE):
        return not want, line
    got = {int(x) for x in re.findall(r"\d+", line)}
    return bool(got) and got == want, line


def _check_cryptarithm(region, game, problem):
    eqs = re.findall(r"\d+(?:\s*[-+*]\s*\d+)+\s*=\s*-?\d+", region)
    got = eqs[-1].replace(" ", "") if eqs else None
    return got is not None and got == str(game["answer"]).replace(" ", ""), got


def _check_cipher(region, game, problem):
    blocks = _code_blocks(region, r"(?:python|py)")
    v = _literal(blocks[-1] if blocks else _last_bracketed(region))
    gold = str(game["answer"]).strip()
    return v == [[gold[2:-2]]], v


def _check_time_sequence(region, game, problem):
    want = game["metadata"]["records"]["answers"]
    lists = re.findall(r"\[[^\[\]]*\]", region)
    v = _literal(lists[-1].replace("，", ",")) if lists else None
    ok = isinstance(v, list) and len(v) >= 2 and v[0] == want["answer_maxLen"] and v[1] == want["answer_nums"]
    return ok, v


def _ownership(v) -> dict | None:
    if not isinstance(v, (list, tuple)) or not all(isinstance(p, (list, tuple)) and len(p) == 2 for p in v):
        return None
    return {str(a).strip().lower(): str(b).strip().lower() for a, b in v}


def _check_goods_exchange(region, game, problem):
    blocks = [b for b in _code_blocks(region, r"(?:python|py)") if b.startswith("(")]
    got = _ownership(_literal(blocks[-1])) if blocks else None
    want = _ownership(_literal(str(game["metadata"].get("owns_after") or game["answer"])))
    return got is not None and got == want, got


_TRUTH_RE = re.compile(r"\b(yes|no|true|false)\b|(是|否)")


def _truths(s: str) -> list[bool]:
    return [(m.group(1) or m.group(2)).lower() in ("yes", "true", "是") for m in _TRUTH_RE.finditer(s.lower())]


def _check_web_of_lies(region, game, problem):
    m = None
    for m in re.finditer(r"(?:the answer is|答案是)\s*[：:=]?\s*(.*)", region, re.IGNORECASE):
        pass
    text = m.group(1) if m else _last_line(region)
    bold = re.findall(r"\*\*([^*]+)\*\*", text)
    text = bold[-1] if bold else text
    got = _truths(text)
    return bool(got) and got == _truths(str(game["answer"])), text


def _same_json(a, b) -> bool:
    """Equal structure and values with equal types (the zebra verifier's type-safe deep compare)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same_json(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(_same_json(x, y) for x, y in zip(a, b))
    return a == b


def _json_answer(region: str):
    blocks = _code_blocks(region, r"json")
    text = blocks[-1] if blocks else region.strip()
    if len(text) > MAX_LITERAL_CHARS:
        return None
    try:
        return json.loads(text)
    except ValueError:
        return None


def _check_zebra(region, game, problem):
    want = game["answer"]
    want = json.loads(want) if isinstance(want, str) else want
    got = _json_answer(region)
    return got is not None and _same_json(want, got), got


def _check_arc_agi(region, game, problem):
    want = game["answer"]
    want = _literal(want) if isinstance(want, str) else want
    got = _json_answer(region)
    return got is not None and got == want, got


def _check_buggy_tables(region, game, problem):
    two = lambda s: (re.findall(r"-?\d+\.\d{2}\b", str(s)) or [str(s).strip()])[-1]   # noqa: E731
    got = two(region)
    return got == two(game["answer"]), got


SYNLOGIC_CHECKS = {
    "sudoku": _check_sudoku, "skyscraper_puzzle": _check_skyscraper, "kukurasu": _check_kukurasu,
    "numbrix": _check_numbrix, "survo": _check_survo, "campsite": _check_campsite, "minesweeper": _check_minesweeper,
    "futoshiki": _check_futoshiki, "star_placement_puzzle": _check_star_placement, "norinori": _check_norinori,
    "game_of_24": _check_game_of_24, "mathador": _check_game_of_24, "math_path": _check_math_path,
    "object_counting": _check_boxed_int, "object_properties": _check_boxed_int, "word_sorting": _check_word_sorting,
    "word_sorting_mistake": _check_word_sorting_mistake, "space_reasoning": _check_space_reasoning,
    "space_reasoning_tree": _check_space_reasoning_tree, "boolean_expressions": _check_boolean_expressions,
    "operation": _check_operation, "dyck_language": _check_dyck_language,
    "dyck_language_errors": _check_dyck_language_errors, "dyck_language_reasoning_errors": _check_dyck_reasoning_errors,
    "cryptarithm": _check_cryptarithm, "cipher": _check_cipher, "time_sequence": _check_time_sequence,
    "goods_exchange": _check_goods_exchange, "web_of_lies": _check_web_of_lies, "zebra_puzzle": _check_zebra,
    "arc_agi": _check_arc_agi, "arc_agi_2": _check_arc_agi, "buggy_tables": _check_buggy_tables,
}
# task types of the authors' verifier table without a rule here, and why
SYNLOGIC_UNSUPPORTED = {
    "arrow_maze": "ray-cover grid rules not re-implemented",
    "calcudoko": "cage arithmetic rules not re-implemented",
    "number_wall": "island/wall rules not re-implemented",
    "wordscapes": "crossword fill rules not re-implemented",
    "gpqa_diamond": "not a SynLogic logic task (multiple-choice science)",
}


def synlogic_task(data_source: str) -> str:
    """The task type of a SynLogic row's data_source ("val/campsite", "campsite", "SynLogic/Sudoku")."""
    return str(data_source).strip().rstrip("/").split("/")[-1].strip().lower().replace(" ", "_").replace("-", "_")


def verify_synlogic(response: str, answer: str, *, subtask: str = "", game: dict | None = None,
                    problem: str = "", **_) -> Verdict:
    """A SynLogic response checked by its task type's rule on the row's game data."""
    check = SYNLOGIC_CHECKS.get(subtask)
    if check is None:
        return Verdict(0.0, None, f"unsupported SynLogic task type {subtask!r}")
    if not isinstance(game, dict) or "metadata" not in game:
        return Verdict(0.0, None, "row has no game data")
    game = {"answer": game["answer"] if "answer" in game else answer, "metadata": game["metadata"] or {}}
    try:
        ok, got = check(_region(response), game, problem)
    except (KeyError, IndexError, TypeError, ValueError, AttributeError, ZeroDivisionError, RecursionError):
        return Verdict(0.0, None, f"{subtask}: answer does not fit the puzzle")
    shown = None if got is None else (got if isinstance(got, str) else json.dumps(got, default=str))
    return Verdict(float(bool(ok)), shown, f"{subtask}: " + ("correct" if ok else "wrong or unreadable answer"))


def _fence(obj, lang="python") -> str:
    return f"```{lang}\n{obj}\n```"


def _left_to_right(solution: str) -> str:
    """The generator's game-of-24 solution "nums: (9, 9, 7, 3), ops: ('/', '+', '*')", evaluated left to
    right, as one expression: "((9 / 9) + 7) * 3"."""
    m = re.match(r"\s*nums:\s*(\(.*?\)),\s*ops:\s*(\(.*\))\s*$", solution)
    if not m:
        return solution                       # already an expression
    nums, ops = ast.literal_eval(m.group(1)), ast.literal_eval(m.group(2))
    expr = str(nums[0])
    for op, x in zip(ops, nums[1:]):
        expr = f"({expr} {op} {x})"
    return expr[1:-1] if expr.startswith("(") else expr


def synlogic_reference(subtask: str, game: dict) -> str | None:
    """A response that states the row's reference answer in its task's format, or None when the row holds
    no reference (some puzzles store only their constraints). data.py drops a row whose reference does
    not verify (a check on the converter and on these rules); the tests perturb it by one cell or step."""
    md, ans = game.get("metadata") or {}, game.get("answer")
    grid = {"sudoku": "complete_sudoku", "skyscraper_puzzle": "solved_grid", "numbrix": "solution",
            "survo": "filled_matrix", "campsite": "solution"}
    if subtask in grid and md.get(grid[subtask]) is not None:
        return _fence(json.dumps(md[grid[subtask]]))
    if subtask == "kukurasu" and md.get("solution") is not None:
        return json.dumps(md["solution"])
    if subtask == "minesweeper":
        return str([tuple(x) for x in md["current_mines"]])
    if subtask == "norinori" and md.get("solution"):
        return str([[tuple(p) for p in d] for d in md["solution"]])
    if subtask in ("game_of_24", "mathador") and md.get("solutions"):
        return _fence(_left_to_right(md["solutions"][0]))
    if subtask == "star_placement_puzzle" and ans:
        stars: dict = {}
        for letter, r, c in re.findall(r"([A-Za-z]+)\s*\(\s*(\d+)\s*,\s*(\d+)\s*\)", str(ans)):
            stars.setdefault(letter, []).append((int(r), int(c)))
        return _fence(stars) if stars else None
    if subtask == "math_path":
        return f"[[{md['ref_expr']}]]"
    if subtask == "time_sequence":
        a = md["records"]["answers"]
        return f"[{a['answer_maxLen']}, {a['answer_nums']}]"
    if subtask == "dyck_language":
        return md["full_sequence"]
    if subtask == "dyck_language_errors":
        return str(-1 if md["is_valid"] else md["first_error_pos"])
    if subtask == "dyck_language_reasoning_errors":
        return ",".join(map(str, sorted(md["error_indices"]))) or "no errors"
    if subtask == "goods_exchange":
        return _fence(md.get("owns_after") or ans)
    if subtask == "web_of_lies":
        return f"The answer is **{ans}**."
    if subtask == "cryptarithm":
        return f"The answer is {ans}."
    if subtask == "cipher":
        return _fence(json.dumps([[str(ans).strip()[2:-2]]]))
    if subtask in ("zebra_puzzle", "arc_agi", "arc_agi_2"):
        return _fence(ans if isinstance(ans, str) else json.dumps(ans), "json")
    if subtask == "buggy_tables":
        return f"The answer is {ans}."
    if subtask in SYNLOGIC_CHECKS and ans not in (None, ""):
        return f"\\boxed{{{ans}}}"
    return None


# =============================================================================
# LiveCodeBench

LCB_TIME_LIMIT = 6.0        # seconds per test (lcb_runner's timeout=6)
LCB_MEMORY_MB = 4096        # address-space cap (lcb_runner's reliability_guard: 4 GB)
LCB_MAX_OUTPUT = 64 << 20   # bytes of one test's output the judge reads (a larger one fails the test)

# lcb_runner/evaluation/testing_util.py's import_string, which precedes every graded program
LCB_IMPORT_HEADER = (
    "from string import *\nfrom re import *\nfrom datetime import *\nfrom collections import *\n"
    "from heapq import *\nfrom bisect import *\nfrom copy import *\nfrom math import *\nfrom random import *\n"
    "from statistics import *\nfrom itertools import *\nfrom functools import *\nfrom operator import *\n"
    "from io import *\nfrom sys import *\nfrom json import *\nfrom builtins import *\nfrom typing import *\n"
    "import string\nimport re\nimport datetime\nimport collections\nimport heapq\nimport bisect\nimport copy\n"
    "import math\nimport random\nimport statistics\nimport itertools\nimport functools\nimport operator\n"
    "import io\nimport sys\nimport json\nsys.setrecursionlimit(50000)\n")


def stdout_matches(pred: str, gold: str) -> bool:
    """LiveCodeBench's stdin/stdout rule: after strip(), the same number of lines, and each stripped line
    equal, or equal as a list of Decimals ("1.50 2" = "1.5 2"; no float tolerance)."""
    p = [ln.strip() for ln in pred.strip().split("\n")]
    g = [ln.strip() for ln in gold.strip().split("\n")]
    if len(p) != len(g):
        return False
    for a, b in zip(p, g):
        if a == b:
            continue
        try:
            if [Decimal(x) for x in a.split()] != [Decimal(x) for x in b.split()]:
                return False
        except (InvalidOperation, ValueError, ArithmeticError):
            return False
    return True


def functional_matches(pred_json: str, gold_json: str) -> bool:
    """LiveCodeBench's functional rule: the returned value (a tuple read as a list) equals the JSON output.
    Compared as parsed JSON, so only plain data can ever match (an object whose __eq__ says yes cannot)."""
    try:
        return json.loads(pred_json) == json.loads(gold_json)
    except (ValueError, RecursionError):
        return False


# The sandboxed child. It receives the solution and the test inputs as files, never the expected outputs,
# and reports each finished test as "done <i>" on a private pipe; the parent judges.
_LCB_HARNESS = r'''
def _lcb():
    import io, builtins, json
    drop_to, style, n, status_fd, fn_name = int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), \
        sys.argv[5]
    write, exit_, dup2, os_open, close, O = os.write, os._exit, os.dup2, os.open, os.close, os
    FileIO, TextIOWrapper = io.FileIO, io.TextIOWrapper
    BufferedReader, BufferedWriter = io.BufferedReader, io.BufferedWriter
    def status(msg):
        write(status_fd, (msg.replace("\n", " ")[:300] + "\n").encode("utf-8", "replace"))
    def read(name):
        with FileIO(name, "r") as f:
            return f.read().decode("utf-8")
    src = read("solution.py")
    if hasattr(sys, "set_int_max_str_digits"):
        sys.set_int_max_str_digits(50000)
    for m in ("string", "re", "datetime", "collections", "heapq", "bisect", "copy", "math", "random", "statistics",
              "itertools", "functools", "operator", "typing", "decimal", "fractions"):
        __import__(m)          # the import header's modules, loaded before the guard and the drop to nobody
    if drop_to >= 0:
        _drop_root(drop_to)
    root = os.path.realpath(os.getcwd())
    _guard(root)
    real_open, realpath, fspath, sep = builtins.open, os.path.realpath, os.fspath, os.sep
    def read_inside(file, mode="r", *a, **k):      # open() reads nothing outside the sandbox folder either
        if not isinstance(file, int):
            p = realpath(file if isinstance(file, (str, bytes)) else fspath(file))
            p = p.decode("utf-8", "replace") if isinstance(p, bytes) else p
            if not (p == root or p.startswith(root + sep)):
                raise PermissionError("reading outside the sandbox directory")
        return real_open(file, mode, *a, **k)
    builtins.open = io.open = read_inside
    try:
        code = compile(src, "solution.py", "exec")
    except BaseException as e:
        status("error 0 " + type(e).__name__ + ": " + str(e)); exit_(1)
    if style == "functional":
        g = {"__name__": "__main__", "__builtins__": builtins}
        try:
            exec(code, g)
            obj = g["Solution"]() if "class Solution" in src and "Solution" in g else None
            fn = getattr(obj, fn_name) if obj is not None else g[fn_name]
        except BaseException as e:
            status("error 0 " + type(e).__name__ + ": " + str(e)); exit_(1)
        status("ready")
        for i in range(n):
            try:
                args = [json.loads(line) for line in read("in_%d" % i).split("\n")]
                out = fn(*args)
                if isinstance(out, tuple):
                    out = list(out)
                text = json.dumps(out)
            except BaseException as e:
                status("error %d %s: %s" % (i, type(e).__name__, e)); exit_(1)
            with FileIO("out_%d" % i, "w") as f:
                f.write(text.encode("utf-8"))
            status("done %d" % i)
        exit_(0)
    status("ready")
    for i in range(n):
        fd = os_open("in_%d" % i, O.O_RDONLY); dup2(fd, 0); close(fd)
        fd = os_open("out_%d" % i, O.O_WRONLY | O.O_CREAT | O.O_TRUNC, 0o600); dup2(fd, 1); close(fd)
        sys.stdin = TextIOWrapper(BufferedReader(FileIO(0, "r", closefd=False)), encoding="utf-8")
        sys.stdout = TextIOWrapper(BufferedWriter(FileIO(1, "w", closefd=False)), encoding="utf-8")
        try:
            exec(code, {"__name__": "__main__", "__builtins__": builtins})
        except SystemExit:
            pass                       # as lcb_runner: exit() ends the program, it is not an error
        except BaseException as e:
            status("error %d %s: %s" % (i, type(e).__name__, e)); exit_(1)
        try:
            sys.stdout.flush()
        except BaseException:
            pass
        status("done %d" % i)
    exit_(0)
_lcb()
'''


def run_tests(code: str, inputs: list[str], outputs: list[str], style: str = "stdin", fn_name: str = "",
              time_limit: float = LCB_TIME_LIMIT, memory_mb: int = LCB_MEMORY_MB,
              python: str | None = None) -> tuple[bool, str]:
    """Run `code` on every test in order, in one sandboxed process; (passed all, reason). The first
    failing test (wrong output, error, crash, over `time_limit` seconds of wall time) ends the run."""
    if style not in ("stdin", "functional") or len(inputs) != len(outputs) or not inputs:
        return False, "no tests" if not inputs else f"bad test set ({style}, {len(inputs)} vs {len(outputs)})"
    files = {"solution.py": LCB_IMPORT_HEADER + "\n" + code, **{f"in_{i}": x for i, x in enumerate(inputs)}}
    try:
        with sandbox.Child("verifier-lcb-", files) as child:
            r, w = child.pipe()
            limits = sandbox.Limits(cpu_s=int(math.ceil(time_limit * len(inputs))) + 5, memory_mb=memory_mb,
                                    file_bytes=max(1 << 20, 2 * max(len(o) for o in outputs) + (64 << 10)),
                                    stack_mb=256)    # a longer output is wrong anyway; deep recursion needs the stack
            proc = child.start(sandbox.PRELUDE + "\n" + _LCB_HARNESS, [style, str(len(inputs)), str(w), fn_name or ""],
                               pass_fds=(w,), limits=limits, python=python)
            return _judge(proc, r, child.folder, outputs, style, time_limit)
    except Exception as e:      # the sandbox itself failed: never a pass, never raised
        return False, f"sandbox error: {type(e).__name__}: {e}"


def _read_output(path: str) -> str | None:
    """A test's output file as text, or None. The sandboxed program owns its folder, so the file may have
    been replaced by a symlink (to /dev/zero, a FIFO, a huge file): it is opened without following links
    and without blocking, must be a regular file, and at most LCB_MAX_OUTPUT bytes are read."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return None
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode) or st.st_size > LCB_MAX_OUTPUT:
            return None
        return f.read(LCB_MAX_OUTPUT + 1)[:LCB_MAX_OUTPUT].decode("utf-8", "replace")


def _judge(proc, r: int, tmp: str, outputs: list[str], style: str, time_limit: float) -> tuple[bool, str]:
    """Read the child's "done i" / "error i ..." lines, compare each finished test's output, enforce the
    per-test wall-clock limit (the first test also gets the interpreter's start-up time)."""
    match = stdout_matches if style == "stdin" else functional_matches
    buf, i = b"", -1                   # test -1: start-up (interpreter, imports, the program's class)
    deadline = time.monotonic() + time_limit + 5.0
    while i < len(outputs):
        while b"\n" not in buf:
            left = deadline - time.monotonic()
            if left <= 0:
                return False, (f"time limit ({time_limit:g} s) on test {i + 1} of {len(outputs)}" if i >= 0
                               else "time limit while starting")
            ready, _, _ = select.select([r], [], [], left)
            if not ready:
                continue
            chunk = os.read(r, 4096)
            if not chunk:
                proc.wait()
                return False, f"crashed on test {max(i, 0) + 1} (exit {proc.returncode})"
            buf += chunk
            if len(buf) > 1 << 16:
                return False, "garbage on the status pipe"
        line, buf = buf.split(b"\n", 1)
        msg = line.decode("utf-8", "replace")
        err = re.match(r"error (\d+) (.*)", msg)
        if err:
            return False, f"runtime error on test {int(err.group(1)) + 1}: {err.group(2)[:200]}"
        if i < 0 and msg == "ready":
            i, deadline = 0, time.monotonic() + time_limit
            continue
        if msg != f"done {i}":
            return False, f"unexpected status {msg[:60]!r}"
        got = _read_output(os.path.join(tmp, f"out_{i}"))
        if got is None:
            return False, f"no output file for test {i + 1} (or not a regular file, or over {LCB_MAX_OUTPUT} bytes)"
        if not match(got, outputs[i]):
            return False, f"wrong answer on test {i + 1} of {len(outputs)}"
        i += 1
        deadline = time.monotonic() + time_limit
    return True, f"passed all {len(outputs)} tests"


@lru_cache(maxsize=2)          # the n samples of one problem come together
def _tests_from_file(path: str, mtime_ns: int) -> tuple[tuple[str, ...], tuple[str, ...]]:
    with gzip.open(path, "rt", encoding="utf-8") as f:
        t = json.load(f)
    return tuple(t["inputs"]), tuple(t["outputs"])


def _load_tests(fields: dict) -> tuple[list[str], list[str]] | None:
    """(inputs, outputs) from the row: `tests` inline, or `tests_file` (gzip JSON written by data.py)."""
    t = fields.get("tests")
    if isinstance(t, dict):
        return list(t["inputs"]), list(t["outputs"])
    path = fields.get("tests_file")
    if path:
        ins, outs = _tests_from_file(str(path), os.stat(path).st_mtime_ns)
        return list(ins), list(outs)
    return None


def verify_livecodebench(response: str, answer: str = "", *, test_style: str = "stdin", fn_name: str = "",
                         timeout: float | None = None, memory_mb: int | None = None, **fields) -> Verdict:
    """The response's last code block against the problem's tests (see the module docstring)."""
    code = verifier.extract_code(verifier.clean_response(response))
    if not code.strip():
        return Verdict(0.0, None, "no code")
    try:
        tests = _load_tests(fields)
    except (OSError, ValueError, KeyError, TypeError) as e:
        return Verdict(0.0, code, f"tests unreadable: {type(e).__name__}: {e}")
    if tests is None:
        return Verdict(0.0, code, "row has no tests")
    ok, reason = run_tests(code, tests[0], tests[1], test_style, fn_name,
                           float(timeout or LCB_TIME_LIMIT), int(memory_mb or LCB_MEMORY_MB))
    return Verdict(float(ok), code, reason)


GRADERS = {"bbh": verify_bbh, "synlogic": verify_synlogic, "livecodebench": verify_livecodebench}
