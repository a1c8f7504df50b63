"""What every command line of mnistlab shares: the one-line answer to a user's mistake, and
`python -m train`'s check of every job's config before Hydra starts."""

import functools
import os
import sys
import tempfile
from collections.abc import Callable
from dataclasses import fields, is_dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from omegaconf import DictConfig, OmegaConf

from mnistlab import tracking
from mnistlab.config import CONF_DIR, compose, not_known, rule_of, validate
from mnistlab.errors import UserError, exit_code, one_line
from mnistlab.files import nearest_existing

if TYPE_CHECKING:  # the jobs of a sweep are expanded only for a sweep
    from mnistlab.jobs import Sweep

CHECKED_ENV = "MNISTLAB_JOBS_CHECKED"  # set once every job's config passed `validate`
MAX_CHECKED = 1000  # a sweep of more jobs is checked up to here; every job then checks itself

EXTRAS = {"hydra/launcher=ray": "ray"}  # options that an optional extra of mnistlab installs
HYDRA_FLAGS = {  # Hydra's own command-line flags, with their short forms
    *("-h", "--help", "--hydra-help", "--version", "-c", "--cfg", "--resolve", "-p"),
    *("--package", "-r", "--run", "-m", "--multirun", "-sc", "--shell-completion", "-cp"),
    *("--config-path", "-cn", "--config-name", "-cd", "--config-dir", "--experimental-rerun"),
    *("-i", "--info"),
}


def exit_on_error(err: BaseException) -> None:
    """End the command for an error the user gets as one line ("Error: ..." on stderr, exit 2
    for a mistake, 1 for a run that failed); return for any other, which the caller re-raises."""
    code = exit_code(err)
    if code is not None:
        print(f"Error: {err if code == 2 else one_line(err)}", file=sys.stderr)
        sys.exit(code)


def one_line_errors(main: Callable[..., Any]) -> Callable[..., Any]:
    """Wrap a command's main function: its users' errors end it in one line, with no traceback."""

    @functools.wraps(main)
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        try:
            return main(*args, **kwargs)
        except Exception as err:
            exit_on_error(err)
            raise

    return wrapped


def explain(err: Exception) -> str:
    """One line for a Hydra or OmegaConf composition error: the key, the bad value, the fix."""
    from hydra.errors import MissingConfigException, OverrideParseException
    from omegaconf.errors import ConfigAttributeError, OmegaConfBaseException

    if isinstance(err, MissingConfigException) and err.options is not None:
        missing = str(err).split("Could not find '", 1)[-1].split("'", 1)[0]
        group, _, option = missing.rpartition("/")
        options = [o for o in err.options if not o.endswith("_schema")]
        extra = EXTRAS.get(f"{group}={option}")
        if extra:
            return f"{group}={option} needs an optional extra: pip install -e '.[{extra}]'"
        return f"{group}={option} is not an option: use one of {', '.join(options)}"
    if isinstance(err, OverrideParseException):
        return f"{str(err).splitlines()[0]}: write overrides as key=value (Hydra's grammar)"
    cause = err
    while cause.__cause__ is not None and not isinstance(cause, OmegaConfBaseException):
        cause = cause.__cause__
    if isinstance(cause, ConfigAttributeError) and cause.full_key:
        schema, node = cause.object_type, cause.parent_node
        known = [f.name for f in fields(schema)] if is_dataclass(schema) else []
        if not known and node is not None:  # a component's node: its YAML's keys
            known = [str(k) for k in node]
        parent, _, key = cause.full_key.rpartition(".")
        return str(not_known(key, f"{parent}." if parent else "", known))
    if isinstance(cause, OmegaConfBaseException) and cause.full_key:
        rule = rule_of(cause.object_type, cause.full_key.rsplit(".", 1)[-1])
        fix = f"; use {rule.allowed}" if rule else ""
        return f"{cause.full_key}: {str(cause).splitlines()[0].rstrip('.')}{fix}"
    return one_line(err)


def check_writable(key: str, value: Any, folder: str | Path) -> None:
    """Raise UserError for `key=value` unless `folder` can be written: its nearest existing
    ancestor must be a folder that takes a real file (root passes every permission check)."""
    existing = nearest_existing(Path(folder).absolute())
    try:
        if not existing.is_dir():
            raise NotADirectoryError(20, f"{existing} is a file")
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as err:
        reason = err.strerror or type(err).__name__
        raise UserError(
            f"{key}={value}: cannot write {folder} ({existing}: {reason}); "
            f"point {key} at a writable folder"
        ) from None


