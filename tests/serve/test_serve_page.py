"""End to end in headless Chromium: type a query on the page and see result thumbnails.

Needs Debian's chromium (``apt-get install chromium``; CI installs it) driven by Playwright. Without
a chromium binary this test is skipped with the reason printed; it is the suite's one allowed skip.
"""

from __future__ import annotations

import os
import shutil
import socket
import threading
import time
from pathlib import Path

import pytest
import uvicorn

from vtrkit.serve.app import create_app

CHROMIUM_CANDIDATES = ("/usr/bin/chromium", "/usr/bin/chromium-browser")
LAUNCH_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def find_chromium() -> str | None:
    explicit = os.environ.get("VTRKIT_CHROMIUM")
    for candidate in ((explicit,) if explicit else ()) + CHROMIUM_CANDIDATES:
        if candidate and Path(candidate).is_file():
            return candidate
    return shutil.which("chromium")


def artifact_dir() -> Path:
    folder = Path(os.environ.get("VTRKIT_ARTIFACTS", Path(__file__).parents[1] / "artifacts"))
    folder.mkdir(parents=True, exist_ok=True)
    ignore = folder / ".gitignore"
    if not ignore.exists():
        ignore.write_text("*\n")  # screenshots are outputs, never committed
    return folder


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def server(served_index):
    index, paths = served_index
    port = free_port()
    config = uvicorn.Config(create_app(index), host="127.0.0.1", port=port, log_level="warning")
    srv = uvicorn.Server(config)
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not srv.started:
        assert thread.is_alive() and time.monotonic() < deadline, "server did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}", paths
    srv.should_exit = True
    thread.join(timeout=10)


def test_typing_a_query_shows_thumbnails(server):
    chromium = find_chromium()
    if chromium is None:
        pytest.skip(
            "no chromium binary (looked for $VTRKIT_CHROMIUM, /usr/bin/chromium, chromium on "
            "PATH); install it with `apt-get install chromium` to run the browser test"
        )
    from playwright.sync_api import sync_playwright

    url, _ = server
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=LAUNCH_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1000, "height": 700})
            page.goto(url + "/")
            page.fill("#q", "cyan")
            page.select_option("#k", "6")
            page.press("#q", "Enter")
            page.wait_for_selector("#results .result img.thumb")
            items = page.locator("#results .result")
            assert items.count() == 6
            assert "cyan.mp4" in items.nth(0).locator(".name").inner_text()
            # Every thumbnail really loaded and decoded in the browser.
            page.wait_for_function(
                "() => [...document.querySelectorAll('img.thumb')]"
                ".every(i => i.complete && i.naturalWidth > 0)"
            )
            widths = page.eval_on_selector_all("img.thumb", "els => els.map(e => e.naturalWidth)")
            assert widths == [32] * 6
            page.screenshot(path=str(artifact_dir() / "search_page.png"), full_page=True)
            # An empty query shows the message on the page.
            page.fill("#q", "")
            page.press("#q", "Enter")
            assert "empty" in page.locator("#error").inner_text()
        finally:
            browser.close()
