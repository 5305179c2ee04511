"""Screenshot the top of a report for the README.

Usage (from the repository root, with a report built by ``python -m pipeline``)::

    python docs/screenshot.py reports/index.html docs/report.png

Takes a 1200x900 viewport PNG with Debian's chromium (/usr/bin/chromium) through the
playwright package; it never runs ``playwright install``. Rerun it when the report changes.
"""

import sys
from pathlib import Path

from playwright.sync_api import sync_playwright

CHROMIUM = "/usr/bin/chromium"
ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]


def main(report: str, png: str) -> None:
    url = Path(report).resolve().as_uri()
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        page = browser.new_page(viewport={"width": 1200, "height": 900})
        page.goto(url, wait_until="load")
        page.screenshot(path=png, full_page=False)
        browser.close()


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2])
