"""Rule-based rewards for RLVR: math, logic and code answers -> a reward in {0, 1}.

The reward is the only training signal, so this file trades coverage for trust: a false negative
hides a correct answer, a false positive teaches the policy to game the checker. Everything here is
hand-written on the standard library (no sympy, no math-verify) and every public function is a pure
function of strings that never raises.

Answer extraction: two modes, ``mode="strict"|"lenient"`` on every public entry point
- ``strict`` (the training reward, as the paper's): only the last ``\\boxed{...}`` (``\\fbox``,
  ``\\framebox``) counts, as in Hendrycks et al.'s MATH ``last_boxed_only_string``; no box, no reward.
  Boxes joined only by connectors (",", "and", "or", ``\\quad\\text{and}\\quad``, "for part (a) and",
  nothing) are also read together: ``\\boxed{1}, \\boxed{2}`` matches the gold "1, 2" (their union) as
  well as a gold equal to the last box (the classic rule, which MATH's own golds follow); a box after
  prose ("I got \\boxed{3}, but ... \\boxed{7}") or after a closed math block simply replaces it.
- ``lenient`` (evaluation, as the Qwen2.5-Math and math-verify evaluators): the box first; then
  GSM8K's ``#### X``; then the last "the (final) answer is X" / "Answer: X" clause, reading the answer
  inside the clause ("the answer is that she makes 18 dollars" -> 18); then the last math span or
  number of the final-answer position only: the last sentence of the last line (a trailing sign-off
  such as "I hope it is correct." is skipped), never a number anywhere else.
- Both modes: text after a chat-template turn marker (``<|im_end|>``, ``<|im_start|>user``, ...) is
  cut off; a response truncated inside its last box has no answer; JSON-dumped LaTeX (``\\\\frac``)
  is unescaped; markdown emphasis around an answer (``**18**``) is dropped. The module default is
  ``mode="lenient"`` (evaluation); train.py and eval.py pass their ``--answer-mode`` (strict for
  training). Gold answers are read with the same rules (a boxed or ``$``-wrapped gold is its content;
  several boxes in a gold are their union).
- Currency: a ``$`` before a number is a price, not a math delimiter, unless plain math (no prose)
  follows it up to a closing ``$`` that is not itself a price sign: "9 * $2 = $18 every day" -> 18.

Which official normalizations it follows
- MATH's ``strip_string`` (``\\left``/``\\right``, ``\\dfrac``/``\\tfrac``, ``\\frac12``, ``\\sqrt3``,
  ``^\\circ``, ``\\%``, ``\\$``, ``x =`` prefixes, units in ``\\text{}``) plus Minerva's
  ``normalize_final_answer`` (unit words, thousands separators, trailing ``.0``), extended to the
  answer families of math-verify's test-suite. They are three tables, each row with its reason and an
  example: the ordered rewrites (_REWRITES), the tails cut after the answer (_TAILS: percent signs,
  units) and the relation spellings (_RELATION_SPELLINGS); the \\text{}-like commands are one list.
- Equivalence: instead of sympy (Minerva, OlympiadBench's ``math_judger``) a small recursive-descent
  parser/evaluator for LaTeX arithmetic decides equality by evaluating both sides (complex numbers)
  at 5 fixed pseudo-random points. Structures follow OlympiadBench's judger: tuples and intervals are
  ordered and their brackets matter, sets and comma lists are unordered, matrices are compared
  entrywise, an equation is compared by ``lhs - rhs`` up to a non-zero factor.

What counts as equal (numbers and tolerances, separators, percent, units, matrices, equations,
inequalities and intervals, multiple choice) is stated rule by rule in docs/data.md, each rule with its
tests in tests/test_verifier.py and cases in tests/verifier_cases.jsonl.

Logic: reasoning-gym's knights-and-knaves answer ("A is a knight, B is a knave", any order, the
puzzle's own two role words) and zebra answers (one name, case-insensitive); multiple choice by letter.
Code: HumanEval's ``check(entry_point)`` protocol, graded by sandbox.run_code: the program runs in a
separate, resource-limited process that only answers calls, the test runs here on the values that come
back, so a program cannot forge a pass (sandbox.py states the design and its limits).

Public API:  extract_answer, is_equivalent, normalize, verify -> Verdict, reward, verify_batch,
batch_reward, extract_code, clean_response, last_boxed (benchmarks.py's graders read answers with them),
MODES, DEFAULT_MODE; INTERNAL_ERRORS and RAISE_INTERNAL_ERRORS (an exception inside a never-raising entry
point is counted, and re-raised under the tests: see below).
"""
from __future__ import annotations
import bisect
import cmath
import concurrent.futures as cf
import math
import multiprocessing as mp
import os
import random
import re
from collections import Counter
from dataclasses import dataclass
from functools import lru_cache
from typing import NamedTuple

import sandbox

MODES = ("strict", "lenient")
DEFAULT_MODE = "lenient"    # evaluation; training passes mode="strict" (see the module docstring)
MAX_ANSWER_CHARS = 1000     # longer answers are compared as strings only: the parser is never fed more
MAX_PARSE_DEPTH = 60        # nesting cap of the parser (brackets, powers, unary minus): 9^9^9^... stops here
MAX_EXPONENT = 1000.0       # |b| in a^b above this (with |a| != 1) is treated as an overflow, not computed
REL_TOL = 1e-6              # numeric relative tolerance
N_POINTS = 5                # random evaluation points for expressions with variables
TAIL_CHARS = 20000          # lenient extraction reads only the end of a response
MAX_BOX_GROUP = 20          # at most this many joined boxes form one answer


# Internal failures. verify, reward, extract_answer, is_equivalent and normalize never raise: an exception
# inside them is a bug of this file, and a training run survives it as reward 0 (no answer). It is still
# never silent: each one is counted in INTERNAL_ERRORS ({"where: ExceptionType": count}), and with
# RAISE_INTERNAL_ERRORS (environment CASP_VERIFIER_RAISE=1; the test suite sets it) it is re-raised, so a
# broken rule cannot hide behind "returns 0".
INTERNAL_ERRORS: Counter = Counter()
RAISE_INTERNAL_ERRORS = os.environ.get("CASP_VERIFIER_RAISE") == "1"


def _internal_error(where: str, e: Exception) -> None:
    """Count an exception caught by a never-raising entry point; re-raise it under RAISE_INTERNAL_ERRORS.
    Call it from inside the `except` block."""
    INTERNAL_ERRORS[f"{where}: {type(e).__name__}"] += 1
    if RAISE_INTERNAL_ERRORS:
        raise e


@dataclass(frozen=True)
class Verdict:
    """What `verify` decided: the reward, the answer it extracted (None if none) and why."""
    reward: float
    extracted: str | None
    reason: str


# --------------------------------------------------------------------------- LaTeX plumbing
# Brace matching, JSON-escaped LaTeX (the escaped-LaTeX family: `\\frac` -> `\frac`), unicode math, and
# the two tests of "is this prose or math" that extraction relies on.
_BRACE_RE = re.compile(r"[{}]")
_BRACKET_RE = re.compile(r"[([{)\]}]")      # intervals count as balanced: [0,1)


def _match_brace(s: str, open_pos: int, brackets: re.Pattern = _BRACE_RE) -> int:
    """Index of the bracket closing the one at open_pos, or -1; linear time. Braces by default (like MATH's
    last_boxed_only_string, escaped \\{ \\} too: they come in pairs in a set), or _BRACKET_RE's three kinds."""
    depth = 0
    for m in brackets.finditer(s, open_pos):
        depth += 1 if m.group() in "([{" else -1
        if depth == 0:
            return m.start()
    return -1


_ESCAPED_RE = re.compile(r"\\\\(?:[A-Za-z]{2,}|[%$,!{}()\[\]])")
_SINGLE_CMD_RE = re.compile(r"(?<!\\)\\[A-Za-z]{2,}")


def _unescape(s: str) -> str:
    """JSON-dumped LaTeX has every backslash doubled (``\\\\frac``, ``\\\\left(``, ``28\\\\%``). Undone only
    when no command anywhere has a single backslash, so a real ``\\\\`` row break stays one."""
    if "\\\\" in s and _ESCAPED_RE.search(s) and not _SINGLE_CMD_RE.search(s):
        return s.replace("\\\\", "\\")
    return s


_DELIM_RE = re.compile(r"\$|\\[()\[\]]")
# \text{}-like commands: their argument is text, read as its content (after a number: a unit, see _TAILS)
_TEXT_CMDS = ("text", "textbf", "textit", "textrm", "textnormal", "mbox", "mathrm", "mathbf", "mathit",
              "operatorname", "rm", "num")
_TEXT_CMD_RE = re.compile(r"\\(?:%s)\s*\{" % "|".join(_TEXT_CMDS))
_TEXT_GROUP_RE = re.compile(_TEXT_CMD_RE.pattern + r"([^{}]*)\}")       # one without nested braces
_CMD_RE = re.compile(r"\\[A-Za-z]+")
_PROSE_RE = re.compile(r"\b[A-Za-z]{2,}\s+[A-Za-z]{3,}\b|\b[A-Za-z]{3,}\s+[A-Za-z]{2,}\b")
_WORD_RE = re.compile(r"[A-Za-z]{2,}")


def _has_prose(s: str) -> bool:
    """Two words in a row outside LaTeX commands and \\text{}: English, not math."""
    return bool(_PROSE_RE.search(_CMD_RE.sub(" ", _TEXT_GROUP_RE.sub(" ", s))))


def _is_simple(s: str) -> bool:
    """Math-looking text: no word of two or more letters outside commands, except "and"/"or"."""
    return all(w.lower() in ("and", "or") for w in _WORD_RE.findall(_CMD_RE.sub(" ", s)))


# --------------------------------------------------------------------------- answer extraction: boxes (both modes)
_BOX_CMDS = ("\\boxed", "\\fbox", "\\framebox")


def _box_before(s: str, end: int):
    """The last box command starting before `end` as (start, content start, content end, box end);
    content end is -1 for an unclosed box. None without a box."""
    idx, cmd = max((s.rfind(c, 0, end), c) for c in _BOX_CMDS)
    if idx < 0:
        return None
    j = idx + len(cmd)
    while j < len(s) and s[j] == " ":
        j += 1
    if cmd == "\\framebox" and j < len(s) and s[j] == "[":      # \framebox[width]{...}
        k = s.find("]", j)
        j = k + 1 if k >= 0 else len(s)
    if j < len(s) and s[j] == "{":
        k = _match_brace(s, j)
        return idx, j + 1, k, (k + 1 if k >= 0 else -1)
    m = re.match(r"[^\s$]+", s[j:j + MAX_ANSWER_CHARS])        # "\boxed 5" (old MATH style)
    if m and j > idx + len(cmd):
        return idx, j, j + m.end(), j + m.end()
    return idx, j, -1, -1


def last_boxed(s: str) -> tuple[str | None, bool]:
    """(content of the last box, whether a box exists). An unclosed last box gives (None, True)."""
    b = _box_before(s, len(s))
    if b is None:
        return None, False
    return (s[b[1]:b[2]], True) if b[2] >= 0 else (None, True)


_SEP_NOISE_RE = re.compile(r"\$|\\[()\[\]]|\\q?quad(?![A-Za-z])|\\[,;:! ]|[\s~]")
_JOINERS = {",", ";", "and", "or", ",and", ",or", "&"}


