"""What a sweep job needs on the node that runs it, and the API key handed to it in memory.

A job launched on another machine (a Ray worker, a SLURM node) sees that machine's files and
environment, not the submitting process's. ``job_problem(cfg, node)`` says in one sentence what this
node lacks — the API key, the local backend's GGUF file, the dataset file — naming the node and the
path, before the job sends or loads anything. ``HandedKey`` carries the key from the driver (read from
``backend.api_key_env`` there) to a job as a task argument: it is never written to config, logs or
files, its ``repr`` hides the value, and ``HandedKey.in_environment()`` sets the variable only for
the job's duration. ``shared_dir_problem`` checks that a node sees the sweep dir the driver wrote.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sentech_eval.errors import ConfigError
from sentech_eval.secrets import DEFAULT_KEY_ENV, ENV_NAME

SHARED_CHECK_FILE = ".shared-check"
SHARED_FS_FIX = "put hydra.sweep.dir on a filesystem every node mounts at the same path (NFS, Lustre, …)"


def node_name() -> str:
    """This machine as a message names it: its host name."""
    return socket.gethostname()


def _get(node: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        if node is None:
            return None
        try:
            node = node.get(part) if hasattr(node, "get") else getattr(node, part, None)
        except Exception:  # noqa: BLE001 - an unresolvable interpolation is the job's own error to report
            return None
    return node


def key_env_of(cfg: Any) -> str | None:
    """The variable the job's backend reads its key from (``backend.api_key_env``), or None (no key needed)."""
    if str(_get(cfg, "backend.kind") or "") != "remote":
        return None
    name = str(_get(cfg, "backend.api_key_env") or DEFAULT_KEY_ENV)
    return name if ENV_NAME.fullmatch(name) else None


def _is_local_file(path: str) -> bool:
    return bool(path) and "://" not in path


def job_problem(cfg: Any, node: str | None = None) -> str | None:
    """Why this node cannot run the job configured by ``cfg`` (one sentence naming node and path), or None."""
    node = node or node_name()
    env_name = key_env_of(cfg)
    if env_name and not os.environ.get(env_name, "").strip():
        return (
            f"node {node} has no API key: the environment variable {env_name} is not set there; export it where "
            "you start the sweep (hydra/launcher=ray_cluster hands it to every job in memory, SLURM exports the "
            "submitting shell's environment) or on the node itself."
        )
    if str(_get(cfg, "backend.kind") or "") == "local":
        model = _get(cfg, "backend.model_path")
        download = bool(_get(cfg, "backend.download"))
        if model and not download and _is_local_file(str(model)) and not Path(str(model)).expanduser().is_file():
            return (
                f"node {node} has no model file {Path(str(model)).expanduser()}: copy the GGUF there (or to a shared "
                "filesystem and set backend.model_path, or SENTECH_MODELS_DIR on the nodes)."
            )
    dataset = _get(cfg, "dataset.path")
    if dataset and _is_local_file(str(dataset)) and not Path(str(dataset)).expanduser().exists():
        return (
            f"node {node} has no dataset file {Path(str(dataset)).expanduser().absolute()}: put the dataset on a "
            "filesystem every node shares and give its absolute path in dataset.path."
        )
    return None


def refuse_job_this_node_cannot_run(cfg: Any, job: Any) -> None:
    """Raise ConfigError (one sentence naming node and path) when this node lacks what the job needs."""
    problem = job_problem(cfg)
    if problem is not None:
        raise ConfigError(f"job {job} cannot run: {problem}")


def write_shared_check(sweep_dir: Path, token: str) -> Path:
    """The driver's mark in the sweep dir, which every job's node must be able to read back."""
    sweep_dir.mkdir(parents=True, exist_ok=True)
    path = sweep_dir / SHARED_CHECK_FILE
    path.write_text(token)
    return path


def shared_dir_problem(sweep_dir: Path, token: str, node: str | None = None) -> str | None:
    """Why this node does not see the driver's sweep dir (its mark is absent or different), or None."""
    try:
        seen = (sweep_dir / SHARED_CHECK_FILE).read_text()
    except OSError:
        seen = None
    if seen == token:
        return None
    return (
        f"node {node or node_name()} does not see the sweep dir {sweep_dir} the sweep was started in; {SHARED_FS_FIX}."
    )


class HandedKey:
    """An API key carried from the driver to a job in memory (a task argument), never shown.

    ``repr``/``str`` hide the value, so a log line or an error message that prints the task's arguments
    carries no key.
    """

    __slots__ = ("env_name", "_value")

    def __init__(self, env_name: str, value: str) -> None:
        self.env_name = env_name
        self._value = value

    def __repr__(self) -> str:
        return f"HandedKey({self.env_name}=[redacted])"

    __str__ = __repr__

    @classmethod
    def from_driver(cls, cfg: Any) -> HandedKey | None:
        """The key the job ``cfg`` needs, read from the driver's environment; None if it needs none or it is unset."""
        env_name = key_env_of(cfg)
        value = os.environ.get(env_name, "").strip() if env_name else ""
        return cls(env_name, value) if env_name and value else None

    @contextmanager
    def in_environment(self) -> Iterator[None]:
        """Set the variable for the job's duration (a worker process lives on), then restore what was there."""
        previous = os.environ.get(self.env_name)
        os.environ[self.env_name] = self._value
        try:
            yield
        finally:
            if previous is None:
                os.environ.pop(self.env_name, None)
            else:
                os.environ[self.env_name] = previous
