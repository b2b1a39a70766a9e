"""The viewer in a real browser: Playwright drives Debian's chromium (offline) through every page.

Skipped when chromium or Playwright is missing (`.ci/run` installs chromium with apt; Playwright
comes with the `test` extra). One test feeds outputs carrying script injections and asserts that no
dialog ever opens.
"""

from __future__ import annotations

import shutil

import pytest
from view_support import running_viewer

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (the test extra)")
pytestmark = pytest.mark.skipif(
    shutil.which("chromium") is None, reason="chromium is not installed (apt-get install -y chromium)"
)
WAIT_MS = 60_000


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def site(results_tree, tmp_path_factory):
    with running_viewer([results_tree], tmp_path_factory.mktemp("browser-cache")) as url:
        yield url


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    dialogs: list[str] = []
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.dialogs, page.script_errors = dialogs, errors
    yield page
    context.close()


def ready(page, url: str) -> None:
    """Open ``url`` and wait until it no longer says it is computing (the page reloads itself)."""
    page.goto(url)
    page.wait_for_function("() => !document.getElementById('pending')", timeout=WAIT_MS)


def test_runs_page_sorts_filters_and_opens_a_run(page, site):
    ready(page, site)
    names = page.locator("#runs a.run-link").all_inner_texts()
    assert "capitals/run-a" in names and "sweep" in names
    page.click("#runs thead th:nth-child(2)")  # sort by name
    assert page.locator("#runs a.run-link").all_inner_texts() == sorted(names)
    page.fill("#runs-filter", "run-b")
    visible = [n for n in page.locator("#runs tr:not(.hidden) a.run-link").all_inner_texts()]
    assert visible == ["capitals/run-b"]
    page.fill("#runs-filter", "")
    assert page.locator("#compare-button").is_disabled()
    page.click("text=capitals/run-a")
    page.wait_for_selector("#summary")
    assert page.locator("#summary tbody tr").count() == 1
    assert page.locator("#plots img").count() >= 2
    assert not page.script_errors


def test_filter_to_failures_and_open_a_row(page, site):
    ready(page, site + "run/0/capitals/run-b")
    total = page.locator("#row-count").inner_text()
    page.select_option("select[name=score]", "score_contains")
    page.select_option("select[name=outcome]", "fail")
    page.click("#apply-filter")
    page.wait_for_selector("#row-count")
    assert "filtered" in page.locator("#row-count").inner_text() and page.locator("#row-count").inner_text() != total
    scores = page.locator("#rows-table tbody tr td:nth-child(6)").all_inner_texts()
    assert scores and all(float(s) < 1 for s in scores)
    page.locator("#rows-table a.row-link").first.click()
    page.wait_for_selector("#row-scores")
    value = page.locator("#row-scores tbody tr", has_text="contains").locator("td").nth(1).inner_text()
    assert float(value) < 1
    assert page.locator("#row-output").count() == 1 and page.locator("#row-timing").count() == 1


def test_sweep_heatmap_over_two_chosen_settings(page, site):
    ready(page, site + "sweep/0/sweep")
    page.select_option("#heatmap-form select[name=x]", "top_p")
    page.select_option("#heatmap-form select[name=y]", "temperature")
    page.click("#draw-heatmap")
    page.wait_for_function("() => !document.getElementById('pending')", timeout=WAIT_MS)
    image = page.locator("#heatmap")
    assert image.count() == 1
    assert page.evaluate("() => document.getElementById('heatmap').naturalWidth") > 100  # the PNG decoded
    assert "x=top_p" in page.url and "y=temperature" in page.url
    assert page.locator("#tradeoffs img").count() >= 1


def test_compare_two_runs_and_see_the_flipped_rows(page, site):
    ready(page, site)
    page.check("input.pick[value='0/capitals/run-a']")
    page.check("input.pick[value='0/capitals/run-b']")
    assert page.locator("#compare-button").is_enabled()
    page.click("#compare-button")
    page.wait_for_function("() => !document.getElementById('pending')", timeout=WAIT_MS)
    assert page.locator("#compare-scores tbody tr").count() == 2
    flips = page.locator("#flips-table tbody tr")
    assert flips.count() > 0
    first = flips.first.locator("td")
    assert first.nth(6).inner_text() != first.nth(7).inner_text()  # A's and B's outputs side by side
    page.select_option("#flip-filter select[name=direction]", "pass-fail")
    page.click("#apply-flips")
    page.wait_for_selector("#flips-table")
    directions = set(page.locator("#flips-table tbody tr td:nth-child(4)").all_inner_texts())
    assert directions <= {"pass→fail"}


def test_script_injections_in_outputs_never_run(page, site):
    from view_support import INJECTIONS

    ready(page, site + "run/0/hostile")
    for n in range(len(INJECTIONS)):
        ready(page, site + f"row/0/hostile?n={n}")
    ready(page, site + "run/0/hostile?q=script")
    ready(page, site)
    page.wait_for_timeout(500)
    assert page.dialogs == []
    ready(page, site + "row/0/hostile?n=0")
    assert "<script>alert(1)</script>" in page.locator("#row-output").inner_text()  # shown as text
    assert page.locator("#row-output script").count() == 0


def test_history_page_draws_a_series(page, site):
    ready(page, site + "history")
    options = page.locator("#history-form select[name=group] option")
    assert options.count() > 1
    page.select_option("#history-form select[name=group]", index=1)
    page.click("#show-history")
    page.wait_for_function("() => !document.getElementById('pending')", timeout=WAIT_MS)
    assert page.locator("#history tbody tr").count() >= 1
    assert page.locator("#history-plot").count() == 1
