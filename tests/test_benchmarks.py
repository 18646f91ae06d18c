"""BBH, SynLogic and LiveCodeBench: their converters' rows, their graders (benchmarks.py) and the sandbox.

- BBH: every gold target of the fixture's real rows (every subtask, the three rows with a text target, the
  dyck targets with braces) verifies against itself in both answer modes, a labelled set of near misses per
  answer type does not, and the accepted spellings of each type are pinned. With the full BBH file in the
  shared data folder, every one of its targets is checked too (skipped otherwise).
- SynLogic: for every supported task type, the row's reference answer verifies and the same answer with one
  cell or step changed does not.
- LiveCodeBench: a correct solution passes and a subtly wrong one fails, for stdin and for functional
  (LeetCode) tests; an infinite loop, a fork bomb, a 10 GB allocation, a forged status line and a read
  outside its folder are all contained (reward 0, within the time limit, this process alive); a
  crafted pickle is refused before anything in it runs.
The fixture rows are tests/fixtures/prepare_benchmarks.json (each source's schema), converted by
`python data.py prepare --from` once per module.
"""
import base64
import json
import os
import pickle
import zlib

import pytest

import benchmarks
import data
import eval as ev
import verifier
from benchmarks import verify_bbh, verify_synlogic
from test_prepare import write_sources


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """The output folder of one `prepare bbh synlogic livecodebench --from` over the fixture rows."""
    src = write_sources(tmp_path_factory.mktemp("downloads"))
    out = tmp_path_factory.mktemp("data")
    data.main(["prepare", "bbh", "synlogic", "livecodebench", "--from", str(src), "--out", str(out)])
    return out


def box(text: str) -> str:
    """The answer in \\boxed{}, braces escaped as LaTeX requires (BBH's dyck answers contain them)."""
    return "\\boxed{" + text.replace("{", "\\{").replace("}", "\\}") + "}"


# =============================================================================
# BBH


def test_bbh_rows_name_their_subtask_and_types_cover_all_27(prepared):
    """Each converted row keeps its subtask (from the lukaemon parquet folder or the authors' file name);
    the fixture has every one of the 27 subtasks; every subtask has an answer type; the BBH authors'
    model-output files beside the data are not read as rows."""
    rows = data.load_dataset("bbh", prepared)
    assert {r["subtask"] for r in rows} == set(data.BBH_SUBTASKS) == set(benchmarks.BBH_ANSWER_TYPES)
    assert len(data.BBH_SUBTASKS) == 27
    assert all(r["task"] == "logic" and r["benchmark"] == "bbh" for r in rows)
    assert rows[0]["id"].startswith("bbh/") and len({r["id"] for r in rows}) == len(rows)
    kinds = {benchmarks.bbh_answer_type(r["subtask"], r["answer"]) for r in rows}
    assert kinds == {"choice", "true/false", "yes/no", "valid/invalid", "number", "words", "dyck", "text"}


def _check_bbh_golds(rows):
    bad = []
    for r in rows:
        for resp, mode in ((box(r["answer"]), "strict"), (box(r["answer"]), "lenient"),
                           (f"Let's think step by step.\nSo the answer is {r['answer']}.", "lenient")):
            v = verifier.verify(resp, r["answer"], "logic", mode=mode, **data.verifier_fields(r))
            if v.reward != 1.0:
                bad.append((r["id"], mode, resp, v.reason))
    return bad


def test_bbh_every_gold_verifies_in_both_modes(prepared):
    """Every gold target verifies against itself: boxed (strict and lenient) and as BBH's own
    "So the answer is X." clause (lenient)."""
    assert _check_bbh_golds(data.load_dataset("bbh", prepared)) == []


