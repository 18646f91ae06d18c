"""Tests for verifier.py: hand-written hard cases, real benchmark data, robustness and the code sandbox.

Real-data tests read ../shared/data through the `data_dir` fixture (skipped when absent). Sandbox tests
run real attacks in subprocesses; each asserts the reward is 0, the call returns within its time
limit, and this (the parent) process is still alive afterwards.
"""
import ast
import json
import os
import random
import time

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from verifier import Verdict, batch_reward, extract_answer, is_equivalent, reward, run_code, verify, verify_batch


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
    ("We get $a=1$ and then $b = 7$", "b = 7"),                             # last $...$
    ("there are 3 apples and 15 pears", "15"),                              # last number
    ("the answer is \\boxed{\\frac{1}{", None),                             # truncated mid-box
    ("", None),
    ("no digits here", None),
])
def test_extract_answer(response, expected):
    """The last box wins, with nested braces; the documented fallbacks apply only without a box;
    a response truncated inside its last box has no answer."""
    assert extract_answer(response) == expected


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


def test_reward_end_to_end_near_misses():
    """The issue's named traps through reward(): box extraction then equivalence."""
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
    """Arbitrary unicode never raises and always gives a reward in [0, 1]."""
    for task in ("math", "logic"):
        r = reward(response, gold, task)
        assert 0.0 <= r <= 1.0
    extract_answer(response)
    assert isinstance(is_equivalent(response, gold), bool)


_LATEX_BITS = ["\\frac", "\\sqrt", "{", "}", "(", ")", "[", "]", "^", "_", "\\boxed{", "\\left", "\\right",
               "x", "2", "9", "-", "+", "*", "/", ",", "=", "\\pi", "\\infty", "\\cup", "\\{", "\\}", "!", "|",
               "\\begin{pmatrix}", "\\end{pmatrix}", "&", "\\\\", "\\text{", "$", "%", "\\circ", ".", "e", "i",
               "\\log_", "\\binom", "\\lfloor", "\\rfloor", "\\pm", " "]


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.sampled_from(_LATEX_BITS), max_size=80), st.lists(st.sampled_from(_LATEX_BITS), max_size=30))
def test_adversarial_latex_never_raises(a, b):
    """Random sequences of LaTeX tokens (unbalanced braces, operator pile-ups, towers of powers) never
    raise, and a string is always equivalent to itself or rejected, never an error."""
    pred, gold = "".join(a), "".join(b)
    assert reward(pred, gold) in (0.0, 1.0)
    assert isinstance(is_equivalent(pred, gold), bool)
    assert isinstance(is_equivalent(gold, gold), bool)


@pytest.mark.parametrize("response", [
    "x" * 100_000, "1" * 100_000, "{" * 50_000 + "}" * 50_000, "\\boxed{" * 30_000,
    "\\boxed{" + "{" * 20_000 + "1" + "}" * 20_000 + "}", "\\boxed{9^9^9^9}", "\\boxed{10^{10^{10^{10}}}}",
    "\\boxed{" + "(" * 400 + "1" + ")" * 400 + "}", "\\boxed{" + "2^" * 400 + "2}", "\\boxed{1000!}",
    "\\boxed{" + "1+" * 450 + "1}", "$" * 100_000, "\\frac" * 20_000, "\\boxed{" + "\\sqrt{" * 300 + "2" + "}" * 300 + "}",
])
def test_pathological_inputs_are_fast(response):
    """100k-character and deeply nested inputs are verified in < 50 ms (best of 3, so a busy CI core
    does not fail the test), against a short gold and against a long one."""
    for gold in ("1", response[:900]):
        best = min(_timed(lambda: reward(response, gold)) for _ in range(3))
        assert best < 0.05, best


def _timed(fn):
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


# --------------------------------------------------------------------------- code sandbox
_ADD = {"prompt": "def add(a, b):\n", "test": "def check(f):\n    assert f(2, 3) == 5\n", "entry_point": "add"}
_OK = "    return a + b\n"


def _code_reward(body, timeout=3.0):
    t = time.time()
    v = verify(body, "", "code", timeout=timeout, **_ADD)
    return v, time.time() - t


def test_sandbox_passes_a_correct_completion():
    """The control: a correct completion passes (so the attack tests below can fail)."""
    v, _ = _code_reward(_OK)
    assert v.reward == 1.0, v.reason
    v, _ = _code_reward("```python\ndef add(a, b):\n    return a + b\n```")
    assert v.reward == 1.0, v.reason


