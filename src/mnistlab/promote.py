"""`mnistlab promote SOURCE --name NAME [--alias ALIAS] [--weights last|best] [--tracking-uri URI]`

Registers the MLflow model of a run in the Model Registry as a new version of NAME and points
ALIAS (e.g. champion) at it. SOURCE is a sweep's parent run id (its best child is promoted: the
best seed of the config with the best mean val accuracy) or a run id. The version's tags say
which run won and on which metric, the weights (--weights: last, the run's MLflow model, or best,
its best.pth logged as MLflow model "model_best") and their epoch and metric value.
Then `python -m mnistlab.evaluate models:/NAME@ALIAS` and `python -m mnistlab.predict` load it.
"""

import argparse

from mnistlab import tracking
from mnistlab.cli import one_line_errors


@one_line_errors
def main(argv: list[str] | None = None) -> None:
    """Promote, and print what was registered; bad input gets one line and exit code 2."""
    parser = argparse.ArgumentParser(prog="mnistlab promote", description=__doc__)
    parser.add_argument("source", help="a sweep's parent run id (its best child) or a run id")
    parser.add_argument("--name", required=True, help="registered model name, e.g. mnist-mlp")
    parser.add_argument("--alias", default=None, help="alias to point at the new version")
    parser.add_argument("--tracking-uri", default=None, help="MLflow store (default as train)")
    parser.add_argument("--weights", choices=["last", "best"], default="last",
                        help="the run's last weights (its MLflow model, as evaluate takes a run) "
                        "or its best epoch's (best.pth)")  # fmt: skip
    args = parser.parse_args(argv)
    done = tracking.promote(args.source, args.name, args.alias, args.tracking_uri, args.weights)
    tags = done.tags
    print(f"registered {done.name} version {done.version} from run {done.run_id}: its "
          f"{args.weights} weights, epoch {tags['mnistlab.epoch']} "
          f"({tags['mnistlab.metric']} {float(tags['mnistlab.metric_value']):.4f})")  # fmt: skip
    if done.alias:
        print(f"alias {done.alias} -> version {done.version}: "
              f"mnistlab evaluate models:/{done.name}@{done.alias}")  # fmt: skip


if __name__ == "__main__":
    main()
