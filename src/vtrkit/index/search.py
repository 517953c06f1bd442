"""Searching an index: text→video, video→video and video→text, with exact re-ranking.

Text search takes the ANN's top candidates on pooled features, then (``rerank=K``) re-scores the
top K with the model's own head on the stored per-frame features (X-CLIP's multi-grained score,
CLIP2TV's matching head), so fine-grained accuracy costs K head evaluations, not the collection
size.

:meth:`VideoIndex.search_videos` is what the CLI and the server use: one :class:`VideoHit` per
video (its best window, with the video's other matching windows as ``moments``), re-ranked by
default (:data:`DEFAULT_RERANK` candidates) when the model has a fine-grained head. Scores are
cosines of pooled features (``scored_by="cosine"``, in [-1, 1]) or the head's scores
(``scored_by="head"``: X-CLIP's and CLIP4Clip's include the logit scale λ, so they run to about
λ = 100). :meth:`VideoIndex.search` is the window-level search underneath: every window is its
own result and nothing is re-ranked unless asked.

Example::

    from vtrkit.index import VideoIndex, load_model_for_index
    index = VideoIndex.build("videos/", "lib.vtr", load_model_for_index("runs/demo"))
    for hit in index.search_videos("a red circle moves left", k=5):
        print(hit.rank, f"{hit.score:.3f}", hit.path, hit.start, hit.end, len(hit.moments))
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
from torch.nn import functional as F

from vtrkit.index.build.discovery import discover, is_utf8, plan_build, record_build
from vtrkit.index.build.incremental import BuildReport, IndexUpdater, build_index
from vtrkit.index.build.window_decoding import decode_windows
from vtrkit.index.results import (
    CaptionMatch,
    SearchResult,
    VideoHit,
    check_k,
    check_query,
    check_rerank,
    group_by_video,
    has_fine_grained_head,
)
from vtrkit.index.storage.added import record_added
from vtrkit.index.storage.ann import AnnConfig
from vtrkit.index.storage.catalog import Catalog
from vtrkit.index.storage.compaction import CompactReport, compact_library
from vtrkit.index.storage.feature_store import StoreError
from vtrkit.index.storage.library import Library, check_encoder
from vtrkit.index.storage.skipped import Skipped, record_skipped
from vtrkit.inference import Encoder, encoder_from_source
from vtrkit.models.base import TextFeatures, VideoFeatures

log = logging.getLogger(__name__)

DEFAULT_RERANK = 100
"""Candidate windows re-ranked by default when the model has a fine-grained head (measured about
5 ms for X-CLIP's head on 100 candidates)."""
_ATTEMPTS = 5
T = TypeVar("T")


class VideoIndex:
    """An opened index folder plus the encoder it was built with.

    Use :meth:`open` (or :meth:`build`) rather than the constructor. Methods are safe to call from
    several threads (a lock serialises them).
    """

    def __init__(self, library: Library, encoder: Encoder, ann_config: AnnConfig = AnnConfig()):
        check_encoder(library.settings, encoder, library.folder)
        self.library = library
        self.encoder = encoder
        self.ann_config = ann_config
        self.last_report: BuildReport | None = None
        self.last_skipped: list[Skipped] = []
        """Names the last build or add skipped before decoding (see ``skipped.json``)."""
        self._lock = threading.RLock()

    @classmethod
    def open(
        cls,
        path: str | Path,
        encoder: Encoder | None = None,
        writable: bool = False,
        device: str | torch.device = "cpu",
        ann_config: AnnConfig = AnnConfig(),
    ) -> VideoIndex:
        """Open the index at ``path``. Without ``encoder`` the model is rebuilt from the
        checkpoint or backbone recorded at build time; either way its fingerprint must match the
        index's (:class:`IndexMismatchError` names both otherwise)."""
        library = Library.open(path, writable=writable)
        try:
            if encoder is None:
                encoder = encoder_from_source(library.settings.source, device=device)
            return cls(library, encoder, ann_config)
        except BaseException:
            library.close()
            raise

    @classmethod
    def build(
        cls,
        videos: str | Path | Sequence[str | Path],
        out: str | Path,
        encoder: Encoder,
        progress: bool = False,
        prune: bool = False,
        **options: Any,
    ) -> VideoIndex:
        """Build (or update) the index at ``out`` from ``videos`` and open it; the build's
        :class:`BuildReport` is in ``last_report`` and the skipped names in ``last_skipped``.

        The index mirrors ``videos`` plus the files added with :meth:`add` that still exist
        (``prune=True`` drops those too). ``options`` go to :func:`build_index`."""
        plan = plan_build(videos, out, prune)
        report = build_index(plan.paths, out, encoder, progress=progress, **options)
        record_build(out, plan, report.removed)
        index = cls.open(out, encoder, writable=True)
        index.last_report, index.last_skipped = report, plan.skipped
        return index

    def close(self) -> None:
        self.library.close()

    def __enter__(self) -> VideoIndex:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def catalog(self) -> Catalog:
        """The index's catalog (videos, windows, thumbnails)."""
        return self.library.catalog

    def add(self, paths: str | Path | Sequence[str | Path], progress: bool = False) -> BuildReport:
        """Index new or changed videos (files, folders or list files); others are left alone.
        Names skipped before decoding are recorded (``skipped.json``) and in ``last_skipped``;
        a later build keeps the files added here (see :meth:`build`)."""
        with self._lock:
            found = discover(paths)
            updater = IndexUpdater(
                self.library, self.encoder, ann_config=self.ann_config, progress=progress
            )
            report = updater.update(found.videos, remove_missing=False)
            indexed = report.added + report.updated
            record_skipped(self.library.folder, found.skipped, replace=False, indexed=indexed)
            record_added(self.library.folder, [str(p) for p in found.videos])
            self.last_report, self.last_skipped = report, found.skipped
            return report

    def compact(self, progress: bool = False) -> CompactReport:
        """Reclaim the feature rows of removed and re-encoded videos (see
        :mod:`vtrkit.index.storage.compaction`); needs an index opened with ``writable=True``."""
        with self._lock:
            return compact_library(self.library, self.ann_config, progress=progress)

    # -- text -> video ------------------------------------------------------------------------

    def search(
        self, text: str, k: int = 10, rerank: int | None = None, one_per_video: bool = False
    ) -> list[SearchResult]:
        """Top ``k`` windows for ``text`` (window level: see :meth:`search_videos` for one hit
        per video, re-ranked by default).

        ``rerank=K`` re-scores the ANN's top K with the model's head (K below k is raised to k, so
        all returned scores are on the head's scale); None or 0 keeps the ANN's cosine order.
        ``one_per_video`` keeps only the best window of each video.
        """
        text = check_query(text)
        check_k(k)
        check_rerank(rerank)
        if rerank:
            rerank = max(rerank, k)
        with self._lock:
            query = self.encoder.encode_texts([text])
            wanted = max(k, rerank or 0)

            def run() -> list[SearchResult]:
                rows, scores = self._nearest(query.sentence[0].numpy(), wanted, one_per_video)
                if rerank:
                    top = rows[:rerank]
                    head = self.encoder.rerank_scores(query, self._video_features(top))[0]
                    head = head.double().numpy()
                    order = np.argsort(-head, kind="stable")
                    rows = np.concatenate([top[order], rows[rerank:]])
                    scores = np.concatenate([head[order], scores[rerank:]])
                return self._results(rows, scores, k, one_per_video)

            return self._consistent(run)

    @property
    def default_rerank(self) -> int:
        """Candidates :meth:`search_videos` re-ranks when not told: :data:`DEFAULT_RERANK` when
        the model has a fine-grained head (:func:`has_fine_grained_head`), else 0."""
        return DEFAULT_RERANK if has_fine_grained_head(self.encoder) else 0

    def encode_query(self, texts: Sequence[str]) -> TextFeatures:
        """Encode query texts (checked as :meth:`search_videos` checks them) in one batch: T rows
        to pass one at a time as ``search_videos(..., query=features.slice(i, i + 1))``."""
        return self.encoder.encode_texts([check_query(t) for t in texts])

    def search_videos(
        self,
        text: str,
        k: int = 10,
        rerank: int | None = None,
        *,
        query: TextFeatures | None = None,
    ) -> list[VideoHit]:
        """The ``k`` best videos for ``text``, one :class:`VideoHit` each: its best window and
        up to :data:`MAX_MOMENTS` other matching windows.

        ``rerank=K`` re-scores at least the ANN's top K windows with the model's head, and every
        window the returned hits are made of, so all their scores are on one scale; None means
        :attr:`default_rerank`, 0 the cosine order. ``query`` is ``text`` already encoded (one
        row, e.g. from :meth:`encode_query`), so a server can encode many queries at once.
        """
        text = check_query(text)
        check_k(k)
        check_rerank(rerank)
        rerank = self.default_rerank if rerank is None else rerank
        if query is None:
            query = self.encoder.encode_texts([text])
        elif len(query) != 1:
            raise ValueError(f"query must hold one encoded text, got {len(query)}")
        with self._lock:
            return self._consistent(lambda: self._video_hits(query, k, rerank))

    def _video_hits(self, query: TextFeatures, k: int, rerank: int) -> list[VideoHit]:
        """Grow the candidate pool (ANN order) until it holds ``k`` videos or every window;
        re-rank all of it when ``rerank``, each window once."""
        vector = query.sentence[0].numpy()
        total = len(self.library.ann(self.ann_config))
        want = max(rerank, 4 * k)
        head: dict[int, float] = {}
        while True:
            rows, scores = self._nearest(vector, want, one_per_video=False)
            if rerank:
                new = np.asarray([r for r in rows.tolist() if r not in head], dtype=np.int64)
                if len(new):
                    got = self.encoder.rerank_scores(query, self._video_features(new))[0]
                    head.update(zip(new.tolist(), got.double().tolist(), strict=True))
                scores = np.asarray([head[r] for r in rows.tolist()], dtype=np.float64)
                order = np.argsort(-scores, kind="stable")
                rows, scores = rows[order], scores[order]
            windows = self._results(rows, scores, len(rows), one_per_video=False)
            hits = group_by_video(windows, k, "head" if rerank else "cosine")
            if len(hits) >= k or want >= total:
                return hits
            want *= 2

    def search_videos_many(
        self,
        texts: Sequence[str],
        k: int = 10,
        rerank: int | None = None,
        *,
        queries: TextFeatures | None = None,
    ) -> list[list[VideoHit]]:
        """:meth:`search_videos` for T texts at once, the same hits (scores to float rounding):
        one ANN search for all, and one head call scoring every text against the union of their
        candidates, which costs far less than T calls when the candidates overlap (a server's
        concurrent queries). ``queries``: the T texts already encoded."""
        texts = [check_query(t) for t in texts]
        check_k(k)
        check_rerank(rerank)
        rerank = self.default_rerank if rerank is None else rerank
        if queries is None:
            queries = self.encoder.encode_texts(texts) if texts else None
        elif len(queries) != len(texts):
            raise ValueError(f"{len(texts)} texts but {len(queries)} encoded queries")
        if queries is None:
            return []
        with self._lock:
            return self._consistent(lambda: self._video_hits_many(queries, k, rerank))

    def _video_hits_many(self, queries: TextFeatures, k: int, rerank: int) -> list[list[VideoHit]]:
        ann = self.library.ann(self.ann_config)
        total, want = len(ann), max(rerank, 4 * k)
        if total == 0:
            return [[] for _ in range(len(queries))]
        scores, rows = ann.search(queries.sentence.numpy(), min(total, want))
        pools = [
            (r[r >= 0].astype(np.int64), s[r >= 0].astype(np.float64))
            for r, s in zip(rows, scores, strict=True)
        ]
        if rerank:
            union = np.unique(np.concatenate([r for r, _ in pools]))
            head = self.encoder.rerank_scores(queries, self._video_features(union)).double()
            head = head.numpy()
            for i, (r, _) in enumerate(pools):
                got = head[i, np.searchsorted(union, r)]
                order = np.argsort(-got, kind="stable")
                pools[i] = (r[order], got[order])
        out = []
        for i, (r, s) in enumerate(pools):
            hits = group_by_video(
                self._results(r, s, len(r), False), k, "head" if rerank else "cosine"
            )
            if len(hits) < k and want < total:  # windows of a few videos crowd this pool
                hits = self._video_hits(queries.slice(i, i + 1), k, rerank)
            out.append(hits)
        return out

    # -- video -> video -----------------------------------------------------------------------

    def search_like(
        self, video_path: str | Path, k: int = 10, include_self: bool = False
    ) -> list[SearchResult]:
        """Windows most similar to the video at ``video_path`` (mean of its window features).

        A catalogued, unchanged video uses its stored features; any other file is decoded and
        encoded. Its own windows are left out unless ``include_self``.
        """
        check_k(k)
        with self._lock:

            def run() -> list[SearchResult]:
                features, own, _ = self._features_of(Path(video_path))
                query = F.normalize(features.video.float().mean(0), dim=0).numpy()
                skip = 0 if include_self else len(own)
                rows, scores = self._nearest(query, k + skip, one_per_video=False)
                if own and not include_self:
                    keep = ~np.isin(rows, np.asarray(own, dtype=np.int64))
                    rows, scores = rows[keep], scores[keep]
                return self._results(rows, scores, k, one_per_video=False)

            return self._consistent(run)

    def search_videos_like(
        self, video_path: str | Path, k: int = 10, include_self: bool = False
    ) -> list[VideoHit]:
        """:meth:`search_like` grouped by video: the ``k`` most similar videos, one hit each
        (scores are cosines)."""
        check_k(k)
        want = 4 * k
        while True:
            windows = self.search_like(video_path, k=want, include_self=include_self)
            hits = group_by_video(windows, k, "cosine")
            if len(hits) >= k or len(windows) < want:
                return hits
            want *= 2

    # -- video -> text ------------------------------------------------------------------------

    def search_video_to_text(
        self, video_path: str | Path, captions: Sequence[str]
    ) -> list[CaptionMatch]:
        """Rank ``captions`` for the video at ``video_path`` with the model's head; a caption's
        score is its best window's."""
        captions = [check_query(c) for c in captions]
        if not captions:
            raise ValueError("search_video_to_text needs at least one caption")
        with self._lock:
            video, _, spans = self._consistent(lambda: self._features_of(Path(video_path)))
            scores = self.encoder.rerank_scores(self.encoder.encode_texts(captions), video)
            best, where = scores.double().max(dim=1)
            order = torch.argsort(-best, stable=True).tolist()
            return [
                CaptionMatch(rank + 1, float(best[i]), captions[i], *spans[int(where[i])])
                for rank, i in enumerate(order)
            ]

    # -- internals ----------------------------------------------------------------------------

    def _consistent(self, read: Callable[[], T]) -> T:
        """Run ``read`` (which maps store rows to catalog windows) so that every row number it
        used belongs to one store: a compaction committing midway renumbers the rows, and then
        ``read`` runs again on the new store. Store folder names are never reused, so an
        unchanged, still active name means no compaction committed while ``read`` ran."""
        for _ in range(_ATTEMPTS):
            self.library.refresh()
            name = self.library.store_name
            try:
                result = read()
            except StoreError:
                # Rows of one numbering read from the other store can also fall out of range.
                if self.library.store_name == name and self.library.store_is_current():
                    raise
                continue
            if self.library.store_name == name and self.library.store_is_current():
                return result
            log.info("the index was compacted during a query; running it again")
        raise StoreError(f"{self.library.folder} kept being compacted during a query; try again")

    def _nearest(self, query: np.ndarray, n: int, one_per_video: bool) -> tuple[np.ndarray, ...]:
        """ANN rows and cosine scores for one query vector [D], best first, dead rows dropped."""
        ann = self.library.ann(self.ann_config)
        if len(ann) == 0:
            return np.zeros(0, np.int64), np.zeros(0, np.float64)
        # Several windows of one video can crowd the top: fetch extra when keeping one per video.
        fetch = min(len(ann), n * 4 if one_per_video else n)
        scores, rows = ann.search(query[None, :], fetch)
        keep = rows[0] >= 0
        return rows[0][keep].astype(np.int64), scores[0][keep].astype(np.float64)

    def _video_features(self, rows: np.ndarray) -> VideoFeatures:
        store = self.library.store
        return VideoFeatures(
            torch.from_numpy(store.pooled(rows).astype(np.float32)),
            torch.from_numpy(store.frames(rows).astype(np.float32)),
            torch.from_numpy(store.mask(rows)),
        )

    def _results(
        self, rows: np.ndarray, scores: np.ndarray, k: int, one_per_video: bool
    ) -> list[SearchResult]:
        catalog = self.library.catalog
        windows = catalog.windows_by_rows(rows.tolist())
        results: list[SearchResult] = []
        seen: set[int] = set()
        paths: dict[int, Path] = {}
        for row, score in zip(rows.tolist(), scores.tolist(), strict=True):
            window = windows.get(row)
            if window is None or (one_per_video and window.video_id in seen):
                continue
            seen.add(window.video_id)
            if window.video_id not in paths:
                video = catalog.video(window.video_id)
                if video is None:
                    continue
                paths[window.video_id] = Path(video.path)
            results.append(
                SearchResult(
                    rank=len(results) + 1,
                    score=float(score),
                    path=paths[window.video_id],
                    start=window.start,
                    end=window.end,
                    video_id=window.video_id,
                    window_id=window.id,
                )
            )
            if len(results) == k:
                break
        return results

    def _features_of(
        self, path: Path
    ) -> tuple[VideoFeatures, list[int], list[tuple[float, float]]]:
        """Features of a video's W windows, its own store rows (empty when not indexed) and the
        windows' (start, end) spans."""
        path = path.resolve()
        if not path.is_file():
            raise FileNotFoundError(f"video {path} does not exist")
        catalog = self.library.catalog
        # A name that is not valid UTF-8 cannot be in the catalog (nor looked up in it).
        known = catalog.video_by_path(str(path)) if is_utf8(path) else None
        st = path.stat()
        if (
            known
            and known.status == "ok"
            and (known.size, known.mtime_ns)
            == (
                st.st_size,
                st.st_mtime_ns,
            )
        ):
            windows = catalog.windows(known.id)
            rows = np.asarray([w.row for w in windows], dtype=np.int64)
            # Rows committed by an add since the store was opened; a compaction meanwhile is
            # caught by the caller (_consistent).
            self.library.refresh()
            spans = [(w.start, w.end) for w in windows]
            return self._video_features(rows), rows.tolist(), spans
        s = self.library.settings
        decoded = decode_windows(path, s.sampling, s.window_length, s.window_stride)
        features = self.encoder.encode_video_windows(decoded.frames, decoded.mask)
        return features, [], decoded.windows