def _joins_boxes(sep: str) -> bool:
    """Whether the text between two boxes only joins them ("," "and" "\\quad\\text{and}\\quad",
    "for part (a) and"): then they also read as one answer. Bare whitespace joins too, unless a math
    block closes in between ("$$\\boxed{20}$$ \\boxed{143}" is a correction)."""
    if len(sep) > 80:
        return False
    text = _TEXT_GROUP_RE.sub(r"\1", sep)
    word = _SEP_NOISE_RE.sub("", text).lower()
    if not word:
        return not _DELIM_RE.search(sep)
    if word in _JOINERS:
        return True
    words = _DELIM_RE.sub(" ", text).replace(",", " , ").split()
    return (len(words) <= 6 and words[-1].lower() in ("and", "or", ",") and not re.search(r"[\d=]", text)
            and not _CUE_RE.search(text))


def _boxed_parts(s: str) -> tuple[list[str] | None, bool]:
    """(contents, whether a box exists): the last box, or the last run of boxes joined by connectors
    ("\\boxed{1}, \\boxed{2} and \\boxed{3}" -> ["1", "2", "3"]). An unclosed last box gives (None, True)."""
    b = _box_before(s, len(s))
    if b is None:
        return None, False
    start, cs, ce, _ = b
    if ce < 0:
        return None, True
    parts = [s[cs:ce]]
    for _ in range(MAX_BOX_GROUP):
        prev = _box_before(s, start)
        if prev is None or prev[2] < 0 or prev[3] > start or not _joins_boxes(s[prev[3]:start]):
            break
        parts.append(s[prev[1]:prev[2]])
        start = prev[0]
    parts = [p.strip() for p in reversed(parts) if p.strip()]
    return (parts or None), True


_TURN_RE = re.compile(r"<\|(?:im_end|im_start|endoftext|eot_id|start_header_id|end_header_id|end_of_text|end|"
                      r"user|assistant|system)\|>|</s>|<\uff5c(?:end\u2581of\u2581sentence|User|Assistant)\uff5c>")


def clean_response(response: str) -> str:
    """A response as every grader reads it: cut at the first chat-template turn marker after some content
    (what follows is a turn the model invented: a fake user message, another answer), JSON-escaped LaTeX
    undone."""
    for m in _TURN_RE.finditer(response):
        if response[:m.start()].strip():
            return _unescape(response[:m.start()])
    return _unescape(response)


# --------------------------------------------------------------------------- answer extraction: lenient fallbacks
# Without a box, lenient mode reads (in order) GSM8K's "#### X", the last answer clause, and the final-answer
# position. Math spans are found with the currency rule, so a price is never a delimiter.
_MATH_TOK_RE = re.compile(r"\$\$|\\\[|\\\]|\\\(|\\\)|(?<!\\)\$")
_CLOSER = {"$$": "$$", "\\[": "\\]", "\\(": "\\)", "$": "$"}
_PRICE_START_RE = re.compile(r" ?\d")


def _math_spans(t: str) -> list[tuple[int, int, int, int]]:
    """Math spans of t as (start, end, content start, content end): $$..$$, \\[..\\], \\(..\\), $..$
    (one line). A `$` before a number is a price sign unless plain math (no prose) follows it up to a
    closing `$` that is not itself a price sign: "9 * $2 = $18 every day" has no math span."""
    toks = [(m.start(), m.group()) for m in _MATH_TOK_RE.finditer(t)]
    closing, seen = [None] * len(toks), {}              # closing[i]: the next token that closes toks[i]
    for i in range(len(toks) - 1, -1, -1):
        closing[i] = seen.get(_CLOSER.get(toks[i][1]))
        seen[toks[i][1]] = i
    spans, i = [], 0
    while i < len(toks):
        (p, k), j = toks[i], closing[i]
        if j is None:
            i += 1
            continue
        q = toks[j][0]
        cs = p + len(k)
        if k == "$":
            content = t[cs:q]
            ok = bool(content.strip()) and "\n" not in content
            if ok and _PRICE_START_RE.match(t, cs):
                ok = not t[q + 1:q + 2].isdigit() and not _has_prose(content)
            if not ok:
                i += 1
                continue
        spans.append((p, q + len(k), cs, q))         # (an opener and its closer have one length)
        i = j + 1
    return spans


def _in_span(pos: int, spans, starts) -> bool:
    n = bisect.bisect_right(starts, pos) - 1
    return n >= 0 and spans[n][0] <= pos < spans[n][1]


_NUM_TEXT_RE = re.compile(
    r"(?<![\w.])-?(?:\d+\s+\d+/\d+(?![\d/])|\d+,\d{1,2}(?![\d,])|(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?"
    r"(?:\s*/\s*\d+(?:\.\d+)?)?)"
    r"(?:\s*(?:\\?%|percent(?:age)?\b|pct\b))?")
_MC_TEXT_RE = re.compile(r"\(([A-J])\)")


def _last_candidate(t: str, a: int, b: int, spans) -> str | None:
    """The last answer candidate in t[a:b]: a math span, a number (a price's digits, a percentage) or
    an option "(C)", whichever comes last."""
    best = (-1, None)
    for s0, s1, cs, ce in spans:                              # spans are in order: keep the last one
        if a <= s0 and s1 <= b and t[cs:ce].strip():
            best = (s0, t[cs:ce])
    starts = [sp[0] for sp in spans]
    for rx in (_NUM_TEXT_RE, _MC_TEXT_RE):
        for m in rx.finditer(t, a, b):
            if m.start() > best[0] and not _in_span(m.start(), spans, starts):
                best = (m.start(), m.group())
    return best[1].strip() if best[1] else None


_SENT_END_RE = re.compile(r"[.!?](?=\s|$)|\n")


def _sentence_ends(t: str, a: int, spans) -> list[int]:
    """Positions (after the punctuation) where sentences end in t[a:], outside math spans."""
    starts = [sp[0] for sp in spans]
    return [m.end() for m in _SENT_END_RE.finditer(t, a) if not _in_span(m.start(), spans, starts)]


_CUE_RE = re.compile(r"(?:final\s+answer|\banswer)\s*(?:is|will\s+be|would\s+be|should\s+be|:|=)\s*:?"
                     r"|\*\*\s*final\s+answer\s*:?\s*\*\*\s*:?", re.IGNORECASE)
_SIGNOFF_RE = re.compile(r"\b(?:hope|correct|helps?|luck|thanks?|questions?|let me know)\b", re.IGNORECASE)


def _end_punct(s: str) -> str:
    """Drop markdown emphasis and sentence punctuation around an answer ("**18**.", "`18`"), but not
    an ellipsis ("1, 2, 3, ...")."""
    s = s.strip().strip("*`").strip()
    s = s if s.endswith("..") else re.sub(r"\s*[.,!?]$", "", s).strip()
    return s.strip("*`").strip()


def _clause_answer(t: str) -> str | None:
    """The answer inside an answer clause t ("that she makes 18 dollars. ..." -> "18")."""
    w = t[:3000].lstrip(" \t\n:*")
    spans = _math_spans(w)
    ends = _sentence_ends(w, 0, spans)
    end = ends[0] if ends else len(w)
    bare = _end_punct(_DELIM_RE.sub(" ", w[:end])).strip('"').strip()
    if bare and _is_simple(bare):
        return bare
    cand = _last_candidate(w, 0, end, spans)
    if cand:
        return cand
    return bare if bare and len(bare.split()) <= 4 else None


def _final_position_answer(t: str) -> str | None:
    """The last math span or number of the last sentence of the last line (a display block spanning
    lines counts as its last line); a trailing sign-off sentence without digits is skipped."""
    w = t[-4000:].rstrip()
    if not w:
        return None
    spans = _math_spans(w)
    ls = w.rfind("\n") + 1
    for s0, s1, _, _ in spans:
        if s0 < ls < s1:
            ls = w.rfind("\n", 0, s0) + 1
            break
    bare = _end_punct(_DELIM_RE.sub(" ", w[ls:]))
    if bare and len(bare) <= 40 and _is_simple(bare):
        return bare
    ends = [e for e in _sentence_ends(w, ls, spans) if e < len(w)]
    bounds = [ls] + ends + [len(w)]
    sents = [(x, y) for x, y in zip(bounds, bounds[1:]) if w[x:y].strip()]
    if not sents:
        return None
    cand = _last_candidate(w, *sents[-1], spans)
    last = w[sents[-1][0]:sents[-1][1]]
    if cand is None and len(sents) > 1 and _SIGNOFF_RE.search(last) and not re.search(r"\d", last):
        cand = _last_candidate(w, *sents[-2], spans)
    return cand


def _lenient_answer(t: str) -> str | None:
    tail = t[-TAIL_CHARS:]
    k = tail.rfind("####")                    # GSM8K's "#### 18" (not a markdown heading "#### Step 2")
    if k >= 0:
        ans = tail[k + 4:].strip().split("\n")[0].strip()
        if ans and _is_simple(ans.replace("$", "")):
            return ans
    cues = list(_CUE_RE.finditer(tail))
    if cues and (ans := _clause_answer(tail[cues[-1].end():])):
        return ans
    return _final_position_answer(tail)


def _answer_readings(response: str, mode: str) -> list[str]:
    """The readings of a response's final answer, most natural first: joined boxes are read as their
    union ("1, 2") and, as the classic last-box rule (the one MATH's own golds follow), as the last box."""
    if not isinstance(response, str) or not response.strip() or mode not in MODES:
        return []
    t = clean_response(response)
    parts, has_box = _boxed_parts(t)
    if has_box:
        return [", ".join(parts), parts[-1]] if parts and len(parts) > 1 else parts or []
    ans = None if mode == "strict" else _lenient_answer(t)
    return [ans] if ans else []


def extract_answer(response: str, mode: str = DEFAULT_MODE) -> str | None:
    """The final answer in a model response, or None (empty, truncated mid-box, no candidate; in
    strict mode: no box). See the module docstring for the two modes."""
    try:
        readings = _answer_readings(response, mode)
        return readings[0] if readings else None
    except Exception as e:  # a verifier never raises; an unparseable response simply has no answer
        _internal_error("extract_answer", e)
        return None


def _gold_answer(gold: str) -> str:
    """A gold answer as the data sets write it: JSON-escaped, boxed ("\\(\\boxed{1}\\) and
    \\(\\boxed{-2}\\)."), or in $...$; its boxes, if any, are the answer."""
    g = _unescape(gold)
    parts = _boxed_parts(g)[0] if "box" in g else None
    return ", ".join(parts) if parts else g


# --------------------------------------------------------------------------- normalisation: the tables
# One normal form per answer string: (string, had a percent sign, canonical unit). _normal_form applies the
# rewrite table _REWRITES in order; its row `_TAILS_ROW` cuts the answer's tails (table _TAILS: percent and
# degree signs, \text{}-like groups, a unit). Relation spellings are one table (_RELATION_SPELLINGS), the
# \text{}-like commands one list (_TEXT_CMDS). Each row's example is an answer and its normal form, which the
# table without that row does not give (a test checks both, row by row).
class Rewrite(NamedTuple):
    pattern: re.Pattern | None
    replacement: object          # a string (with \1 groups) or a function of the match
    why: str
    example: tuple[str, object]  # (an answer, its normal form, or _normalize's whole triple)


class Tail(NamedTuple):
    pattern: re.Pattern
    kind: str                    # "percent", "drop", "text" or "unit"
    why: str
    example: tuple[str, tuple]   # (an answer, _normalize's triple for it)


def _row(pattern, replacement, why: str, example, flags: int = 0) -> Rewrite:
    """One row of _REWRITES. `pattern` may be a dict of spellings, each rewritten to its value (a command
    only as a whole word: \\ge is not the start of \\geq)."""
    if isinstance(pattern, dict):
        spellings = pattern
        pattern = "|".join(re.escape(k) + ("(?![A-Za-z])" if re.fullmatch(r"\\[A-Za-z]+", k) else "")
                           for k in sorted(spellings, key=len, reverse=True))
        replacement = lambda m: spellings[m.group()]    # noqa: E731
    return Rewrite(re.compile(pattern, flags), replacement, why, example)


