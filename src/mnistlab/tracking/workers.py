"""joblib's workers in a sweep: Hydra's joblib launcher runs the jobs in loky's processes, kept
for the whole sweep. They start while the parent run opens, forked from a server process that
imported what a job needs once (`tracking.preload`), and warm the model export up; they exit without
tearing the interpreter down; the sweep's command stops them at its end.
"""

import atexit
import contextlib
import logging
import multiprocessing
import multiprocessing.forkserver
import os
import signal
import sys
import threading
from typing import Any

from omegaconf import DictConfig, OmegaConf

from mnistlab.tracking.exporter import warm_up

log = logging.getLogger(__name__)
_warmed: list[int] = []  # in a worker: its pid, once it imported what a job needs
_forked: list[bool] = []  # in a worker: whether it began with what a job imports
PRELOAD = "mnistlab.tracking.preload"  # what the fork server imports: what every job imports


def start_warming(config: DictConfig) -> threading.Thread | None:
    """With Hydra's joblib launcher: start its workers now, in a thread, each importing what a
    job needs; None with any other launcher. The launcher then finds them ready: loky keeps
    one executor for calls with the same settings, which these are (its `launch` makes them
    from the same config)."""
    launcher = config.hydra.launcher
    if "Joblib" not in str(launcher.get("_target_", "")):
        return None
    from hydra_plugins.hydra_joblib_launcher._core import process_joblib_cfg
    from joblib import Parallel, delayed, effective_n_jobs

    settings: dict[str, Any] = OmegaConf.to_container(launcher, resolve=True)  # type: ignore
    settings.pop("_target_", None)
    settings["backend"] = "loky"
    process_joblib_cfg(settings)
    n = effective_n_jobs(settings.get("n_jobs") or 1)
    if n < 2:  # joblib runs a single job in this process: nothing to start
        return None
    fork_from_server()

    def warm() -> None:
        with contextlib.suppress(Exception):  # the jobs import what a failed warm-up did not
            pids = Parallel(**settings)(delayed(warm_worker)(n) for _ in range(n))
            log.info(f"joblib workers {', '.join(map(str, sorted(set(pids))))} ready")

    thread = threading.Thread(target=warm, name="joblib-warm-up", daemon=True)
    thread.start()
    return thread


def start_fork_server() -> None:
    """Start the fork server now, first thing, for a sweep whose command line names joblib's
    launcher: it imports what a job needs while this process checks the configs and opens the
    parent run, and the workers start from it once the sweep begins."""
    fork_from_server()
    with contextlib.suppress(Exception):  # else the first worker starts it
        multiprocessing.forkserver.ensure_running()


def stop_fork_server() -> None:
    """Kill the fork server, if one was started: it holds nothing to save, and on its own it
    outlives this process by the 2 s its interpreter takes to free torch and MLflow (holding
    the command's output open meanwhile), or goes on importing for nobody after a mistake."""
    server = getattr(multiprocessing.forkserver, "_forkserver", None)  # the stdlib's own
    pid = getattr(server, "_forkserver_pid", None)  # set once it was started
    if pid:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)


def fork_from_server() -> None:
    """Have loky start this sweep's workers (and the launcher's, the same executor) from
    multiprocessing's fork server, which imports `tracking.preload` first: each worker then
    begins with what a job imports instead of importing it itself, 2 workers on 2 cores beside
    the parent run's opening. Where there is no fork server (Windows), loky's own start it is."""
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return
    from joblib.externals.loky.backend.context import set_start_method

    multiprocessing.set_forkserver_preload([PRELOAD])
    set_start_method("forkserver", force=True)


def warm_worker(n: int) -> int:
    """Import what every job imports (already there in a worker forked from the server), warm
    the model export up, and take one of `n` workers' share of the cores as torch threads (as
    joblib's environment for its workers would say, which loky cannot hand to a forked one);
    this worker's pid. A failure here is left to the jobs, which import all this again (a task
    that raised would cost the worker: joblib would replace them all)."""
    exit_fast()
    _forked.append(all(name in sys.modules for name in (PRELOAD, "torch", "mlflow")))
    with contextlib.suppress(Exception):
        import matplotlib

        matplotlib.use("Agg")  # as mnistlab.plots: files only
        import matplotlib.pyplot  # noqa: F401
        import mlflow.entities  # noqa: F401
        import torch
        import torch._dynamo  # noqa: F401

        warm_up()  # sets 1 thread, for the recorder process it was written for
        torch.set_num_threads(share_of_cores(n))  # the jobs' on a GPU too
        _warmed.append(os.getpid())
    return os.getpid()


def share_of_cores(n: int) -> int:
    """Torch threads for one of `n` jobs at once: its share of the cores this process may use,
    as joblib counts them (its CPU affinity: taskset, SLURM's cpuset; a container's quota)."""
    from joblib import cpu_count

    return max(1, cpu_count() // max(1, n))


def in_worker() -> bool:
    """Whether this process is one of loky's workers (joblib's default backend), however it
    was started: loky counts its nesting depth, 0 outside its workers."""
    executor = sys.modules.get("joblib.externals.loky.process_executor")
    return getattr(executor, "_CURRENT_DEPTH", 0) > 0


def job_started() -> None:
    """In a joblib worker: name it in the job's log, and have it exit fast once the sweep stops
    it. Freeing torch's and MLflow's modules takes 2-3 s per worker, which the command would
    wait for; the worker's runs are closed by then, and multiprocessing's finalizers (which
    unregister tqdm's semaphore) run in its own shutdown, before this."""
    if not in_worker():
        return
    notes = ["warmed up before the sweep's first job"] if _warmed else []
    if _forked and _forked[0]:
        notes.append("forked by the server that imported torch and MLflow")
    log.info(f"joblib worker {os.getpid()}" + (f" ({', '.join(notes)})" if notes else ""))
    exit_fast()


def exit_fast() -> None:
    """Have this process skip the interpreter's teardown at exit. Exit handlers registered after
    this call still run (they run in reverse order); it is made again at each job for that. (A
    worker forked by the fork server ends with os._exit: no exit handler runs there.)"""
    atexit.unregister(_exit_now)
    atexit.register(_exit_now)


def _exit_now() -> None:
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def stop_workers(kill: bool) -> None:
    """Stop joblib's idle workers, which would otherwise keep this process alive for 5 minutes.
    They are asked to exit, not killed (only an interrupted sweep's are): a killed worker skips
    its exit handlers, which leaves the semaphore of tqdm's multiprocessing lock registered with
    the resource tracker ("There appear to be 2 leaked semaphore objects to clean up")."""
    module = sys.modules.get("joblib.externals.loky.reusable_executor")
    executor = getattr(module, "_executor", None)
    if executor is not None:
        executor.shutdown(wait=True, kill_workers=kill)
    stop_fork_server()  # its workers are gone
