"""The viewer over HTTP: pages, filters, safety (escaping, CSP, confinement, token), bad files, deleted runs."""

from __future__ import annotations

import http.client
import re
import shutil
import time
import urllib.error
import urllib.request
from pathlib import Path

import pandas as pd
import pytest
from view_support import INJECTIONS, running_viewer


def get(url: str, timeout: float = 60) -> tuple[int, str, dict]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, response.read().decode(), dict(response.headers)
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode(), dict(exc.headers)


def get_ready(url: str, marker: str = 'id="pending"', tries: int = 60) -> str:
    """The page once it no longer says it is computing."""
    for _ in range(tries):
        status, body, _ = get(url)
        assert status == 200, body[:500]
        if marker not in body:
            return body
        time.sleep(0.5)
    raise AssertionError(f"{url} kept computing")


def raw_status(base: str, path: str) -> int:
    """The status of ``path`` sent as is (no client-side normalisation of .. or %2e)."""
    host, port = base.removeprefix("http://").rstrip("/").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    conn.request("GET", path)
    status = conn.getresponse().status
    conn.close()
    return status


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p): (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def viewer(results_tree, tmp_path_factory):
    before = snapshot(results_tree)
    with running_viewer([results_tree], tmp_path_factory.mktemp("view-cache")) as url:
        yield url
    assert snapshot(results_tree) == before, "the viewer wrote into the results tree"


def test_runs_page_lists_every_run_with_its_numbers(viewer, results_tree):
    body = get_ready(viewer)
    for name in ("capitals/run-a", "capitals/run-b", "sweep", "race", "load", "hostile", "broken", "foreign", "killed"):
        assert f">{name}</a>" in body, name
    assert ">sweep/0</a>" not in body  # a combined sweep is one line, its jobs are on its page
    a = pd.read_parquet(results_tree / "capitals" / "run-a" / "results.parquet")
    line = next(row for row in body.split("<tr>") if ">capitals/run-a</a>" in row)
    assert f"<td>{int((a['status'] == 'ok').sum())}</td>" in line
    assert re.search(r"\d\.\d{3} \[\d\.\d{3}, \d\.\d{3}\]", line)  # a score with its 95% CI
    assert "damaged: not readable Parquet" in body and "not sentech-eval results" in body
    assert "partial" in next(row for row in body.split("<tr>") if ">killed</a>" in row)


def test_run_page_shows_report_numbers_plots_and_paged_rows(viewer, results_tree):
    from sentech_eval.analysis.summary import load, summarize

    body = get_ready(viewer + "run/0/capitals/run-a")
    summary = summarize(load(results_tree / "capitals" / "run-a"))
    row = summary.iloc[0]
    expected = (
        f"{row['score_contains_mean']:.3f} [{row['score_contains_ci_low']:.3f}, {row['score_contains_ci_high']:.3f}]"
    )
    assert expected in body
    assert body.count('src="data:image/png;base64,') >= 2
    assert re.search(r'id="row-count">rows 1–30 of 30', body)
    failing = summary.iloc[0]["n_ok"] - round(row["score_contains_mean"] * row["score_contains_n"])
    page = get_ready(viewer + "run/0/capitals/run-a?score=score_contains&outcome=fail")
    assert f"of {int(failing)} " in page


def test_filters_and_paging_match_pandas(viewer, results_tree):
    df = pd.read_parquet(results_tree / "sweep" / "results.parquet")
    base = viewer + "run/0/sweep"
    page = get_ready(base + "?temperature=1.2&score=score_exact_match&outcome=fail")
    expected = int(((df["temperature"] == 1.2) & (df["score_exact_match"] < 1)).sum())
    assert f"of {expected} " in page
    first = get_ready(base)
    assert f"of {len(df)} " in first and 'class="next"' in first
    second = get_ready(base + "?offset=50")
    assert "rows 51–" in second and 'class="prev"' in second
    needle = str(df["prompt_id"].iloc[7])
    found = get_ready(base + "?q=" + needle.upper())  # case-insensitive
    assert f"of {int(df['prompt_id'].str.contains(needle, case=False).sum())} " in found


def test_row_view_shows_every_field(viewer, results_tree):
    df = pd.read_parquet(results_tree / "capitals" / "run-a" / "results.parquet")
    body = get_ready(viewer + "row/0/capitals/run-a?n=3")
    assert str(df["prompt_id"].iloc[3]) in body
    for column in ("latency_s", "prompt_tokens", "completion_tokens", "attempts", "score_contains_detail", "seed"):
        assert f">{column}<" in body or column.removeprefix("score_").removesuffix("_detail") in body, column
    assert 'id="row-output"' in body and 'id="row-prompt"' in body


def test_outputs_are_text_never_markup(viewer):
    body = get_ready(viewer + "run/0/hostile")
    row = get_ready(viewer + "row/0/hostile?n=0")
    for text in INJECTIONS:
        if "<" in text:  # markup must arrive escaped (a bare "javascript:…" is harmless text)
            assert text not in body and text not in row, text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in body + row


def test_every_page_forbids_inline_script(viewer):
    for path in ("", "run/0/capitals/run-a", "row/0/capitals/run-a?n=0", "history", "static/view.css", "nope"):
        _, _, headers = get(viewer + path)
        csp = headers["Content-Security-Policy"]
        assert "script-src 'self'" in csp and "unsafe-inline" not in csp and "default-src 'none'" in csp


@pytest.mark.parametrize(
    "path",
    [
        "/run/0/../../../etc",
        "/run/0/%2e%2e/%2e%2e/etc",
        "/run/0/%2E%2E%2F%2E%2E%2Fetc",
        "/row/0/..%2f..%2fetc?n=0",
        "/run/1/x",
        "/static/../app.py",
        "/static/%2e%2e%2fapp.py",
        "/run/0/outside-link",
    ],
)
def test_nothing_outside_the_roots_is_served(viewer, results_tree, tmp_path_factory, path):
    outside = tmp_path_factory.mktemp("outside")
    shutil.copytree(results_tree / "capitals" / "run-a", outside / "run", dirs_exist_ok=True)
    link = results_tree / "outside-link"
    if not link.exists():
        link.symlink_to(outside / "run")
    try:
        assert raw_status(viewer, path) == 404
    finally:
        link.unlink()


def test_damaged_partial_and_foreign_files_show_what_can_be_read(viewer, results_tree):
    broken = get_ready(viewer + "run/0/broken")
    assert 'id="unreadable"' in broken and "not readable Parquet" in broken
    foreign = get_ready(viewer + "run/0/foreign")
    assert 'id="foreign"' in foreign and "&lt;b&gt;c&lt;/b&gt;" in foreign
    killed = get_ready(viewer + "run/0/killed")
    assert "part-000001.parquet" in killed and "of 30 " in killed  # the readable part's rows are shown
    assert get(viewer)[0] == 200  # and the server is still up


def test_a_run_deleted_while_shown_says_so(results_tree, tmp_path):
    root = tmp_path / "r"
    shutil.copytree(results_tree / "capitals" / "run-a", root / "doomed")
    with running_viewer([root], tmp_path / "cache") as url:
        assert "of 30 " in get_ready(url + "run/0/doomed")
        shutil.rmtree(root / "doomed")
        status, body, _ = get(url + "run/0/doomed")
        assert status == 404 and 'id="gone"' in body and "deleted or moved" in body
        assert get(url + "row/0/doomed?n=1")[0] == 404


def test_new_runs_appear_without_a_restart(results_tree, tmp_path):
    root = tmp_path / "r"
    root.mkdir()
    with running_viewer([root], tmp_path / "cache") as url:
        assert 'id="no-runs"' in get(url)[1]
        shutil.copytree(results_tree / "capitals" / "run-b", root / "late")
        time.sleep(2.1)  # the discovery's refresh interval
        assert ">late</a>" in get_ready(url)


def test_a_loopback_viewer_answers_only_to_loopback_names(viewer):
    host, port = viewer.removeprefix("http://").rstrip("/").split(":")
    for name, expected in ((f"127.0.0.1:{port}", 200), (f"localhost:{port}", 200), (f"evil.example:{port}", 403)):
        conn = http.client.HTTPConnection(host, int(port), timeout=30)
        conn.request("GET", "/static/view.css", headers={"Host": name})
        assert conn.getresponse().status == expected, name
        conn.close()


def test_a_token_is_required_off_loopback(results_tree, tmp_path):
    with running_viewer([results_tree], tmp_path / "cache", token="s3cret") as url:
        status, body, headers = get(url)
        assert status == 403 and "token" in body and "Content-Security-Policy" in headers
        assert get(url + "run/0/capitals/run-a")[0] == 403
        assert get(url + "?token=wrong")[0] == 403
        opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor())
        with opener.open(url + "?token=s3cret") as response:
            assert response.status == 200
        with opener.open(url + "static/view.js") as response:  # the cookie carries the token on
            assert response.status == 200


