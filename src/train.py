"""`python -m train [key=value ...]`: check the command line, compose the run config with Hydra,
then run the recipe (`mnistlab.recipe`).

Torch and MLflow are imported only once training starts, so `--help` and `--cfg job` answer fast.
"""

import atexit
import logging
import os
import shutil
import sys
import tempfile

import hydra
from omegaconf import DictConfig

from mnistlab import tracking
from mnistlab.cli import check_command_line, exit_on_error, jobs_checked
from mnistlab.config import CONF_DIR, register, validate

register()


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="config")
def main(cfg: DictConfig) -> float:
    """Train one run and return its best val accuracy (the objective a sweeper maximises).

    Its config is checked here unless the command line's check did it before Hydra started.
    In a sweep a failed job is recorded and answers NaN, so the other jobs still run.
    """
    try:
        if not jobs_checked():
            validate(cfg)
        from mnistlab.recipe import run

        return run(cfg)
    except Exception as err:
        if tracking.in_multirun():
            return tracking.job_failed(err)
        exit_on_error(err)  # one line and exit 2 or 1; a bug keeps its traceback
        raise


def run_and_exit() -> None:
    """Check the command line, run `main`, then exit without tearing the interpreter down:
    freeing torch's and MLflow's modules takes 1-2 s after everything is written."""
    rank = int(os.environ.get("RANK", "0"))
    if rank > 0:  # torchrun's other processes: rank 0 alone writes outputs/ and logs
        scratch = tempfile.mkdtemp(prefix=f"mnistlab-rank{rank}-")
        atexit.register(shutil.rmtree, scratch, ignore_errors=True)
        sys.argv += [f"hydra.run.dir={scratch}", "hydra.output_subdir=null"]
    try:
        check_command_line(sys.argv[1:])
    except Exception as err:  # one line, exit 2, before any job or MLflow run exists
        if os.environ.get("HYDRA_FULL_ERROR") != "1":
            exit_on_error(err)
        raise
    try:
        main()
        code = 1 if tracking.STATE.failed_jobs else 0
    except SystemExit as done:
        code = done.code if isinstance(done.code, int) else (0 if done.code is None else 1)
    except KeyboardInterrupt as err:  # Ctrl-C or SIGTERM: the run is KILLED, a checkpoint saved
        tracking.finish("KILLED")
        print(f"Stopped: {err or 'interrupted'}", file=sys.stderr)
        code = 130
    finally:
        tracking.finish("FAILED")  # a parent still open here stopped before its summary
    atexit._run_exitfuncs()
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    run_and_exit()
