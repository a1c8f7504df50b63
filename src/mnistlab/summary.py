"""Comparing runs like a scientist: a sweep's rows with their seeds folded into configs.

`by_config` groups the rows (`tracking.child_rows`) by their `config_digest` tag (the config
without its seed): per config, the swept values, n, mean and std of the accuracies and its best
seed's run. `best_config` has the best MEAN val accuracy; `config_figure` draws the error bars.
"""

import math
import statistics
from pathlib import Path
from typing import Any

from mnistlab.files import write_csv

STATS = ["n", "val_acc_mean", "val_acc_std", "test_acc_mean", "test_acc_std"]
TAIL = ["best_seed", "best_run_id", "config_digest"]


def _mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (n - 1); NaN where undefined."""
    if not values:
        return math.nan, math.nan
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else math.nan


def config_keys(swept: list[str]) -> list[str]:
    """The swept keys that tell configs apart: every one but the seed."""
    return [k for k in swept if k != "seed"]


def by_config(rows: list[dict[str, Any]], swept: list[str]) -> list[dict[str, Any]]:
    """One row per config digest, best mean val acc first; failed runs count in no statistic."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault(row.get("config_digest") or row["run_id"], []).append(row)
    out = []
    for digest, runs in groups.items():
        done = [r for r in runs if r["status"] == "FINISHED" and not math.isnan(r["best_val_acc"])]
        val_mean, val_std = _mean_std([r["best_val_acc"] for r in done])
        test_mean, test_std = _mean_std([r["final_test_acc"] for r in done])
        best = max(done, key=lambda r: r["best_val_acc"], default=None)
        values = {k: runs[0]["params"].get(k, "") for k in config_keys(swept)}
        out.append({**values, "n": len(done), "val_acc_mean": val_mean, "val_acc_std": val_std,
                    "test_acc_mean": test_mean, "test_acc_std": test_std,
                    "best_seed": best["params"].get("seed", "") if best else "",
                    "best_run_id": best["run_id"] if best else "", "config_digest": digest,
                    "runs": runs})  # fmt: skip
    return sorted(out, key=lambda g: (g["n"] == 0, -g["val_acc_mean"] if g["n"] else 0.0))


def best_config(groups: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The config with the best mean val accuracy (of those with a finished run)."""
    return next((g for g in groups if g["n"]), None)


def readable(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """`rows` with floats rounded to 4 decimals, for reading (MLflow keeps every digit)."""
    return [{k: round(v, 4) if isinstance(v, float) else v for k, v in r.items()} for r in rows]


def write_by_config(groups: list[dict[str, Any]], swept: list[str], path: Path) -> None:
    """The groups as CSV: swept values, n, means and stds, best seed and its run id, digest."""
    write_csv(path, [*config_keys(swept), *STATS, *TAIL], readable(groups))


def table_by_config(groups: list[dict[str, Any]], swept: list[str]) -> str:
    """The groups as an aligned text table (what `report --by-config` prints)."""
    keys = config_keys(swept)
    header = [*keys, "n", "val acc mean", "val acc std", "test acc mean", "test acc std",
              "best seed", "best run"]  # fmt: skip
    lines = [[*(str(g[k]) for k in keys), str(g["n"]), *(f"{g[k]:.4f}" for k in STATS[1:]),
              str(g["best_seed"]), g["best_run_id"]] for g in groups]  # fmt: skip
    widths = [max(len(x) for x in col) for col in zip(header, *lines, strict=True)]
    return "\n".join("  ".join(x.ljust(w) for x, w in zip(line, widths, strict=True)).rstrip()
                     for line in [header, *lines])  # fmt: skip


def config_figure(groups: list[dict[str, Any]], swept: list[str], path: Path) -> None:
    """Mean best val acc (error bars: one std over the seeds) against each swept key."""
    import matplotlib.pyplot as plt

    from mnistlab.plots import save  # the Agg backend: files only

    keys = config_keys(swept) or ["config_digest"]
    fig, axes = plt.subplots(1, len(keys), figsize=(4.5 * len(keys), 3.6), squeeze=False)
    shown = [g for g in groups if g["n"]]
    for ax, key in zip(axes[0], keys, strict=True):
        labels = sorted({str(g.get(key, "")) for g in shown}, key=_sortable)
        xs = [labels.index(str(g.get(key, ""))) for g in shown]
        ys = [g["val_acc_mean"] for g in shown]
        errs = [0.0 if math.isnan(g["val_acc_std"]) else g["val_acc_std"] for g in shown]
        ax.errorbar(xs, ys, yerr=errs, fmt="o", capsize=4, color="tab:blue", zorder=3)
        for x, g in zip(xs, shown, strict=True):
            ax.annotate(f"n={g['n']}", (x, g["val_acc_mean"]), textcoords="offset points",
                        xytext=(6, -3), fontsize=7)  # fmt: skip
        ax.set_xticks(range(len(labels)), labels, rotation=30, ha="right")
        ax.set_xlabel(key)
        ax.set_ylabel("best val acc, mean ± std over seeds")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    save(fig, path, dpi=110)


def _sortable(value: str) -> tuple[int, float, str]:
    try:
        return (0, float(value), value)
    except ValueError:
        return (1, 0.0, value)