def test_bbh_every_gold_of_the_full_set(data_dir):
    """The same on all 6,511 rows, when the data folder has bbh.jsonl."""
    if not (data_dir / "bbh.jsonl").is_file():
        pytest.skip(f"needs bbh.jsonl in {data_dir}: python data.py prepare bbh")
    rows = data.load_dataset("bbh", data_dir)
    assert len(rows) == 6511 and _check_bbh_golds(rows) == []


_DATE = ("Today is Christmas Eve of 1937. What is the date tomorrow in MM/DD/YYYY?\nOptions:\n(A) 12/11/1937\n"
         "(B) 12/25/1937\n(C) 01/04/1938\n(D) 12/04/1937\n(E) 12/25/2006\n(F) 07/25/1937")
_SHAPE = "This SVG path element draws a\nOptions:\n(A) circle\n(B) heptagon\n(C) hexagon\n(D) kite"

# (subtask, gold, problem, response, mode): all must score 1
ACCEPTED = [
    ("date_understanding", "(B)", _DATE, "\\boxed{(B)}", "strict"),
    ("date_understanding", "(B)", _DATE, "\\boxed{B}", "strict"),
    ("date_understanding", "(B)", _DATE, "\\boxed{\\text{(B)}}", "strict"),
    ("date_understanding", "(B)", _DATE, "\\boxed{(B) 12/25/1937}", "strict"),
    ("date_understanding", "(B)", _DATE, "\\boxed{12/25/1937}", "strict"),            # the option's text alone
    ("date_understanding", "(B)", _DATE, "So the answer is (B).", "lenient"),
    ("date_understanding", "(B)", _DATE, "**Answer:** B)", "lenient"),
    ("geometric_shapes", "(B)", _SHAPE, "\\boxed{\\text{Option B}}", "strict"),
    ("geometric_shapes", "(B)", _SHAPE, "The final answer is heptagon.", "lenient"),
    ("boolean_expressions", "False", "", "\\boxed{\\text{False}}", "strict"),
    ("boolean_expressions", "False", "", "So the answer is false.", "lenient"),
    ("causal_judgement", "Yes", "", "\\boxed{yes}", "strict"),
    ("sports_understanding", "no", "", "\\boxed{\\textbf{No}}", "strict"),
    ("formal_fallacies", "invalid", "", "\\boxed{Invalid}", "strict"),
    ("multistep_arithmetic_two", "-11520", "", "\\boxed{-11,520}", "strict"),
    ("multistep_arithmetic_two", "-11520", "", "\\boxed{\u221211520}", "strict"),
    ("object_counting", "8", "", "So the answer is 8.0.", "lenient"),
    ("word_sorting", "apple banana cherry", "", "\\boxed{apple, banana, cherry}", "strict"),
    ("word_sorting", "it&t r&d won't", "", "\\boxed{It\\&T R\\&D won't}", "strict"),
    ("dyck_languages", "} ] >", "", "\\boxed{\\}]\\rangle}", "strict"),
    ("dyck_languages", "} ] >", "", "So the answer is } ] >.", "lenient"),
    ("movie_recommendation", "Monsters, Inc", "Options:\n(A) Monsters\n(B) Inc", "\\boxed{Monsters, Inc.}", "strict"),
]

