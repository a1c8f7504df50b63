"""Imported by the fork server that starts a sweep's joblib workers (`workers.fork_from_server`):
what every job imports, imported once, before the server forks the workers.

The server only imports: it runs no torch op, so it has no OpenMP threads to fork. It outlives
SIGTERM and SIGHUP sent to the whole process group (a closed terminal, a cluster's scancel): its
workers' jobs then stop as they should (a checkpoint, the run KILLED), where loky would kill
every worker whose server is gone. A worker forked from it gets the signals' default action.
"""

import contextlib
import os
import signal

# torch and the compiler hooks its optimizers load, matplotlib, MLflow and its PyTorch flavor (a
# job logs its model itself); one that fails to import is the jobs' to report
MODULES = ("mnistlab.recipe", "torch._dynamo", "torch.export._trace", "mlflow.entities",
           "mlflow.pytorch", "mlflow.store.tracking.sqlalchemy_store")  # fmt: skip
_SERVER = os.getpid()


def _in_server_ignored(signum: int, frame: object) -> None:
    """Nothing in the server; in a worker forked from it, the signal's default action."""
    if os.getpid() == _SERVER:
        return
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)


for _signal in (signal.SIGTERM, signal.SIGHUP):
    signal.signal(_signal, _in_server_ignored)
for _name in MODULES:
    with contextlib.suppress(Exception, KeyboardInterrupt):  # the stdlib's server stops on either
        __import__(_name)
