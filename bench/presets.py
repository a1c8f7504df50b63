"""Run the experiment presets on the real data and print test accuracy and training time.

    MNISTLAB_DATA=../shared/data python bench/presets.py [--presets tutorial,speedrun] [--seed 0]

Each preset runs as `python -m train experiment=NAME seed=SEED` into a fresh store in a temp
folder; the table shows the final test accuracy, the training time (the sum of `epoch_time_s`,
evaluation excluded), the whole command's wall time and the preset's target.
"""

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from mlflow import MlflowClient

REPO = Path(__file__).resolve().parents[1]
TARGETS = {  # preset: (minimum test accuracy, the most training seconds on a 2-core CPU)
    "tutorial": (0.975, None),
    "mnist_cnn": (0.993, None),
    "fashion_cnn": (0.925, None),
    "speedrun": (0.990, 20.0),
}


def run(preset: str, seed: int, folder: Path) -> dict:
    """Train the preset; its test accuracy, training seconds and wall seconds."""
    store = f"sqlite:///{folder / preset / 'mlflow.db'}"
    args = [sys.executable, "-m", "train", f"experiment={preset}", f"seed={seed}",
            f"mlflow.tracking_uri={store}", f"hydra.run.dir={folder / preset / 'run'}"]  # fmt: skip
    start = time.perf_counter()
    done = subprocess.run(args, cwd=REPO, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{preset} failed:\n{done.stderr[-3000:]}")
    client = MlflowClient(store)
    (run,) = client.search_runs([client.get_experiment_by_name("mnistlab").experiment_id])
    epochs = client.get_metric_history(run.info.run_id, "epoch_time_s")
    return {
        "test_acc": run.data.metrics["test/acc"],
        "train_s": sum(m.value for m in epochs),
        "epochs": len(epochs),
        "wall_s": wall,
    }


def main() -> None:
    """Run the presets one after the other and print one row each."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", default=",".join(TARGETS), help="comma-separated names")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    os.environ.setdefault("MNISTLAB_DATA", str(REPO.parent / "shared" / "data"))
    os.environ["MNISTLAB_DATA"] = str(Path(os.environ["MNISTLAB_DATA"]).resolve())
    print(f"{'preset':<13}{'test acc':>9}{'train s':>9}{'epochs':>7}{'wall s':>8}  target")
    with tempfile.TemporaryDirectory(prefix="mnistlab-presets-") as tmp:
        for preset in args.presets.split(","):
            r = run(preset, args.seed, Path(tmp))
            acc, seconds = TARGETS.get(preset, (None, None))
            target = f">= {acc:.1%}" if acc else ""
            target += f" in <= {seconds:g} s" if seconds else ""
            met = "" if acc is None else (" met" if r["test_acc"] >= acc and (
                seconds is None or r["train_s"] <= seconds) else " MISSED")  # fmt: skip
            print(f"{preset:<13}{r['test_acc']:>9.4f}{r['train_s']:>9.1f}{r['epochs']:>7}"
                  f"{r['wall_s']:>8.1f}  {target}{met}")  # fmt: skip


if __name__ == "__main__":
    main()
