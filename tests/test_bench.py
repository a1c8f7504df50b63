"""The README's benchmark commands run (their timings are for people, not for asserts)."""

import subprocess
import sys

from conftest import DATA_ROOT, REPO


def test_bench_epoch_times_the_three_ways_and_prints_the_ratios():
    result = subprocess.run(
        [sys.executable, str(REPO / "bench" / "epoch.py"), "--repeats", "1"],
        env={"MNISTLAB_DATA": str(DATA_ROOT), "PATH": "/usr/bin:/bin"},
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.splitlines()
    rows = {line.split()[0]: line.split()[1:] for line in lines if len(line.split()) == 3}
    assert {"tutorial", "mnistlab", "floor"} <= rows.keys()
    assert all(float(rows[name][0]) > 0 for name in ("tutorial", "mnistlab", "floor"))
    assert any(line.startswith("tutorial / mnistlab = ") for line in lines)
    assert any(line.startswith("mnistlab / floor    = ") for line in lines)
