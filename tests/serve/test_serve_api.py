"""The server's JSON API, page, media and thumbnails: answers, validation and path traversal."""

from __future__ import annotations

import io
from concurrent.futures import ThreadPoolExecutor

import av
import numpy as np
import pytest
from fastapi.testclient import TestClient
from index_helpers import COLOURS, FakeEncoder

from vtrkit.index import VideoIndex
from vtrkit.serve.app import MAX_K, MAX_QUERY_CHARS, create_app

HUGE = 2**63  # one more than SQLite's largest integer


@pytest.fixture(scope="module")
def client(served_index):
    index, _ = served_index
    with TestClient(create_app(index)) as c:
        yield c


def decode_jpeg(data: bytes) -> np.ndarray:
    with av.open(io.BytesIO(data)) as c:
        return next(c.decode(video=0)).to_ndarray(format="rgb24")


def test_search_returns_one_result_per_video_reranked_by_default(client, served_index):
    index, paths = served_index
    body = client.get("/api/search", params={"q": "green", "k": 3}).json()
    assert body["query"] == "green" and len(body["results"]) == 3
    # The fake encoder has its own head, so the default re-ranks (its best-frame score).
    assert body["scored_by"] == "head" and body["rerank"] == index.default_rerank == 100
    top = body["results"][0]
    assert top["path"] == str(paths["green"].resolve()) and top["rank"] == 1
    assert top["score"] == pytest.approx(1.0, abs=2e-3) and top["scored_by"] == "head"
    assert top["thumb"] == f"/thumb/{top['video_id']}/{top['window_id']}.jpg"
    assert top["media"].startswith(f"/media/{top['video_id']}#t=0.00,")
    assert top["name"] == "green.mp4" and top["label"] == "0:00–0:04"
    assert len({r["video_id"] for r in body["results"]}) == 3
    # rerank=0: pooled cosines, equal to a direct computation from the stored features.
    body = client.get("/api/search", params={"q": "magenta", "k": 8, "rerank": 0}).json()
    assert body["scored_by"] == "cosine"
    q = FakeEncoder().encode_texts(["magenta"]).sentence[0].numpy()
    store, rows = index.library.store, {w.id: w.row for w in index.catalog.windows()}
    for r in body["results"]:
        pooled = store.pooled(np.array([rows[r["window_id"]]])).astype(np.float32)[0]
        assert r["score"] == pytest.approx(float(pooled @ q), abs=1e-5)


@pytest.mark.parametrize(
    ("params", "status", "message"),
    [
        ({}, 400, "empty"),
        ({"q": "   "}, 400, "empty"),
        ({"q": "x" * (MAX_QUERY_CHARS + 1)}, 400, "characters"),
        ({"q": "red", "k": 0}, 400, "k must be between"),
        ({"q": "red", "k": MAX_K + 1}, 400, "k must be between"),
        ({"q": "red", "k": -3}, 400, "k must be between"),
        ({"q": "red", "k": "ten"}, 422, "integer"),
        ({"q": "red", "rerank": -1}, 400, "rerank"),
    ],
)
def test_bad_input_is_a_4xx_with_a_message(client, params, status, message):
    response = client.get("/api/search", params=params)
    assert response.status_code == status
    assert message in str(response.json()["detail"])


def test_media_serves_catalogued_files_by_id_only(client, served_index):
    index, paths = served_index
    video = index.catalog.video_by_path(str(paths["blue"].resolve()))
    response = client.get(f"/media/{video.id}")
    assert response.status_code == 200
    assert response.headers["content-type"] == "video/mp4"
    assert response.content == paths["blue"].read_bytes()
    # Range requests work (browsers seek with them).
    part = client.get(f"/media/{video.id}", headers={"Range": "bytes=0-99"})
    assert part.status_code == 206 and part.content == paths["blue"].read_bytes()[:100]
    # A file that failed to decode is in the catalog but not served.
    failed = index.catalog.video_by_path(str(paths["text"].resolve()))
    assert client.get(f"/media/{failed.id}").status_code == 404


