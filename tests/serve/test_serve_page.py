"""End to end in headless Chromium: type a query, see one card per video, play a moment.

Screenshots of the results and of the player go to ``tests/artifacts/`` (or $VTRKIT_ARTIFACTS).

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

import av
import numpy as np
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


LONG_NAME = (
    "2024-06-01 family picnic at the lake, the kids chase a bright red kite across the meadow "
    "until it lands in a tree (full version).mp4"
)


def write_scene(path: Path, colours: list[tuple[int, int, int]], size=(320, 180)) -> Path:
    """A 16:9 h264 clip: a grey field with a square that takes ``colours[i]`` in second i and
    moves right, so frames differ and thumbnails show something."""
    path.parent.mkdir(parents=True, exist_ok=True)
    width, height = size
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=4)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for i in range(4 * len(colours)):
            image = np.full((height, width, 3), 90, np.uint8)
            x = 10 + i * (width - 80) // (4 * len(colours))
            image[50:120, x : x + 70] = colours[i // 4]
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts = i
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return path


@pytest.fixture(scope="module")
def page_index(tmp_path_factory):
    from index_helpers import COLOURS, FakeEncoder

    from vtrkit.index import VideoIndex

    root = tmp_path_factory.mktemp("page")
    c = COLOURS
    write_scene(root / "videos" / LONG_NAME, [c["blue"]] * 4 + [c["red"]] * 4 + [c["blue"]] * 4)
    write_scene(root / "videos" / "red_then_green.mp4", [c["red"]] * 4 + [c["green"]] * 4)
    for name in ("orange", "magenta", "yellow", "cyan", "white"):
        write_scene(root / "videos" / f"{name}.mp4", [c[name]] * 4)
    index = VideoIndex.build(root / "videos", root / "lib", FakeEncoder())
    yield index
    index.close()


@pytest.fixture
def server(page_index):
    port = free_port()
    config = uvicorn.Config(
        create_app(page_index), host="127.0.0.1", port=port, log_level="warning"
    )
    srv = uvicorn.Server(config)
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not srv.started:
        assert thread.is_alive() and time.monotonic() < deadline, "server did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    srv.should_exit = True
    thread.join(timeout=10)


def browser_or_skip():
    chromium = find_chromium()
    if chromium is None:
        pytest.skip(
            "no chromium binary (looked for $VTRKIT_CHROMIUM, /usr/bin/chromium, chromium on "
            "PATH); install it with `apt-get install chromium` to run the browser test"
        )
    return chromium


def test_search_page_results_and_player(server):
    chromium = browser_or_skip()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=LAUNCH_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1100, "height": 760})
            page.goto(server + "/")
            page.fill("#q", "red")
            page.select_option("#k", "6")
            page.press("#q", "Enter")
            page.wait_for_selector("#results .result img.thumb")
            items = page.locator("#results .result")
            assert items.count() == 6
            # One card per video; the long video's red middle is its best moment.
            videos = [items.nth(i).get_attribute("data-video") for i in range(6)]
            assert len(set(videos)) == 6
            first = items.nth(0)
            assert first.locator(".name").inner_text() == LONG_NAME
            assert first.locator(".badge").inner_text() == "0:04–0:08"
            assert first.locator(".moments .moment").count() >= 1
            # Thumbnails: decoded from the files at 320x180 (not the model's 48 px squares) and
            # shown whole in a 16:9 box.
            page.wait_for_function(
                "() => [...document.querySelectorAll('img.thumb')]"
                ".every(i => i.complete && i.naturalWidth > 0)"
            )
            sizes = page.eval_on_selector_all(
                "img.thumb", "els => els.map(e => [e.naturalWidth, e.naturalHeight])"
            )
            assert sizes == [[320, 180]] * 6
            box = first.locator(".frame").bounding_box()
            assert box is not None and abs(box["width"] / box["height"] - 16 / 9) < 0.02
            # The long name wraps: all of it is on the page, none of it clipped.
            clipped = first.locator(".name").evaluate("e => e.scrollWidth > e.clientWidth")
            assert not clipped
            page.screenshot(path=str(artifact_dir() / "search_page.png"), full_page=True)

            # The player: title, the moment's span, the playing time, the other moments.
            first.locator("a.play").click()
            page.wait_for_selector("#player[open]")
            assert page.locator("#player-title").inner_text() == LONG_NAME
            assert page.locator("#player-moment").inner_text() == "moment 0:04–0:08"
            page.wait_for_function(
                "() => { const v = document.querySelector('#player video');"
                " return v.readyState >= 2 && v.currentTime >= 4; }"
            )
            size = page.eval_on_selector("#player video", "v => [v.videoWidth, v.videoHeight]")
            assert size == [320, 180]
            assert page.locator("#player-now").inner_text().startswith("now 0:0")
            assert page.locator("#player-moments .moment").count() >= 2
            page.eval_on_selector("#player video", "v => v.pause()")
            page.screenshot(path=str(artifact_dir() / "search_player.png"))
            page.click("#close")

            # An empty query is a hint, a bad ?k a notice: never raw JSON.
            page.fill("#q", "")
            page.press("#q", "Enter")
            assert "Type what happens" in page.locator("#hint").inner_text()
            page.goto(server + "/?q=red&k=abc")
            assert "not “abc”" in page.locator(".notice").inner_text()
            assert page.locator("#results .result").count() == 7  # every video, default k 12
        finally:
            browser.close()
