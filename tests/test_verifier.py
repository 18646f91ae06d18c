"""Tests for verifier.py: hand-written hard cases, real benchmark data and robustness (the code sandbox's
attacks are in tests/test_sandbox.py).

Real-data tests read the data folder through the `data_dir` fixture (skipped when absent).
"""
import ast
import json
import os
import random
import time

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

import verifier
from verifier import (DEFAULT_MODE, MODES, Verdict, batch_reward, extract_answer, is_equivalent, reward, verify,
                      verify_batch)


def _rows(data_dir, name):
    with open(data_dir / f"{name}.jsonl", encoding="utf-8") as f:
        return [json.loads(line) for line in f]


# --------------------------------------------------------------------------- extraction
@pytest.mark.parametrize("response, expected", [
    ("so the answer is $\\boxed{\\frac{1}{2}}$.", "\\frac{1}{2}"),
    ("\\boxed{1} then \\boxed{\\{1,2\\}}", "\\{1,2\\}"),                     # the LAST box, nested braces
    ("\\fbox{7}", "7"),
    ("hence \\framebox{204} minutes", "204"),
    ("\\boxed 5", "5"),                                                     # old MATH style
    ("work...\n#### 1,234", "1,234"),                                       # GSM8K reference format
    ("The final answer is $x = 3$.", "x = 3"),
    ("The answer is 42.", "42"),
    ("We get $a=1$ and then $b = 7$", "b = 7"),                             # last $...$ of the last sentence
    ("there are 3 apples and 15 pears", "15"),                              # last number of the last sentence
    ("the answer is \\boxed{\\frac{1}{", None),                             # truncated mid-box
    ("", None),
    ("no digits here", None),
    ("I think it is 12.\nLet me think again about the problem", None),    # a number, but not in final position
    ("#### Step 1\nAdd them: 5 + 3 = 8.\n#### Step 2\nSo the answer is 8.", "8"),   # a heading, not GSM8K's ####
])
def test_extract_answer_lenient(response, expected):
    """Lenient (the default): the last box wins, with nested braces; the documented fallbacks apply only
    without a box; a response truncated inside its last box has no answer."""
    assert extract_answer(response) == expected
    assert extract_answer(response, mode="lenient") == expected
    assert DEFAULT_MODE == "lenient" and MODES == ("strict", "lenient")


@pytest.mark.parametrize("response, expected", [
    ("so the answer is $\\boxed{\\frac{1}{2}}$.", "\\frac{1}{2}"),
    ("\\boxed 5", "5"),
    ("work...\n#### 1,234", None),                      # strict: only a box counts
    ("The final answer is $x = 3$.", None),
    ("The answer is 42.", None),
    ("there are 3 apples and 15 pears", None),
    ("the answer is \\boxed{\\frac{1}{", None),
])
def test_extract_answer_strict(response, expected):
    """Strict (the training reward, as the paper's): only the last \\boxed{} counts; no box, no answer."""
    assert extract_answer(response, mode="strict") == expected


def test_strict_and_lenient_rewards():
    """The same correct but unboxed answer: 0 in strict mode, 1 in lenient mode; boxed: 1 in both."""
    for response in ("The final answer is $\\frac{1}{2}$. I hope it is correct.", "Answer: 1/2", "So we get 0.5"):
        assert reward(response, "\\frac12", mode="strict") == 0.0
        assert reward(response, "\\frac12", mode="lenient") == 1.0
        assert verify(response, "\\frac12", mode="strict").reason == "no \\boxed{} answer"
    for mode in MODES:
        assert reward("thus \\boxed{0.5}", "\\frac12", mode=mode) == 1.0


def test_mode_api():
    """mode= is a keyword on reward, verify, verify_batch and batch_reward; the positional signatures
    are unchanged; an unknown mode gives 0 with a reason (the verifier never raises)."""
    resp, gold = ["Answer: 3", "\\boxed{3}"] * 3, ["3"] * 6
    assert batch_reward(resp, gold, "math", None, 1, mode="strict") == [0.0, 1.0] * 3
    assert batch_reward(resp, gold, "math", None, 1, mode="lenient") == [1.0] * 6
    assert [v.reward for v in verify_batch(resp, gold, "math", {}, 2, mode="strict")] == [0.0, 1.0] * 3
    assert reward("\\boxed{3}", "3", "math") == 1.0
    v = verify("\\boxed{3}", "3", mode="exact")
    assert v.reward == 0.0 and "mode" in v.reason
    assert extract_answer("\\boxed{3}", mode="exact") is None


# --------------------------------------------------------------------------- real model outputs: prices, answer clauses
@pytest.mark.parametrize("response, gold, wrong", [
    ("She makes 9 * $2 = $18 every day.", "18", "2"),                     # not "2 =": $2 is a price
    ("Each costs $3 and she buys 6, so she pays $18.", "18", "3"),        # not "3 and she buys 6, so she pays"
    ("So after six months she has $10,200 + $255 = $10,455.", "10455", "255"),
    ("The total is $\\frac{1}{2}$ of $36, so she keeps $18 in the end.", "18", "36"),
])
def test_currency_is_not_math(response, gold, wrong):
    """A `$` before a number is a price sign when prose or another price follows it, not a
    math delimiter; the answer is the last amount of the final sentence. Real $...$ math still works."""
    assert extract_answer(response) == gold.replace("10455", "10,455")
    assert reward(response, gold, mode="lenient") == 1.0
    assert reward(response, wrong, mode="lenient") == 0.0
    assert reward(response, gold, mode="strict") == 0.0
    assert extract_answer("We have $2 + 3 = 5$ and then $x = 18$.") == "x = 18"
    assert extract_answer("Answer $ 9 $") == "9"