# Relation spellings: (the spelling the parser reads, its meaning, every other spelling)
_RELATION_SPELLINGS = [
    ("\\geq", ">=", ("\\geqslant", "\\geqq", "\\ge", ">=", "\u2265")),
    ("\\leq", "<=", ("\\leqslant", "\\leqq", "\\le", "<=", "\u2264")),
    ("\\neq", "!=", ("\\ne", "!=", "\u2260")),
    (">", ">", ("\\gt",)),
    ("<", "<", ("\\lt",)),
]
_REL_OPS = {canon: op for canon, op, _ in _RELATION_SPELLINGS}               # "\\leq" -> "<="
_RELATIONS_TO_CANON = {s: canon + (" " if canon[0] == "\\" and s[0] != "\\" else "")    # ">=" -> "\\geq "
                       for canon, _, spellings in _RELATION_SPELLINGS for s in spellings}


def _whole_box(m: re.Match) -> str:
    b, _ = last_boxed(m.group())
    return m.group() if b is None else b


def _repeating_decimal(m: re.Match) -> str:
    """0.\\overline{3} -> \\frac{3}{9}; 1.2\\overline{34} -> the exact fraction (not 0.3, not 1.234)."""
    whole, fixed, rep = m.group(1) or "0", m.group(2), m.group(3)
    den = 10 ** len(fixed) * (10 ** len(rep) - 1)
    num = int(whole + fixed + rep) - int(whole + fixed)
    return f"\\frac{{{num}}}{{{den}}}"


def _exact_side(m: re.Match) -> str:
    """"a \\approx b": the exact side a, or b when a is only a label ("x \\approx 0.67")."""
    left = m.group(1).strip().rstrip("=").strip()
    return m.group(2) if not left or _is_label(left) else m.group(1)


def _mixed_number(m: re.Match) -> str:
    whole, p, q = (int(g) for g in m.groups())
    return f"({whole}+\\frac{{{p}}}{{{q}}})" if 0 <= p < q else m.group()


_TAILS_ROW = Rewrite(None, None, "cut the tails (table _TAILS): percent and degree signs, \\text{} groups, a unit",
                     ("35 \\text{ cm}", ("35", False, "cm")))
_REWRITES = [
    # LaTeX that only lays the answer out goes
    _row(r"^\\(?:boxed|fbox)\s*\{.*\}$", _whole_box, "a box around the whole answer", ("\\boxed{12}", "12"),
         re.DOTALL),
    _row({"\u2212": "-", "\u2013": "-", "\u2014": "-", "\u00d7": "*", "\u00b7": "*", "\u22c5": "*", "\u00f7": "/",
          "\u221e": "\\infty ", "\u03c0": "\\pi ", "\u221a": "\\sqrt", "\u222a": "\\cup ", "\u2208": "\\in ",
          "\u00b2": "^2", "\u00b3": "^3", "\u00b0": "^\\circ", "\u20ac": "", "\u00a3": "", "\u00a5": "", "\u00a0": " ",
          "\u2009": " ", "\u202f": " ", "\uff0c": ",", "\uff1a": ":", "\uff08": "(", "\uff09": ")"},
         None, "unicode math is LaTeX", ("2\u00d73", "2*3")),
    _row(r",\s*\\!\s*", ",", "a thousands comma with a negative space, spaced or not", ("11,\\! 111", "11,111")),
    _row(r"\\!", "", "a negative space", ("10\\!080", "10080")),
    _row(r"\{,\}", ",", "a comma in braces (a thousands separator)", ("1{,}000", "1,000")),
    _row(r"\\(?:left|right|big|Big|bigg|Bigg)(?![A-Za-z])\s*\.?", "", "sizes of brackets",
         ("\\left(1,2\\right)", "(1,2)")),
    _row(r"\\[dtc]frac", r"\\frac", "display, text and continued fractions are fractions",
         ("\\dfrac{3}{4}", "\\frac{3}{4}")),
    _row(r"\\(?:displaystyle|textstyle|quad|qquad|limits)(?![A-Za-z])", " ", "display styles and wide spaces",
         ("\\displaystyle\\frac12", "\\frac12")),
    _row(r"(?<!\\)\\[,;: ]|~|\n", " ", "thin, medium and explicit spaces, line breaks", ("2\\,000", "2000")),
    _row(r"\\?\$", "", "dollar signs: a price's or a math delimiter", ("\\$18.90", "18.90")),
    _row(r"\\[()\[\]]", " ", "the math delimiters \\( \\) \\[ \\]", ("\\(x+1\\)", "x+1")),
    _row(r'^[\s"]+|[\s"]+$', "", "quotes around the answer", ('"east"', "east")),
    _row(r"(?<![\d.])(\d*)\.(\d*)\\overline\s*\{(\d+)\}", _repeating_decimal, "repeating decimals are exact",
         ("0.\\overline{3}", "\\frac{3}{9}")),
    _row(r"\\mathbb\s*\{?\s*R\s*\}?|^(?:\\text\s*\{)?\s*all real numbers\s*\}?$", r"(-\\infty,\\infty)",
         "the real line is an interval", ("\\mathbb{R}", "(-\\infty,\\infty)")),
    _row(r"\\(?:emptyset|varnothing)(?![A-Za-z])", r"\\{\\}", "the empty set is a set", ("\\emptyset", "\\{\\}")),
    _row(r"\\(?:mathbb|mathcal|boldsymbol|bm|vec|hat|bar|overline|dot)\s*\{([^{}]*)\}", r"\1",
         "fonts and accents on a name", ("\\vec{v}", "v")),
    _row({"\\langle": "(", "\\rangle": ")"}, None, "a vector in angle brackets is a tuple",
         ("\\langle1,2\\rangle", "(1,2)")),
    _row(r"\^\s*\{\s*\\prime\s*\}|\^\s*\\prime", "'", "a prime", ("f^\\prime(x)", "f'(x)")),
    # several answers joined by words are a comma list
    _row(r"\\text\s*\{\s*(?:and|or)\s*\}|\{\s*(?:and|or)\s*\}", ",", "and/or in text or braces",
         ("-2{or}-12", "-2,-12")),
    _row(r"\{\}", "", "empty braces (left by MATH's strip_string)", ("2,3,{}4", "2,3,4")),
    _row(r"^(.*?)\\approx(?![A-Za-z])(?:.*\\approx(?![A-Za-z]))?(.*)$", _exact_side, "a \\approx b: the exact side",
         ("\\frac23 \\approx 0.67", "\\frac23"), re.DOTALL),
    _row(r"\s+(?:and|or)\s+|(?<=[)\]}])\s*(?:and|or)\s*(?=[(\[{\\])", ",", "and/or between answers",
         ("2 and 3", "2,3")),
    # one spelling per operator
    _row(_RELATIONS_TO_CANON, None, "relations (table _RELATION_SPELLINGS)", ("x \\ge 5", "x \\geq 5")),
    _row({"\\cdot": "*", "\\times": "*", "\\ast": "*", "\\div": "/", "**": "^", "\\lbrace": "\\{", "\\rbrace": "\\}",
          "\\lvert": "|", "\\rvert": "|"}, None, "products, quotients, powers, braces and bars",
         ("2 \\times 3", "2 * 3")),
    _TAILS_ROW,
    _row(r"(?<![\\A-Za-z])(sqrt|sin|cos|tan|sec|csc|cot|ln|log|exp|pi|arcsin|arccos|arctan|infty)(?![A-Za-z])",
         r"\\\1", "function names without a backslash", ("sqrt(2)", "\\sqrt(2)")),
    _row(r"\binfinity\b", r"\\infty", "infinity in words", ("(0, infinity)", "(0, \\infty)")),
    # tidy
    _row(r"([_^])\{\s*([A-Za-z0-9])\s*\}", r"\1\2", "one-character exponents and subscripts", ("x^{2}", "x^2")),
    _row(r"\s+", lambda m: "" if m.start() == 0 or m.end() == len(m.string) else " ", "runs of space",
         ("x  +  1", "x + 1")),
    _row(r"^\{(.+)\}$", lambda m: m.group(1).strip() if _match_brace(m.string, 0) == len(m.string) - 1 else m.group(),
         "braces around the whole answer (left by MATH's strip_string)", ("{A,B}", "A,B"), re.DOTALL),
    # numbers (comma separators are read later, see _comma_number: they can be lists)
    _row(r"^-?[1-9]\d{0,2}(?: \d{3})+(?:\.\d+)?$", lambda m: m.group().replace(" ", ""),
         "spaces as thousands separators", ("1 000 000", "1000000")),
    _row(r"(?<![\w.}^_)\]])(\d+)\s*\\frac\s*\{(\d+)\}\s*\{(\d+)\}", _mixed_number, "a mixed number in LaTeX",
         ("2\\frac{1}{2}", "(2+\\frac{1}{2})")),
    _row(r"(?<![\w.}^_/)\]])(\d+) (\d+)\s*/\s*(\d+)(?![\d./])", _mixed_number, "a mixed number with a slash",
         ("4 4/9", "(4+\\frac{4}{9})")),
    _row(r"^(-?\d+)\.0+$", r"\1", "trailing zeros", ("$18.0$", "18")),
    _row(r"^\+(?=\d)", "", "a leading plus", ("+7", "7")),
]

# Tails, cut at _TAILS_ROW in this order: percent and degree signs, then \text{}-like groups (unwrapped; one
# after a number is a unit and goes), then one unit written after the number. Units are compared only when
# both sides have one (5 cm != 50 mm: no conversion); percent signs by the percent rule.
_UNIT_WORDS = (
    "degrees?|radians?|cm|mm|km|meters?|metres?|centimeters?|millimeters?|kilometers?|inches|inch|feet|foot|"
    "ft|yards?|yd|miles?|mph|kph|hours?|hrs?|minutes?|mins?|seconds?|secs?|dollars?|cents?|euros?|yuan|"
    "units?|square|sq|cubic|kg|grams?|kilograms?|mg|pounds?|lbs?|ounces?|oz|days?|weeks?|months?|years?|"
    "liters?|litres?|ml|gallons?|people|persons?|students?|marbles|apples|cookies|points?|times|ways|"
    "km/h|km/hr|m/s|cm/s|mi/h|ft/s|sq\\.?\\s*units")
_TAILS = [   # Tail(pattern, kind, why, (an answer, its normal form))
    Tail(re.compile(r"\\?%"), "percent", "a percent sign", ("28\\%", ("28", True, ""))),
    Tail(re.compile(r"(?<=[\d}\s])\s*(?:percent(?:age)?|pct)\.?$", re.IGNORECASE), "percent",
         "a percent word after the number", ("28 percent", ("28", True, ""))),
    Tail(re.compile(r"\^\s*\{\s*\\circ\s*\}|\^\s*\\circ|\\circ|\\degree"), "drop", "a degree sign (never compared)",
         ("30^\\circ", ("30", False, ""))),
    Tail(_TEXT_CMD_RE, "text", "\\text{}-like groups are their content; one after a number is a unit",
         ("35 \\text{ cm}", ("35", False, "cm"))),
    Tail(re.compile(r"\s*(?:,|(?<!\.)\.)\s*$"), "drop", "sentence punctuation (an ellipsis stays: 1, 2, ...)",
         ("5.", ("5", False, ""))),
    Tail(re.compile(r"(?<=[\d}.)\s])\s*((?:(?:%s)\b\.?\s*(?:\^\s*\{?\d\}?)?\s*)+)$" % _UNIT_WORDS, re.IGNORECASE),
         "unit", "a unit word after the number", ("35 cm", ("35", False, "cm"))),
    Tail(re.compile(r"(?<=\d)\s+([msgh]|L)(?:\^\s*\{?\d\}?)?$"), "unit",
         "a one-letter unit after a space (35m is a product)", ("35 m", ("35", False, "m"))),
    Tail(re.compile(r"(?<=\d)\s+([a-z]{3,}(?:\s+[a-z]{3,}){0,2})\.?$"), "unit", "a few words after a number",
         ("4 widgets", ("4", False, "widget"))),
]


