"""The MLflow model export of a single run, in a process of its own.

`torch.export` and MLflow's model code take seconds to import, and the first export scans
every installed package: done by the training process at the end, the user would wait for all
of it. So `python -m train` starts this process first thing (`start_export_early`), and
`open_run` takes it (`take_exporter`). It warms up on cores the training process leaves idle
(SCHED_IDLE: training never waits for it). At the end the run hands it the trained model, in a
file in the output dir, and draws the plots meanwhile. The run ends FINISHED only once this
process answered with the model's URI; if the export failed here, or this process died, the
training process logs the model itself (`MlflowTracker.flush`), so the record is the same
either way. A run that ends without a model for it closes this process's input, and it quits
at once. Sweep jobs, and runs started from Python, log their model themselves: their process
imports all that once, for every run it trains.

Protocol: one JSON line in (the store's URI, experiment and run ids, the handed file, the
training process's sys.path); one JSON line out: {"model_uri": ...} or {"error": "..."}.
"""

import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)
HANDED = ".model-export.pt"  # the trained model and an input example, in the output dir
_early: list["Exporter"] = []  # started by `start_export_early`, until a run takes it


class Exporter:
    """The training process's side: the export process, started at once, and its answer."""

    def __init__(self) -> None:
        self.process: subprocess.Popen | None = None
        self.handed: Path | None = None
        try:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "mnistlab.tracking.exporter"],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                text=True, env={**os.environ, "CUDA_VISIBLE_DEVICES": ""},  # CPU work only
            )  # fmt: skip
        except OSError as err:  # no process to spare: the run logs the model itself
            log.debug(f"no export process: {err}")

    def hand_over(self, run: dict[str, str], model: Any, example: Any, folder: Path) -> bool:
        """Give the process `model` to log to `run` (uri, experiment_id, run_id); False if it
        cannot take it: then the caller logs it."""
        import torch

        if self.process is None or self.process.poll() is not None:
            return False
        self.handed = folder / HANDED
        paths = [os.path.abspath(p) for p in sys.path]  # the user's model classes import there
        job = {**run, "model_file": str(self.handed), "sys_path": paths}
        try:
            torch.save({"model": model, "example": example}, self.handed)
            self.process.stdin.write(json.dumps(job) + "\n")  # stdin: the URI may hold a password
            self.process.stdin.flush()
        except Exception as err:  # a model that does not pickle, a process gone
            log.debug(f"export process not used: {type(err).__name__}: {err}")
            self.close()
            return False
        return True

    def answer(self, timeout: float) -> dict[str, str]:
        """Wait up to `timeout` s for the answer: {"model_uri": ...} once the model is logged,
        else {"error": why not}. Raises TimeoutError."""
        import select

        ready, _, _ = select.select([self.process.stdout], [], [], max(timeout, 0))
        if not ready:
            raise TimeoutError(f"no answer from the export process in {timeout:.0f} s")
        try:
            answer = json.loads(self.process.stdout.readline())
        except ValueError:  # no line: it died, or is dying
            answer = None
        self.close(kill=answer is None)
        return answer or {"error": f"the export process ended with code {self.process.wait(5)}"}

    def close(self, kill: bool = False) -> None:
        """Let the process go (it quits at the end of its input), or `kill` it; drop the
        handed file."""
        if self.process is not None:
            with contextlib.suppress(OSError):
                if kill:
                    self.process.kill()
                self.process.stdin.close()
        if self.handed is not None:
            self.handed.unlink(missing_ok=True)


def start_export_early() -> None:
    """Start the export process now, before torch loads, for the run opened later."""
    _early.append(Exporter())


def take_exporter(wanted: bool) -> Exporter | None:
    """The export process started early, for the run opening now; None (and the process let
    go) unless `wanted`, or if none was started: then the run logs the model itself."""
    early = _early.pop() if _early else None
    if early is not None and not wanted:
        early.close()
        return None
    return early


