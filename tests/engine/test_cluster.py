"""engine/cluster.py: what a job's node lacks (one sentence, node and path), the key handed over in memory."""

from __future__ import annotations

import os
import pickle

import pytest
from omegaconf import OmegaConf

from sentech_eval.engine.cluster import (
    HandedKey,
    job_problem,
    refuse_job_this_node_cannot_run,
    shared_dir_problem,
    write_shared_check,
)
from sentech_eval.errors import ConfigError

KEY = "k3y-value-that-must-stay-hidden"


def config(tmp_path, **backend):
    dataset = tmp_path / "data.parquet"
    dataset.write_bytes(b"PAR1")
    return OmegaConf.create({"backend": {"kind": "remote", **backend}, "dataset": {"path": str(dataset)}})


def test_a_remote_job_without_its_key_names_the_node_and_the_variable(tmp_path, monkeypatch):
    monkeypatch.delenv("MY_KEY", raising=False)
    cfg = config(tmp_path, api_key_env="MY_KEY")
    problem = job_problem(cfg, node="gpu-7")
    assert problem.startswith("node gpu-7 has no API key: the environment variable MY_KEY is not set there")
    monkeypatch.setenv("MY_KEY", KEY)
    assert job_problem(cfg, node="gpu-7") is None


def test_a_local_job_without_its_model_or_dataset_names_node_and_path(tmp_path):
    missing_model = tmp_path / "absent.gguf"
    cfg = OmegaConf.create({"backend": {"kind": "local", "model_path": str(missing_model)}, "dataset": {}})
    assert job_problem(cfg, node="n1") == (
        f"node n1 has no model file {missing_model}: copy the GGUF there (or to a shared filesystem and set "
        "backend.model_path, or SENTECH_MODELS_DIR on the nodes)."
    )
    cfg.backend.download = True  # it will be fetched on the node
    assert job_problem(cfg, node="n1") is None
    cfg.dataset.path = str(tmp_path / "absent.parquet")
    problem = job_problem(cfg, node="n1")
    assert problem.startswith(f"node n1 has no dataset file {tmp_path / 'absent.parquet'}:")
    with pytest.raises(ConfigError, match="^job 3 cannot run: node .* has no dataset file"):
        refuse_job_this_node_cannot_run(cfg, 3)


def test_a_node_that_does_not_share_the_sweep_dir_is_told_so(tmp_path):
    write_shared_check(tmp_path / "sweep", "token-a")
    assert shared_dir_problem(tmp_path / "sweep", "token-a", "n1") is None
    # another sweep's mark (a same-named dir on the node's own disk) is not this sweep's dir
    assert "node n1 does not see the sweep dir" in shared_dir_problem(tmp_path / "sweep", "token-b", "n1")
    assert "every node mounts at the same path" in shared_dir_problem(tmp_path / "elsewhere", "token-a", "n1")


def test_the_handed_key_is_hidden_and_only_in_the_environment_for_the_job(tmp_path, monkeypatch):
    monkeypatch.setenv("SENTECH_API_KEY", KEY)
    key = HandedKey.from_driver(config(tmp_path))
    assert KEY not in repr(key) and KEY not in str(key) and KEY not in f"{[key]}"
    monkeypatch.delenv("SENTECH_API_KEY")
    copy = pickle.loads(pickle.dumps(key))  # what a Ray task argument goes through
    with copy.in_environment():
        assert os.environ["SENTECH_API_KEY"] == KEY
    assert "SENTECH_API_KEY" not in os.environ  # a worker process lives on: the key does not
    monkeypatch.setenv("SENTECH_API_KEY", "the-node-own-key-1234")
    with copy.in_environment():
        assert os.environ["SENTECH_API_KEY"] == KEY
    assert os.environ["SENTECH_API_KEY"] == "the-node-own-key-1234"
    local = OmegaConf.create({"backend": {"kind": "local"}})
    assert HandedKey.from_driver(local) is None  # a job that needs no key gets none