_PLAIN_NUM_RE = re.compile(r"-?\d+(?:\.\d+)?")


def _normal_form(ans: str, rewrites=_REWRITES, tails=_TAILS) -> tuple[str, bool, str]:
    """(the normal form of an answer, whether it had a percent sign, its canonical unit or "")."""
    s = ans.strip()
    if _PLAIN_NUM_RE.fullmatch(s):                           # the common case: only trailing zeros can go
        return re.sub(r"^(-?\d+)\.0+$", r"\1", s), False, ""
    s, percent, unit = _unescape(s), False, ""
    for row in rewrites:
        if row is _TAILS_ROW:
            s, percent, unit = _cut_tails(s, tails)
        else:
            s = row.pattern.sub(row.replacement, s)
    return s, percent, _canon_unit(unit) if unit.strip() else ""


_normalize = lru_cache(maxsize=65536)(_normal_form)


def _cut_tails(s: str, tails=_TAILS) -> tuple[str, bool, str]:
    """(s without its tails, whether it had a percent sign, the unit as written or "")."""
    percent, unit, unit_word = False, "", False
    for row in tails:
        kind = row.kind
        if kind == "text":
            s, unit = _unwrap_text(s)
            s = s.strip()
        elif kind == "unit":
            if not unit_word and re.search(r"\d", s) and (m := row.pattern.search(s)):
                s, unit, unit_word = s[:m.start()], unit or m.group(1), True
        else:
            s, n = row.pattern.subn("", s)
            percent = percent or (kind == "percent" and n > 0)
    return s, percent, unit


def _unwrap_text(s: str) -> tuple[str, str]:
    """Replace \\text{...}-like groups by their content; a group that is a unit after a number goes,
    and is returned as the unit. \\mathrm{e}, \\mathrm{d} stay letters (Euler's number, a differential)."""
    unit = ""
    for _ in range(20):
        m = _TEXT_CMD_RE.search(s)
        if not m:
            break
        k = _match_brace(s, m.end() - 1)
        if k < 0:
            break
        inner = s[m.end():k]
        before, after = s[:m.start()], s[k + 1:]
        letter = m.group().startswith("\\math") and re.fullmatch(r"[A-Za-z]", inner)
        is_unit = (not letter and re.search(r"[\d}.)]\s*$|[A-Za-z]\s+$", before)
                   and re.fullmatch(r"[\s~]*[A-Za-z][A-Za-z\s/.~]*", inner)
                   and not re.fullmatch(r"\s*(?:and|or)\s*", inner))
        if is_unit:
            power = re.match(r"^\s*\^\s*\{?\d\}?", after)       # "\mbox{ inches}^2"
            if power:
                after = after[power.end():]
            if not after.strip(" .,"):
                unit = inner + (power.group() if power else "")
            s = before + after
        else:
            s = before + inner + after
    return s, unit


def _canon_unit(u: str) -> str:
    """cm^2 == \\text{ cm}^{2}; hours == hour; inches == inch; feet == foot."""
    u = re.sub(r"[\\{}\s~]|\^\s*(?=\d)", "", u).replace("^", "")
    words = []
    for w in re.split(r"([/*.])", u):
        if w in ("feet",):
            w = "foot"
        elif len(w) > 4 and w.lower().endswith(("ches", "shes", "xes")):
            w = w[:-2]
        elif len(w) > 3 and w.endswith("s") and w.isalpha():
            w = w[:-1]
        words.append(w.lower() if len(w) > 2 else w)
    return "".join(words).rstrip(".")


def normalize(ans: str) -> tuple[str, bool]:
    """MATH/Minerva-style normal form of an answer string and whether it carried a percent sign
    (thousands separators removed: "10,455" -> "10455"; the comparison itself also reads them as a list).
    Never raises: an internal failure gives the stripped string (counted, see INTERNAL_ERRORS)."""
    try:
        s, percent, _ = _normalize(ans)
        return (s.replace(",", "") if _THOUSANDS_RE.fullmatch(s) else s), percent
    except Exception as e:
        _internal_error("normalize", e)
        return str(ans).strip(), False


def _canon(s: str) -> str:
    s = re.sub(r"(?<=\d) (?=\d)", "\x00", s).replace(" ", "").replace("\x00", " ")   # "10 00": two numbers
    if "\\" not in s:         # without macros, braces not after ^ or _ are pure grouping: {A5}_{11}
        s = re.sub(r"(?<![_^])\{([^{}]*)\}", r"\1", s)
    return s


# --------------------------------------------------------------------------- expression parser and evaluator
# Also the constants-and-functions family (\pi, e and \mathrm{e}, i, \sqrt, \sqrt[n], \ln, \log_b, trig,
# powers of ten) and the fractions family (\frac, \frac12, a/b): both are just arithmetic here.
class _Unsupported(Exception):
    """Not arithmetic this parser reads, or a value it cannot compute (the answer compares as a string)."""


_TOKEN_RE = re.compile(r"""
  (?P<num>\d+(?:\.\d*)?(?:[eE][+-]?\d+(?![\d.]))?|\.\d+)
 |(?P<cmd>\\[A-Za-z]+|\\[{}|])
 |(?P<sym>[-+*/^!()\[\]{}|_',<>=])
 |(?P<var>[A-Za-z])
 |(?P<ws>\s+)
 |(?P<bad>.)
""", re.VERBOSE | re.DOTALL)
_CONSTS = {"\\pi": math.pi, "\\infty": math.inf}
_FUNCS = {
    "\\sin": cmath.sin, "\\cos": cmath.cos, "\\tan": cmath.tan, "\\arcsin": cmath.asin,
    "\\arccos": cmath.acos, "\\arctan": cmath.atan, "\\sinh": cmath.sinh, "\\cosh": cmath.cosh,
    "\\tanh": cmath.tanh, "\\ln": cmath.log, "\\log": cmath.log, "\\exp": cmath.exp,
    "\\sec": lambda z: 1 / cmath.cos(z), "\\csc": lambda z: 1 / cmath.sin(z), "\\cot": lambda z: 1 / cmath.tan(z),
}
_RELATIONS = {"\\leq", "\\geq", "\\neq", "\\lt", "\\gt", "\\approx", "\\in", "\\cup", "\\cap", "\\to",
              "\\rightarrow", "\\Rightarrow", "\\implies", "\\mid", "\\setminus", "\\pm", "\\mp"}


def _tokenize(s: str) -> list[tuple[str, str]]:
    toks = [(m.lastgroup, m.group()) for m in _TOKEN_RE.finditer(s) if m.lastgroup != "ws"]
    if any(kind == "bad" for kind, _ in toks):
        raise _Unsupported("a character the parser does not read")
    return toks


class _Parser:
    """Recursive descent over LaTeX arithmetic. AST: ('num', v) ('var', name) ('+', [terms]) ('*', [f])
    ('neg', a) ('inv', a) ('^', a, b) ('fn', f, a) ('fact', a) ('root', a, n) ('floor'|'ceil'|'abs', a)
    ('binom', a, b). Sums and products are flat lists so long inputs do not build deep trees."""

    def __init__(self, s: str):
        self.toks = _tokenize(s)
        self.i = 0
        self.depth = 0
        self.in_abs = 0
        self.exact = True           # no decimal literal anywhere (decides integer-exact comparison)
        self.names = []             # the variables, in the order read

    def peek(self):
        return self.toks[self.i] if self.i < len(self.toks) else (None, None)

    def take(self, val=None):
        tok = self.peek()
        if tok[0] is None or (val is not None and tok[1] != val):
            raise _Unsupported(f"expected {val!r}, got {tok[1]!r}")
        self.i += 1
        return tok

    def enter(self):
        self.depth += 1
        if self.depth > MAX_PARSE_DEPTH:
            raise _Unsupported("too deeply nested")

    def parse(self):
        node = self.expr()
        if self.i != len(self.toks):
            raise _Unsupported(f"trailing {self.peek()[1]!r}")
        return node

    def expr(self):
        self.enter()
        terms = [self.term()]
        while self.peek()[1] in ("+", "-"):
            op = self.take()[1]
            t = self.term()
            terms.append(("neg", t) if op == "-" else t)
        self.depth -= 1
        return terms[0] if len(terms) == 1 else ("+", terms)

    def starts_atom(self):
        kind, val = self.peek()
        if kind in ("num", "var"):
            return True
        if kind == "cmd":
            return val not in _RELATIONS and val not in ("\\}", "\\rfloor", "\\rceil", "\\right")
        if val == "|":
            return self.in_abs == 0
        return val in ("(", "{", "[")

    def term(self):
        factors = [self.unary()]
        while True:
            val = self.peek()[1]
            if val in ("*", "/"):
                self.take()
                f = self.unary()
                factors.append(("inv", f) if val == "/" else f)
            elif self.starts_atom():                      # implicit multiplication: 2x, 3\sqrt{2}, (a)(b)
                if self.peek()[0] == "num" and self.toks[self.i - 1][0] == "num":
                    raise _Unsupported("two numbers in a row")   # "1 000", "11 7/6": not a product
                factors.append(self.power())
            else:
                break
        return factors[0] if len(factors) == 1 else ("*", factors)

    def unary(self):
        if self.peek()[1] in ("-", "+"):
            self.enter()
            neg = self.take()[1] == "-"
            node = self.unary()
            self.depth -= 1
            return ("neg", node) if neg else node
        return self.power()

    def power(self):
        base = self.postfix()
        if self.peek()[1] == "^":
            self.take()
            self.enter()
            exp = self.group() if self.peek()[1] == "{" else self.unary()   # right-associative: 9^9^9 = 9^(9^9)
            self.depth -= 1
            base = ("^", base, exp)
            while self.peek()[1] == "!":
                self.take()
                base = ("fact", base)
        return base

    def postfix(self):
        node = self.atom()
        while self.peek()[1] in ("!", "'"):
            if self.take()[1] == "!":
                node = ("fact", node)
            elif node[0] == "var":                        # f'(x): the variable just read (a group such as
                node = ("var", node[1] + "'")             # "(f)" returns its only variable) is renamed
                self.names[-1] = node[1]
            else:
                raise _Unsupported("prime on non-variable")
        return node

    def enclosed(self, close: str, in_abs: int = 0):
        """The expression up to `close` (a bracket, |, \\rfloor, \\rceil), one level deeper."""
        self.enter()
        saved, self.in_abs = self.in_abs, in_abs
        node = self.expr()
        self.in_abs = saved
        self.take(close)
        self.depth -= 1
        return node

    def group(self):
        """{...}, (...) or [...] as a parenthesised expression."""
        return self.enclosed({"{": "}", "(": ")", "[": "]", "\\{": "\\}"}[self.take()[1]])

    def arg(self):
        """One LaTeX macro argument: a {group}, or a single digit/letter/command (\\frac12, \\sqrt3)."""
        kind, val = self.peek()
        if val == "{":
            return self.group()
        if kind == "num":
            self.i += 1
            if len(val) > 1 and val[0].isdigit():
                self.toks.insert(self.i, ("num", val[1:]))
                val = val[0]
            return ("num", float(val))
        return self.atom()

    def subscript(self) -> str:
        """The raw text of a subscript: _1, _{12}, _\\alpha."""
        self.take("_")
        if self.peek()[1] != "{":
            return self.take()[1]
        self.take()
        start, depth = self.i, 1
        while depth:
            depth += {"{": 1, "}": -1}.get(self.take()[1], 0)
        return "".join(v for _, v in self.toks[start:self.i - 1])

    def atom(self):
        kind, val = self.peek()
        if kind is None:
            raise _Unsupported("unexpected end")
        if kind == "num":
            self.take()
            if "." in val or "e" in val.lower():
                self.exact = False
            if self.peek()[1] == "_":
                raise _Unsupported("number with a base subscript")   # 40_9: compared as a string
            return ("num", float(val))
        if kind == "var":
            self.take()
            return self.named(val)
        if val in ("(", "{", "[", "\\{"):
            return self.group()
        if val == "|" and self.in_abs == 0:
            self.take()
            return ("abs", self.enclosed("|", in_abs=1))
        if kind != "cmd":
            raise _Unsupported(f"unexpected {val!r}")
        self.take()
        if val in _CONSTS:
            return ("num", _CONSTS[val])
        if val == "\\frac":
            return ("*", [self.arg(), ("inv", self.arg())])
        if val == "\\binom":
            return ("binom", self.arg(), self.arg())
        if val == "\\sqrt":
            n = ("num", 2.0)
            if self.peek()[1] == "[":
                self.take()
                n = self.expr()
                self.take("]")
            return ("root", self.arg(), n)
        if val in ("\\lfloor", "\\lceil"):
            op = val[2:]                                  # floor, ceil: closed by \rfloor, \rceil
            return (op, self.enclosed("\\r" + op, self.in_abs))
        if val in _FUNCS:
            ln_base = None
            if val == "\\log" and self.peek()[1] == "_":      # \log_2 8 = \ln 8 / \ln 2 (a symbolic base:
                ln_base = math.log(float(self.subscript()))  # a ValueError, not arithmetic we read)
            exp = None
            if self.peek()[1] == "^":                     # \sin^2 x
                self.take()
                exp = self.arg()
            self.enter()
            a = self.group() if self.peek()[1] in ("{", "(", "[") else self.power()
            self.depth -= 1
            node = ("fn", val, a) if ln_base is None else ("*", [("fn", "\\ln", a), ("inv", ("num", ln_base))])
            return ("^", node, exp) if exp is not None else node
        if val in _RELATIONS or val in ("\\begin", "\\end"):
            raise _Unsupported(f"unsupported {val}")
        return self.named(val)                            # \alpha, \theta, \odot, ... as variables

    def named(self, name: str):
        """A variable with its subscript (a_1, x_{12}, \\alpha_0); e and i are the constants."""
        if self.peek()[1] == "_":
            name += "_" + self.subscript()
        if name in ("e", "i"):
            return ("num", math.e if name == "e" else 1j)
        self.names.append(name)
        return ("var", name)


