"""report.py: summary.parquet columns and numbers, the self-contained HTML, the markdown, the CLI."""

from __future__ import annotations

import base64
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from cli_helpers import TEST_KEY, call_cli
from scipy import optimize
from scipy import stats as scipy_stats
from synthetic_results import make_results, write_run

from sentech_eval.analysis import stats
from sentech_eval.analysis.summary import summarize, swept_parameters
from sentech_eval.commands.report import write_report
from sentech_eval.errors import ResultsError
from sentech_eval.render.markdown import report_markdown

TEMPERATURES = (0.0, 0.5, 1.0)


def sweep(root: Path, temperatures=TEMPERATURES, top_ps=(1.0,), n=40, repeats=3) -> Path:
    """A Hydra-multirun-like sweep dir: one run dir per (temperature, top_p), accuracy falling with temperature."""
    job = 0
    for t in temperatures:
        for top_p in top_ps:
            df = make_results(
                n=n,
                repeats=repeats,
                accuracy=0.9 - 0.4 * t + 0.05 * (top_p < 1),
                temperature=t,
                error_ids={3, 17},
                latency_s=0.1 + 0.1 * t,
                seed=job,
            )
            df["top_p"] = top_p
            df["config_id"] = f"cfg-{job}"
            df["run_id"] = f"run-{job}"
            # realistic repeat-dependent answers: the last repeat of some prompts goes wrong
            flaky = (df["repeat"] == repeats - 1) & (df["prompt_id"].isin([f"cap-{i:03d}" for i in range(30, 34)]))
            df.loc[flaky & (df["status"] == "ok"), ["output", "score_exact_match", "score_contains"]] = [
                "Lyon?",
                0.0,
                0.0,
            ]
            write_run(df, root / str(job))
            job += 1
    return root


def test_summary_has_one_row_per_temperature_and_every_column(tmp_path):
    df = pd.concat([pd.read_parquet(p) for p in sorted(sweep(tmp_path).glob("*/results.parquet"))], ignore_index=True)
    summary = summarize(df)
    assert list(summary["temperature"]) == list(TEMPERATURES)
    expected = {
        "backend",
        "model",
        "dataset",
        "temperature",
        "top_p",
        "top_k",
        "frequency_penalty",
        "presence_penalty",
        "max_tokens",
        "seed",
        "n",
        "error_rate",
        "latency_s_p50",
        "latency_s_p90",
        "latency_s_p95",
        "latency_s_p99",
        "ttft_s_p50",
        "ttft_s_p95",
        "completion_tokens_mean",
        "prompt_tokens_sum",
        "completion_tokens_sum",
        "output_tokens_per_s",
        "decode_tokens_per_s_p50",
    }
    for score in ("score_exact_match", "score_contains"):
        expected |= {
            f"{score}_mean",
            f"{score}_ci_low",
            f"{score}_ci_high",
            f"{score}_ci_method",
            f"{score}_n_clusters",
        }
    assert expected <= set(summary.columns)
    assert not any(c.startswith("score_exact_match_detail") for c in summary.columns)
    assert swept_parameters(summary) == ["temperature"]

    for t, row in zip(TEMPERATURES, summary.itertuples()):
        part = df[df["temperature"] == t]
        ok = part[part["status"] == "ok"]
        assert row.n == 120 and row.error_rate == pytest.approx(6 / 120)  # 2 prompts x 3 repeats errored
        assert row.score_exact_match_mean == pytest.approx(ok["score_exact_match"].mean())
        # 0/1 score, three repeats per prompt: the cluster-adjusted Wilson interval over 38 prompts
        ci = stats.mean_ci(ok["score_exact_match"], clusters=ok["prompt_id"])
        assert ci.method == row.score_exact_match_ci_method == stats.WILSON_CLUSTERED
        assert (row.score_exact_match_ci_low, row.score_exact_match_ci_high) == pytest.approx((ci.low, ci.high))
        assert ci.low < ci.estimate < ci.high and row.score_exact_match_n_clusters == 38
        for q in (50, 90, 95, 99):
            assert getattr(row, f"latency_s_p{q}") == pytest.approx(np.percentile(ok["latency_s"], q))
        assert row.ttft_s_p95 == pytest.approx(np.percentile(ok["ttft_s"], 95))
        assert row.completion_tokens_sum == ok["completion_tokens"].sum()
        assert row.prompt_tokens_sum == ok["prompt_tokens"].sum()
        assert row.completion_tokens_mean == pytest.approx(ok["completion_tokens"].mean())
        assert row.seed == 1234  # the base seed, not seed + repeat
        assert row.output_tokens_per_s > 0
        decode = (ok["completion_tokens"] - 1) / (ok["latency_s"] - ok["ttft_s"])
        assert row.decode_tokens_per_s_p50 == pytest.approx(decode.median())
    # accuracy falls with temperature and the report sees it
    assert summary["score_exact_match_mean"].is_monotonic_decreasing