@pytest.mark.parametrize("response, answer", [
    ("So the answer is that she makes 18 dollars.", "18"),                  # not the whole clause
    ("The answer is 18 dollars per day.", "18"),
    ("Final Answer: The largest $n$ is 34.", "34"),
    ("The final answer is $28 \\%$. I hope it is correct.", "28 \\%"),
    ("The answer is (C) because the others fail.", "(C)"),
])
def test_answer_clause_reads_the_answer_inside(response, answer):
    """"The answer is ..." does not take the whole clause: the answer inside it is read."""
    assert extract_answer(response) == answer


@pytest.mark.parametrize("response", [
    "The 3 cats sat on 5 mats.\nThen nothing else happened and the text goes on without an answer",
    "We need 12 more.\n\nHmm, let me reconsider what the question is asking for here",
    "x = 7 maybe. Or maybe not, the computation above is wrong somewhere. I am not sure",
    "1 2 3 4 5 6 7 8 9\n",
])
def test_no_number_anywhere_fallback(response):
    """The risk of a fallback reader: without a box, strict mode never rewards; lenient mode reads only the
    final-answer position (the last sentence of the last line), so a stray number earlier is no answer."""
    for gold in [n for n in "3579" if n in response] + ["12"]:
        for mode in MODES:
            assert reward(response, gold, mode=mode) == 0.0, (gold, mode)


def test_chat_turn_is_cut_off():
    """A trailing invented chat turn is not part of the answer, in both modes."""
    response = "The answer is \\boxed{5}<|im_end|>\n<|im_start|>user\nAnd this?<|im_start|>assistant\n\\boxed{8}"
    for mode in MODES:
        assert reward(response, "5", mode=mode) == 1.0 and reward(response, "8", mode=mode) == 0.0
    assert reward("So the probability is 2/3. <|im_start|>user", "2/3", mode="lenient") == 1.0


@pytest.mark.parametrize("response, gold, expected", [
    ("The roots are $\\boxed{1}, \\boxed{2}$ and $\\boxed{3}$.", "1,2,3", 1.0),     # joined boxes: their union
    ("$$\\boxed{k = 45} \\quad \\text{and} \\quad \\boxed{n = 2}$$", "(45, 2)", 1.0),
    ("$\\boxed{(3, 3)} \\text{ for part (a) and } \\boxed{(1, 1)}$", "(3, 3), (1, 1)", 1.0),
    ("This yields $\\boxed{-b+2}$, or $\\boxed{2 - b}$.", "2-b", 1.0),                    # or the last box
    ("The roots are $\\boxed{1}, \\boxed{2}$.", "1,2,3", 0.0),
    ("$$\\boxed{20}$$ \\boxed{143}", "20, 143", 0.0),                                  # a correction, not a list
    ("I got \\boxed{3}, but checking again the answer is \\boxed{7}.", "3, 7", 0.0),
])
def test_several_boxes(response, gold, expected):
    """Boxes joined only by connectors are one answer (read as their union, or by the classic last-box
    rule); a box after prose or after a closed math block replaces the earlier one."""
    for mode in MODES:
        assert reward(response, gold, mode=mode) == expected


# --------------------------------------------------------------------------- equivalence table
MATCH = [
    # LaTeX noise
    ("\\left( 1, 2 \\right)", "(1,2)"), ("\\dfrac{3}{4}", "\\frac34"), ("\\tfrac{3}{4}", "0.75"),
    ("\\frac12", "\\frac{1}{2}"), ("\\sqrt3", "\\sqrt{3}"), ("10,\\!080", "10080"), ("2\\,000", "2000"),
    ("30^\\circ", "30"), ("30^{\\circ}", "30"), ("\\$18.90", "18.9"), ("5.4 \\text{ cents}", "5.4"),
    ("864 \\mbox{ inches}^2", "864"), ("6.5 \\mathrm{~m}", "6.5"), ("45 minutes", "45"),
    ("1,000,000", "1000000"), ("18.0", "18"), ("x = 5", "5"), ("5", "x=5"), ("f(x) = 2x+1", "2x+1"),
    ("x \\in [-2,7]", "[-2,7]"), ("\\text{east}", "East"), ("\\boxed{12}", "12"), ("+7", "7"),
    # numbers
    ("0.5", "\\frac{1}{2}"), ("1/2", "\\frac{1}{2}"), ("50\\%", "0.5"), ("50\\%", "50"), ("0.5", "50\\%"),
    ("4.5 \\times 10^{33}", "4.5e33"), ("4.49e33", "4.5e33"), ("1.55", "1.6"), ("0.3333", "\\frac{1}{3}"),
    ("-1./3", "-\\frac{1}{3}"), ("2^{10}", "1024"), ("3!", "6"), ("\\binom{5}{2}", "10"),
    ("\\sqrt{8}", "2\\sqrt{2}"), ("\\frac{\\sqrt{2}}{2}", "\\frac{1}{\\sqrt{2}}"), ("\\sqrt[3]{-8}", "-2"),
    ("1+2i", "2i+1"), ("\\pi", "\\frac{2\\pi}{2}"), ("\\log_{2} 8", "3"), ("|{-3}|", "3"),
    ("\\lfloor 2.5 \\rfloor", "2"), ("sqrt(2)", "\\sqrt{2}"),
    # expressions (random points)
    ("(x+1)^2", "x^2+2x+1"), ("2x+2", "2(x+1)"), ("\\frac{n(n+1)}{2}", "\\frac{n^2+n}{2}"),
    ("a_1 + a_2", "a_2 + a_1"), ("e^{i\\pi}", "-1"), ("\\sin^2 x + \\cos^2 x", "1"),
    # structures
    ("(1,2)", "(1, 2)"), ("[0,1)", "[0, 1)"), ("(-\\infty, 2) \\cup (3, \\infty)", "(3,\\infty)\\cup(-\\infty,2)"),
    ("\\{1,2,3\\}", "\\{3,1,2\\}"), ("1,-2", "-2, 1"), ("-2 \\text{ or } 1", "1,-2"), ("2 and 3", "3, 2"),
    ("1 \\pm \\sqrt{2}", "1+\\sqrt2, 1-\\sqrt2"),
    ("\\begin{pmatrix} 1 & 2 \\\\ 3 & 4 \\end{pmatrix}", "\\begin{bmatrix}1&2\\\\3&4\\end{bmatrix}"),
    ("\\begin{pmatrix} -2 \\\\ -14 \\end{pmatrix}", "(-2,-14)"),
    ("\\begin{pmatrix}4\\\\-3\\end{pmatrix}", "\\begin{pmatrix}4\\-3\\end{pmatrix}"),  # MATH's stripped gold
    ("(1,1), (3,2)", "(3,2),(1,1)"), ("a=2, a=-6-4\\sqrt{2}", "$a=2$, $a=-6-4 \\sqrt{2}$"),
    ("5x - 7y + 11z + 4 = 0", "-10x + 14y - 22z - 8 = 0"), ("y = 2x + 3", "2x+3"),
    # multiple choice
    ("(C)", "C"), ("\\text{(C)}", "C"), ("C", "(C)"), ("\\textbf{(C) } 12", "C"),
    # strip_string-mangled golds of math_train
    ("\\text{A, B}", "{A,B}"), ("-2 \\text{ or } -12", "-2{or}-12"), ("2, 3, \\text{ and } 4", "2,3,{}4"),
]

