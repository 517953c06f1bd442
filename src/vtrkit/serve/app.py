"""The search server: a page with a search box, one result per video and a player, and a JSON API.

Routes: ``/`` (the page; ``?q=`` renders results), ``/api/search?q=&k=&rerank=`` (JSON),
``/api/like/{video_id}?k=`` (videos like a catalogued one), ``/api/status``,
``/media/{video_id}`` (the video file, with range requests for seeking),
``/thumb/{video_id}/{window_id}.jpg`` (a readable thumbnail, see :mod:`vtrkit.serve.media`) and
``/thumb/{window_id}.jpg`` (the small one stored in the catalog). Media are looked up by catalog
id only: no route takes a path, so nothing outside the catalog can be served, and an id too large
for the catalog is a 404. Bad input gets a 4xx with a message saying what is wrong; on the page a
bad ``k`` or an empty query gets a friendly line instead.

Results are grouped by video (:meth:`~vtrkit.index.VideoIndex.search_videos`) and re-ranked by
default when the model has a fine-grained head. Concurrent searches run together in passes (one
text-tower call and one re-ranking call for all) and repeated queries come from a cache
(:class:`~vtrkit.serve.batching.SearchBatcher`).
"""

from __future__ import annotations

import logging
import mimetypes
import time
from pathlib import Path
from typing import Any

from fastapi import FastAPI, HTTPException, Query, Request, Response
from fastapi.responses import FileResponse, HTMLResponse
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates

from vtrkit.index import Moment, VideoHit, VideoIndex
from vtrkit.index.results import describe_scores, format_time
from vtrkit.index.storage.catalog import VideoRow
from vtrkit.serve.batching import SearchBatcher, query_text_encoder
from vtrkit.serve.media import ThumbnailCache, valid_id

log = logging.getLogger(__name__)

HERE = Path(__file__).parent
MAX_QUERY_CHARS = 300
MAX_K = 100
MAX_RERANK = 1000
PAGE_K = (6, 12, 24, 48)
DEFAULT_PAGE_K = 12
EXAMPLE = "a red circle moves left, then a blue square appears"


def _check_query(q: str | None) -> str:
    if q is None or not q.strip():
        raise HTTPException(400, "the query is empty: give some words to search for (?q=...)")
    q = q.strip()
    if len(q) > MAX_QUERY_CHARS:
        raise HTTPException(
            400, f"the query has {len(q)} characters; at most {MAX_QUERY_CHARS} are accepted"
        )
    return q


def _check_k(k: int, rerank: int | None) -> None:
    if not 1 <= k <= MAX_K:
        raise HTTPException(400, f"k must be between 1 and {MAX_K}, got {k}")
    if rerank is not None and not 0 <= rerank <= MAX_RERANK:
        raise HTTPException(400, f"rerank must be between 0 and {MAX_RERANK}, got {rerank}")


def _page_number(
    text: str | None, default: int | None, low: int, high: int, what: str
) -> tuple[int | None, str | None]:
    """A number typed into the page's URL: (value, None), or (default, a friendly notice)."""
    if text is None or text.strip() == "":
        return default, None
    try:
        value = int(text)
    except ValueError:
        value = None
    if value is None or not low <= value <= high:
        shown = "the default" if default is None else str(default)
        return default, (
            f"{what} must be a whole number from {low} to {high}, not “{text[:20]}”; "
            f"showing {shown} instead"
        )
    return value, None


def _moment_json(video_id: int, m: Moment | VideoHit) -> dict[str, Any]:
    return {
        "start": m.start,
        "end": m.end,
        "score": m.score,
        "window_id": m.window_id,
        "label": f"{format_time(m.start)}–{format_time(m.end)}",
        "thumb": f"/thumb/{video_id}/{m.window_id}.jpg",
        "media": f"/media/{video_id}#t={m.start:.2f},{m.end:.2f}",
    }


def _hit_json(hit: VideoHit, duration: float | None) -> dict[str, Any]:
    data = hit.to_dict()
    data.update(_moment_json(hit.video_id, hit))
    data["name"] = hit.path.name
    data["duration"] = duration
    data["duration_label"] = format_time(duration) if duration else ""
    data["moments"] = [_moment_json(hit.video_id, m) for m in hit.moments]
    return data


class _Service:
    """What the routes share: the index, its catalog, the search batcher and thumbnails."""

    def __init__(self, index: VideoIndex, rerank: int, batcher: SearchBatcher, precision: str):
        self.index = index
        self.catalog = index.catalog
        self.rerank = rerank
        self.batcher = batcher
        self.precision = precision
        self.thumbs = ThumbnailCache(index.catalog)

    def search(self, q: str, k: int, rerank: int | None) -> tuple[dict[str, Any], float]:
        started = time.perf_counter()
        used = self.rerank if rerank is None else rerank
        hits = self.batcher.search(q, k=k, rerank=used)
        results = [self.hit_json(h) for h in hits]
        took = (time.perf_counter() - started) * 1000
        return {"results": results, "scored_by": "head" if used else "cosine", "rerank": used}, took

    def hit_json(self, hit: VideoHit) -> dict[str, Any]:
        video = self.catalog.video(hit.video_id)
        return _hit_json(hit, None if video is None else video.duration)

    def indexed_video(self, video_id: int) -> VideoRow:
        video = self.catalog.video(video_id) if valid_id(video_id) else None
        if video is None or video.status == "failed":
            raise HTTPException(404, f"no indexed video with id {video_id}")
        return video

    def status(self) -> dict[str, Any]:
        settings = self.index.library.settings
        return {
            "counts": self.catalog.counts(),
            "fingerprint": settings.fingerprint,
            "window_length": settings.window_length,
            "window_stride": settings.window_stride,
            "default_rerank": self.rerank,
            "query_precision": self.precision,
            "batching": self.batcher.stats(),
        }


