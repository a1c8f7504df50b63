"""`mnistlab.jobs.sweep_jobs` against Hydra's real basic sweeper, one test per grammar form.

The expected job lists are not written down by hand: a tiny `@hydra.main` app over the project's
conf/ runs every command line below as a real `-m` sweep (Hydra's argv parsing, master config,
BasicSweeper and BasicLauncher), and each job writes `HydraConfig.get().overrides.task`. All runs
share one Python process (Hydra clears its global state after each run) to keep this file fast.

conf/'s yaml files extend typed schemas from the ConfigStore: both sides register them, as
`python -m train` does (`mnistlab.config.register`).
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra.core.config_store import ConfigStore
from hydra.errors import HydraException
from omegaconf import OmegaConf

from mnistlab.config import register
from mnistlab.jobs import sweep_jobs

CONF = Path(__file__).resolve().parents[1] / "conf"
# Hydra overrides added to every run: no logging, no saved configs, and the app's MLflow
# sweep callback replaced by Hydra's no-op base class (the app's code is not under test here).
HYDRA_ARGS = [
    "++hydra.callbacks.mlflow_sweep._target_=hydra.experimental.callback.Callback",
    "hydra/job_logging=disabled",
    "hydra/hydra_logging=disabled",
    "hydra.output_subdir=null",
]
APP = """
import contextlib, io, json, os, sys, traceback
import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import OmegaConf

from mnistlab.config import register

register()
jobs = []

@hydra.main(version_base="1.3", config_path=os.environ["APP_CONF"], config_name="config")
def main(cfg):
    jobs.append(OmegaConf.to_container(HydraConfig.get().overrides.task, resolve=False))

results = {}
for name, argv in json.loads(os.environ["CASES"]).items():
    jobs.clear()
    sys.argv, err, rc = ["app.py", "-m", *argv], io.StringIO(), 0
    with contextlib.redirect_stderr(err):
        try:
            main()
        except SystemExit as exit:
            rc = exit.code
        except Exception:
            rc = 1
            traceback.print_exc()
    results[name] = {"rc": rc, "jobs": list(jobs), "stderr": err.getvalue()}
with open(os.environ["RESULTS"], "w") as out:
    json.dump(results, out)
"""

# name: one `-m` command line ({extra} is a config dir)
CASES = {
    "comma_list": ["seed=1,2", "optimizer=sgd,adam"],
    "choice": ["optimizer=choice(sgd,adam)", "batch_size=choice(32)"],
    "range": ["seed=range(1)", "batch_size=range(64,16,-24)", "lr=range(0.1,0.35,0.1)"],
    "glob_all": ["model=glob(*)"],
    "glob_exclude": ["optimizer=glob(*,exclude=[sgd,*_schema])", "data=glob(*mnist*)"],
    "glob_lists": ["optimizer=glob([adam*,sgd],exclude=*_schema)", "device=glob(cu*)"],
    "sort": ["seed=sort(2,1)", "optimizer=sort(choice(adam,sgd),reverse=true)"],
    "sort_range": ["batch_size=sort(range(1,4),reverse=true)", "+order=sort([3,1])"],
    "shuffle": ["seed=shuffle(range(3))", "optimizer=shuffle(adam,sgd)"],
    "interval": ["lr=interval(1e-4,1e-2)"],
    "tagged_interval": ["lr=tag(log,interval(1e-4,1e-2))"],
    "tag": ["seed=tag(a,b,choice(1,2))", "batch_size=tag(log,range(16,48,16))"],
    "casts": ["seed=int(1.5,2.7)", "lr=float(range(1,2))", "+label=str(2.5)", "force=bool(0,1)"],
    "extend_list": ["+tags=extend_list(a,b)"],
    "empty_values": ["+note=", "+other=''", "sweep_name=", "epochs=1,2"],
    "add_delete": ["+extra=1,2", "++seed=5,6", "++fresh=x", "~epochs"],
    "nested_choice_range": ["seed=choice(range(1,3))"],
    "quoted": ["+msg='a,b',\"c d\"", "+path=choice('a b')", "+esc=x\\,y", "+ref=${lr},1"],
    "lists_dicts": ["+ls=[1,2],[3]", "+d={a:1,b:[x]},{c:2}", "+one=[1,2]"],
    "repeated_key": ["seed=1,2", "lr=0.1", "seed=3,4,5"],
    "hydra_overrides": ["seed=1,2,3", "hydra.job.chdir=false", "hydra.sweeper.max_batch_size=2"],
    "hydra_sweep": ["hydra.job.chdir=true,false"],
    "hydra_searchpath": ["model=glob(*)", "hydra.searchpath=[file://{extra}]"],
    "sweeper_params": ["hydra.searchpath=[file://{extra}]", "+preset=with_params", "lr=0.1,0.2"],
}
RANGE_LR = ("0.1", "0.2", "0.30000000000000004")  # float steps as Hydra writes them
TF = ("False", "True")
ERRORS = ["interval", "tagged_interval", "extend_list", "nested_choice_range", "hydra_sweep"]


@pytest.fixture(scope="module")
def extra(tmp_path_factory) -> Path:
    """An extra config dir: one more model option and a preset with sweeper params."""
    extra = tmp_path_factory.mktemp("extra")
    (extra / "model").mkdir()
    (extra / "model" / "tiny.yaml").write_text("hidden_sizes: [8]\n")
    (extra / "preset").mkdir()
    params = {"seed": "1,2", "lr": "0.5", "+note": "choice(a)"}
    (extra / "preset" / "with_params.yaml").write_text(
        "# @package _global_\n" + OmegaConf.to_yaml({"hydra": {"sweeper": {"params": params}}})
    )
    return extra


def command_line(name: str, extra: Path) -> list[str]:
    """The case's overrides, with the HYDRA_ARGS."""
    return [a.replace("{extra}", str(extra)) for a in CASES[name]] + HYDRA_ARGS


