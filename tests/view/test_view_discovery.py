"""view.discovery: what counts as a run or a sweep, and ids that never leave the roots."""

from __future__ import annotations

import os

import pytest
from synthetic_results import make_results, write_run

from sentech_eval.view.discovery import Gone, NotFound, discover, job_dirs, resolve


@pytest.fixture
def tree(tmp_path):
    root = tmp_path / "results"
    write_run(make_results(n=5), root / "capitals" / "a")
    sweep = root / "sweep"
    for job in range(2):
        write_run(make_results(n=5, temperature=job), sweep / str(job))
    write_run(make_results(n=5), sweep)  # the combined table
    (sweep / "multirun.yaml").write_text("{}\n")
    going = root / "going"
    (going / "0" / "results.parts").mkdir(parents=True)
    make_results(n=3).to_parquet(going / "0" / "results.parts" / "part-000000.parquet")
    (going / "multirun.yaml").write_text("{}\n")
    (root / "not-a-run").mkdir()
    return root


def test_runs_and_sweeps_are_found_and_a_combined_sweep_is_one_entry(tree):
    found = {r.rel: r for r in discover([tree])}
    assert set(found) == {"capitals/a", "sweep", "going", "going/0"}
    assert found["sweep"].kind == "sweep" and found["capitals/a"].kind == "run"
    assert found["going/0"].state == "running" and found["going"].state == "empty"
    assert [j.rel for j in job_dirs(found["sweep"], [tree])] == ["sweep/0", "sweep/1"]


def test_resolve_stays_inside_the_roots(tree, tmp_path):
    assert resolve([tree], "0/capitals/a").path == tree / "capitals" / "a"
    outside = tmp_path / "outside"
    write_run(make_results(n=2), outside)
    os.symlink(outside, tree / "link")
    for bad in ("0/../outside", "0/capitals/../../outside", "0/link", "1/x", "x/y", "-1/a", "0/capitals/a\\..\\.."):
        with pytest.raises((NotFound, Gone)):
            resolve([tree], bad)
    with pytest.raises(NotFound):
        resolve([tree], "0/link")
    assert "link" not in {r.rel for r in discover([tree])}


def test_a_missing_dir_is_gone(tree):
    with pytest.raises(Gone):
        resolve([tree], "0/capitals/deleted")
