"""train.py and eval.py under faults and bad input, one class of fault per section: whatever happens, one
`error:` line (no traceback, a nonzero status), nothing saved is lost, nothing read from a run folder runs
code, and where the run goes on (--resume, a fallback to an older checkpoint) it ends exactly where an
uninterrupted run ends: equal metrics rows (timings aside), weights and AdamW state.

Subprocesses where the fault needs a process of its own (a lock held by another PID, a file-size limit, a
signal to a process group, a read-only mount); they are synchronised on events (a file appearing, a line
printed), never on sleeps, so the tests hold on a loaded machine.
"""
import json
import os
import pickle
import random
import re
import shlex
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import data
import eval as ev
import runtime
import train
from model import load_model, save_model
from test_train_cli import ROOT, cli, tiny_args

pytestmark = pytest.mark.usefixtures("one_thread")

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
STEPS = 5
S = str(STEPS)
TIMINGS = ("time_sample", "time_verify", "time_update", "tokens_per_s", "peak_mem_gb", "peak_mem_estimate_gb")


def train_cmd(*args):
    return [sys.executable, str(ROOT / "train.py"), *map(str, args)]


def one_error_line(stderr: str) -> str:
    """The stderr of a refused command holds exactly one `error:` line and no traceback."""
    assert "Traceback" not in stderr, stderr[-3000:]
    lines = [ln for ln in stderr.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1, stderr[-3000:]
    return lines[0]


def wait_for(predicate, proc, what: str):
    """Poll until `predicate()` holds; fails at once if the process ended first (no timeout: an event)."""
    while not predicate():
        if proc.poll() is not None:
            raise AssertionError(f"the process ended before {what}: status {proc.returncode}")
        try:
            proc.wait(timeout=0.05)
        except subprocess.TimeoutExpired:
            pass


def metrics_rows(run: Path) -> list[dict]:
    return [{k: v for k, v in json.loads(line).items() if k not in TIMINGS}
            for line in (run / "metrics.jsonl").read_text().splitlines()]


def equal_state(a, b) -> bool:
    if torch.is_tensor(a):
        return torch.is_tensor(b) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(equal_state(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(map(equal_state, a, b))
    return a == b


def assert_same_run(run: Path, reference: Path, step: int = STEPS):
    """Metrics rows (timings aside), weights and AdamW state of checkpoint `step` are identical."""
    assert metrics_rows(run) == metrics_rows(reference)
    ckpt, ref = run / f"ckpt-{step:06d}", reference / f"ckpt-{step:06d}"
    wa, wb = load_model(ckpt / "model").state_dict(), load_model(ref / "model").state_dict()
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    oa, ob = (torch.load(c / "optimizer.pt", weights_only=True) for c in (ckpt, ref))
    assert equal_state(oa, ob)


@pytest.fixture(scope="module")
def reference(tiny_dir, problems_file, tmp_path_factory):
    """An uninterrupted run of STEPS steps, checkpoint at the end only: what every resumed run must equal."""
    out = tmp_path_factory.mktemp("reference") / "run"
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    train.main(tiny_args(tiny_dir, problems_file, out, "--steps", S))
    torch.set_num_threads(n)
    return out


@pytest.fixture(scope="module")
def saved_run(tiny_dir, problems_file, tmp_path_factory):
    """The reference's run with a checkpoint after every step (all STEPS kept), to damage copies of."""
    out = tmp_path_factory.mktemp("saved") / "run"
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    train.main(tiny_args(tiny_dir, problems_file, out, "--steps", S, "--save-every", "1", "--keep", S))
    torch.set_num_threads(n)
    return out


# -----------------------------------------------------------------------------
# 1. Nothing read from a run folder runs code


class Payload:
    """A pickle that runs a shell command when it is unpickled."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {shlex.quote(str(self.marker))}",)


def test_a_crafted_optimizer_file_is_refused_and_runs_nothing(saved_run, tiny_dir, problems_file, tmp_path, capsys):
    """optimizer.pt replaced by a pickle whose object runs `touch MARKER` when loaded (torch's zip format,
    then a plain pickle): --resume refuses it in one line naming the file and the function it would call
    (status 2), the command never runs, and the checkpoint is left as it is (refused, not treated as
    damaged and moved aside)."""
    out = tmp_path / "run"
    shutil.copytree(saved_run, out)
    marker = tmp_path / "MARKER"
    torch.save({"state": Payload(marker), "param_groups": []}, out / "ckpt-000005" / "optimizer.pt")
    r = cli(*tiny_args(tiny_dir, problems_file, out, "--steps", STEPS + 1, "--resume"))
    line = one_error_line(r.stderr)
    assert r.returncode == 2 and "ckpt-000005/optimizer.pt: refused" in line and "posix.system" in line, line
    assert not marker.exists()
    assert (out / "ckpt-000005").is_dir() and not list(out.glob("damaged-*"))
    # the same object as a plain (not zip) pickle, the format torch.load also reads
    (out / "ckpt-000005" / "optimizer.pt").write_bytes(pickle.dumps({"state": Payload(marker)}, protocol=2))
    with pytest.raises(SystemExit) as e:
        train.main(tiny_args(tiny_dir, problems_file, out, "--steps", str(STEPS + 1), "--resume"))
    assert e.value.code == 2 and "refused" in one_error_line(capsys.readouterr().err) and not marker.exists()


def test_every_torch_load_in_the_repository_is_weights_only():
    """No torch.load call anywhere in the repository can unpickle arbitrary objects."""
    calls = []
    for f in ROOT.rglob("*.py"):
        if ".git" in f.parts:
            continue
        text = f.read_text()
        calls += [(f, m.start(), text[m.start():text.find(")", m.start()) + 80])
                  for m in re.finditer(r"torch\.load\(", text)]
    assert calls and all("weights_only=True" in snippet for _, _, snippet in calls), calls


# -----------------------------------------------------------------------------
# 2. One writer per run folder


def test_a_second_run_into_a_locked_folder_is_refused_naming_the_holder(tiny_dir, problems_file, tmp_path):
    """Run A holds the folder's lock (it is stopped with SIGSTOP once the lock file names its PID, so it
    holds it as long as the test needs); run B into the same folder (--resume: the case that wrote steps
    twice) is refused in one line naming A's PID, without touching A's files. A killed with SIGKILL releases the lock (the
    kernel drops it), and the same command then runs, starting over in the folder A left without a
    checkpoint."""
    out = tmp_path / "run"
    args = tiny_args(tiny_dir, problems_file, out, "--steps", "1000")   # A never ends by itself
    a = subprocess.Popen(train_cmd(*args), cwd=ROOT, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        lock = out / runtime.LOCK_FILE
        wait_for(lambda: lock.is_file() and lock.read_text().strip() == str(a.pid), a, "taking the lock")
        os.kill(a.pid, signal.SIGSTOP)
        before = sorted(p.name for p in out.iterdir())
        b = cli(*args, "--resume")   # (a fresh run takes the same lock first: refused alike)
        line = one_error_line(b.stderr)
        assert b.returncode == 2 and f"in use by another run (PID {a.pid})" in line, line
        assert sorted(p.name for p in out.iterdir()) == before
    finally:
        a.kill()
        a.wait()
    c = cli(*tiny_args(tiny_dir, problems_file, out, "--steps", "1"))
    assert c.returncode == 0, c.stderr[-3000:]
    assert [row["step"] for row in metrics_rows(out)] == [1]


# -----------------------------------------------------------------------------
# 3. A full disk (a file-size limit)


FSIZE = """
import resource, sys
sys.path.insert(0, {root!r})
import train
real_save, saves = train.save_checkpoint, []
what, at = sys.argv[1], int(sys.argv[2])

def save(out, step, *args, **kw):
    saves.append(step)
    if what == "checkpoint" and len(saves) == at:   # this checkpoint's files exceed the limit
        resource.setrlimit(resource.RLIMIT_FSIZE, (4096, resource.RLIM_INFINITY))
    real_save(out, step, *args, **kw)
    if what == "metrics" and len(saves) == at:      # the next metrics line is cut after 100 bytes
        size = (out / "metrics.jsonl").stat().st_size
        resource.setrlimit(resource.RLIMIT_FSIZE, (size + 100, resource.RLIM_INFINITY))

train.save_checkpoint = save
train.main(sys.argv[3:])
"""


@pytest.mark.parametrize("what", ["checkpoint", "metrics"])
def test_a_full_disk_stops_in_one_line_and_the_resumed_run_is_exact(what, reference, tiny_dir, problems_file, tmp_path):
    """RLIMIT_FSIZE reached while writing checkpoint 4 (its optimizer file), or in the middle of the
    metrics line of step 3 (a torn last line): one error line saying what was being written, the last
    complete checkpoint (ckpt-000002) and the resume command; no temporary checkpoint folder is left. The
    resume command (with a stale temporary folder added) drops the torn line, clears the folder and
    ends equal to the uninterrupted run."""
    script = tmp_path / "fsize.py"
    script.write_text(FSIZE.format(root=str(ROOT)))
    out = tmp_path / "run"
    args = tiny_args(tiny_dir, problems_file, out, "--steps", STEPS, "--save-every", "2")
    r = subprocess.run([sys.executable, str(script), what, "2" if what == "checkpoint" else "1", *map(str, args)],
                       cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=600)
    line = one_error_line(r.stderr)
    assert r.returncode == 2, r.stderr[-3000:]
    failed = out / "ckpt-000004" if what == "checkpoint" else out / "metrics.jsonl"
    assert f"writing {'checkpoint ' if what == 'checkpoint' else ''}{failed} failed (" in line, line
    assert f"last complete checkpoint: {out / 'ckpt-000002'}; resume with: python train.py " in line, line
    assert not list(out.glob(".tmp-ckpt-*")) and (out / "latest").read_text() == "ckpt-000002"
    if what == "metrics":
        assert not (out / "metrics.jsonl").read_text().endswith("\n")   # the torn line is there
    (out / ".tmp-ckpt-000009").mkdir()                                  # and a stale temporary folder
    resumed = subprocess.run(train_cmd(*shlex.split(line.split("resume with: python train.py ")[1])), cwd=ROOT,
                             env=ENV, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert ("dropped a torn last line" in resumed.stdout) == (what == "metrics")
    assert not (out / ".tmp-ckpt-000009").exists()
    assert_same_run(out, reference)


def test_metrics_file_keeps_steps_up_to_the_checkpoint_and_refuses_a_malformed_middle_line(tmp_path):
    """start_metrics_file keeps the lines of steps <= the resumed step, drops later ones and a torn last
    line, and refuses a malformed line before the last one (naming its line)."""
    f = tmp_path / "metrics.jsonl"
    f.write_text('{"step": 1}\n{"step": 2}\n{"step": 3}\n{"step": 4, "rew')
    assert "torn" in runtime.start_metrics_file(f, 2)
    assert f.read_text() == '{"step": 1}\n{"step": 2}\n'
    f.write_text('{"step": 1}\nnot json\n{"step": 2}\n')
    with pytest.raises(data.UserError, match=r"metrics.jsonl:2: malformed"):
        runtime.start_metrics_file(f, 2)


# -----------------------------------------------------------------------------
# 4. A damaged checkpoint


def truncate(path: Path):
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


DAMAGE = {
    "model.safetensors truncated": lambda c: truncate(c / "model" / "model.safetensors"),
    "optimizer.pt truncated": lambda c: truncate(c / "optimizer.pt"),
    "optimizer.pt garbage": lambda c: (c / "optimizer.pt").write_bytes(random.Random(0).randbytes((c / "optimizer.pt").stat().st_size)),
    "trainer_state.json garbage": lambda c: (c / "trainer_state.json").write_bytes(b"\x93\xff garbage {"),
    "model config.json missing": lambda c: (c / "model" / "config.json").unlink(),
    "NaN weights": lambda c: save_model(nan_model(c / "model"), c / "model"),
}


def nan_model(folder):
    model = load_model(folder)
    with torch.no_grad():
        model.model.norm.weight[3] = float("nan")
    return model


@pytest.mark.parametrize("damage", DAMAGE)
def test_a_damaged_newest_checkpoint_falls_back_to_the_previous_one(damage, saved_run, reference, tiny_dir,
                                                                    problems_file, tmp_path, capsys):
    """The newest checkpoint (5) damaged, and the `latest` pointer garbage too: --resume names the damaged
    file, moves the checkpoint aside (damaged-ckpt-000005, kept for inspection), says it resumes from
    ckpt-000004, redoes step 5 and ends equal to the uninterrupted run."""
    out = tmp_path / "run"
    shutil.copytree(saved_run, out)
    DAMAGE[damage](out / "ckpt-000005")
    (out / "latest").write_bytes(b"\xba\xad\x00pointer")
    train.main(tiny_args(tiny_dir, problems_file, out, "--steps", S, "--resume"))
    err = capsys.readouterr().err
    named = {"model.safetensors truncated": "model.safetensors: truncated", "optimizer.pt truncated": "optimizer.pt",
             "optimizer.pt garbage": "optimizer.pt: garbage or truncated",
             "trainer_state.json garbage": "trainer_state.json: unreadable",
             "model config.json missing": "config.json", "NaN weights": "model.norm.weight holds 1 NaN"}[damage]
    assert f"ckpt-000005 is damaged: {out / 'ckpt-000005'}" in err and named in err, err
    assert f"resuming from {out / 'ckpt-000004'}" in err and (out / "damaged-ckpt-000005").is_dir()
    assert_same_run(out, reference)


def test_no_usable_checkpoint_is_one_line_naming_each(saved_run, tiny_dir, problems_file, tmp_path, capsys):
    """Every checkpoint damaged: one error line naming each one's damaged file; nothing is moved or deleted."""
    out = tmp_path / "run"
    shutil.copytree(saved_run, out)
    for c in out.glob("ckpt-*"):
        truncate(c / "optimizer.pt")
    before = sorted(p.name for p in out.iterdir())
    with pytest.raises(SystemExit) as e:
        train.main(tiny_args(tiny_dir, problems_file, out, "--steps", S, "--resume"))
    line = one_error_line(capsys.readouterr().err)
    assert e.value.code == 2 and "no usable checkpoint" in line and "--overwrite" in line
    assert all(f"ckpt-{s:06d}: {out / f'ckpt-{s:06d}' / 'optimizer.pt'}: truncated" in line for s in range(1, 6)), line
    assert sorted(p.name for p in out.iterdir()) == before


# -----------------------------------------------------------------------------
# 5. A damaged model folder


def damaged_models(tiny_dir, root: Path) -> dict[str, tuple[Path, str]]:
    """{case: (model folder, what the error line must say)}."""
    from safetensors.torch import load_file, save_file
    cases = {}

    def copy(name):
        shutil.copytree(tiny_dir, root / name)
        return root / name

    m = copy("truncated")
    truncate(m / "model.safetensors")
    cases["truncated"] = m, f"{m / 'model.safetensors'}: truncated"
    m = copy("shape")
    state = load_file(m / "model.safetensors")
    state["model.layers.1.mlp.up_proj.weight"] = state["model.layers.1.mlp.up_proj.weight"][:100]
    save_file(state, m / "model.safetensors", metadata={"format": "pt"})
    cases["wrong shape"] = m, "tensor model.layers.1.mlp.up_proj.weight has shape [100, 64], expected [128, 64]"
    m = copy("vocab")
    cfg = json.loads((m / "config.json").read_text())
    (m / "config.json").write_text(json.dumps({**cfg, "vocab_size": cfg["vocab_size"] + 8}))
    cases["vocab_size"] = m, f"config.json says vocab_size {cfg['vocab_size'] + 8}, the weights have {cfg['vocab_size']} rows"
    m = copy("missing")
    state = load_file(m / "model.safetensors")
    del state["model.layers.0.self_attn.k_proj.bias"]
    save_file(state, m / "model.safetensors", metadata={"format": "pt"})
    cases["missing tensor"] = m, "missing: model.layers.0.self_attn.k_proj.bias"
    m = copy("noweights")
    (m / "model.safetensors").unlink()
    cases["no weights"] = m, "no model.safetensors"
    m = copy("nan")
    state = load_file(m / "model.safetensors")
    state["model.embed_tokens.weight"][5, :2] = torch.tensor([float("nan"), float("inf")])
    save_file(state, m / "model.safetensors", metadata={"format": "pt"})
    cases["NaN weights"] = m, "tensor model.embed_tokens.weight holds 2 NaN or infinite value(s)"
    return cases


def test_a_damaged_model_folder_is_one_line_in_train_and_eval(tiny_dir, problems_file, tmp_path, capsys):
    """--model DIR with its weights truncated, a tensor of the wrong shape, vocab_size disagreeing with the
    weights, a tensor missing, no weights file, NaN/inf weights: train.py and eval.py each stop with one
    line naming the file and the tensor (expected vs found shape), status 2, and leave no output folder."""
    for case, (model, needle) in damaged_models(tiny_dir, tmp_path / "models").items():
        for tool, argv in (("train", tiny_args(model, problems_file, tmp_path / "run", "--steps", "1")),
                           ("eval", ["--model", model, "--data", problems_file, "--n", "2", "--out", tmp_path / "ev",
                                     "--max-new-tokens", "8", "--no-progress", "--no-plot"])):
            with pytest.raises(SystemExit) as e:
                (train.main if tool == "train" else ev.main)(list(map(str, argv)))
            line = one_error_line(capsys.readouterr().err)
            assert e.value.code == 2 and needle in line, (case, tool, line)
            assert not (tmp_path / "run").exists() and not (tmp_path / "ev").exists(), (case, tool)


# -----------------------------------------------------------------------------
# 6. Bad data bytes and sizes


def test_bad_data_bytes_and_sizes(tmp_path, tiny_dir):
    """Not UTF-8: the byte and its offset; a 5000-digit answer loads with every digit and verifies; an
    empty answer is refused with FILE:LINE; a row too long for any tokenization of the prompt budget is
    skipped and counted without being tokenized (tokenizing a 50 MB row takes gigabytes)."""
    from model import load_tokenizer
    from verifier import verify
    f = tmp_path / "latin1.jsonl"
    f.write_bytes(b'{\xba"problem": "1+1", "answer": "2"}\n')
    with pytest.raises(data.DataError, match=re.escape(f"{f}: not UTF-8 text (byte 0xba at offset 1")):
        data.load_dataset(str(f))
    huge = "9" * 5000
    f = tmp_path / "huge.jsonl"
    f.write_text(f'{{"problem": "a big number", "answer": {huge}}}\n')
    [p] = data.load_dataset(str(f))
    assert p["answer"] == huge and verify(f"so \\boxed{{{huge}}}", p["answer"]).reward == 1.0
    f = tmp_path / "empty.jsonl"
    f.write_text('{"problem": "1+1", "answer": "2"}\n{"problem": "2+2", "answer": "  "}\n')
    with pytest.raises(data.DataError, match=re.escape(f"{f}:2: empty answer")):
        data.load_dataset(str(f))
    tok = load_tokenizer(tiny_dir)
    seen = []
    real = tok.encode_chat
    tok.encode_chat = lambda messages, **kw: seen.append(len(messages[0]["content"])) or real(messages, **kw)
    long = {"problem": "1+" * 2_500_000 + "1", "answer": "2", "instruction": ""}     # 5 MB
    kept, skipped = data.encode_prompts([{"problem": "1+1", "answer": "2", "instruction": ""}, long], tok, 64)
    assert len(kept) == 1 and skipped == 1 and max(seen) < 100


# -----------------------------------------------------------------------------
# 7. Signals


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_saves_at_the_next_step_and_the_resumed_run_is_exact(sig, reference, tiny_dir, problems_file, tmp_path):
    """SIGTERM (a scheduler's preemption) or SIGINT (Ctrl-C) sent to the run's process group after its first
    step, with --save-every 0: the run finishes the step it is in, saves a checkpoint there and prints one
    line with the resume command (status 128 + signal, no traceback); running that command ends equal to
    the uninterrupted run."""
    out = tmp_path / "run"
    args = tiny_args(tiny_dir, problems_file, out, "--steps", STEPS)
    with open(tmp_path / "stderr", "w") as err_file:   # a file, not a pipe nobody reads while we wait
        proc = subprocess.Popen(train_cmd(*args), cwd=ROOT, env=ENV, stdout=subprocess.DEVNULL, stderr=err_file,
                                start_new_session=True)   # its own process group, as a scheduler's job
        metrics = out / "metrics.jsonl"
        wait_for(lambda: metrics.is_file() and metrics.read_text().count("\n") >= 1, proc, "its first step")
        os.killpg(proc.pid, sig)
        proc.wait(timeout=600)
    err = (tmp_path / "stderr").read_text()
    assert proc.returncode == 128 + sig and "Traceback" not in err, err[-3000:]
    line = [ln for ln in err.splitlines() if ln.startswith(f"interrupted ({sig.name}) after step")][0]
    step = int(line.split("after step ")[1].split(";")[0])
    assert 1 <= step < STEPS and f"last complete checkpoint: {out / f'ckpt-{step:06d}'}" in line, line
    resumed = subprocess.run(train_cmd(*shlex.split(line.split("resume with: python train.py ")[1])), cwd=ROOT,
                             env=ENV, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert_same_run(out, reference)


def test_a_second_signal_stops_at_once():
    """StopSignals: the first SIGTERM only records the request; the second raises Stopped (a
    KeyboardInterrupt carrying the signal) at once; the previous handlers come back afterwards."""
    before = signal.getsignal(signal.SIGTERM)
    stop = runtime.StopSignals().install()
    try:
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.signum == signal.SIGTERM and stop.requested(runtime.Dist())
        with pytest.raises(runtime.Stopped) as e:
            os.kill(os.getpid(), signal.SIGTERM)
        assert e.value.signum == signal.SIGTERM
    finally:
        stop.restore()
    assert signal.getsignal(signal.SIGTERM) is before


def test_ctrl_c_during_the_first_warm_start_is_one_line(tmp_path):
    """Ctrl-C while the demo's tiny model warms up for the first time (a fresh CASP_HOME): one line, status
    130, no traceback; no model and no run folder are left half-made."""
    home, out = tmp_path / "home", tmp_path / "run"
    env = {**ENV, "CASP_HOME": str(home), "PYTHONUNBUFFERED": "1"}
    with open(tmp_path / "stderr", "w") as err_file:
        proc = subprocess.Popen(train_cmd("--out", out), cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=err_file,
                                text=True)
        for line in proc.stdout:
            if line.startswith("[warm start]"):
                break
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=600)
    err = (tmp_path / "stderr").read_text()
    assert proc.returncode == 130 and "Traceback" not in err, err[-3000:]
    assert any(ln.startswith("interrupted; no checkpoint") for ln in err.splitlines()), err[-3000:]
    assert not (home / "tiny" / "config.json").exists() and not out.exists()


# -----------------------------------------------------------------------------
# 8. Where output goes


def read_only_command(folder: Path, command: list) -> list:
    """`command` run with `folder` read-only: chmod for a user; for root (whom modes do not stop) a
    read-only bind mount in a private mount namespace (a real EROFS)."""
    if os.geteuid() != 0:
        folder.chmod(0o555)
        return command
    if not shutil.which("unshare") or subprocess.run(["unshare", "-m", "true"], capture_output=True).returncode:
        pytest.skip("running as root without mount namespaces (`unshare -m`), no way to make a folder "
                    "read-only: run the tests as a non-root user")
    mount = 'mount --bind "$0" "$0" && mount -o remount,ro,bind "$0" "$0" && exec "$@"'
    return ["unshare", "-m", "sh", "-c", mount, str(folder), *map(str, command)]


def test_output_location_is_checked_first(tiny_dir, problems_file, tmp_path, capsys):
    """--out naming a file or a path under one, a read-only parent, --resume into a read-only run folder:
    train.py and eval.py stop with one line naming the path, before any model loads (the model given does
    not even exist, and its error is not the one reported), and create nothing."""
    a_file = tmp_path / "file.txt"
    a_file.write_text("not a folder")
    nowhere = tmp_path / "no" / "model"
    for out, needle in ((a_file, f"--out {a_file}: {a_file} is a file, not a folder"),
                        (a_file / "run", f"{a_file} is a file, so no folder can be made under it")):
        for main, argv in ((train.main, ["--model", nowhere, "--out", out]), (ev.main, ["--model", nowhere, "--out", out])):
            with pytest.raises(SystemExit) as e:
                main(list(map(str, argv)))
            line = one_error_line(capsys.readouterr().err)
            assert e.value.code == 2 and needle in line, line
    run = tmp_path / "ro" / "run"
    train.main(tiny_args(tiny_dir, problems_file, run, "--steps", "1"))
    before = sorted(p.name for p in run.iterdir())
    commands = {"train --resume": train_cmd(*tiny_args(nowhere, problems_file, run, "--steps", "2", "--resume")),
                "train": train_cmd("--model", nowhere, "--out", run.parent / "new"),
                "eval": [sys.executable, str(ROOT / "eval.py"), "--model", nowhere, "--out", run.parent / "ev"]}
    for what, command in commands.items():
        folder = run if what == "train --resume" else run.parent
        r = subprocess.run(read_only_command(folder, command), cwd=ROOT, env=ENV, capture_output=True, text=True,
                           timeout=600)
        line = one_error_line(r.stderr)
        assert r.returncode == 2 and f"cannot write in {folder} (" in line, (what, line)
        folder.chmod(0o755)
    assert sorted(p.name for p in run.iterdir()) == before and sorted(p.name for p in run.parent.iterdir()) == ["run"]


# -----------------------------------------------------------------------------
# Folders that no longer block: failed evaluations, runs without a checkpoint


def test_failed_evaluations_leave_nothing_and_empty_folders_never_block(tiny_dir, tmp_path, monkeypatch, capsys):
    """eval.py with a missing model or missing data creates no folder; an output folder holding an
    eval_config.json but no samples (an evaluation that stopped before its first problem) is reused with
    other settings; the default --out of a checkpoint RUN/ckpt-STEP/model is runs/eval/RUN-STEP."""
    monkeypatch.chdir(tmp_path)
    for argv, needle in ((["--model", "no/such/folder"], "no/such/folder"),
                         (["--model", str(tiny_dir), "--data", "nope.jsonl"], "nope.jsonl")):
        with pytest.raises(SystemExit):
            ev.main(argv)
        assert needle in one_error_line(capsys.readouterr().err)
        assert not (tmp_path / "runs").exists()
    out = tmp_path / "ev"
    (out / "samples").mkdir(parents=True)
    (out / "eval_config.json").write_text(json.dumps({"n": 64, "seed": 5}))
    table = ev.main(["--model", str(tiny_dir), "--data", "synthetic", "--limit", "2", "--n", "2", "--out", str(out),
                     "--max-new-tokens", "8", "--no-progress", "--no-plot"])
    assert table["synthetic"]["problems"] == 2 and json.loads((out / "eval_config.json").read_text())["n"] == 2
    assert ev.default_out("runs/tiny-casp/ckpt-000030/model") == Path("runs/eval/tiny-casp-000030")
    assert ev.default_out("runs/tiny-casp/ckpt-000030/model/") == Path("runs/eval/tiny-casp-000030")
    assert ev.default_out("qwen-1.5b") == Path("runs/eval/qwen-1.5b")


def test_a_second_evaluation_into_a_folder_in_use_is_refused(tiny_dir, tmp_path, capsys):
    """eval.py into a folder whose lock another process holds (here: this one, through another open file)
    is refused in one line naming that PID, before the model loads; the holder's files are untouched."""
    out = tmp_path / "ev"
    runtime.lock_run_folder(out)
    try:
        with pytest.raises(SystemExit) as e:
            ev.main(["--model", str(tiny_dir), "--data", "synthetic", "--limit", "1", "--n", "1", "--out", str(out)])
        line = one_error_line(capsys.readouterr().err)
        assert e.value.code == 2 and f"in use by another run (PID {os.getpid()})" in line, line
        assert [p.name for p in out.iterdir()] == [runtime.LOCK_FILE]
    finally:
        runtime.release_run_folders()


def test_a_run_folder_without_a_checkpoint_starts_over(tiny_dir, problems_file, tmp_path, capsys):
    """A folder holding config.json and metrics.jsonl but no checkpoint (a run stopped before it saved) is
    not a run to protect: a new run starts over in it and says so; --resume there says there is nothing to
    resume and how to start over."""
    out = tmp_path / "run"
    out.mkdir()
    (out / "config.json").write_text("{}")
    (out / "metrics.jsonl").write_text('{"step": 1, "old": true}\n')
    with pytest.raises(SystemExit) as e:
        train.main(tiny_args(tiny_dir, problems_file, out, "--steps", "1", "--resume"))
    line = one_error_line(capsys.readouterr().err)
    assert e.value.code == 2 and "has no checkpoint to resume from" in line and "without --resume" in line
    train.main(tiny_args(tiny_dir, problems_file, out, "--steps", "1"))
    assert "holds no checkpoint (config.json, metrics.jsonl): starting over in it" in capsys.readouterr().out
    assert [row["step"] for row in metrics_rows(out)] == [1] and "old" not in metrics_rows(out)[0]