@lru_cache(maxsize=65536)
def _parse(s: str):
    """(AST, variable names, exact?) or None when s is not arithmetic we understand."""
    if len(s) > MAX_ANSWER_CHARS or not s.strip():
        return None
    try:
        p = _Parser(s)
        ast = p.parse()
    except (_Unsupported, RecursionError, ValueError, KeyError, IndexError):
        return None
    return ast, frozenset(p.names), p.exact


def _real(z: complex) -> float:
    if abs(z.imag) > 1e-9 * max(1.0, abs(z.real)):
        raise _Unsupported("not real")
    return z.real


_UNARY = {"neg": lambda z: -z, "abs": lambda z: complex(abs(z)),
          "floor": lambda z: complex(math.floor(_real(z))), "ceil": lambda z: complex(math.ceil(_real(z)))}


def _eval(n, env) -> complex:
    op = n[0]
    if op == "num":
        return complex(n[1])
    if op == "var":
        return env[n[1]]
    if op == "+":
        return sum((_eval(t, env) for t in n[1]), 0j)
    if op == "*":
        r = 1 + 0j
        for f in n[1]:
            r *= _eval(f, env)
        return r
    if op in _UNARY:
        return _UNARY[op](_eval(n[1], env))
    if op == "inv":
        d = _eval(n[1], env)
        if d == 0:
            raise _Unsupported("division by zero")
        return 1 / d
    if op == "^":
        a, b = _eval(n[1], env), _eval(n[2], env)
        if abs(b) > MAX_EXPONENT and abs(abs(a) - 1) > 1e-12 and a != 0:
            raise _Unsupported("exponent too large")
        if a == 0:
            if b.real > 0:
                return 0j
            raise _Unsupported("0 to a non-positive power")
        if b.imag == 0 and b.real == int(b.real) and a.imag == 0:
            return complex(a.real ** int(b.real))        # exact for integer powers of reals
        return a ** b
    if op == "root":
        a, k = _eval(n[1], env), _eval(n[2], env)
        if k == 0:
            raise _Unsupported("0th root")
        if a.imag == 0 and a.real < 0 and k.imag == 0 and k.real == int(k.real) and int(k.real) % 2 == 1:
            return complex(-((-a.real) ** (1 / k.real)))  # real odd root of a negative number
        return a ** (1 / k) if k != 2 else cmath.sqrt(a)
    if op == "fn":
        return complex(_FUNCS[n[1]](_eval(n[2], env)))
    if op == "fact":
        x = _real(_eval(n[1], env))
        if x > 170 or x < 0:
            raise _Unsupported("factorial out of range")
        return complex(math.factorial(int(x)) if x == int(x) else math.gamma(x + 1))
    if op == "binom":
        a, b = _real(_eval(n[1], env)), _real(_eval(n[2], env))
        if a == int(a) and b == int(b) and 0 <= a <= 10000:
            return complex(math.comb(int(a), int(b)) if b >= 0 else 0)
        if a > 170:
            raise _Unsupported("binom out of range")
        return complex(math.gamma(a + 1) / (math.gamma(b + 1) * math.gamma(a - b + 1)))
    raise _Unsupported(op)


def _safe_eval(ast, env) -> complex | None:
    try:
        v = _eval(ast, env)
    except (_Unsupported, ArithmeticError, ValueError, TypeError, RecursionError, KeyError):
        return None
    return None if cmath.isnan(v) else v


# --------------------------------------------------------------------------- answer structures
# A normal form is read into a small tree: ('list', items) ('set', items) ('union', parts)
# ('seq', open, close, items) ('matrix', rows) ('rel', sides, ops) ('eq', lhs, rhs, is_label)
# ('dcomma', list node, number) ('expr', s). _node_equal dispatches to the family that owns the kinds.
_OPEN, _CLOSE = "([{", ")]}"


def _split_at_top(s: str, find) -> tuple[list[str], list[str]]:
    """Split s at the separators outside any bracket: find(s, i) gives the end of a separator starting at
    i, or None. -> (the stripped parts, the separators). Intervals like [0,1) count as balanced."""
    parts, seps, depth, start, i = [], [], 0, 0, 0
    while i < len(s):
        c = s[i]
        if c in _OPEN:
            depth += 1
        elif c in _CLOSE:
            depth -= 1
        elif depth == 0:
            end = find(s, i)
            if end is not None:
                parts.append(s[start:i].strip())
                seps.append(s[i:end])
                start = i = end
                continue
        i += 1
    parts.append(s[start:].strip())
    return parts, seps


def _split_top(s: str, sep: str = ",") -> list[str]:
    """Split at `sep` outside any bracket."""
    return _split_at_top(s, lambda t, i: i + len(sep) if t.startswith(sep, i) else None)[0]


def _wrapped(s: str) -> bool:
    """Whether s is one group in ( ) or [ ] (either end: "[0,1)"), its first bracket closing at its end."""
    return len(s) >= 2 and s[0] in "([" and s[-1] in ")]" and _match_brace(s, 0, _BRACKET_RE) == len(s) - 1


@lru_cache(maxsize=65536)
def _structure(s: str, depth: int = 0):
    """Read a normal form into the tree described above."""
    s = s.strip()
    if depth > 8 or len(s) > MAX_ANSWER_CHARS:
        return ("expr", s)
    m = _matrix(s)
    if m is not None:
        return m
    groups = _split_top(s, ";")                      # "p=5,q=2;p=7,q=2": solutions separated by ;
    if len(groups) > 1 and all(groups):
        return ("list", [_solution(_structure(g, depth + 1)) for g in groups])
    parts = _split_top(s, ",")
    if len(parts) > 1:
        node = ("list", _flatten(_item(p, depth) for p in parts if p))
        number = _comma_number(s)
        return ("dcomma", node, number) if number else node
    return _item(s, depth)


def _item(s: str, depth: int):
    """One answer that is not a comma list."""
    sides = _split_top(s, "=")
    if len(sides) > 2 and all(sides):                # a chain x = 5+5+1 = 11: the final side
        s, sides = sides[-1], [sides[-1]]
    m = _IN_RE.match(s)
    if m and _is_label(m.group(1)):                  # "x \in [1,2]" -> "[1,2]"
        s, sides = s[m.end():], [s[m.end():]]
    u = _split_top(s, "\\cup")
    if len(u) > 1 and all(u):
        return ("union", [_structure(x, depth + 1) for x in u])
    rel = _split_relation(s)
    if rel is not None:
        return ("rel", rel[0], rel[1])
    if len(sides) == 2 and sides[0] and sides[1] and _is_computation(*sides):
        s, sides = sides[1], [sides[1]]                  # "\frac{1}{2} \cdot 20 = 10": the result
    if len(sides) == 2 and sides[0] and sides[1]:
        lhs, rhs = sides
        label = _is_label(lhs)
        if label and rhs.count("\\pm") == 1:
            return ("list", [("eq", lhs, r, True) for r in _expand_pm(rhs)])
        return ("eq", lhs, rhs, label)
    m = _matrix(s)
    if m is not None:
        return m
    if s.startswith("\\{") and s.endswith("\\}"):
        inner = s[2:-2]
        m = re.match(r"\s*([A-Za-z])\s*(?:\\mid|\||:)\s*(?=\S)", inner)   # {x | x > 2}: the condition
        if m:
            return _structure(inner[m.end():], depth + 1)
        return ("set", _flatten(_structure(x, depth + 1) for x in _split_top(inner) if x))
    if _wrapped(s):
        inner = _split_top(s[1:-1])
        if len(inner) == 1:
            inner = _split_top(s[1:-1], ";")         # "(0;-2;6)"
        if len(inner) > 1:
            return ("seq", s[0], s[-1], [_structure(x, depth + 1) for x in inner])
    if s.count("\\pm") == 1:
        return ("list", [("expr", x) for x in _expand_pm(s)])
    return ("expr", s)


