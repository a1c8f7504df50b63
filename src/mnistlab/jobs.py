"""The jobs of a Hydra multirun (`-m`) command line, expanded before Hydra starts.

`sweep_jobs` gives the override list of every job Hydra's basic sweeper would launch: same jobs,
same order, same strings. It follows Hydra 1.3's `Hydra.multirun` and `BasicSweeper.sweep` step
by step, with Hydra's own code wherever it can: a real `ConfigLoaderImpl` composes the primary
config in MULTIRUN mode (Hydra's errors, unknown keys and options), the sweeper's arguments are
its `hydra.overrides.task` after the basic sweeper's `hydra.sweeper.params`, an `OverridesParser`
holding that loader parses them (so `glob(...)` lists a group's options as Hydra's sweeper does),
and the product of their values (as `BasicSweeper.split_arguments` enumerates them) is taken
lazily, so `max_jobs` bounds the work. Errors propagate as Hydra raises them. No torch, no MLflow.
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


def _values(override: Override, max_values: int, ends: bool = False) -> list[str]:
    """The `key=value` strings of one override, in the basic sweeper's order: the first
    `max_values` of a choice or range sweep, `ends`: an interval's two ends, else BasicSweeper's
    own answer (one element, or its HydraException for a sweep it cannot enumerate)."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper

    if ends and override.is_interval_sweep():  # another sweeper's (Optuna's): values in between
        key, value = override.get_key_element(), override.value()
        return [f"{key}={value.start}", f"{key}={value.end}"]
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
    """Each job's task overrides for `python APP -m OVERRIDES` (no flags), as Hydra's basic sweeper
    runs it (composed with the command line's `hydra.*` overrides first), the sweeper chosen, and
    whether those are all the jobs (only the first `max_jobs` are built), from `config_dir`."""
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
    sweeper = str(cfg.hydra.sweeper.get("_target_", ""))
    ends = sweeper != BASIC_SWEEPER  # another sweeper's intervals: their two ends
    for override in parsed:
        by_key[override.get_key_element()] = _values(override, max_jobs + 1, ends)
    product = itertools.product(*by_key.values())  # the last override varying fastest
    jobs = [list(job) for job in itertools.islice(product, max_jobs + 1)]
    return Sweep(jobs[:max_jobs], sweeper, complete=len(jobs) <= max_jobs)
