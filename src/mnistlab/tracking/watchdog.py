"""A folder held by the process training in it: a lock file, and a watchdog for its MLflow run.

The lock (`.run.lock` in an output dir or a sweep dir) is held while the run is open: a resume
of that folder waits for a watchdog still closing it, and refuses a folder a live process uses.

Each run's watchdog (`Claim.watch`: `python -m mnistlab.tracking.watchdog`, in its own session so
a Ctrl-C spares it) waits on a pipe from the training process, which writes "done" once it closed
the run. An end of file without it means the process died (SIGKILL, OOM, a crash), its run left
RUNNING: the watchdog sends the journal's epochs the store lacks, then ends the run KILLED with
the reason and how to continue. Runs killed with their watchdog (a container killed whole) are
closed by the next run on the same machine and store (`close_abandoned`).
"""

import contextlib
import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from mnistlab.errors import UserError
from mnistlab.tracking.store import redact, server_problem
from mnistlab.tracking.tracker import HOST_TAG, MlflowTracker

DONE = "done"  # what the process tells its watchdog once the run is closed
LOCK_NAME = ".run.lock"
log = logging.getLogger(__name__)


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


class Claim:
    """`folder` held by this process for a run (or a sweep's parent run): its lock now, its
    watchdog once the run exists (`watch`), both given up by `release`."""

    def __init__(self, folder: Path, key: str, then: str = "run it again") -> None:
        """Take the lock, waiting for a watchdog at work; UserError naming `key` if it is in use."""
        self.folder, self.watchdog = folder, None
        self.lock = hold_lock(folder, "training", wait_s=60)
        if self.lock is None:
            raise UserError(
                f"{key}: another process is using {folder} (process {locker(folder)}); "
                f"wait for it to end or stop it, then {then}"
            )

    def watch(self, uri: str, run_id: str, hint: str) -> None:
        """Start the watchdog of run `run_id`; `hint` is how to continue if it must close it."""
        spec = {"uri": uri, "run_id": run_id, "output_dir": str(self.folder), "hint": hint}
        try:
            self.watchdog = subprocess.Popen(
                [sys.executable, "-m", "mnistlab.tracking.watchdog"],
                stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                start_new_session=True, text=True,  # outside the terminal's process group
            )  # fmt: skip
        except OSError as err:  # no process to spare: train anyway, as MLflow alone would
            log.warning(f"no watchdog for run {run_id}: {err}")
        self._tell(json.dumps(spec) + "\n")  # on stdin: the URI may hold a password

    def _tell(self, text: str) -> None:
        with contextlib.suppress(OSError, AttributeError):  # no watchdog, or it was killed
            self.watchdog.stdin.write(text)
            self.watchdog.stdin.flush()

    def release(self) -> None:
        """The run is closed (or left open on purpose): the watchdog stands down, the lock goes."""
        self._tell(DONE + "\n")
        with contextlib.suppress(OSError, AttributeError):
            self.watchdog.stdin.close()
        self.lock.close()

    @staticmethod
    def held_before(folder: Path) -> bool:
        """Whether a run held `folder` before (its lock file stays): it is not this run's."""
        return (Path(folder) / LOCK_NAME).exists()

    @staticmethod
    def discard(folder: Path, top: Path) -> None:
        """Remove `folder` if it holds nothing of a run's own (.hydra/, train.log, the lock) and
        no process holds it; then each folder above it this empties, up to `top` (kept)."""
        folder, top, scaffold = (
            folder.absolute(),
            top.absolute(),
            {".hydra", "train.log", LOCK_NAME},
        )
        if not folder.is_dir() or {p.name for p in folder.iterdir()} - scaffold:
            return
        if top.is_relative_to(folder):  # hydra.run=. : the launch folder itself
            return
        lock = hold_lock(folder, "training", wait_s=0)
        if lock is None:  # another process's run
            return
        with lock:
            shutil.rmtree(folder, ignore_errors=True)
        with contextlib.suppress(OSError):  # a folder with anything in it stays
            for parent in [p for p in folder.parents if top in p.parents]:
                parent.rmdir()

    def __enter__(self) -> "Claim":
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def close_abandoned(client: Any, experiment_id: str, uri: str) -> None:
    """Close this machine's runs that a process killed together with its watchdog left RUNNING
    (a container or a cgroup killed whole): their folder is here and no process holds its lock."""
    host = socket.gethostname().replace("'", "")
    query = f"attributes.status = 'RUNNING' and tags.`{HOST_TAG}` = '{host}'"
    running = client.search_runs([experiment_id], filter_string=query, max_results=1000)
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
