"""A folder held by the process training in it: a lock file, and a watchdog for its MLflow run.

The lock (`.run.lock` in an output dir or a sweep dir) is held while the run is open: a resume
of that folder waits for a watchdog still closing it, and refuses a folder a live process uses.
The watchdog (`mnistlab.tracking.watchdog`) is a small process, in its own session so a Ctrl-C
in the terminal spares it, that closes the run KILLED if this process dies without closing it.
"""

import contextlib
import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import IO

from mnistlab.errors import UserError

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
        """Take the lock, waiting for a watchdog at work; raise UserError naming `key` if a live
        process uses the folder."""
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
        """The run is closed (or deliberately left open): the watchdog stands down, the folder
        is free."""
        self._tell(DONE + "\n")
        with contextlib.suppress(OSError, AttributeError):
            self.watchdog.stdin.close()
        self.lock.close()

    def __enter__(self) -> "Claim":
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
