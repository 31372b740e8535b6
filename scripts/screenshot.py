"""Screenshot a report in headless Chromium (Debian's /usr/bin/chromium, driven by Playwright).

Run: ``.venv/bin/python scripts/screenshot.py report.html docs/screenshot.png [--anchor layer-conv1]
[--click SELECTOR] [--reveal SELECTOR]``.
Makes the README's screenshot: the demo report at 1280×800. ``launch`` is also how the browser tests
and ``bench/reader_speed.py`` start Chromium, so all three see the page the same way.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

CHROMIUM = Path("/usr/bin/chromium")
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]


VISIBLE_IMAGES_DECODED = """() => [...document.images]
    .filter(i => { const r = i.getBoundingClientRect(); return r.bottom > 0 && r.top < innerHeight && r.width > 0; })
    .every(i => i.complete && i.naturalWidth > 0)"""


def launch(playwright: Any) -> Any:
    """Debian's Chromium, headless, with a fresh profile and no background network traffic."""
    return playwright.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("page", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--anchor", default="", help="section id to scroll to, e.g. layer-conv1")
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--height", type=int, default=800)
    parser.add_argument("--click", default="", help="an element to click first, e.g. '.card .whole'")
    parser.add_argument("--reveal", default="", help="an element to scroll into view, e.g. '#zoom .built-view'")
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = launch(playwright)
        page = browser.new_page(viewport={"width": args.width, "height": args.height})
        page.goto(args.page.resolve().as_uri() + (f"#{args.anchor}" if args.anchor else ""))
        page.wait_for_load_state("load")
        page.wait_for_function(VISIBLE_IMAGES_DECODED, timeout=10_000)  # lazy atlases load after the scroll
        if args.click:
            page.click(args.click)
        if args.reveal:
            page.locator(args.reveal).last.scroll_into_view_if_needed()
        page.screenshot(path=str(args.out))
        browser.close()


if __name__ == "__main__":
    main()
