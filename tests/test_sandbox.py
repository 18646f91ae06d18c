"""Tests for sandbox.py: the code reward's process isolation under attack, and its plain-data codec.

Each attack and forgery runs for real in a subprocess, through verifier.verify(..., "code") (the code
reward, which grades with sandbox.run_code) or run_code itself; each asserts the reward is 0, that the call
returns within its time limit, and that this (the parent) process is still alive afterwards. Each group has
a control that passes, so a sandbox that fails everything fails these tests too.
"""
import json
import os
import time

import pytest
from hypothesis import given, settings, strategies as st

import sandbox
from sandbox import run_code
from verifier import verify


# --------------------------------------------------------------------------- the code reward under attack
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
    "sys_exit_before_tests": "def add(a, b):\n    pass\nimport sys\nsys.exit(0)\n",
    "os_exit_before_tests": "def add(a, b):\n    pass\nimport os\nos._exit(0)\n",
    "exit_in_call": "    raise SystemExit(0)\n",
    "fake_pass_output": "def add(a, b):\n    pass\nprint('PASS')\nimport os\nos._exit(0)\n",
    "network": "    import socket\n    socket.create_connection(('1.1.1.1', 80), timeout=1)\n" + _OK,
}


@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_sandbox_attack_gets_zero_and_parent_survives(name):
    """Each attack gets reward 0 within its 3 s limit (+2 s of start-up and cleanup slack) and this
    process survives (we are still here to assert)."""
    v, dt = _code_reward(ATTACKS[name], timeout=3.0)
    assert v.reward == 0.0, v.reason
    assert "SyntaxError" not in v.reason and "IndentationError" not in v.reason, v.reason   # it ran
    assert dt < 5.0, dt
    assert os.getpid() > 0


# --------------------------------------------------------------------------- code sandbox: forged passes
# Each forgery is a WRONG `add` (it returns 0; the test expects add(2, 3) == 5) that tries to be graded as
# a pass anyway, by every route a program in the grader's process has: the grader's frames and objects,
# its file descriptors, its memory, exiting early, patched builtins, a rigged ==. `_spray` writes one
# "pass" line to every file descriptor the process holds (found by scanning /proc/self/fd): "PASS <secret>"
# with the best secret found (what a pass-token protocol reads), else a claim shaped like a reply. Against
# a grader that ran the test inside the program's process and trusted a token, the frame routes, the
# memory scan (as an ordinary user, where /proc/self/mem is readable) and the rigged == all passed.
_SPRAY = """
def _spray(secrets=()):
    import os
    line = ("PASS %s\\n" % secrets[0]) if secrets else '{"i": 0, "verdict": "pass"}\\n'
    for fd in sorted(int(x) for x in os.listdir("/proc/self/fd")):
        try:
            os.write(fd, line.encode())
        except OSError:
            pass

def _hex_secrets(values):
    import re
    return [v for v in values if isinstance(v, str) and re.fullmatch("[0-9a-f]{32}", v)]
"""
_WRONG = "    return 0\n"
FORGERIES = {
    # the reported exploit: the harness frame that holds the token, os.write and os._exit
    "harness_frame_token": ("    import sys\n    f = sys._getframe(1)\n"
                            "    while f is not None and 'token' not in f.f_locals:\n        f = f.f_back\n"
                            "    l = (f or sys._getframe()).f_locals\n"
                            "    l['write'](l['out_fd'], ('PASS ' + l['token'] + '\\n').encode())\n"
                            "    l['exit_'](0)\n"),
    "frame_walk": ("    import os, sys\n    found, f = [], sys._getframe()\n    while f is not None:\n"
                   "        found += _hex_secrets(list(f.f_locals.values()) + list(f.f_globals.values()))\n"
                   "        f = f.f_back\n    _spray(found)\n    os._exit(0)\n"),
    "gc_objects": ("    import gc, os\n    found = []\n    for o in gc.get_objects():\n"
                   "        if type(o).__name__ == 'frame':\n            o = o.f_locals\n"
                   "        if isinstance(o, dict):\n            found += _hex_secrets(list(o.values()))\n"
                   "        elif isinstance(o, (list, tuple)):\n            found += _hex_secrets(o)\n"
                   "    _spray(found)\n    os._exit(0)\n"),
    "proc_self_fd_spray": "    _spray()\n" + _WRONG,
    # the secret as bytes anywhere in the process's memory: the most frequent 32-hex-digit string
    "proc_self_mem": ("    import collections, os, re\n    seen = collections.Counter()\n    try:\n"
                      "        with open('/proc/self/maps') as maps, open('/proc/self/mem', 'rb', 0) as mem:\n"
                      "            for line in maps:\n"
                      "                lo, hi = (int(x, 16) for x in line.split()[0].split('-'))\n"
                      "                if line.split()[1][0] != 'r' or hi - lo > 1 << 26:\n"
                      "                    continue\n"
                      "                try:\n                    mem.seek(lo)\n"
                      "                    chunk = mem.read(hi - lo)\n"
                      "                except OSError:\n                    continue\n"
                      "                seen.update(re.findall(rb'(?<![0-9a-f])[0-9a-f]{32}(?![0-9a-f])', chunk))\n"
                      "    except OSError:\n        pass\n"
                      "    _spray([s.decode() for s, _ in seen.most_common()])\n    os._exit(0)\n"),
    "os_exit_in_call": "    import os\n    os._exit(0)\n",
    "system_exit_in_call": "    raise SystemExit(0)\n",
    "keyboard_interrupt_in_call": "    raise KeyboardInterrupt\n",
    "redefine_check": (_WRONG + "def check(candidate):\n    pass\nimport builtins\nbuiltins.check = check\n"),
    "always_equal_int": ("    class Same(int):\n        def __eq__(self, other):\n            return True\n"
                         "        __hash__ = int.__hash__\n    return Same(0)\n"),
    "always_equal_object": ("    class Same:\n        def __eq__(self, other):\n            return True\n"
                            "        def __ne__(self, other):\n            return False\n    return Same()\n"),
    "fake_pass_print": ("    import sys\n    print('PASS')\n    print('PASS', file=sys.stderr)\n"
                        "    print('{\"i\": 0, \"verdict\": \"pass\"}')\n" + _WRONG),
    "reply_flood": ("    import os\n    for fd in range(3, 64):\n        try:\n"
                    "            os.write(fd, b'x' * (4 << 20))\n        except OSError:\n            pass\n" + _WRONG),
}


