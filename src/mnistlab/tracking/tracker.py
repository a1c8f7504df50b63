"""`MlflowTracker`, the MLflow implementation of the Tracker (`mnistlab.tracking.Tracker`).

Each epoch's metrics go to `metrics.jsonl` in the output dir first, then to the store in one batch
from a background thread that waits out a server gone away while training goes on; artifacts
queue behind them. Every MLflow call is made from this process.

A run's lineage: `origin_tags` (the commit, uncommitted changes, the machine), `config_digest`
(shared by runs that differ only in their seed) and `log_datasets` (each split as an MLflow
dataset input with a digest over its exact samples: the val split's changes with the seed).
MLflow's own system metrics (CPU, memory, disk, network, GPU) come from its SystemMetricsMonitor:
a point every SAMPLE_S x SAMPLES = 10 s, and the samples since the last point when the run ends.
"""

import contextlib
import copy
import hashlib
import json
import logging
import os
import queue
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from mnistlab.errors import TrackingUnavailable
from mnistlab.tracking.store import redact, server_problem

log = logging.getLogger(__name__)
SAMPLE_S = 2.0  # seconds between two samples of the system metrics
SAMPLES = 5  # samples averaged into one logged point
# not part of what a run computes: its seed, how it is recorded or resumed, where files live
DIGEST_EXCLUDES = ("seed", "repeats", "resume", "force", "sweep_name", "mlflow", "checkpoint")
PATH_KEYS = {"data": ("root", "cache_dir", "download")}
NAMES = {"MNIST": "mnist", "FashionMNIST": "fashion_mnist"}  # torchvision class -> data option
HOST_TAG = "mnistlab.host"  # the machine a run trains on: where its folder and lock are
RAW_INPUTS = "0-1 pixels (uint8 0-255 in torch), N x {} x {} x {}, normalised inside: (x-{})/{}"


