"""The MLflow store of a single run, worked from a process of its own: the recorder.

Importing MLflow and opening its store take 2-3 s of pure Python. In the training process
they would hold the run up (a thread would compete with training for the GIL). So `python -m
train` starts this process first thing (`start_recorder_early`): it imports MLflow while torch
loads in the training process, and opens the store while the run builds its optimizer
(`store_opener`). The run then reaches the store through `RemoteClient`: each call is
a request on the recorder's stdin, answered on its stdout, so the run's journal, sender,
watchdog and statuses work as with a client of its own. With a model to log, the recorder also
warms up and runs its export (`tracking.exporter`).

If the recorder dies (a kill, a crash), `RemoteClient` opens the store in the training process
and goes on from the call that failed: nothing is lost, the run only pays the import then.
Once the training process is gone (its end of the pipe closed), the recorder stops its system
metrics and its export, gives the calls under way a few seconds, and quits: the watchdog closes
a run whose process died. Sweep jobs, and runs started from Python, open the store themselves:
their process imports MLflow once for every run it trains.

Protocol: pickled (id, function, args, kwargs) in, (id, True, result) or (id, False, error)
out; each request runs in a thread of its own, its function called with the recorder's
MlflowClient first.
"""

import contextlib
import functools
import itertools
import logging
import os
import pickle
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any

from omegaconf import DictConfig

from mnistlab.tracking.store import connect, open_store, tracking_uri
from mnistlab.tracking.sweep import in_multirun

log = logging.getLogger(__name__)
# the recorder process's code: Ctrl-C and SIGTERM are the training process's to handle (it
# records the run KILLED through the recorder), from the first instruction on
ENTRY = (
    "import signal; signal.signal(signal.SIGINT, signal.SIG_IGN); "
    "signal.signal(signal.SIGTERM, signal.SIG_IGN); "
    "from mnistlab.tracking.recorder import main; main()"
)
GRACE_S = 5.0  # how long calls under way may finish once the training process is gone, in s
SWITCH_S = 0.0005  # how long a thread may hold the recorder's GIL while another waits, in s
_early: list["Recorder"] = []  # started by `start_recorder_early`, until a run takes it


class RecorderGone(Exception):
    """The recorder process is not there to answer."""


class Recorder:
    """The training process's side of the recorder process: requests sent with an id, answers
    matched to them by a thread of their own, so that a call stuck on a store that went away
    holds up no other (as with an MlflowClient shared by threads)."""

    def __init__(self) -> None:
        requests_in, requests_out = os.pipe()
        replies_in, replies_out = os.pipe()
        try:
            self.process: subprocess.Popen | None = subprocess.Popen(
                [sys.executable, "-c", ENTRY, *sys.argv], stdin=requests_in,
                stdout=replies_out, env={**os.environ, "CUDA_VISIBLE_DEVICES": ""},
            )  # fmt: skip
        except OSError as err:  # no process to spare: the run opens the store itself
            log.debug(f"no recorder process: {err}")
            self.process = None
        finally:
            os.close(requests_in)
            os.close(replies_out)
        self._requests = Connection(requests_out, readable=False)
        self._replies = Connection(replies_in, writable=False)
        self._lock = threading.RLock()  # over sending, `_waiting` and `broken`
        self._waiting: dict[int, Future] = {}
        self._ids = itertools.count()
        self.broken = self.process is None
        self.gone = ""  # why the process is gone, once it is
        if self.process is not None:
            threading.Thread(target=self._read_answers, name="recorder", daemon=True).start()

    def submit(self, func: Callable, *args: Any, **kwargs: Any) -> Future:
        """Ask for `func(client, *args, **kwargs)` in the recorder process, with its
        MlflowClient: the future of its result (RecorderGone if the process is gone)."""
        future: Future = Future()
        with self._lock:
            if self.broken:
                future.set_exception(RecorderGone(self.gone or "no recorder process"))
                return future
            key = next(self._ids)
            self._waiting[key] = future
            try:
                self._requests.send((key, func, args, kwargs))
            except BaseException as err:  # a pipe gone; a Ctrl-C mid-request, raised on
                self._give_up(f"{type(err).__name__}: {err}")
                if not isinstance(err, Exception):
                    raise
        return future

    def call(self, func: Callable, *args: Any, **kwargs: Any) -> Any:
        """`submit`, and wait for the result (an error there is raised here)."""
        return self.submit(func, *args, **kwargs).result()

    def _read_answers(self) -> None:
        """Hand each answer to the future waiting for it; fail them all once the process died."""
        while True:
            try:
                key, ok, value = self._replies.recv()
            except Exception as err:  # EOF: it died
                with self._lock:
                    self._give_up(f"{type(err).__name__}: {err}" if str(err) else "it died")
                return
            with self._lock:
                future = self._waiting.pop(key, None)
            if future is not None and ok:
                future.set_result(value)
            elif future is not None:
                future.set_exception(value)

    def _give_up(self, why: str) -> None:
        """(The lock held.) No more requests go to the process; those waiting fail."""
        self.broken, self.gone = True, self.gone or why
        self.close(kill=True)
        while self._waiting:
            self._waiting.popitem()[1].set_exception(RecorderGone(self.gone))

    def close(self, kill: bool = False) -> None:
        """End its input: it quits at once, having nothing under way (the calls are waited
        for); or `kill` it."""
        with self._lock:
            self.broken, self.gone = True, self.gone or "closed"
            if self.process is not None and kill:
                with contextlib.suppress(OSError):
                    self.process.kill()
            with contextlib.suppress(OSError):
                self._requests.close()


