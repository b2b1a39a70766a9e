"""The viewer's memory given back to the system after each large read, in the server and in its worker.

Arrow's own pools (mimalloc, jemalloc) keep what a read freed for the next one, and glibc keeps freed
heap in each thread's arena: a viewer that read a million rows once would stay at that peak. So the
viewer's processes allocate Arrow buffers from the C allocator (``use_system_allocator``) with a fixed
mmap threshold (a buffer of 128 kB or more is mapped on its own and unmapped when freed), and
``release`` trims what is left after a filter, a row view or a digest.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import os

import pyarrow as pa

M_MMAP_THRESHOLD = -3  # glibc's mallopt parameters
M_ARENA_MAX = -8
MMAP_THRESHOLD = 128 * 1024
ARENAS = 2  # the scan threads share two arenas instead of one each (8 per core by default)


def _libc():
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.malloc_trim  # noqa: B018 - glibc only
        libc.mallopt  # noqa: B018
        return libc
    except (OSError, AttributeError):
        return None


_LIBC = _libc()


def use_system_allocator() -> None:
    """Arrow allocates from the C allocator, large blocks are mapped on their own, threads share few arenas.

    For the viewer's own processes (the ``view`` command and its worker), never for a library user's."""
    os.environ.setdefault("ARROW_DEFAULT_MEMORY_POOL", "system")  # what a spawned worker reads at its start
    pa.set_memory_pool(pa.system_memory_pool())
    if _LIBC is not None:
        _LIBC.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)
        _LIBC.mallopt(M_ARENA_MAX, ARENAS)


def release(collect: bool = False) -> None:
    """Hand freed memory back to the system; ``collect``: a full garbage collection first (worth it after a
    large digest, not after a small one: it costs tens of ms with pandas imported)."""
    if collect:
        gc.collect()
    pa.default_memory_pool().release_unused()
    if _LIBC is not None:
        _LIBC.malloc_trim(0)