NO_MATCH = [
    ("2", "12"), ("(0,1)", "[0,1]"), ("[0,1)", "[0,1]"), ("x+1", "x+2"), ("x", "y"), ("2x", "2y"),
    ("(1,2)", "(2,1)"), ("\\{1,2\\}", "\\{1,2,3\\}"), ("1,2", "1,2,3"), ("10000001", "10000000"),
    ("0.33", "\\frac{1}{3}"), ("3.1", "\\pi"), ("-5", "5"), ("1.7", "1.6"), ("0.5", "50"),
    ("\\frac{1}{23}", "\\frac{12}{3}"), ("x^2", "x^3"), ("40_9", "40_8"), ("\\text{west}", "\\text{east}"),
    ("(B)", "C"), ("B", "(C)"), ("\\sqrt{2}", "2"), ("1+i", "1-i"), ("2^{1009}", "2^{1008}"),
    ("\\begin{pmatrix} 1 & 2 \\\\ 3 & 4 \\end{pmatrix}", "\\begin{pmatrix} 1 & 3 \\\\ 2 & 4 \\end{pmatrix}"),
    ("(-2,-14)", "\\begin{pmatrix} -2 & -14 \\end{pmatrix}x"), ("", "5"), ("5", ""), ("9^9^9^9", "1"),
    ("5x - 7y + 11z + 4 = 0", "5x - 7y + 11z - 4 = 0"), ("x=1", "2"), ("1 \\pm \\sqrt{2}", "1+\\sqrt{2}"),
]


@pytest.mark.parametrize("pred, gold", MATCH)
def test_equivalent_hard_cases(pred, gold):
    """Every normalisation and equivalence rule accepts its hand-written positive example."""
    assert is_equivalent(pred, gold)


@pytest.mark.parametrize("pred, gold", NO_MATCH)
def test_not_equivalent_hard_cases(pred, gold):
    """Near misses (a digit more, open vs closed bracket, another constant, order of a tuple) are 0."""
    assert not is_equivalent(pred, gold)


# --------------------------------------------------------------------------- the stated rules
STATED_RULES = [
    # decimal comma: only where the comma cannot be a thousands separator; the other side picks the reading
    ("10,455", "10455", True), ("1,234", "1234", True), ("1,234", "1.234", False), ("1,22", "1.22", True),
    ("2,74", "2.74", True), ("0,111", "0.111", True), ("81, 256", "81,256", True), ("81,256", "81256", True),
    ("1.3", "1,3", False), ("-3", "-3,0", False), ("32, 349", "32349", False), ("1 000", "1000", True),
    # 0.28 vs 28%: a percent sign may be dropped or read as /100; a bare number is never 100x itself
    ("28\\%", "28", True), ("0.28", "28\\%", True), ("28", "0.28", False), ("28/100", "28", False),
    ("0.2\\%", "20\\%", False),
    # matrix rounding: entries with >= 2 decimals are read as rounded; scalars need >= 4 significant digits
    ("\\begin{pmatrix}0.33\\\\0.2\\end{pmatrix}", "\\begin{pmatrix}\\frac13\\\\\\frac15\\end{pmatrix}", True),
    ("\\begin{pmatrix}0.3\\\\0.2\\end{pmatrix}", "\\begin{pmatrix}\\frac13\\\\\\frac15\\end{pmatrix}", False),
    ("0.33", "\\frac13", False), ("0.3333", "\\frac13", True),
    # units: dropped when one side has none, equal when both have one
    ("35 \\text{ cm}", "35", True), ("35", "35\\text{ cm}", True), ("35 cm", "35\\text{ cm}", True),
    ("35 \\text{ m}", "35\\text{ cm}", False), ("12 \\text{ hours}", "12 \\text{ minutes}", False),
    ("12x", "12", False),
    # infinite interval ends are open whatever bracket is written (sets of reals never contain infinity)
    ("[-\\infty, 2)", "(-\\infty, 2)", True), ("(-\\infty, 2]", "(-\\infty, 2)", False),
    # plain tiny numbers compare relatively (no absolute floor), computed zeros absolutely
    ("-2.88e-19", "2.88e-19", False), ("4.6e-21", "4.6e-24", False), ("\\sin(\\pi)", "0", True),
]