def _node_equal(a, b, ctx) -> bool:
    """a (from the prediction) == b (from the gold). ctx = (pred %, gold %, loose matrix tolerance)."""
    if a[0] == "dcomma":                                 # "1,22" / "60,120": the reading the other side has
        a = ("expr", a[2]) if b[0] == "expr" else a[1]
    if b[0] == "dcomma":
        b = ("expr", b[2]) if a[0] == "expr" else b[1]
    ka, kb = a[0], b[0]
    if ka == "rel" or kb == "rel":
        return _relation_equal(a, b, ctx)
    ia, ib = (x[1] if x[0] in ("list", "set") else None for x in (a, b))
    if ia is not None and ib is not None:
        return _unordered_equal(ia, ib, ctx)
    if ia is not None or ib is not None:
        return _items_vs_one(a, b, ctx)
    if ka == "union" or kb == "union":
        xs = a[1] if ka == "union" else [a]
        ys = b[1] if kb == "union" else [b]
        return _unordered_equal(xs, ys, ctx) or _same_solution_set(a, b, ctx)
    if ka == "matrix" or kb == "matrix":
        return _matrix_equal(a, b, ctx)
    if ka == "seq" and kb == "seq":
        if a[1] == b[1] and a[2] == b[2] and len(a[3]) == len(b[3]) and all(
                _node_equal(x, y, ctx) for x, y in zip(a[3], b[3])):
            return True
        return a[1:3] != b[1:3] and _same_solution_set(a, b, ctx)     # [-\infty, 2) = (-\infty, 2)
    if ka == "eq" or kb == "eq":
        return _eq_node_equal(a, b, ctx)
    if ka == "expr" and kb == "expr":
        return _expr_equal(a[1], b[1], *ctx)
    return False


# --------------------------------------------------------------------------- family: numbers
# Comma separators and the decimal comma (space separators and mixed numbers are rows of _REWRITES), and
# the values: exact integers, decimals with the rounding rules of the module docstring, and expressions with
# variables compared at random points.
_THOUSANDS_RE = re.compile(r"-?[1-9]\d{0,2}(?:,\d{3})+(?:\.\d+)?")


def _comma_number(s: str) -> str | None:
    """The number reading of digits joined by commas without spaces: thousands separators when the
    groups allow it (10,455 -> 10455), else one decimal comma (1,22 -> 1.22); the list reading
    ("81,256" as 81 and 256, as MATH's space-stripped golds write lists) is the other one."""
    if _THOUSANDS_RE.fullmatch(s):
        return s.replace(",", "")
    if re.fullmatch(r"\d+,\d*[1-9]\d*", s) and len(s.split(",")[1]) >= 2:   # not "-3,0", "1,3": lists
        return s.replace(",", ".")
    return None


_RNG = random.Random(20250601)
_POINTS = [[_RNG.uniform(0.31, 2.71) for _ in range(64)] for _ in range(N_POINTS)]
_WIDE_POINTS = [[_RNG.uniform(3.1, 97.0) for _ in range(64)] for _ in range(N_POINTS)]   # for floor/ceil
_NOISE_FREE_RE = re.compile(r"(?:\\frac|[-+*/^(){}\s\d.]|(?<=\d)[eE](?=[-+]?\d))*")


def _num_close(x: complex, y: complex, tol_abs: float = 0.0, floor: bool = True) -> bool:
    """Relative tolerance REL_TOL, or within tol_abs (a rounded decimal's half unit). `floor` adds an
    absolute 1e-12 for values computed through functions (sin(pi) = 1e-16 is 0); plain numbers such as
    2.88e-19 compare relatively only, so -2.88e-19 differs."""
    if cmath.isinf(x) or cmath.isinf(y):
        return x == y
    d = abs(x - y)
    if tol_abs and d <= tol_abs * (1 + 1e-9):
        return True
    return d <= REL_TOL * max(abs(x), abs(y)) or (floor and d <= 1e-12)


def _decimal_halfulp(s: str) -> float:
    """Half a unit in the last written digit of a decimal literal ("1.6" -> 0.05, "4.5e33" and
    "4.5 * 10^{33}" -> 5e31, "5e3" -> 500); 0 for an integer."""
    m = re.fullmatch(r"-?(\d*)(?:\.(\d+))?(?:[eE]([+-]?\d+)|\*10\^\{?(-?\d+)\}?)?", s.replace(" ", ""))
    if not m or not (m[1] or m[2]) or (m[2] is None and m[3] is None):
        return 0.0
    return 0.5 * 10.0 ** (-len(m[2] or "") + int(m[3] or m[4] or 0))


def _expr_equal(a: str, b: str, pct_a: bool = False, pct_b: bool = False, loose: bool = False) -> bool:
    """a (prediction) == b (gold) as numbers or as functions of their variables. pct_*: that side had
    a percent sign (28% = 28 = 0.28, see the percent rule); loose: a matrix entry, where a decimal with
    two or more decimal places is read as rounded (0.33 ~ 1/3)."""
    if _canon(a) == _canon(b):
        return True
    pa, pb = _parse(a), _parse(b)
    if pa is None or pb is None:
        return a.strip().lower() == b.strip().lower() and bool(re.fullmatch(r"[A-Za-z\s]+", a.strip()))
    (ta, va, exa), (tb, vb, exb) = pa, pb
    if not va | vb:
        x, y = _safe_eval(ta, {}), _safe_eval(tb, {})
        if x is None or y is None:
            return False
        cands = [x]
        if pct_a != pct_b:                                 # one percentage: 28% = 28 and 28% = 0.28
            cands.append(x / 100 if pct_a else x * 100)
        tol = _decimal_halfulp(b)                          # gold rounded: anything rounding to it
        if re.fullmatch(r"-?\d*\.\d+", a.replace(" ", "")) and sum(map(str.isdigit, a.lstrip("-0."))) >= 4:
            tol = max(tol, _decimal_halfulp(a))            # prediction rounded to >= 4 digits
        if loose:
            for d in (a, b):
                if re.fullmatch(r"-?\d*\.\d{2,}", d.replace(" ", "")):
                    tol = max(tol, _decimal_halfulp(d))
        for c in cands:
            if exa and exb and c.imag == 0 and y.imag == 0 and abs(y.real) < 1e15 and abs(c.real) < 1e15 \
                    and abs(c.real - round(c.real)) < 1e-9 and abs(y.real - round(y.real)) < 1e-9 \
                    and (round(c.real) or round(y.real)):          # (values near 0 compare below)
                if round(c.real) == round(y.real):        # integers compare exactly
                    return True
                continue
            if _num_close(c, y, tol, floor=not (_NOISE_FREE_RE.fullmatch(a) and _NOISE_FREE_RE.fullmatch(b))):
                return True
        return False
    ok = 0
    steps = "\\lfloor" in a + b or "\\lceil" in a + b        # step functions need points far apart
    for x, y in _at_points([pa, pb], _POINTS + (_WIDE_POINTS if steps else [])):
        if (x is None) != (y is None) or (x is not None and not _num_close(x, y)):
            return False
        ok += x is not None
    return ok >= 2


def _at_points(parsed, points=_POINTS):
    """The values of parsed expressions at each point (None where undefined), their variables set to
    the point's coordinates; no points at all for more than 64 variables."""
    names = sorted(set().union(*(p[1] for p in parsed)))
    for pt in points if len(names) <= 64 else []:
        env = {n: complex(pt[i]) for i, n in enumerate(names)}
        yield [_safe_eval(p[0], env) for p in parsed]


# --------------------------------------------------------------------------- family: equations
# Labels (x = 5 is 5), chains (the final side), computations, equations up to a non-zero factor.
_IN_RE = re.compile(r"^\s*([^=<>]{1,40}?)\s*\\in(?![A-Za-z])\s*")


def _is_label(lhs: str) -> bool:
    """Whether the lhs of "lhs = value" only names the value: x, f(x), f(2), (p,q), a_{37}, \\angle B,
    \\frac{NO}{BO}; not an expression (digits or operators outside subscripts and call arguments)."""
    t = lhs.strip()
    if not t or len(t) > 40:
        return False
    t = re.sub(r"_\{[^{}]*\}|_\\?\w+", "", t)
    t = re.sub(r"^([A-Za-z]\w*|\\[A-Za-z]+)\s*\([^()=]*\)$", r"\1", t)
    return bool(t.strip()) and not re.search(r"[\d+\-*/^<>=!|]", t)


def _is_computation(lhs: str, rhs: str) -> bool:
    """lhs = rhs between two constants: a computation whose answer is its result, not an equation."""
    pl, pr = _parse(lhs), _parse(rhs)
    return pl is not None and pr is not None and not pl[1] and not pr[1]


def _equation_equal(l1: str, r1: str, l2: str, r2: str) -> bool:
    """lhs1 - rhs1 and lhs2 - rhs2 agree up to a constant non-zero factor at every point."""
    if _canon(l1) == _canon(l2) and _expr_equal(r1, r2):
        return True
    ps = [_parse(x) for x in (l1, r1, l2, r2)]
    if any(p is None for p in ps):
        return False
    ratios, ok = [], 0
    for vals in _at_points(ps):
        if None in vals:
            continue
        f1, f2 = vals[0] - vals[1], vals[2] - vals[3]
        zero1, zero2 = abs(f1) < 1e-12, abs(f2) < 1e-12
        if zero1 != zero2:                                  # one equation holds here, the other does not
            return False
        if not zero1:                                       # (not "abs(f1) >= 1e-12": f1 may be nan)
            ratios.append(f1 / f2)
        ok += 1
    return ok >= 2 and all(_num_close(r, ratios[0]) for r in ratios[1:])


def _eq_node_equal(a, b, ctx) -> bool:
    """Two equations: up to a non-zero factor, or (both labelled with the same name) equal values.
    A labelled equation against anything else: its value ("x = 11" = "11")."""
    if a[0] == "eq" and b[0] == "eq":
        if _equation_equal(a[1], a[2], b[1], b[2]):
            return True
        if a[3] and b[3] and re.sub(r"\s", "", a[1]).lower() == re.sub(r"\s", "", b[1]).lower():
            return _node_equal(_structure(a[2]), _structure(b[2]), ctx)
        return False
    if a[0] == "eq":
        return a[3] and _node_equal(_structure(a[2]), b, ctx)
    return b[3] and _node_equal(a, _structure(b[2]), ctx)


# --------------------------------------------------------------------------- family: inequalities and intervals
# A relation or interval is read as a solution set on the real line: a sorted list of disjoint
# intervals (lo, lo text, lo closed, hi, hi text, hi closed); the texts keep the written endpoints so
# that rounded decimals compare with the number rules above. Relations must be linear in one variable
# (or a chain around a name: 0 < f(x) < 1, or |x| of a name); other relations compare side by side.
_REL_TOKEN_RE = re.compile("|".join(map(re.escape, _REL_OPS)))
_FLIP = {"<": ">", ">": "<", "<=": ">=", ">=": "<=", "!=": "!="}
_NAME_RE = re.compile(r"(?:[A-Za-z]|\\[A-Za-z]+)(?:_\{?\\?\w+\}?)?'*(?:\([^()]*\))?")
_INF = float("inf")


def _split_relation(s: str):
    """("x", "\\leq", "5") style split at top-level relation signs: (sides, canonical ops) or None."""
    if not any(op in s for op in _REL_OPS):
        return None
    sides, seps = _split_at_top(s, lambda t, i: (m := _REL_TOKEN_RE.match(t, i)) and m.end())
    if not seps or not all(sides):
        return None
    return sides, [_REL_OPS[x] for x in seps]


def _real_value(s: str) -> float | None:
    """The real value of a constant expression (+-infinity allowed), or None."""
    p = _parse(s)
    if p is None or p[1]:
        return None
    v = _safe_eval(p[0], {})
    if v is None or abs(v.imag) > 1e-9 * max(1.0, abs(v.real)):
        return None
    return v.real


def _ray(op: str, v: float, vs: str | None) -> list:
    """The solutions of "x op v" (v written as vs) as intervals."""
    below, above = (-_INF, None, False, v, vs, op == "<="), (v, vs, op == ">=", _INF, None, False)
    return {"<": [below], "<=": [below], ">": [above], ">=": [above]}.get(op, [below, above])   # !=: both