# (label, subtask, gold, problem, response, mode): all must score 0
NEAR_MISSES = [
    ("wrong option", "date_understanding", "(B)", _DATE, "\\boxed{(C)}", "strict"),
    ("two options", "date_understanding", "(B)", _DATE, "\\boxed{(B) or (C)}", "strict"),
    ("two letters", "date_understanding", "(B)", _DATE, "\\boxed{B, C}", "strict"),
    ("letter with another option's text", "date_understanding", "(B)", _DATE, "\\boxed{(B) 01/04/1938}", "strict"),
    ("another option's text", "geometric_shapes", "(B)", _SHAPE, "\\boxed{hexagon}", "strict"),
    ("lowercase article, not a letter", "geometric_shapes", "(B)", _SHAPE, "\\boxed{b}", "strict"),
    ("clause without a box in strict", "date_understanding", "(B)", _DATE, "So the answer is (B).", "strict"),
    ("opposite truth value", "boolean_expressions", "False", "", "\\boxed{True}", "strict"),
    ("extra words", "boolean_expressions", "False", "", "\\boxed{False and True}", "strict"),
    ("opposite answer", "navigate", "No", "", "\\boxed{Yes}", "strict"),
    ("negated", "formal_fallacies", "valid", "", "\\boxed{not valid}", "strict"),
    ("the other word", "formal_fallacies", "valid", "", "\\boxed{invalid}", "strict"),
    ("off by one", "object_counting", "8", "", "\\boxed{9}", "strict"),
    ("sign", "multistep_arithmetic_two", "-24", "", "\\boxed{24}", "strict"),
    ("a number word", "object_counting", "8", "", "\\boxed{eight}", "strict"),
    ("wrong word order", "word_sorting", "apple banana cherry", "", "\\boxed{banana apple cherry}", "strict"),
    ("extra word", "word_sorting", "apple banana cherry", "", "\\boxed{apple banana cherry date}", "strict"),
    ("missing word", "word_sorting", "apple banana cherry", "", "\\boxed{apple banana}", "strict"),
    ("extra bracket", "dyck_languages", "] )", "", "\\boxed{] ) )}", "strict"),
    ("wrong bracket order", "dyck_languages", "] )", "", "\\boxed{) ]}", "strict"),
    ("unescaped brace closes the box early", "dyck_languages", "} ]", "", "\\boxed{} ]}", "strict"),
    ("split option text", "movie_recommendation", "Monsters, Inc", "Options:\n(A) Monsters\n(B) Inc", "\\boxed{(A)}",
     "strict"),
    ("truncated inside the box", "navigate", "No", "", "So \\boxed{N", "lenient"),
]


@pytest.mark.parametrize("subtask, gold, problem, response, mode", ACCEPTED)
def test_bbh_accepted_spellings(subtask, gold, problem, response, mode):
    """Each answer type accepts the spellings the module docstring lists."""
    v = verify_bbh(response, gold, mode=mode, subtask=subtask, problem=problem)
    assert v.reward == 1.0, v


@pytest.mark.parametrize("label, subtask, gold, problem, response, mode", NEAR_MISSES,
                         ids=[m[0] for m in NEAR_MISSES])
def test_bbh_near_misses_fail(label, subtask, gold, problem, response, mode):
    """A labelled near miss per answer type (wrong option, wrong word order, extra words, ...) scores 0."""
    v = verify_bbh(response, gold, mode=mode, subtask=subtask, problem=problem)
    assert v.reward == 0.0, (label, v)


# =============================================================================
# SynLogic


def _grid_response(grid) -> str:
    return f"Here is the grid.\n```python\n{json.dumps(grid)}\n```"


def _set(grid, i, j, value):
    g = json.loads(json.dumps(grid))
    g[i][j] = value
    return g


