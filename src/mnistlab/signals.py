"""Ctrl-C and SIGTERM: stop training at a step boundary, save a checkpoint, end the run KILLED."""

import logging
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

log = logging.getLogger(__name__)


class Terminated(KeyboardInterrupt):
    """A stop asked for by SIGINT or SIGTERM: the MLflow run ends KILLED, not RUNNING."""


class StopRequest:
    """Turns the first SIGINT or SIGTERM into a request the training loop reads between steps
    (so the checkpoint it saves is consistent); a second signal stops at once."""

    def __init__(self) -> None:
        self.signal: str | None = None

    def __bool__(self) -> bool:
        return self.signal is not None

    def _handle(self, signum: int, frame: Any) -> None:
        name = signal.Signals(signum).name
        if self.signal is not None:
            raise Terminated(f"received signal {name} twice")
        self.signal = name
        log.warning(f"{name}: stopping after this step with a checkpoint (again: stop at once)")

    def raise_if_requested(self, where: str) -> None:
        """Raise Terminated if a signal arrived; `where` says what was saved."""
        if self.signal is not None:
            raise Terminated(f"received signal {self.signal}; {where}")

    @contextmanager
    def installed(self) -> Iterator["StopRequest"]:
        """Catch SIGINT and SIGTERM for the duration (in the main thread only)."""
        main = threading.current_thread() is threading.main_thread()
        caught = (signal.SIGINT, signal.SIGTERM) if main else ()
        previous = {s: signal.signal(s, self._handle) for s in caught}
        try:
            yield self
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)
