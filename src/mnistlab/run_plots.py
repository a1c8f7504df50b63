"""The plots of a trained model on its test split: learning curves, confusion matrix, per-class
accuracy and the most confident mistakes."""

from pathlib import Path

import torch

from mnistlab import plots
from mnistlab.loop import Predictions, evaluate


def confusion(labels: torch.Tensor, preds: torch.Tensor, n: int) -> tuple[torch.Tensor, list]:
    """The confusion matrix (rows: true, columns: predicted) and per-class accuracy."""
    matrix = torch.bincount(labels * n + preds, minlength=n * n).view(n, n).cpu()
    return matrix, (matrix.diag().float() / matrix.sum(dim=1).clamp(min=1)).tolist()


def draw_run_plots(
    model, data, history: dict, folder: Path, tested: Predictions | None = None, mistakes: int = 24
) -> list[Path]:
    """The four plots of a run, from the per-epoch `history` ({key: [(epoch, value)]}) and the
    model's predictions on the test split: `tested`, from its last evaluation, else made here."""
    folder.mkdir(parents=True, exist_ok=True)
    if tested is None:
        tested = evaluate(model, data, data.test, 1000, predict=True)["predictions"]
    labels, confidence, preds = tested.labels, tested.confidence, tested.predicted
    matrix, per_class = confusion(labels, preds, data.num_classes)
    wrong = (preds != labels).nonzero().flatten()
    worst = wrong[confidence[wrong].argsort(descending=True)[:mistakes]]
    paths = [folder / name for name in ("learning_curves.png", "confusion_matrix.png",
             "per_class_accuracy.png", "misclassified.png")]  # fmt: skip
    acc = matrix.diag().sum().item() / max(1, matrix.sum().item())
    plots.learning_curves(history, paths[0])
    plots.confusion_matrix(matrix, data.classes, paths[1], f"test accuracy {acc:.4f}")
    plots.per_class_accuracy(per_class, data.classes, paths[2])
    plots.misclassified_grid(
        data.test.images[worst].cpu().numpy(), labels[worst].tolist(), preds[worst].tolist(),
        confidence[worst].tolist(), data.classes, paths[3],
    )  # fmt: skip
    return paths