def log_model(uri: str, experiment_id: str, run_id: str, model: Any, example: Any) -> str:
    """Log `model` to run `run_id` as an MLflow PyTorch model "model" (what
    `mlflow.pytorch.log_model` does for the active run), tag the run with its URI; the URI."""
    import mlflow
    import mlflow.pytorch
    from mlflow.models import Model

    mlflow.set_tracking_uri(uri)
    mlflow.set_experiment(experiment_id=experiment_id)  # where MLflow keeps the logged model
    info = Model.log(
        artifact_path=None,
        name="model",
        flavor=mlflow.pytorch,
        run_id=run_id,
        pytorch_model=on_cpu(model),
        input_example=example.cpu().numpy(),  # a batch of 2 keeps the batch size dynamic
        pip_requirements=requirements(),
    )
    mlflow.MlflowClient(uri).set_tag(run_id, "model_uri", info.model_uri)  # for load_model(this)
    return info.model_uri


def requirements() -> list[str]:
    """The logged model's pip requirements: this torch (MLflow's inference costs seconds)."""
    import torch

    return [f"torch=={torch.__version__.split('+')[0]}"]


def on_cpu(model: Any) -> Any:
    """`model` in eval mode on the CPU: a copy if it lives elsewhere, so that the run's own
    model stays where it is (its plots may still be drawing)."""
    import copy

    tensors = [*model.parameters(), *model.buffers()]
    if any(t.device.type != "cpu" for t in tensors):
        model = copy.deepcopy(model).cpu()
    return model.eval()


def warm_up() -> None:
    """Import what the export needs, and save a tiny model once to a scratch folder: the first
    export imports most of torch.export, and scans the installed packages."""
    import tempfile

    import mlflow.pytorch
    import torch

    torch.set_num_threads(1)  # the training process has the cores
    with tempfile.TemporaryDirectory() as scratch, contextlib.suppress(Exception):
        mlflow.pytorch.save_model(  # a failure here is the export's to report
            torch.nn.Linear(2, 2), f"{scratch}/model", input_example=torch.zeros(2, 2).numpy(),
            pip_requirements=requirements(),
        )  # fmt: skip


def export(job: dict[str, Any]) -> str:
    """Load the handed model and log it; its URI."""
    import torch

    sys.path[:] = job["sys_path"]
    handed = Path(job["model_file"])
    parts = torch.load(handed, map_location="cpu", weights_only=False)  # from our own run
    handed.unlink(missing_ok=True)
    return log_model(job["uri"], job["experiment_id"], job["run_id"], **parts)


def prioritize(thread_id: int, wait: bool) -> None:
    """Run `thread_id` on idle cores only while the run trains (`wait`), as any process once the
    run waits for it (Linux; elsewhere it stays as it is)."""
    policy = os.SCHED_IDLE if wait else os.SCHED_OTHER
    with contextlib.suppress(AttributeError, OSError):
        os.sched_setscheduler(thread_id, policy, os.sched_param(0))


def may_idle() -> bool:
    """Whether a thread here may go to idle priority and come back: a process without
    CAP_SYS_NICE, under RLIMIT_NICE 0, may not come back (and would export at idle priority)."""

    def probe() -> None:
        with contextlib.suppress(AttributeError, OSError):
            os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
            os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))
            allowed.append(True)

    allowed: list[bool] = []
    thread = threading.Thread(target=probe)
    thread.start()
    thread.join()
    return bool(allowed)


def main() -> None:
    """Warm up on idle cores while waiting for the run's model; log it; quit at once if the run
    ends without one, or where it could only warm up competing with training (then the run
    logs its model itself)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a Ctrl-C is the run's to handle
    if not may_idle():
        return
    prioritize(0, wait=True)
    answers = os.fdopen(os.dup(1), "w")  # stdout is for the answer alone:
    os.dup2(2, 1)  # what libraries print goes where stderr goes
    warming = threading.Thread(target=warm_up, daemon=True)  # its thread inherits the policy
    warming.start()
    line = sys.stdin.readline()
    if not line:  # no model for us: gone now, imports half done or not
        os._exit(0)
    for thread in (threading.main_thread(), warming):
        prioritize(thread.native_id or 0, wait=False)
    warming.join()
    try:
        answer = {"model_uri": export(json.loads(line))}
    except Exception as err:
        answer = {"error": f"{type(err).__name__}: {' '.join(str(err).split())[:500]}"}
    print(json.dumps(answer), file=answers, flush=True)
    os._exit(0)  # not tearing torch and MLflow down: the run may be waiting to exit


if __name__ == "__main__":
    main()
