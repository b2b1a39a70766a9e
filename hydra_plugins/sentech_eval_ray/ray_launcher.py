"""``hydra/launcher=ray`` and ``hydra/launcher=ray_cluster``: hydra-ray-launcher's launcher, made to work on a cluster.

Differences from hydra-ray-launcher 1.2.2's ``RayLauncher`` (whose config and remote call it reuses):

- ``hydra.launcher.ray.init.address``: ``local`` (``hydra/launcher=ray``) always starts a Ray instance of
  its own, whatever a stale ``/tmp/ray/ray_current_cluster`` says; ``auto`` or ``HOST:PORT``
  (``hydra/launcher=ray_cluster``) connects to a running cluster with none of local mode's settings
  (``object_store_memory``, ``num_cpus`` … are refused in one sentence: ``ray start`` set them). Ray's
  token authentication: when this machine has a token (``~/.ray/auth_token``, ``RAY_AUTH_TOKEN``,
  ``RAY_AUTH_TOKEN_PATH``), it is sent whatever the address form, as Ray already does for ``auto``.
- The API key is read on the driver from ``backend.api_key_env`` and handed to each job as a task
  argument (``HandedKey``: in memory, ``repr`` hidden), set in the job's environment for its duration.
- Every job first checks its node: the key, the model file, the dataset file, and the sweep dir the
  driver wrote (a shared filesystem); a job that cannot run fails with one sentence naming node and path.
- A job that fails on Ray (its check, a crashed worker, a node without this project) is recorded in its
  ``job_status.json`` by the driver; the sweep goes on. A job whose output never became visible to the
  driver is recorded as failed with the reason, so ``combine`` reports it instead of combining nothing.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import sys
import uuid
from collections.abc import Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import Any

from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, JobStatus, configure_log, filter_overrides, setup_globals
from hydra.types import HydraContext, TaskFunction
from hydra_plugins.hydra_ray_launcher.ray_launcher import RayLauncher
from omegaconf import DictConfig, OmegaConf, open_dict

from sentech_eval.engine.cluster import (
    SHARED_FS_FIX,
    HandedKey,
    job_problem,
    shared_dir_problem,
    write_shared_check,
)
from sentech_eval.errors import ConfigError
from sentech_eval.escaping import terminal_text

log = logging.getLogger(__name__)

JOB_STATUS_FILE = "job_status.json"
LOCAL_ADDRESSES = (None, "local")
# ray.init arguments Ray refuses when it connects to a running cluster (`ray start` set them there).
LOCAL_ONLY_SETTINGS = ("num_cpus", "num_gpus", "resources", "labels", "object_store_memory", "_system_config")
# hydra-ray-launcher's CI workaround (https://github.com/ray-project/ray/issues/11966), kept for local instances.
LOCAL_OBJECT_STORE_BYTES = 78643200


class JobCannotRun(Exception):
    """A job's node lacks what the job needs (one sentence, naming node and path)."""


def ray_init_settings(init_cfg: Any) -> dict[str, Any]:
    """The ``ray.init`` arguments for ``hydra.launcher.ray.init``: a new local instance, or a cluster to join."""
    init: dict[str, Any] = dict(OmegaConf.to_container(init_cfg, resolve=True) or {}) if init_cfg else {}
    address = init.get("address")
    if address in LOCAL_ADDRESSES:
        init["address"] = "local"  # never follow /tmp/ray/ray_current_cluster to a cluster that may be dead
        init.setdefault("object_store_memory", LOCAL_OBJECT_STORE_BYTES)
        return init
    for name in LOCAL_ONLY_SETTINGS:
        if init.get(name) not in (None, {}):
            raise ConfigError(
                f"hydra.launcher.ray.init.{name} is a setting for a Ray instance of its own, not for the cluster at "
                f"{address} (its nodes' `ray start` set that); remove it, or use hydra/launcher=ray for a local instance."
            )
        init.pop(name, None)
    return init