class RemoteClient:
    """An MlflowClient whose calls run in the recorder process; if it goes away, in this one.

    MlflowClient's methods (`set_tag`, `log_artifact`, ...) are forwarded by name; `run` takes
    a function of the client, for work that returns or takes MLflow's own objects."""

    def __init__(self, recorder: Recorder, uri: str, experiment_id: str):
        self.recorder, self.uri, self.experiment_id = recorder, uri, experiment_id
        self.local: Any = None  # this process's own MlflowClient, once the recorder is gone
        self._opening = threading.Lock()

    def run(self, func: Callable, *args: Any, **kwargs: Any) -> Any:
        """`func(client, *args, **kwargs)`, where the store was opened."""
        if self.local is None:
            try:
                return self.recorder.call(func, *args, **kwargs)
            except RecorderGone as err:
                self._open_here(err)
        return func(self.local, *args, **kwargs)

    def _open_here(self, err: RecorderGone) -> None:
        """Open the store in this process, once, the recorder being gone."""
        with self._opening:
            if self.local is None:
                log.warning(f"MLflow recorder process lost ({err}): the run opens the store "
                            "itself and goes on")  # fmt: skip
                self.local = open_store(self.uri, experiment_id=self.experiment_id)[0]

    def __getattr__(self, name: str) -> Callable:
        """MlflowClient's method `name`, run where the store was opened."""
        if name.startswith("_"):
            raise AttributeError(name)
        return functools.partial(self.run, client_method, name)

    def close(self) -> None:
        """Let the recorder go: it quits once it has answered."""
        self.recorder.close()


def client_method(client: Any, name: str, *args: Any, **kwargs: Any) -> Any:
    """`client.<name>(*args, **kwargs)`."""
    return getattr(client, name)(*args, **kwargs)


def on_store(client: Any, func: Callable, *args: Any, **kwargs: Any) -> Any:
    """`func(client, *args, **kwargs)` where `client` lives: here for an MlflowClient, in the
    recorder process for a RemoteClient."""
    if isinstance(client, RemoteClient):
        return client.run(func, *args, **kwargs)
    return func(client, *args, **kwargs)


def on_recorder(client: Any, func: Callable, *args: Any, **kwargs: Any) -> Any:
    """`on_store`, for what lives in the process that started it (the system metrics monitor):
    nothing (None) once the recorder that ran it is gone."""
    if isinstance(client, RemoteClient) and client.local is not None:
        return None
    with contextlib.suppress(RecorderGone):
        if isinstance(client, RemoteClient):
            return client.recorder.call(func, *args, **kwargs)
        return func(client, *args, **kwargs)


def release(client: Any) -> None:
    """Let the recorder process of a RemoteClient go, once its run is closed."""
    if isinstance(client, RemoteClient):
        client.close()


def start_recorder_early() -> None:
    """Start the recorder now, before torch loads, for the run opened later."""
    _early.append(Recorder())


def store_opener(cfg: DictConfig) -> "Opener | None":
    """What opens the run's store while its optimizer is built: the recorder process, if one was
    started early, which now warms up the model export if the run logs one. None without a
    recorder: `connect` it is."""
    recorder = _early.pop() if _early else None
    if recorder is None:
        return None
    if in_multirun():
        recorder.close()
        return None
    # one that died already is `open_remote`'s to replace: epoch 1 spares a core alike
    if cfg.mlflow.log_model:
        from mnistlab.tracking.exporter import start_warming

        recorder.submit(start_warming)
    return Opener(recorder, cfg, warms_up=bool(cfg.mlflow.log_model))


@dataclass
class Opener:
    """Opens a run's store in the recorder process (`connect`'s result: client, experiment id).
    `start` asks for it while the run builds its optimizer (its data found and its model built:
    a run stopped by a missing dataset, or a model that does not fit it, writes no store);
    calling it waits for the answer. `warms_up`: the recorder warms the model export up
    meanwhile, through the run's first epoch, which then trains on one CPU thread fewer
    (`device.Threads`)."""

    recorder: Recorder
    cfg: DictConfig
    warms_up: bool = False
    opening: Future | None = field(default=None, init=False)  # its experiment id, once open

    def start(self) -> None:
        """Have the recorder open the store now (with this process's environment, which
        hydra.job.env_set may have added credentials to)."""
        if self.opening is None:
            uri, env = tracking_uri(self.cfg), dict(os.environ)
            self.opening = self.recorder.submit(open_here, uri, self.cfg.mlflow.experiment, env)

    def __call__(self) -> tuple[Any, str]:
        self.start()
        return open_remote(self.recorder, self.cfg, self.opening)


