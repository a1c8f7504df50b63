"""Independent calls shared with a forked process: every second one is made by a child forked
for them, side by side with the rest here. For matplotlib's figures (`run_plots`), which hold
the GIL: threads would take turns.

The child is forked from a run's process, which may hold threads, an MLflow store, the lock on
its output dir and the pipes to its recorder and watchdog, so it does as little as it can: it
ignores Ctrl-C and SIGTERM (its parent stops it), dies with its parent, collects none of its
parent's objects (their finalizers would close what the parent still uses), and leaves with
os._exit (no exit handlers, no flush of its parent's buffers). The calls it did not make (it
failed, died, or took over `WAIT_S`) are made here once it is gone, and the temp files it left
removed; if a call here fails, the child is killed at once.
"""

import contextlib
import ctypes
import gc
import logging
import os
import signal
import sys
import time
from pathlib import Path
from typing import NoReturn

from mnistlab.files import remove_temp_files

log = logging.getLogger(__name__)
WAIT_S = 30.0  # how long the child's calls may take; it is then killed, and they made here
STOPS = {signal.SIGINT, signal.SIGTERM}
PR_SET_PDEATHSIG = 1  # prctl(2): the signal this process gets when its parent dies


def call_all(calls: list[tuple], folder: Path) -> None:
    """Make `calls`, each (function, *args), which write their files in `folder`: every second
    one in a forked child where a core is spare, the others here."""
    child = fork_calling(calls[1::2]) if len(calls) > 1 and spare_core() else None
    mine, theirs = (calls, []) if child is None else (calls[0::2], calls[1::2])
    code, ok = 0, False
    try:
        for func, *args in mine:
            func(*args)
        ok = True
    finally:
        if child is not None:
            code = outcome(child, WAIT_S if ok else 0.0)
            if code != 0:
                remove_temp_files(folder, child)
    if code != 0:
        log.info(f"the forked process did not make its {len(theirs)} calls (exit status "
                 f"{code}): made here")  # fmt: skip
        for func, *args in theirs:
            func(*args)


def spare_core() -> bool:
    """Whether a child can help: on Linux (macOS's frameworks are not fork-safe), with more
    than one core for this process, and children it reaps itself (a Ray worker may have the
    system reap them: SIGCHLD ignored)."""
    return (
        sys.platform == "linux"
        and len(os.sched_getaffinity(0)) > 1
        and signal.getsignal(signal.SIGCHLD) != signal.SIG_IGN
    )


def fork_calling(calls: list[tuple]) -> int | None:
    """Fork a child that makes `calls` and exits (0 once it made them all); its pid, or None
    if it could not fork. Ctrl-C and SIGTERM wait while it forks: no stop handler of this
    process runs in the child."""
    parent, pid = os.getpid(), -1
    blocked = signal.pthread_sigmask(signal.SIG_BLOCK, STOPS)
    gc.freeze()  # the child collects none of the objects it begins with
    try:
        pid = os.fork()
    except OSError:
        pass
    finally:
        if pid != 0:
            gc.unfreeze()
            signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
    if pid == 0:
        in_child(calls, parent)
    return pid if pid > 0 else None


def in_child(calls: list[tuple], parent: int) -> NoReturn:
    """The child: make `calls`, then exit (1 if any failed, its parent makes them then)."""
    code = 1
    try:
        for sig in STOPS:
            signal.signal(sig, signal.SIG_IGN)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, STOPS)
        with contextlib.suppress(Exception):  # killed if its parent dies, where prctl exists
            ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() == parent:  # else the parent died before prctl
            for func, *args in calls:
                func(*args)
            code = 0
    finally:
        os._exit(code)


def outcome(pid: int, wait_s: float) -> int | None:
    """The exit status of child `pid` once it ends, waiting up to `wait_s` s; else it is
    killed, and None. None too if the system reaped it already (its status is unknown)."""
    code, reaped = None, False
    deadline = time.monotonic() + wait_s
    try:
        while code is None:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                code = os.waitstatus_to_exitcode(status)
            elif time.monotonic() >= deadline:
                break
            else:
                time.sleep(0.005)
    except ChildProcessError:  # SIGCHLD ignored after all: no status to wait for
        reaped = True
    finally:
        if code is None and not reaped:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
    return code
