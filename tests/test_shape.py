"""The shape of the code holds: no import cycle, the epoch loop pure torch, one way into
tracking, layers pointing one way (import-linter's contracts in pyproject.toml), and small
functions and modules."""

import ast
import shutil
import subprocess
import sys
from pathlib import Path

from conftest import REPO

SRC = REPO / "src"
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def lint_imports(src: Path, cwd: Path) -> subprocess.CompletedProcess:
    """`lint-imports` with the project's contracts over the package in `src`."""
    return subprocess.run(
        [str(LINT_IMPORTS), "--config", str(REPO / "pyproject.toml"), "--no-cache"],
        cwd=cwd, env={"PYTHONPATH": str(src), "PATH": "/usr/bin:/bin"},
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def test_the_import_contracts_are_kept(tmp_path):
    result = lint_imports(SRC, tmp_path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert "4 kept, 0 broken" in result.stdout


def test_the_contracts_catch_a_cycle_a_tracking_import_in_the_loop_and_a_back_door(tmp_path):
    copy = tmp_path / "src"
    shutil.copytree(SRC / "mnistlab", copy / "mnistlab")
    config = copy / "mnistlab" / "config.py"  # a cycle, through a function-level import
    config.write_text(config.read_text() + "\n\ndef later():\n    from mnistlab import recipe\n")
    loop = copy / "mnistlab" / "loop.py"  # the loop driving MLflow
    loop.write_text(loop.read_text() + "\n\ndef log():\n    import mlflow\n")
    recipe = copy / "mnistlab" / "recipe.py"  # a module of tracking reached around its door
    recipe.write_text(recipe.read_text() + "\nfrom mnistlab.tracking.store import redact\n")
    result = lint_imports(copy, tmp_path)
    assert result.returncode == 1, result.stdout[-3000:]
    for contract in ("No import cycles", "pure torch", "one way in", "Layers point one way"):
        verdicts = [
            x
            for x in result.stdout.splitlines()
            if contract in x and x.endswith(("KEPT", "BROKEN"))
        ]
        assert verdicts and verdicts[0].endswith("BROKEN"), result.stdout[-3000:]


def test_functions_and_modules_stay_small():
    too_long = []
    for path in sorted(SRC.rglob("*.py")):
        tree = ast.parse(path.read_text())
        lines = len(path.read_text().splitlines())
        if lines > 400:
            too_long.append(f"{path.relative_to(REPO)}: {lines} lines")
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                length = node.end_lineno - node.lineno + 1
                if length > 60:
                    too_long.append(f"{path.relative_to(REPO)}:{node.lineno} {node.name}: {length}")
    assert not too_long, too_long
