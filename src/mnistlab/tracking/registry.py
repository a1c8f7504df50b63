"""The Model Registry: promote a run's MLflow model (a sweep's best child for a parent run) to a
registered model version with an alias, and find the run behind `models:/<name>@<alias>`."""

import re
from dataclasses import dataclass
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
    val = [m.value for m in client.get_metric_history(run.info.run_id, WINNING_METRIC)]
    tags["mnistlab.run_id"] = run.info.run_id
    tags["mnistlab.metric_value"] = str(max(val)) if val else "nan"
    tags["mnistlab.test_acc"] = str(run.data.metrics.get("test/acc", "nan"))
    return run, tags


def promote(source: str, name: str, alias: str | None, uri: str | None) -> Promotion:
    """Register the MLflow model of `source`'s winning run as a new version of `name` (created if
    new), tagged with the run and the metric it won on; point `alias` at it."""
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
    try:
        version = mlflow.register_model(model_uri, name, tags=tags).version
        if alias:
            client.set_registered_model_alias(name, alias, version)
    except MlflowException as err:
        reason = " ".join(str(err).split())[:300]
        raise UserError(f"--name={name} --alias={alias}: MLflow refused it ({reason})") from err
    return Promotion(name, str(version), alias, run.info.run_id, tags)


def resolve_model_uri(source: str, uri: str | None) -> str:
    """The run id behind `models:/<name>@<alias>` or `models:/<name>/<version>`."""
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
            f"python -m mnistlab.promote <run id> --name {name} (and --tracking-uri)"
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
    return found.run_id