# task type -> (correct response or None for synlogic_reference, the response with one cell/step changed)
def _cases(task, game, question):
    md, ans = game["metadata"], game["answer"]
    if task == "sudoku":
        return None, _grid_response(_set(md["complete_sudoku"], 0, 0, md["complete_sudoku"][0][0] % 9 + 1))
    if task == "skyscraper_puzzle":
        return None, _grid_response(_set(md["solved_grid"], 0, 0, md["solved_grid"][0][1]))
    if task == "kukurasu":
        return None, json.dumps(_set(md["solution"], 0, 0, "X"))
    if task == "numbrix":
        g = _set(md["solution"], 0, 1, 3)
        return None, json.dumps(_set(g, 0, 2, 2))                    # 2 and 3 swapped: a broken step
    if task == "survo":
        return None, _grid_response(_set(md["filled_matrix"], 0, 1, 6))
    if task == "campsite":
        return None, _grid_response(_set(md["solution"], 0, 1, "X"))
    if task == "minesweeper":
        return None, "[(0, 1), (2, 2)]"
    if task == "futoshiki":
        return "[[1 2 3,2 3 1,3 1 2]]", "[[1 3 2,2 1 3,3 2 1]]"         # the second breaks (0,1) < (0,2)
    if task == "star_placement_puzzle":
        good = {"A": [(1, 2)], "B": [(2, 4)], "C": [(3, 1)], "D": [(4, 3)]}
        bad = {"A": [(1, 2)], "B": [(2, 3)], "C": [(3, 1)], "D": [(4, 3)]}    # (2,3) touches (1,2)
        return f"```python\n{good}\n```", f"```python\n{bad}\n```"
    if task == "norinori":
        return None, "[[(1,1), (1,2)], [(2,3), (2,4)]]"               # second domino moved into region A
    if task in ("game_of_24", "mathador"):
        return None, "```python\n(7 - 8 / 8) + 4\n```"                 # right numbers, value 10
    if task == "math_path":
        return None, "[[2 + 4 * 4 - 4 = 10]]"
    if task in ("object_counting", "object_properties"):
        return None, f"\\boxed{{{int(ans) + 1}}}"
    if task == "word_sorting":
        return None, "\\boxed{banana, apple, cherry}"
    if task == "word_sorting_mistake":
        return None, "\\boxed{2}" if str(ans) == "No" else f"\\boxed{{{int(ans) + 1}}}"
    if task == "space_reasoning":
        return None, "\\boxed{chair}"
    if task == "space_reasoning_tree":
        return None, "\\boxed{kiwi, pear}"
    if task == "boolean_expressions":
        return None, "\\boxed{A}"
    if task == "operation":
        return None, "\\boxed{\\frac{3}{4}}"
    if task == "dyck_language":
        return None, md["full_sequence"][:-1] + "]"
    if task == "dyck_language_errors":
        return None, str(md["first_error_pos"] + 1)
    if task == "dyck_language_reasoning_errors":
        return None, "3"
    if task == "cryptarithm":
        return None, "The answer is 123+457=580."
    if task == "cipher":
        return None, '```python\n[["HELLO WORLE"]]\n```'
    if task == "time_sequence":
        return None, "[90, 4]"
    if task == "goods_exchange":
        return None, "```python\n(('Alice','pen'),('Bob','book'),('Carol','cup'))\n```"
    if task == "web_of_lies":
        return None, "The answer is **yes, yes, yes**."
    if task == "zebra_puzzle":
        return None, '```json\n{"header": ["House", "Name"], "rows": [["1", "Bo"], ["2", "Ann"]]}\n```'
    if task == "arc_agi":
        return None, "```json\n[[1, 0], [1, 1]]\n```"
    if task == "buggy_tables":
        return None, "The answer is 12.35."
    raise AssertionError(f"no test case for {task}")


def test_synlogic_references_verify_and_one_change_fails(prepared):
    """For every supported task type: the row's reference answer (or, where the dataset stores none, a
    hand-checked solution) scores 1, also inside <think>...</think><answer>...</answer>, and the same answer
    with one cell or step changed scores 0."""
    rows = data.load_dataset("synlogic", prepared)
    covered = set()
    for r in rows:
        task, game = r["subtask"], r["game"]
        good, bad = _cases(task, game, r["problem"])
        good = good if good is not None else benchmarks.synlogic_reference(task, game)
        assert good is not None, task
        fields = data.verifier_fields(r)
        for resp in (good, f"<think>work</think>\n<answer>{good}</answer>"):
            v = verifier.verify(resp, r["answer"], "logic", mode="strict", **fields)
            assert v.reward == 1.0, (r["id"], resp, v)
        v = verifier.verify(bad, r["answer"], "logic", mode="lenient", **fields)
        assert v.reward == 0.0, (r["id"], bad, v)
        covered.add(task)
    assert covered == set(benchmarks.SYNLOGIC_CHECKS) - {"mathador", "arc_agi_2"}      # aliases of covered rules


