"""End to end: a remote run against the real echo server and a local run on the embedded GGUF,
compared and gated with the real CLI: the runs on the local model in a process of their own, as a user
runs them; the rest in the test's process (``call_cli``)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from cli_helpers import TEST_KEY, call_cli, run_cli

pytestmark = pytest.mark.local_model

COMMON = [
    "dataset=capitals",
    "dataset.limit=6",
    "sampling=greedy",
    "scorers=[exact_match,contains]",
    "runner.progress=false",
]


@pytest.fixture(scope="module")
def runs(echo_server: str, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(remote run dir, local run dir) of the same six capitals prompts."""
    root = tmp_path_factory.mktemp("e2e")
    remote, local = root / "remote", root / "local"
    r = call_cli(
        "run",
        "backend=remote",
        f"backend.base_url={echo_server}",
        *COMMON,
        f"hydra.run.dir={remote}",
        env={"SENTECH_API_KEY": TEST_KEY},
    )
    assert r.returncode == 0, r.stderr
    r = run_cli("run", "backend=local", *COMMON, f"hydra.run.dir={local}")
    assert r.returncode == 0, r.stderr
    return remote, local


def test_compare_remote_echo_with_local_model_writes_three_outputs(runs: tuple[Path, Path], tmp_path: Path) -> None:
    remote, local = runs
    out = tmp_path / "cmp"
    r = call_cli("compare", str(remote), str(local), "--out", str(out))
    assert r.returncode == 0, r.stderr
    assert "## sentech-eval compare: remote/" in r.stdout and "(B)" in r.stdout
    assert "6 pairs (paired on prompt_id, repeat); unpaired: 0 of A, 0 of B." in r.stdout
    m = pd.read_parquet(out / "compare.parquet")
    em = m[(m["metric"] == "score") & (m["column"] == "score_exact_match")].iloc[0]
    # The echo engine answers dataset prompts with their reference; the local model answers in sentences.
    assert em["value_a"] == 1.0 and em["n_pairs"] == 6
    assert em["diff"] == pytest.approx(em["value_b"] - 1.0)
    assert em["ci_low"] <= em["diff"] <= em["ci_high"]
    assert 0.0 <= em["p_value"] <= 1.0
    lat = m[m["metric"] == "latency_p50"].iloc[0]
    assert lat["value_a"] > 0 and lat["value_b"] > 0 and lat["ratio"] == pytest.approx(lat["value_b"] / lat["value_a"])
    assert m[m["metric"] == "error_rate"].iloc[0][["value_a", "value_b"]].tolist() == [0.0, 0.0]
    page = (out / "compare.html").read_text()
    assert page.startswith("<!doctype html>") and "data:image/png;base64," in page


def test_check_passes_on_itself_and_flags_the_local_model_against_the_echo_baseline(
    runs: tuple[Path, Path], tmp_path: Path
) -> None:
    remote, local = runs
    same = call_cli(
        "check",
        "--baseline",
        str(local),
        "--candidate",
        str(local),
        "--max-score-drop",
        "exact_match=0",
        "--max-error-rate",
        "0",
    )
    assert same.returncode == 0, same.stdout + same.stderr
    junit = tmp_path / "check.xml"
    worse = call_cli(
        "check",
        "--baseline",
        str(remote),
        "--candidate",
        str(local),
        "--max-score-drop",
        "contains=0.02",
        "--max-error-rate",
        "0",
        "--junit",
        str(junit),
    )
    contains_local = pd.read_parquet(local / "results.parquet")["score_contains"].mean()
    assert worse.returncode == (1 if contains_local < 0.98 else 0), worse.stdout + worse.stderr
    assert junit.exists() and "score_drop[contains]" in junit.read_text()


def test_pairwise_judge_on_the_local_model_records_both_orders(runs: tuple[Path, Path], tmp_path: Path) -> None:
    remote, local = runs
    out = tmp_path / "judged"
    r = run_cli("compare", str(remote), str(local), "--out", str(out), "--judge-limit", "2", "--judge", "backend=local")
    assert r.returncode == 0, r.stderr
    verdicts = pd.read_parquet(out / "judge.parquet")
    assert len(verdicts) == 4 and sorted(verdicts["order"]) == ["AB", "AB", "BA", "BA"]
    # Every verdict is either usable or carries its error: nothing is dropped silently.
    assert (verdicts["prefers"].notna() ^ verdicts["error"].notna()).all()
    m = pd.read_parquet(out / "compare.parquet").set_index("metric")
    assert m.loc["judge_errors", "value"] == verdicts["error"].notna().sum()
    assert "Judge prefers B" in r.stdout