class MlflowTracker:
    """A live MLflow run, fed through its journal and a background sender."""

    def __init__(self, client: Any, run_id: str, experiment_id: str, uri: str, output_dir: Path,
                 wait_s: float):  # fmt: skip
        self.client, self.run_id, self.experiment_id, self.uri = client, run_id, experiment_id, uri
        self.wait_s = wait_s  # how long `flush` waits for a store that has gone away
        self.journal = output_dir / "metrics.jsonl"
        self.failure: str | None = None  # why the last attempt failed, while batches wait
        self.logged = 0  # the last epoch the store had when the run was (re)opened
        self.system: Any = None  # MLflow's system metrics monitor, if on
        self._queue: queue.Queue = queue.Queue()
        threading.Thread(target=self._send_forever, name="mlflow-sender", daemon=True).start()

    def _send_forever(self) -> None:
        while True:
            send = self._queue.get()
            while not self._try_send(send):
                time.sleep(1.0)
            self._queue.task_done()

    def _try_send(self, send: Callable[[], None]) -> bool:
        if (problem := server_problem(self.uri, timeout=2)) is not None:
            return self._failed(f"server unreachable: {problem}")
        try:
            send()
        except Exception as err:
            return self._failed(f"{type(err).__name__}: {' '.join(str(err).split())[:200]}")
        if self.failure:
            log.info(f"MLflow store reachable again: sending buffered metrics ({self.unsent} left)")
            self.failure = None
        return True

    def _failed(self, reason: str) -> bool:
        reason = redact(reason)  # MLflow's messages carry the URI, password and all
        if self.failure is None:
            log.warning(f"MLflow: {reason}; training goes on, metrics wait in {self.journal}")
        self.failure = reason
        return False

    def log_epoch(self, epoch: int, metrics: dict[str, float], steps: dict[str, list]) -> None:
        """Keep the epoch in the journal, then queue it as one batch (not twice after a resume)."""
        if epoch <= self.logged:
            return
        record = {"epoch": epoch, "metrics": metrics, "steps": steps}
        with open(self.journal, "a") as f:
            f.write(json.dumps(record) + "\n")
            f.flush()
            os.fsync(f.fileno())
        busy = self.unsent and self.failure is None  # the sender may be deep in MLflow's retries
        if busy and (problem := server_problem(self.uri, timeout=2)) is not None:
            self._failed(f"server unreachable: {problem}")
        self._queue_record(record)

    def _queue_record(self, record: dict) -> None:
        now, epoch = int(time.time() * 1000), record["epoch"]
        rows = [(k, float(v), now, epoch) for k, v in record["metrics"].items()]
        steps = record.get("steps") or {"train/step_loss": record.get("step_losses", [])}
        rows += [(k, float(v), now, s) for k, points in steps.items() for s, v in points]
        self._queue.put(lambda: log_metric_rows(self.client, self.run_id, rows))

    def log_tags(self, tags: dict[str, str]) -> None:
        """Queue tags for the run, behind the metrics."""
        for key, value in tags.items():
            self._queue.put(lambda k=key, v=value: self.client.set_tag(self.run_id, k, v))

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        """Queue a file, or a folder's contents, for upload behind the metrics (not in the loop)."""
        self._queue.put(lambda: self._upload(path, artifact_path))

    def _upload(self, path: Path, artifact_path: str | None) -> None:
        if path.is_dir():
            self.client.log_artifacts(self.run_id, str(path), artifact_path)
        elif path.exists():
            self.client.log_artifact(self.run_id, str(path), artifact_path)

    def log_dataset(self, data: Any, cfg: Any) -> None:
        """Queue the run's train, val and test splits as MLflow dataset inputs, behind the rest."""
        facts = dataset_facts(data, cfg)  # the digests: computed here, where the data is
        self._queue.put(lambda: log_datasets(self.client, self.run_id, facts))

    def start_system_metrics(self, resume: bool) -> None:
        """Start MLflow's system metrics monitor on this run (a thread of MLflow's own)."""
        from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

        try:
            self.system = SystemMetricsMonitor(
                self.run_id, sampling_interval=SAMPLE_S, samples_before_logging=SAMPLES,
                resume_logging=resume, tracking_uri=self.uri,
            )  # fmt: skip
            self.system.start()
        except Exception as err:  # psutil missing, say: the run goes on without them
            log.warning(f"system metrics are off: {type(err).__name__}: {err}")
            self.system = None

    def stop_system_metrics(self, send: bool = True) -> None:
        """Stop the monitor and log the samples taken since its last point; without `send` (the
        store has gone away) leave MLflow's thread to end by itself, nothing waited for."""
        monitor, self.system = self.system, None
        if monitor is None or not send:
            return
        monitor.finish()  # MLflow's own stop: it drops the partial window
        try:
            if any(m.metrics for m in monitor.monitors):  # the partial window of a short run
                monitor.publish_metrics(monitor.aggregate_metrics())
                monitor.mlflow_logger.flush()
        except Exception as err:  # a monitor that cannot aggregate an empty window
            log.debug(f"last system metrics point skipped: {err}")

    def log_model(self, model: Any, example: Any) -> None:
        """Log `model` as MLflow model "model" of raw pixels (a RawImageModel), once the store has
        all before it; tag its URI. Pickled, this torch its requirement (pt2: slower, pins all)."""
        import mlflow.pytorch
        import torch
        from mlflow.models import Model

        from mnistlab.models import RawImageModel

        self.flush()
        info = json.loads((self.journal.parent / "data.json").read_text())
        shape, mean, std = info["in_shape"], info["mean"], info["std"]
        logged = Model.log(
            artifact_path=None, name="model", flavor=mlflow.pytorch, run_id=self.run_id,
            pytorch_model=RawImageModel(on_cpu(model), shape, mean, std),
            input_example=(example.detach().cpu() * std + mean).clamp(0, 1).numpy(),  # N=2: dynamic
            metadata={"description": RAW_INPUTS.format(*shape, mean, std), **info},  # data.json
            pip_requirements=[f"torch=={torch.__version__.split('+')[0]}"],  # no +cpu build tag
            serialization_format="pickle",
        )  # fmt: skip
        self.client.set_tag(self.run_id, "model_uri", logged.model_uri)  # for load_model(this)

    @property
    def unsent(self) -> int:
        """Epoch batches and uploads not yet in the store."""
        return self._queue.unfinished_tasks

    def catch_up(self, upto: int | None = None) -> None:
        """Queue the journal's epochs (up to `upto`, else all) that the store lacks (the server
        was away, or the process was killed before they went out)."""
        history = self.client.get_metric_history(self.run_id, "epoch_time_s")
        self.logged = max((m.step for m in history), default=0)
        records = {}
        if self.journal.exists():
            for line in self.journal.read_text().splitlines():
                with contextlib.suppress(ValueError):  # a line cut short by a kill
                    record = json.loads(line)
                    records[record["epoch"]] = record
        for epoch in sorted(records):
            if self.logged < epoch and (upto is None or epoch <= upto):
                self._queue_record(records[epoch])

    def flush(self) -> None:
        """Wait until the store has all queued; raise TrackingUnavailable after `wait_s`."""
        deadline = time.monotonic() + self.wait_s
        while self.unsent and time.monotonic() < deadline:
            time.sleep(0.05)
        if self.unsent:
            raise self._unavailable(f"{self.unsent} uploads did not reach it")

    def _unavailable(self, what: str) -> TrackingUnavailable:
        return TrackingUnavailable(
            f"MLflow store {redact(self.uri)} unreachable for {self.wait_s:g} s "
            f"(mlflow.offline_wait_s; {self.failure or 'no answer'}): {what}; every epoch's "
            f"metrics are kept in {self.journal}, the run stays RUNNING there. Once it is back, "
            f"send them and finish the run with: python -m train resume={self.journal.parent}"
        )


