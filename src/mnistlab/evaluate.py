"""`python -m mnistlab.evaluate SOURCE [log_to_mlflow=true] [data.root=...] [--output PNG]`

Evaluates a trained model on its dataset's test split. SOURCE is a checkpoint (last.pth,
best.pth or model.pth in a run's output dir), `runs:/<run_id>/model.pth`, an MLflow run id, or a
registered model (`models:/<name>@<alias>`, `models:/<name>/<version>`).
Prints test/acc and test/loss to 4 decimals and per-class accuracy, and writes a confusion-matrix
PNG; with log_to_mlflow=true it adds `eval/*` metrics and the PNG to that run.
"""

import argparse
from pathlib import Path

from omegaconf import OmegaConf

from mnistlab import plots, tracking
from mnistlab.cli import one_line_errors
from mnistlab.config import check_data_root
from mnistlab.errors import UserError
from mnistlab.files import advising
from mnistlab.inference import SOURCE_HELP, load_trained
from mnistlab.loop import evaluate
from mnistlab.parts import build_part


def evaluate_source(
    source: str, overrides: list[str], tracking_uri: str | None, output: Path | None
) -> dict:
    """Evaluate SOURCE, print the summary, write the PNG; return the metrics."""
    options = OmegaConf.from_dotlist(overrides)
    log_to_mlflow = bool(options.pop("log_to_mlflow", False))
    trained = load_trained(source, tracking_uri)
    cfg = OmegaConf.merge(trained.cfg, options)  # e.g. data.root where the data lives here
    check_data_root(cfg.data, "download" in options.get("data", {}))  # a typo creates nothing
    data = build_part(cfg.data, "data", seed=cfg.seed)
    metrics = evaluate(trained.model, data, data.test, 1000, predict=True)
    tested = metrics.pop("predictions")
    matrix, per_class = plots.confusion(tested.labels, tested.predicted, data.num_classes)

    name = f"run {trained.run_id}" if trained.run_id else source
    dataset = str(cfg.data.get("dataset", "synthetic")).rsplit(".", 1)[-1]
    print(f"{name}: {type(trained.model).__name__}, {dataset} test split ({len(data.test)} images)")
    print(f"test/acc  {metrics['acc']:.4f}\ntest/loss {metrics['loss']:.4f}\nper-class accuracy:")
    for label, acc in zip(data.classes, per_class, strict=True):
        print(f"  {label:<14} {acc:.4f}")
    png = output or Path(f"confusion_matrix_{trained.run_id or Path(source).stem}.png")
    title = f"{name}: test acc {metrics['acc']:.4f}"
    with advising("--output"):
        plots.confusion_matrix(matrix, data.classes, png, title=title)
    print(f"confusion matrix: {png}")

    if log_to_mlflow:
        if not trained.run_id:
            raise UserError(f"log_to_mlflow=true: {source} names no MLflow run to log to")
        results = {"eval/test_acc": metrics["acc"], "eval/test_loss": metrics["loss"]}
        results.update({f"eval/class_acc/{i}": acc for i, acc in enumerate(per_class)})
        tracking.log_results(trained.run_id, tracking_uri, results, [(png, "eval")])
        print(f"logged eval/* and eval/{png.name} to run {trained.run_id}")
    return {**metrics, "per_class": per_class}


@one_line_errors
def main(argv: list[str] | None = None) -> None:
    """Parse the command line and evaluate; bad input gets one line and exit code 2."""
    parser = argparse.ArgumentParser(prog="mnistlab evaluate", description=__doc__)
    parser.add_argument("source", help=SOURCE_HELP)
    parser.add_argument("overrides", nargs="*", help="log_to_mlflow=true, data.root=DIR, ...")
    parser.add_argument("--tracking-uri", default=None, help="MLflow store (default as train)")
    parser.add_argument("--output", type=Path, default=None, help="confusion-matrix PNG path")
    args = parser.parse_args(argv)
    evaluate_source(args.source, args.overrides, args.tracking_uri, args.output)


if __name__ == "__main__":
    main()
