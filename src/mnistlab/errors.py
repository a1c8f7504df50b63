"""The errors a user sees. Each message is one line: the key or file, the bad value, the fix.

`UserError` is a mistake found before or while setting up (a config value, a missing file,
device or store): the command exits 2. The others end a run that had started: exit 1.
"""

import os


class UserError(ValueError):
    """Something the user can fix (an option, a path, a device, a store); exit code 2."""


class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN or inf (with train.on_nan=stop); exit code 1."""


class WriteError(OSError):
    """A file could not be written (a full disk, say); the earlier version of it is intact.
    `full`: the disk (or a size limit) was full; `where`: the option the message advises pointing
    elsewhere (`files.advising`), or None (a resumed run writes where it wrote before)."""

    def __init__(self, path: str, reason: str, full: bool, where: str | None) -> None:
        super().__init__(None, reason, path)  # strerror, filename
        self.path, self.reason, self.full, self.where = path, reason, full, where

    def __str__(self) -> str:
        if self.where is None:
            fix = "free space on that disk" if self.full else "make its folder writable"
        else:
            fix = f"point {self.where} elsewhere"
            fix = f"free space on that disk or {fix}" if self.full else fix
        name = os.path.basename(self.path)
        return (
            f"cannot write {self.path} ({self.reason}): {fix}; the earlier {name}, if any, "
            "is intact"
        )

    def __reduce__(self) -> tuple:  # pickled whole: a process pool hands its errors back so
        return (type(self), (self.path, self.reason, self.full, self.where), self.__dict__)


class TrackingUnavailable(ConnectionError):
    """The tracking server stayed unreachable; what it missed is kept in the run's output dir."""


def exit_code(err: BaseException) -> int | None:
    """The exit code of an error the user gets as one line, None for any other (a bug)."""
    if isinstance(err, UserError):
        return 2
    if isinstance(err, FloatingPointError | OSError):  # a NaN loss, the server gone, a full disk
        return 1
    return None


def one_line(err: BaseException) -> str:
    """The error's message on one line."""
    return " ".join(str(err).split())
