"""Figures, drawn with matplotlib's Agg backend (no display needed)."""

import math
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def _as_number(value: str) -> float | None:
    try:
        return float(value)
    except ValueError:
        return None


def sweep_summary(rows: list[dict[str, Any]], swept: list[str], path: Path) -> None:
    """Best val accuracy of each job against each swept hyperparameter, one panel per key."""
    keys = swept or ["job_num"]
    fig, axes = plt.subplots(1, len(keys), figsize=(4.5 * len(keys), 3.6), squeeze=False)
    for ax, key in zip(axes[0], keys, strict=True):
        values = [str(r["params"].get(key, r.get(key, ""))) for r in rows]
        numbers = [_as_number(v) for v in values]
        numeric = all(n is not None for n in numbers) and len(set(values)) > 1
        if numeric:
            xs = numbers
            positive = all(n > 0 for n in numbers)
            if positive and max(numbers) / min(numbers) >= 10:
                ax.set_xscale("log")
        else:
            categories = sorted(set(values))
            xs = [categories.index(v) for v in values]
            ax.set_xticks(range(len(categories)), categories, rotation=30, ha="right")
        for x, row in zip(xs, rows, strict=True):
            ok = row["status"] == "FINISHED" and not math.isnan(row["best_val_acc"])
            if ok:
                ax.scatter(x, row["best_val_acc"], color="tab:blue", zorder=3)
            else:
                ax.axvline(x, color="tab:red", alpha=0.4, linestyle="--")
        ax.set_xlabel(key)
        ax.set_ylabel("best val acc")
        ax.grid(alpha=0.3)
    failed = sum(r["status"] != "FINISHED" for r in rows)
    title = f"{len(rows)} jobs" + (f", {failed} failed (red dashes)" if failed else "")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def confusion_matrix(matrix: Any, classes: list[str], path: Path, title: str = "") -> None:
    """A confusion matrix (rows: true class, columns: predicted) with counts in the cells."""
    counts = [[int(v) for v in row] for row in matrix.tolist()]
    n = len(classes)
    fig, ax = plt.subplots(figsize=(1.0 + 0.6 * n, 0.8 + 0.6 * n))
    ax.imshow(counts, cmap="Blues")
    ticks = range(n)
    ax.set_xticks(ticks, classes, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(ticks, classes, fontsize=8)
    top = max(max(row) for row in counts) or 1
    for i, row in enumerate(counts):
        for j, count in enumerate(row):
            color = "white" if count > top / 2 else "black"
            ax.text(j, i, str(count), ha="center", va="center", fontsize=7, color=color)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
