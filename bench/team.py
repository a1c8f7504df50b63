"""What the team server costs: the local SQLite store against a PostgreSQL-backed `mlflow server`
(scripts/team_server.sh, basic auth on), side by side in one run.

    MNISTLAB_DATA=../shared/data python bench/team.py [--epochs 40] [--jobs 16] [--n-jobs 2]

1. Per-epoch logging latency: the one batched request a run sends per epoch (7 metrics and the
   epoch's `train/step_loss` points, as the tracker does), timed `--epochs` times per store.
2. A `--jobs`-job sweep's wall time (`python -m train -m`, data=synthetic, 1 epoch, joblib with
   `--n-jobs` at once, no MLflow model), each store in a fresh folder, taking turns.
Needs `pip install -e '.[team]'` and PostgreSQL's binaries (as for the team server).
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
from mlflow.entities import Metric

HERE = Path(__file__).resolve().parent
SCRIPT = HERE.parent / "scripts" / "team_server.sh"
KEYS = ["train/loss", "train/acc", "val/loss", "val/acc", "test/loss", "test/acc", "epoch_time_s"]


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def epoch_latency(uri: str, epochs: int) -> list[float]:
    """Seconds each epoch's batch took to reach the store at `uri`."""
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("bench") or client.create_experiment("bench")
    experiment_id = getattr(experiment, "experiment_id", experiment)
    run_id = client.create_run(experiment_id).info.run_id
    times = []
    for epoch in range(1, epochs + 1):
        now = int(time.time() * 1000)
        batch = [Metric(k, 0.5, now, epoch) for k in KEYS]
        batch += [Metric("train/step_loss", 0.5, now, epoch * 8 + i) for i in range(8)]
        start = time.perf_counter()
        client.log_batch(run_id, metrics=batch, synchronous=True)
        times.append(time.perf_counter() - start)
    client.set_terminated(run_id)
    return times


def sweep_wall(uri: str, jobs: int, n_jobs: int) -> float:
    """Seconds a `jobs`-job parallel sweep took, as a whole process, in a fresh folder."""
    with tempfile.TemporaryDirectory() as cwd:
        cmd = [sys.executable, "-m", "train", "-m", "data=synthetic", "device=cpu", "epochs=1",
               f"seed=range(0,{jobs})", "hydra/launcher=joblib", f"hydra.launcher.n_jobs={n_jobs}",
               "mlflow.log_model=false", f"mlflow.tracking_uri={uri}"]  # fmt: skip
        start = time.perf_counter()
        subprocess.run(cmd, cwd=cwd, check=True, capture_output=True)
        return time.perf_counter() - start


def team_server(folder: Path) -> str:
    """Start the throwaway team server (with auth) in `folder`; its URL, the login exported."""
    port = str(free_port())
    subprocess.run([str(SCRIPT), "start", str(folder), "--auth", "--port", port, "--db-port",
                    str(free_port())], check=True, capture_output=True)  # fmt: skip
    for line in (folder / "client.env").read_text().splitlines():
        key, value = line.removeprefix("export ").split("=", 1)
        os.environ[key] = value.strip("'")
    return f"http://127.0.0.1:{port}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--jobs", type=int, default=16)
    parser.add_argument("--n-jobs", type=int, default=2)
    args = parser.parse_args()
    os.environ["PATH"] = f"{Path(sys.executable).parent}:{os.environ['PATH']}"
    folder = Path(tempfile.mkdtemp(prefix="mnistlab-bench-team-"))
    folder.chmod(0o755)  # the postgres user enters it
    try:
        stores = {"sqlite": f"sqlite:///{folder / 'local' / 'mlflow.db'}"}
        stores["postgresql server"] = team_server(folder / "team")
        print(f"per-epoch logging latency ({args.epochs} epochs):")
        for name, uri in stores.items():
            t = sorted(epoch_latency(uri, args.epochs))
            p95 = t[int(0.95 * (len(t) - 1))]
            median = statistics.median(t)
            print(f"  {name:18} median {median * 1000:6.1f} ms  p95 {p95 * 1000:6.1f} ms")
        walls = {name: sweep_wall(uri, args.jobs, args.n_jobs) for name, uri in stores.items()}
        print(f"{args.jobs}-job sweep, {args.n_jobs} at once (whole process):")
        for name, wall in walls.items():
            print(f"  {name:18} {wall:6.1f} s")
        ratio = walls["postgresql server"] / walls["sqlite"]
        print(f"  server / sqlite    {ratio:6.2f}x")
    finally:
        subprocess.run([str(SCRIPT), "stop", str(folder / "team")], capture_output=True)
        subprocess.run(["rm", "-rf", str(folder)])


if __name__ == "__main__":
    main()
