"""A run's watchdog: closes the MLflow run when the process training it dies without closing it.

SIGKILL, the out-of-memory killer or a crashed interpreter give the process no chance to end
its run, which would stay RUNNING in the store for ever. So each run starts a small watchdog
process, in its own session (a Ctrl-C in the terminal does not reach it), that waits on a pipe
held by the training process. The process writes "done" once it has closed the run. An end of
file without it means the process died: the watchdog sends the epochs of the run's journal that
the store lacks, then ends the run KILLED with the reason and how to continue.

The training process also holds a lock file in its output dir while the run is open: a resume
of that dir waits for a watchdog still at work, and refuses a dir that a live process is using.
"""

import contextlib
import json
import logging
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

DONE = "done"
LOCK_NAME = ".run.lock"  # in the output dir, held while the run is open
HOST_TAG = "mnistlab.host"  # the machine a run trains on: where its folder and lock are


def hold_lock(folder: Path, holder: str, wait_s: float) -> IO[str] | None:
    """Hold `folder`'s run lock as `holder` ("training" or "watchdog"): the open file, or None
    if another process holds it. A watchdog at work is waited for, up to `wait_s`."""
    try:
        import fcntl
    except ImportError:  # no fcntl on Windows: no lock either
        return open(os.devnull, "w")
    folder.mkdir(parents=True, exist_ok=True)
    lock = open(folder / LOCK_NAME, "a+")  # noqa: SIM115 (held open); "w" would wipe the pid
    deadline = time.monotonic() + wait_s
    while True:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            lock.truncate(0)
            lock.write(f"{os.getpid()} {holder}\n")  # for whoever finds it taken
            lock.flush()
            return lock
        except OSError:
            if time.monotonic() >= deadline or locker(folder).endswith("training"):
                lock.close()
                return None
            time.sleep(0.1)


def locker(folder: Path) -> str:
    """Who holds `folder`'s run lock, as "<pid> <holder>" ("?" if unknown)."""
    try:
        return (folder / LOCK_NAME).read_text().strip() or "?"
    except OSError:
        return "?"


def in_use(folder: Path) -> str | None:
    """The "<pid> training" holding `folder`'s run lock, or None if no training process does."""
    lock = hold_lock(folder, "probe", wait_s=0)
    if lock is not None:
        lock.close()
        return None
    holder = locker(folder)
    return holder if holder.endswith("training") else None


class Watchdog:
    """The training process's end of a watchdog: start it, then `release` it once the run is
    closed (or is deliberately left open, when the store cannot be reached)."""

    def __init__(self, uri: str, run_id: str, output_dir: Path, hint: str) -> None:
        spec = {"uri": uri, "run_id": run_id, "output_dir": str(output_dir), "hint": hint}
        try:
            self.proc: subprocess.Popen | None = subprocess.Popen(
                [sys.executable, "-m", "mnistlab.watchdog"],
                stdin=subprocess.PIPE,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,  # outside the terminal's process group: Ctrl-C spares it
                text=True,
            )
        except OSError as err:  # no process to spare: train anyway, as MLflow alone would
            logging.getLogger(__name__).warning(f"no watchdog for run {run_id}: {err}")
            self.proc = None
        self._send(json.dumps(spec) + "\n")  # on stdin: the URI may hold a password

    def _send(self, text: str) -> None:
        with contextlib.suppress(OSError, AttributeError):  # no watchdog, or it was killed
            self.proc.stdin.write(text)
            self.proc.stdin.flush()

    def release(self) -> None:
        """Tell the watchdog the run is closed; it exits without touching the run."""
        self._send(DONE + "\n")
        with contextlib.suppress(OSError, AttributeError):
            self.proc.stdin.close()


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

    from mnistlab import tracking

    output_dir = Path(spec["output_dir"])
    # held until this returns: a resume of the dir waits for the run to be closed
    lock = hold_lock(output_dir, "watchdog", wait_s=0) if output_dir.exists() else "gone"
    if lock is None:
        return  # a resume of this dir has already taken the run over
    problem = tracking.server_problem(spec["uri"], timeout=5)
    if problem is not None:
        log(f"cannot close run {spec['run_id']}: {problem}")
        return
    client = MlflowClient(tracking_uri=spec["uri"])
    info = client.get_run(spec["run_id"]).info
    if info.status != "RUNNING":
        return
    run = tracking.Run(client, info.run_id, info.experiment_id, spec["uri"], output_dir)
    run.catch_up()  # every journal epoch the sender had not sent yet
    run.flush(wait_s=60)
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
        from mnistlab.tracking import shown

        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        with open(folder / "train.log", "a") as f:
            f.write(f"[{stamp}][mnistlab.watchdog][WARNING] - {shown(line)}\n")

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
