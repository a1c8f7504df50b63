"""Debug aids around the epochs: torch's anomaly detection, and a profiler trace of them."""

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from mnistlab.files import write_text


@contextlib.contextmanager
def debugging(train_cfg: Any, output_dir: Path, tracker: Any) -> Iterator[None]:
    """With train.detect_anomaly, find the op that made a NaN or inf in the backward pass; with
    train.profile, record the epochs with torch.profiler and add its trace (trace.json, for
    chrome://tracing or Perfetto) and a table of the top ops (top_ops.txt) to the run's
    artifacts under profile/."""
    with torch.autograd.set_detect_anomaly(bool(train_cfg.detect_anomaly)):
        if not train_cfg.profile:
            yield
            return
        from torch.profiler import ProfilerActivity, profile

        activities = [ProfilerActivity.CPU]
        if torch.cuda.is_available():
            activities.append(ProfilerActivity.CUDA)
        with profile(activities=activities, record_shapes=True) as prof:
            yield
        folder = output_dir / "profile"
        folder.mkdir(parents=True, exist_ok=True)
        prof.export_chrome_trace(str(folder / "trace.json"))
        sort = "self_cuda_time_total" if torch.cuda.is_available() else "self_cpu_time_total"
        write_text(folder / "top_ops.txt", prof.key_averages().table(sort_by=sort, row_limit=30))
        tracker.log_artifact(folder, "profile")
