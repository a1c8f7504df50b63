"""Pruning's saving: a 16-trial Optuna search over lr (log) x batch_size x optimizer on MNIST, 4
epochs per trial, with the median pruner and with none; prints the epochs each trained and the
best val accuracy each found. The goal: >= 40% fewer epochs at a best val acc within 0.3 points.

    MNISTLAB_DATA=../shared/data python bench/optuna_pruning.py [--trials 16] [device=cpu]

Each search runs through the CLI (`python -m train -m hparams_search=optuna ...`) in its own temp
folder, with its own MLflow store and study; the numbers are read back from the study. Long on a
2-core CPU (32 trials of 4 MNIST epochs each, at most).
"""

import argparse
import subprocess
import sys
import tempfile
import time

import optuna


def search(pruner: str, trials: int, epochs: int, data: str, extra: list[str]) -> dict:
    """Run one search; its epochs trained, best val acc, trial counts and wall time."""
    with tempfile.TemporaryDirectory(prefix=f"optuna-{pruner}-") as folder:
        args = ["-m", "hparams_search=optuna", f"epochs={epochs}", f"data={data}",
                f"hydra.sweeper.n_trials={trials}", f"hydra.sweeper.pruner={pruner}",
                "train.plots=false", "mlflow.log_model=false", *extra]  # fmt: skip
        start = time.perf_counter()
        done = subprocess.run([sys.executable, "-m", "train", *args], cwd=folder,
                              capture_output=True, text=True)  # fmt: skip
        wall = time.perf_counter() - start
        if done.returncode not in (0, 1):  # 1: a trial failed, which the counts show
            sys.exit(f"the {pruner} search failed:\n{done.stderr[-3000:]}")
        study = optuna.load_study(
            study_name="mnistlab", storage=f"sqlite:///{folder}/mlruns/optuna.db"
        )
        found = study.get_trials()
    states = [t.state.name for t in found]
    return {
        "pruner": pruner,
        "epochs": sum(len(t.intermediate_values) for t in found),
        "best_val_acc": max((t.value for t in found if t.value is not None), default=float("nan")),
        "complete": states.count("COMPLETE"),
        "pruned": states.count("PRUNED"),
        "failed": states.count("FAIL"),
        "wall_s": wall,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=16)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--data", default="mnist", help="synthetic: a quick check of the script")
    parser.add_argument("--pruners", default="none,median", help="none first, then the others")
    parser.add_argument("extra", nargs="*", help="more overrides, e.g. device=cpu seed=1")
    opts = parser.parse_args()
    pruners = opts.pruners.split(",")
    rows = [search(p, opts.trials, opts.epochs, opts.data, opts.extra) for p in pruners]
    print(f"{'pruner':8} {'epochs':>6} {'best val acc':>12} {'complete':>8} {'pruned':>6} "
          f"{'failed':>6} {'wall s':>7}")  # fmt: skip
    for r in rows:
        print(f"{r['pruner']:8} {r['epochs']:6d} {r['best_val_acc']:12.4f} {r['complete']:8d} "
              f"{r['pruned']:6d} {r['failed']:6d} {r['wall_s']:7.0f}")  # fmt: skip
    none = rows[0]
    for pruned in rows[1:] if none["pruner"] == "none" else []:
        saved = 1 - pruned["epochs"] / none["epochs"]
        gap = 100 * (none["best_val_acc"] - pruned["best_val_acc"])
        goal = "met" if saved >= 0.40 and gap <= 0.3 else "NOT met"
        print(f"{pruned['pruner']} pruner: {saved:.0%} fewer epochs, best val acc {gap:+.2f} "
              f"points below none: goal (>= 40% fewer, <= 0.3 points) {goal}")  # fmt: skip


if __name__ == "__main__":
    main()
