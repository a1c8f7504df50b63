"""Figures, drawn with matplotlib's Agg backend (no display needed), each written atomically,
and a trained model's four plots on its test split (`draw_run_plots`)."""

import math
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
import torch

from mnistlab.files import atomic_write
from mnistlab.loop import evaluate
from mnistlab.options import Amp

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402


def save(fig: Any, path: Path, dpi: int = 100) -> None:
    """Write `fig` to `path` (its format from the suffix; PNG if none) atomically; close it."""
    try:
        atomic_write(path, lambda f: fig.savefig(f, format=path.suffix[1:] or "png", dpi=dpi))
    finally:
        plt.close(fig)


def _as_number(value: str) -> float | None:
    try:
        return float(value)
    except ValueError:
        return None


def sweep_summary(
    rows: list[dict[str, Any]],
    swept: list[str],
    path: Path,
    metric: str = "best_val_acc",
    curves: dict[str, list[tuple[int, float]]] | None = None,
) -> None:
    """`metric` of each run against each swept hyperparameter, one panel per key, and, if
    given, a last panel with the val-acc curves of the top runs (label: [(epoch, acc)])."""
    keys = swept or ["job_num"]
    panels = len(keys) + (1 if curves else 0)
    fig, axes = plt.subplots(1, panels, figsize=(4.5 * panels, 3.6), squeeze=False)
    for ax, key in zip(axes[0], keys, strict=False):
        values = [str(r["params"].get(key, r.get(key, ""))) for r in rows]
        numbers = [_as_number(v) for v in values]
        if all(n is not None for n in numbers) and len(set(values)) > 1:  # numeric
            xs = numbers
            if all(n > 0 for n in numbers) and max(numbers) / min(numbers) >= 10:
                ax.set_xscale("log")
        else:
            categories = sorted(set(values))
            xs = [categories.index(v) for v in values]
            ax.set_xticks(range(len(categories)), categories, rotation=30, ha="right")
        for x, row in zip(xs, rows, strict=True):
            value = row.get(metric, float("nan"))
            if row["status"] == "FINISHED" and not math.isnan(value):
                ax.scatter(x, value, color="tab:blue", zorder=3)
            else:
                ax.axvline(x, color="tab:red", alpha=0.4, linestyle="--")
        ax.set_xlabel(key)
        ax.set_ylabel(metric.replace("_", " "))
        ax.grid(alpha=0.3)
    if curves:
        ax = axes[0][-1]
        for label, points in curves.items():
            ax.plot([e for e, _ in points], [v for _, v in points], "-o", ms=3, label=label)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel("val acc")
        ax.set_title(f"val acc of the top {len(curves)}", fontsize=9)
        ax.legend(fontsize=6)
        ax.grid(alpha=0.3)
    failed = sum(r["status"] != "FINISHED" for r in rows)
    title = f"{len(rows)} runs" + (f", {failed} not finished (red dashes)" if failed else "")
    fig.suptitle(title)
    fig.tight_layout()
    save(fig, path)


def confusion_matrix(matrix: Any, classes: list[str], path: Path, title: str = "") -> None:
    """A confusion matrix (rows: true class, columns: predicted) with counts in the cells."""
    counts = [[int(v) for v in row] for row in matrix.tolist()]
    n = len(classes)
    fig, ax = plt.subplots(figsize=(1.0 + 0.6 * n, 0.8 + 0.6 * n))
    ax.imshow(counts, cmap="Blues")
    ax.set_xticks(range(n), classes, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(n), classes, fontsize=8)
    top = max(max(row) for row in counts) or 1
    for i, row in enumerate(counts):
        for j, count in enumerate(row):
            color = "white" if count > top / 2 else "black"
            ax.text(j, i, str(count), ha="center", va="center", fontsize=7, color=color)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    save(fig, path)


