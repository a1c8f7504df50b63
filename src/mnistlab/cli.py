"""`mnistlab train [key=value ...]` (and `python -m train`): check every job's config before
Hydra starts, compose it, then run the recipe (torch and MLflow load only then: `--help` answers
fast); and every mnistlab command's one-line answer to a user's mistake."""

import atexit
import functools
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Callable
from dataclasses import fields, is_dataclass
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf

from mnistlab import tracking
from mnistlab.config import CONF_DIR, compose, not_known, register, rule_of, validate
from mnistlab.errors import UserError, exit_code, one_line
from mnistlab.files import nearest_existing

CHECKED_ENV = "MNISTLAB_JOBS_CHECKED"  # set once every job's config passed `validate`
MAX_CHECKED = 1000  # a sweep of more jobs is checked up to here; every job then checks itself

EXTRAS = {"hydra/launcher=ray": "ray"}  # options that an optional extra of mnistlab installs
PRINTERS = ("-c", "--cfg", "-i", "--info")  # Hydra's flags that print, and not with -m
HYDRA_FLAGS = {  # Hydra's own command-line flags, with their short forms
    *("-h", "--help", "--hydra-help", "--version", *PRINTERS, "--resolve", "-p"),
    *("--package", "-r", "--run", "-m", "--multirun", "-sc", "--shell-completion", "-cp"),
    *("--config-path", "-cn", "--config-name", "-cd", "--config-dir", "--experimental-rerun"),
}

register()


def exit_on_error(err: BaseException) -> None:
    """Exit on a user's error ("Error: ..."; 2, or 1 for a failed run); return for any other."""
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
        if extra := EXTRAS.get(f"{group}={option}"):
            return f"{group}={option} needs an optional extra: pip install -e '.[{extra}]'"
        return f"{group}={option} is not an option: use one of {', '.join(err.options)}"
    if isinstance(err, OverrideParseException):
        return f"{str(err).splitlines()[0]}: write overrides as key=value (Hydra's grammar)"
    cause = err
    while cause.__cause__ is not None and not isinstance(cause, OmegaConfBaseException):
        cause = cause.__cause__
    if isinstance(cause, ConfigAttributeError) and cause.full_key:
        schema, keys = cause.object_type, [str(k) for k in cause.parent_node or ()]
        known = [f.name for f in fields(schema)] if is_dataclass(schema) else keys  # else YAML's
        parent, _, key = cause.full_key.rpartition(".")
        return str(not_known(key, f"{parent}." if parent else "", known))
    if isinstance(cause, OmegaConfBaseException) and cause.full_key:
        rule = rule_of(cause.object_type, cause.full_key.rsplit(".", 1)[-1])
        fix = f"; use {rule.allowed}" if rule else ""
        return f"{cause.full_key}: {str(cause).splitlines()[0].rstrip('.')}{fix}"
    return one_line(err)


def help_part(part: str) -> str:
    """A part of Hydra's help template (conf/hydra/help/mnistlab.yaml), from conf/config.yaml: its
    defaults list's `groups` (no internal schema/), or its top-level `keys` as written there."""
    from hydra.core.global_hydra import GlobalHydra

    text = Path(CONF_DIR, "config.yaml").read_text()
    blocks = re.split(r"^(?=\w)", text, flags=re.M)  # each top-level key with its lines
    found = [b for b in blocks if not b.startswith(("#", "defaults:", "hydra:"))]
    if part == "groups":
        options = GlobalHydra.instance().config_loader().get_group_options
        defaults = re.findall(r"^  - (\w+): (\S+) +# (.*)$", text, flags=re.M)
        found = [f"{group}: {', '.join(sorted(options(group)))} (default {default})\n    {note}\n"
                 for group, default, note in defaults]  # fmt: skip
    return "".join(found).strip().replace("$", "$$")  # `$$`: a `$` to Hydra's template


OmegaConf.register_new_resolver("mnistlab.help", help_part)  # conf/hydra/help/mnistlab.yaml


def check_writable(key: str, value: Any, folder: str | Path) -> None:
    """Raise UserError for `key=value` unless `folder` can be written: its nearest existing
    ancestor must be a folder that takes a real file (root passes every permission check)."""
    existing = nearest_existing(Path(folder).absolute())
    try:
        tempfile.TemporaryFile(dir=existing).close()  # a file as `existing`: NotADirectoryError
    except OSError as err:
        reason = err.strerror or type(err).__name__
        raise UserError(
            f"{key}={value}: cannot write {folder} ({existing}: {reason}); "
            f"point {key} at a writable folder"
        ) from None