def test_synlogic_answer_region_and_unsupported_types():
    """The answer in <answer>...</answer> is the one graded (not a different one in the reasoning);
    a type without a rule, or a row without game data, scores 0 with the reason."""
    game = {"answer": "7", "metadata": {}}
    assert verify_synlogic("<think>\\boxed{7}</think><answer>\\boxed{8}</answer>", "7", subtask="object_counting",
                           game=game).reward == 0.0
    assert verify_synlogic("<think>\\boxed{8}</think><answer>\\boxed{7}</answer>", "7", subtask="object_counting",
                           game=game).reward == 1.0
    assert "unsupported" in verify_synlogic("x", "", subtask="arrow_maze", game=game).reason
    assert verify_synlogic("\\boxed{7}", "7", subtask="object_counting", game=None).reward == 0.0


def test_synlogic_expressions_are_never_executed(tmp_path):
    """Game of 24 and math_path answers are evaluated by a fraction-exact arithmetic evaluator: code in
    the answer is refused (and does not run), and 7/3*3 is exactly 7."""
    marker = tmp_path / "ran"
    game = {"answer": "", "metadata": {"numbers": [3, 3, 7], "operators": ["+", "-", "*", "/"], "result": 7}}
    evil = f"```python\n__import__('os').system('touch {marker}') or 7\n```"
    assert verify_synlogic(evil, "", subtask="game_of_24", game=game).reward == 0.0 and not marker.exists()
    assert verify_synlogic("```python\n7 / 3 * 3\n```", "", subtask="game_of_24", game=game).reward == 1.0
    assert verify_synlogic("```python\n7 / 3 + 3\n```", "", subtask="game_of_24", game=game).reward == 0.0
    with pytest.raises(benchmarks._ExprError):
        benchmarks._arith("2 ** 99999999")


# =============================================================================
# LiveCodeBench: prepared rows


def test_livecodebench_rows(prepared):
    """Release files only (test7.jsonl is a later release), LiveCodeBench's own prompt with an empty
    instruction, subtask = difficulty, style from metadata.func_name, public + private tests in a gzip
    file beside the JSONL readable by its owner only."""
    rows = {r["question_id"]: r for r in data.load_dataset("livecodebench", prepared)}
    assert set(rows) == {"abc999_a", "3000"}
    a, b = rows["abc999_a"], rows["3000"]
    assert (a["test_style"], a["subtask"], b["test_style"], b["fn_name"], b["subtask"]) == (
        "stdin", "easy", "functional", "twoSum", "medium")
    assert a["instruction"] == "" and "Read the inputs from stdin" in a["problem"]
    assert "# YOUR CODE HERE" in a["problem"]
    assert "class Solution:" in b["problem"] and "starter code" in b["problem"]
    tests = benchmarks._load_tests(a)
    assert tests == (["3\n1 2 3\n", "2\n5 5\n", "1\n-7\n"], ["6\n", "10\n", "-7\n"])
    assert os.path.isabs(a["tests_file"]) and os.stat(a["tests_file"]).st_mode & 0o077 == 0


STDIN_OK = "```python\nn = int(input())\nprint(sum(map(int, input().split())))\n```"
STDIN_WRONG = "```python\nn = int(input())\nprint(sum(abs(int(x)) for x in input().split()))\n```"   # fails on -7
TWO_SUM = ("class Solution:\n    def twoSum(self, nums: List[int], target: int) -> List[int]:\n"
           "        seen = {}\n        for i, x in enumerate(nums):\n            if target - x in seen:\n"
           "                return (seen[target - x], i)\n            seen[x] = i\n")
TWO_SUM_WRONG = TWO_SUM.replace("if target - x in seen:", "if target - x in seen and target - x != x:")   # [3, 3]