def enable_token_auth_if_available() -> None:
    """Send this machine's Ray token to a cluster given by ``HOST:PORT``, as Ray itself does for ``address=auto``.

    Ray 2.60 turns token authentication on for the clusters it starts and, for a client, reads the token
    from ``RAY_AUTH_TOKEN``, ``RAY_AUTH_TOKEN_PATH`` or ``~/.ray/auth_token`` — but only switches a client to
    token mode by itself when the address is ``auto``. An explicit ``RAY_AUTH_MODE`` is left as it is.
    """
    try:
        from ray._private.authentication.authentication_token_setup import (
            maybe_enable_token_auth_if_token_available,
        )
    except ImportError:  # a Ray without token authentication
        return
    ray_auth_log = logging.getLogger("ray._private.authentication.authentication_token_setup")
    level = ray_auth_log.level
    ray_auth_log.setLevel(logging.ERROR)  # its notice says to set RAY_AUTH_MODE, which nobody needs to here
    try:
        maybe_enable_token_auth_if_token_available(warn_if_disabled=False)
    finally:
        ray_auth_log.setLevel(level)


def connect(init_cfg: Any) -> str:
    """Start or join Ray as ``hydra.launcher.ray.init`` says; returns the address it was given.

    ConfigError (one sentence) when the cluster cannot be reached or refuses this machine.
    """
    import ray

    settings = ray_init_settings(init_cfg)
    address = str(settings.get("address"))
    if ray.is_initialized():
        return address
    if address != "local":
        enable_token_auth_if_available()
    settings.setdefault("log_to_driver", True)
    try:
        ray.init(**settings)
    except ray.exceptions.AuthenticationError as exc:
        raise ConfigError(
            f"The Ray cluster at {address} refused this machine ({exc.message}); put the cluster's token (print it "
            "with `ray get-auth-token` on the head node) in ~/.ray/auth_token here, or point RAY_AUTH_TOKEN_PATH at "
            "a file holding it."
        ) from None
    except (ConnectionError, TimeoutError, ValueError, RuntimeError) as exc:
        reason = " ".join(str(exc).split())[:300]
        raise ConfigError(
            f"Cannot connect to the Ray cluster at hydra.launcher.ray.init.address={address} ({reason}); check that "
            "it runs (`ray start --head`) at that HOST:PORT and, as Ray turns token authentication on by default, "
            "that this machine has the cluster's token (print it with `ray get-auth-token` on the head node, then "
            "put it in ~/.ray/auth_token here or point RAY_AUTH_TOKEN_PATH at a file holding it)."
        ) from None
    return address


def run_job_on_node(
    hydra_context: HydraContext,
    sweep_config: DictConfig,
    task_function: TaskFunction,
    singleton_state: dict[Any, Any],
    key: HandedKey | None,
    shared_token: str,
    driver_cwd: str,
) -> tuple[str, JobReturn]:
    """Runs in a Ray worker: check the node, put the handed key in the environment, run the Hydra job.

    Returns (node, the job's JobReturn); raises JobCannotRun when the node lacks something the job needs.
    """
    from hydra_plugins.hydra_ray_launcher._launcher_util import _run_job  # imports ray: only in a worker

    from sentech_eval.config import register_configs

    register_configs()  # the ${models_dir:} / ${datasets_dir:} resolvers, in this worker process too
    node = node_label()
    sweep_dir = Path(str(sweep_config.hydra.sweep.dir))
    previous_cwd = os.getcwd()
    try:
        if os.path.isdir(driver_cwd):
            os.chdir(driver_cwd)  # relative paths mean what they meant where the sweep was started
        with key.in_environment() if key is not None else nullcontext():
            problem = shared_dir_problem(sweep_dir, shared_token, node) or job_problem(sweep_config, node)
            if problem is not None:
                raise JobCannotRun(f"job {sweep_config.hydra.job.num} cannot run: {problem}")
            return node, _run_job(hydra_context, sweep_config, task_function, singleton_state)
    finally:
        os.chdir(previous_cwd)


def node_label() -> str:
    """The worker's node as messages name it: host name and Ray node id (several nodes may share a host)."""
    import ray

    return f"{socket.gethostname()} (Ray node {ray.get_runtime_context().get_node_id()[:12]})"


