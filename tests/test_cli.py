"""The `mnistlab` command (train, evaluate, predict, report, promote) and `--help`, run as a user
runs them: the installed console script and `python -m train`, in a folder of their own."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO, cli_env, only_run

MNISTLAB = Path(sys.executable).with_name("mnistlab")  # what `pip install -e .` installs
COMMANDS = ("train", "evaluate", "predict", "report", "promote")
TINY = ["data=synthetic", "data.train_size=600", "data.val_size=100", "data.test_size=200",
        "epochs=1", "device=cpu", "mlflow.log_model=false", "train.plots=false"]  # fmt: skip


def mnistlab(args: list[str], cwd: Path, **env: str) -> subprocess.CompletedProcess:
    """Run `mnistlab ARGS` in `cwd`, as a shell runs the installed command."""
    assert MNISTLAB.exists(), f"no {MNISTLAB}: `pip install -e .` installs the mnistlab command"
    return subprocess.run([str(MNISTLAB), *args], cwd=cwd, env=cli_env(**env),
                          capture_output=True, text=True, timeout=600)  # fmt: skip


def shadowing_train_py(folder: Path) -> None:
    """A train.py of the user's own in `folder`, which fails if it is what runs."""
    (folder / "train.py").write_text("raise SystemExit('the train.py of the working folder ran')\n")


@pytest.mark.parametrize("args", [[], ["--help"]])
def test_mnistlab_lists_its_commands_one_line_each(tmp_path, args):
    result = mnistlab(args, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    listed = [line.split()[0] for line in result.stdout.splitlines() if line.startswith("  ")]
    assert listed == list(COMMANDS), result.stdout


def test_an_unknown_command_is_one_line_and_exit_2(tmp_path):
    result = mnistlab(["trian", "epochs=1"], cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "Error: trian is not a command of mnistlab: use one of " + ", ".join(COMMANDS)
    ]


def config_yaml_comment(key: str) -> str:
    """The comment of a top-level key's line in conf/config.yaml."""
    (line,) = [x for x in (REPO / "conf" / "config.yaml").read_text().splitlines()
               if x.startswith(f"{key}:")]  # fmt: skip
    return line.split("#", 1)[1].strip()


@pytest.mark.parametrize("how", ["mnistlab train", "python -m train"])
def test_train_help_lists_groups_options_keys_and_comments_and_the_other_commands(tmp_path, how):
    args = ["--help", "model=cnn"]  # an override is taken, as Hydra's --help takes it
    if how == "mnistlab train":
        result = mnistlab(["train", *args], cwd=tmp_path, PYTHONPROFILEIMPORTTIME="1")
    else:
        result = subprocess.run([sys.executable, "-m", "train", *args], cwd=tmp_path,
                                env=cli_env(PYTHONPROFILEIMPORTTIME="1"),
                                capture_output=True, text=True, timeout=600)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout
    groups = sorted(p.name for p in (REPO / "conf").iterdir() if p.is_dir() and p.name != "hydra")
    for group in groups:  # every group, with all its options
        options = sorted(p.stem for p in (REPO / "conf" / group).glob("*.yaml"))
        assert f"\n{group}: {', '.join(options)} (default " in out, group
    assert "model: cnn, lenet5, mlp, resnet (default mlp)\n    network architecture" in out
    assert "schema" not in out and "hydra/" not in out.split("--hydra-help")[0]
    for key in ("lr", "batch_size", "epochs", "seed", "repeats", "resume"):
        assert re.search(rf"^{key}: .*# {re.escape(config_yaml_comment(key))}$", out, re.M), key
    assert re.search(r"^  plots: true +# draw learning curves", out, re.M)  # nested keys too
    assert "Other commands: mnistlab evaluate | predict | report | promote" in out
    imported = [line.rsplit("|", 1)[-1].strip() for line in result.stderr.splitlines()]
    assert "mnistlab.config" in imported and "torch" not in imported  # fast: no torch
    assert "Traceback" not in result.stderr


def test_mnistlab_train_trains_into_the_folders_mlflow_db_and_no_train_py_stands_in(tmp_path):
    shadowing_train_py(tmp_path)
    result = mnistlab(["train", *TINY], cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    _, run = only_run(f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert run.info.status == "FINISHED" and run.data.metrics["test/acc"] > 0.5
    assert run.data.params["epochs"] == "1"


def test_python_m_mnistlab_is_the_same_command_and_no_train_py_stands_in(tmp_path):
    shadowing_train_py(tmp_path)  # `python -m` puts the working folder first on sys.path
    result = subprocess.run([sys.executable, "-m", "mnistlab", "train", "--cfg", "job", "lr=0.5"],
                            cwd=tmp_path, env=cli_env(), capture_output=True, text=True,
                            timeout=600)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "lr: 0.5" in result.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["lr=abc"], "Error: lr: Value 'abc' of type 'str' could not be converted to Float"),
        (["model=vgg"], "Error: model=vgg is not an option: use one of cnn, lenet5, mlp, resnet"),
        (["--foo"], "Error: --foo is not a flag of python -m train: give settings as key="),
    ],
)
def test_mnistlab_train_mistakes_are_one_line_with_exit_2(tmp_path, args, message):
    result = mnistlab(["train", *args], cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [result.stderr.strip()]
    assert result.stderr.startswith(message)
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "outputs").exists()


@pytest.mark.parametrize("command", COMMANDS[1:])
def test_the_other_commands_answer_help(tmp_path, command):
    result = mnistlab([command, "--help"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.startswith("usage: ") and "--tracking-uri" in result.stdout
