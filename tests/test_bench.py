"""The README's benchmark commands run as written (their timings are for people, not asserts)."""

import os
import subprocess
import sys

from conftest import DATA_ROOT, REPO

# as in the README: MNISTLAB_DATA relative to the repository root, where the command runs
ENV = {"MNISTLAB_DATA": os.path.relpath(DATA_ROOT, REPO), "PATH": os.environ["PATH"]}


def bench(script: str, *args: str) -> list[str]:
    """Run `python bench/SCRIPT ARGS` from the repository root; its output lines."""
    result = subprocess.run(
        [sys.executable, f"bench/{script}", *args], cwd=REPO, env=ENV,
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout.splitlines()


def test_bench_epoch_times_the_three_ways_and_prints_the_ratios():
    lines = bench("epoch.py", "--repeats", "1")
    rows = {line.split()[0]: line.split()[1:] for line in lines if len(line.split()) == 3}
    assert {"tutorial", "mnistlab", "floor"} <= rows.keys()
    assert all(float(rows[name][0]) > 0 for name in ("tutorial", "mnistlab", "floor"))
    assert any(line.startswith("tutorial / mnistlab = ") for line in lines)
    assert any(line.startswith("mnistlab / floor    = ") for line in lines)


def test_bench_wall_times_both_programs_as_whole_processes():
    lines = bench("wall.py", "--repeats", "1", "--sweep-jobs", "2")
    rows = {line.split()[0]: line.split()[1:] for line in lines if len(line.split()) == 5}
    assert float(rows["tutorial"][0]) > 0 and float(rows["mnistlab"][0]) > 0
    assert any(line.startswith("mnistlab, no MLflow model ") for line in lines)
    assert any(line.startswith("mnistlab / tutorial wall: best ") for line in lines)
    phases = {line[:34].strip(): float(line.split()[-2]) for line in lines if line.startswith("  ")}
    assert phases.keys() == {
        "to first step", "training", "last epoch to exit", "floor: to first step"
    }  # fmt: skip
    assert all(seconds > 0 for seconds in phases.values())
    (floor,) = [line.split()[2:] for line in lines if line.startswith("floor (bench/floor.py) ")]
    assert float(floor[0]) > 0 and float(floor[2]) > 0  # best s, median s
    assert any(line.startswith("floor / tutorial wall: median ") for line in lines)
    sweep = next(line for line in lines if line.startswith("sweep of 2 one-epoch jobs (joblib"))
    assert "; floor (2 processes) " in sweep
    assert any(line.startswith("python -m train --cfg job: ") for line in lines)


def test_bench_floor_trains_and_evaluates_each_job_in_one_process():
    lines = bench("floor.py", "--jobs", "2", "--threads", "1")
    (first,) = [float(line.split()[-1]) for line in lines if line.startswith("first step ")]
    assert 0 < first < 60
    jobs = [line for line in lines if line.startswith("job ")]
    assert [line.split(":")[0] for line in jobs] == ["job 0", "job 1"]
    for line in jobs:  # one epoch of the tutorial recipe on the real data
        val, test = (float(part.split()[-1]) for part in line.split(":", 1)[1].split(","))
        assert val > 0.9 and test > 0.9