@pytest.mark.parametrize(
    "url",
    [
        "/media/../../etc/passwd",
        "/media/..%2F..%2Fetc%2Fpasswd",
        "/media/%2e%2e/%2e%2e/etc/passwd",
        "/media/%2Fetc%2Fpasswd",
        "/media/999999",
        "/media/-1",
        "/media/1.5",
        "/thumb/..%2F..%2Fetc%2Fpasswd.jpg",
        "/thumb/999999.jpg",
        "/thumb/1/..%2F..%2Fetc%2Fpasswd.jpg",
        "/static/..%2F..%2F..%2Fpyproject.toml",
        "/static/../app.py",
    ],
)
def test_traversal_and_unknown_ids_get_nothing(client, url):
    response = client.get(url)
    assert response.status_code in (404, 422), (url, response.status_code)
    assert b"root:" not in response.content and b"[project]" not in response.content
    assert b"import" not in response.content


@pytest.mark.parametrize(
    "url",
    [
        f"/media/{HUGE}",
        f"/media/{2**63 - 1}",
        f"/media/{10**30}",
        f"/thumb/{HUGE}.jpg",
        f"/thumb/{HUGE}/1.jpg",
        f"/thumb/1/{HUGE}.jpg",
        "/thumb/-1/1.jpg",
        f"/api/like/{HUGE}",
        f"/api/like/-{HUGE}",
    ],
)
def test_ids_too_large_for_the_catalog_are_404_not_500(client, url):
    response = client.get(url)
    assert response.status_code == 404, (url, response.status_code, response.text)
    assert "no " in response.json()["detail"]


def test_stored_thumbnail_is_a_jpeg_of_the_window(client, served_index):
    index, paths = served_index
    video = index.catalog.video_by_path(str(paths["red"].resolve()))
    (window,) = index.catalog.windows(video.id)
    response = client.get(f"/thumb/{window.id}.jpg")
    assert response.status_code == 200 and response.headers["content-type"] == "image/jpeg"
    assert response.content == index.catalog.thumbnail(window.id)


def test_readable_thumbnail_keeps_the_video_size_and_aspect(client, served_index):
    index, paths = served_index
    video = index.catalog.video_by_path(str(paths["orange"].resolve()))
    (window,) = index.catalog.windows(video.id)
    response = client.get(f"/thumb/{video.id}/{window.id}.jpg")
    assert response.status_code == 200 and response.headers["content-type"] == "image/jpeg"
    image = decode_jpeg(response.content)
    # The collection's videos are 40x32; the model sees 32x32 squares. The page gets 40x32.
    assert image.shape == (32, 40, 3)
    assert np.abs(image.astype(int) - COLOURS["orange"]).mean() < 6
    # A window of another video is not found under this video's id.
    other = index.catalog.video_by_path(str(paths["red"].resolve()))
    (foreign,) = index.catalog.windows(other.id)
    assert client.get(f"/thumb/{video.id}/{foreign.id}.jpg").status_code == 404


def test_wide_video_thumbnail_is_320_wide_16_9_and_not_cropped(tmp_path):
    """A 640x360 video whose leftmost 40 columns are green: a square centre crop would cut them."""
    folder = tmp_path / "videos"
    folder.mkdir()
    path = folder / "wide.mp4"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=4)
        stream.width, stream.height, stream.pix_fmt = 640, 360, "yuv420p"
        image = np.zeros((360, 640, 3), np.uint8)
        image[:, :] = (200, 0, 200)
        image[:, :40] = (0, 255, 0)
        for i in range(8):
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts = i
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    with VideoIndex.build(folder, tmp_path / "lib", FakeEncoder()) as index:
        video = index.catalog.videos()[0]
        (window,) = index.catalog.windows(video.id)
        with TestClient(create_app(index)) as c:
            jpeg = c.get(f"/thumb/{video.id}/{window.id}.jpg").content
        stored = decode_jpeg(index.catalog.thumbnail(window.id))
    image = decode_jpeg(jpeg)
    assert image.shape == (180, 320, 3) and stored.shape == (32, 32, 3)
    assert np.abs(image[:, :15].astype(int) - (0, 255, 0)).mean() < 20
    assert np.abs(image[:, 40:].astype(int) - (200, 0, 200)).mean() < 20


