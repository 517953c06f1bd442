"""The search server: a page with a search box and result thumbnails, and a JSON API.

Routes: ``/`` (the page; ``?q=`` renders results), ``/api/search?q=&k=&rerank=`` (JSON),
``/api/like/{video_id}?k=`` (videos like a catalogued one), ``/api/status``,
``/media/{video_id}`` (the video file, with range requests for seeking) and
``/thumb/{window_id}.jpg``. Media are looked up by catalog id only: no route takes a path, so nothing
outside the catalog can be served. Bad input gets a 4xx with a message saying what is wrong.
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

from vtrkit.index.search import SearchResult, VideoIndex

log = logging.getLogger(__name__)

HERE = Path(__file__).parent
MAX_QUERY_CHARS = 300
MAX_K = 100
MAX_RERANK = 1000


def _check_query(q: str | None) -> str:
    if q is None or not q.strip():
        raise HTTPException(400, "the query is empty: pass some words as ?q=")
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


def _format_time(seconds: float) -> str:
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def _result_json(r: SearchResult) -> dict[str, Any]:
    data = r.to_dict()
    data["name"] = r.path.name
    data["thumb"] = f"/thumb/{r.window_id}.jpg"
    data["media"] = f"/media/{r.video_id}#t={r.start:.2f},{r.end:.2f}"
    data["label"] = f"{_format_time(r.start)}–{_format_time(r.end)}"
    return data


def create_app(index: VideoIndex, default_rerank: int | None = None) -> FastAPI:
    """A FastAPI app serving ``index``. ``default_rerank`` re-ranks that many candidates when a
    request does not say (None: ANN order only)."""
    app = FastAPI(title="vtrkit search", docs_url=None, redoc_url=None)
    templates = Jinja2Templates(directory=str(HERE / "templates"))
    app.mount("/static", StaticFiles(directory=str(HERE / "static")), name="static")
    catalog = index.catalog

    def run_search(q: str, k: int, rerank: int | None) -> tuple[list[dict[str, Any]], float]:
        rerank = default_rerank if rerank is None else rerank
        started = time.perf_counter()
        results = index.search(q, k=k, rerank=rerank or None)
        return [_result_json(r) for r in results], (time.perf_counter() - started) * 1000

    @app.get("/", response_class=HTMLResponse)
    def page(
        request: Request, q: str | None = None, k: int = Query(12), rerank: int | None = None
    ) -> HTMLResponse:
        context: dict[str, Any] = {"q": q or "", "k": k, "results": None, "error": None}
        context["counts"] = catalog.counts()
        status = 200
        if q is not None:
            try:
                query = _check_query(q)
                _check_k(k, rerank)
                context["results"], context["took_ms"] = run_search(query, k, rerank)
            except HTTPException as exc:
                context["error"], status = exc.detail, exc.status_code
        return templates.TemplateResponse(request, "index.html", context, status_code=status)

    @app.get("/api/search")
    def api_search(
        q: str | None = None, k: int = Query(10), rerank: int | None = Query(None)
    ) -> dict[str, Any]:
        query = _check_query(q)
        _check_k(k, rerank)
        results, took = run_search(query, k, rerank)
        return {"query": query, "k": k, "results": results, "took_ms": round(took, 2)}

    @app.get("/api/like/{video_id}")
    def api_like(video_id: int, k: int = Query(10)) -> dict[str, Any]:
        _check_k(k, None)
        video = catalog.video(video_id)
        if video is None or video.status != "ok":
            raise HTTPException(404, f"no indexed video with id {video_id}")
        results = index.search_like(video.path, k=k)
        return {"video_id": video_id, "k": k, "results": [_result_json(r) for r in results]}

    @app.get("/api/status")
    def api_status() -> dict[str, Any]:
        settings = index.library.settings
        return {
            "counts": catalog.counts(),
            "fingerprint": settings.fingerprint,
            "window_length": settings.window_length,
            "window_stride": settings.window_stride,
        }

    @app.get("/media/{video_id}")
    def media(video_id: int) -> FileResponse:
        video = catalog.video(video_id)
        if video is None or video.status != "ok":
            raise HTTPException(404, f"no indexed video with id {video_id}")
        path = Path(video.path)
        if not path.is_file():
            raise HTTPException(410, f"video {video_id} is in the index but its file is gone")
        media_type = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        return FileResponse(
            path, media_type=media_type, filename=path.name, content_disposition_type="inline"
        )

    @app.get("/thumb/{window_id}.jpg")
    def thumb(window_id: int) -> Response:
        jpeg = catalog.thumbnail(window_id)
        if jpeg is None:
            raise HTTPException(404, f"no thumbnail for window {window_id}")
        return Response(jpeg, media_type="image/jpeg", headers={"Cache-Control": "max-age=3600"})

    return app


def serve(
    index: VideoIndex,
    host: str = "127.0.0.1",
    port: int = 8000,
    default_rerank: int | None = None,
) -> None:
    """Run the server until interrupted (binds to localhost unless ``host`` says otherwise)."""
    import uvicorn

    if host not in ("127.0.0.1", "localhost", "::1"):
        log.warning("serving on %s: anyone who can reach this address can search and watch", host)
    uvicorn.run(create_app(index, default_rerank), host=host, port=port, log_level="info")