def _linear_relation(lhs: str, op: str, rhs: str):
    """(variable, intervals) solving `lhs op rhs` when it is linear in one variable (lhs - rhs at three
    points lies on a line), else None."""
    if _NAME_RE.fullmatch(lhs) and (v := _real_value(rhs)) is not None:
        return lhs, _ray(op, v, rhs)
    if _NAME_RE.fullmatch(rhs) and (v := _real_value(lhs)) is not None:
        return rhs, _ray(_FLIP[op], v, lhs)
    pl, pr = _parse(lhs), _parse(rhs)
    if pl is None or pr is None or len(pl[1] | pr[1]) != 1:
        return None
    (name,) = pl[1] | pr[1]
    fs = [None if None in v else (v[0] - v[1]).real for v in _at_points([pl, pr], [[0.5], [1.5], [2.75]])]
    if None in fs:
        return None
    f0, f1, f2 = fs
    slope = f1 - f0
    if abs(slope) < 1e-12 or abs(f2 - (f0 + 2.25 * slope)) > 1e-9 * max(1.0, abs(f2)):
        return None                                           # constant or not linear
    root = 0.5 - f0 / slope
    return name, _ray(op if slope > 0 else _FLIP[op], root, None)


def _intersect(xs, ys) -> list:
    out = []
    for a in xs:
        for b in ys:
            lo = max(a, b, key=lambda iv: (iv[0], iv[2] is False))
            hi = min(a, b, key=lambda iv: (iv[3], iv[5] is True))
            if lo[0] < hi[3] or (lo[0] == hi[3] and lo[2] and hi[5]):
                out.append((lo[0], lo[1], lo[2], hi[3], hi[4], hi[5]))
    return out


def _abs_preimage(ivs) -> list:
    """{x : |x| in S} for S a set of intervals: S on [0, inf) mirrored to the negative side."""
    pos = _intersect(ivs, [(0.0, "0", True, _INF, None, False)])
    neg = [(-hi, "-(%s)" % hs if hs else None, hc, -lo, "-(%s)" % ls if ls else None, lc)
           for lo, ls, lc, hi, hs, hc in pos]
    return neg + pos


def _relation_set(sides, ops):
    """(variable, intervals) of a relation chain, or None when it is not a solvable one."""
    for i, side in enumerate(sides):                          # 1 <= |z| <= 3/2: solve for |z|, mirror
        m = re.fullmatch(r"\|\s*(%s)\s*\|" % _NAME_RE.pattern, side)
        if m:
            sub = _relation_set(sides[:i] + ["\\abs"] + sides[i + 1:], ops)
            return (m.group(1), _abs_preimage(sub[1])) if sub and sub[0] == "\\abs" else None
    if len(ops) == 1:
        return _linear_relation(sides[0], ops[0], sides[1])
    if len(ops) == 2 and "!=" not in ops:
        if all(o in (">", ">=") for o in ops):                 # 7 >= x >= -2  ->  -2 <= x <= 7
            sides, ops = sides[::-1], [_FLIP[o] for o in ops[::-1]]
        if not all(o in ("<", "<=") for o in ops):
            return None
        a, b = _linear_relation(sides[0], ops[0], sides[1]), _linear_relation(sides[1], ops[1], sides[2])
        if a is None or b is None or a[0] != b[0]:
            return None
        return a[0], _intersect(a[1], b[1])
    return None


def _solution_set(node):
    """(variable or None, intervals) for intervals, finite sets, unions and relations; else None."""
    k = node[0]
    if k == "rel":
        return _relation_set(node[1], node[2])
    if k == "seq" and len(node[3]) == 2 and all(x[0] == "expr" for x in node[3]):
        (lo_s, hi_s), o, c = (x[1] for x in node[3]), node[1], node[2]
        lo, hi = _real_value(lo_s), _real_value(hi_s)
        if lo is None or hi is None or lo > hi or lo == _INF or hi == -_INF:
            return None
        return None, [(lo, lo_s, o == "[" and lo > -_INF, hi, hi_s, c == "]" and hi < _INF)]
    if k == "set":
        pts = []
        for x in node[1]:
            v = _real_value(x[1]) if x[0] == "expr" else None
            if v is None:
                return None
            pts.append((v, x[1], True, v, x[1], True))
        return None, pts
    if k in ("union", "list"):
        name, ivs = None, []
        for part in node[1]:
            if k == "list" and part[0] != "rel":
                return None
            sub = _solution_set(part)
            if sub is None or (name and sub[0] and sub[0] != name):
                return None
            name = name or sub[0]
            ivs += sub[1]
        return name, ivs
    return None


def _merge(ivs) -> list:
    """Sorted, disjoint intervals: [0,1] u [1,2] -> [0,2]; (-inf,1) u (1,inf) stays two."""
    out = []
    for iv in sorted(ivs, key=lambda x: (x[0], not x[2])):
        if out:
            last = out[-1]
            if iv[0] < last[3] or (iv[0] == last[3] and (iv[2] or last[5])):
                if iv[3] > last[3] or (iv[3] == last[3] and iv[5]):
                    out[-1] = (last[0], last[1], last[2], iv[3], iv[4], iv[5] or (iv[3] == last[3] and last[5]))
                continue
        out.append(iv)
    return out


def _endpoint_equal(v1: float, s1, v2: float, s2, ctx) -> bool:
    if math.isinf(v1) or math.isinf(v2):
        return v1 == v2
    if s1 is not None and s2 is not None:
        return _expr_equal(s1, s2, *ctx)
    return _num_close(complex(v1), complex(v2))


def _same_solution_set(a, b, ctx) -> bool:
    sa, sb = _solution_set(a), _solution_set(b)
    if sa is None or sb is None or (sa[0] and sb[0] and sa[0] != sb[0]):
        return False
    xs, ys = _merge(sa[1]), _merge(sb[1])
    return len(xs) == len(ys) and all(
        _endpoint_equal(x[0], x[1], y[0], y[1], ctx) and _endpoint_equal(x[3], x[4], y[3], y[4], ctx)
        and (x[2] == y[2] or math.isinf(x[0])) and (x[5] == y[5] or math.isinf(x[3]))
        for x, y in zip(xs, ys))


def _relation_equal(a, b, ctx) -> bool:
    """Relations: the same chain side by side (either direction), or the same solution set."""
    if a[0] == "rel" and b[0] == "rel" and len(a[1]) == len(b[1]):
        for sides, ops in ((b[1], b[2]), (b[1][::-1], [_FLIP[o] for o in b[2][::-1]])):
            if ops == a[2] and all(_expr_equal(x, y, *ctx) for x, y in zip(a[1], sides)):
                return True
    return _same_solution_set(a, b, ctx)


# --------------------------------------------------------------------------- family: several answers
# Comma lists and sets are unordered, tuples ordered; a list equals a tuple in order; solutions separated
# by ';' are tuples of their assigned values. (Several boxes are joined in the extraction section.)
def _flatten(nodes) -> list:
    return [x for n in nodes for x in (n[1] if n[0] == "list" else [n])]


def _expand_pm(s: str) -> list[str]:
    """The two answers of "a \\pm b" (s has one \\pm)."""
    return [s.replace("\\pm", "+"), s.replace("\\pm", "-")]


def _unordered_equal(xs, ys, ctx) -> bool:
    """Each x matches its own y (the first unused one that equals it)."""
    if len(xs) != len(ys):
        return False
    left = list(ys)
    for x in xs:
        j = next((j for j, y in enumerate(left) if _node_equal(x, y, ctx)), None)
        if j is None:
            return False
        del left[j]
    return True


def _items_vs_one(a, b, ctx) -> bool:
    """A list/set against one answer: a single item equals it; a list equals a tuple in order
    ("k=45, n=2" = "(45, 2)"); a list of relations is a union of solution sets."""
    items, other, pred_is_list = (a[1], b, True) if a[0] in ("list", "set") else (b[1], a, False)
    if len(items) == 1:
        return _node_equal(items[0], other, ctx) if pred_is_list else _node_equal(other, items[0], ctx)
    if other[0] == "seq" and other[1] == "(" and len(other[3]) == len(items):
        pairs = zip(items, other[3]) if pred_is_list else zip(other[3], items)
        return all(_node_equal(x, y, ctx) for x, y in pairs)
    if other[0] == "union":
        return _same_solution_set(a, b, ctx)
    return False


def _solution(node):
    """One solution of a ';'-separated list: assignments "p=5, q=2" become the tuple (5, 2)."""
    if node[0] == "eq" and node[3]:
        return _structure(node[2])
    if node[0] == "list" and node[1] and all(n[0] == "eq" and n[3] for n in node[1]):
        return ("seq", "(", ")", [_structure(n[2]) for n in node[1]])
    return node


# --------------------------------------------------------------------------- family: matrices and vectors
_MATRIX_RE = re.compile(r"\\begin\{([pbBvV]?matrix|array)\}(?:\{[^{}]*\})?(.*)\\end\{\1\}", re.DOTALL)


def _matrix(s: str):
    """('matrix', rows) for a matrix environment, also inside ( ) or [ ] (\\left[ \\begin{array}...)."""
    if "\\begin" not in s:
        return None
    t = s
    if _wrapped(t):
        t = t[1:-1].strip()
    m = _MATRIX_RE.fullmatch(t)
    if not m:
        return None
    # rows end at \\ (or at a lone \ in MATH's stripped golds: "\begin{pmatrix}4\-3\end{pmatrix}")
    rows = [r for r in re.split(r"\\\\|\\(?![A-Za-z{}|])", m.group(2)) if r.strip()]
    return ("matrix", [[_structure(c.strip(), 1) for c in r.split("&")] for r in rows])


def _matrix_equal(a, b, ctx) -> bool:
    """Entrywise, with the loose decimal tolerance; a column or row vector equals a tuple."""
    loose = (ctx[0], ctx[1], True)
    if a[0] == "matrix" and b[0] == "matrix":
        return len(a[1]) == len(b[1]) and all(
            len(r1) == len(r2) and all(_node_equal(x, y, loose) for x, y in zip(r1, r2))
            for r1, r2 in zip(a[1], b[1]))
    m, q = (a, b) if a[0] == "matrix" else (b, a)
    if q[0] != "seq" or q[1] != "(" or not (len(m[1]) == 1 or all(len(r) == 1 for r in m[1])):
        return False
    flat = [c for r in m[1] for c in r]
    pairs = zip(flat, q[3]) if m is a else zip(q[3], flat)
    return len(flat) == len(q[3]) and all(_node_equal(x, y, loose) for x, y in pairs)


# --------------------------------------------------------------------------- family: multiple choice
_MC_RE = re.compile(r"^\(?\s*([A-J])\s*\)?(?=[\s.:)]|$)")


def _mc_letter(s: str) -> str | None:
    """The option letter of a multiple-choice answer: C, (C), C), C., \\text{(C)}, \\textbf{(C) }12."""
    s = _TEXT_GROUP_RE.sub(r"\1", _unescape(s).replace("$", "")).strip()
    s = _TEXT_GROUP_RE.sub(r"\1", s).replace("\\ ", " ").strip()
    s = re.sub(r"^(?:option|choice)\s*:?\s*", "", s, flags=re.IGNORECASE)
    m = _MC_RE.match(s)
    if not m:
        return None
    rest = s[m.end():]
    if re.search(r"\(\s*[A-J]\s*\)|\b[A-J]\b", rest):          # a second option named
        return None
    if len(s) <= 3 or s.startswith("(") or s[m.end() - 1] == ")" or rest.startswith((".", ":", ")")):
        return m.group(1)
    return None


def _gold_letter(gold: str) -> str | None:
    g = _TEXT_GROUP_RE.sub(r"\1", gold.replace("$", "")).strip()
    m = re.fullmatch(r"\(?\s*([A-J])\s*\)?", g)
    return m.group(1) if m else None