def check_outputs(cfg: DictConfig, multirun: bool) -> None:
    """Check before anything runs that the output dir and MLflow store are reachable, writable."""
    from hydra.core.hydra_config import HydraConfig

    if HydraConfig.initialized():
        key = "hydra.sweep.dir" if multirun else "hydra.run.dir"
        folder = OmegaConf.select(HydraConfig.get(), key.removeprefix("hydra."))
        check_writable(key, folder, folder)
    uri = tracking.tracking_uri(cfg)
    tracking.check_scheme(uri)
    if (db := tracking.sqlite_path(uri)) is not None:
        check_writable("mlflow.tracking_uri", uri, db.parent)
    tracking.check_store(uri)


def check_command_line(argv: list[str]) -> list[str]:
    """Validate every job's config before Hydra starts and any MLflow run (UserError: the first
    mistake); return the command line with its jobs' marks. Hydra's own flags are left to Hydra."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    multirun = any(a in ("-m", "--multirun") or a.lstrip("+").lower() == "hydra.mode=multirun"
                   for a in argv)  # fmt: skip
    overrides = [a for a in argv if a not in ("-m", "--multirun")]
    for arg in overrides:
        if arg.startswith("-") and arg.split("=", 1)[0] not in HYDRA_FLAGS:
            raise UserError(f"{arg} is not a flag of python -m train: give settings as key=value "
                            "overrides (python -m train --help lists them)")  # fmt: skip
    if multirun and set(PRINTERS) & set(overrides):  # Hydra would raise a ValueError
        raise UserError(f"-m does not combine with {'/'.join(PRINTERS)}: drop -m to print a job's")
    if any(a.startswith("-") for a in overrides):
        return argv
    try:
        jobs, marks = [overrides], [f"++hydra.job.env_set.{CHECKED_ENV}=1"]
        if multirun:  # every job of the sweep, with the command line's hydra.* settings
            parsed = OverridesParser.create().parse_overrides(overrides)
            settings = [o.input_line for o in parsed if o.is_hydra_override()]
            from mnistlab.jobs import BASIC_SWEEPER, SIZE_ENV, sweep_jobs

            sweep = sweep_jobs(overrides, CONF_DIR, max_jobs=MAX_CHECKED)
            jobs = [settings + job for job in sweep.jobs]
            if sweep.sweeper == BASIC_SWEEPER:  # its jobs are those (Optuna's trials are not)
                marks.append(f"++hydra.job.env_set.{SIZE_ENV}={len(sweep.jobs)}")
            marks = marks if sweep.complete else []
        configs = [compose(job) for job in jobs]
        for cfg in configs:
            validate(cfg)
        for cfg in {str(c.mlflow.tracking_uri): c for c in configs}.values():  # each store once
            check_outputs(cfg, multirun)  # once every job's config is known good
    except UserError:
        raise
    except (HydraException, OmegaConfBaseException) as err:
        raise UserError(explain(err)) from err
    except Exception as err:  # anything else Hydra's parser lets through, e.g. `=1`
        raise UserError(f"{explain(err)} (in the overrides {' '.join(overrides)})") from err
    return [*argv, *marks]  # set in this command's jobs only


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="config")
def job(cfg: DictConfig) -> float:
    """Train one run (its config checked unless the command line's check covered it); return its
    best val accuracy, the objective a sweeper maximises: NaN for a failed job of a sweep."""
    try:
        checked = os.environ.get(CHECKED_ENV) == "1"
        if not checked or (tracking.in_multirun() and not tracking.basic_sweep()):
            validate(cfg)
        from mnistlab.recipe import run

        return run(cfg)
    except Exception as err:
        if tracking.in_multirun():
            return tracking.job_failed(err)
        exit_on_error(err)  # one line and exit 2 or 1; a bug keeps its traceback
        raise


def expand_repeats(argv: list[str]) -> list[str]:
    """`repeats=N` (N >= 2) as the seed sweep `seed=S,...,S+N-1` (S: `seed=`, else 0) with `-m`;
    not with a seed sweep (which names the seeds) nor Optuna (whose trials pick their values)."""
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


def main() -> None:
    """Check the command line, run the `job`s, and exit with its status: 0, 1 if a sweep job
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
        job()
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