def test_page_renders_one_card_per_video_and_escapes(client):
    page = client.get("/")
    assert page.status_code == 200 and 'id="q"' in page.text
    assert f"{len(COLOURS)} videos" in page.text and "2 could not be read" in page.text
    page = client.get("/", params={"q": "<b>magenta</b>", "k": 6})
    assert page.status_code == 200
    assert "&lt;b&gt;magenta&lt;/b&gt;" in page.text and "<b>magenta</b>" not in page.text
    assert page.text.count('class="thumb"') == 6
    page = client.get("/", params={"q": "magenta", "k": 6})
    assert page.text.index("magenta.mp4") < page.text.index("red.mp4")
    assert page.text.count('class="result"') == 6 and "re-ranking the 100 best" in page.text


@pytest.mark.parametrize(
    ("params", "shown"),
    [
        ({"q": "red", "k": "abc"}, "must be a whole number from 1 to 100, not “abc”"),
        ({"q": "red", "k": "0"}, "not “0”"),
        ({"q": "red", "k": "9999"}, "not “9999”"),
        ({"q": "red", "rerank": "lots"}, "rerank must be a whole number"),
    ],
)
def test_page_bad_numbers_get_a_friendly_notice_and_results(client, params, shown):
    page = client.get("/", params=params)
    assert page.status_code == 200 and "{" not in page.text.split("<main>")[1].split("<ol")[0]
    assert shown in page.text
    assert 'class="result"' in page.text  # the search still ran, with the default


@pytest.mark.parametrize("q", ["", "   "])
def test_page_empty_query_gets_a_hint_not_an_error(client, q):
    page = client.get("/", params={"q": q})
    assert page.status_code == 200
    assert 'id="hint"' in page.text and "Type what happens" in page.text
    assert "?q=" not in page.text and 'id="error"' not in page.text


def test_like_status_and_concurrent_queries(client, served_index):
    index, paths = served_index
    video = index.catalog.video_by_path(str(paths["orange"].resolve()))
    body = client.get(f"/api/like/{video.id}", params={"k": 2}).json()
    assert len(body["results"]) == 2
    assert all(r["video_id"] != video.id for r in body["results"])
    assert client.get("/api/like/424242").status_code == 404
    # Concurrent requests give exactly the answers of one-by-one requests.
    words = [f"{a} {b}" for a in ("red", "blue", "cyan", "white") for b in ("green", "orange")]
    alone = {w: client.get("/api/search", params={"q": w, "k": 4}).json()["results"] for w in words}
    with ThreadPoolExecutor(8) as pool:
        together = list(
            pool.map(lambda w: client.get("/api/search", params={"q": w, "k": 4}).json(), words)
        )
    # (Equal scores may come in either order: a batched nearest-neighbour search breaks ties
    # its own way, so scores are compared, and the videos of every score that is not a tie.)
    for t in together:
        assert [r["score"] for r in t["results"]] == pytest.approx(
            [r["score"] for r in alone[t["query"]]], abs=1e-5
        )
        scores = [round(r["score"], 4) for r in t["results"]]
        for r, ref in zip(t["results"], alone[t["query"]], strict=True):
            if scores.count(round(r["score"], 4)) == 1:
                assert r["video_id"] == ref["video_id"]
    status = client.get("/api/status").json()
    assert status["counts"]["failed"] == 2 and status["default_rerank"] == 100
    assert status["fingerprint"] == index.library.settings.fingerprint
    # The second round of the same words came from the cache.
    assert status["batching"]["cache_hits"] >= len(words)
