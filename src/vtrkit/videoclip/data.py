"""VideoCLIP inputs: text tokenizer, narrated videos over stored features, and pair batches.

Shapes: P pairs in a batch, Nv ≤ ``max_video_tokens`` video slots, d_in feature width,
Lt = ``max_text_tokens`` + 2 text slots ([CLS] ... [SEP]).

Tokenizer. With a local Hugging Face encoder (``model.videoclip.text_encoder``) its own tokenizer is
loaded from the same folder (or ``model.videoclip.tokenizer``). Without one (the synthetic set,
tests) there is no pretrained vocabulary, so a word-level vocabulary is built from the *training*
captions with the ``tokenizers`` library (BERT normaliser and pre-tokeniser, lower-cased; special
tokens ``[PAD]=0, [UNK], [CLS], [SEP], [MASK]``) and saved as ``<run>/tokenizer/`` in the standard
Hugging Face layout, so evaluation reloads exactly the same ids with ``AutoTokenizer``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from transformers import AutoTokenizer, PreTrainedTokenizerBase, PreTrainedTokenizerFast

from vtrkit.data.records import VideoRecord
from vtrkit.videoclip.features import FeatureEntry, load_features, read_index
from vtrkit.videoclip.sampler import ClipPair, SamplerSettings, sample_pairs

log = logging.getLogger(__name__)

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")


class TextTokenizer:
    """A Hugging Face tokenizer plus VideoCLIP's framing ``[CLS] tokens [SEP]``, padded with
    ``pad_id`` on the right."""

    def __init__(self, hf: PreTrainedTokenizerBase) -> None:
        missing = [
            name
            for name in ("cls_token_id", "sep_token_id", "pad_token_id")
            if getattr(hf, name) is None
        ]
        if missing:
            raise ValueError(
                f"tokenizer {getattr(hf, 'name_or_path', hf)!r} lacks {missing}; VideoCLIP needs "
                "BERT-style [CLS]/[SEP]/[PAD] tokens"
            )
        self.hf = hf
        self.cls_id = int(hf.cls_token_id)
        self.sep_id = int(hf.sep_token_id)
        self.pad_id = int(hf.pad_token_id)

    @property
    def vocab_size(self) -> int:
        return len(self.hf)

    def token_ids(self, text: str) -> list[int]:
        """Ids of ``text`` without special tokens."""
        return list(self.hf(text, add_special_tokens=False)["input_ids"])

    def frame(self, token_ids: Sequence[int], max_tokens: int) -> list[int]:
        """``[CLS] + token_ids[:max_tokens] + [SEP]``."""
        return [self.cls_id, *token_ids[:max_tokens], self.sep_id]

    def __call__(self, texts: list[str], max_words: int) -> tuple[Tensor, Tensor]:
        """Texts → (ids [T, max_words] long, mask [T, max_words] bool); ``max_words`` counts
        [CLS] and [SEP], as the backbone tokenizers do."""
        if max_words < 3:
            raise ValueError(
                f"max_words must be >= 3 to hold [CLS], a token and [SEP], got {max_words}"
            )
        rows = [self.frame(self.token_ids(t), max_words - 2) for t in texts]
        return pad_token_lists(rows, self.pad_id, width=max_words)

    def save(self, folder: Path) -> Path:
        folder = Path(folder)
        self.hf.save_pretrained(folder)
        return folder


def pad_token_lists(
    rows: Sequence[Sequence[int]], pad_id: int, width: int | None = None
) -> tuple[Tensor, Tensor]:
    """Right-pad id lists to ``width`` (default: the longest) → (ids [T, L] long, mask [T, L])."""
    width = max(len(r) for r in rows) if width is None else width
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.bool)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = torch.as_tensor(row, dtype=torch.long)
        mask[i, : len(row)] = True
    return ids, mask


def load_tokenizer(folder: Path) -> TextTokenizer:
    """A saved Hugging Face tokenizer folder (local only)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"tokenizer folder {folder} does not exist")
    return TextTokenizer(AutoTokenizer.from_pretrained(folder, local_files_only=True))


