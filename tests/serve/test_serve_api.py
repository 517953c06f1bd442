"""The server's JSON API, page, media and thumbnails: answers, validation and path traversal."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from index_helpers import COLOURS

from vtrkit.serve.app import MAX_K, MAX_QUERY_CHARS, create_app


@pytest.fixture(scope="module")
def client(served_index):
    index, _ = served_index
    with TestClient(create_app(index)) as c:
        yield c


def test_search_returns_the_captioned_video_first(client, served_index):
    _, paths = served_index
    response = client.get("/api/search", params={"q": "green", "k": 3})
    assert response.status_code == 200
    body = response.json()
    assert body["query"] == "green" and len(body["results"]) == 3
    top = body["results"][0]
    assert top["path"] == str(paths["green"].resolve()) and top["rank"] == 1
    assert top["score"] == pytest.approx(1.0, abs=2e-3)
    assert top["thumb"] == f"/thumb/{top['window_id']}.jpg"
    assert top["media"].startswith(f"/media/{top['video_id']}#t=0.00,")
    # Re-ranked results come back on the head's scale and still find it.
    body = client.get("/api/search", params={"q": "green", "k": 2, "rerank": 5}).json()
    assert body["results"][0]["path"] == str(paths["green"].resolve())


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
        "/static/..%2F..%2F..%2Fpyproject.toml",
        "/static/../app.py",
    ],
)
def test_traversal_and_unknown_ids_get_nothing(client, url):
    response = client.get(url)
    assert response.status_code in (404, 422), (url, response.status_code)
    assert b"root:" not in response.content and b"[project]" not in response.content
    assert b"import" not in response.content


def test_thumbnail_is_a_jpeg_of_the_window(client, served_index):
    index, paths = served_index
    video = index.catalog.video_by_path(str(paths["red"].resolve()))
    (window,) = index.catalog.windows(video.id)
    response = client.get(f"/thumb/{window.id}.jpg")
    assert response.status_code == 200 and response.headers["content-type"] == "image/jpeg"
    assert response.content == index.catalog.thumbnail(window.id)


def test_page_renders_results_and_errors(client):
    page = client.get("/")
    assert page.status_code == 200 and 'id="q"' in page.text
    assert f"{len(COLOURS)} videos" in page.text and "2 could not be read" in page.text
    page = client.get("/", params={"q": "<b>magenta</b>", "k": 6})
    assert page.status_code == 200
    assert "&lt;b&gt;magenta&lt;/b&gt;" in page.text and "<b>magenta</b>" not in page.text
    assert page.text.count('class="thumb"') == 6
    page = client.get("/", params={"q": "magenta", "k": 6})
    assert page.text.index("magenta.mp4") < page.text.index("red.mp4")
    bad = client.get("/", params={"q": "", "k": 6})
    assert bad.status_code == 400 and "the query is empty" in bad.text


def test_like_and_status(client, served_index):
    index, paths = served_index
    video = index.catalog.video_by_path(str(paths["orange"].resolve()))
    body = client.get(f"/api/like/{video.id}", params={"k": 2}).json()
    assert len(body["results"]) == 2
    assert all(r["video_id"] != video.id for r in body["results"])
    assert client.get("/api/like/424242").status_code == 404
    status = client.get("/api/status").json()
    assert status["counts"]["failed"] == 2
    assert status["fingerprint"] == index.library.settings.fingerprint