@pytest.mark.parametrize("pred, gold, expected", STATED_RULES)
def test_stated_rules(pred, gold, expected):
    """Each rule stated in verifier.py's docstring, on its own examples (both readings where it has two)."""
    assert is_equivalent(pred, gold) is expected


# --------------------------------------------------------------------------- each rule, one example it alone accepts
# (name, prediction, gold, near miss): the prediction equals the gold only through the named rule (e.g.
# "10,455" without the thousands rule is the list [10, 455]); the near miss must stay unequal, so a rule
# that accepts everything fails too.
RULE_EXAMPLES = [
 ("thousands separators", "10,455", "10455", "10,456"),
 ("thousands with spaces", "1 000 000", "1000000", "1 000 001"),
 ("decimal comma", "1,22", "1.22", "1.23"),
 ("comma space is a list", "32, 349", "349,32", "32349"),
 ("leading zeros", "004", "4", "0040"),
 ("mixed number latex", "2\\frac{1}{2}", "\\frac52", "\\frac{2}{2}"),
 ("mixed number slash", "4 4/9", "\\frac{40}{9}", "\\frac{44}{9}"),
 ("repeating decimal", "0.\\overline{3}", "\\frac13", "0.3"),
 ("computation is its result", "\\frac12 \\cdot 20 = 10", "10", "20"),
 ("chain final side", "x = 5+5+1 = 11", "11", "5"),
 ("label equals value", "f(2) = 7", "7", "2"),
 ("equation up to factor", "2x+4y-3=0", "y=-x/2+3/4", "y=-x/2+3/5"),
 ("assignments are a tuple", "k=45, n=2", "(45, 2)", "(2, 45)"),
 ("gold decimal rounded", "1.55", "1.6", "1.66"),
 ("prediction 4 significant digits", "0.3333", "\\frac13", "0.333"),
 ("integers exact", "10000000", "10000000", "10000001"),
 ("function values", "\\sin(\\pi)", "0", "\\cos(\\pi)"),
 ("percent dropped", "28\\%", "28", "29"),
 ("percent as fraction", "0.28", "28\\%", "2.8"),
 ("percent word", "28 percent", "0.28", "28 percent of 2"),
 ("unit text dropped", "35 \\text{ cm}", "35", "36"),
 ("unit word dropped", "12 hours", "12", "12 minutes and 3"),
 ("degrees dropped", "30^\\circ", "30", "60^\\circ"),
 ("currency sign dropped", "\\$18.90", "18.9", "\\$18.80"),
 ("same units, plural or not", "12 \\text{ hours}", "12 \\text{ hour}", "12 \\text{ minutes}"),
 ("matrix entrywise", "\\begin{pmatrix} 1 & 2 \\\\ 3 & 4 \\end{pmatrix}", "\\begin{bmatrix}1&2\\\\3&4\\end{bmatrix}", "\\begin{bmatrix}1&3\\\\2&4\\end{bmatrix}"),
 ("vector equals tuple", "\\begin{pmatrix} -2 \\\\ -14 \\end{pmatrix}", "(-2,-14)", "(-14,-2)"),
 ("langle vector", "\\langle 1, 2 \\rangle", "(1,2)", "(2,1)"),
 ("matrix rounding", "\\begin{pmatrix}0.33\\\\0.2\\end{pmatrix}", "\\begin{pmatrix}\\frac13\\\\\\frac15\\end{pmatrix}", "\\begin{pmatrix}0.3\\\\0.2\\end{pmatrix}"),
 ("inequality spelling", "x \\ge 5", "x >= 5", "x > 5"),
 ("inequality direction", "-x > -1", "x < 1", "x > 1"),
 ("chain as interval", "-2 \\le x \\le 7", "[-2,7]", "(-2,7]"),
 ("x in S", "x \\in [-2,7]", "-2 \\le x \\le 7", "-2 < x \\le 7"),
 ("union", "(-\\infty, 2) \\cup (3, \\infty)", "x < 2 \\text{ or } x > 3", "x < 2 \\text{ or } x \\ge 3"),
 ("absolute value", "|x| < 2", "(-2, 2)", "(-2, 2]"),
 ("set builder", "\\{x \\mid 0 < x < 1\\}", "(0,1)", "[0,1)"),
 ("all reals", "\\mathbb{R}", "(-\\infty, \\infty)", "(0, \\infty)"),
 ("all real numbers words", "\\text{all real numbers}", "(-\\infty,\\infty)", "[0,\\infty)"),
 ("infinite end open", "[-\\infty, 2)", "(-\\infty, 2)", "(-\\infty, 2]"),
 ("relation names variable", "x \\geq 5", "x \\geq 5", "y \\geq 5"),
 ("sets unordered", "\\{1,2,3\\}", "\\{3,1,2\\}", "\\{1,2\\}"),
 ("tuples ordered", "(1,2)", "(1, 2)", "(2,1)"),
 ("pm expands", "1 \\pm \\sqrt{2}", "1+\\sqrt2, 1-\\sqrt2", "1+\\sqrt2"),
 ("expressions at points", "(x+1)^2", "x^2+2x+1", "x^2+2x+2"),
 ("multiple choice", "\\textbf{(C) } 12", "C", "(B)"),
 ("word answers", "\\text{east}", "East", "west"),
 ("left right dfrac", "\\left( \\dfrac{3}{4}, 1 \\right)", "(0.75, 1)", "(0.7, 1)"),
 ("frac12 sqrt3", "\\frac12 + \\sqrt3", "\\frac{1}{2} + \\sqrt{3}", "\\frac{1}{3} + \\sqrt{3}"),
 ("trailing .0", "18.0", "18", "18.1"),
 ("x = prefix", "x = 5", "5", "6"),
 ("approx keeps exact side", "\\frac23 \\approx 0.67", "\\frac23", "0.67"),
 ("joined words list", "2 and 3", "3, 2", "2, 4"),
 ("scientific", "4.5 \\times 10^{33}", "4.5e33", "4.5e32"),
 ("complex", "1+2i", "2i+1", "1-2i"),
 ("binomial factorial", "\\binom{5}{2} + 3!", "16", "15"),
 ("log base", "\\log_{2} 8", "3", "2"),
]


