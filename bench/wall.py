"""Whole-process wall clock: `python -m train` against the tutorial script run as-is.

    python bench/wall.py [--repeats 3] [--epochs 1] [--sweep-jobs 8]

Side by side, in one run, medians (and bests) of `--repeats`:
- one run of `--epochs` as a whole process, mnistlab and the tutorial taking turns (and
  mnistlab with `mlflow.log_model=false`: what the MLflow model export still costs);
- where mnistlab's time goes, from its train.log (a run with `train.log_every=1`): command to
  first training step, training, and last epoch's metrics to exit;
- a sweep of `--sweep-jobs` one-epoch jobs (`hydra/launcher=joblib hydra.launcher.n_jobs=2`)
  against the tutorial script run that many times in a row (0 skips it);
- the fast paths that import no torch: `python -m train --cfg job` and `--help`;
- the floor under all of these, `bench/floor.py`: a process that only imports torch, reads the
  cached data and trains and evaluates, with no config, checks or records (for the sweep: two
  such processes side by side, with half the cores each, as joblib's 2 warm workers, each
  training its half of the jobs in turn). A goal below the floor cannot be met by any
  record-keeping.

Each command runs in a fresh temp directory, so MLflow creates a new store, as for a new user.
"""

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = str(Path(os.environ.get("MNISTLAB_DATA", HERE.parents[1] / "shared" / "data")).resolve())
STAMP = re.compile(r"^\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3})\]")


