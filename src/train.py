"""`python -m train [key=value ...]`: compose the run config with Hydra, then train it.

Torch and MLflow are imported only once training starts, so `--help` and `--cfg job` answer fast.
"""

import sys

import hydra
from omegaconf import DictConfig

from mnistlab.config import CONF_DIR, ConfigError, register

register()


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="config")
def main(cfg: DictConfig) -> float:
    """Train one run and return its best val accuracy (the objective a sweeper maximises)."""
    from mnistlab.engine import train

    try:
        return train(cfg)
    except ConfigError as err:  # a setup mistake: one line, no traceback, nothing logged to MLflow
        print(f"Error: {err}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
