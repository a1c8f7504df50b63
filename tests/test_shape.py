"""The shape of the code holds: no import cycle, the epoch loop pure torch, one way into
tracking, layers pointing one way (import-linter's contracts in pyproject.toml), small
functions and modules, the lean core's budgets, and a plain run that is one process."""

import ast
import json
import shutil
import subprocess
import sys
from pathlib import Path

from conftest import REPO, run_cli

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


LINE_BUDGETS = {"src": 5500, "src/mnistlab/tracking": 1800}  # lines of Python, at most
INTERNALS = ("os._exit", "atexit._run_exitfuncs", "_forkserver_pid", "_CURRENT_DEPTH",
             "setswitchinterval", "gc.freeze", "PR_SET_PDEATHSIG")  # fmt: skip
MODULE_BUDGET = 25  # the project's modules a plain run loads, at most


def test_the_code_stays_within_its_line_budgets():
    for folder, budget in LINE_BUDGETS.items():
        lines = sum(len(p.read_text().splitlines()) for p in (REPO / folder).rglob("*.py"))
        assert lines <= budget, f"{folder}: {lines} lines, over its budget of {budget}"


def test_nothing_leans_on_interpreter_or_library_internals():
    found = [
        f"{path.relative_to(REPO)}:{number}: {line.strip()}"
        for path in sorted([*SRC.rglob("*.py"), *(REPO / "bench").glob("*.py")])
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if any(internal in line for internal in INTERNALS)
    ]
    assert not found, found


# Every Python process a run starts records its command line; the training process, at its
# exit, the project's modules it loaded (src/: mnistlab, hydra_plugins, train).
SITE = f"""
import atexit, json, os, sys
argv = open("/proc/self/cmdline", "rb").read().split(b"\\0")[:-1]
with open(os.environ["RECORD"], "a") as out:
    out.write(json.dumps({{"argv": [a.decode() for a in argv]}}) + "\\n")

def modules():
    src = {str(SRC)!r}
    files = {{name: getattr(m, "__file__", None) or "" for name, m in list(sys.modules.items())}}
    mine = sorted({{file: name for name, file in sorted(files.items())
                    if file.startswith(src)}}.values())  # __main__ and __mp_main__: train, once
    with open(os.environ["RECORD"], "a") as out:
        out.write(json.dumps({{"modules": mine}}) + "\\n")

if b"train" in argv:
    atexit.register(modules)
"""


def test_a_plain_run_is_one_process_and_its_watchdog_and_loads_few_modules(tmp_path):
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "sitecustomize.py").write_text(SITE)
    record = tmp_path / "record.jsonl"
    result = run_cli(["data=synthetic", "epochs=1"], cwd=tmp_path,
                     PYTHONPATH=str(tmp_path / "site"), RECORD=str(record))  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    entries = [json.loads(line) for line in record.read_text().splitlines()]
    processes = [e["argv"][1:] for e in entries if "argv" in e]
    assert processes == [["-m", "train", "data=synthetic", "epochs=1"],
                         ["-m", "mnistlab.tracking.watchdog"]], processes  # fmt: skip
    (modules,) = [e["modules"] for e in entries if "modules" in e]
    assert "mnistlab.recipe" in modules and "mnistlab.loop" in modules  # it did train
    assert len(modules) <= MODULE_BUDGET, " ".join(modules)