# --------------------------------------------------------------------------- equivalence
def is_equivalent(pred: str, gold: str, **fields) -> bool:
    """Whether the extracted prediction equals the gold answer. Optional OlympiadBench fields:
    `unit` (stripped from both sides), `multiple_answers` (comma lists are unordered anyway)."""
    try:
        if not isinstance(pred, str) or not isinstance(gold, str) or not pred.strip() or not gold.strip():
            return False
        if len(pred) > 20 * MAX_ANSWER_CHARS:
            return False
        pred, gold = _unescape(pred), _gold_answer(gold)
        unit = fields.get("unit")
        pct_unit = False
        if isinstance(unit, str) and unit.strip():
            u = unit.replace("$", "").strip()
            pct_unit = "%" in u
            if not pct_unit:
                pred, gold = (_strip_field_unit(v, u) for v in (pred, gold))
        gl = _gold_letter(gold)
        if gl is not None:
            return _mc_letter(pred) == gl
        p, p_pct, p_unit = _normalize(pred)
        g, g_pct, g_unit = _normalize(gold)
        if not p or not g:
            return False
        if p_unit and g_unit and p_unit != g_unit:
            return False
        if _canon(p) == _canon(g):
            return True
        if re.fullmatch(r"[A-Za-z][A-Za-z\s\-']*", g) and not re.fullmatch(r"[A-Za-z]", g):
            return p.strip().lower() == g.strip().lower()    # word answers: "east", "ellipse"
        return _node_equal(_structure(p), _structure(g), (p_pct, g_pct or pct_unit, False))
    except Exception as e:
        _internal_error("is_equivalent", e)
        return False


def _strip_field_unit(v: str, u: str) -> str:
    v = v.strip().rstrip(".")
    for form in (u, "\\mathrm{" + u + "}", "\\text{" + u + "}", "\\text{ " + u + "}"):
        if v.endswith(form) and len(v) > len(form):
            return v[: -len(form)]
    return v


def _cache_clear() -> None:
    """Empty the memo caches (benchmarks and timing tests measure cold work)."""
    for f in (_parse, _normalize, _structure):
        f.cache_clear()


# --------------------------------------------------------------------------- logic
_KK_WORDS_RE = re.compile(r"inhabited only by (\w+?)s? and (\w+?)s?\b[.,]", re.IGNORECASE)


def _kk_role_words(fields) -> tuple[str, str]:
    terms = fields.get("terms")
    if isinstance(terms, dict) and terms.get("knight") and terms.get("knave"):
        return str(terms["knight"]), str(terms["knave"])
    problem = str(fields.get("problem", ""))
    m = _KK_WORDS_RE.search(problem)
    if m:
        a, b = m.group(1), m.group(2)
        return (a, b) if re.search(rf"\b{a}s? always tell the truth", problem, re.IGNORECASE) else (b, a)
    return "knight", "knave"


def _kk_roles(text: str, names, truth: str, lie: str) -> dict[str, bool]:
    """Each name's role (True = truth-teller) from its last 'NAME is (not) a ROLE' mention."""
    roles = {}
    words = f"{re.escape(truth)}|{re.escape(lie)}"
    for name in names:
        pat = re.compile(rf"\b{re.escape(name)}\b[^.,;\n]{{0,40}}?\b(not\s+(?:an?\s+)?)?({words})s?\b",
                         re.IGNORECASE)
        hits = list(pat.finditer(text))
        if hits:
            roles[name] = (hits[-1].group(2).lower() == truth.lower()) != bool(hits[-1].group(1))
    return roles


def _verify_logic(response: str, answer: str, fields) -> Verdict:
    names = fields.get("names")
    boxed, _ = last_boxed(response)
    if names and (fields.get("solution") is not None or fields.get("terms")):
        truth, lie = _kk_role_words(fields)
        if fields.get("solution") is not None:
            gold = dict(zip(names, [bool(x) for x in fields["solution"]]))
        else:
            gold = _kk_roles(answer, names, truth, lie)
        region = boxed
        if region is None:
            k = max(response.lower().rfind("answer"), response.lower().rfind("conclusion"))
            region = response[k:] if k >= 0 else response
        pred = _kk_roles(region, names, truth, lie)
        if len(pred) < len(names):
            pred = {**_kk_roles(response, names, truth, lie), **pred}
        got = ", ".join(f"{n}: {truth if pred[n] else lie}" for n in names if n in pred)
        ok = len(gold) == len(names) and all(pred.get(n) == gold[n] for n in names)
        return Verdict(float(ok), got or None, "all roles match" if ok else "roles differ or missing")
    pred = extract_answer(response)
    if pred is None:
        lines = [ln for ln in response.strip().split("\n") if ln.strip()]
        pred = lines[-1].strip() if lines else None
    if pred is None:
        return Verdict(0.0, None, "no answer found")
    gl = _mc_letter(answer)
    if gl is not None and len(answer.strip()) <= 3:
        ok = _mc_letter(normalize(pred)[0]) == gl
        return Verdict(float(ok), pred, "multiple-choice letter " + ("matches" if ok else "differs"))

    def clean(x):
        x = _unwrap_text(x)[0]
        return re.sub(r"[^\w\s]", "", x).strip().lower()
    ok = clean(pred) == clean(answer) or (boxed is None and clean(pred).split()[-1:] == clean(answer).split())
    if not ok and not re.search(r"[A-Za-z]{2}", answer):
        ok = is_equivalent(pred, answer, **fields)
    return Verdict(float(ok), pred, "answer " + ("matches" if ok else "differs"))


# --------------------------------------------------------------------------- code
# The program runs in sandbox.py's separate, resource-limited process; the test runs here (see sandbox.py).
def extract_code(response: str) -> str:
    """The program in a response: its last fenced code block, the rest of an unclosed fence, or all of it."""
    blocks = re.findall(r"```(?:python|py|Python)?[ \t]*\n(.*?)```", response, re.DOTALL)
    if blocks:
        return blocks[-1]
    k = response.rfind("```")
    if k >= 0 and response.count("```") % 2 == 1:     # an unclosed fence: take what follows it
        return re.sub(r"^```\w*\n?", "", response[k:])
    return response


def _verify_code(response: str, answer: str, fields) -> Verdict:
    code = extract_code(response)
    if not code.strip():
        return Verdict(0.0, None, "empty completion")
    prompt = fields.get("prompt") or ""
    test = fields.get("test")
    entry = fields.get("entry_point")
    if test is None:                # MBPP-style: the gold answer is the test code (asserts)
        test, entry = answer, entry if entry else None
    if not test.strip():            # without a test any program that loads would pass
        return Verdict(0.0, code, "the problem has no test")
    try:                                                 # the prompt, if valid on its own (compile only),
        compile(prompt, "prompt", "exec")                # also gives the test its helpers (poly, ...)
        helpers = prompt
    except (SyntaxError, ValueError):
        helpers = ""
    if not re.search(r"^(def|class|import|from) ", code, re.M):
        program = prompt + code                          # a HumanEval-style body continuation
    else:                                                # a full program: keep the prompt's imports/helpers
        program = prompt + "\n" + code if helpers else code
    ok, reason = sandbox.run_code(program, test, entry, prompt=helpers, timeout=float(fields.get("timeout", 10.0)),
                                  memory_mb=int(fields.get("memory_mb", 1024)))
    return Verdict(float(ok), code, reason)


# --------------------------------------------------------------------------- reward / verify
def verify(response: str, answer: str, task: str = "math", *, mode: str = DEFAULT_MODE, **problem_fields) -> Verdict:
    """Reward in {0, 1} plus the extracted answer and the reason. Never raises.
    task: "math" (also GSM8K), "logic" (knights-and-knaves with `names`/`solution`/`terms`, zebra,
    multiple choice) or "code" (HumanEval fields `prompt`, `test`, `entry_point`). A row whose `benchmark`
    is bbh, synlogic or livecodebench is graded by benchmarks.py.
    mode: "strict" (only the last \\boxed{} counts; the training reward) or "lenient" (evaluation
    fallbacks); see the module docstring. It applies to math answers.
    `truncated=True` (the sampler hit its length limit) always gives 0."""
    try:
        if not isinstance(response, str) or not response.strip():
            return Verdict(0.0, None, "empty response")
        if problem_fields.get("truncated"):
            return Verdict(0.0, None, "truncated response")
        if mode not in MODES:
            return Verdict(0.0, None, f"unknown answer mode {mode!r} (expected one of {MODES})")
        if not isinstance(answer, str):
            answer = "" if answer is None else str(answer)
        if problem_fields.get("benchmark") in ("bbh", "synlogic", "livecodebench"):
            import benchmarks           # their graders (imported here: benchmarks.py imports this module)
            return benchmarks.GRADERS[problem_fields["benchmark"]](response, answer, mode=mode, **problem_fields)
        if task == "code":
            return _verify_code(response, answer, problem_fields)
        if task == "logic":
            return _verify_logic(response, answer, problem_fields)
        if task != "math":
            return Verdict(0.0, None, f"unknown task {task!r}")
        readings = _answer_readings(response, mode)
        if not readings:
            _, has_box = last_boxed(response)
            why = ("truncated inside \\boxed{}" if has_box else "no \\boxed{} answer" if mode == "strict"
                   else "no answer found")
            return Verdict(0.0, None, why)
        for pred in readings:
            if is_equivalent(pred, answer, **problem_fields):
                return Verdict(1.0, pred, "equivalent")
        return Verdict(0.0, readings[0], "not equivalent")
    except Exception as e:      # a verifier must never raise (counted; re-raised under tests)
        _internal_error("verify", e)
        return Verdict(0.0, None, f"verifier error: {type(e).__name__}")


def reward(response: str, answer: str, task: str = "math", *, mode: str = DEFAULT_MODE, **problem_fields) -> float:
    """The scalar reward in [0, 1]; 0 for empty, truncated or garbage responses. Never raises."""
    return verify(response, answer, task, mode=mode, **problem_fields).reward


def _verify_star(args) -> Verdict:
    response, answer, task, fields, mode = args
    return verify(response, answer, task, mode=mode, **{k: v for k, v in fields.items() if k != "mode"})


def verify_batch(responses, answers, task="math", fields=None, max_workers: int | None = None,
                 chunksize: int | None = None, *, mode: str = DEFAULT_MODE) -> list[Verdict]:
    """verify() over many responses in parallel processes (a spawn-context process pool; code
    verification spends its time in sandbox subprocesses, math in the parser). `task` and `fields`
    are either one value for all or one per response. Order is preserved."""
    n = len(responses)
    tasks = [task] * n if isinstance(task, str) else list(task)
    fields = [fields or {}] * n if fields is None or isinstance(fields, dict) else fields
    jobs = list(zip(responses, answers, tasks, fields, [mode] * n))
    workers = max_workers or min(os.cpu_count() or 1, 32)
    if workers <= 1 or n <= 4:
        return [_verify_star(j) for j in jobs]
    chunksize = chunksize or max(1, n // (workers * 8))
    try:
        with cf.ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn")) as ex:
            return list(ex.map(_verify_star, jobs, chunksize=chunksize))
    except Exception:           # e.g. no /dev/shm for a pool: verify serially rather than fail
        return [_verify_star(j) for j in jobs]


def batch_reward(responses, answers, task="math", fields=None, max_workers: int | None = None, *,
                 mode: str = DEFAULT_MODE) -> list[float]:
    """Rewards of verify_batch."""
    return [v.reward for v in verify_batch(responses, answers, task, fields, max_workers, mode=mode)]
