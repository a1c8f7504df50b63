"""joblib's workers in a sweep: Hydra's joblib launcher runs the jobs in loky's processes, kept
for the whole sweep. They start while the parent run opens, and import what a job needs then;
they exit without tearing the interpreter down; the sweep's command stops them at its end.
"""

import atexit
import contextlib
import logging
import multiprocessing
import os
import sys
import threading
from typing import Any

from omegaconf import DictConfig, OmegaConf

from mnistlab.tracking.exporter import warm_up

log = logging.getLogger(__name__)
_warmed: list[int] = []  # in a worker: its pid, once it imported what a job needs


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

    def warm() -> None:
        with contextlib.suppress(Exception):  # the jobs import what a failed warm-up did not
            pids = Parallel(**settings)(delayed(warm_worker)() for _ in range(n))
            log.info(f"joblib workers {', '.join(map(str, sorted(set(pids))))} ready")

    thread = threading.Thread(target=warm, name="joblib-warm-up", daemon=True)
    thread.start()
    return thread


def warm_worker() -> int:
    """Import what every job imports: torch, the compiler hooks its optimizers load, matplotlib,
    MLflow and its PyTorch flavor (a job logs its model itself); this worker's pid. A failure
    here is left to the jobs, which import all this again (a task that raised would cost the
    worker: joblib would replace them all)."""
    exit_fast()
    with contextlib.suppress(Exception):
        import matplotlib

        matplotlib.use("Agg")  # as mnistlab.plots: files only
        import matplotlib.pyplot  # noqa: F401
        import mlflow.entities  # noqa: F401
        import torch
        import torch._dynamo  # noqa: F401

        threads = torch.get_num_threads()  # loky's share of the cores: the jobs' on a GPU too
        warm_up()  # sets 1 thread, for the recorder process it was written for
        torch.set_num_threads(threads)
        _warmed.append(os.getpid())
    return os.getpid()


def in_worker() -> bool:
    """Whether this process is one of loky's workers (joblib's default backend)."""
    loky = sys.modules.get("joblib.externals.loky.backend.process")
    return loky is not None and isinstance(multiprocessing.current_process(), loky.LokyProcess)


def job_started() -> None:
    """In a joblib worker: name it in the job's log, and have it exit fast once the sweep stops
    it. Freeing torch's and MLflow's modules takes 2-3 s per worker, which the command would
    wait for; the worker's runs are closed by then, and multiprocessing's finalizers (which
    unregister tqdm's semaphore) run in its own shutdown, before this."""
    if not in_worker():
        return
    warmed = " (warmed up before the sweep's first job)" if _warmed else ""
    log.info(f"joblib worker {os.getpid()}{warmed}")
    exit_fast()


def exit_fast() -> None:
    """Have this process skip the interpreter's teardown at exit. Exit handlers registered after
    this call still run (they run in reverse order); it is made again at each job for that."""
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
