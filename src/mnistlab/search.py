"""The search's Optuna trials seen from both sides: the study's storage, pruner and fixed config,
which the search (`hydra_plugins.mnistlab_optuna_sweeper`, in the launching process) and each
trial's job (in-process, joblib worker, submitit job, Ray task) open alike, and the job's
`TrialReporter`, which reports the val accuracy after every epoch through the shared storage and
says when the pruner stops the trial. A job of mnistlab's Optuna sweeper is trial N for job N.
"""

import hashlib
import json
import logging
from typing import Any

from omegaconf import DictConfig, OmegaConf

from mnistlab.config import launch_dir
from mnistlab.errors import UserError
from mnistlab.tracking import redact, sqlite_path, tracking_uri

log = logging.getLogger(__name__)

SWEEPER = "hydra_plugins.mnistlab_optuna_sweeper.MnistlabOptunaSweeper"
PRUNED_ATTR = "pruned_epoch"  # set on a trial by its job when the pruner stops it
RUN_ATTR = "mlflow_run_id"  # set on a trial by its job: the MLflow run recording it
FIXED_ATTR = "fixed_config"  # set on a study: the fixed part of the config its trials train
UNTRAINED = ("mlflow", "sweep_name", "resume", "force", "checkpoint", "train.plots",
             "train.log_every", "train.profile", "data.root", "data.cache_dir")  # fmt: skip


def fixed_config(cfg: DictConfig, swept: list[str], direction: str) -> tuple[dict, str]:
    """(the fixed part of a search's config, flat: less the searched keys and what does not change
    training, with the direction; the study's default name, `mnistlab-<its digest>`)."""

    def flat(node: Any, key: str) -> dict[str, Any]:
        if not isinstance(node, dict):
            return {key[1:]: node}
        return {k: v for name, sub in node.items() for k, v in flat(sub, f"{key}.{name}").items()}

    tree = OmegaConf.to_container(cfg, enum_to_str=True)  # as written: ${lr}, not its value
    drop = ("hydra", *UNTRAINED, *(k.lstrip("+~") for k in swept))
    kept = {k: v for k, v in flat(tree, "").items()
            if not any(k == d or k.startswith(d + ".") for d in drop)}  # fmt: skip
    text = json.dumps({**kept, "hydra.sweeper.direction": direction}, sort_keys=True, default=str)
    return json.loads(text), f"mnistlab-{hashlib.sha256(text.encode()).hexdigest()[:10]}"


def check_fixed(study: Any, fixed: dict[str, Any]) -> None:
    """Record the fixed config on a study new to it; refuse one that searched another."""
    if (old := study.user_attrs.get(FIXED_ATTR)) is None:
        return study.set_user_attr(FIXED_ATTR, fixed)
    diff = [f"{k}={fixed.get(k, '<unset>')} here, {old.get(k, '<unset>')} there"
            for k in sorted({*old, *fixed}) if old.get(k, ()) != fixed.get(k, ())]  # fmt: skip
    if diff:
        raise UserError(
            f"hydra.sweeper.study_name={study.study_name}: that study searched another fixed "
            f"config ({'; '.join(diff[:3])}{'; ...' if diff[3:] else ''}); drop "
            "hydra.sweeper.study_name for this config's own study, or name a new one"
        )


def study_storage(storage: str | None, cfg: DictConfig) -> str:
    """`hydra.sweeper.storage`, else optuna.db beside a SQLite MLflow store, else in launch dir."""
    if storage:
        return str(storage)
    db = sqlite_path(tracking_uri(cfg))
    folder = db.parent if db is not None else launch_dir()
    folder.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{folder / 'optuna.db'}"


def open_storage(url: str) -> Any:
    """Optuna's RDB storage at `url`; SQLite waits up to a minute for a parallel trial's write."""
    import optuna

    kwargs = {"connect_args": {"timeout": 60}} if url.startswith("sqlite:///") else {}
    try:
        return optuna.storages.RDBStorage(url, engine_kwargs=kwargs)
    except Exception as err:  # a bad URL, a missing driver, a server that does not answer
        raise UserError(
            f"hydra.sweeper.storage={redact(url)}: cannot open the Optuna storage "
            f"({type(err).__name__}: {str(err).splitlines()[0][:200]}); point it at a database"
        ) from None


def make_pruner(sweeper: Any, epochs: int) -> Any:
    """The pruner `hydra.sweeper.pruner` names: none, median (after `warmup`), or hyperband."""
    import optuna

    kind = str(getattr(sweeper.pruner, "name", sweeper.pruner)).lower()
    if kind == "none":
        return optuna.pruners.NopPruner()
    if kind == "median":
        return optuna.pruners.MedianPruner(
            n_startup_trials=int(sweeper.warmup.trials), n_warmup_steps=int(sweeper.warmup.epochs)
        )
    if kind == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=max(1, int(epochs)))
    raise UserError(f"hydra.sweeper.pruner={kind}: use none, median or hyperband")


class TrialReporter:
    """Reports a trial's val accuracy after each epoch; `report` says whether to stop now."""

    def __init__(self, trial: Any, epochs: int) -> None:
        self.trial, self.epochs, self.number = trial, epochs, trial.number

    def report(self, epoch: int, val_acc: float) -> bool:
        """Record `val_acc` as the trial's value at step `epoch`; True if the pruner stops the
        trial here (never at its last epoch, where stopping saves nothing)."""
        self.trial.report(float(val_acc), epoch)
        if epoch >= self.epochs or not self.trial.should_prune():
            return False
        self.trial.set_user_attr(PRUNED_ATTR, epoch)
        return True


def trial_reporter(cfg: DictConfig, tracker: Any) -> TrialReporter | None:
    """This job's reporter if it runs an Optuna trial of mnistlab's sweeper, else None. Tags the
    run with the trial, and records the run id on the trial."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized() or tracker.run_id is None:
        return None
    hc = HydraConfig.get()
    sweeper = hc.sweeper
    if sweeper.get("_target_") != SWEEPER:
        return None
    import optuna

    storage = open_storage(study_storage(sweeper.storage, cfg))
    pruner = make_pruner(sweeper, cfg.epochs)
    study = optuna.load_study(study_name=str(sweeper.study_name), storage=storage, pruner=pruner)
    number = int(hc.job.num)
    found = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
    frozen = next((t for t in found if t.number == number), None)
    if frozen is None:
        log.warning(f"Optuna trial {number} of study {study.study_name} is not running: "
                    "its epochs are not reported")  # fmt: skip
        return None
    trial = optuna.trial.Trial(study, frozen._trial_id)
    trial.set_user_attr(RUN_ATTR, tracker.run_id)
    tracker.log_tags({"optuna.trial_number": str(number), "optuna.study": study.study_name})
    return TrialReporter(trial, int(cfg.epochs))