def open_remote(recorder: Recorder, cfg: DictConfig, opening: Future) -> tuple[Any, str]:
    """(RemoteClient, experiment id) once the recorder answers `opening`; if it died on the
    way, `connect(cfg)` here. The store's own error (a UserError naming the fix) is raised."""
    try:
        experiment_id = opening.result()
    except RecorderGone as err:
        log.warning(f"MLflow recorder process lost ({err}): the run opens the store itself")
        return connect(cfg)
    return RemoteClient(recorder, tracking_uri(cfg), experiment_id), experiment_id


_client: list[Any] = []  # in the recorder process: its MlflowClient, once the store is open
_ready = threading.Event()  # in the recorder process: MLflow imported (or failed to)


def open_here(_: Any, uri: str, experiment: str, env: dict[str, str]) -> str:
    """In the recorder: with the training process's environment, open the store and the
    experiment; the experiment's id."""
    os.environ.update(env)
    client, experiment_id = open_store(uri, experiment)
    _client.append(client)
    return experiment_id


def portable(err: BaseException) -> BaseException:
    """`err` as the training process can unpickle it without importing MLflow: Python's and
    mnistlab's own errors as they are, any other as a RuntimeError with its type and message."""
    if type(err).__module__ in ("builtins", "mnistlab.errors"):
        with contextlib.suppress(Exception):
            pickle.loads(pickle.dumps(err))
            return err
    return RuntimeError(f"{type(err).__name__}: {' '.join(str(err).split())[:2000]}")


def serve(requests: Connection, replies: Connection) -> None:
    """Answer requests, each in a thread of its own, until the training process closes its
    end; then give the calls under way `GRACE_S` to finish."""
    sending, threads = threading.Lock(), []
    while True:
        try:
            request = requests.recv_bytes()
        except (EOFError, OSError):
            break
        threads = [t for t in threads if t.is_alive()]
        threads.append(threading.Thread(target=answer, args=(request, replies, sending)))
        threads[-1].daemon = True
        threads[-1].start()
    wind_down(threads)


def answer(request: bytes, replies: Connection, sending: threading.Lock) -> None:
    """Run one request (once MLflow is imported: two threads importing it at once can trip
    Python's import deadlock check); send its result, or its error."""
    _ready.wait()
    key = None
    try:
        key, func, args, kwargs = pickle.loads(request)
        reply = (key, True, func(_client[-1] if _client else None, *args, **kwargs))
    except BaseException as err:
        reply = (key, False, portable(err))
    with sending:
        try:
            replies.send(reply)
        except OSError:  # the training process is gone
            pass
        except Exception as err:  # a result that does not pickle: nothing was written
            replies.send((key, False, portable(err)))


def wind_down(threads: list[threading.Thread]) -> None:
    """The training process is gone: stop the system metrics and the model export (the
    watchdog closes its run), give the calls under way `GRACE_S`."""
    from mnistlab.tracking import exporter, system

    with contextlib.suppress(Exception):
        system.stop_monitor(None, send=False)
    exporter.drop_export(None)
    deadline = time.monotonic() + GRACE_S
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    exporter.drop_handed()


def warm_up() -> None:
    """Import what a run's requests will need, while torch loads in the training process, and
    have MLflow look up the run's git repository (GitPython: 0.2 s; kept for the new run)."""
    try:
        import mlflow.entities  # noqa: F401
        import mlflow.store.tracking.sqlalchemy_store  # noqa: F401
        import mlflow.system_metrics.system_metrics_monitor  # noqa: F401
        from mlflow.tracking.context.registry import resolve_tags

        import mnistlab.tracking  # noqa: F401

        resolve_tags()
    except Exception as err:  # the requests will say what is missing
        log.debug(f"recorder warm-up: {type(err).__name__}: {err}")
    finally:
        _ready.set()


def main() -> None:
    """Answer the training process's requests, MLflow imported meanwhile; quit at the end of
    its input (at once if it exits before it asked anything: a mistake in its command line)."""
    sys.argv = sys.argv[1:]  # the training command's: MLflow tags the run's source with it
    replies = Connection(os.dup(1), readable=False)
    os.dup2(2, 1)  # what libraries print goes where stderr goes
    requests = Connection(os.dup(0), writable=False)
    # a store call takes the GIL back after each SQLite call; while the export warms up in
    # another thread it waits up to the switch interval each time: with a busy thread beside
    # them, 100 SQLite transactions took 2.7 s at Python's 5 ms, 0.43 s at 0.5 ms
    sys.setswitchinterval(SWITCH_S)
    threading.Thread(target=warm_up, name="warm-up", daemon=True).start()
    serve(requests, replies)
    logging.shutdown()
    os._exit(0)  # not tearing MLflow down: nobody waits for it
