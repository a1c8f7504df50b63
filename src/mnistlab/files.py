"""Atomic, durable file writes: a file is its old version or its new one, whole, after any crash."""

import csv
import io
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import IO

from mnistlab.errors import WriteError

TEMP = ".tmp"  # a temp file is .{name}.tmp{pid of its writer}, beside the file it becomes


def atomic_write(path: Path, write: Callable[[IO[bytes]], None]) -> None:
    """Call `write` on a temp file beside `path`, fsync it, rename it over `path`, and fsync the
    folder, so `path` is the old file or the new one, whole, even after a crash or power cut."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}{TEMP}{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        folder = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(folder)
        finally:
            os.close(folder)
    except (OSError, RuntimeError) as err:  # torch.save reports a short write as RuntimeError
        reason = err.strerror if isinstance(err, OSError) else None
        raise WriteError(
            f"cannot write {path} ({reason or 'the write stopped short'}): free space on that "
            f"disk or point hydra.run.dir elsewhere; the earlier {path.name}, if any, is intact"
        ) from err
    finally:
        tmp.unlink(missing_ok=True)


def write_text(path: Path, text: str) -> None:
    """Write `text` to `path` atomically."""
    data = text.encode()
    atomic_write(path, lambda f: f.write(data))


def write_csv(path: Path | str, columns: list[str], rows: Iterable[dict]) -> None:
    """Write `rows` to `path` atomically as CSV: a header of `columns`, then each row's values
    for them (other keys left out)."""
    path, text = Path(path), io.StringIO(newline="")
    writer = csv.DictWriter(text, fieldnames=columns, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    write_text(path, text.getvalue())


def remove_temp_files(folder: Path, pid: int) -> None:
    """Remove the temp files that process `pid`, killed midway, left in `folder`."""
    for tmp in folder.glob(f".*{TEMP}{pid}"):
        tmp.unlink(missing_ok=True)