@pytest.mark.parametrize("name", sorted(FORGERIES))
def test_sandbox_forged_pass_gets_zero(name):
    """Each forgery of a wrong solution gets reward 0 within its 3 s limit (+2 s slack): the verdict is
    reached in this process from the values the program returns, so nothing the program can find or
    write passes it."""
    v, dt = _code_reward("def add(a, b):\n" + FORGERIES[name] + _SPRAY, timeout=3.0)
    assert v.reward == 0.0, v.reason
    assert dt < 5.0, dt
    assert "loading" not in v.reason, v.reason            # the program loaded: the forgery itself ran


def test_sandbox_patched_builtins_do_not_reach_the_test():
    """A program that patches the builtins the test uses (abs, sorted, AssertionError) and returns a wrong
    value gets 0: the test runs in the grader's process, with its own builtins. Control: the same patches
    with the right value pass."""
    fields = {"prompt": "def half(x):\n", "entry_point": "half",
              "test": "def check(f):\n    assert abs(f(3) - 1.5) < 1e-9\n    assert sorted([f(2), f(1)]) == [0.5, 1]\n"}
    patch = ("import builtins\nbuiltins.abs = lambda x: 0\nbuiltins.sorted = lambda x: [0.5, 1]\n"
             "builtins.AssertionError = type('Quiet', (Exception,), {})\n")
    v = verify("def half(x):\n    return 0\n" + patch, "", "code", timeout=3.0, **fields)
    assert v.reward == 0.0 and "AssertionError" in v.reason, v.reason
    v = verify("def half(x):\n    return x / 2\n" + patch, "", "code", timeout=3.0, **fields)
    assert v.reward == 1.0, v.reason