@pytest.mark.parametrize("name, pred, gold, miss", RULE_EXAMPLES, ids=[r[0] for r in RULE_EXAMPLES])
def test_each_equivalence_rule_accepts_its_example(name, pred, gold, miss):
    """Every normalisation and equivalence rule of the module docstring gives a POSITIVE verdict on an
    example that needs it, through is_equivalent and through verify (boxed, strict mode: the training
    reward), and rejects a near miss. (A rule broken so that it raises fails here: the suite re-raises
    the verifier's internal errors, tests/conftest.py.)"""
    assert is_equivalent(pred, gold) is True
    assert verify(f"Thus $\\boxed{{{pred}}}$.", gold, mode="strict").reward == 1.0
    assert is_equivalent(miss, gold) is False


# (name, mode, response, gold, another gold): the response is rewarded against the gold only through the
# named extraction rule, and not against the other gold; lenient-only rules give 0 in strict mode.
EXTRACTION_RULES = [
 ("strict: the last box", "strict", "\\boxed{1} then \\boxed{2}", "2", "1"),
 ("fbox", "strict", "so \\fbox{7}", "7", "1"),
 ("framebox", "strict", "hence \\framebox{204} minutes", "204", "20"),
 ("joined boxes are their union", "strict", "The roots are $\\boxed{1}, \\boxed{2}$.", "1, 2", "1, 3"),
 ("a box after prose replaces", "strict", "I got \\boxed{3}, but checking again it is \\boxed{7}.", "7", "3, 7"),
 ("JSON-escaped LaTeX", "strict", "\\boxed{\\\\frac{1}{2}}", "0.5", "2"),
 ("gold boxes are its answer", "strict", "\\boxed{-2, 1}", "\\(\\boxed{1}\\) and \\(\\boxed{-2}\\).", "1"),
 ("chat turn cut off", "strict", "\\boxed{5}<|im_end|>\n<|im_start|>user\nmore\\boxed{8}", "5", "8"),
 ("lenient: GSM8K ####", "lenient", "5 + 3 = 8\n#### 8", "8", "5"),
 ("lenient: answer clause", "lenient", "So the answer is that she makes 18 dollars.", "18", "dollars"),
 ("lenient: final sentence, sign-off skipped", "lenient", "We add them. The final answer is 7. I hope it is correct.", "7", "hope"),
 ("lenient: last number of the last sentence", "lenient", "there are 3 apples and 15 pears", "15", "3"),
 ("lenient: markdown emphasis", "lenient", "The answer is **18**.", "18", "8"),
 ("lenient: currency is not math", "lenient", "She makes 9 * $2 = $18 every day.", "18", "2"),
]


@pytest.mark.parametrize("name, mode, response, gold, other", EXTRACTION_RULES, ids=[r[0] for r in EXTRACTION_RULES])
def test_each_extraction_rule_finds_its_answer(name, mode, response, gold, other):
    """Every extraction rule of the module docstring finds the answer of a response that needs it
    (reward 1 and the extracted answer equal to the gold), and not another gold; rules of the lenient
    mode only do not apply in strict mode (the training reward needs a box)."""
    v = verify(response, gold, mode=mode)
    assert v.reward == 1.0 and v.reason == "equivalent" and is_equivalent(v.extracted, gold), v
    assert verify(response, other, mode=mode).reward == 0.0
    assert verify(response, gold, mode="strict").reward == (1.0 if mode == "strict" else 0.0)


# --------------------------------------------------------------------------- the normalisation tables, row by row
def _without(table, row):
    return [r for r in table if r is not row]


@pytest.mark.parametrize("row", verifier._REWRITES, ids=[r.why for r in verifier._REWRITES])
def test_each_rewrite_row_gives_its_example(row):
    """Each row of the rewrite table earns its place: its example answer gets the normal form the row states,
    and the same table without that row gives another one (so no row sits in the table without an example
    that needs it, and a row whose rewrite is broken fails here)."""
    answer, want = row.example
    want = want if isinstance(want, tuple) else (want, False, "")
    assert verifier._normal_form(answer) == want
    assert verifier._normal_form(answer, rewrites=_without(verifier._REWRITES, row)) != want


