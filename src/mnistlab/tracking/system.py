"""MLflow's own system metrics (`system/cpu_utilization_percentage`, memory, disk, network, and
GPU where nvidia-ml-py finds one) for a run that is not the fluent active run.

MLflow's `SystemMetricsMonitor` samples every `SAMPLE_S` seconds and logs the mean of
`SAMPLES` samples, so a point every 10 s: enough detail for a run of minutes, about 360 points
an hour for a long one. A run shorter than that would get no point, so when the run ends the
samples taken since the last point are logged as one last point.
"""

import logging
from typing import Any

log = logging.getLogger(__name__)

SAMPLE_S = 2.0  # seconds between two samples
SAMPLES = 5  # samples averaged into one logged point


class SystemMetrics:
    """MLflow's monitor for run `run_id`, started at once; `stop` logs what is left."""

    def __init__(self, run_id: str, uri: str, resume: bool = False):
        from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

        self.monitor: Any = None
        try:
            self.monitor = SystemMetricsMonitor(
                run_id, sampling_interval=SAMPLE_S, samples_before_logging=SAMPLES,
                resume_logging=resume, tracking_uri=uri,
            )  # fmt: skip
            self.monitor.start()
        except Exception as err:  # psutil missing, say: the run goes on without them
            log.warning(f"system metrics are off: {type(err).__name__}: {err}")
            self.monitor = None

    def stop(self, send: bool = True) -> None:
        """Stop sampling; with `send`, log the samples taken since the last point and wait for
        the store (not when it has gone away: the run's own metrics matter more)."""
        monitor, self.monitor = self.monitor, None
        if monitor is None or monitor._process is None:
            return
        monitor._shutdown_event.set()
        monitor._process.join(timeout=30)
        if not send:
            return
        try:
            if any(m.metrics for m in monitor.monitors):  # the partial window of a short run
                monitor.publish_metrics(monitor.aggregate_metrics())
        except Exception as err:  # a monitor that cannot aggregate an empty window
            log.debug(f"last system metrics point skipped: {err}")
        monitor.finish()
