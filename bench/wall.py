"""Whole-process wall clock: `python -m train epochs=1` against the tutorial script run as-is.

    python bench/wall.py [--repeats 3] [--epochs 1]

Each command runs in a fresh temp directory (so MLflow creates a new store, as for a new user),
the two take turns, and the best and median of each are compared. Also times the fast paths that
import no torch: `python -m train --cfg job` and `--help`.
"""

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from mlflow import MlflowClient

HERE = Path(__file__).resolve().parent
ROOT = str(Path(os.environ.get("MNISTLAB_DATA", HERE.parents[1] / "shared" / "data")).resolve())


def timed(cmd: list[str], cwd: str, **env: str) -> float:
    """Seconds `cmd` took; fails loudly if it failed."""
    start = time.perf_counter()
    subprocess.run(cmd, cwd=cwd, env={**os.environ, **env}, check=True, capture_output=True)
    return time.perf_counter() - start


def epoch_time(cwd: str) -> float:
    """The first `epoch_time_s` that the mnistlab run in `cwd` logged."""
    client = MlflowClient(f"sqlite:///{cwd}/mlruns/mlflow.db")
    (run,) = client.search_runs([client.get_experiment_by_name("mnistlab").experiment_id])
    return client.get_metric_history(run.info.run_id, "epoch_time_s")[0].value


def main() -> None:
    """Alternate the two programs, then print wall times and ratios."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=1)
    args = parser.parse_args()

    walls: dict[str, list[float]] = {"tutorial": [], "mnistlab": []}
    epochs: list[float] = []
    for _ in range(args.repeats):
        with tempfile.TemporaryDirectory() as cwd:
            walls["tutorial"].append(
                timed(
                    [sys.executable, str(HERE / "tutorial.py")],
                    cwd,
                    EPOCHS=str(args.epochs),
                    MNISTLAB_DATA=ROOT,
                )
            )
        with tempfile.TemporaryDirectory() as cwd:
            cmd = [sys.executable, "-m", "train", f"epochs={args.epochs}", f"data.root={ROOT}"]
            walls["mnistlab"].append(timed(cmd, cwd))
            epochs.append(epoch_time(cwd))
    with tempfile.TemporaryDirectory() as cwd:
        cfg_job = min(timed([sys.executable, "-m", "train", "--cfg", "job"], cwd) for _ in range(3))
        help_ = min(timed([sys.executable, "-m", "train", "--help"], cwd) for _ in range(3))

    print(f"whole process, {args.epochs} epoch(s), best / median of {args.repeats}")
    for name, ts in walls.items():
        print(f"{name:<10}{min(ts):>8.2f} s{statistics.median(ts):>8.2f} s")
    best = {name: min(ts) for name, ts in walls.items()}
    med = {name: statistics.median(ts) for name, ts in walls.items()}
    print(
        f"tutorial / mnistlab wall: best {best['tutorial'] / best['mnistlab']:.2f}x, "
        f"median {med['tutorial'] / med['mnistlab']:.2f}x"
    )
    print(
        f"mnistlab epoch_time_s (first epoch, as logged): best {min(epochs):.2f} s, "
        f"median {statistics.median(epochs):.2f} s"
    )
    print(f"python -m train --cfg job: {cfg_job:.2f} s; --help: {help_:.2f} s (target < 1.5 s)")


if __name__ == "__main__":
    main()