def test_compare_page_has_paired_stats_and_flips(viewer, results_tree):
    from sentech_eval.analysis.compare import compare
    from sentech_eval.analysis.pairing import pair_results

    body = get_ready(viewer + "compare?run=0/capitals/run-a&run=0/capitals/run-b")
    metrics = compare(pair_results(results_tree / "capitals" / "run-a", results_tree / "capitals" / "run-b"))
    row = metrics[(metrics["metric"] == "score") & (metrics["column"] == "score_exact_match")].iloc[0]
    assert f"{row['diff']:.3f} [{row['ci_low']:.3f}, {row['ci_high']:.3f}]" in body
    a = pd.read_parquet(results_tree / "capitals" / "run-a" / "results.parquet")
    b = pd.read_parquet(results_tree / "capitals" / "run-b" / "results.parquet")
    both = a.merge(b, on=["prompt_id", "repeat"], suffixes=("_a", "_b"))
    down = int(((both["score_exact_match_a"] == 1) & (both["score_exact_match_b"] == 0)).sum())
    down += int(((both["score_contains_a"] == 1) & (both["score_contains_b"] == 0)).sum())
    assert f'id="flip-counts">{down} pass→fail' in body
    only = get_ready(viewer + "compare?a=0/capitals/run-a&b=0/capitals/run-b&direction=fail-pass&fscore=score_contains")
    assert "pass→fail</span>" not in only


