"""Every config option composes and instantiates; bad types and unknown keys fail at composition."""

import os
from pathlib import Path

import pytest
import torch
from hydra.errors import HydraException
from omegaconf.errors import OmegaConfBaseException

from conftest import REPO, run_cli
from mnistlab.config import compose, register, validate
from mnistlab.data import Dataset
from mnistlab.device import resolve_device
from mnistlab.errors import UserError
from mnistlab.parts import build_part

GROUPS = {
    group: sorted(p.stem for p in (REPO / "conf" / group).glob("*.yaml"))
    for group in ("model", "optimizer", "data", "device", "scheduler", "experiment", "debug")
}


def test_groups_hold_the_documented_options():
    assert GROUPS == {
        "model": ["cnn", "lenet5", "mlp", "resnet"],
        "optimizer": ["adam", "adamw", "sgd"],
        "data": ["fashion_mnist", "imagefolder", "mnist", "synthetic"],
        "device": ["auto", "cpu", "cuda", "mps"],
        "scheduler": ["cosine", "none", "onecycle", "plateau", "step"],
        "experiment": ["fashion_cnn", "mnist_cnn", "speedrun", "tutorial"],
        "debug": ["anomaly", "fast", "overfit", "profile"],
    }


def test_defaults_are_the_tutorial_recipe():
    cfg = compose()
    assert (cfg.lr, cfg.batch_size, cfg.epochs, cfg.seed) == (1e-3, 64, 10, 0)
    assert cfg.model._target_ == "mnistlab.models.MLP"
    assert list(cfg.model.hidden_sizes) == [512, 512]
    assert cfg.optimizer._target_ == "torch.optim.Adam"
    assert cfg.data.dataset == "torchvision.datasets.MNIST"
    assert (cfg.data.val_size, cfg.data.download) == (5000, True)
    assert cfg.device.type.value == "auto"
    assert cfg.mlflow.experiment == "mnistlab"


@pytest.mark.parametrize("option", GROUPS["model"])
def test_every_model_builds_and_maps_images_to_logits(option):
    cfg = compose([f"model={option}"])
    model = build_part(cfg.model, "model", in_shape=(1, 28, 28), num_classes=10)
    assert model(torch.zeros(3, 1, 28, 28)).shape == (3, 10)


def test_mlp_is_the_tutorials_784_512_512_10():
    model = build_part(compose().model, "model", in_shape=(1, 28, 28), num_classes=10)
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(784, 512), (512, 512), (512, 10)]
    assert sum(isinstance(m, torch.nn.ReLU) for m in model.modules()) == 2


def test_mlp_hidden_sizes_are_configurable():
    cfg = compose(["model.hidden_sizes=[64,32,16]"])
    model = build_part(cfg.model, "model", in_shape=(1, 28, 28), num_classes=10)
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    assert [m.out_features for m in linears] == [64, 32, 16, 10]


@pytest.mark.parametrize("option", GROUPS["optimizer"])
def test_every_optimizer_builds_and_takes_the_top_level_lr(option):
    cfg = compose([f"optimizer={option}", "lr=0.0123"])
    optimizer = build_part(cfg.optimizer, "optimizer", params=[torch.nn.Parameter(torch.zeros(2))])
    assert type(optimizer).__name__.lower() == option
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.0123)
    if option == "sgd":
        assert optimizer.param_groups[0]["momentum"] == 0.9


@pytest.mark.parametrize("option", [o for o in GROUPS["data"] if o != "imagefolder"])
def test_every_dataset_loads_with_a_seeded_val_split(option, data_root):  # imagefolder: its own
    cfg = compose(
        [f"data={option}", f"data.root={data_root}"]
        if option != "synthetic"
        else [f"data={option}"]
    )
    data = build_part(cfg.data, "data", seed=0)
    assert isinstance(data, Dataset)
    assert data.in_shape == (1, 28, 28) and data.num_classes == 10
    assert len(data.val) == cfg.data.val_size
    assert data.train.images.dtype == torch.uint8
    if option != "synthetic":
        assert (len(data.train), len(data.test)) == (55_000, 10_000)
    again, other = build_part(cfg.data, "data", seed=0), build_part(cfg.data, "data", seed=1)
    assert torch.equal(again.val.labels, data.val.labels)
    assert torch.equal(again.val.images, data.val.images)
    assert not torch.equal(other.val.images, data.val.images)
    # val and train together are the original training set, with no overlap
    assert len(data.train) + len(data.val) == (60_000 if option != "synthetic" else 3000)


def test_synthetic_data_is_learnable_but_not_constant():
    data = build_part(compose(["data=synthetic"]).data, "data", seed=0)
    assert sorted(data.train.labels.unique().tolist()) == list(range(10))
    assert data.train.images.float().std() > 20