def test_livecodebench_correct_passes_and_subtly_wrong_fails_both_styles(prepared):
    """stdin: a correct program passes, one that is wrong only on the negative hidden test fails.
    functional: a correct method (returning a tuple) passes, one wrong only on a hidden test fails."""
    rows = {r["question_id"]: r for r in data.load_dataset("livecodebench", prepared)}
    grade = lambda resp, r: verifier.verify(resp, r["answer"], r["task"], **data.verifier_fields(r))   # noqa: E731
    v = grade(STDIN_OK, rows["abc999_a"])
    assert v.reward == 1.0, v
    v = grade(STDIN_WRONG, rows["abc999_a"])
    assert v.reward == 0.0 and "test 3" in v.reason, v
    v = grade(f"```python\n{TWO_SUM}```", rows["3000"])
    assert v.reward == 1.0, v
    v = grade(f"```python\n{TWO_SUM_WRONG}```", rows["3000"])
    assert v.reward == 0.0 and "test 3" in v.reason, v


@pytest.mark.parametrize("pred, gold, same", [
    ("6\n", "6", True), ("  1 2  \n3\n\n", "1 2\n3", True), ("0.50 2", "0.5 2.0", True), ("1e2", "100", True),
    ("6", "7", False), ("1 2", "1 2\n", True), ("1\n2", "1 2", False), ("0.333", "0.3333", False),
    ("Yes", "yes", False), ("", "0", False)])
def test_stdout_rule_is_lcb_rule(pred, gold, same):
    """LiveCodeBench's comparison: stripped lines, equal or equal as Decimal lists (no tolerance)."""
    assert benchmarks.stdout_matches(pred, gold) is same


def test_functional_results_must_be_plain_data():
    """An object that claims equality with everything does not pass: results are compared as JSON."""
    cheat = ("class Solution:\n    def twoSum(self, nums, target):\n        class Any:\n"
             "            def __eq__(s, o): return True\n        return Any()\n")
    ok, why = benchmarks.run_tests(cheat, ["[1,2]\n3"], ["[0, 1]"], "functional", "twoSum", time_limit=3)
    assert not ok and "runtime error" in why, why


# =============================================================================
# LiveCodeBench: the sandbox under attack

_IN, _OUT = ["3\n1 2 3\n", "2\n5 5\n"], ["6\n", "10\n"]
ATTACKS = {
    "infinite_loop": "while True:\n    pass\n",
    "fork_bomb": "import os\nwhile True:\n    os.fork()\n",
    "fork_bomb_bypass": "import sys\nsys.modules.pop('posix', None)\nimport posix\nwhile True:\n    posix.fork()\n",
    "alloc_10gb": "x = bytearray(10 * 1024 ** 3)\nprint(6)\n",
    "kill_parent": "import os, signal\nos.kill(os.getppid(), signal.SIGKILL)\n",
    "forge_status": ("import os\nfor fd in range(3, 64):\n    try:\n"
                     "        os.write(fd, b'ready\\ndone 0\\ndone 1\\n')\n"
                     "    except OSError:\n        pass\nos._exit(0)\n"),
    "exit_before_output": "import os\nos._exit(0)\n",
    "read_outside_its_folder": "print(open('/etc/hostname').read())\n",
    "network": "import socket\nsocket.create_connection(('1.1.1.1', 80), timeout=1)\nprint(6)\n",
    # the judge reads out_<i> after each test: a symlink there must not make it read /dev/zero forever
    "output_symlink": ("import sys\nsys.modules.pop('posix', None)\nimport posix\nfor i in (0, 1):\n"
                       "    try:\n        posix.unlink('out_%d' % i)\n    except OSError:\n        pass\n"
                       "    posix.symlink('/dev/zero', 'out_%d' % i)\nprint(6)\n"),
}


