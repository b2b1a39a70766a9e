"""What runs in the viewer's worker process: a digest (``view.digest``) and the worker's peak memory.

The server sends ``run(name, *args)``; this module imports nothing heavy itself (the server imports it to
name the function, and must stay without pandas and matplotlib), the worker imports ``view.digest`` on its
first task. ``run`` answers the digest and the worker's peak resident size: a worker that grew past
``RETIRE_MB`` (it read a large run) is retired by the server once idle, and the next digest starts a fresh
one - its imports, not its largest run, are what stays resident beside the server.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

RETIRE_MB = 250.0  # a worker whose peak passed this is retired when idle (a fresh one is about 150-190 MB)


def setup() -> None:
    """The worker process's initializer: its memory set-up and the modules every digest needs."""
    from sentech_eval.view import digest

    digest.setup_worker_memory()


def run(name: str, *args: Any) -> tuple[Any, float]:
    """(``view.digest.<name>(*args)``, this process's peak resident size in MB)."""
    from sentech_eval.view import digest

    try:
        return getattr(digest, name)(*args), peak_mb()
    finally:
        digest.release_memory(collect=False)  # the idle worker gives its peak back (a large digest collects too)


def peak_mb() -> float:
    """This process's peak resident size (VmHWM) in MB; 0 where /proc does not say."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return float(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0