ATTACKS = {
    "infinite_loop": "    while True:\n        pass\n",
    "fork_bomb": "    import os\n    while True:\n        os.fork()\n" + _OK,
    # re-import posix past the in-process guard: only the OS limits (RLIMIT_NPROC, nobody) stop this
    "fork_bomb_bypass": ("    import sys\n    for m in ('posix', 'os'):\n        sys.modules.pop(m, None)\n"
                         "    import posix\n    while True:\n        posix.fork()\n" + _OK),
    "subprocess": "    import subprocess\n    subprocess.run(['sleep', '100'])\n" + _OK,
    "alloc_10gb": "    x = bytearray(10 * 1024 ** 3)\n" + _OK,
    "kill_parent": "    import os, signal\n    os.kill(os.getppid(), signal.SIGKILL)\n" + _OK,
    "killpg_parent": "    import os, signal\n    os.killpg(os.getpgid(os.getppid()), signal.SIGKILL)\n" + _OK,
    "kill_parent_bypass": ("    import sys\n    sys.modules.pop('posix', None)\n    import posix\n"
                           "    posix.kill(posix.getppid(), 9)\n" + _OK),
    "sys_exit_before_tests": "    pass\nimport sys\nsys.exit(0)\n",
    "os_exit_before_tests": "    pass\nimport os\nos._exit(0)\n",
    "exit_in_call": "    raise SystemExit(0)\n",
    "fake_pass_output": "    pass\nprint('PASS')\nimport os\nos._exit(0)\n",
    "network": "    import socket\n    socket.create_connection(('1.1.1.1', 80), timeout=1)\n" + _OK,
}


@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_sandbox_attack_gets_zero_and_parent_survives(name):
    """Each attack gets reward 0 within its 3 s limit (+2 s of start-up and cleanup slack) and this
    process survives (we are still here to assert)."""
    v, dt = _code_reward(ATTACKS[name], timeout=3.0)
    assert v.reward == 0.0, v.reason
    assert dt < 5.0, dt
    assert os.getpid() > 0


def test_sandbox_cannot_write_outside_its_directory(tmp_path):
    """A completion that writes outside its working directory gets 0 and the file does not appear;
    writing inside its own directory is allowed."""
    target = tmp_path / "pwned.txt"
    body = f"    open({str(target)!r}, 'w').write('x')\n" + _OK
    v, _ = _code_reward(body)
    assert v.reward == 0.0 and not target.exists(), v.reason
    v, _ = _code_reward("    open('scratch.txt', 'w').write('x')\n" + _OK)
    assert v.reward == 1.0, v.reason


def test_sandbox_leaves_no_processes_behind():
    """After a timed-out run nothing of it survives: no process on this machine still has its working
    directory inside a verifier temp folder (the sandbox's cwd, deleted afterwards). Control: during
    a run, such a process is found by the same scan."""
    import threading

    def scan():
        found = []
        for pid in os.listdir("/proc"):
            if pid.isdigit():
                try:
                    if "/verifier-" in os.readlink(f"/proc/{pid}/cwd"):
                        found.append(pid)
                except OSError:
                    pass
        return found

    during = []
    timer = threading.Timer(0.5, lambda: during.extend(scan()))
    timer.start()
    v, _ = _code_reward("    import time\n    while True:\n        time.sleep(0.1)\n", timeout=1.5)
    timer.join()
    assert v.reward == 0.0
    assert during, "the scan cannot see sandbox processes, so this test would prove nothing"
    assert not scan()


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0 or not os.path.exists("/usr/bin/python3"),
                    reason="needs root to become an ordinary user, and a system python that user can run")
def test_sandbox_as_ordinary_user():
    """The same sandbox run by an ordinary user (uid nobody, RLIMIT_NPROC enforced, no unshare rights):
    a correct program passes, a fork bomb, a parent kill and a loop get 0, and the parent survives."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:                              # child: become nobody and report results through the pipe
        try:
            os.close(r)
            os.setgid(65534)
            os.setuid(65534)
            res = [run_code(p, None, timeout=2.0, python="/usr/bin/python3")[0] for p in (
                "assert 1 + 1 == 2",
                "import sys\nsys.modules.pop('posix')\nimport posix\nwhile True: posix.fork()",
                "import os\nos.kill(os.getppid(), 9)",
                "while True: pass")]
            os.write(w, json.dumps(res).encode())
        finally:
            os._exit(0)
    os.close(w)
    data = os.read(r, 4096)
    os.close(r)
    os.waitpid(pid, 0)
    assert json.loads(data) == [True, False, False, False]


def test_batch_reward_matches_serial():
    """verify_batch in a process pool gives the same rewards, in order, as serial verify()."""
    resp = [f"\\boxed{{{i % 7}}}" for i in range(40)]
    gold = [str(i % 5) for i in range(40)]
    assert batch_reward(resp, gold, max_workers=2) == [reward(a, b) for a, b in zip(resp, gold)]
