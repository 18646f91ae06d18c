"""
cli.py: what the command-line tools (train.py, eval.py, data.py) share, and the one atomic write.

    UserError             a mistake in what the user gave (a flag, a path, a line of a file)
    one_line_errors       the wrapper of every tool's main(): a UserError is one line `error: ...` on stderr
                          and exit status 2, never a traceback; SIGTERM acts as Ctrl-C; an interrupt prints
                          what to do next and exits with 128 + the signal number
    ArgumentParser        argparse whose command-line mistakes are that same one line
    HelpFormatter         --help with each flag's default shown once (and a preset's value beside it)
    at_least, between, positive     numeric flag types that name the flag and the range they refuse
    check_output_folder   refuse an output folder that cannot be written, before anything is loaded
    atomic_path, write_atomic       a file or folder written under a temporary name and renamed: a reader
                          (or a crash) never leaves a half-written file under the final name

Nothing here imports the rest of the project, so every module can use it.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import sys
import tempfile
from pathlib import Path
from typing import Callable, Iterator

# -----------------------------------------------------------------------------
# User errors: one line, exit status 2


class UserError(Exception):
    """A mistake in what the user gave (a path, a line of a file, a flag, a name): the command-line tools
    print `error: <message>` and exit with status 2, without a traceback. Unexpected errors keep theirs."""


class Stopped(KeyboardInterrupt):
    """A stop at once by a signal (SIGTERM, or a second SIGINT/SIGTERM in train.py's loop); `signum` sets
    the exit status 128 + signum."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def stop_now(signum, frame):
    """A signal handler: SIGTERM (a scheduler's) stops the process the way Ctrl-C does."""
    raise Stopped(signum)


@contextlib.contextmanager
def one_line_errors(interrupted: Callable[[], str] | None = None,
                    os_error: Callable[[OSError], str] | None = None) -> Iterator[None]:
    """The body of a tool's main(): a UserError becomes `error: <message>` on stderr and exit status 2.
    With `interrupted` (the line that says what an interrupt leaves, e.g. how to resume), SIGTERM acts as
    Ctrl-C while the body runs, and an interrupt prints that line and exits with 128 + the signal number.
    With `os_error`, a failed write or read (a full disk) is one `error:` line made by it, also status 2."""
    sigterm = signal.signal(signal.SIGTERM, stop_now) if interrupted else None
    try:
        yield
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    except OSError as e:
        if os_error is None:
            raise
        print(f"error: {os_error(e)}", file=sys.stderr)
        raise SystemExit(2) from None
    except KeyboardInterrupt as e:
        if interrupted is None:
            raise
        print("\n" + interrupted(), file=sys.stderr)
        raise SystemExit(128 + getattr(e, "signum", signal.SIGINT)) from None
    finally:
        if sigterm is not None:
            signal.signal(signal.SIGTERM, sigterm)


# -----------------------------------------------------------------------------
# argparse: one-line errors, defaults in --help, numeric types


class ArgumentParser(argparse.ArgumentParser):
    """argparse for the command-line tools: a mistake on the command line (`--steps -1`, an unknown flag,
    a missing value) is one line `error: ...` on stderr and exit status 2, like every other user error,
    instead of argparse's usage block followed by `prog: error: ...`. Sub-commands inherit it."""

    def error(self, message):
        print(f"error: {message} (see {self.prog} --help)", file=sys.stderr)
        raise SystemExit(2)


class HelpFormatter(argparse.HelpFormatter):
    """--help with each flag's default shown once: `(default: X)` unless the help text already says it,
    plus, where a preset changes it (train.py's demo and recipes), `PRESET: value` beside it. On/off
    switches (`--no-plot`, `--force`) show none: their name says what they do."""
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


def check_output_folder(path, flag: str = "--out") -> Path:
    """Refuse (UserError) an output folder that cannot be written, before anything is loaded or made: a
    path that is a file or lies under one, a read-only or forbidden folder. Creates nothing (the nearest
    existing folder on the path gets a probe file, removed at once)."""
    path = Path(path)
    existing = path
    try:
        while not existing.exists() and existing != existing.parent:
            existing = existing.parent
    except OSError as e:
        raise UserError(f"{flag} {path}: cannot reach {existing} ({e.strerror})") from None
    if not existing.is_dir():
        raise UserError(f"{flag} {path}: {existing} is a file, not a folder" if existing == path else
                        f"{flag} {path}: {existing} is a file, so no folder can be made under it")
    try:
        fd, probe = tempfile.mkstemp(prefix=".write-test-", dir=existing)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise UserError(f"{flag} {path}: cannot write in {existing} ({e.strerror})") from None
    return path


# -----------------------------------------------------------------------------
# The atomic write: every file or folder the project writes whole goes through here


@contextlib.contextmanager
def atomic_path(path, tmp=None, owner: bool = True) -> Iterator[Path]:
    """Write `path` (a file or a folder) under a temporary name beside it, `.NAME.tmp` unless `tmp` names
    another: the block writes to the path it is given; when it ends without an error the temporary takes
    the final name in one rename (a folder already there is removed first), else the temporary is
    removed. A reader never sees half a file under the final name, and a crash leaves only the
    temporary (runtime.STALE clears those of a run folder). A stale temporary is removed before the
    block. Under FSDP every rank may write into one temporary folder: only the `owner` (rank 0) clears,
    renames and cleans up; the other ranks just get the path."""
    path = Path(path)
    tmp = Path(tmp) if tmp is not None else path.with_name(f".{path.name}.tmp")
    if owner:
        _remove(tmp)
    try:
        yield tmp
        if owner:
            if tmp.is_dir() and path.is_dir():
                shutil.rmtree(path)
            os.replace(tmp, path)
    except BaseException:
        if owner:
            _remove(tmp)
        raise


def write_atomic(path, content: str | bytes, encoding: str = "utf-8") -> Path:
    """Write a whole file through atomic_path: `content` as text (str) or bytes."""
    with atomic_path(path) as tmp:
        if isinstance(content, bytes):
            tmp.write_bytes(content)
        else:
            tmp.write_text(content, encoding=encoding)
    return Path(path)


def _remove(p: Path):
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            p.unlink()
