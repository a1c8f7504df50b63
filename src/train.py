"""`python -m train [key=value ...]`: compose the run config with Hydra, then train it.

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

from mnistlab import sweep
from mnistlab.config import CONF_DIR, ConfigError, check_command_line, register, validate

register()
log = logging.getLogger("train")


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="config")
def main(cfg: DictConfig) -> float:
    """Train one run and return its best val accuracy (the objective a sweeper maximises).

    In a sweep a failed job is recorded and answers NaN, so the other jobs still run.
    """
    try:
        validate(cfg)  # before torch is imported, so config mistakes answer at once
        from mnistlab.engine import train

        return train(cfg)
    except ConfigError as err:  # a setup mistake: one line, no traceback, nothing logged to MLflow
        if sweep.in_multirun():
            log.error(f"Error: {err}")
            sweep.mark_failed(str(err))
            return float("nan")
        print(f"Error: {err}", file=sys.stderr)
        sys.exit(2)
    except (FloatingPointError, OSError) as err:  # a NaN loss, the server gone, a full disk
        line = " ".join(str(err).split())
        if sweep.in_multirun():
            sweep.mark_failed(line)
            return float("nan")
        print(f"Error: {line}", file=sys.stderr)
        sys.exit(1)
    except Exception as err:
        if not sweep.in_multirun():
            raise
        log.exception(f"sweep job failed: {type(err).__name__}: {err}")
        sweep.mark_failed(f"{type(err).__name__}: {err}")
        return float("nan")


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
    except ConfigError as err:  # one line, exit 2, before any job or MLflow run exists
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        print(f"Error: {err}", file=sys.stderr)
        sys.exit(2)
    try:
        main()
        code = 1 if sweep.STATE.failed_jobs else 0
    except SystemExit as done:
        code = done.code if isinstance(done.code, int) else (0 if done.code is None else 1)
    except KeyboardInterrupt as err:  # Ctrl-C or SIGTERM: the run is KILLED, a checkpoint saved
        sweep.finish("KILLED")
        print(f"Stopped: {err or 'interrupted'}", file=sys.stderr)
        code = 130
    finally:
        sweep.finish("FAILED")  # a parent still open here stopped before its summary
    atexit._run_exitfuncs()
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    run_and_exit()