def test_sandbox_exceptions_cannot_skip_checks():
    """The program's exceptions reach the test as exceptions: a StopIteration raised inside a test's map()
    (which would end the iteration quietly and skip the checks, all() of nothing being True) fails the run,
    as does a sandbox failure that the test itself swallows with a bare `except:`. Control: a builtin
    exception the test expects (ValueError) is raised as itself, and the correct solution passes."""
    fields = {"prompt": "def double(x):\n", "entry_point": "double",
              "test": "def check(f):\n    assert all(map(lambda x: f(x) == 2 * x, [1, 2, 3]))\n"}
    assert verify("def double(x):\n    raise StopIteration\n", "", "code", **fields).reward == 0.0
    assert verify("def double(x):\n    return 2 * x\n", "", "code", **fields).reward == 1.0
    swallow = {"prompt": "def double(x):\n", "entry_point": "double",
               "test": "def check(f):\n    assert f(1) == 2\n    try:\n        f(2)\n    except:\n        pass\n"}
    v = verify("def double(x):\n    if x == 2:\n        import os\n        os._exit(0)\n    return 2 * x\n", "",
               "code", **swallow)
    assert v.reward == 0.0 and "exited" in v.reason, v.reason
    expects = {"prompt": "def root(x):\n", "entry_point": "root",
               "test": "def check(f):\n    assert f(4) == 2\n    try:\n        f(-1)\n        assert False\n"
                       "    except ValueError:\n        pass\n"}
    body = "def root(x):\n    if x < 0:\n        raise ValueError('negative')\n    return int(x ** 0.5)\n"
    assert verify(body, "", "code", **expects).reward == 1.0

# The program may look anywhere it can reach for the expected value of `assert f(7) == 73914282` (which it
# cannot compute from 7): every object gc knows (function constants, dict values, sequences), every frame,
# the files in its folder, its command line and environment, and its own memory. It is told the answer's
# first four digits, so it searches only for the rest; the test's expected value never enters the process.
_ORACLE = {"prompt": "def secret(x):\n", "test": "def check(f):\n    assert f(7) == 73914282\n",
           "entry_point": "secret"}
_SEARCH = '''    import gc, os, re, sys
    pattern = re.compile("(?<![0-9])7391[0-9]{4}(?![0-9])")
    found = set()
    def look(v):
        if type(v) is int:
            v = str(v)
        if isinstance(v, (str, bytes)):
            text = v.decode("latin-1") if isinstance(v, bytes) else v
            found.update(int(m) for m in pattern.findall(text))
        elif type(v).__name__ == "code":
            for c in v.co_consts:
                look(c)
        elif hasattr(v, "__code__"):
            look(v.__code__)
    for o in gc.get_objects():
        for v in (o.values() if isinstance(o, dict) else o if isinstance(o, (list, tuple)) else [o]):
            look(v)
    f = sys._getframe()
    while f is not None:
        look(f.f_code)
        for v in list(f.f_locals.values()):
            look(v)
        f = f.f_back
    for path in os.listdir(".") + ["/proc/self/cmdline", "/proc/self/environ"]:
        try:
            with open(path, "rb") as fh:
                look(fh.read())
        except OSError:
            pass
    try:
        with open("/proc/self/maps") as maps, open("/proc/self/mem", "rb", 0) as mem:
            for line in maps:
                lo, hi = (int(x, 16) for x in line.split()[0].split("-"))
                if line.split()[1][0] == "r" and hi - lo <= 1 << 26:
                    try:
                        mem.seek(lo)
                        look(mem.read(hi - lo))
                    except OSError:
                        pass
    except OSError:
        pass
    return max(found, default=0)
'''


def test_sandbox_never_holds_the_expected_value():
    """A program that searches everything it can reach for the test's expected value gets 0: the test
    (and so the value) never enters the sandboxed process. Control: with the value planted in the program
    itself (a module constant), the same search finds it and passes, so the search looks where it should."""
    assert verify(_SEARCH, "", "code", timeout=5.0, **_ORACLE).reward == 0.0
    planted = verify(_SEARCH + "_PLANTED = 73914282\n", "", "code", timeout=5.0, **_ORACLE)
    assert planted.reward == 1.0, planted.reason


def test_sandbox_reply_protocol_is_checked():
    """One reply per call, in order: a correct solution that also writes a reply of its own on the reply
    pipe (with the next call's index, or its own call's index so the real reply arrives one call late)
    gets 0. Control: the same solution without the extra write passes."""
    fields = {"prompt": "def add(a, b):\n", "entry_point": "add",
              "test": "def check(f):\n    assert f(2, 3) == 5\n    assert f(1, 1) == 2\n"}
    body = ("    import os, stat\n    if INJECT is not None and not _calls:\n        for fd in range(3, 64):\n"
            "            try:\n                if stat.S_ISFIFO(os.fstat(fd).st_mode):\n"
            "                    os.write(fd, b'{\"i\": %d, \"value\": %d}\\n' % (INJECT, a + b))\n"
            "            except OSError:\n                pass\n    _calls.append(1)\n    return a + b\n"
            "_calls = []\n")
    for inject, expected in ((1, 0.0), (0, 0.0), (None, 1.0)):
        v = verify(body + f"INJECT = {inject}\n", "", "code", timeout=3.0, **fields)
        assert v.reward == expected, (inject, v.reason)