def test_errors_excluded_from_means_even_if_an_error_row_carries_a_score(tmp_path):
    df = make_results(n=20, accuracy=1.0, error_ids={0, 1, 2, 3})
    df.loc[df["status"] == "error", "score_exact_match"] = 0.0  # must not drag the mean down
    summary = summarize(df)
    assert summary.loc[0, "score_exact_match_mean"] == 1.0
    assert summary.loc[0, "error_rate"] == pytest.approx(0.2)
    assert summary.loc[0, "score_exact_match_n"] == 16


def test_all_rows_errored_gives_nan_scores_not_a_crash(tmp_path):
    df = make_results(n=5, error_ids=set(range(5)))
    summary = summarize(df)
    assert summary.loc[0, "error_rate"] == 1.0
    assert np.isnan(summary.loc[0, "score_exact_match_mean"]) and np.isnan(summary.loc[0, "latency_s_p50"])
    _, _, html_path = write_report(write_run(df, tmp_path / "run"))
    assert "No scored rows." in html_path.read_text()


def _pngs(page: str) -> list[bytes]:
    uris = re.findall(r'<img src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    return [base64.b64decode(u) for u in uris]


def test_report_html_is_self_contained_with_plots_tables_and_escaped_text(tmp_path):
    root = sweep(tmp_path / "sweep")
    df0 = pd.read_parquet(root / "0" / "results.parquet")
    df0.loc[df0.index[0], ["output", "score_exact_match", "score_contains"]] = [
        '<script>alert("x")</script> & more',
        0.0,
        0.0,
    ]
    write_run(df0, root / "0")
    summary, summary_path, html_path = write_report(root)
    assert summary_path == root / "summary.parquet" and html_path == root / "report.html"
    assert len(pd.read_parquet(summary_path)) == 3
    page = html_path.read_text()
    pngs = _pngs(page)
    # score vs temperature (2 scores), latency CDF, token histograms; one temperature swept: no heatmap
    assert len(pngs) == 4 and all(p.startswith(b"\x89PNG\r\n\x1a\n") for p in pngs)
    assert "Heatmap" not in page
    assert not re.search(r'(src|href)="(https?:|//|file:)', page)
    for table_id in ("summary", "summary-full", "worst", "errors"):
        assert f'<table id="{table_id}">' in page
    assert "<script>" not in page and "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; more" in page
    worst = page[page.index('<table id="worst">') :]
    assert "Lyon?" in worst or "I am not sure." in worst
    assert "HTTP 503: overloaded" in page


def test_two_swept_parameters_add_a_heatmap(tmp_path):
    root = sweep(tmp_path / "sweep", temperatures=(0.0, 1.0), top_ps=(0.5, 1.0), n=20, repeats=2)
    summary, _, html_path = write_report(root)
    assert len(summary) == 4 and swept_parameters(summary) == ["temperature", "top_p"]
    page = html_path.read_text()
    assert "Heatmap: temperature × top_p" in page
    # 2 scores x 2 params + 2 heatmaps + latency + tokens
    assert len(_pngs(page)) == 8


def test_single_run_report_next_to_a_results_file(tmp_path):
    run_dir = write_run(make_results(n=12, accuracy=0.75), tmp_path / "run")
    summary, summary_path, html_path = write_report(run_dir / "results.parquet", top=3)
    assert summary_path.parent == run_dir and len(summary) == 1
    page = html_path.read_text()
    assert len(_pngs(page)) == 3  # score bars, latency CDF, token histograms
    assert (
        page.count(
            "<tr>",
            page.index('<table id="worst">'),
            page.index('<table id="errors">') if '<table id="errors">' in page else None,
        )
        == 1 + 3
    )


def test_markdown_summary_is_a_table_with_one_line_per_configuration(tmp_path):
    df = pd.concat([pd.read_parquet(p) for p in sorted(sweep(tmp_path).glob("*/results.parquet"))], ignore_index=True)
    text = report_markdown(summarize(df), "sweep")
    lines = text.strip().splitlines()
    assert lines[0] == "## sentech-eval report: sweep"
    assert lines[2].startswith("| configuration | n | errors | exact_match (95% CI) | contains (95% CI) |")
    table = (
        lines[4 : lines.index("### pass@k")] if "### pass@k" in lines else lines[4:]
    )  # repeats: a pass@k table follows
    rows = [line for line in table if line.startswith("| temperature=")]
    assert len(rows) == 3 and rows[0].startswith("| temperature=0 | 120 | 5.0% | ")


def test_cli_writes_files_prints_markdown_and_explains_errors(tmp_path):
    root = sweep(tmp_path / "sweep", n=10, repeats=1)
    done = call_cli("report", str(root))
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("## sentech-eval report:") and done.stdout.count("| temperature=") == 3  # repeats=1
    assert (root / "summary.parquet").exists() and (root / "report.html").exists()
    empty = tmp_path / "empty"
    empty.mkdir()
    bad = call_cli("report", str(empty))
    assert bad.returncode == 2 and bad.stderr.strip().count("\n") == 0 and "No results.parquet found" in bad.stderr
    helped = call_cli("report", "--help")
    assert helped.returncode == 0 and "summary.parquet" in helped.stdout and "report.html" in helped.stdout


def test_load_errors_are_results_errors(tmp_path):
    with pytest.raises(ResultsError, match="does not exist"):
        write_report(tmp_path / "nope")


@pytest.mark.skipif(shutil.which("chromium") is None, reason="chromium is not installed (apt-get install -y chromium)")
def test_report_renders_in_headless_chromium(tmp_path):
    root = sweep(tmp_path / "sweep", n=10, repeats=2)
    _, _, html_path = write_report(root)
    stripped = tmp_path / "no-images.html"
    stripped.write_text(re.sub(r'<img src="data:[^"]*"', '<img src=""', html_path.read_text()))
    import matplotlib.image as mpimg

    def colourful_share(page: Path) -> float:
        shot = tmp_path / f"{page.stem}.png"
        profile = tempfile.mkdtemp(prefix="chromium-profile-")
        try:
            subprocess.run(
                [
                    "chromium",
                    "--headless",
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-background-networking",
                    "--disable-component-update",
                    "--disable-sync",
                    "--no-first-run",
                    f"--user-data-dir={profile}",
                    f"--screenshot={shot}",
                    "--window-size=1280,2000",
                    page.as_uri(),
                ],
                capture_output=True,
                timeout=120,
                check=False,
            )
        finally:
            shutil.rmtree(profile, ignore_errors=True)
        assert shot.exists(), "chromium wrote no screenshot"
        pixels = mpimg.imread(shot)[:, :, :3]
        assert pixels.shape[:2] == (2000, 1280)
        return float(((pixels.max(axis=2) - pixels.min(axis=2)) > 0.25).mean())  # coloured, not white/grey

    # the embedded PNGs decode and draw: coloured plot lines appear, and vanish without the data: URIs
    with_plots, without = colourful_share(html_path), colourful_share(stripped)
    assert with_plots > 0.001 and with_plots > 20 * without, (with_plots, without)


def test_done_when_sweep_against_echo_server_then_report_then_rescore(tmp_path):
    """The issue's acceptance path with the real CLI and a real server: run -m, report, score."""
    from cli_helpers import TEST_KEY

    from sentech_eval.server.testing import running_server

    sweep_dir = tmp_path / "D"
    with running_server(engine="echo", api_key=TEST_KEY) as url:
        run = call_cli(
            "run",
            "-m",
            "backend=remote",
            f"backend.base_url={url}",
            "backend.stream=true",
            "dataset=capitals",
            "dataset.limit=10",
            "runner.repeats=2",
            "sampling.seed=3",
            "sampling.temperature=0,0.7,1.4",
            "scorers=[exact_match,contains]",
            f"hydra.sweep.dir={sweep_dir}",
            env={"SENTECH_API_KEY": TEST_KEY},
        )
    assert run.returncode == 0, run.stderr
    done = call_cli("report", str(sweep_dir))
    assert done.returncode == 0, done.stderr
    summary = pd.read_parquet(sweep_dir / "summary.parquet")
    assert summary["temperature"].tolist() == [0.0, 0.7, 1.4]
    assert summary["n"].tolist() == [20, 20, 20]  # the sweep's combined file is not counted twice
    for col in (
        "score_exact_match_mean",
        "score_exact_match_ci_low",
        "score_exact_match_ci_high",
        "score_contains_mean",
        "latency_s_p50",
        "latency_s_p99",
        "ttft_s_p50",
        "ttft_s_p95",
        "output_tokens_per_s",
        "error_rate",
    ):
        assert summary[col].notna().all(), col
    assert summary.loc[0, "score_exact_match_mean"] == 1.0  # echo answers shipped prompts with the reference at T=0
    assert (summary["score_contains_mean"] == 1.0).all()
    assert (summary["ttft_s_p50"] <= summary["latency_s_p50"]).all()
    page = (sweep_dir / "report.html").read_text()
    # 4 plots + pass@k vs temperature (runner.repeats=2 and a pass/fail score)
    assert len(_pngs(page)) == 5 and "exact_match vs temperature" in page and "pass@k vs temperature" in page
    assert done.stdout.count("| temperature=") == 3 + 3  # the summary table and the pass@k table (repeats=2)
    assert "### pass@k" in done.stdout

    # the server is gone: re-scoring must not need it
    files = sorted(sweep_dir.rglob("results.parquet"))
    before = {f: pd.read_parquet(f) for f in files}
    rescored = call_cli(
        "score", str(sweep_dir), "scorers=[exact_match,token_f1]", "backend=remote", f"backend.base_url={url}"
    )
    assert rescored.returncode == 0, rescored.stderr
    for f in files:
        after = pd.read_parquet(f)
        assert after["score_exact_match"].equals(before[f]["score_exact_match"])
        assert after["score_token_f1"].notna().sum() == (after["status"] == "ok").sum()


def test_output_throughput_and_per_request_decode_speed_are_told_apart(tmp_path):
    """A server pacing 40 tok/s per stream, 16 streams at once: decode p50 ≈ 40, throughput many times that."""
    from sentech_eval.server.testing import running_server

    words = " ".join(f"w{i}" for i in range(21))  # echoed back: 21 tokens per answer
    data = tmp_path / "long.parquet"
    pd.DataFrame(
        {"id": [f"p{i}" for i in range(16)], "prompt": [f"{words} {i}" for i in range(16)], "reference": ["x"] * 16}
    ).to_parquet(data)
    run_dir = tmp_path / "run"
    with running_server(engine="echo", api_key=TEST_KEY, tokens_per_s=40) as url:
        run = call_cli(
            "run",
            "backend=remote",
            f"backend.base_url={url}",
            "backend.stream=true",
            "dataset=capitals",
            f"dataset.path={data}",
            "dataset.name=long",
            "runner.concurrency=16",
            "sampling.max_tokens=64",
            f"hydra.run.dir={run_dir}",
            env={"SENTECH_API_KEY": TEST_KEY},
        )
    assert run.returncode == 0, run.stderr
    summary, _, _ = write_report(run_dir)
    row = summary.iloc[0]
    # (22 − 1) tokens after the first, paced at 40/s; a client that reads the first chunk late (a busy
    # machine) shortens latency − ttft and so reads a little fast: ±10 %
    assert 30 <= row["decode_tokens_per_s_p50"] <= 44
    assert row["output_tokens_per_s"] > 3 * row["decode_tokens_per_s_p50"]  # 16 streams in flight
    text = report_markdown(summary, "paced")
    assert "output tok/s (all requests)" in text and "decode tok/s p50 (per request)" in text


def test_thirty_of_thirty_is_not_certainty_and_the_method_is_named(tmp_path):
    summary = summarize(make_results(n=30, accuracy=1.0))
    # mid-p lower bound for 30/30: P(X = 30)/2 = 0.025, solved by scipy (0.905, not 1)
    low = optimize.brentq(lambda p: 0.5 * scipy_stats.binom.pmf(30, 30, p) - 0.025, 0.5, 1.0, xtol=1e-14)
    assert (summary.loc[0, "score_exact_match_ci_low"], summary.loc[0, "score_exact_match_ci_high"]) == pytest.approx(
        (low, 1.0), abs=1e-9
    )
    text = report_markdown(summary, "all right")
    assert f"1.000 [{low:.3f}, 1.000]" in text
    assert "exact_match: mid-p exact interval" in text


def test_cluster_option_takes_a_column_and_refuses_an_unknown_one(tmp_path):
    df = make_results(n=40, accuracy=0.5)
    df["topic"] = [f"t{i % 4}" for i in range(len(df))]  # four topics
    by_topic = summarize(df, cluster="topic")
    by_prompt = summarize(df)
    assert (
        by_topic.loc[0, "score_exact_match_n_clusters"] == 4 and by_prompt.loc[0, "score_exact_match_n_clusters"] == 40
    )
    assert by_topic.loc[0, "score_exact_match_ci_method"] == "wilson_clustered"
    run = write_run(df, tmp_path / "run")
    bad = call_cli("report", str(run), "--cluster", "topc")
    assert bad.returncode == 2 and "--cluster 'topc' is not a column of the results" in bad.stderr
    assert bad.stderr.strip().count("\n") == 0
    good = call_cli("report", str(run), "--cluster", "topic")
    assert good.returncode == 0, good.stderr
