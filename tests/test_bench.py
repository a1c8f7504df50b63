"""The README's benchmark commands run as written (their timings are for people, not asserts)."""

import os
import subprocess
import sys

from conftest import DATA_ROOT, REPO

# as in the README: MNISTLAB_DATA relative to the repository root, where the command runs
ENV = {"MNISTLAB_DATA": os.path.relpath(DATA_ROOT, REPO), "PATH": os.environ["PATH"]}


def bench(script: str) -> list[str]:
    """Run `python bench/SCRIPT --repeats 1` from the repository root; its output lines."""
    result = subprocess.run(
        [sys.executable, f"bench/{script}", "--repeats", "1"], cwd=REPO, env=ENV,
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout.splitlines()


def test_bench_epoch_times_the_three_ways_and_prints_the_ratios():
    lines = bench("epoch.py")
    rows = {line.split()[0]: line.split()[1:] for line in lines if len(line.split()) == 3}
    assert {"tutorial", "mnistlab", "floor"} <= rows.keys()
    assert all(float(rows[name][0]) > 0 for name in ("tutorial", "mnistlab", "floor"))
    assert any(line.startswith("tutorial / mnistlab = ") for line in lines)
    assert any(line.startswith("mnistlab / floor    = ") for line in lines)


def test_bench_wall_times_both_programs_as_whole_processes():
    lines = bench("wall.py")
    rows = {line.split()[0]: line.split()[1:] for line in lines if len(line.split()) == 5}
    assert float(rows["tutorial"][0]) > 0 and float(rows["mnistlab"][0]) > 0
    assert any(line.startswith("tutorial / mnistlab wall: best ") for line in lines)
    assert any(line.startswith("python -m train --cfg job: ") for line in lines)