def test_sweep_page_heatmap_tradeoffs_and_two_configs(viewer, results_tree):
    body = get_ready(viewer + "sweep/0/sweep?x=temperature&y=top_p")
    assert "Swept: temperature, top_p" in body
    assert 'id="heatmap"' in body and 'id="tradeoffs"' in body and "Pareto front" in body
    assert body.count('src="data:image/png') >= 4
    configs = pd.read_parquet(results_tree / "sweep" / "results.parquet")["config_id"].unique()
    cmp = get_ready(viewer + f"compare?a=0/sweep&b=0/sweep&ca={configs[0]}&cb={configs[1]}")
    assert 'id="compare-scores"' in cmp and 'id="flip-counts"' in cmp


def test_history_follows_one_configuration(viewer):
    body = get_ready(viewer + "history")
    assert 'id="history-form"' in body
    group = re.search(r'<option value="([^"]+)">capitals', body).group(1)
    page = get_ready(viewer + "history?group=" + urllib.request.quote(group))
    assert 'id="history"' in page and 'id="history-plot"' in page


def test_race_page_shows_the_rounds(viewer, results_tree):
    body = get_ready(viewer + "sweep/0/race")
    race = pd.read_parquet(results_tree / "race" / "race.parquet")
    assert 'id="race-section"' in body and '<table id="race">' in body
    assert body.count("<tr><td>") >= race["cell"].nunique()  # one line per cell in its last round


def test_load_sweep_page_shows_the_load_table_and_knee(viewer, results_tree):
    body = get_ready(viewer + "sweep/0/load")
    assert 'id="load-section"' in body and '<table id="load">' in body
    jobs = pd.read_parquet(results_tree / "load" / "results.parquet")["request_rate"].nunique()
    table = body[body.index('<table id="load">') :]
    assert table[: table.index("</table>")].count("<tr>") == jobs + 1  # a header and one line per rate
