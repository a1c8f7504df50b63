"""Pruning's saving: a 16-trial Optuna search over lr (log) x batch_size x optimizer on MNIST, 4
epochs per trial, with the median pruner and with none; prints the epochs each trained and the
best val accuracy each found, for each seed (of the sampler and of training). The goal: >= 40%
fewer epochs in total at a best val acc within 0.3 points on average.

    MNISTLAB_DATA=../shared/data python bench/optuna_pruning.py [--seeds 0,1,2] [device=cpu]

Each search runs through the CLI (`python -m train -m hparams_search=optuna ...`) in its own temp
folder, with its own MLflow store and study; the numbers are read back from the study. Long on a
2-core CPU: about 3 minutes per search without pruning.
"""

import argparse
import subprocess
import sys
import tempfile
import time

import optuna


def search(pruner: str, seed: int, trials: int, epochs: int, data: str, extra: list[str]) -> dict:
    """Run one search; its epochs trained, best val acc, trial counts and wall time."""
    with tempfile.TemporaryDirectory(prefix=f"optuna-{pruner}-") as folder:
        args = ["-m", "hparams_search=optuna", f"epochs={epochs}", f"data={data}", f"seed={seed}",
                f"hydra.sweeper.n_trials={trials}", f"hydra.sweeper.pruner={pruner}",
                "train.plots=false", "mlflow.log_model=false", *extra]  # fmt: skip
        start = time.perf_counter()
        done = subprocess.run([sys.executable, "-m", "train", *args], cwd=folder,
                              capture_output=True, text=True)  # fmt: skip
        wall = time.perf_counter() - start
        if done.returncode not in (0, 1):  # 1: a trial failed, which the counts show
            sys.exit(f"the {pruner} search failed:\n{done.stderr[-3000:]}")
        storage = f"sqlite:///{folder}/optuna.db"  # beside the MLflow store; one study in it
        (name,) = optuna.get_all_study_names(storage)
        study = optuna.load_study(study_name=name, storage=storage)
        found = study.get_trials()
    states = [t.state.name for t in found]
    return {
        "pruner": pruner,
        "seed": seed,
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
    parser.add_argument("--seeds", default="0,1,2", help="one search per pruner and seed")
    parser.add_argument("extra", nargs="*", help="more overrides, e.g. device=cpu")
    opts = parser.parse_args()
    pruners, seeds = opts.pruners.split(","), [int(s) for s in opts.seeds.split(",")]
    rows = [search(p, s, opts.trials, opts.epochs, opts.data, opts.extra)
            for s in seeds for p in pruners]  # fmt: skip
    print(f"{'pruner':8} {'seed':>4} {'epochs':>6} {'best val acc':>12} {'complete':>8} "
          f"{'pruned':>6} {'failed':>6} {'wall s':>7}")  # fmt: skip
    for r in rows:
        print(f"{r['pruner']:8} {r['seed']:4d} {r['epochs']:6d} {r['best_val_acc']:12.4f} "
              f"{r['complete']:8d} {r['pruned']:6d} {r['failed']:6d} "
              f"{r['wall_s']:7.0f}")  # fmt: skip
    if pruners[0] == "none":
        for pruner in pruners[1:]:
            compare(pruner, [r for r in rows if r["pruner"] == "none"],
                    [r for r in rows if r["pruner"] == pruner])  # fmt: skip


def compare(pruner: str, none: list[dict], pruned: list[dict]) -> None:
    """The goal, over all seeds: epochs saved in total, and the mean gap in best val acc."""
    for a, b in zip(none, pruned, strict=True):
        print(
            f"  seed {a['seed']}: {pruner} {1 - b['epochs'] / a['epochs']:.0%} fewer epochs, "
            f"best val acc {100 * (a['best_val_acc'] - b['best_val_acc']):+.2f} points below"
        )
    saved = 1 - sum(b["epochs"] for b in pruned) / sum(a["epochs"] for a in none)
    gaps = [a["best_val_acc"] - b["best_val_acc"] for a, b in zip(none, pruned, strict=True)]
    gap = 100 * sum(gaps) / len(gaps)
    goal = "met" if saved >= 0.40 and gap <= 0.3 else "NOT met"
    print(
        f"{pruner} pruner over {len(none)} seed(s): {saved:.0%} fewer epochs, best val acc "
        f"{gap:+.2f} points below none on average: goal (>= 40% fewer, <= 0.3 points) {goal}"
    )


if __name__ == "__main__":
    main()
