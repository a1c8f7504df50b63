"""The sweeper's config (`hydra.sweeper.*`), registered as hydra/sweeper=mnistlab_optuna."""

from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from hydra.core.config_store import ConfigStore


class Direction(Enum):
    """Whether the objective (a trial's best val accuracy) is maximised or minimised."""

    maximize = 1
    minimize = 2


class Pruner(Enum):
    """Which pruner stops hopeless trials after an epoch."""

    none = 1
    median = 2
    hyperband = 3


@dataclass
class Warmup:
    """When the median pruner starts to prune."""

    trials: int = 1  # trials of the study that must finish before any is pruned
    epochs: int = 1  # epochs every trial runs before it can be pruned


@dataclass
class MnistlabOptunaSweeperConf:
    """hydra.sweeper for mnistlab's Optuna search."""

    _target_: str = "hydra_plugins.mnistlab_optuna_sweeper.sweeper.MnistlabOptunaSweeper"
    _recursive_: bool = False  # the sweeper instantiates the sampler itself (its seed moves on)
    direction: Direction = Direction.maximize
    study_name: str = "mnistlab"
    storage: Any = None  # None: sqlite optuna.db beside the MLflow store
    n_trials: int = 20
    n_jobs: int = 1
    sampler: Any = field(
        default_factory=lambda: {"_target_": "optuna.samplers.TPESampler", "seed": None}
    )
    pruner: Pruner = Pruner.median
    warmup: Warmup = field(default_factory=Warmup)
    params: Any = None


ConfigStore.instance().store(
    group="hydra/sweeper", name="mnistlab_optuna", node=MnistlabOptunaSweeperConf,
    provider="mnistlab",
)  # fmt: skip