def check_outputs(cfg: DictConfig, multirun: bool) -> None:
    """Check, before anything runs, that the run's output dir and its MLflow store are reachable
    and writable; raise UserError naming the key otherwise."""
    from hydra.core.hydra_config import HydraConfig

    if HydraConfig.initialized():
        key = "hydra.sweep.dir" if multirun else "hydra.run.dir"
        folder = OmegaConf.select(HydraConfig.get(), key.removeprefix("hydra."))
        check_writable(key, folder, folder)
    uri = tracking.tracking_uri(cfg)
    tracking.check_scheme(uri)
    db = tracking.sqlite_path(uri)
    if db is not None:
        check_writable("mlflow.tracking_uri", uri, db.parent)
    tracking.check_store(uri)


def is_multirun(argv: list[str]) -> bool:
    """Whether a command line asks for a sweep: `-m`, `--multirun` or `hydra.mode=MULTIRUN`."""
    flag = any(a in ("-m", "--multirun") for a in argv)
    return flag or any(a.lstrip("+").lower() == "hydra.mode=multirun" for a in argv)


def jobs_checked() -> bool:
    """Whether this job's config was validated before Hydra started: the basic sweeper's jobs
    were; a job of another sweeper (Optuna's values), of a sweep of over MAX_CHECKED jobs, or of
    a command line with Hydra's flags (--config-dir), was not."""
    return os.environ.get(CHECKED_ENV) == "1" and (
        not tracking.in_multirun() or tracking.basic_sweep()
    )


def check_command_line(argv: list[str]) -> list[str]:
    """Compose and validate the config of every job the command line asks for, before Hydra
    starts and before any MLflow run exists; raise UserError naming the first mistake. Returns
    the command line, with a setting that tells its jobs (in this process or a launcher's
    workers) that their configs passed (for a sweep: all of them; see `sweep_marks`).

    Command lines with Hydra's own flags (--help, --cfg, -c, ...) are left to Hydra.
    """
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    multirun = is_multirun(argv)
    overrides = [a for a in argv if a not in ("-m", "--multirun")]
    for arg in overrides:
        if arg.startswith("-") and arg.split("=", 1)[0] not in HYDRA_FLAGS:
            raise UserError(
                f"{arg} is not a flag of python -m train: give settings as key=value overrides "
                "(python -m train --help lists them)"
            )
    if any(a.startswith("-") for a in overrides):
        return argv
    try:
        jobs, marks = [overrides], [f"++hydra.job.env_set.{CHECKED_ENV}=1"]
        if multirun:  # every job of the sweep, with the command line's hydra.* settings
            parsed = OverridesParser.create().parse_overrides(overrides)
            settings = [o.input_line for o in parsed if o.is_hydra_override()]
            from mnistlab.jobs import sweep_jobs

            sweep = sweep_jobs(overrides, CONF_DIR, max_jobs=MAX_CHECKED)
            jobs = [settings + job for job in sweep.jobs]
            marks = sweep_marks(sweep) if sweep.complete else []
        configs = [compose(job) for job in jobs]
        stores = {}
        for cfg in configs:
            validate(cfg)
            stores.setdefault(str(cfg.mlflow.tracking_uri), cfg)
        for cfg in stores.values():  # once every job's config is known good
            check_outputs(cfg, multirun)
    except UserError:
        raise
    except (HydraException, OmegaConfBaseException) as err:
        raise UserError(explain(err)) from err
    except Exception as err:  # anything else Hydra's parser lets through, e.g. `=1`
        raise UserError(f"{explain(err)} (in the overrides {' '.join(overrides)})") from err
    return [*argv, *marks]  # set in this command's jobs only


def sweep_marks(sweep: "Sweep") -> list[str]:
    """What a sweep whose every job is checked adds to its command line: the mark its jobs read
    (`jobs_checked`) and, where Hydra's basic sweeper runs it, its number of jobs (parallel jobs
    share the cores among no more than that: `tracking.threads_per_job`)."""
    from mnistlab.jobs import BASIC_SWEEPER, SIZE_ENV

    marks = [f"++hydra.job.env_set.{CHECKED_ENV}=1"]
    if sweep.sweeper == BASIC_SWEEPER:  # its jobs are those (Optuna's trials are not)
        marks.append(f"++hydra.job.env_set.{SIZE_ENV}={len(sweep.jobs)}")
    return marks
