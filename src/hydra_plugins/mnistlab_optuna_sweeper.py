"""mnistlab's Optuna sweeper for Hydra: `-m hparams_search=optuna` (hydra/sweeper=mnistlab_optuna).

Persistent studies (SQLite beside the MLflow store, or any RDB URL), one per fixed config, per-epoch
pruning from the trials' own processes, results on the MLflow parent run; trial N is job N. The
search space follows hydra-optuna-sweeper 1.3 (`_impl.py`, MIT, facebookresearch/hydra)
in `hydra.sweeper.params` and on the command line: `interval(a, b)` a float (int if both ends are)
uniform, `tag(log, interval(...))` its log form, `choice(...)` or `a,b,c` categorical, `range(a, b
[, step])` stepped, `shuffle(range(...))` categorical, a plain value fixed. One module: Hydra
imports every module of a plugin in every run.
"""

import logging
import math
import sys
import warnings
from collections import Counter
from dataclasses import dataclass, field
from enum import Enum
from itertools import groupby
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override, Transformer
from hydra.core.plugins import Plugins
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, read_write

from mnistlab import tracking
from mnistlab.errors import UserError
from mnistlab.files import advising, write_text

log = logging.getLogger(__name__)


# The sweeper's config (`hydra.sweeper.*`), registered as hydra/sweeper=mnistlab_optuna.
class Direction(Enum):  # of the objective: a trial's best val accuracy
    maximize = 1
    minimize = 2


@dataclass
class Warmup:  # when the median pruner starts to prune
    trials: int = 1  # trials of the study that must finish before any is pruned
    epochs: int = 1  # epochs every trial runs before it can be pruned


@dataclass
class MnistlabOptunaSweeperConf:
    """hydra.sweeper for mnistlab's Optuna search."""

    _target_: str = "hydra_plugins.mnistlab_optuna_sweeper.MnistlabOptunaSweeper"
    _recursive_: bool = False  # the sweeper instantiates the sampler itself (its seed moves on)
    direction: Direction = Direction.maximize
    study_name: Any = None  # None: mnistlab-<digest of the fixed config> (search.fixed_config)
    storage: Any = None  # None: sqlite optuna.db beside the MLflow store
    n_trials: int = 20
    n_jobs: int = 1
    sampler: Any = field(
        default_factory=lambda: {"_target_": "optuna.samplers.TPESampler", "seed": None}
    )
    pruner: str = "median"  # none, median or hyperband (search.make_pruner)
    warmup: Warmup = field(default_factory=Warmup)
    params: Any = None


ConfigStore.instance().store(
    group="hydra/sweeper", name="mnistlab_optuna", node=MnistlabOptunaSweeperConf,
    provider="mnistlab",
)  # fmt: skip


def distribution(override: Override) -> Any:
    """The Optuna distribution of one sweep override (None for a plain value)."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    if not override.is_sweep_override():
        return None
    value = override.value()
    if override.is_choice_sweep() or (override.is_range_sweep() and value.shuffle):
        return CategoricalDistribution(list(override.sweep_iterator(Transformer.encode)))
    if override.is_range_sweep():
        ints = all(isinstance(v, int) for v in (value.start, value.stop, value.step))
        kind = IntDistribution if ints else FloatDistribution
        return kind(value.start, value.stop, step=value.step)
    if override.is_interval_sweep():
        ints = isinstance(value.start, int) and isinstance(value.end, int)
        kind = IntDistribution if ints else FloatDistribution
        return kind(value.start, value.end, log="log" in value.tags)
    raise UserError(f"{override.input_line}: Optuna takes interval, choice or range sweeps")


def search_space(arguments: list[str]) -> tuple[dict[str, Any], dict[str, str]]:
    """(distributions by key, fixed values by key) of `hydra.sweeper.params` and the command
    line's overrides; a bad one raises UserError naming it."""
    try:
        parsed = OverridesParser.create().parse_overrides(arguments)
        space, fixed = {}, {}
        for override in parsed:
            key, dist = override.get_key_element(), distribution(override)
            if dist is None:  # a plain value on the command line replaces a searched one
                fixed[key] = override.get_value_element_as_str()
                space.pop(key, None)
            else:
                space[key] = dist
                fixed.pop(key, None)
        return space, fixed
    except Exception as err:  # Hydra's grammar, a sweep Optuna lacks or a distribution it refuses
        raise UserError(f"hydra.sweeper.params: {str(err).splitlines()[0]}") from None


