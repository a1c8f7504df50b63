"""`mnistlab COMMAND [ARGS ...]` (or `python -m mnistlab`): each command a module of the package,
imported as such (no train.py in the working folder stands in); train is `python -m train`."""

import importlib
import sys

COMMANDS = {  # each mnistlab.COMMAND's main() (train's: mnistlab.cli), which reads the line
    "train": "train a model and record the run in MLflow; -m: a sweep (as python -m train)",
    "evaluate": "test a trained model: accuracy, per-class accuracy, a confusion matrix",
    "predict": "classify image files with a trained model",
    "report": "compare runs, or a sweep's jobs: a table, a CSV, a figure",
    "promote": "register a run's model (a sweep's best) in MLflow's Model Registry",
}


def main() -> None:
    """Run COMMAND with the rest of the command line; alone or with --help, list the commands."""
    name = sys.argv.pop(1) if len(sys.argv) > 1 else "--help"
    if name in COMMANDS:
        return importlib.import_module(f"mnistlab.{'cli' if name == 'train' else name}").main()
    if name not in ("-h", "--help"):
        print(f"Error: {name} is not a command of mnistlab: use one of {', '.join(COMMANDS)}",
              file=sys.stderr)  # fmt: skip
        sys.exit(2)
    print("usage: mnistlab COMMAND [ARGS ...]   (mnistlab COMMAND --help: its own help)\n")
    print("\n".join(f"  {command:<9} {what}" for command, what in COMMANDS.items()))


if __name__ == "__main__":
    main()
