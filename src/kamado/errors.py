"""Errors a user can cause. The CLI prints these as one line (no traceback) and exits with status 2."""

from __future__ import annotations

import errno
import os

# OSErrors that are the machine's or the user's doing (a full disk, a read-only folder, missing permission, a file
# where an output folder should be), not kamado's: the CLI reports them as one line naming the path and the cause.
USER_OS_ERRNOS = frozenset(
    {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EFBIG, errno.EEXIST, errno.ENOTDIR}
)


class KamadoError(Exception):
    """Base class: bad input or configuration, reported to the user as one clear message."""


class ConfigError(KamadoError):
    """A preset or override is wrong (unknown key, wrong type, inconsistent shape)."""


class DataError(KamadoError):
    """An input file is missing, empty, malformed, or of the wrong dtype."""


class CheckpointError(KamadoError):
    """A checkpoint folder is missing, incomplete, or does not match the model."""


class DiskError(KamadoError):
    """The disk refused a write: full, read-only, or no permission."""


def user_os_error(exc: BaseException) -> OSError | None:
    """The user-caused OSError behind `exc` (itself, or its `__cause__`/`__context__` chain), else None.

    Libraries wrap OSErrors (safetensors raises its own error with the errno text inside; datatrove re-raises),
    so the chain and the message are both searched."""
    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno in USER_OS_ERRNOS:
            return e
        e = e.__cause__ or e.__context__
    return None


_HINTS = {
    errno.ENOSPC: "free some space, then run the same command again to resume",
    errno.EDQUOT: "free some space, then run the same command again to resume",
    errno.EFBIG: "the file system refused a file this large",
    errno.EROFS: "choose a writable output folder",
    errno.EACCES: "check the folder's permissions",
    errno.EPERM: "check the folder's permissions",
    errno.EEXIST: "something else is in the way there: move it, or choose another output folder",
    errno.ENOTDIR: "a file is where kamado needs a folder: move it, or choose another output folder",
}


def describe_os_error(e: OSError) -> str:
    """`PATH: No space left on device (free some space, ...)`: the path, the cause and what to do, in one line."""
    path = e.filename if e.filename is not None else "(a file being written)"
    cause = e.strerror or errno.errorcode.get(e.errno or 0, "OS error")
    hint = _HINTS.get(e.errno or 0)
    return f"{path}: {cause}" + (f" ({hint})" if hint else "")


def reraise_disk_error(exc: Exception, path: object) -> None:
    """Re-raise a library's error that wraps an OS error code (safetensors: `Os { code: 28, ... }`) as the
    OSError it is, naming `path`, so the CLI reports it as one line. Returns when `exc` is something else."""
    import re

    m = re.search(r"(?:code:\s*|os error\s+)(\d+)", str(exc))
    if m and int(m.group(1)) in USER_OS_ERRNOS:
        code = int(m.group(1))
        raise OSError(code, os.strerror(code), str(path)) from exc