def log_metric_rows(client: Any, run_id: str, rows: list[tuple]) -> None:
    """Log metric rows (key, value, timestamp in ms, step) to run `run_id` in one request."""
    from mlflow.entities import Metric

    client.log_batch(run_id, metrics=[Metric(*row) for row in rows], synchronous=True)


def on_cpu(model: Any) -> Any:
    """`model` in eval mode on the CPU: a copy if it lives elsewhere (the run's own stays)."""
    elsewhere = any(t.device.type != "cpu" for t in [*model.parameters(), *model.buffers()])
    return (copy.deepcopy(model).cpu() if elsewhere else model).eval()


def digest_fields(cfg: DictConfig) -> dict[str, Any]:
    """The part of the resolved config that a config digest covers."""
    container = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
    kept = {k: v for k, v in container.items() if k not in DIGEST_EXCLUDES}
    for group, keys in PATH_KEYS.items():
        if isinstance(kept.get(group), dict):
            kept[group] = {k: v for k, v in kept[group].items() if k not in keys}
    if isinstance(kept.get("train"), dict):  # how often it logs and whether it draws plots
        kept["train"] = {k: v for k, v in kept["train"].items() if k not in ("log_every", "plots")}
    return kept


def config_digest(cfg: DictConfig) -> str:
    """A 12-hex-digit hash of `digest_fields(cfg)`, stable across processes and key order."""
    text = json.dumps(digest_fields(cfg), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def split_digest(images: Any, labels: Any) -> str:
    """A 16-hex-digit sha256 of a split's uint8 images (with their shape) and its labels, read
    in place (MNIST's three splits: 0.04 s; copied to bytes first, 0.07 s)."""
    h = hashlib.sha256(str(tuple(images.shape)).encode())
    h.update(images.detach().cpu().contiguous().numpy())
    h.update(labels.detach().cpu().contiguous().numpy())
    return h.hexdigest()[:16]


def dataset_name_and_source(data_cfg: DictConfig) -> tuple[str, str]:
    """(name, source) of a run's dataset: mnist or fashion_mnist and the root folder, an image
    folder's own name and path, or synthetic and the generator."""
    root = data_cfg.get("root")
    if "dataset" in data_cfg:  # torchvision: MNIST, FashionMNIST
        cls = str(data_cfg.dataset).rsplit(".", 1)[-1]
        name = NAMES.get(cls, cls.lower())
        return name, str(Path(str(root)).expanduser().resolve()) if root else cls
    if root:  # a folder of images: named after it
        path = Path(str(root)).expanduser().resolve()
        return path.name, str(path)
    return "synthetic", str(data_cfg.get("_target_", ""))


def dataset_facts(data: Any, cfg: DictConfig) -> dict[str, Any]:
    """The run's dataset inputs: its name, where it comes from, each split's digest and size."""
    name, where = dataset_name_and_source(cfg.data)
    parts = {split: getattr(data, split) for split in ("train", "val", "test")}
    splits = {k: (split_digest(p.images, p.labels), len(p)) for k, p in parts.items()}
    return {"name": name, "where": where, "splits": splits}


def log_datasets(client: Any, run_id: str, facts: dict[str, Any]) -> None:
    """Log the splits of `dataset_facts` to run `run_id` as MLflow DatasetInputs."""
    from mlflow.data.code_dataset_source import CodeDatasetSource
    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.meta_dataset import MetaDataset
    from mlflow.entities import DatasetInput, InputTag
    from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

    name, where = facts["name"], facts["where"]
    if name == "synthetic":
        source = CodeDatasetSource({"mlflow.source.name": where})
    else:
        source = resolve_dataset_source(where)  # a local folder, or a URL
    inputs = []
    for split, (digest, samples) in facts["splits"].items():
        dataset = MetaDataset(source, name=name, digest=digest)
        tags = [InputTag(MLFLOW_DATASET_CONTEXT, split), InputTag("samples", str(samples))]
        inputs.append(DatasetInput(dataset._to_mlflow_entity(), tags))
    client.log_inputs(run_id, datasets=inputs)


def git_state() -> dict[str, str]:
    """The commit of the mnistlab checkout and whether it has uncommitted changes, if in git."""
    src = Path(__file__).resolve().parent

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", "-C", str(src), *args], capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()

    try:
        sha = git("rev-parse", "HEAD")
        dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.SubprocessError):
        return {}
    return {"mlflow.source.git.commit": sha, "git.dirty": str(dirty).lower()}


def origin_tags() -> dict[str, str]:
    """The commit and the machine, for a run's tags."""
    return {**git_state(), HOST_TAG: socket.gethostname()}
