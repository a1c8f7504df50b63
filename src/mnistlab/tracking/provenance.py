"""What a run records of where it came from: the code's commit and the machine."""

import socket
import subprocess
from pathlib import Path

HOST_TAG = "mnistlab.host"  # the machine a run trains on: where its folder and lock are


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