class SentechRayLauncher(RayLauncher):
    """hydra-ray-launcher's RayLauncher that joins existing clusters and hands the API key over in memory."""

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        """Run every job on Ray; a failed job is recorded in its job dir and returns None, the sweep goes on."""
        import ray

        setup_globals()
        assert self.config is not None and self.hydra_context is not None and self.task_function is not None
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        sweep_dir = Path(str(self.config.hydra.sweep.dir)).absolute()
        address = connect(self.ray_cfg.init)
        token = uuid.uuid4().hex
        write_shared_check(sweep_dir, token)
        log.info(f"Ray launcher ({address}) is launching {len(job_overrides)} jobs, sweep output dir: {sweep_dir}")
        remote_settings = OmegaConf.to_container(self.ray_cfg.remote, resolve=True) if self.ray_cfg.remote else {}
        remote = ray.remote(**remote_settings)(run_job_on_node) if remote_settings else ray.remote(run_job_on_node)

        launched: list[tuple[DictConfig, Any]] = []
        for offset, overrides in enumerate(job_overrides):
            idx = initial_job_idx + offset
            log.info(f"\t#{idx} : {' '.join(filter_overrides(overrides))}")
            sweep_config = self.hydra_context.config_loader.load_sweep_config(self.config, list(overrides))
            with open_dict(sweep_config):
                sweep_config.hydra.job.id = f"job_id_for_{idx}"
                sweep_config.hydra.job.num = idx
                sweep_config.hydra.sweep.dir = str(sweep_dir)  # absolute: a worker's cwd is not the driver's
            key = HandedKey.from_driver(sweep_config)
            ref = remote.remote(
                self.hydra_context,
                sweep_config,
                self.task_function,
                Singleton.get_state(),
                key,
                token,
                os.getcwd(),
            )
            launched.append((sweep_config, ref))
        return [self._collect(sweep_config, ref, sweep_dir) for sweep_config, ref in launched]

    def _collect(self, sweep_config: DictConfig, ref: Any, sweep_dir: Path) -> JobReturn:
        import ray

        job_dir = sweep_dir / str(sweep_config.hydra.sweep.subdir)
        num = sweep_config.hydra.job.num
        try:
            node, job_return = ray.get(ref)
        except Exception as exc:  # noqa: BLE001 - a job's failure is recorded; the sweep goes on
            cause = getattr(exc, "cause", None) or exc
            message = str(cause) if isinstance(cause, JobCannotRun) else f"job {num} failed on Ray: {_one_line(cause)}"
            return self._failed(sweep_config, job_dir, message)
        if not (job_dir / JOB_STATUS_FILE).is_file():
            return self._failed(
                sweep_config,
                job_dir,
                f"job {num} ran on node {node} but its output dir {job_dir} is not visible here; {SHARED_FS_FIX}.",
            )
        _note_node(job_dir / JOB_STATUS_FILE, node)
        return job_return

    @staticmethod
    def _failed(sweep_config: DictConfig, job_dir: Path, message: str) -> JobReturn:
        print(terminal_text(f"sentech-eval run: job failed: {message}"), file=sys.stderr)
        overrides = list(sweep_config.hydra.overrides.task)
        job_dir.mkdir(parents=True, exist_ok=True)
        record = {"status": "failed", "error": message, "summary": None, "overrides": overrides}
        (job_dir / JOB_STATUS_FILE).write_text(json.dumps(record, indent=2))
        return JobReturn(
            overrides=overrides,
            cfg=sweep_config,
            working_dir=str(job_dir),
            task_name=str(sweep_config.hydra.job.name),
            status=JobStatus.COMPLETED,
            _return_value=None,
        )


def _note_node(status_file: Path, node: str) -> None:
    """Add the node that ran the job to its job_status.json (sweep.json lists it per job)."""
    try:
        record = json.loads(status_file.read_text())
        record["node"] = node
        status_file.write_text(json.dumps(record, indent=2, default=str))
    except (OSError, ValueError):
        pass


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text[:400]}"