@pytest.mark.parametrize("row", verifier._TAILS, ids=[r.why for r in verifier._TAILS])
def test_each_tail_row_gives_its_example(row):
    """The same for the table of tails: the example's (normal form, percent sign, unit) needs its row."""
    answer, want = row.example
    assert verifier._normal_form(answer) == want
    assert verifier._normal_form(answer, tails=_without(verifier._TAILS, row)) != want


_RAYS = {">=": "[5, \\infty)", "<=": "(-\\infty, 5]", ">": "(5, \\infty)", "<": "(-\\infty, 5)",
         "!=": "(-\\infty, 5) \\cup (5, \\infty)"}


@pytest.mark.parametrize("canon, op, spelling", [(c, op, s) for c, op, spellings in verifier._RELATION_SPELLINGS
                                                 for s in (c,) + spellings])
def test_every_relation_spelling_means_its_relation(canon, op, spelling):
    """Every spelling in the relation table reads as its relation: "x SPELLING 5" has the spelling the parser
    reads, and equals the solution set written here for its meaning and none of the others."""
    assert verifier._normalize(f"x {spelling} 5")[0].replace(" ", "") == f"x{canon}5"
    for other, interval in _RAYS.items():
        assert is_equivalent(f"x {spelling} 5", interval) is (other == op), (spelling, interval)


@pytest.mark.parametrize("cmd", verifier._TEXT_CMDS)
def test_every_text_command_is_read_as_its_text(cmd):
    """Every command of the \\text{}-like list is read as its content wherever text is read: a word answer,
    a unit after a number (dropped, and compared when both sides have one), an option letter, and the
    connector between two boxes."""
    assert is_equivalent(f"\\{cmd}{{east}}", "East") and not is_equivalent(f"\\{cmd}{{west}}", "East")
    assert is_equivalent(f"5 \\{cmd}{{ cm}}", "5") and not is_equivalent(f"5 \\{cmd}{{ cm}}", "5 \\text{ m}")
    assert is_equivalent(f"\\{cmd}{{(C)}}", "C") and not is_equivalent(f"\\{cmd}{{(B)}}", "C")
    assert reward(f"\\boxed{{1}} \\{cmd}{{ and }} \\boxed{{2}}", "1, 2", mode="strict") == 1.0


def test_internal_errors_are_counted_and_raised_under_tests(monkeypatch):
    """An exception inside the verifier (here: the normaliser, the extraction and the public normalize made
    to raise) never reaches a user: verify gives 0 with a reason, extract_answer None, normalize the stripped
    string. It is counted in INTERNAL_ERRORS, and re-raised while RAISE_INTERNAL_ERRORS is set (the test
    suite sets it for every test), so a broken rule fails the tests that exercise it."""
    def broken(*a, **k):
        raise RuntimeError("a broken rule")
    assert verifier.RAISE_INTERNAL_ERRORS and os.environ.get("CASP_VERIFIER_RAISE") == "1"
    monkeypatch.setattr(verifier, "_normalize", broken)
    monkeypatch.setattr(verifier, "_answer_readings", broken)
    with pytest.raises(RuntimeError):
        verify("\\boxed{1}", "1")
    with pytest.raises(RuntimeError):
        is_equivalent("1", "1.0")
    with pytest.raises(RuntimeError):
        verifier.normalize(" 5 ")
    monkeypatch.setattr(verifier, "RAISE_INTERNAL_ERRORS", False)
    before = dict(verifier.INTERNAL_ERRORS)
    v = verify("\\boxed{1}", "1")
    assert v.reward == 0.0 and v.reason == "verifier error: RuntimeError"
    assert is_equivalent("1", "1.0") is False and extract_answer("\\boxed{1}") is None
    assert verifier.normalize(" 5 ") == ("5", False)
    grew = {k: verifier.INTERNAL_ERRORS[k] - before.get(k, 0) for k in verifier.INTERNAL_ERRORS}
    assert grew == {"verify: RuntimeError": 1, "is_equivalent: RuntimeError": 1,
                    "extract_answer: RuntimeError": 1, "normalize: RuntimeError": 1}


def test_reward_end_to_end_near_misses():
    """The classic traps (a digit more, open vs closed, truncated) through reward(): box extraction then equivalence."""
    assert reward("thus \\boxed{2}", "12") == 0.0
    assert reward("thus \\boxed{12}", "12") == 1.0
    assert reward("thus \\boxed{(0,1)}", "[0,1]") == 0.0
    assert reward("thus \\boxed{x+1}", "x+2") == 0.0
    assert reward("so \\boxed{\\frac{1}{2", "\\frac12") == 0.0          # truncated
    assert reward("so \\boxed{3}", "3", truncated=True) == 0.0


def test_olympiadbench_fields():
    """`unit` is stripped, `multiple_answers` lists are unordered."""
    assert is_equivalent("45 \\text{ minute}", "45", unit="minute")
    assert is_equivalent("\\frac{600}{7} km/h", "$\\frac{600}{7}$", unit="km/h")
    assert is_equivalent("84, 69", "$69$,$84$", multiple_answers=True)
    assert not is_equivalent("84", "$69$,$84$", multiple_answers=True)
    assert is_equivalent("4.2\\%", "4.2", unit="%")


def test_verify_returns_reason_and_extraction():
    """verify() explains itself: the extracted answer and a non-empty reason."""
    v = verify("so \\boxed{\\dfrac{1}{2}}", "0.5")
    assert isinstance(v, Verdict) and v.reward == 1.0 and v.extracted == "\\dfrac{1}{2}" and v.reason
    v = verify("", "0.5")
    assert v.reward == 0.0 and v.extracted is None and "empty" in v.reason


