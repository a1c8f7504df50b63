"""The jobs of a Hydra multirun (`-m`) command line, expanded before Hydra starts.

`sweep_jobs` answers, for a list of command-line overrides, the override list of every job that
Hydra's basic sweeper would launch: same jobs, same order, same strings. It follows Hydra 1.3's
`Hydra.multirun` and `BasicSweeper.sweep` step by step, with Hydra's own code wherever it can:

1. the primary config is composed in MULTIRUN mode by a real `ConfigLoaderImpl` (Hydra's parser
   errors, "Sweeping over Hydra's configuration is not supported", unknown keys and options);
2. the sweeper's arguments are that config's `hydra.overrides.task` (the overrides that are not
   `hydra.*` / `hydra/*`), after the basic sweeper's `hydra.sweeper.params`;
3. they are parsed by an `OverridesParser` that holds the config loader, so `glob(...)` lists the
   options of its config group as Hydra's sweeper does (from the config dirs and the ConfigStore);
4. each override's values are enumerated as `BasicSweeper.split_arguments` does, and their
   cartesian product is taken, lazily, so that `max_jobs` bounds the work.

Errors propagate as Hydra raises them (OverrideParseException, ConfigCompositionException,
MissingConfigException, HydraException, ValueError, ...). No torch, no MLflow.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from hydra.core.override_parser.types import Override
    from omegaconf import DictConfig

BASIC_SWEEPER = "hydra._internal.core_plugins.basic_sweeper.BasicSweeper"  # Hydra's default
SIZE_ENV = "MNISTLAB_SWEEP_SIZE"  # in a sweep's jobs: how many jobs it has, where known


def _sweeper_params(cfg: DictConfig) -> list[str]:
    """The basic sweeper's `hydra.sweeper.params` as overrides (BasicSweeper._parse_config);
    none for another sweeper, whose params use its own grammar (e.g. Optuna's intervals)."""
    from omegaconf import OmegaConf

    sweeper = cfg.hydra.sweeper
    if sweeper.get("_target_") != BASIC_SWEEPER or sweeper.get("params") is None:
        return []
    params = OmegaConf.to_container(sweeper.params, resolve=True)
    return [f"{key}={value}" for key, value in params.items()]


def _values(override: Override, max_values: int) -> list[str]:
    """The `key=value` strings of one override, in the basic sweeper's order: the first
    `max_values` of a choice or range sweep, else BasicSweeper's own answer (one element, or
    its HydraException for a sweep it cannot enumerate, such as interval)."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper

    if override.is_sweep_override() and override.is_discrete_sweep():
        key = override.get_key_element()  # as in BasicSweeper.split_arguments
        values = itertools.islice(override.sweep_string_iterator(), max_values)
        return [f"{key}={value}" for value in values]
    return [job[0] for job in BasicSweeper.split_arguments([override], None)[0]]


@dataclass
class Sweep:
    """A multirun command line's jobs, expanded before Hydra starts."""

    jobs: list[list[str]]  # each job's task overrides, in Hydra's order (the first max_jobs)
    sweeper: str  # the composed `hydra.sweeper._target_`
    complete: bool  # whether `jobs` holds every job of the sweep


def sweep_jobs(overrides: list[str], config_dir: str, max_jobs: int = 1000) -> Sweep:
    """Each job's override list for `python APP -m OVERRIDES`, as Hydra's basic sweeper runs it,
    with the sweeper the config chose and whether those are all the jobs.

    `overrides` are the command line's overrides (no flags: `python -m train` leaves a command
    line with Hydra's flags, such as `--config-dir`, to Hydra); `config_dir` is the app's config
    dir, with `config.yaml`. The ConfigStore must hold what the configs need, as in the app.

    A job's list holds its task overrides only: Hydra composes each job with the command
    line's `hydra.*` overrides first (ConfigLoaderImpl.load_sweep_config). Only the first
    `max_jobs` jobs are built (in Hydra's order), so a huge sweep costs no more than that.
    """
    from hydra._internal.config_loader_impl import ConfigLoaderImpl
    from hydra._internal.utils import create_config_search_path
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.types import RunMode
    from omegaconf import OmegaConf

    if max_jobs < 1:
        raise ValueError(f"max_jobs must be at least 1, got {max_jobs}")
    loader = ConfigLoaderImpl(config_search_path=create_config_search_path(config_dir))
    cfg = loader.load_configuration(
        config_name="config", overrides=list(overrides), run_mode=RunMode.MULTIRUN
    )
    task = OmegaConf.to_container(cfg.hydra.overrides.task, resolve=False)  # as Hydra.multirun
    arguments = _sweeper_params(cfg) + task
    parsed = OverridesParser.create(config_loader=loader).parse_overrides(arguments)
    by_key: dict[str, list[str]] = {}  # a repeated key keeps its first place, takes the last values
    for override in parsed:
        by_key[override.get_key_element()] = _values(override, max_jobs + 1)
    product = itertools.product(*by_key.values())  # the last override varying fastest
    jobs = [list(job) for job in itertools.islice(product, max_jobs + 1)]
    sweeper = str(cfg.hydra.sweeper.get("_target_", ""))
    return Sweep(jobs[:max_jobs], sweeper, complete=len(jobs) <= max_jobs)