def test_sandbox_correct_solution_with_noise_passes():
    """A correct solution passes whatever else it does that is not tampering: printing "PASS" lines,
    importing random, threading and logging (they register at-fork hooks), raising and catching
    SystemExit, returning a namedtuple or an IntEnum where a tuple or an int is expected."""
    fields = {"prompt": "def pair(a, b):\n", "entry_point": "pair",
              "test": "def check(f):\n    assert f(2, 3) == (5, 6)\n    assert f(0, 0)[0] == 0\n"}
    body = ("    import random, threading, logging, collections, enum\n    print('PASS')\n    try:\n"
            "        raise SystemExit(1)\n    except SystemExit:\n        pass\n"
            "    P = collections.namedtuple('P', 'sum product')\n    N = enum.IntEnum('N', {'x': a + b})\n"
            "    return P(N.x, a * b)\n")
    v = verify(body, "", "code", timeout=5.0, **fields)
    assert v.reward == 1.0, v.reason


@settings(max_examples=200, deadline=None)
@given(st.recursive(
    st.none() | st.booleans() | st.integers() | st.integers(min_value=2 ** 70) | st.floats(allow_nan=False)
    | st.text() | st.binary() | st.complex_numbers(allow_nan=False),
    lambda inner: st.lists(inner) | st.tuples(inner, inner) | st.dictionaries(st.integers() | st.text(), inner)
    | st.frozensets(st.integers() | st.text()), max_leaves=20))
def test_plain_data_crosses_the_pipe_exactly(value):
    """What crosses the pipe comes back equal and of exactly the same types, nested ones included (the
    reference: a recursive comparison of type and value written here); -0.0, nan and inf keep their
    identity as floats."""
    def same(a, b):
        if type(a) is not type(b):
            return False
        if isinstance(a, (list, tuple)):
            return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
        if isinstance(a, dict):
            return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
        if isinstance(a, float):
            return repr(a) == repr(b)
        return a == b
    back = sandbox.from_plain(json.loads(json.dumps(sandbox.to_plain(value))))
    assert same(value, back)
    for x in (-0.0, float("nan"), float("inf"), {1, 2}, set()):
        back = sandbox.from_plain(json.loads(json.dumps(sandbox.to_plain(x))))
        assert type(back) is type(x) and repr(back) == repr(x)


def test_plain_data_refuses_everything_else():
    """Non-data values are refused on the way out (a function, an object, a generator, a value nested over
    100 deep); trees nothing could have written are refused on the way in; rigged subclasses arrive as
    their base type's value."""
    class Rigged(int):
        def __eq__(self, other):
            return True
        __hash__ = int.__hash__
    for bad in (len, object(), (x for x in ()), range(3)):
        with pytest.raises(TypeError):
            sandbox.to_plain(bad)
    deep = []
    for _ in range(150):
        deep = [deep]
    with pytest.raises(ValueError):
        sandbox.to_plain(deep)
    for tree in ({"tuple": [1], "set": [2]}, {"eval": "1"}, {"int": 5}, {"dict": [[1, 2, 3]]}, {"bytes": "zz"},
                 {"complex": ["1", 2]}, {}):
        with pytest.raises(ValueError):
            sandbox.from_plain(tree)
    with pytest.raises(TypeError):                       # an unhashable set item
        sandbox.from_plain({"set": [[1]]})
    got = sandbox.from_plain(json.loads(json.dumps(sandbox.to_plain(Rigged(0)))))
    assert type(got) is int and got == 0 and got != 5