# --------------------------------------------------------------------------- real data
@pytest.mark.parametrize("name", ["math500", "minerva_math", "aime2024", "gsm8k_test", "gsm8k_train", "math_train"])
def test_reference_solutions_get_reward_1(data_dir, name):
    """The reference solution of >= 99% of the problems, verified against the gold answer, gets 1
    (GSM8K's solution ends in '#### answer'; MATH/Minerva/AIME's in a box). Misses are printed."""
    rows = [r for r in _rows(data_dir, name) if r.get("solution")]
    misses = [(r["id"], extract_answer(r["solution"]), r["answer"]) for r in rows
              if reward(r["solution"], r["answer"]) != 1.0]
    rate = 1 - len(misses) / len(rows)
    print(f"\n{name}: {len(rows) - len(misses)}/{len(rows)} = {rate:.4f}")
    for m in misses:
        print("  miss:", m)
    assert rate >= 0.99


@pytest.mark.parametrize("name", ["math500", "minerva_math", "aime2024", "aime2025", "amc23", "olympiadbench",
                                  "gsm8k_test", "math_train"])
def test_gold_equals_itself(data_dir, name):
    """Every gold answer, boxed as a response, is verified equal to itself (with its own fields)."""
    bad = []
    for r in _rows(data_dir, name):
        fields = {k: r[k] for k in ("unit", "multiple_answers") if k in r}
        if reward(f"The answer is $\\boxed{{{r['answer']}}}$.", r["answer"], **fields) != 1.0:
            bad.append(r["answer"])
    assert not bad, bad[:20]


def test_random_mismatched_pairs_false_positive_rate(data_dir):
    """A solution verified against another problem's (different) gold answer gets 0: the false-positive
    rate over 4000 seeded random pairs is < 0.2% (pairs whose golds are themselves equal are skipped)."""
    rows = []
    for name in ("math500", "minerva_math", "aime2024", "gsm8k_test", "math_train"):
        rows += [r for r in _rows(data_dir, name) if r.get("solution")]
    rng = random.Random(0)
    fps, n = [], 0
    while n < 4000:
        a, b = rng.sample(rows, 2)
        if is_equivalent(a["answer"], b["answer"]) or is_equivalent(b["answer"], a["answer"]):
            continue
        n += 1
        if reward(a["solution"], b["answer"]) != 0.0:
            fps.append((a["id"], extract_answer(a["solution"]), b["id"], b["answer"]))
    print(f"\nfalse positives: {len(fps)}/{n}", fps)
    assert len(fps) / n < 0.002


def _drop_last_return(row, replace_with_pass):
    """The canonical solution with its last `return` statement removed or replaced by `pass`."""
    sol = row["canonical_solution"]
    lines = (row["prompt"] + sol).split("\n")
    offset = row["prompt"].count("\n")
    returns = [n for n in ast.walk(ast.parse(row["prompt"] + sol)) if isinstance(n, ast.Return)]
    last = max(returns, key=lambda n: (n.lineno, n.col_offset))
    start, end = last.lineno - 1, last.end_lineno - 1
    indent = lines[start][: len(lines[start]) - len(lines[start].lstrip())]
    new = [indent + "pass"] if replace_with_pass else []
    lines[start:end + 1] = new
    return "\n".join(lines[offset:])


def test_humaneval_canonical_pass_and_mutants_fail(data_dir):
    """All 164 canonical solutions pass; each with its last return removed, or replaced by `pass`,
    fails. Runs in parallel processes (verify_batch) with a short per-problem timeout."""
    rows = _rows(data_dir, "humaneval")
    assert len(rows) == 164
    jobs, kinds = [], []
    for r in rows:
        fields = {"prompt": r["prompt"], "test": r["test"], "entry_point": r["entry_point"], "timeout": 5.0}
        for kind, resp in (("canonical", r["canonical_solution"]), ("no_return", _drop_last_return(r, False)),
                           ("pass", _drop_last_return(r, True))):
            jobs.append((resp, r["answer"], fields))
            kinds.append((r["id"], kind))
    t0 = time.time()
    verdicts = verify_batch([j[0] for j in jobs], [j[1] for j in jobs], "code", [j[2] for j in jobs],
                            max_workers=max(2, 2 * (os.cpu_count() or 1)))
    print(f"\n{len(jobs)} HumanEval runs in {time.time() - t0:.1f}s")
    wrong = [(k, v.reason) for k, v in zip(kinds, verdicts) if (v.reward == 1.0) != (k[1] == "canonical")]
    assert not wrong, wrong


def test_knights_knaves_any_order_and_flipped(data_dir):
    """Gold roles in shuffled order (and the gold sentence itself) get 1; one flipped role gets 0;
    the puzzle's own role words are used (saint/sinner, ...)."""
    rng = random.Random(0)
    for r in _rows(data_dir, "knights_knaves"):
        t = r["terms"]
        fields = {k: r[k] for k in ("names", "solution", "terms", "problem")}
        order = list(zip(r["names"], r["solution"]))
        rng.shuffle(order)

        def say(pairs):
            return ", ".join(f"{n} is {t['a_knight'] if s else t['a_knave']}" for n, s in pairs)
        assert reward(f"Let me think.\nFinal answer: {say(order)}.", r["answer"], "logic", **fields) == 1.0
        assert reward(r["answer"], r["answer"], "logic", **fields) == 1.0
        k = rng.randrange(len(order))
        flipped = [(n, (not s) if i == k else s) for i, (n, s) in enumerate(order)]
        assert reward(f"Final answer: {say(flipped)}.", r["answer"], "logic", **fields) == 0.0
        assert reward(f"Final answer: {say(order[:-1])}.", r["answer"], "logic", **fields) == 0.0


