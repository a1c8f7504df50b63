"""The MLflow model export of a single run, in the recorder process (`tracking.recorder`).

`torch.export` and MLflow's model code take seconds to import, and the first export scans
every installed package: done by the training process at the end, the user would wait for all
of it. So the recorder, once it has imported MLflow, warms the export up in a thread while the
run builds its parts and trains (`start_warming`), on a core the run spares it in epoch 1.
At the end the run hands it the trained model (`Exporter.hand_over`), in a file in the output
dir, and draws the plots meanwhile. The run ends FINISHED only once the recorder answered with
the model's URI; if the export failed there, or the recorder died, the training process logs the
model itself (`MlflowTracker.flush`), so the record is the same either way. Sweep jobs, and runs
started from Python, log their model themselves: their process imports all that once, for every
run it trains.
"""

import contextlib
import logging
import os
import sys
import threading
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)
HANDED = ".model-export.pt"  # the trained model and an input example, in the output dir


class Exporter:
    """The training process's side of the export: the model handed to the recorder process
    (`recorder`, a `tracking.recorder.Recorder`), and its answer."""

    def __init__(self, recorder: Any) -> None:
        self.recorder = recorder
        self.handed: Path | None = None

    def hand_over(self, run: dict[str, str], model: Any, example: Any, folder: Path) -> bool:
        """Give the recorder `model` to log to `run` (uri, experiment_id, run_id); False if it
        cannot take it: then the caller logs it."""
        import torch

        if self.recorder.broken:
            return False
        self.handed = folder / HANDED
        paths = [os.path.abspath(p) for p in sys.path]  # the user's model classes import there
        job = {**run, "model_file": str(self.handed), "sys_path": paths}
        try:
            torch.save({"model": model, "example": example}, self.handed)
            self.recorder.call(begin_export, job)
        except Exception as err:  # a model that does not pickle, a recorder gone
            log.debug(f"model export not handed over: {type(err).__name__}: {err}")
            self.close()
            return False
        return True

    def answer(self, timeout: float) -> dict[str, str]:
        """Wait up to `timeout` s for the answer: {"model_uri": ...} once the model is logged,
        else {"error": why not}. After `timeout`, the recorder is killed (the run then logs
        the model itself, with a store of its own) and TimeoutError raised."""
        try:
            answer = self.recorder.call(export_answer, max(timeout, 0))
        except TimeoutError:
            self.recorder.close(kill=True)  # no second model logged late
            raise
        except Exception as err:  # the recorder died: RecorderGone
            answer = {"error": f"the recorder process is gone ({err})"}
        self.close()
        return answer

    def drop(self) -> None:
        """The run failed or was stopped: the recorder does not log the model after all."""
        with contextlib.suppress(Exception):
            self.recorder.call(drop_export)
        self.close()

    def close(self) -> None:
        """Drop the handed file."""
        if self.handed is not None:
            self.handed.unlink(missing_ok=True)


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


class Export:
    """In the recorder process: the warm-up thread, and the export of the model handed over."""

    warming: threading.Thread | None = None
    thread: threading.Thread | None = None
    job: dict[str, Any] = {}  # the one handed over
    answer: dict[str, str] = {"error": "the export ended without an answer"}
    dropped = False


def start_warming(_: Any = None) -> None:
    """In the recorder: warm the export up in a thread. At normal priority: at a lower one
    (SCHED_IDLE, nice 19) it holds the recorder's GIL while training keeps it off the cores,
    and the run's store calls wait for it (its metrics reached the store seconds late)."""
    Export.warming = threading.Thread(target=warm_up, name="export-warm-up", daemon=True)
    Export.warming.start()


def begin_export(_: Any, job: dict[str, Any]) -> None:
    """In the recorder: export the handed model in a thread, once the warm-up is done."""
    Export.job = job
    Export.thread = threading.Thread(target=export_now, args=(job,), name="export", daemon=True)
    Export.thread.start()


def export_now(job: dict[str, Any]) -> None:
    """Log the handed model; keep the answer for `export_answer`."""
    if Export.warming is not None:
        Export.warming.join()
    try:
        Export.answer = {"model_uri": export(job)}
    except BaseException as err:
        Export.answer = {"error": f"{type(err).__name__}: {' '.join(str(err).split())[:500]}"}


def export_answer(_: Any, timeout: float) -> dict[str, str]:
    """In the recorder: the export's answer, once it is done; TimeoutError after `timeout` s."""
    if Export.thread is None:
        return {"error": "no model was handed over"}
    Export.thread.join(timeout)
    if Export.thread.is_alive():
        raise TimeoutError(f"no answer from the model export in {timeout:.0f} s")
    return Export.answer


def drop_export(_: Any) -> None:
    """In the recorder: the run failed or logs the model itself; do not log it here."""
    Export.dropped = True


def drop_handed() -> None:
    """In the recorder, its training process gone: remove the model file it handed over, if
    the export has not taken it."""
    if Export.job:
        Path(Export.job["model_file"]).unlink(missing_ok=True)


def export(job: dict[str, Any]) -> str:
    """Load the handed model and log it; its URI."""
    import torch

    sys.path[:] = job["sys_path"]
    handed = Path(job["model_file"])
    parts = torch.load(handed, map_location="cpu", weights_only=False)  # from our own run
    handed.unlink(missing_ok=True)
    if Export.dropped:
        raise RuntimeError("the run no longer wanted the model")
    return log_model(job["uri"], job["experiment_id"], job["run_id"], **parts)