def test_sandbox_test_without_check_and_mbpp_style():
    """MBPP-style tests (module-level asserts naming the function) are answered by the sandbox too, and a
    program that redefines a builtin the test uses cannot answer for it; a test that calls nothing, or no
    test at all, passes nothing."""
    test = "assert len(twice([1])) == 2\nassert twice([3]) == [3, 3]\n"
    ok = "def twice(xs):\n    return xs + xs\n"
    rigged = "def twice(xs):\n    return []\ndef len(x):\n    return 2\nimport builtins\nbuiltins.len = len\n"
    assert verify(ok, test, "code").reward == 1.0
    assert verify(rigged, test, "code").reward == 0.0
    assert run_code(ok, "assert 1 + 1 == 2\n")[0] is False
    assert verify(ok, "", "code").reward == 0.0


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
    a correct program passes, also one importing random, threading and logging (at-fork hooks); a fork
    bomb, a parent kill, a loop, the forgeries through frames and /proc/self/mem (readable here: nothing
    drops privileges) and the search for the expected value get 0, and the parent survives."""
    add = "def add(a, b):\n"
    runs = [(add + "    import random, threading, logging\n    return a + b\n", _ADD["test"], "add"),
            ("assert 1 + 1 == 2", "", None),
            ("import sys\nsys.modules.pop('posix')\nimport posix\nwhile True: posix.fork()", "", None),
            ("import os\nos.kill(os.getppid(), 9)", "", None),
            ("while True: pass", "", None),
            (add + FORGERIES["frame_walk"] + _SPRAY, _ADD["test"], "add"),
            (add + FORGERIES["proc_self_mem"] + _SPRAY, _ADD["test"], "add"),
            (_ORACLE["prompt"] + _SEARCH, _ORACLE["test"], "secret")]
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:                              # child: become nobody and report results through the pipe
        try:
            os.close(r)
            os.setgid(65534)
            os.setuid(65534)
            res = [run_code(p, t, e, timeout=2.0, python="/usr/bin/python3") for p, t, e in runs]
            os.write(w, json.dumps(res).encode())
        finally:
            os._exit(0)
    os.close(w)
    data = b""
    while chunk := os.read(r, 65536):
        data += chunk
    os.close(r)
    os.waitpid(pid, 0)
    res = json.loads(data)
    assert [ok for ok, _ in res] == [True, True, False, False, False, False, False, False], res


def test_child_applies_its_limits_and_cleans_up():
    """sandbox.Child, the part LiveCodeBench's judge builds on: the harness sees the uid to drop to as
    sys.argv[1] and then its own arguments, runs in the fresh folder holding the given files (owned by that
    uid), under exactly the Limits asked for (read back with getrlimit inside the child), in its own process
    group; afterwards the folder is gone and the group is empty."""
    import resource
    harness = ("import json, os, resource, sys\nR = resource\n"
               "lim = {n: R.getrlimit(getattr(R, 'RLIMIT_' + n)) for n in ('CPU', 'AS', 'FSIZE', 'STACK', 'NPROC')}\n"
               "print(json.dumps({'argv': sys.argv[1:], 'lim': lim, 'cwd': os.getcwd(),"
               " 'files': sorted(os.listdir('.')), 'owner': os.stat('in.txt').st_uid,"
               " 'pgid': os.getpgid(0), 'pid': os.getpid()}))\n")
    with sandbox.Child("verifier-test-", {"in.txt": "x"}) as child:
        proc = child.start(harness, ["a", "b"], limits=sandbox.Limits(cpu_s=7, memory_mb=512, file_bytes=12345,
                                                                        stack_mb=64))
        proc.wait(timeout=20)
        seen = json.loads(child.output_tail())
        folder = child.folder
    uid = -1 if child.uid is None else child.uid
    assert seen["argv"] == [str(uid), "a", "b"]
    assert os.path.realpath(seen["cwd"]) == os.path.realpath(folder) and seen["files"] == ["in.txt", "output.log"]
    assert seen["owner"] == (os.getuid() if child.uid is None else child.uid)
    assert seen["lim"] == {"CPU": [7, 8], "AS": [512 << 20] * 2, "FSIZE": [12345] * 2, "STACK": [64 << 20] * 2,
                           "NPROC": [0, 0]}
    assert seen["pgid"] == seen["pid"] != os.getpgid(0)          # a session of its own
    assert not os.path.exists(folder)
    with pytest.raises(ProcessLookupError):
        os.killpg(seen["pgid"], 0)
    assert resource.getrlimit(resource.RLIMIT_NPROC) != (0, 0)     # this process's own limits are untouched
