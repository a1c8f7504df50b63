"""Atomic, durable file writes: a file is its old version or its new one, whole, after any crash."""

import contextlib
import contextvars
import csv
import errno
import io
import os
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import IO

from mnistlab.errors import WriteError

TEMP = ".tmp"  # a temp file is .{name}.tmp{pid of its writer}, beside the file it becomes
FULL = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}  # a full disk, a quota, a file size limit
WHERE: contextvars.ContextVar[str | None] = contextvars.ContextVar("where", default="hydra.run.dir")


def atomic_write(path: Path, write: Callable[[IO[bytes]], None]) -> None:
    """Call `write` on a temp file beside `path`, fsync it, rename it over `path`, and fsync the
    folder, so `path` is the old file or the new one, whole, even after a crash or power cut."""
    tmp = path.with_name(f".{path.name}{TEMP}{os.getpid()}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
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
        oserror = isinstance(err, OSError)
        reason = (err.strerror if oserror else None) or "the write stopped short"
        if oserror and err.errno in (errno.EEXIST, errno.ENOTDIR):  # a file where a folder goes
            reason = f"{nearest_existing(path.parent)} is a file, not a folder"
        full = not oserror or err.errno in FULL
        raise WriteError(str(path), reason, full, WHERE.get()) from err
    finally:
        with contextlib.suppress(OSError):  # none left; or its folder was never there
            tmp.unlink(missing_ok=True)


def nearest_existing(path: Path) -> Path:
    """`path` if it exists, else its nearest existing folder (where a write to `path` begins)."""
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def write_text(path: Path, text: str) -> None:
    """Write `text` to `path` atomically."""
    atomic_write(path, lambda f: f.write(text.encode()))


def write_csv(path: Path | str, columns: list[str], rows: Iterable[dict]) -> None:
    """Write `rows` to `path` atomically as CSV: a header of `columns`, then only those values."""
    path, text = Path(path), io.StringIO(newline="")
    writer = csv.DictWriter(text, fieldnames=columns, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    write_text(path, text.getvalue())


@contextlib.contextmanager
def advising(where: str | None) -> Iterator[None]:
    """A write that fails within (in this thread) advises pointing option `where` elsewhere,
    not hydra.run.dir: the sweep's dir, say, or a command's --output (None: no option)."""
    token = WHERE.set(where)
    try:
        yield
    finally:
        WHERE.reset(token)