@pytest.mark.parametrize("option", GROUPS["device"])
def test_every_device_resolves_or_says_it_is_unavailable(option):
    cfg = compose([f"device={option}"])
    available = {
        "auto": True,
        "cpu": True,
        "cuda": torch.cuda.is_available(),
        "mps": torch.backends.mps.is_available(),
    }[option]
    if available:
        assert resolve_device(cfg.device.type).type in {"cpu", "cuda", "mps"}
    else:
        with pytest.raises(UserError, match=f"device={option} is unavailable"):
            resolve_device(cfg.device.type)


def test_auto_device_prefers_cuda_then_mps_then_cpu():
    expected = (
        "cuda"
        if torch.cuda.is_available()
        else ("mps" if torch.backends.mps.is_available() else "cpu")
    )
    assert resolve_device(compose(["device=auto"]).device.type).type == expected


def test_data_root_comes_from_mnistlab_data_and_the_override_beats_it(monkeypatch, tmp_path):
    monkeypatch.setenv("MNISTLAB_DATA", str(tmp_path))
    assert compose().data.root == str(tmp_path)
    assert compose(["data.root=/elsewhere"]).data.root == "/elsewhere"
    monkeypatch.delenv("MNISTLAB_DATA")
    assert compose().data.root == "./data"


@pytest.mark.parametrize(
    "override",
    [
        "lr=abc",
        "batch_size=1.5",
        "epochs=ten",
        "model.foo=1",
        "model.hidden_sizes=[a]",
        "device.type=gpu",
        "device=gpu",
        "model=vgg",
        "train.on_nan=maybe",
        "seed=x",
    ],
)
def test_wrong_types_and_unknown_keys_fail_before_anything_runs(override):
    # the schemas in config.py fail at composition; a component's signature, at validation
    with pytest.raises((HydraException, OmegaConfBaseException, UserError)):
        validate(compose([override]))


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("+optimzer.lr=1", "optimzer is not a known key: did you mean optimizer?"),
        (
            "+model.hiden_sizes=[3]",
            "model.hiden_sizes is not a known key: did you mean model.hidden_sizes?",
        ),
        ("lr=0", "lr=0.0 is invalid"),
        ("batch_size=0", "batch_size=0 is invalid"),
        ("epochs=-1", "epochs=-1 is invalid"),
        ("data.val_size=-1", "data.val_size=-1 is invalid"),
    ],
)
def test_added_keys_and_bad_values_fail_validation(override, message):
    with pytest.raises(UserError) as err:
        validate(compose([override]))
    assert message in str(err.value)