def learning_curves(history: dict[str, list[tuple[int, float]]], path: Path) -> None:
    """Loss and accuracy by epoch for the train, val and test splits."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for ax, metric in zip(axes, ("loss", "acc"), strict=True):
        for split, style in (("train", "-o"), ("val", "-s"), ("test", "-^")):
            if points := history.get(f"{split}/{metric}"):
                ax.plot([s for s, _ in points], [v for _, v in points], style, label=split, ms=4)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
        ax.legend()
    axes[0].set_title("cross-entropy loss")
    axes[1].set_title("accuracy")
    fig.tight_layout()
    save(fig, path)


def per_class_accuracy(accuracies: list[float], classes: list[str], path: Path) -> None:
    """A bar per class: the share of its test images classified correctly."""
    fig, ax = plt.subplots(figsize=(max(5.0, 0.7 * len(classes)), 3.6))
    bars = ax.bar(range(len(classes)), accuracies, color="tab:blue")
    ax.bar_label(bars, labels=[f"{a:.3f}" for a in accuracies], fontsize=7)
    ax.set_xticks(range(len(classes)), classes, rotation=30, ha="right", fontsize=8)
    low = min(accuracies)
    ax.set_ylim(max(0.0, low - (1 - low) * 0.5 - 0.01), 1.0)
    ax.set_ylabel("test accuracy")
    ax.set_title("per-class accuracy on the test split")
    fig.tight_layout()
    save(fig, path)


def misclassified_grid(
    images: Any, true: list[int], predicted: list[int], confidence: list[float],
    classes: list[str], path: Path,
) -> None:  # fmt: skip
    """The most confidently misclassified test images (uint8, N x H x W or N x 1|3 x H x W) with
    their true and predicted labels, tiled in one axes (not one per image: several times faster)."""
    tiles = np.asarray(images)
    if tiles.ndim == 4:  # N x C x H x W -> N x H x W (x 3)
        tiles = tiles.transpose(0, 2, 3, 1)
        tiles = tiles[..., 0] if tiles.shape[-1] == 1 else tiles
    n = len(true)
    cols, rows = min(8, max(n, 1)), max(1, -(-n // 8))
    h, w = tiles.shape[1:3] if n else (28, 28)
    pad = max(2, w // 8)  # white space around each image
    band = max(h // 2, (w + pad) // 4) + 2  # room for two lines of labels above each image
    canvas = np.full((rows * (band + h + pad) + pad, cols * (w + pad) + pad, *tiles.shape[3:]), 255,
                     dtype=np.uint8)  # fmt: skip
    height = 1.4 * cols * canvas.shape[0] / canvas.shape[1] + 0.4  # inches: picture, title
    fig, ax = plt.subplots(figsize=(max(1.4 * cols, 3.6), height))
    for k in range(n):
        y, x = (k // cols) * (band + h + pad) + band, (k % cols) * (w + pad) + pad
        canvas[y : y + h, x : x + w] = tiles[k]
        label = f"true {classes[true[k]]}\npred {classes[predicted[k]]} ({confidence[k]:.2f})"
        ax.text(x + w / 2, y - 1, label, ha="center", va="bottom", fontsize=7)
    ax.imshow(canvas, cmap="gray", vmin=0, vmax=255, interpolation="nearest")
    ax.axis("off")
    fig.suptitle("most confident mistakes on the test split", fontsize=10)
    fig.subplots_adjust(left=0, right=1, bottom=0, top=1 - 0.4 / height)
    save(fig, path)


def confusion(labels: torch.Tensor, preds: torch.Tensor, n: int) -> tuple[torch.Tensor, list]:
    """The confusion matrix (rows: true, columns: predicted) and per-class accuracy."""
    matrix = torch.bincount(labels * n + preds, minlength=n * n).view(n, n).cpu()
    return matrix, (matrix.diag().float() / matrix.sum(dim=1).clamp(min=1)).tolist()


def draw_run_plots(
    model, data, history: dict, folder: Path, amp: Amp = Amp.none, mistakes: int = 24
) -> list[Path]:
    """The four plots of a run, from the per-epoch `history` ({key: [(epoch, value)]}) and the
    model's predictions on the test split (under `amp`, as its epochs evaluated it)."""
    folder.mkdir(parents=True, exist_ok=True)
    tested = evaluate(model, data, data.test, 1000, amp, predict=True)["predictions"]
    labels, confidence, preds = tested.labels, tested.confidence, tested.predicted
    matrix, per_class = confusion(labels, preds, data.num_classes)
    wrong = (preds != labels).nonzero().flatten()
    worst = wrong[confidence[wrong].argsort(descending=True)[:mistakes]]
    paths = [folder / name for name in ("learning_curves.png", "confusion_matrix.png",
             "per_class_accuracy.png", "misclassified.png")]  # fmt: skip
    acc = matrix.diag().sum().item() / max(1, matrix.sum().item())
    learning_curves(history, paths[0])
    confusion_matrix(matrix, data.classes, paths[1], f"test accuracy {acc:.4f}")
    per_class_accuracy(per_class, data.classes, paths[2])
    misclassified_grid(
        data.test.images[worst].cpu().numpy(), labels[worst].tolist(), preds[worst].tolist(),
        confidence[worst].tolist(), data.classes, paths[3],
    )  # fmt: skip
    return paths
