"""The viewer's run and sweep pages carry the report's pass@k section when prompts were repeated."""

from __future__ import annotations

import pandas as pd
from synthetic_results import make_results

from sentech_eval.view.digest import run_digest, run_plots
from sentech_eval.view.pages import plots_section


def test_a_repeated_sweep_gets_the_pass_at_k_section(tmp_path):
    frames = [
        make_results(n=12, repeats=5, accuracy=acc, temperature=t, seed=i).assign(config_id=f"cfg-{t}")
        for i, (t, acc) in enumerate(((0.2, 0.7), (0.8, 0.5)))
    ]
    path = tmp_path / "results.parquet"
    pd.concat(frames, ignore_index=True).to_parquet(path, index=False)
    digest = run_digest([str(path)])
    extras = run_plots([str(path)], str(tmp_path), digest["summary"], digest["labels"])
    section = plots_section(extras)
    assert 'id="pass-at-k-section"' in section and "pass@k vs temperature" in section
    assert "pass@5 (95% CI)" in section and "Best temperature per k" in section


def test_a_single_sample_run_has_none(tmp_path):
    path = tmp_path / "results.parquet"
    make_results(n=12, repeats=1).to_parquet(path, index=False)
    digest = run_digest([str(path)])
    extras = run_plots([str(path)], str(tmp_path), digest["summary"], digest["labels"])
    assert extras["pass_at_html"] is None
    assert "pass-at-k-section" not in plots_section(extras)