class MnistlabOptunaSweeper(Sweeper):
    """Hydra sweeper over a persistent Optuna study (config: `MnistlabOptunaSweeperConf`)."""

    def __init__(self, **settings: Any) -> None:
        self.settings = OmegaConf.create(settings)
        self.config, self.context, self.launcher = None, None, None  # set by setup

    def setup(
        self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig
    ) -> None:
        """Keep the config and instantiate the launcher that runs the trials."""
        self.config, self.context = config, hydra_context
        self.launcher = Plugins.instance().instantiate_launcher(
            config=config, hydra_context=hydra_context, task_function=task_function
        )

    def sweep(self, arguments: list[str]) -> None:
        """Run `n_trials` more trials, `n_jobs` at a time; one line and exit 2 for a bad setting."""
        try:
            study, space, fixed = self.open_study(arguments)
        except UserError as err:
            print(f"Error: {err}", file=sys.stderr)
            raise SystemExit(2) from None
        done: list[int] = []
        to_go = int(self.settings.n_trials)
        while to_go > 0:
            batch = [study.ask(space) for _ in range(min(to_go, max(1, self.settings.n_jobs)))]
            done += self.run_batch(study, batch, fixed)
            to_go -= len(batch)
        report(study, done, self.config, self.settings)

    def open_study(self, arguments: list[str]) -> tuple[Any, dict[str, Any], dict[str, str]]:
        """The study of this search's fixed config (created, or loaded to continue it), its
        search space and fixed values; a trial left RUNNING by a killed search is failed first."""
        import optuna

        from mnistlab import search  # loaded by searches only: Hydra imports this in every run

        params = self.settings.params or {}
        space, fixed = search_space([f"{k}={v}" for k, v in params.items()] + list(arguments))
        overrides = [f"{k}={v}" for k, v in fixed.items()]  # a trial's config, but its params
        job_cfg = self.context.config_loader.load_sweep_config(self.config, overrides)
        direction = str(getattr(self.settings.direction, "name", self.settings.direction))
        state, name = search.fixed_config(job_cfg, list(space), direction)
        name = str(self.settings.study_name or name)
        url = search.study_storage(self.settings.storage, job_cfg)
        study = optuna.create_study(
            storage=search.open_storage(url), study_name=name, direction=direction,
            pruner=search.make_pruner(self.settings, self.config.epochs), load_if_exists=True,
        )  # fmt: skip
        search.check_fixed(study, state)
        if not self.settings.study_name:  # the trials' jobs open the study by name
            with read_write(self.config):
                self.config.hydra.overrides.hydra.append(f"hydra.sweeper.study_name={name}")
        for dead in study.get_trials(states=(optuna.trial.TrialState.RUNNING,)):
            log.warning(f"Optuna trial {dead.number} was left running by an earlier search "
                        "that stopped: FAIL")  # fmt: skip
            study.tell(dead.number, state=optuna.trial.TrialState.FAIL)
        before, n = len(study.get_trials(deepcopy=False)), self.settings.n_trials
        study.sampler = self.make_sampler(before) or study.sampler
        log.info(f"Optuna study {name} in {tracking.redact(url)}: {before} trials so far, {n} to "
                 f"run; {type(study.sampler).__name__} searching {sorted(space)}")  # fmt: skip
        return study, space, fixed

    def make_sampler(self, trials_so_far: int) -> Any:
        """`hydra.sweeper.sampler`, its seed moved on by the trials the study holds: a continued
        study proposes new values (the same seed would propose its first trials again)."""
        sampler = self.settings.sampler
        if sampler is None or sampler.get("seed") is None:
            return sampler and instantiate(sampler)
        return instantiate(sampler, seed=int(sampler.seed) + trials_so_far)

    def run_batch(self, study: Any, trials: list, fixed: dict[str, str]) -> list[int]:
        """Launch the trials (trial N as job N), tell Optuna how each ended; Ctrl-C fails them."""
        import optuna

        try:
            returns = []
            for first, group in contiguous(trials):
                overrides = [
                    tuple(f"{k}={v}" for k, v in {**t.params, **fixed}.items()) for t in group
                ]
                returns += self.launcher.launch(overrides, initial_job_idx=first)
            for trial, ret in zip(trials, returns, strict=True):
                state, value = outcome(study, trial, ret)
                study.tell(trial, state=state, values=value)
        except BaseException:
            running = {t.number for t in study.get_trials(
                deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))}  # fmt: skip
            for trial in trials:
                if trial.number in running:
                    study.tell(trial, state=optuna.trial.TrialState.FAIL)
            raise
        return [t.number for t in trials]


