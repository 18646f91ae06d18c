"""cli.py: the one-line error wrapper every tool's main() runs in, and the one atomic write every file and
folder goes through. Under a second on one CPU core."""
import argparse
import re
import signal

import pytest

import cli


def test_user_error_is_one_line_and_exit_status_2(capsys):
    """A UserError inside one_line_errors prints exactly `error: <message>` on stderr (no traceback) and
    exits with status 2; any other exception passes through untouched."""
    with pytest.raises(SystemExit) as e, cli.one_line_errors():
        raise cli.UserError("--out x: is a file")
    assert e.value.code == 2 and capsys.readouterr().err == "error: --out x: is a file\n"
    with pytest.raises(ZeroDivisionError), cli.one_line_errors():
        1 / 0
    with pytest.raises(OSError), cli.one_line_errors():   # without os_error an OSError keeps its traceback
        raise OSError("disk")


def test_interrupt_and_os_error_lines_and_sigterm(capsys):
    """With `interrupted`, SIGTERM inside the block stops it like Ctrl-C: the line `interrupted()` returns
    after a newline, exit status 128 + SIGTERM; the previous SIGTERM handler is back afterwards. With
    `os_error`, an OSError is one `error:` line made from it, status 2."""
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(SystemExit) as e, cli.one_line_errors(interrupted=lambda: "stopped; resume with: X"):
        signal.raise_signal(signal.SIGTERM)
    assert e.value.code == 128 + signal.SIGTERM and capsys.readouterr().err == "\nstopped; resume with: X\n"
    assert signal.getsignal(signal.SIGTERM) == before
    with pytest.raises(SystemExit) as e, cli.one_line_errors(interrupted=lambda: "bye"):
        raise KeyboardInterrupt
    assert e.value.code == 128 + signal.SIGINT
    capsys.readouterr()
    with pytest.raises(SystemExit) as e, cli.one_line_errors(os_error=lambda err: f"{err}; saved so far"):
        raise OSError("No space left on device")
    assert e.value.code == 2 and capsys.readouterr().err == "error: No space left on device; saved so far\n"


def test_atomic_write_replaces_whole_or_not_at_all(tmp_path):
    """write_atomic replaces a file's content; a write that fails half-way leaves the old file as it was
    and no temporary behind; a stale temporary from a crash is cleared first."""
    f = tmp_path / "config.json"
    cli.write_atomic(f, "old")
    (tmp_path / ".config.json.tmp").write_text("stale")
    cli.write_atomic(f, b"new")
    assert f.read_text() == "new" and sorted(p.name for p in tmp_path.iterdir()) == ["config.json"]
    with pytest.raises(RuntimeError), cli.atomic_path(f) as tmp:
        tmp.write_text("half")
        raise RuntimeError("killed")
    assert f.read_text() == "new" and sorted(p.name for p in tmp_path.iterdir()) == ["config.json"]


def test_atomic_folder_and_the_owner(tmp_path):
    """A folder written through atomic_path (a named temporary) replaces the folder already there; a
    failure removes the temporary and keeps the old folder. With owner=False (another FSDP rank) nothing
    is cleared, renamed or removed: only the path is handed out."""
    final, tmp_name = tmp_path / "ckpt-000002", tmp_path / ".tmp-ckpt-000002"
    final.mkdir()
    (final / "old").write_text("x")
    with cli.atomic_path(final, tmp=tmp_name) as tmp:
        tmp.mkdir()
        (tmp / "new").write_text("y")
    assert [p.name for p in final.iterdir()] == ["new"] and not tmp_name.exists()
    with pytest.raises(KeyboardInterrupt), cli.atomic_path(final, tmp=tmp_name) as tmp:
        tmp.mkdir()
        raise KeyboardInterrupt
    assert [p.name for p in final.iterdir()] == ["new"] and not tmp_name.exists()
    tmp_name.mkdir()
    with pytest.raises(RuntimeError), cli.atomic_path(final, tmp=tmp_name, owner=False) as tmp:
        assert tmp == tmp_name and tmp.is_dir()          # not cleared for a rank that is not the owner
        raise RuntimeError
    assert tmp_name.is_dir() and [p.name for p in final.iterdir()] == ["new"]


def test_flag_types_name_the_range():
    """at_least, between and positive refuse out-of-range and non-numeric values (NaN included) with a
    message naming the range, and return the parsed number otherwise."""
    assert cli.at_least(1)("3") == 3 and cli.between(0, 1)("0.5") == 0.5 and cli.positive("2e-4") == 2e-4
    for parse, text, words in ((cli.at_least(1), "0", "must be >= 1"), (cli.at_least(0.0, float), "nan", ">= 0.0"),
                               (cli.at_least(1), "x", "an integer"), (cli.between(0, 1), "1", "(0, 1)"),
                               (cli.between(0, 1, high_open=False), "1.5", "(0, 1]"), (cli.positive, "0", "(0.0, inf)")):
        with pytest.raises(argparse.ArgumentTypeError, match=re.escape(words)):
            parse(text)