def test_cli_prints_the_composed_config_without_training(tmp_path: Path):
    result = run_cli(["--cfg", "job", "model=cnn", "lr=0.5"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "_target_: mnistlab.models.CNN" in result.stdout
    assert "lr: 0.5" in result.stdout
    assert not (tmp_path / "mlruns").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["+optimzer.lr=1"], "Error: optimzer is not a known key: did you mean optimizer?"),
        (["lr=-1", "data=synthetic"], "Error: lr=-1.0 is invalid"),
        (["lr=abc"], "Error: lr: Value 'abc' of type 'str' could not be converted to Float"),
        (["model=vgg"], "Error: model=vgg is not an option: use one of cnn, lenet5, mlp, resnet"),
        (
            ["model.hiden_sizes=[1]"],
            "Error: model.hiden_sizes is not a known key: did you mean model.hidden_sizes?",
        ),
        (["device.type=gpu"], "Error: device.type: Invalid value 'gpu', expected one of [auto"),
        (["-m", "data=synthetic", "lr=1e-3,-1"], "Error: lr=-1.0 is invalid"),  # before job 0
        (["-m", "batch_size=32,0.5"], "Error: batch_size: Value '0.5' of type 'float' could not"),
        (
            ["data.root=/nonexistent", "data.download=false"],
            "Error: data.root=/nonexistent: the folder /nonexistent does not exist; point",
        ),
        (  # found as the model is built: the store is only opened after that
            ["data=synthetic", "model=cnn", "model.channels=[8,8,8,8,8]"],
            "Error: model.channels=[8,8,8,8,8]: 5 pooling blocks halve a 28x28 input",
        ),
    ],
)
def test_cli_setup_errors_are_one_line_with_exit_2_and_no_run(tmp_path: Path, args, message):
    result = run_cli(args, cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [result.stderr.strip()]
    assert result.stderr.startswith(message)
    assert "Traceback" not in result.stderr + result.stdout
    assert not (tmp_path / "mlruns").exists()


def test_the_check_marks_only_its_own_jobs_as_checked(tmp_path, monkeypatch):
    # a mark in this process's environment would leak into every command started from it
    from mnistlab.cli import CHECKED_ENV, check_command_line

    monkeypatch.chdir(tmp_path)
    argv = check_command_line(["data=synthetic", "epochs=1"])
    assert CHECKED_ENV not in os.environ
    assert argv == ["data=synthetic", "epochs=1", f"++hydra.job.env_set.{CHECKED_ENV}=1"]
    assert check_command_line(["--config-dir", "x", "epochs=1"]) == [
        "--config-dir",
        "x",
        "epochs=1",
    ]  # fmt: skip  (Hydra's flags: the jobs check themselves)


def test_a_checked_sweep_tells_its_jobs_they_passed_and_how_many_there_are(tmp_path, monkeypatch):
    register()  # the typed schemas, as python -m train registers them
    from mnistlab.cli import CHECKED_ENV, check_command_line
    from mnistlab.jobs import SIZE_ENV

    monkeypatch.chdir(tmp_path)
    mark = f"++hydra.job.env_set.{CHECKED_ENV}=1"
    size = f"++hydra.job.env_set.{SIZE_ENV}=2"  # the jobs' number, for their share of the cores
    argv = ["-m", "data=synthetic", "seed=1,2"]
    assert check_command_line(argv) == [*argv, mark, size]
    # Hydra's own when named: the mark and the size; Optuna's when chosen: only the mark (its
    # trials are not the jobs expanded here)
    named = ["-m", "data=synthetic", "seed=1,2", "hydra/sweeper=basic"]
    assert check_command_line(named) == [*named, mark, size]
    hydras = "hydra._internal.core_plugins.basic_sweeper.BasicSweeper"
    target = ["-m", "data=synthetic", "seed=1,2", f"hydra.sweeper._target_={hydras}"]
    assert check_command_line(target) == [*target, mark, size]
    optuna = ["-m", "data=synthetic", "hparams_search=optuna"]
    assert check_command_line(optuna) == [*optuna, mark]


def test_the_check_expands_the_jobs_of_a_basic_sweeper_a_preset_chose(tmp_path):
    register()  # the typed schemas, as python -m train registers them
    # a preset in the user's own config dir picks a basic sweeper with params: its 3 jobs
    from mnistlab.cli import check_command_line
    from mnistlab.config import CONF_DIR
    from mnistlab.jobs import BASIC_SWEEPER, SIZE_ENV, sweep_jobs

    (tmp_path / "hydra" / "sweeper").mkdir(parents=True)
    (tmp_path / "hydra" / "sweeper" / "grid.yaml").write_text(
        "_target_: hydra._internal.core_plugins.basic_sweeper.BasicSweeper\n"
        "max_batch_size: 2\nparams:\n  seed: 1,2,3\n"
    )
    (tmp_path / "experiment").mkdir()
    (tmp_path / "experiment" / "grid.yaml").write_text(
        "# @package _global_\ndefaults:\n  - override /hydra/sweeper: grid\n"
    )
    overrides = ["data=synthetic", f"hydra.searchpath=[file://{tmp_path}]", "experiment=grid"]
    argv = check_command_line(["-m", *overrides])
    assert argv[-1] == f"++hydra.job.env_set.{SIZE_ENV}=3"
    sweep = sweep_jobs(argv[1:], CONF_DIR)
    assert sweep.sweeper == BASIC_SWEEPER
    assert [[o for o in job if o.startswith("seed=")] for job in sweep.jobs] == [
        ["seed=1"], ["seed=2"], ["seed=3"],
    ]  # fmt: skip


def test_a_sweep_over_the_checked_limit_is_left_for_its_jobs_to_check(tmp_path, monkeypatch):
    register()  # the typed schemas, as python -m train registers them
    # the check composes the first MAX_CHECKED jobs: the others must still check themselves
    from mnistlab import cli
    from mnistlab.config import CONF_DIR
    from mnistlab.jobs import SIZE_ENV, sweep_jobs

    monkeypatch.chdir(tmp_path)
    over = sweep_jobs(["seed=range(0,4)"], CONF_DIR, max_jobs=3)
    assert over.jobs == [["seed=0"], ["seed=1"], ["seed=2"]] and not over.complete
    assert sweep_jobs(["seed=range(0,3)"], CONF_DIR, max_jobs=3).complete
    monkeypatch.setattr(cli, "MAX_CHECKED", 3)  # composing 1,000 configs takes minutes
    argv = ["-m", "data=synthetic", "epochs=1", "seed=range(0,4)"]
    assert cli.check_command_line(argv) == argv
    assert cli.check_command_line(argv[:-1] + ["seed=range(0,3)"])[4:] == [
        f"++hydra.job.env_set.{cli.CHECKED_ENV}=1", f"++hydra.job.env_set.{SIZE_ENV}=3",
    ]  # fmt: skip
