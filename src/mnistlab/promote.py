"""`python -m mnistlab.promote SOURCE --name NAME [--alias ALIAS] [--tracking-uri URI]`

Registers the MLflow model of a run in the Model Registry as a new version of NAME and points
ALIAS (e.g. champion) at it. SOURCE is a sweep's parent run id (its best child is promoted: the
best seed of the config with the best mean val accuracy) or a run id. The version's tags say
which run won and on which metric (mnistlab.run_id, mnistlab.metric, mnistlab.metric_value).
Then `python -m mnistlab.evaluate models:/NAME@ALIAS` and `python -m mnistlab.predict` load it.
"""

import argparse

from mnistlab import tracking
from mnistlab.cli import one_line_errors


@one_line_errors
def main(argv: list[str] | None = None) -> None:
    """Promote, and print what was registered; bad input gets one line and exit code 2."""
    parser = argparse.ArgumentParser(prog="python -m mnistlab.promote", description=__doc__)
    parser.add_argument("source", help="a sweep's parent run id (its best child) or a run id")
    parser.add_argument("--name", required=True, help="registered model name, e.g. mnist-mlp")
    parser.add_argument("--alias", default=None, help="alias to point at the new version")
    parser.add_argument("--tracking-uri", default=None, help="MLflow store (default as train)")
    args = parser.parse_args(argv)
    done = tracking.promote(args.source, args.name, args.alias, args.tracking_uri)
    tags = done.tags
    print(f"registered {done.name} version {done.version} from run {done.run_id} "
          f"({tags['mnistlab.metric']} {float(tags['mnistlab.metric_value']):.4f})")  # fmt: skip
    if done.alias:
        print(f"alias {done.alias} -> version {done.version}: "
              f"python -m mnistlab.evaluate models:/{done.name}@{done.alias}")  # fmt: skip


if __name__ == "__main__":
    main()
