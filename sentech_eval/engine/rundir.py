"""The run dir: checked before use, and held by one run at a time.

``prepare_run_dir(path)`` creates the dir or says in one sentence why it cannot (an existing file, no
write permission, a read-only disk). ``lock_run_dir(path)`` takes an OS file lock on
``<run dir>/.sentech-eval.lock`` (``fcntl.flock``: released by the kernel when the process dies,
however it dies); a second run into the same dir stops at once naming the process that holds it.
Locks are re-entrant within one process (``run`` takes it before Hydra starts, the job again).
"""

from __future__ import annotations

import errno
import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sentech_eval.errors import RunDirError

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: no advisory locks; runs are not protected
    fcntl = None  # type: ignore[assignment]

LOCK_FILE = ".sentech-eval.lock"
_held: dict[Path, int] = {}  # resolved run dir -> fd of its lock file, for this process


def prepare_run_dir(path: str | Path, what: str = "hydra.run.dir") -> Path:
    """Create ``path`` (and parents) or raise RunDirError naming the problem and the fix."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise RunDirError(f"{what}={path} is an existing file, not a directory; choose another {what}.")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise RunDirError(f"{what}={path} cannot be created ({_reason(exc)}); choose a writable {what}.") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise RunDirError(f"{what}={path} is not writable (permission denied); choose a writable {what}.")
    return path


def _reason(exc: OSError) -> str:
    if exc.errno == errno.ENOTDIR:
        return "a part of the path is a file"
    return exc.strerror or type(exc).__name__


def lock_run_dir(path: str | Path, what: str = "hydra.run.dir", command: str | None = None) -> None:
    """Hold ``path`` for this process until it exits; RunDirError if another live process holds it.

    ``command``: the sentech-eval command that wants to write there (``score``, ``combine`` …), named in
    the message instead of ``what``."""
    path = prepare_run_dir(path, what)
    key = path.resolve()
    if key in _held or fcntl is None:
        return
    lock_path = key / LOCK_FILE
    try:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError as exc:
        raise RunDirError(
            f"{what}={path} cannot hold a lock file ({_reason(exc)}); choose a writable {what}."
        ) from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        holder = _read_holder(fd)
        os.close(fd)
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES) and command is not None:
            raise RunDirError(
                f"Another sentech-eval process ({holder}) is writing into {path}; `sentech-eval {command}` would "
                "overwrite the rows it merges — wait for it to finish (or stop it) and run this again."
            ) from None
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            raise RunDirError(
                f"Another sentech-eval run ({holder}) is writing into {path}; wait for it to finish or stop it, "
                f"or choose another {what} (two runs into one dir would overwrite each other's rows)."
            ) from None
        raise RunDirError(f"{what}={path} cannot be locked ({_reason(exc)}); choose another {what}.") from None
    record = f"pid {os.getpid()} on {socket.gethostname()}, started {time.strftime('%Y-%m-%d %H:%M:%S')}\n"
    os.ftruncate(fd, 0)
    os.pwrite(fd, record.encode(), 0)
    _held[key] = fd


def _read_holder(fd: int) -> str:
    try:
        text = os.pread(fd, 512, 0).decode("utf-8", "replace").strip()
    except OSError:
        text = ""
    return text.splitlines()[0] if text else "another process"


@contextmanager
def holding_run_dir(path: str | Path, command: str) -> Iterator[None]:
    """Hold ``path``'s lock while a command (``score``, ``combine``, ``report`` …) rewrites files in it; a lock
    this process already holds (the run's own) is kept as it was."""
    key = Path(path).resolve()
    if key in _held or fcntl is None or not key.is_dir():  # (no dir: nothing in it to protect, none is made)
        yield
        return
    lock_run_dir(path, "the run dir", command=command)
    try:
        yield
    finally:
        unlock_run_dir(path)


def unlock_run_dir(path: str | Path) -> None:
    """Release this process's lock on ``path`` (normally the process just exits)."""
    fd = _held.pop(Path(path).resolve(), None)
    if fd is not None:
        os.close(fd)
