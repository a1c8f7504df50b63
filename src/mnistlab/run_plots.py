"""The plots of a trained model on its test split: learning curves, confusion matrix, per-class
accuracy and the most confident mistakes."""

from pathlib import Path

import torch

from mnistlab import plots


@torch.inference_mode()
def predictions(model, data, batch_size: int = 1000) -> tuple[torch.Tensor, torch.Tensor]:
    """(labels, class probabilities) over the test split."""
    model.eval()
    labels, probs = [], []
    for inputs, y in data.batches(data.test, batch_size):
        probs.append(model(inputs).float().softmax(dim=1))
        labels.append(y)
    return torch.cat(labels), torch.cat(probs)


def confusion(labels: torch.Tensor, preds: torch.Tensor, n: int) -> tuple[torch.Tensor, list]:
    """The confusion matrix (rows: true, columns: predicted) and per-class accuracy."""
    matrix = torch.bincount(labels * n + preds, minlength=n * n).view(n, n).cpu()
    return matrix, (matrix.diag().float() / matrix.sum(dim=1).clamp(min=1)).tolist()


def draw_run_plots(model, data, history: dict, folder: Path, mistakes: int = 24) -> list[Path]:
    """The four plots of a run, from the per-epoch `history` ({key: [(epoch, value)]}) and the
    model's predictions on the test split."""
    folder.mkdir(parents=True, exist_ok=True)
    labels, probs = predictions(model, data)
    confidence, preds = probs.max(dim=1)
    matrix, per_class = confusion(labels, preds, data.num_classes)
    wrong = (preds != labels).nonzero().flatten()
    worst = wrong[confidence[wrong].argsort(descending=True)[:mistakes]]
    paths = [folder / name for name in ("learning_curves.png", "confusion_matrix.png",
             "per_class_accuracy.png", "misclassified.png")]  # fmt: skip
    plots.learning_curves(history, paths[0])
    acc = matrix.diag().sum().item() / max(1, matrix.sum().item())
    plots.confusion_matrix(matrix, data.classes, paths[1], title=f"test accuracy {acc:.4f}")
    plots.per_class_accuracy(per_class, data.classes, paths[2])
    plots.misclassified_grid(
        data.test.images[worst].cpu().numpy(), labels[worst].tolist(), preds[worst].tolist(),
        confidence[worst].tolist(), data.classes, paths[3],
    )  # fmt: skip
    return paths