def timed(cmd: list[str], cwd: str, **env: str) -> tuple[float, float]:
    """(start, end) wall-clock times of `cmd`; fails loudly if it failed."""
    start = time.time()
    done = subprocess.run(cmd, cwd=cwd, env={**os.environ, **env}, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{done.stderr[-3000:]}")
    return start, time.time()


def tutorial(epochs: int) -> float:
    """Seconds the tutorial script takes for `epochs`, in a fresh folder."""
    with tempfile.TemporaryDirectory() as cwd:
        start, end = timed([sys.executable, str(HERE / "tutorial.py")], cwd,
                           EPOCHS=str(epochs), MNISTLAB_DATA=ROOT)  # fmt: skip
    return end - start


def mnistlab(args: list[str]) -> float:
    """Seconds `python -m train ARGS` takes, in a fresh folder."""
    with tempfile.TemporaryDirectory() as cwd:
        start, end = timed([sys.executable, "-m", "train", *args, f"data.root={ROOT}"], cwd)
    return end - start


def floor(epochs: int, jobs: int = 1, workers: int = 1) -> tuple[float, float]:
    """(wall seconds, seconds to the first step) of `bench/floor.py`: `workers` processes side
    by side, sharing `jobs` one-after-another jobs, each with its share of the cores (as
    joblib's workers get)."""
    start = time.time()
    threads = ["--threads", str(max(1, (os.cpu_count() or 1) // workers))] if workers > 1 else []
    env = {**os.environ, "FLOOR_START": repr(start), "MNISTLAB_DATA": ROOT}
    shares = [n for n in (len(range(w, jobs, workers)) for w in range(workers)) if n]
    procs = [subprocess.Popen([sys.executable, str(HERE / "floor.py"), "--epochs", str(epochs),
                               "--jobs", str(n), *threads],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for n in shares]  # fmt: skip
    outs = [proc.communicate() for proc in procs]
    end = time.time()
    for proc, (_, err) in zip(procs, outs, strict=True):
        if proc.returncode != 0:
            sys.exit(f"bench/floor.py failed:\n{err[-3000:]}")
    firsts = [float(line.split()[-1]) for out, _ in outs for line in out.splitlines()
              if line.startswith("first step ")]  # fmt: skip
    return end - start, min(firsts)


def phases(epochs: int) -> dict[str, float]:
    """Where a run's time goes: launch to first step, training, last epoch's metrics to exit."""
    with tempfile.TemporaryDirectory() as cwd:
        cmd = [sys.executable, "-m", "train", f"data.root={ROOT}", f"epochs={epochs}",
               "train.log_every=1"]  # fmt: skip
        start, end = timed(cmd, cwd)
        (log,) = Path(cwd, "outputs").glob("*/*/train.log")
        lines = log.read_text().splitlines()

    def when(pattern: str, last: bool = False) -> float:
        found = [line for line in lines if re.search(pattern, line) and STAMP.match(line)]
        stamp = STAMP.match(found[-1 if last else 0]).group(1)
        return datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S,%f").timestamp()

    first, last = when(r"Step \[\s*1 /"), when(rf"Epoch {epochs}/{epochs}: ", last=True)
    return {
        "to first step": first - start,
        "training": last - first,
        "last epoch to exit": end - last,
    }


def row(name: str, times: list[float]) -> str:
    return f"{name:<34}{min(times):>8.2f} s{statistics.median(times):>8.2f} s"


def main() -> None:
    """Time everything, then print the figures and ratios."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--sweep-jobs", type=int, default=8)
    args = parser.parse_args()

    walls: dict[str, list[float]] = {
        "tutorial": [],
        "mnistlab": [],
        "mnistlab, no MLflow model": [],
        "floor (bench/floor.py)": [],
    }
    split: dict[str, list[float]] = {}
    floor_first: list[float] = []
    for _ in range(args.repeats):
        walls["tutorial"].append(tutorial(args.epochs))
        walls["mnistlab"].append(mnistlab([f"epochs={args.epochs}"]))
        no_model = [f"epochs={args.epochs}", "mlflow.log_model=false"]  # what the export costs
        walls["mnistlab, no MLflow model"].append(mnistlab(no_model))
        wall, first = floor(args.epochs)
        walls["floor (bench/floor.py)"].append(wall)
        floor_first.append(first)
        for phase, seconds in phases(args.epochs).items():
            split.setdefault(phase, []).append(seconds)
    sweep = {}
    if args.sweep_jobs:
        seeds = ",".join(str(s) for s in range(args.sweep_jobs))
        sweep["mnistlab"] = mnistlab(["-m", "epochs=1", f"seed={seeds}", "hydra/launcher=joblib",
                                      "hydra.launcher.n_jobs=2"])  # fmt: skip
        sweep["floor"] = floor(1, args.sweep_jobs, workers=2)[0]
        sweep["tutorial"] = sum(tutorial(1) for _ in range(args.sweep_jobs))
    cfg_job = min(mnistlab(["--cfg", "job"]) for _ in range(3))
    help_ = min(mnistlab(["--help"]) for _ in range(3))

    print(f"whole process, {args.epochs} epoch(s)            best   median of {args.repeats}")
    for name, times in walls.items():
        print(row(name, times))
    best = min(walls["mnistlab"]) / min(walls["tutorial"])
    med = statistics.median(walls["mnistlab"]) / statistics.median(walls["tutorial"])
    print(f"mnistlab / tutorial wall: best {best:.2f}x, median {med:.2f}x")
    floor_ratio = statistics.median(walls["floor (bench/floor.py)"]) / statistics.median(
        walls["tutorial"])  # fmt: skip
    print(f"floor / tutorial wall: median {floor_ratio:.2f}x")
    print("mnistlab's run, from its train.log (train.log_every=1)")
    for phase, times in split.items():
        print(row(f"  {phase}", times))
    print(row("  floor: to first step", floor_first))
    if sweep:
        ratio = sweep["mnistlab"] / sweep["tutorial"]
        print(f"sweep of {args.sweep_jobs} one-epoch jobs (joblib, 2 workers): "
              f"mnistlab {sweep['mnistlab']:.1f} s, tutorial x{args.sweep_jobs} in a row "
              f"{sweep['tutorial']:.1f} s: {ratio:.2f}x; floor (2 processes) "
              f"{sweep['floor']:.1f} s: {sweep['floor'] / sweep['tutorial']:.2f}x")  # fmt: skip
    print(f"python -m train --cfg job: {cfg_job:.2f} s; --help: {help_:.2f} s (target < 1.5 s)")


if __name__ == "__main__":
    main()