def build_word_tokenizer(captions: Iterable[str], min_frequency: int = 1) -> TextTokenizer:
    """A word-level tokenizer whose vocabulary is every word of ``captions`` (see module doc)."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers

    tok = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    trainer = trainers.WordLevelTrainer(
        special_tokens=list(SPECIAL_TOKENS), min_frequency=min_frequency
    )
    tok.train_from_iterator(list(captions), trainer)
    hf = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="[PAD]",
        unk_token="[UNK]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
    )
    return TextTokenizer(hf)


@dataclass
class NarratedVideo:
    """A video's stored features with its timed captions (time order).

    features: [n, d_in] float16 (memory-mapped); spans[i] = (start, end) seconds of caption i.
    """

    video_id: str
    features: np.ndarray
    spans: list[tuple[float, float]]
    texts: list[str]
    token_ids: list[list[int]]

    @property
    def seconds(self) -> int:
        return int(self.features.shape[0])

    @property
    def token_counts(self) -> list[int]:
        return [len(t) for t in self.token_ids]


def record_segments(record: VideoRecord, seconds: int) -> list[tuple[float, float, str]]:
    """Timed captions of ``record`` in time order, those starting after the features end dropped.

    A record without segments (a clip dataset) gets each caption spanning its window or, without
    one, the whole video.
    """
    if record.segments:
        segs = sorted((s.start, s.end, s.text) for s in record.segments)
    else:
        start, end = record.window if record.window is not None else (0.0, float(seconds))
        segs = [(float(start), float(end), c) for c in record.captions]
    return [s for s in segs if s[0] < seconds]


def load_narrated_videos(
    records: Sequence[VideoRecord],
    features_root: Path,
    tokenizer: TextTokenizer,
    d_in: int | None = None,
) -> list[NarratedVideo]:
    """Join records with their stored features; videos without features or captions are skipped
    (and counted in the log). ``d_in`` checks the stored feature width."""
    index = read_index(features_root)
    videos: list[NarratedVideo] = []
    missing = empty = 0
    for record in records:
        entry: FeatureEntry | None = index.get(record.video_id)
        if entry is None or not entry.ok:
            missing += 1
            continue
        if d_in is not None and entry.dim != d_in:
            raise ValueError(
                f"{Path(features_root) / 'index.json'}: {record.video_id!r} has {entry.dim}-d "
                f"features but model.videoclip.d_in is {d_in}; set model.videoclip.d_in={entry.dim}"
            )
        feats = load_features(features_root, record.video_id, entry)
        segs = record_segments(record, entry.seconds)
        if not segs:
            empty += 1
            continue
        videos.append(
            NarratedVideo(
                video_id=record.video_id,
                features=feats,
                spans=[(s, e) for s, e, _ in segs],
                texts=[t for _, _, t in segs],
                token_ids=[tokenizer.token_ids(t) for _, _, t in segs],
            )
        )
    if missing or empty:
        log.warning(
            "%s: %d of %d videos have no features, %d have no caption inside their features",
            features_root,
            missing,
            len(records),
            empty,
        )
    if not videos:
        raise ValueError(
            f"no video of the {len(records)} records has both features in {features_root} and "
            "captions; check that the feature index's ids match the dataset's video ids"
        )
    return videos


def feature_statistics(videos: Sequence[NarratedVideo]) -> tuple[Tensor, Tensor]:
    """Per-dimension mean and standard deviation [d_in] over every second of ``videos``."""
    total = count = squares = None
    for video in videos:
        x = np.asarray(video.features, dtype=np.float64)
        total = x.sum(0) if total is None else total + x.sum(0)
        squares = (x**2).sum(0) if squares is None else squares + (x**2).sum(0)
        count = len(x) if count is None else count + len(x)
    if total is None or squares is None or not count:
        raise ValueError("feature_statistics: no video seconds to measure")
    mean = total / count
    std = np.sqrt(np.maximum(squares / count - mean**2, 0.0))
    return torch.from_numpy(mean).float(), torch.from_numpy(std).float()


def pad_clips(clips: Sequence[np.ndarray], max_tokens: int) -> tuple[Tensor, Tensor]:
    """Per-second feature clips (each [n_i, d_in], n_i ≤ max_tokens) → (feats [P, N, d_in]
    float32, mask [P, N] bool) with N the longest clip."""
    lengths = [len(c) for c in clips]
    if min(lengths) < 1 or max(lengths) > max_tokens:
        raise ValueError(
            f"clip lengths must be in 1..{max_tokens}, got {min(lengths)}..{max(lengths)}"
        )
    width = max(lengths)
    feats = torch.zeros((len(clips), width, clips[0].shape[1]), dtype=torch.float32)
    mask = torch.zeros((len(clips), width), dtype=torch.bool)
    for i, clip in enumerate(clips):
        feats[i, : len(clip)] = torch.from_numpy(np.asarray(clip, dtype=np.float32))
        mask[i, : len(clip)] = True
    return feats, mask


class PairBatcher:
    """Turns a group of videos into a training batch of overlapping (video clip, text) pairs."""

    def __init__(
        self,
        videos: Sequence[NarratedVideo],
        tokenizer: TextTokenizer,
        settings: SamplerSettings,
        pairs_per_video: int = 16,
        max_text_tokens: int = 61,
    ) -> None:
        self.videos = list(videos)
        self.tokenizer = tokenizer
        self.settings = settings
        self.pairs_per_video = pairs_per_video
        self.max_text_tokens = max_text_tokens

    def sample(
        self, video_indices: Sequence[int], rng: np.random.Generator
    ) -> list[tuple[int, ClipPair]]:
        """``pairs_per_video`` pairs for each listed video, as (video index, pair)."""
        out: list[tuple[int, ClipPair]] = []
        for v in video_indices:
            video = self.videos[int(v)]
            pairs = sample_pairs(
                video.spans,
                video.token_counts,
                video.seconds,
                self.pairs_per_video,
                rng,
                self.settings,
            )
            out.extend((int(v), p) for p in pairs)
        return out

    def collate(self, pairs: Sequence[tuple[int, ClipPair]]) -> dict[str, Tensor]:
        """Pairs → ``video_feats`` [P, Nv, d_in], ``video_mask`` [P, Nv], ``input_ids`` [P, Lt],
        ``text_mask`` [P, Lt], ``video_index`` [P]."""
        clips, texts = [], []
        for v, pair in pairs:
            video = self.videos[v]
            clips.append(video.features[pair.video_start : pair.video_end])
            ids = [
                i for k in range(pair.text_first, pair.text_last + 1) for i in video.token_ids[k]
            ]
            texts.append(self.tokenizer.frame(ids, self.max_text_tokens))
        feats, vmask = pad_clips(clips, self.settings.max_video_seconds)
        input_ids, tmask = pad_token_lists(texts, self.tokenizer.pad_id)
        return {
            "video_feats": feats,
            "video_mask": vmask,
            "input_ids": input_ids,
            "text_mask": tmask,
            "video_index": torch.tensor([v for v, _ in pairs], dtype=torch.long),
        }

    def batch(self, video_indices: Sequence[int], rng: np.random.Generator) -> dict[str, Tensor]:
        return self.collate(self.sample(video_indices, rng))
