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


def test_bench_wall_prints_each_ratio_with_its_budget():
    lines = bench("wall.py", "--repeats", "1", "--epochs", "2", "--sweep-jobs", "2")
    figures = {line[:32].strip(): line[32:].split() for line in lines[1:]}
    for name in ("one epoch / tutorial", "epochs / tutorial", "slowest epoch / floor epoch",
                 "sweep / tutorial x jobs"):  # fmt: skip
        value, unit, *budget = figures[name]
        assert float(value) > 0 and unit == "x" and budget[-1] in ("ok", "OVER"), figures[name]
    assert {"epoch 1 / floor epoch", "epoch 2 / floor epoch", "--cfg job", "--help"} <= set(figures)
    assert float(figures["floor epoch (bench/floor.py)"][0]) > 0


def test_bench_floor_trains_and_evaluates_each_job_in_one_process():
    lines = bench("floor.py", "--jobs", "2", "--threads", "1")
    (first,) = [float(line.split()[-1]) for line in lines if line.startswith("first step ")]
    assert 0 < first < 60
    jobs = [line for line in lines if line.startswith("job ")]
    assert [line.split(":")[0] for line in jobs] == ["job 0", "job 1"]
    assert [line.split(":")[0] for line in lines if line.startswith("epoch ")] == ["epoch 1"]
    for line in jobs:  # one epoch of the tutorial recipe on the real data
        val, test = (float(part.split()[-1]) for part in line.split(":", 1)[1].split(","))
        assert val > 0.9 and test > 0.9
