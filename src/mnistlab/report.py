"""`python -m mnistlab.report [EXPERIMENT | SWEEP_PARENT_RUN_ID] [options]`

Compares runs from the same store as `python -m train` (or --tracking-uri): a table of runs
(overrides, status, best val acc, test acc, duration) sorted by a metric, optionally saved as
CSV, and a figure of the metric against each hyperparameter that varies, with the val-acc curves
of the top runs. With a sweep's parent run id, the runs are that sweep's jobs; otherwise every
run of the experiment (default: mnistlab) except sweep parents. `--by-config` folds runs that
differ only in their seed (tag config_digest) into one row each: n, mean and std of best val acc
and test acc, and the best seed's run, best mean first.
"""

import argparse
import math
from pathlib import Path
from typing import Any

from mnistlab import summary, tracking
from mnistlab.cli import one_line_errors
from mnistlab.errors import UserError
from mnistlab.files import advising, write_csv

TARGET_HELP = "experiment name or sweep parent run id (default: mnistlab)"
COLUMNS = ["run_id", "name", "overrides", "status", "best_val_acc", "test_acc", "duration_s"]
BY_CONFIG_HELP = (
    "one row per config (runs alike but for the seed): n, mean and std of the accuracies"
)
BOOKKEEPING = ("data.root", "data.cache_dir", "mlflow.", "resume", "force", "sweep_name", "repeats")


def collect(client: Any, target: str) -> tuple[str, list[dict[str, Any]]]:
    """(title, one row per run) for an experiment name or a sweep parent run id."""
    from mlflow.exceptions import MlflowException

    experiment = client.get_experiment_by_name(target)
    if experiment is not None:
        runs = client.search_runs([experiment.experiment_id], max_results=10_000)
        parents = {r.data.tags.get("mlflow.parentRunId") for r in runs}
        rows = [tracking.run_row(client, r) for r in runs if r.info.run_id not in parents]
        return f"experiment {target}", rows
    try:
        parent = client.get_run(target)
    except MlflowException as err:
        raise UserError(
            f"{target}: no such experiment or run in this store; name an experiment "
            "(default mnistlab) or a sweep's parent run id, and --tracking-uri if elsewhere"
        ) from err
    # its jobs, as the sweep's summary has them (a job run again: its latest run)
    return f"sweep {parent.info.run_name} ({target})", tracking.child_rows(client, target)


def sort_key(row: dict[str, Any], metric: str, ascending: bool) -> tuple[bool, float]:
    """A row's place by `metric` (a column or a logged metric such as test/loss), missing last."""
    value = row.get(metric, row["metrics"].get(metric, float("nan")))
    missing = value is None or math.isnan(value)
    return (missing, 0.0 if missing else (value if ascending else -value))


def varying(rows: list[dict[str, Any]]) -> list[str]:
    """Hyperparameters whose values differ between the rows (bookkeeping keys aside)."""
    keys = sorted({k for r in rows for k in r["params"] if not k.startswith(BOOKKEEPING)})
    seen, out = set(), []
    for key in keys:  # keys that always vary together (lr, scheduler.max_lr): one panel
        values = tuple(r["params"].get(key) for r in rows)
        if len(set(values)) > 1 and values not in seen:
            seen.add(values)
            out.append(key)
    return out


def report_by_config(title: str, rows: list[dict[str, Any]], path: Path | None) -> None:
    """Print the runs folded by config digest (seeds aggregated); write them as CSV if asked."""
    keys = varying(rows)  # summary leaves the seed out of the config keys
    groups = summary.by_config(rows, keys)
    print(f"{title}: {len(rows)} runs in {len(groups)} configs, best mean val acc first")
    print(summary.table_by_config(groups, keys))
    if path:
        with advising("--csv"):
            summary.write_by_config(groups, keys, path)
        print(f"table: {path}")


def table(rows: list[dict[str, Any]]) -> str:
    """The rows as an aligned text table."""
    header = ["name", "status", "best val acc", "test acc", "duration s", "overrides"]
    lines = [[r["name"], r["status"], f"{r['best_val_acc']:.4f}", f"{r['final_test_acc']:.4f}",
              f"{r['duration_s']:.1f}", r["overrides"]] for r in rows]  # fmt: skip
    widths = [max(len(str(x)) for x in col) for col in zip(header, *lines, strict=False)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths[:-1]) + "  {}"
    return "\n".join(fmt.format(*line) for line in [header, *lines])


@one_line_errors
def main(argv: list[str] | None = None) -> None:
    """Print the table; write the CSV and the figure; bad input gets one line and exit 2."""
    parser = argparse.ArgumentParser(prog="mnistlab report", description=__doc__)
    parser.add_argument("target", nargs="?", default="mnistlab", help=TARGET_HELP)
    parser.add_argument("--tracking-uri", default=None, help="MLflow store (default as train)")
    parser.add_argument("--sort", default="best_val_acc", help="column or metric to sort by")
    parser.add_argument("--ascending", action="store_true", help="smallest first (for losses)")
    parser.add_argument("--csv", type=Path, default=None, help="also write the table here")
    parser.add_argument("--figure", type=Path, default=Path("report.png"), help="figure path")
    parser.add_argument("--top", type=int, default=5, help="runs whose val-acc curves to draw")
    parser.add_argument("--by-config", action="store_true", help=BY_CONFIG_HELP)
    args = parser.parse_args(argv)
    from mlflow import MlflowClient

    uri = tracking.existing_store(args.tracking_uri)
    title, rows = collect(MlflowClient(uri), args.target)
    if not rows:
        raise UserError(f"{args.target}: no runs to report in {tracking.redact(uri)}")
    if args.by_config:
        return report_by_config(title, rows, args.csv)
    rows.sort(key=lambda row: sort_key(row, args.sort, args.ascending))
    print(f"{title}: {len(rows)} runs, sorted by {args.sort}")
    print(table(rows))
    if args.csv:
        with advising("--csv"):
            write_csv(args.csv, COLUMNS, ({**r, "test_acc": r["final_test_acc"]} for r in rows))
        print(f"table: {args.csv}")
    from mnistlab.plots import sweep_summary

    top = [r for r in rows if r["val_curve"]][: args.top]
    curves = {r["name"]: r["val_curve"] for r in top}
    metric = args.sort if args.sort in rows[0] else "best_val_acc"
    with advising("--figure"):
        sweep_summary(rows, varying(rows), args.figure, metric=metric, curves=curves)
    print(f"figure: {args.figure}")


if __name__ == "__main__":
    main()
