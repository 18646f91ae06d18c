"""gpu_checks.sh, the one script that checks every CUDA-only path, checked on the CPU: it parses, a failing
check gives a non-zero exit status and a summary row that says so, and its --cpu-smoke mode runs every part
at tiny scale from the repository alone (fallback tokenizer and data) with every check passing."""
import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "gpu_checks.sh"
CHECKS = ["env", "kernels", "compile28", "gpu-tests", "train", "fsdp", "memory", "bench-train", "bench-fixed",
          "bench-rl"]


def run_script(*args, env=None, timeout=1200):
    env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    for var in ("CASP_DATA", "CASP_QWEN_TOKENIZER"):   # the fallback data, whatever the caller has
        env.pop(var, None)
    return subprocess.run(["bash", str(SCRIPT), *map(str, args)], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, env=env)


def summary_rows(log: Path) -> dict:
    rows = {}
    for line in (log / "summary.txt").read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 3 and cells[0] in CHECKS:
            rows[cells[0]] = cells[1]
    return rows


def test_script_parses_and_sets_u():
    """`bash -n` accepts the script; it runs under `set -u` and with pipefail."""
    assert subprocess.run(["bash", "-n", str(SCRIPT)], capture_output=True).returncode == 0
    assert "set -u -o pipefail" in SCRIPT.read_text()


def test_a_failing_check_fails_the_script(tmp_path):
    """With only the env and memory checks selected (GPU_CHECKS_ONLY) and no run to read, memory fails: the
    summary table in the log folder says FAILED for it and ok for env, and the exit status is non-zero."""
    r = run_script("--cpu-smoke", tmp_path, env={"GPU_CHECKS_ONLY": "env,memory"}, timeout=300)
    assert r.returncode != 0, r.stdout[-2000:]
    rows = summary_rows(tmp_path)
    assert rows == {"env": "ok", "memory": "FAILED (exit 1)"}, (tmp_path / "summary.txt").read_text()
    assert "1 of 2 checks did not pass" in (tmp_path / "summary.txt").read_text()
    assert "NOT the real data" in (tmp_path / "summary.txt").read_text()


@pytest.mark.slow
def test_cpu_smoke_passes_every_check(tmp_path):
    """`bash gpu_checks.sh --cpu-smoke LOG` (every part at tiny scale on the CPU, the fallback tokenizer and
    synthetic data written into LOG) passes all ten checks and exits 0; the training run resumed to step 4,
    the FSDP run to step 3, eval.py wrote its results, and the memory check printed each step."""
    r = run_script("--cpu-smoke", tmp_path)
    assert r.returncode == 0, r.stdout[-3000:]
    assert summary_rows(tmp_path) == {c: "ok" for c in CHECKS}, (tmp_path / "summary.txt").read_text()
    assert (tmp_path / "train" / "ckpt-000004").is_dir() and (tmp_path / "fsdp" / "ckpt-000003").is_dir()
    assert any((tmp_path / "eval").iterdir())
    memory = (tmp_path / "memory.log").read_text()
    assert "train       4" in memory and "fsdp        3" in memory
