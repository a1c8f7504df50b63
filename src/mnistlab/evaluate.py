"""`python -m mnistlab.evaluate SOURCE [log_to_mlflow=true] [data.root=...] [--output PNG]`

Evaluates a trained model on its dataset's test split. SOURCE is a checkpoint (last.pth,
best.pth or model.pth in a run's output dir), `runs:/<run_id>/model.pth`, or an MLflow run id.
Prints test/acc and test/loss to 4 decimals and per-class accuracy, and writes a confusion-matrix
PNG; with log_to_mlflow=true it adds `eval/*` metrics and the PNG to that run.
"""

import argparse
import sys
from pathlib import Path

import torch
from omegaconf import OmegaConf

from mnistlab import plots
from mnistlab.config import ConfigError
from mnistlab.engine import build, evaluate
from mnistlab.inference import load_trained


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
    """The four plots of a run: learning curves, confusion matrix, per-class accuracy and the
    most confidently misclassified test images."""
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


def run(source: str, overrides: list[str], tracking_uri: str | None, output: Path | None) -> dict:
    """Evaluate SOURCE, print the summary, write the PNG; return the metrics."""
    options = OmegaConf.from_dotlist(overrides)
    log_to_mlflow = bool(options.pop("log_to_mlflow", False))
    trained = load_trained(source, tracking_uri)
    cfg = OmegaConf.merge(trained.cfg, options)  # e.g. data.root where the data lives here
    data = build(cfg.data, seed=cfg.seed)
    metrics = evaluate(trained.model, data, data.test, 1000)
    labels, probs = predictions(trained.model, data)
    matrix, per_class = confusion(labels, probs.argmax(dim=1), data.num_classes)

    name = f"run {trained.run_id}" if trained.run_id else source
    dataset = str(cfg.data.get("dataset", "synthetic")).rsplit(".", 1)[-1]
    print(f"{name}: {type(trained.model).__name__}, {dataset} test split ({len(data.test)} images)")
    print(f"test/acc  {metrics['acc']:.4f}")
    print(f"test/loss {metrics['loss']:.4f}")
    print("per-class accuracy:")
    for label, acc in zip(data.classes, per_class, strict=True):
        print(f"  {label:<14} {acc:.4f}")
    png = output or Path(f"confusion_matrix_{trained.run_id or Path(source).stem}.png")
    plots.confusion_matrix(
        matrix, data.classes, png, title=f"{name}: test acc {metrics['acc']:.4f}"
    )
    print(f"confusion matrix: {png}")

    if log_to_mlflow:
        if not trained.run_id:
            raise ConfigError(f"log_to_mlflow=true: {source} names no MLflow run to log to")
        from mlflow import MlflowClient

        from mnistlab import tracking

        client = MlflowClient(tracking.tracking_uri(OmegaConf.create({"mlflow": {
            "tracking_uri": tracking_uri}})))  # fmt: skip
        results = {"eval/test_acc": metrics["acc"], "eval/test_loss": metrics["loss"]}
        results.update({f"eval/class_acc/{i}": acc for i, acc in enumerate(per_class)})
        for key, value in results.items():
            client.log_metric(trained.run_id, key, value)
        client.log_artifact(trained.run_id, str(png), "eval")
        print(f"logged eval/* and eval/{png.name} to run {trained.run_id}")
    return {**metrics, "per_class": per_class}


def main(argv: list[str] | None = None) -> None:
    """Parse the command line and evaluate; bad input gets one line and exit code 2."""
    parser = argparse.ArgumentParser(prog="python -m mnistlab.evaluate", description=__doc__)
    parser.add_argument("source", help="run output dir, .pth file, runs:/<id>/model.pth or run id")
    parser.add_argument("overrides", nargs="*", help="log_to_mlflow=true, data.root=DIR, ...")
    parser.add_argument("--tracking-uri", default=None, help="MLflow store (default as train)")
    parser.add_argument("--output", type=Path, default=None, help="confusion-matrix PNG path")
    args = parser.parse_args(argv)
    try:
        run(args.source, args.overrides, args.tracking_uri, args.output)
    except ConfigError as err:
        print(f"Error: {err}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
