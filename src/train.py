"""`python -m train [key=value ...]`: check the command line, compose the run config with Hydra,
then run the recipe (`mnistlab.recipe`).

Torch and MLflow are imported only once training starts, so `--help` and `--cfg job` answer fast.
"""

import atexit
import os
import shutil
import sys
import tempfile

import hydra
from omegaconf import DictConfig

from mnistlab import tracking
from mnistlab.cli import check_command_line, exit_on_error, jobs_checked
from mnistlab.config import CONF_DIR, register, validate
from mnistlab.errors import UserError

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


def expand_repeats(argv: list[str]) -> list[str]:
    """`repeats=N` (N >= 2) as a seed sweep: `seed=S,S+1,...,S+N-1` (S: the `seed=` given, else
    0), with `-m` added. It cannot be combined with a seed sweep (which already names the
    seeds) nor with Optuna (whose trials pick their own values, one at a time)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    found = [a for a in argv if a.startswith("repeats=")]
    try:
        n = int(found[-1].split("=", 1)[1]) if found else 1
    except ValueError:
        return argv  # the config check names the bad value
    if n < 2 or any(a.startswith(("--cfg", "-c", "--info", "-h", "--help")) for a in argv):
        return argv
    seeds = [a for a in argv if a.split("=", 1)[0] in ("seed", "+seed", "++seed")]
    if seeds and OverridesParser.create().parse_override(seeds[-1]).is_sweep_override():
        raise UserError(f"repeats={n} with {seeds[-1]}: both choose the seeds; give one seed "
                        f"(seed=0 repeats={n}) or drop repeats")  # fmt: skip
    if any("optuna" in a for a in argv if a.startswith(("hparams_search=", "hydra/sweeper="))):
        raise UserError(
            f"repeats={n} does not combine with Optuna, whose trials pick one config at a "
            "time; drop repeats, or sweep the seed yourself without Optuna"
        )
    start = int(seeds[-1].split("=", 1)[1]) if seeds else 0
    rest = [a for a in argv if a not in seeds]
    multirun = [] if {"-m", "--multirun"} & set(rest) else ["-m"]
    return [*multirun, *rest, "seed=" + ",".join(str(start + i) for i in range(n))]


def run_and_exit() -> None:
    """Check the command line, run `main`, and exit with its status: 0, 1 if a sweep job
    failed, 2 for a mistake, 130 when stopped by Ctrl-C or SIGTERM."""
    rank = int(os.environ.get("RANK", "0"))
    if rank > 0:  # torchrun's other processes: rank 0 alone writes outputs/ and logs
        scratch = tempfile.mkdtemp(prefix=f"mnistlab-rank{rank}-")
        atexit.register(shutil.rmtree, scratch, ignore_errors=True)
        sys.argv += [f"hydra.run.dir={scratch}", "hydra.output_subdir=null"]
    try:
        sys.argv[1:] = expand_repeats(sys.argv[1:])
        tracking.STATE.command = sys.argv[1:]  # what the sweep records, without the check's mark
        sys.argv[1:] = check_command_line(sys.argv[1:])
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
        tracking.close_parent("KILLED")
        print(f"Stopped: {err or 'interrupted'}", file=sys.stderr)
        code = 130
    finally:
        tracking.close_parent("FAILED")  # a parent still open here stopped before its summary
    sys.exit(code)


if __name__ == "__main__":
    run_and_exit()
