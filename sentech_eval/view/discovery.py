"""Find the runs, sweeps and races under the viewer's root dirs, and resolve a run id back to its dir.

A run dir holds ``results.parquet`` and/or ``results.parts/`` (a run still writing, or killed). A
sweep dir holds ``multirun.yaml``, ``sweep.json`` or ``trials.parquet`` (a race also ``race.json``);
once combined it has its own ``results.parquet`` and is listed as one line, its job dirs under it.
Nothing here writes: the walk only lists and stats. A run's id is ``<root index>/<path under the
root>``; ``resolve`` refuses ``..``, absolute parts and anything whose real path (symlinks followed)
leaves the root, so only files under the given dirs are ever read.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

RESULTS_FILE = "results.parquet"
PARTS_DIR = "results.parts"
SWEEP_MARKERS = ("multirun.yaml", "sweep.json", "trials.parquet")
RACE_MARKERS = ("race.json", "race.parquet")
SKIP_DIRS = {PARTS_DIR, ".hydra", "__pycache__", ".git", ".venv", "node_modules"}
RUNNING_WITHIN_S = 120.0  # parts written this recently: the run is probably still going


@dataclass(frozen=True)
class FileIdentity:
    """What the caches key on: a file's path, size and modification time."""

    path: str
    size: int
    mtime_ns: int


@dataclass(frozen=True)
class RunDir:
    """One run, sweep or race found under a root."""

    root_index: int
    rel: str  # posix path under the root, "" for the root itself
    path: Path
    kind: str  # "run", "sweep" or "race"
    state: str  # "finished", "running", "partial" (parts left by a kill) or "empty"
    files: tuple[FileIdentity, ...]  # results.parquet first, then the part files

    @property
    def id(self) -> str:
        return f"{self.root_index}/{self.rel}" if self.rel else str(self.root_index)

    @property
    def name(self) -> str:
        return self.rel or self.path.name


def _identity(path: Path) -> FileIdentity | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return FileIdentity(str(path), st.st_size, st.st_mtime_ns)


def _inside(path: Path, root: Path) -> bool:
    """True when ``path``'s real location (symlinks followed) is ``root`` or under it."""
    try:
        real = path.resolve(strict=True)
    except (OSError, RuntimeError):
        return False
    return real == root or root in real.parents


def inspect_dir(root_index: int, root: Path, path: Path) -> RunDir | None:
    """The run found at ``path`` (a dir under ``root``), or None when it holds no results."""
    real_root = root.resolve()
    results = path / RESULTS_FILE
    parts_dir = path / PARTS_DIR
    files: list[FileIdentity] = []
    if results.is_file() and _inside(results, real_root):
        ident = _identity(results)
        if ident:
            files.append(ident)
    part_files: list[FileIdentity] = []
    if parts_dir.is_dir() and _inside(parts_dir, real_root):
        for part in sorted(parts_dir.glob("part-*.parquet")):
            if _inside(part, real_root):
                ident = _identity(part)
                if ident:
                    part_files.append(ident)
    files.extend(part_files)
    kind = "race" if any((path / m).exists() for m in RACE_MARKERS) else None
    if kind is None and any((path / m).exists() for m in SWEEP_MARKERS):
        kind = "sweep"
    if not files and kind is None:
        return None
    if part_files:
        newest = max(f.mtime_ns for f in part_files) / 1e9
        state = "running" if time.time() - newest < RUNNING_WITHIN_S else "partial"
    elif files:
        state = "finished"
    else:
        state = "empty"
    rel = path.relative_to(root).as_posix() if path != root else ""
    return RunDir(root_index, "" if rel == "." else rel, path, kind or "run", state, tuple(files))


def discover(roots: list[Path]) -> list[RunDir]:
    """Every run and sweep under ``roots`` (symlinked dirs are not followed), newest first by file time.

    A sweep with a combined ``results.parquet`` is one entry and its job dirs are not listed; a
    sweep still going (no combined table yet) is listed, and so are its jobs.
    """
    found: list[RunDir] = []
    for index, root in enumerate(roots):
        if not root.is_dir():
            continue
        combined_sweeps: list[Path] = []
        for dirpath, dirnames, _ in os.walk(root, followlinks=False):
            here = Path(dirpath)
            dirnames[:] = sorted(d for d in dirnames if d not in SKIP_DIRS and not d.startswith("."))
            if any(s in here.parents for s in combined_sweeps):
                continue
            entry = inspect_dir(index, root, here)
            if entry is None:
                continue
            if entry.kind != "run" and entry.files:
                combined_sweeps.append(here)
            found.append(entry)
    found.sort(key=lambda r: max((f.mtime_ns for f in r.files), default=0), reverse=True)
    return found


class NotFound(Exception):
    """The id names nothing the viewer may show (outside the roots, or a bad id)."""


class Gone(Exception):
    """The id names a dir under a root that does not exist (any more): deleted or moved."""

    def __init__(self, path: Path) -> None:
        super().__init__(str(path))
        self.path = path


def resolve(roots: list[Path], run_id: str) -> RunDir:
    """The run named by ``run_id``; NotFound for ids that escape the roots, Gone for a deleted dir."""
    head, _, rest = run_id.partition("/")
    if not head.isdigit() or int(head) >= len(roots):
        raise NotFound(run_id)
    root = roots[int(head)]
    parts = [p for p in rest.split("/") if p not in ("", ".")]
    if any(p == ".." or "\\" in p or "\x00" in p for p in parts):
        raise NotFound(run_id)
    path = root.joinpath(*parts)
    if not os.path.lexists(path):
        raise Gone(path)
    if not _inside(path, root.resolve()) or not path.is_dir():
        raise NotFound(run_id)
    entry = inspect_dir(int(head), root, path)
    if entry is None:
        raise Gone(path)
    return entry


def job_dirs(sweep: RunDir, roots: list[Path]) -> list[RunDir]:
    """The run dirs below a sweep dir (its jobs), in path order."""
    root = roots[sweep.root_index]
    jobs = []
    for dirpath, dirnames, _ in os.walk(sweep.path, followlinks=False):
        dirnames[:] = sorted(d for d in dirnames if d not in SKIP_DIRS and not d.startswith("."))
        here = Path(dirpath)
        if here == sweep.path:
            continue
        entry = inspect_dir(sweep.root_index, root, here)
        if entry is not None and entry.files:
            jobs.append(entry)
    return jobs
