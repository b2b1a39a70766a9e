"""Screenshots of every page of `sentech-eval view` for docs/view.md (docs/view/*.png).

Builds the results tree of the viewer's tests (tests/view/view_support.py: real runs against the real
server's oracle and echo engines, a sweep, a race, a load sweep, a damaged file …), serves it with the
viewer on a loopback port and has Playwright drive Debian's chromium through each page.

    .venv/bin/python scripts/view_screenshots.py            # writes docs/view/*.png
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "tests"), str(REPO / "tests" / "view")]

from playwright.sync_api import sync_playwright  # noqa: E402
from view_support import build_tree, running_viewer  # noqa: E402

OUT = REPO / "docs" / "view"
PAGES = [
    ("runs", "", None),
    ("run", "run/0/capitals/run-b", None),
    ("run-failures", "run/0/capitals/run-b?score=score_contains&outcome=fail#rows", "#rows"),
    ("row", "row/0/capitals/run-b?n=4", None),
    ("sweep", "sweep/0/sweep?x=top_p&y=temperature", None),
    ("race", "sweep/0/race", "#race-section"),
    ("load", "sweep/0/load", "#load-section"),
    ("compare", "compare?a=0/capitals/run-a&b=0/capitals/run-b", None),
    ("history", "history", None),
    ("hostile-row", "row/0/hostile?n=0", None),
    ("damaged", "run/0/killed", None),
]


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="view-shots-") as tmp:
        root = build_tree(Path(tmp))
        with running_viewer([root], Path(tmp) / "cache") as url, sync_playwright() as p:
            browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            page.goto(url + "history")
            group = page.locator("#history-form select[name=group] option").nth(1).get_attribute("value")
            for name, path, anchor in PAGES:
                if name == "history":
                    path = f"history?group={group}"
                page.goto(url + path)
                page.wait_for_function("() => !document.getElementById('pending')", timeout=300_000)
                if anchor:
                    page.locator(anchor).scroll_into_view_if_needed()
                    page.screenshot(path=str(OUT / f"{name}.png"))
                else:
                    page.screenshot(path=str(OUT / f"{name}.png"), full_page=True)
                print(f"wrote docs/view/{name}.png", file=sys.stderr)
            browser.close()


if __name__ == "__main__":
    main()
