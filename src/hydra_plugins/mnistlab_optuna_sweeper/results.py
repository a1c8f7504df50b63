"""The search's results: counts of this search's trials, the study's best trial in
`<sweep dir>/optuna/best_params.yaml`, and Optuna's optimisation-history and param-importance
plots (matplotlib PNGs), logged on the MLflow parent run when there is one."""

import logging
import warnings
from collections import Counter
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from mnistlab import tracking
from mnistlab.files import advising, write_text

log = logging.getLogger(__name__)


def report(study: Any, numbers: list[int], config: DictConfig, settings: DictConfig) -> None:
    """Log and record the counts and the best trial; write and attach the plots."""
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
    for path in files:
        if path is not None:
            client.log_artifact(parent, str(path))


def write_best(study: Any, folder: Path) -> Path | None:
    """best_params.yaml: the study's best trial (number, value, params, MLflow run id)."""
    try:
        best = study.best_trial
    except ValueError:  # no trial completed yet
        log.warning("Optuna study has no completed trial: no best_params.yaml")
        return None
    best_info = {
        "study": study.study_name,
        "trial": best.number,
        "value": best.value,
        "params": dict(best.params),
        "run_id": best.user_attrs.get(tracking.RUN_ATTR),
    }
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
