"""joblib's workers in a sweep: Hydra's joblib launcher runs the jobs in loky's processes, kept
for the whole sweep. Each job takes its share of the cores as torch threads; the sweep's command
stops the workers at its end."""

import sys


def share_of_cores(n: int) -> int:
    """Torch threads for one of `n` jobs at once: its share of the cores this process may use,
    as joblib counts them (its CPU affinity: taskset, SLURM's cpuset; a container's quota)."""
    from joblib import cpu_count

    return max(1, cpu_count() // max(1, n))


def stop_workers(kill: bool) -> None:
    """Stop joblib's idle workers, which would otherwise keep this process alive for 5 minutes.
    They are asked to exit, not killed (only an interrupted sweep's are): a killed worker skips
    its exit handlers, which leaves the semaphore of tqdm's multiprocessing lock registered with
    the resource tracker ("There appear to be 2 leaked semaphore objects to clean up")."""
    module = sys.modules.get("joblib.externals.loky.reusable_executor")
    executor = getattr(module, "_executor", None)
    if executor is not None:
        executor.shutdown(wait=True, kill_workers=kill)
