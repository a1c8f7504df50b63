"""The search's Optuna trials seen from both sides: the study's storage and pruner, which the search
(`hydra_plugins.mnistlab_optuna_sweeper`, in the launching process) and each trial's job (in
whatever process its launcher runs it: in-process, joblib worker, submitit job, Ray task) open
alike, and the job's `TrialReporter`, which reports the val accuracy after every epoch through the
shared storage and says when the pruner stops the trial.

A job knows it is a trial when its sweeper is mnistlab's Optuna sweeper; its trial is the one
whose number is the job's number (the sweeper launches trial N as job N).
"""

import logging
from typing import Any

from omegaconf import DictConfig

from mnistlab.config import launch_dir
from mnistlab.errors import UserError
from mnistlab.tracking import redact, sqlite_path, tracking_uri

log = logging.getLogger(__name__)

SWEEPER = "hydra_plugins.mnistlab_optuna_sweeper.MnistlabOptunaSweeper"
PRUNED_ATTR = "pruned_epoch"  # set on a trial by its job when the pruner stops it
RUN_ATTR = "mlflow_run_id"  # set on a trial by its job: the MLflow run recording it


def study_storage(storage: str | None, cfg: DictConfig) -> str:
    """The study's storage URL: `hydra.sweeper.storage`, else optuna.db beside the MLflow store
    when that is SQLite, else `<launch dir>/optuna.db`."""
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
    """The pruner `hydra.sweeper.pruner` names: none, median (with `hydra.sweeper.warmup`), or
    hyperband over 1..epochs."""
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
        self.trial, self.epochs = trial, epochs
        self.number = trial.number

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

    url = study_storage(sweeper.storage, cfg)
    study = optuna.load_study(
        study_name=str(sweeper.study_name),
        storage=open_storage(url),
        pruner=make_pruner(sweeper, cfg.epochs),
    )
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