def create_app(
    index: VideoIndex,
    default_rerank: int | None = None,
    batcher: SearchBatcher | None = None,
    query_precision: str = "fp32",
    max_batch: int = 64,
) -> FastAPI:
    """A FastAPI app serving ``index``. ``default_rerank`` re-ranks that many candidates when a
    request does not say (None: the index's default, see ``VideoIndex.default_rerank``);
    ``batcher`` runs the searches (default: a :class:`SearchBatcher` over the index, encoding
    queries in ``query_precision`` (see :func:`~vtrkit.serve.batching.query_text_encoder`), at
    most ``max_batch`` per pass)."""
    app = FastAPI(title="vtrkit search", docs_url=None, redoc_url=None)
    app.mount("/static", StaticFiles(directory=str(HERE / "static")), name="static")
    rerank = index.default_rerank if default_rerank is None else default_rerank
    encode = query_text_encoder(index.encoder, query_precision)
    batcher = batcher or SearchBatcher(index, encode, max_batch=max_batch)
    service = _Service(index, rerank, batcher, query_precision)
    app.state.batcher = batcher
    _page_route(app, service)
    _api_routes(app, service)
    _media_routes(app, service)
    return app


def _page_route(app: FastAPI, service: _Service) -> None:
    templates = Jinja2Templates(directory=str(HERE / "templates"))

    @app.get("/", response_class=HTMLResponse)
    def page(
        request: Request, q: str | None = None, k: str | None = None, rerank: str | None = None
    ) -> HTMLResponse:
        k_value, k_notice = _page_number(k, DEFAULT_PAGE_K, 1, MAX_K, "The number of results")
        r_value, r_notice = _page_number(rerank, None, 0, MAX_RERANK, "rerank")
        assert k_value is not None
        context: dict[str, Any] = {
            "q": (q or "").strip(),
            "k": k_value,
            "k_choices": sorted({*PAGE_K, k_value}),
            "results": None,
            "error": None,
            "hint": None,
            "notices": [n for n in (k_notice, r_notice) if n],
            "counts": service.catalog.counts(),
            "example": EXAMPLE,
        }
        status = 200
        if q is not None and not q.strip():
            context["hint"] = (
                f"Type what happens in the video you are looking for, e.g. “{EXAMPLE}”."
            )
        elif q is not None:
            try:
                found, context["took_ms"] = service.search(_check_query(q), k_value, r_value)
                context.update(found)
                context["scores"] = describe_scores(found["scored_by"], found["rerank"])
            except HTTPException as exc:
                context["error"], status = exc.detail, exc.status_code
        return templates.TemplateResponse(request, "index.html", context, status_code=status)


def _api_routes(app: FastAPI, service: _Service) -> None:
    @app.get("/api/search")
    def api_search(
        q: str | None = None, k: int = Query(10), rerank: int | None = Query(None)
    ) -> dict[str, Any]:
        query = _check_query(q)
        _check_k(k, rerank)
        found, took = service.search(query, k, rerank)
        return {"query": query, "k": k, **found, "took_ms": round(took, 2)}

    @app.get("/api/like/{video_id}")
    def api_like(video_id: int, k: int = Query(10)) -> dict[str, Any]:
        _check_k(k, None)
        video = service.indexed_video(video_id)
        hits = service.index.search_videos_like(video.path, k=k)
        results = [service.hit_json(h) for h in hits]
        return {"video_id": video_id, "k": k, "results": results, "scored_by": "cosine"}

    @app.get("/api/status")
    def api_status() -> dict[str, Any]:
        return service.status()


def _media_routes(app: FastAPI, service: _Service) -> None:
    jpeg_headers = {"Cache-Control": "max-age=3600"}

    @app.get("/media/{video_id}")
    def media(video_id: int) -> FileResponse:
        video = service.indexed_video(video_id)
        path = Path(video.path)
        if not path.is_file():
            raise HTTPException(410, f"video {video_id} is in the index but its file is gone")
        media_type = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        return FileResponse(
            path, media_type=media_type, filename=path.name, content_disposition_type="inline"
        )

    @app.get("/thumb/{video_id}/{window_id}.jpg")
    def readable_thumb(video_id: int, window_id: int) -> Response:
        jpeg = None
        if valid_id(video_id) and valid_id(window_id):
            jpeg = service.thumbs.get(video_id, window_id)
        if jpeg is None:
            raise HTTPException(404, f"no window {window_id} in video {video_id}")
        return Response(jpeg, media_type="image/jpeg", headers=jpeg_headers)

    @app.get("/thumb/{window_id}.jpg")
    def thumb(window_id: int) -> Response:
        jpeg = service.catalog.thumbnail(window_id) if valid_id(window_id) else None
        if jpeg is None:
            raise HTTPException(404, f"no thumbnail for window {window_id}")
        return Response(jpeg, media_type="image/jpeg", headers=jpeg_headers)


def serve(
    index: VideoIndex,
    host: str = "127.0.0.1",
    port: int = 8000,
    default_rerank: int | None = None,
    query_precision: str = "fp32",
    max_batch: int = 64,
) -> None:
    """Run the server until interrupted (binds to localhost unless ``host`` says otherwise)."""
    import uvicorn

    if host not in ("127.0.0.1", "localhost", "::1"):
        log.warning("serving on %s: anyone who can reach this address can search and watch", host)
    app = create_app(index, default_rerank, query_precision=query_precision, max_batch=max_batch)
    uvicorn.run(app, host=host, port=port, log_level="warning")