def test_zebra_and_multiple_choice(data_dir):
    """Zebra: the gold name in any case gets 1, another of the puzzle's names gets 0. MC by letter."""
    for r in _rows(data_dir, "zebra_puzzles")[:50]:
        assert reward(f"... so the answer is \\boxed{{{r['answer'].title()}}}", r["answer"], "logic") == 1.0
        assert reward(r["answer"].upper(), r["answer"], "logic") == 1.0
        assert reward("\\boxed{zzyzx}", r["answer"], "logic") == 0.0
    assert reward("The correct option is \\boxed{(B)}", "B", "logic") == 1.0
    assert reward("The correct option is \\boxed{(C)}", "B", "logic") == 0.0


# --------------------------------------------------------------------------- robustness
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.text(max_size=300), st.text(max_size=60))
def test_random_strings_never_raise(response, gold):
    """Arbitrary unicode never raises and always gives a reward in [0, 1], in both modes."""
    for task in ("math", "logic"):
        for mode in MODES:
            r = reward(response, gold, task, mode=mode)
            assert 0.0 <= r <= 1.0
    for mode in MODES:
        extract_answer(response, mode)
    assert isinstance(is_equivalent(response, gold), bool)


_LATEX_BITS = ["\\frac", "\\sqrt", "{", "}", "(", ")", "[", "]", "^", "_", "\\boxed{", "\\left", "\\right",
               "x", "2", "9", "-", "+", "*", "/", ",", "=", "\\pi", "\\infty", "\\cup", "\\{", "\\}", "!", "|",
               "\\begin{pmatrix}", "\\end{pmatrix}", "&", "\\\\", "\\text{", "$", "%", "\\circ", ".", "e", "i",
               "\\log_", "\\binom", "\\lfloor", "\\rfloor", "\\pm", " ", "<", ">", "\\le", "\\geq", "\\neq", ";",
               "\\in", " and ", " or ", "\\text{ cm}", "\\$", "####", "The answer is ", "<|im_start|>", "\\mathbb{R}",
               "\\mid", "\\langle", "\\rangle", "1,000", "\\\\frac", "\n", ". ", "4 4/9", "\\approx", "\\emptyset"]


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.sampled_from(_LATEX_BITS), max_size=80), st.lists(st.sampled_from(_LATEX_BITS), max_size=30))
def test_adversarial_latex_never_raises(a, b):
    """Random sequences of LaTeX tokens (unbalanced braces, operator pile-ups, towers of powers) never
    raise, and a string is always equivalent to itself or rejected, never an error."""
    pred, gold = "".join(a), "".join(b)
    assert reward(pred, gold, mode="strict") in (0.0, 1.0)
    assert reward(pred, gold, mode="lenient") in (0.0, 1.0)
    assert isinstance(is_equivalent(pred, gold), bool)
    assert isinstance(is_equivalent(gold, gold), bool)


@pytest.mark.parametrize("response", [
    "x" * 100_000, "1" * 100_000, "{" * 50_000 + "}" * 50_000, "\\boxed{" * 30_000,
    "\\boxed{" + "{" * 20_000 + "1" + "}" * 20_000 + "}", "\\boxed{9^9^9^9}", "\\boxed{10^{10^{10^{10}}}}",
    "\\boxed{" + "(" * 400 + "1" + ")" * 400 + "}", "\\boxed{" + "2^" * 400 + "2}", "\\boxed{1000!}",
    "\\boxed{" + "1+" * 450 + "1}", "$" * 100_000, "\\frac" * 20_000,
    "\\boxed{" + "\\sqrt{" * 300 + "2" + "}" * 300 + "}",
    # the extraction and family code paths: prices, answer clauses, joined boxes, sentences, escapes, relations
    "$1 " * 33_000, "costs $3 and she pays $18. " * 3700, "the answer is 5 " * 6000, "The answer is " + "a b " * 25_000,
    "\\boxed{1}, " * 9000, "\\boxed{1} or " * 7500, "It is 5. " * 12_000, "\\[" + "1 " * 50_000,
    "\\\\frac{1}{2} " * 7500, "<|im_start|>" * 8000, "$\n" * 50_000, "\\boxed{" + "x<" * 400 + "1}",
    "\\boxed{" + "|" * 500 + "x" + "|" * 500 + "<1}", "\\boxed{" + "[0,1]\\cup" * 90 + "[0,1]}",
    "\\boxed{" + "x<1," * 300 + "x<1}", "\\boxed{" + "p=1,q=2;" * 100 + "p=1}",
    "\\boxed{5" + "\\text{ cm}" * 300 + "}", "The answer is " + "1," * 50_000,
])
def test_pathological_inputs_are_fast(response):
    """100k-character and deeply nested inputs are verified in < 50 ms (best of 3, so a busy CI core
    does not fail the test), against a short gold and against a long one, in both modes (cold caches)."""
    for gold in ("1", response[:900]):
        for mode in MODES:
            best = min(_timed(lambda: (verifier._cache_clear(), reward(response, gold, mode=mode))) for _ in range(3))
            assert best < 0.05, (mode, best)


def _timed(fn):
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def test_batch_reward_matches_serial():
    """verify_batch in a process pool gives the same rewards, in order, as serial verify()."""
    resp = [f"\\boxed{{{i % 7}}}" for i in range(40)]
    gold = [str(i % 5) for i in range(40)]
    assert batch_reward(resp, gold, max_workers=2) == [reward(a, b) for a, b in zip(resp, gold)]
