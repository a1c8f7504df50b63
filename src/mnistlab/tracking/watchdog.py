"""A run's watchdog: closes the MLflow run when the process training it dies without closing it.

SIGKILL, the out-of-memory killer or a crashed interpreter give the process no chance to end
its run, which would stay RUNNING in the store for ever. So each run starts this small process
(`guard.Claim.watch`), which waits on a pipe held by the training process. The process writes
"done" once it has closed the run. An end of file without it means the process died: the
watchdog sends the epochs of the run's journal that the store lacks, then ends the run KILLED
with the reason and how to continue. Runs killed together with their watchdog (a container
killed whole) are closed by the next run on the same machine and store (`close_abandoned`).
"""

import json
import socket
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mnistlab.tracking.guard import DONE, hold_lock
from mnistlab.tracking.provenance import HOST_TAG
from mnistlab.tracking.store import redact, server_problem
from mnistlab.tracking.tracker import MlflowTracker


def close_abandoned(client: Any, experiment_id: str, uri: str) -> None:
    """Close this machine's runs that a process killed together with its watchdog left RUNNING
    (a container or a cgroup killed whole): their folder is here and no process holds its lock."""
    host = socket.gethostname().replace("'", "")
    running = client.search_runs(
        [experiment_id],
        filter_string=f"attributes.status = 'RUNNING' and tags.`{HOST_TAG}` = '{host}'",
        max_results=1000,
    )
    for run in running:
        tags = run.data.tags
        folder = tags.get("hydra.output_dir") or tags.get("sweep.dir")
        if not folder or not Path(folder).is_dir():
            continue
        hint = "it had saved no checkpoint: start it again"
        if "sweep.dir" in tags:
            hint = f"finish the sweep with the same command and hydra.sweep.dir={folder}"
        spec = {"uri": uri, "run_id": run.info.run_id, "output_dir": folder, "hint": hint}
        close_orphan(spec, log_to(Path(folder)), found="found by a later run")


def close_orphan(spec: dict[str, Any], log: Any, found: str = "") -> None:
    """End the run KILLED if it is still RUNNING, after sending the journal's missing epochs."""
    from mlflow import MlflowClient

    output_dir = Path(spec["output_dir"])
    # held until this returns: a resume of the dir waits for the run to be closed
    lock = hold_lock(output_dir, "watchdog", wait_s=0) if output_dir.exists() else "gone"
    if lock is None:
        return  # a resume of this dir has already taken the run over
    problem = server_problem(spec["uri"], timeout=5)
    if problem is not None:
        log(f"cannot close run {spec['run_id']}: {problem}")
        return
    client = MlflowClient(tracking_uri=spec["uri"])
    info = client.get_run(spec["run_id"]).info
    if info.status != "RUNNING":
        return
    run = MlflowTracker(client, info.run_id, info.experiment_id, spec["uri"], output_dir, 60)
    run.catch_up()  # every journal epoch the sender had not sent yet
    run.flush()
    hint = spec["hint"]
    if (output_dir / "last.pth").exists():
        hint = f"continue from its last checkpoint with: python -m train resume={output_dir}"
    died = "the training process died without closing the run (SIGKILL, out of memory?"
    why = f"{died}{'; ' + found if found else ''}); {hint}"
    client.set_tag(info.run_id, "failure_reason", why[:5000])
    client.set_terminated(info.run_id, "KILLED")
    log(f"MLflow run {info.run_id} ended KILLED: {why}")


def log_to(folder: Path) -> Callable[[str], None]:
    """A function that appends a line to `folder`'s train.log, where the run's owner looks."""

    def log(line: str) -> None:
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        with open(folder / "train.log", "a") as f:
            f.write(f"[{stamp}][mnistlab.watchdog][WARNING] - {redact(line)}\n")

    return log


def main() -> None:
    """Wait for the training process to say "done" or die; close its run if it died."""
    spec = json.loads(sys.stdin.readline())
    if sys.stdin.read().strip() == DONE:
        return
    log = log_to(Path(spec["output_dir"]))
    try:
        close_orphan(spec, log)
    except Exception as err:  # nobody is left to tell but the log
        log(f"cannot close run {spec['run_id']}: {type(err).__name__}: {err}")


if __name__ == "__main__":
    main()