@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_livecodebench_attack_is_contained(name):
    """Each attack scores 0 within its 1.5 s per-test limit (+ start-up and cleanup slack) and this
    process survives."""
    import time
    t = time.time()
    ok, why = benchmarks.run_tests(ATTACKS[name], _IN, _OUT, "stdin", time_limit=1.5)
    assert not ok, (name, why)
    assert time.time() - t < 8.0
    assert os.getpid() > 0


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0 or not os.path.exists("/usr/bin/python3"),
                    reason="needs root to become an ordinary user, and a system python that user can run")
def test_livecodebench_sandbox_as_ordinary_user():
    """Run by an ordinary user (uid nobody: RLIMIT_NPROC enforced, no privilege to drop): a correct program
    passes, also one importing threading and logging (they register at-fork hooks), a fork bomb past the
    in-process guard and a parent kill score 0, and the parent survives."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(r)
            os.setgid(65534)
            os.setuid(65534)
            res = [benchmarks.run_tests(c, _IN, _OUT, time_limit=2.0, python="/usr/bin/python3")[0] for c in (
                STDIN_OK.strip("`").removeprefix("python\n"),
                "import threading, logging\n" + STDIN_OK.strip("`").removeprefix("python\n"),
                ATTACKS["fork_bomb_bypass"], ATTACKS["kill_parent"])]
            os.write(w, json.dumps(res).encode())
        finally:
            os._exit(0)
    os.close(w)
    got = os.read(r, 4096)
    os.close(r)
    os.waitpid(pid, 0)
    assert json.loads(got) == [True, True, False, False]


def test_livecodebench_sandbox_leaves_nothing_behind():
    """A timed-out run leaves no process and no temporary folder behind."""
    before = {p for p in os.listdir("/tmp") if p.startswith("verifier-lcb-")}
    ok, _ = benchmarks.run_tests("import time\nwhile True:\n    time.sleep(0.05)\n", _IN, _OUT, time_limit=1.0)
    assert not ok
    assert {p for p in os.listdir("/tmp") if p.startswith("verifier-lcb-")} == before
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            assert "verifier-lcb-" not in os.readlink(f"/proc/{pid}/cwd")
        except OSError:
            pass


# =============================================================================
# LiveCodeBench: the hidden tests' pickle


class _Evil:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (os.system, (f"touch {self.path}",))


def _encoded(obj, protocol=pickle.DEFAULT_PROTOCOL) -> str:
    return base64.b64encode(zlib.compress(pickle.dumps(obj, protocol=protocol))).decode()


def test_malicious_pickle_is_refused_before_anything_runs(tmp_path):
    """A pickle that calls os.system when loaded is refused, and the command never runs; so are a pickle
    of a list and garbage. Plain strings are read under every pickle protocol, as lcb_runner reads them."""
    marker = tmp_path / "pwned"
    for payload in (_encoded(_Evil(marker)), _encoded([{"input": "1", "output": "1"}])):
        with pytest.raises(ValueError, match="refused"):
            data.decode_lcb_tests(payload)
    assert not marker.exists()
    row = {"question_id": "x", "question_content": "q", "public_test_cases": "[]",
           "private_test_cases": _encoded(_Evil(marker)), "metadata": "{}"}
    assert data.convert_livecodebench(row).startswith("tests refused")
    assert not marker.exists()
    tests = [{"input": "1\n", "output": "2\n", "testtype": "stdin"}]
    for protocol in range(pickle.HIGHEST_PROTOCOL + 1):
        assert data.decode_lcb_tests(_encoded(json.dumps(tests), protocol)) == tests
    with pytest.raises(ValueError):
        data.decode_lcb_tests(base64.b64encode(b"not zlib").decode())


def test_decompression_bomb_is_refused(monkeypatch):
    """Tests that decompress to more than MAX_TESTS_BYTES are refused rather than filling memory."""
    monkeypatch.setattr(data, "MAX_TESTS_BYTES", 1000)
    with pytest.raises(ValueError, match="decompress to more"):
        data.decode_lcb_tests(_encoded("x" * 5000))


# =============================================================================
# Prompts and the per-subtask table


class _Chat:
    def encode_chat(self, messages):
        self.messages = messages
        return [0]


def test_prompts(prepared):
    """BBH: the question + the boxed instruction; SynLogic: the question alone (it states its format);
    LiveCodeBench: LiveCodeBench's own prompt, not wrapped again in a code fence."""
    tok = _Chat()
    bbh = data.load_dataset("bbh", prepared)[0]
    data.build_prompt(bbh, tok)
    assert tok.messages[0]["content"] == f"{bbh['problem']}\n{data.MATH_INSTRUCTION}"
    syn = data.load_dataset("synlogic", prepared)[0]
    data.build_prompt(syn, tok)
    assert tok.messages[0]["content"] == syn["problem"]
    lcb = data.load_dataset("livecodebench", prepared)[0]
    data.build_prompt(lcb, tok)
    assert tok.messages[0]["content"] == lcb["problem"]


