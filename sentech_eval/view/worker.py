"""What runs in the viewer's worker process: a digest (``view.digest``) and how many rows it read.

The server sends ``run(name, *args)``; this module imports nothing heavy itself (the server imports it to
name the function, and must stay without pandas and matplotlib), the worker imports ``view.digest`` at its
start. ``run`` answers the digest and the rows it read: a worker that read a large run (``RETIRE_ROWS``
rows or more) is retired by the server once idle, and the next digest starts a fresh one - its imports,
not its largest run, are what stays resident beside the server. Ctrl-C is the server's to handle: the
worker ignores it (the server shuts it down).
"""

from __future__ import annotations

import signal
from typing import Any

RETIRE_ROWS = 200_000  # a worker that read this many rows for one digest is retired when idle


def setup() -> None:
    """The worker process's initializer: Ctrl-C left to the server, its memory set-up, its modules."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
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
