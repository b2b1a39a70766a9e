"""view.memory: the viewer's processes allocate Arrow buffers from the C allocator and give a large read back."""

from __future__ import annotations

import subprocess
import sys

PROBE = """
import numpy as np, pyarrow as pa, pyarrow.compute
from sentech_eval.view import memory

def rss_mb():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS"):
            return int(line.split()[1]) / 1024

def read():
    table = pa.table({"x": np.arange(20_000_000, dtype=np.float64)})  # 160 MB
    doubled = pa.compute.multiply(table["x"], 2.0)  # and 160 MB more from Arrow's allocator
    return rss_mb()

memory.use_system_allocator()
print(pa.default_memory_pool().backend_name)
read()  # once first: what the first use of a kernel sets up for good is not counted
memory.release(collect=True)
before = rss_mb()
peak = read()
memory.release(collect=True)
print(round(peak - before), round(rss_mb() - before))
"""


def test_a_large_read_goes_back_to_the_system():
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, check=True).stdout.split()
    backend, grown, left = out[0], int(out[1]), int(out[2])
    assert backend == "system"
    assert grown >= 300  # the table and the result were resident
    assert left < 20  # and is given back, not kept by an allocator for later