def test_eval_reports_each_subtask(tmp_path, capsys):
    """eval.py's subtask rows are pass@k over each subtask's problems (checked against the estimator
    written out here), and --rescore prints them after the benchmark table."""
    recs = []
    for i, (sub, c) in enumerate([("navigate", 4), ("navigate", 0), ("snarks", 2)]):
        recs.append({"id": f"bbh/{i}", "benchmark": "bbh", "subtask": sub, "task": "logic", "answer": "x", "n": 4,
                     "n_correct": c, "rewards": [1.0] * c + [0.0] * (4 - c), "extracted": ["x"] * 4,
                     "responses": ["r"] * 4, "lengths": [1] * 4, "finish": ["stop"] * 4,
                     "cand": {"n_tokens": 0, "topn_probs": [], "entropy": 0.0}})
    sub = ev.summarize_subtasks(recs, [1, 2])
    assert set(sub) == {"bbh/navigate", "bbh/snarks"}
    assert sub["bbh/navigate"]["pass@1"] == pytest.approx((4 / 4 + 0 / 4) / 2)
    assert sub["bbh/snarks"]["pass@2"] == pytest.approx(1 - (2 * 1) / (4 * 3))      # 1 - C(2,2)/C(4,2)
    (tmp_path / "samples").mkdir()
    (tmp_path / "samples" / "bbh.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    ev.main(["--rescore", str(tmp_path), "--k", "1", "2", "--out", str(tmp_path / "o")])
    out = capsys.readouterr().out
    assert "per subtask" in out and "bbh/navigate" in out
    assert set(json.loads((tmp_path / "o" / "results.json").read_text())["subtasks"]) == set(sub)


def test_eval_cli_runs_the_three_benchmarks(prepared, tiny_dir, tmp_path):
    """`eval.py --data bbh synlogic livecodebench` works like the math sets: each benchmark gets its row,
    every sample record names its subtask, and results.json holds the per-subtask rows (tiny model, 2
    problems each, 2 samples of 8 tokens; the LiveCodeBench samples run in the sandbox and fail)."""
    out = tmp_path / "run"
    table = ev.main(["--model", str(tiny_dir), "--data", "bbh", "synlogic", "livecodebench", "--data-dir", str(prepared),
                     "--limit", "2", "--n", "2", "--k", "1", "2", "--max-new-tokens", "8", "--max-prompt-tokens", "100000",
                     "--out", str(out), "--workers", "1", "--no-progress", "--no-plot"])
    assert {"bbh", "synlogic", "livecodebench", "average"} <= set(table)
    recs = ev.load_run(out)
    assert len(recs) == 6 and all(r.get("subtask") for r in recs)
    assert table["livecodebench"]["acc"] == 0.0
    subtasks = json.loads((out / "results.json").read_text())["subtasks"]
    assert set(subtasks) == {f"{r['benchmark']}/{r['subtask']}" for r in recs}