def contiguous(trials: list) -> list[tuple[int, list]]:
    """The trials in runs of consecutive numbers, each with its first number (a job's number is
    its trial's; another search of the same study may have taken numbers in between)."""
    runs = groupby(enumerate(trials), key=lambda pair: pair[1].number - pair[0])
    return [(group[0].number, group) for group in ([t for _, t in run] for _, run in runs)]


def outcome(study: Any, trial: Any, ret: Any) -> tuple[Any, float | None]:
    """(state, value) of a launched trial: PRUNED if its job said so, FAIL if the job raised or
    answered NaN (a failed or diverged run), else COMPLETE with its best val accuracy."""
    from optuna.trial import TrialState

    from mnistlab.search import PRUNED_ATTR

    now = next(t for t in study.get_trials(deepcopy=False) if t.number == trial.number)
    if PRUNED_ATTR in now.user_attrs:
        return TrialState.PRUNED, None
    try:
        value = float(ret.return_value)
    except Exception as err:  # the job raised: JobReturn re-raises it here
        log.warning(f"Optuna trial {trial.number} failed: {type(err).__name__}: {err}")
        return TrialState.FAIL, None
    if not math.isfinite(value):
        log.warning(f"Optuna trial {trial.number} failed (its job answered {value})")
        return TrialState.FAIL, None
    return TrialState.COMPLETE, value


def report(study: Any, numbers: list[int], config: DictConfig, settings: DictConfig) -> None:
    """Log this search's trial counts; write the study's best trial (optuna/best_params.yaml in
    the sweep dir) and Optuna's plots; attach them all to the MLflow parent run if there is one."""
    folder = Path(str(config.hydra.sweep.dir)).resolve() / "optuna"  # made by its first write
    trials = study.get_trials(deepcopy=False)
    ours = Counter(t.state.name for t in trials if t.number in numbers)
    counts = {"complete": ours["COMPLETE"], "pruned": ours["PRUNED"], "failed": ours["FAIL"]}
    log.info(f"Optuna search: {counts['complete']} completed, {counts['pruned']} pruned, "
             f"{counts['failed']} failed; the study now holds {len(trials)} trials")  # fmt: skip
    with advising("hydra.sweep.dir"):
        files = [write_best(study, folder)] + draw_plots(study, folder)
    client, parent = tracking.STATE.client, tracking.STATE.parent_run_id
    if client is None or parent is None:
        return
    tags = {f"optuna.n_{k}": str(v) for k, v in counts.items()}
    tags.update({"optuna.study": study.study_name, "optuna.n_study_trials": str(len(trials))})
    for key, value in tags.items():
        client.set_tag(parent, key, value)
    for path in filter(None, files):  # no best_params.yaml without a completed trial
        client.log_artifact(parent, str(path))


def write_best(study: Any, folder: Path) -> Path | None:
    """best_params.yaml: the study's best trial (number, value, params, MLflow run id)."""
    from mnistlab.search import RUN_ATTR

    try:
        best = study.best_trial
    except ValueError:  # no trial completed yet
        log.warning("Optuna study has no completed trial: no best_params.yaml")
        return None
    best_info = {"study": study.study_name, "trial": best.number, "value": best.value,
                 "params": dict(best.params), "run_id": best.user_attrs.get(RUN_ATTR)}  # fmt: skip
    path = folder / "best_params.yaml"
    write_text(path, OmegaConf.to_yaml(OmegaConf.create(best_info)))
    log.info(f"Optuna best trial {best.number}: value {best.value:.4f}, params {best.params}")
    return path


def draw_plots(study: Any, folder: Path) -> list[Path]:
    """optimization_history.png and param_importances.png (the latter needs two completed
    trials and a parameter that varied); a plot Optuna cannot draw is skipped with a warning."""
    import optuna.visualization.matplotlib as ovm

    from mnistlab.plots import save  # the Agg backend: files only

    drawn = []
    for name, plot in (
        ("optimization_history", ovm.plot_optimization_history),
        ("param_importances", ovm.plot_param_importances),
    ):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # Optuna's "experimental" warning
                axes = plot(study)
            figure = axes.figure if hasattr(axes, "figure") else axes.flat[0].figure
            figure.set_size_inches(8, 5)
            figure.tight_layout()
            save(figure, folder / f"{name}.png")
            drawn.append(folder / f"{name}.png")
        except Exception as err:  # too few trials for importances, say
            log.warning(f"Optuna's {name} plot skipped: {type(err).__name__}: {err}")
    return drawn
