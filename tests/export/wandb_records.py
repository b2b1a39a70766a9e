"""Read a W&B offline run back: its ``run-<id>.wandb`` transaction log, parsed with wandb's own record type.

wandb (0.19+) writes an offline run as a LevelDB-style log: a 7-byte header (``:W&B``, magic 0xBEE1,
version 0), then 32 KiB blocks of chunks, each with a 7-byte header (CRC32, length, type: 1 full,
2 first, 3 middle, 4 last) holding a serialised ``wandb_internal_pb2.Record``. This reads the
chunks back into records; nothing here sends anything anywhere.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from wandb.proto import wandb_internal_pb2

HEADER = b":W&B" + struct.pack("<HB", 0xBEE1, 0)
BLOCK = 32 * 1024
CHUNK_HEADER = 7


def records(path: Path) -> list[wandb_internal_pb2.Record]:
    """Every record of one ``.wandb`` file, in order."""
    data = path.read_bytes()
    assert data[: len(HEADER)] == HEADER, f"{path} is not a W&B transaction log"
    out, pending, pos = [], b"", len(HEADER)
    while pos + CHUNK_HEADER <= len(data):
        left_in_block = BLOCK - pos % BLOCK
        if left_in_block < CHUNK_HEADER:  # a block's tail too short for a header is padding
            pos += left_in_block
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + CHUNK_HEADER])
        pos += CHUNK_HEADER
        if kind == 0 and length == 0:  # zero padding up to the next block
            pos += left_in_block - CHUNK_HEADER
            continue
        pending += data[pos : pos + length]
        pos += length
        if kind in (1, 4):  # full, last: a record is complete
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            out.append(record)
            pending = b""
    return out


@dataclass
class OfflineRun:
    """What one offline run holds: id, name, group, config, summary and the keys it logged to history."""

    run_id: str
    name: str = ""
    group: str = ""
    job_type: str = ""
    tags: list[str] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)
    history_keys: set[str] = field(default_factory=set)
    artifacts: list[str] = field(default_factory=list)


def _items(items) -> dict[str, Any]:
    return {(item.key or "/".join(item.nested_key)): json.loads(item.value_json) for item in items}


def read_run(run_dir: Path) -> OfflineRun:
    """One ``offline-run-*`` dir."""
    (log,) = run_dir.glob("run-*.wandb")
    run = OfflineRun(run_id="")
    for record in records(log):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            r = record.run
            run.run_id, run.name, run.group, run.job_type = r.run_id, r.display_name, r.run_group, r.job_type
            run.tags = list(r.tags)
            run.config.update(_items(r.config.update))
        elif kind == "config":
            run.config.update(_items(record.config.update))
        elif kind == "summary":
            run.summary.update(_items(record.summary.update))
        elif kind == "history":
            run.history_keys.update(item.key or "/".join(item.nested_key) for item in record.history.item)
        elif kind == "artifact":
            run.artifacts.append(record.artifact.name)
    return run


def offline_runs(wandb_dir: Path) -> list[OfflineRun]:
    """Every offline run under ``wandb_dir`` (WANDB_DIR), oldest first."""
    return [read_run(d) for d in sorted((wandb_dir / "wandb").glob("offline-run-*"))]
