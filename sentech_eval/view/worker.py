"""What runs in the viewer's worker process: a digest (``view.digest``) and how many rows it read.

The server sends ``run(name, *args)``; this module imports nothing heavy itself (the server imports it to
name the function, and must stay without pandas and matplotlib), the worker imports ``view.digest`` at its
start. ``run`` answers the digest and the rows it read: a worker that read a large run (``RETIRE_ROWS``
rows or more) is retired by the server once idle, and the next digest starts a fresh one - its imports,
not its largest run, are what stays resident beside the server. Ctrl-C is the server's to handle: the
worker ignores it (the server shuts it down); on Linux it is killed when the server dies, however it dies.
"""

from __future__ import annotations

import ctypes
import multiprocessing
import os
import signal
import sys
from typing import Any

RETIRE_ROWS = 200_000  # a worker that read this many rows for one digest is retired when idle


PR_SET_PDEATHSIG = 1  # prctl(2): the signal this process gets when its parent dies


def die_with_parent() -> None:
    """Linux: SIGKILL this process when its parent (the server) dies, even by SIGKILL; elsewhere nothing."""
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        except (OSError, AttributeError):
            pass
    parent = multiprocessing.parent_process()
    if parent is not None and os.getppid() != parent.pid:  # the server died before this process got here
        os._exit(0)


def setup() -> None:
    """The worker process's initializer: Ctrl-C left to the server, gone with it, its memory set-up, its modules."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    die_with_parent()
    from sentech_eval.view import digest

    digest.setup_worker_memory()


def run(name: str, *args: Any) -> tuple[Any, int]:
    """(``view.digest.<name>(*args)``, the rows it read)."""
    from sentech_eval.view import digest

    digest.ROWS_READ[0] = 0
    try:
        return getattr(digest, name)(*args), digest.ROWS_READ[0]
    finally:
        digest.release_memory(collect=False)  # the idle worker gives its peak back (a large digest collects too)
