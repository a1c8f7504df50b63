"""The Model Registry: promote a run's MLflow model (a sweep's best child for a parent run) to a
registered model version with an alias, and find the run behind `models:/<name>@<alias>`."""

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mnistlab.errors import UserError
from mnistlab.tracking.lookup import store_of
from mnistlab.tracking.store import redact

WINNING_METRIC = "val/acc"  # what a sweep's best child won on (its best epoch)


@dataclass
class Promotion:
    """What `promote` registered."""

    name: str
    version: str
    alias: str | None
    run_id: str
    tags: dict[str, str]


def _client(uri: str | None) -> tuple[Any, str]:
    from mlflow import MlflowClient

    store = store_of(uri)
    return MlflowClient(tracking_uri=store, registry_uri=store), store


def winner(client: Any, source: str, store: str) -> tuple[Any, dict[str, str]]:
    """(the run to promote, the version's tags saying why): a sweep parent's best child, or the
    run `source` names."""
    from mlflow.exceptions import MlflowException

    try:
        run = client.get_run(source)
    except MlflowException as err:
        raise UserError(
            f"{source}: no such MLflow run in {redact(store)}; name a sweep's parent run id or a "
            "run id (and --tracking-uri)"
        ) from err
    tags = {"mnistlab.promoted_from": source, "mnistlab.metric": WINNING_METRIC}
    if "sweep.dir" in run.data.tags:  # a sweep's parent: its best child
        best = run.data.tags.get("best_run_id")
        if not best:
            raise UserError(
                f"{source}: this sweep has no best run (no job FINISHED); promote a run"
            )
        tags["mnistlab.sweep_parent_run_id"] = source
        tags["mnistlab.config_digest"] = run.data.tags.get("best_config_digest", "")
        for key in ("best/val_acc_mean", "best/test_acc_mean"):
            if key in run.data.metrics:
                tags[f"mnistlab.{key.removeprefix('best/')}"] = str(run.data.metrics[key])
        run = client.get_run(best)
    tags["mnistlab.run_id"] = run.info.run_id
    tags["mnistlab.test_acc"] = str(run.data.metrics.get("test/acc", "nan"))
    return run, tags


def log_best_model(client: Any, run: Any, model_uri: str, tags: dict[str, str]) -> str:
    """Log the weights of the run's best.pth (in its output dir, else its artifacts) as MLflow
    model "model_best", as its "model" was logged; tag `tags` with their epoch and val acc."""
    import mlflow.pytorch
    import torch
    from mlflow.models import Model, get_model_info

    from mnistlab.checkpoint import evaluated_weights, load_checkpoint

    local = Path(run.data.tags.get("hydra.output_dir") or "/nonexistent") / "best.pth"
    try:
        path = local if local.is_file() else client.download_artifacts(
            run.info.run_id, "checkpoints/best.pth")  # fmt: skip
    except (mlflow.exceptions.MlflowException, OSError) as err:
        raise UserError(
            f"--weights=best: run {run.info.run_id} has no best.pth in {local.parent} nor in its "
            "artifacts; promote its last weights (--weights=last)"
        ) from err
    checkpoint = load_checkpoint(Path(path), "--weights=best")
    model, info = mlflow.pytorch.load_model(model_uri), get_model_info(model_uri)
    model.load_state_dict(evaluated_weights(checkpoint))
    state = checkpoint["state"]
    tags.update(
        {"mnistlab.epoch": str(state.epoch), "mnistlab.metric_value": str(state.best_val_acc)}
    )
    return Model.log(
        artifact_path=None, name="model_best", flavor=mlflow.pytorch, run_id=run.info.run_id,
        pytorch_model=model, signature=info.signature, serialization_format="pickle",
        metadata={**(info.metadata or {}), "weights": "best"},
        pip_requirements=[f"torch=={torch.__version__.split('+')[0]}"],  # as "model" has
    ).model_uri  # fmt: skip


def promote(
    source: str, name: str, alias: str | None, uri: str | None, weights: str = "last"
) -> Promotion:
    """Register the last or best weights of `source`'s winning run as a new version of `name`,
    tagged with the run, the weights and their epoch and val acc; point `alias` at it."""
    import mlflow
    from mlflow.exceptions import MlflowException

    client, store = _client(uri)
    run, tags = winner(client, source, store)
    model_uri = run.data.tags.get("model_uri")
    if not model_uri:
        raise UserError(
            f"{run.info.run_id}: the run has no MLflow model (trained with "
            "mlflow.log_model=false?); promote a run that logged one"
        )
    mlflow.set_tracking_uri(store)
    mlflow.set_registry_uri(store)
    tags["mnistlab.weights"] = weights
    try:
        if weights == "best":
            mlflow.set_experiment(experiment_id=run.info.experiment_id)
            model_uri = log_best_model(client, run, model_uri, tags)
        else:  # its "model": the last epoch's weights
            history = client.get_metric_history(run.info.run_id, WINNING_METRIC)
            last = max(history, key=lambda m: m.step)
            tags.update(
                {"mnistlab.epoch": str(last.step), "mnistlab.metric_value": str(last.value)}
            )
        version = mlflow.register_model(model_uri, name, tags=tags).version
        if alias:
            client.set_registered_model_alias(name, alias, version)
    except (MlflowException, RuntimeError) as err:  # RuntimeError: weights that do not fit
        reason = " ".join(str(err).split())[:300]
        raise UserError(f"--name={name} --alias={alias}: MLflow refused it ({reason})") from err
    return Promotion(name, str(version), alias, run.info.run_id, tags)


def resolve_model_uri(source: str, uri: str | None) -> tuple[str, dict | None]:
    """What `models:/<name>@<alias>` or `models:/<name>/<version>` holds: (its run's id, the
    version's own weights where they are not the run's model.pth: `promote --weights best`)."""
    from mlflow.exceptions import MlflowException

    match = re.fullmatch(r"models:/([^/@]+)(?:@([^/]+)|/(\d+))", source)
    if not match:
        raise UserError(f"{source}: use models:/<name>@<alias> or models:/<name>/<version>")
    name, alias, version = match.groups()
    client, store = _client(uri)
    try:
        client.get_registered_model(name)
    except MlflowException as err:
        raise UserError(
            f"{source}: no registered model {name} in {redact(store)}; register one with "
            f"mnistlab promote <run id> --name {name} (and --tracking-uri)"
        ) from err
    try:
        found = (
            client.get_model_version_by_alias(name, alias)
            if alias
            else client.get_model_version(name, version)
        )
    except MlflowException as err:
        what = f"alias {alias}" if alias else f"version {version}"
        raise UserError(
            f"{source}: model {name} has no {what}; promote a run with --alias, or name an "
            "existing one"
        ) from err
    if not found.run_id:
        raise UserError(f"{source}: this version was not logged by a run; name a run id instead")
    if found.tags.get("mnistlab.weights") != "best":
        return found.run_id, None
    import mlflow.pytorch

    mlflow.set_registry_uri(store)
    return found.run_id, mlflow.pytorch.load_model(f"models:/{name}/{found.version}").state_dict()
