"""`open_run`: one MLflow run per training run, opened (or reopened) and closed with a status.

Its params are the resolved config, its tags what it ran on and how to rebuild it (commit, output
dir, overrides, device). It ends FINISHED, FAILED (reason and traceback) or KILLED (a signal), or
stays RUNNING when the store cannot be told (its metrics kept in the journal).
"""

import contextlib
import logging
import re
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from mnistlab.errors import TrackingUnavailable
from mnistlab.tracking.store import connect, redact, tracking_uri
from mnistlab.tracking.sweep import child_context
from mnistlab.tracking.tracker import MlflowTracker, config_digest, origin_tags
from mnistlab.tracking.watchdog import Claim, close_abandoned

log = logging.getLogger(__name__)


def flatten(node: Any, prefix: str = "") -> dict[str, str]:
    """Every leaf of a resolved config as {dotted.key: str(value)}; lists stay whole."""
    if not isinstance(node, dict):
        return {prefix.rstrip("."): str(node)}
    return dict(
        kv for key, value in node.items() for kv in flatten(value, f"{prefix}{key}.").items()
    )


def hydra_context() -> dict[str, Any]:
    """Group choices and overrides of the current Hydra job, where there is one."""
    if not HydraConfig.initialized():
        return {"choices": {}, "overrides": []}
    hc = HydraConfig.get()
    choices = {k: v for k, v in hc.runtime.choices.items() if not k.startswith("hydra/")}
    return {"choices": choices, "overrides": list(hc.overrides.task)}


def aliases(cfg: DictConfig) -> set[str]:
    """Dotted keys whose value is only another key's (`optimizer.lr: ${lr}`): logged as `lr`."""
    raw = flatten(OmegaConf.to_container(cfg, resolve=False, enum_to_str=True))
    return {key for key, value in raw.items() if re.fullmatch(r"\$\{[\w.]+\}", value)}


def run_params(cfg: DictConfig) -> dict[str, str]:
    """The run's params: every resolved leaf of its config, but for keys that only repeat
    another (`optimizer.lr: ${lr}` is the param `lr`), and each group's choice."""
    container = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
    container.pop("resume", None)  # where a run was resumed from is not a hyperparameter
    container.pop("repeats", None)  # nor how many seeds a sweep ran: each run has its seed
    container["mlflow"].pop("tracking_uri", None)  # nor is the store, and its URI may hold secrets
    repeated = aliases(cfg)
    params = {k: v for k, v in flatten(container).items() if k not in repeated}
    return {**params, **hydra_context()["choices"]}


def new_run(client: Any, experiment_id: str, cfg: DictConfig, output_dir: Path, tags: dict) -> str:
    """The id of a new run, named, tagged (MLflow's own tags too: user, source...), its params."""
    from mlflow.entities import Param
    from mlflow.tracking.context.registry import resolve_tags

    context = hydra_context()
    child = child_context() or {}  # parent link and sweep tags when this is a sweep's job
    # MLflow's own random names come from the seeded `random`: every run would be called alike
    picks = [context["choices"].get(group) for group in ("model", "optimizer", "data")]
    default_name = "-".join([*(p for p in picks if p), output_dir.name])
    run_name = cfg.mlflow.run_name or child.pop("run_name", None) or default_name
    all_tags = {
        **origin_tags(), "hydra.output_dir": str(output_dir),
        "hydra.overrides": redact(" ".join(context["overrides"])),
        "config_digest": config_digest(cfg), **tags, **child,
    }  # fmt: skip
    run = client.create_run(experiment_id, tags=resolve_tags(all_tags), run_name=run_name)
    run_id = run.info.run_id
    try:
        client.log_batch(run_id, params=[Param(k, v) for k, v in run_params(cfg).items()])
    except BaseException:  # not left RUNNING: its watchdog does not watch it yet
        with contextlib.suppress(Exception):
            client.set_terminated(run_id, "FAILED")
        raise
    return run_id


def reopen(client: Any, run_id: str) -> None:
    """Set a resumed run RUNNING again; why it stopped is history. Its params stay as logged."""
    client.update_run(run_id, status="RUNNING")
    if "failure_reason" in client.get_run(run_id).data.tags:
        client.delete_tag(run_id, "failure_reason")


@contextmanager
def open_run(
    cfg: DictConfig, claim: Claim, tags: dict[str, str], resume: tuple[str, int] | None = None
) -> Iterator[MlflowTracker]:
    """The run of `claim.folder`, opened and watched, ended with a status on the way out; `tags`
    adds its own (the resolved device, say), `resume` is (run id, its checkpoint's last epoch)."""
    client, experiment_id = connect(cfg)
    uri, output_dir = tracking_uri(cfg), claim.folder
    try:  # runs left RUNNING by a process killed with its watchdog (a container killed whole)
        close_abandoned(client, experiment_id, uri)
    except Exception as err:  # tidying up after others never stops this run
        log.warning(f"could not close abandoned runs: {type(err).__name__}: {err}")
    if resume:
        reopen(client, resume[0])
    run_id = resume[0] if resume else new_run(client, experiment_id, cfg, output_dir, tags)
    claim.watch(uri, run_id, hint="it had saved no checkpoint: start it again")
    run = MlflowTracker(client, run_id, experiment_id, uri, output_dir, cfg.mlflow.offline_wait_s)
    if resume:
        run.catch_up(upto=resume[1])  # journal epochs the store missed are sent now
    if cfg.mlflow.get("system_metrics", True):
        run.start_system_metrics(resume=bool(resume))
    with closing(run):
        yield run


@contextmanager
def closing(run: MlflowTracker) -> Iterator[None]:
    """End `run` FINISHED once everything reached the store, FAILED or KILLED (a signal) with
    the reason; leave it RUNNING if the store cannot be told."""
    status = "FAILED"
    try:
        yield
        run.flush()
        status = "FINISHED"
    except TrackingUnavailable:
        status = None  # the store cannot be told; the run's own files say what happened
        raise
    except (Exception, KeyboardInterrupt) as err:  # failed, or KILLED by a signal: say why
        status = "KILLED" if isinstance(err, KeyboardInterrupt) else "FAILED"
        try:
            run.flush()
        except TrackingUnavailable:
            status = None
            raise
        run.client.set_tag(run.run_id, "failure_reason", f"{type(err).__name__}: {err}"[:5000])
        if status == "FAILED":
            run.client.log_text(run.run_id, traceback.format_exc(), "traceback.txt")
        raise
    finally:
        run.stop_system_metrics(send=status is not None)  # not to a store that went away
        if status is not None:
            run.client.set_terminated(run.run_id, status)