@pytest.fixture(scope="module")
def hydra_runs(tmp_path_factory, extra) -> dict:
    """Every case run as a real `python app.py -m ...` sweep: {name: {rc, jobs, stderr}}."""
    work = tmp_path_factory.mktemp("hydra_app")
    (work / "app.py").write_text(APP)
    cases = {
        name: [a.replace("{extra}", str(extra)) for a in argv]
        + [f"hydra.sweep.dir={work / 'sweeps' / name}", *HYDRA_ARGS]
        for name, argv in CASES.items()
    }
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    env.update(
        APP_CONF=str(CONF),
        CASES=json.dumps(cases),
        RESULTS=str(work / "results.json"),
    )
    done = subprocess.run(
        [sys.executable, "app.py"], cwd=work, env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    return json.loads((work / "results.json").read_text())


@pytest.fixture(scope="module", autouse=True)
def store():
    """The ConfigStore as in the app above (Hydra's and its plugins' entries, the schemas), and
    as it was again after this module's tests."""
    from hydra.core.plugins import Plugins

    Plugins.instance()  # imports the plugins, which register their configs, before the swap
    cs = ConfigStore.instance()
    saved = cs.repo
    cs.repo = {k: v for k, v in saved.items() if k in ("hydra", "_dummy_empty_config_.yaml")}
    register()
    yield
    cs.repo = saved


def hydra_jobs(hydra_runs: dict, name: str) -> list[list[str]]:
    """The jobs that Hydra's real sweep of case `name` ran; it must have run some."""
    run = hydra_runs[name]
    assert run["rc"] == 0 and run["jobs"], f"Hydra's sweep of {name} failed:\n{run['stderr']}"
    return run["jobs"]


def jobs_of(name: str, extra: Path, **kwargs) -> list[list[str]]:
    """sweep_jobs for case `name`, as the app's pre-check calls it."""
    return sweep_jobs(command_line(name, extra), str(CONF), **kwargs).jobs


@pytest.mark.parametrize("name", [n for n in CASES if n not in ERRORS and n != "shuffle"], ids=str)
def test_same_jobs_as_hydra(name, hydra_runs, extra):
    assert jobs_of(name, extra) == hydra_jobs(hydra_runs, name)


def test_shuffle_gives_the_same_jobs_in_some_order(hydra_runs, extra):
    # shuffle() draws a new order on every expansion, in Hydra as here: compare the job sets
    jobs, expected = jobs_of("shuffle", extra), hydra_jobs(hydra_runs, "shuffle")
    assert len(jobs) == len(expected) == 6
    assert sorted(jobs) == sorted(expected)


@pytest.mark.parametrize("name", ERRORS, ids=str)
def test_rejected_as_hydra_rejects_it(name, hydra_runs, extra):
    run = hydra_runs[name]
    assert run["rc"] != 0 and not run["jobs"], f"Hydra ran {name}: {run}"
    with pytest.raises(HydraException) as err:
        jobs_of(name, extra)
    first_line = str(err.value).splitlines()[0]
    assert first_line and first_line in run["stderr"]
    if name == "interval":  # the basic sweeper's own one-line refusal
        assert str(err.value) == "BasicSweeper does not support sweep type : INTERVAL_SWEEP"


# a few cases spelled out as well, so that a harness that lost every job cannot pass unnoticed
KNOWN = {
    "comma_list": [[f"seed={s}", f"optimizer={o}"] for s in "12" for o in ("sgd", "adam")],
    "range": [["seed=0", f"batch_size={b}", f"lr={lr}"] for b in (64, 40) for lr in RANGE_LR],
    "casts": [[f"seed={s}", "lr=1.0", "+label=2.5", f"force={b}"] for s in "12" for b in TF],
    "repeated_key": [[f"seed={s}", "lr=0.1"] for s in "345"],
    "hydra_overrides": [["seed=1"], ["seed=2"], ["seed=3"]],
    "add_delete": [[f"+extra={e}", f"++seed={s}", "++fresh=x", "~epochs=null"]
                   for e in "12" for s in "56"],
    "quoted": [[msg, "+path=a\\ b", "+esc=x\\,y", ref]
               for msg in ("+msg='a,b'", '+msg="c d"') for ref in ("+ref=$\\{lr\\}", "+ref=1")],
    "sweeper_params": [[f"seed={s}", f"lr=0.{i}", "+note=a", "+preset=with_params"]
                       for s in "12" for i in "12"],
}  # fmt: skip


@pytest.mark.parametrize(("name", "expected"), KNOWN.items(), ids=list(KNOWN))
def test_known_expansions(name, expected, hydra_runs, extra):
    assert jobs_of(name, extra) == hydra_jobs(hydra_runs, name) == expected


def test_glob_lists_the_group_but_not_hydra_searchpaths_dirs(hydra_runs, extra):
    models = {job[0] for job in jobs_of("hydra_searchpath", extra)}
    assert {"model=mlp", "model=cnn"} <= models
    # as in Hydra, glob does not see hydra.searchpath's dirs (only the jobs can use them)
    assert "model=tiny" not in models


def test_max_jobs_bounds_the_work_and_keeps_hydras_order(hydra_runs, extra):
    assert jobs_of("range", extra, max_jobs=4) == hydra_jobs(hydra_runs, "range")[:4]
    huge = ["seed=range(0,1000000000)", "lr=range(0,1000000000)", "batch_size=1,2"]
    sweep = sweep_jobs(huge, str(CONF), max_jobs=3)
    assert sweep.jobs == [
        ["seed=0", "lr=0", "batch_size=1"],
        ["seed=0", "lr=0", "batch_size=2"],
        ["seed=0", "lr=1", "batch_size=1"],
    ]
    assert not sweep.complete
    with pytest.raises(ValueError, match="max_jobs"):
        sweep_jobs(["seed=1,2"], str(CONF), max_jobs=0)


def test_another_sweeper_takes_no_basic_sweeper_params():
    # hparams_search=optuna selects Optuna's sweeper, whose params (intervals) are its own
    sweep = sweep_jobs(["hparams_search=optuna", "seed=1,2"], str(CONF))
    assert sweep.sweeper.endswith(".MnistlabOptunaSweeper") and sweep.complete
    assert sweep.jobs == [["hparams_search=optuna", "seed=1"], ["hparams_search=optuna", "seed=2"]]
