"""Text tokenizers producing CLIP-style fixed-width token tensors.

Every tokenizer here follows the ``Tokenizer`` protocol of docs/CONTRACTS.md: ``tok(texts,
max_words)`` returns ``ids`` [T, Nw] long and ``mask`` [T, Nw] bool laid out as
``start, tokens[: Nw - 2], end, 0, 0, ...``, so the end token sits at ``mask.sum(1) - 1``.

``ClipTokenizer`` is a from-scratch byte-level BPE over OpenAI CLIP's merge list (vendored in
``assets/`` with its licence notice); it reproduces the original ids, e.g. "a photo of a cat" ->
49406, 320, 1125, 539, 320, 2368, 49407. ``HFTokenizerAdapter`` wraps any tokenizer saved in a
local Hugging Face folder into the same protocol.

Text cleanup differs from OpenAI's in one documented way: OpenAI runs ``ftfy.fix_text`` (a mojibake
repairer, not a dependency here). We apply the parts of it that matter for captions - NFC
normalisation, curly quotes to straight, Latin ligatures and full-width forms to plain letters,
control characters removed - but do not repair mis-decoded UTF-8 ("cafÃ©"). Plain and correctly
encoded text, which is what datasets ship, gets identical ids.
"""

from __future__ import annotations

import gzip
import html
import logging
import re
import unicodedata
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import Protocol

import regex
import torch
from torch import Tensor

logger = logging.getLogger(__name__)

DEFAULT_VOCAB = "bpe_simple_vocab_16e6.txt.gz"
START_TOKEN = "<|startoftext|>"
END_TOKEN = "<|endoftext|>"
PAD_ID = 0
"""Padding id of the contract (CLIP4Clip pads with 0, which is also the id of "!")."""

# OpenAI's merge list has 49,152 lines; the first is a version header and the tokenizer uses the
# first 49152 - 256 - 2 merges so that bytes (256), end-of-word bytes (256), merges and the two
# special tokens add up to the 49,408 rows of CLIP's embedding table.
_NUM_MERGES = 49152 - 256 - 2
# Words are split with CLIP's pattern: special tokens, English contractions, letter runs, single
# digits, and runs of other non-space symbols. Unicode classes need the `regex` package.
_WORD_PATTERN = regex.compile(
    r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""",
    regex.IGNORECASE,
)
_WHITESPACE = re.compile(r"\s+")
_CACHE_LIMIT = 1 << 17
_QUOTES = str.maketrans(
    {
        "\u2018": "'",
        "\u2019": "'",
        "\u201a": "'",
        "\u201b": "'",
        "\u201c": '"',
        "\u201d": '"',
        "\u201e": '"',
        "\u201f": '"',
    }
)


class Tokenizer(Protocol):
    """Anything that turns texts into ``(ids [T, Nw] long, mask [T, Nw] bool)``."""

    def __call__(self, texts: Sequence[str], max_words: int) -> tuple[Tensor, Tensor]: ...


def byte_alphabet() -> list[str]:
    """The 256 printable stand-ins for bytes, indexed by byte value.

    Byte-level BPE needs a visible character for every byte; bytes that are already printable
    Latin-1 characters stand for themselves, the rest borrow code points from 256 upwards.
    """
    printable = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAC + 1), *range(0xAE, 0xFF + 1)]
    alphabet = [""] * 256
    for b in printable:
        alphabet[b] = chr(b)
    borrowed = 256
    for b in range(256):
        if not alphabet[b]:
            alphabet[b] = chr(borrowed)
            borrowed += 1
    return alphabet


def _vocab_byte_order() -> list[int]:
    """Byte values in the order CLIP's vocabulary lists them: printable ones first."""
    printable = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAC + 1), *range(0xAE, 0xFF + 1)]
    taken = set(printable)
    return printable + [b for b in range(256) if b not in taken]


def fix_text(text: str) -> str:
    """Repair typographic variants the way ``ftfy.fix_text`` would for well-encoded text."""
    text = unicodedata.normalize("NFC", text).translate(_QUOTES)
    out = []
    for ch in text:
        code = ord(ch)
        if 0xFB00 <= code <= 0xFB06 or 0xFF01 <= code <= 0xFF5E:
            # Ligatures (U+FB00-FB06) and full-width ASCII decompose to plain letters under NFKC.
            out.append(unicodedata.normalize("NFKC", ch))
        elif code == 0x3000:
            out.append(" ")
        elif unicodedata.category(ch) == "Cc" and ch not in "\t\n\r":
            continue
        else:
            out.append(ch)
    return "".join(out)


def clean_text(text: str) -> str:
    """CLIP's caption cleanup: fix text, unescape HTML twice, collapse whitespace, lowercase."""
    text = html.unescape(html.unescape(fix_text(text))).strip()
    return _WHITESPACE.sub(" ", text).strip().lower()


def pack_tokens(
    token_lists: Sequence[Sequence[int]], start_id: int, end_id: int, max_words: int
) -> tuple[Tensor, Tensor]:
    """Lay out token lists as ``start, tokens[: Nw - 2], end`` right-padded with 0.

    Returns ids [T, Nw] long and mask [T, Nw] bool (True at start, tokens and end).
    """
    if max_words < 2:
        raise ValueError(f"max_words must be at least 2 (start and end tokens), got {max_words}")
    ids = torch.full((len(token_lists), max_words), PAD_ID, dtype=torch.long)
    mask = torch.zeros((len(token_lists), max_words), dtype=torch.bool)
    for row, tokens in enumerate(token_lists):
        seq = [start_id, *tokens[: max_words - 2], end_id]
        ids[row, : len(seq)] = torch.tensor(seq, dtype=torch.long)
        mask[row, : len(seq)] = True
    return ids, mask


def _check_texts(texts: Sequence[str]) -> list[str]:
    if isinstance(texts, str):
        raise TypeError("tokenizer expects a list of texts, got a single str; wrap it in a list")
    return list(texts)


class ClipTokenizer:
    """OpenAI CLIP's byte-level BPE tokenizer, written from the published algorithm.

    ``vocab_path`` is a merge list in OpenAI's format (``.txt`` or ``.txt.gz``); ``None`` uses the
    vendored ``bpe_simple_vocab_16e6.txt.gz``. Word-level results are cached, so tokenizing a
    dataset's captions costs one BPE run per distinct word.
    """

    def __init__(self, vocab_path: str | Path | None = None) -> None:
        merges = _read_merges(vocab_path)
        alphabet = byte_alphabet()
        base = [alphabet[b] for b in _vocab_byte_order()]
        vocab = base + [s + "</w>" for s in base] + ["".join(m) for m in merges]
        vocab += [START_TOKEN, END_TOKEN]
        self.encoder: dict[str, int] = {tok: i for i, tok in enumerate(vocab)}
        self.decoder: list[str] = vocab
        self.ranks: dict[tuple[str, str], int] = {m: i for i, m in enumerate(merges)}
        self._byte_chars = alphabet
        self._char_bytes = {ch: b for b, ch in enumerate(alphabet)}
        self.start_id = self.encoder[START_TOKEN]
        self.end_id = self.encoder[END_TOKEN]
        self.pad_id = PAD_ID
        self._cache: dict[str, tuple[int, ...]] = {
            START_TOKEN: (self.start_id,),
            END_TOKEN: (self.end_id,),
        }

    @property
    def vocab_size(self) -> int:
        return len(self.decoder)

    def bpe(self, symbols: str) -> list[str]:
        """Merge a word (already mapped to byte characters) into BPE tokens.

        The last character carries the end-of-word marker ``</w>``; the lowest-ranked adjacent
        pair is merged everywhere, left to right, until no pair has a rank.
        """
        word = [*symbols[:-1], symbols[-1] + "</w>"]
        while len(word) > 1:
            pairs = {(word[i], word[i + 1]) for i in range(len(word) - 1)}
            best = min(pairs, key=lambda p: self.ranks.get(p, _NUM_MERGES))
            if best not in self.ranks:
                break
            merged: list[str] = []
            i = 0
            while i < len(word):
                if i + 1 < len(word) and word[i] == best[0] and word[i + 1] == best[1]:
                    merged.append(best[0] + best[1])
                    i += 2
                else:
                    merged.append(word[i])
                    i += 1
            word = merged
        return word

    def _word_ids(self, word: str) -> tuple[int, ...]:
        cached = self._cache.get(word)
        if cached is None:
            symbols = "".join(self._byte_chars[b] for b in word.encode("utf-8"))
            cached = tuple(self.encoder[tok] for tok in self.bpe(symbols))
            if len(self._cache) >= _CACHE_LIMIT:
                # Unbounded growth only happens on adversarial input; start over rather than evict.
                self._cache = {k: self._cache[k] for k in (START_TOKEN, END_TOKEN)}
            self._cache[word] = cached
        return cached

    def encode(self, text: str) -> list[int]:
        """Token ids of one text, without start/end tokens and without truncation."""
        ids: list[int] = []
        for word in _WORD_PATTERN.findall(clean_text(text)):
            ids.extend(self._word_ids(word))
        return ids

    def decode(self, ids: Sequence[int]) -> str:
        """Text of token ids: end-of-word markers become spaces; invalid UTF-8 is replaced."""
        symbols = "".join(self.decoder[i] for i in ids)
        out = bytearray()
        for part in regex.split(r"(</w>)", symbols):
            if part == "</w>":
                out.extend(b" ")
            else:
                out.extend(self._char_bytes[ch] for ch in part)
        return out.decode("utf-8", errors="replace")

    def __call__(self, texts: Sequence[str], max_words: int) -> tuple[Tensor, Tensor]:
        """Tokenize texts into ids [T, Nw] long and mask [T, Nw] bool (Nw = max_words)."""
        texts = _check_texts(texts)
        return pack_tokens([self.encode(t) for t in texts], self.start_id, self.end_id, max_words)


def _read_merges(vocab_path: str | Path | None) -> list[tuple[str, str]]:
    if vocab_path is None:
        data = resources.files("vtrkit.backbones").joinpath("assets", DEFAULT_VOCAB).read_bytes()
        source = f"vtrkit/backbones/assets/{DEFAULT_VOCAB}"
    else:
        path = Path(vocab_path)
        if not path.is_file():
            raise FileNotFoundError(
                f"BPE vocabulary not found: {path} (point model.backbone.tokenizer at CLIP's "
                f"bpe_simple_vocab_16e6.txt[.gz] or a Hugging Face tokenizer folder)"
            )
        data = path.read_bytes()
        source = str(path)
    if data[:2] == b"\x1f\x8b":
        data = gzip.decompress(data)
    lines = data.decode("utf-8").split("\n")[1 : _NUM_MERGES + 1]
    while lines and not lines[-1].strip():
        lines.pop()  # a short file's trailing newline
    merges = []
    for n, line in enumerate(lines, start=2):
        parts = line.split()
        if len(parts) != 2:
            raise ValueError(f"{source}, line {n}: expected two symbols per merge, got {line!r}")
        merges.append((parts[0], parts[1]))
    if len(merges) != _NUM_MERGES:
        raise ValueError(
            f"{source}: expected {_NUM_MERGES} merges after the header, found {len(merges)}; "
            "is this CLIP's bpe_simple_vocab_16e6 file?"
        )
    return merges


class HFTokenizerAdapter:
    """A tokenizer saved in a local Hugging Face folder, adapted to the ``Tokenizer`` protocol.

    The folder's own normalisation and subword model are used; the layout (start, truncation to
    Nw - 2, end, padding with 0) is the contract's, whatever the folder's padding token.
    Start/end are the tokenizer's BOS/EOS tokens, or CLS/SEP for BERT-style vocabularies.
    """

    def __init__(self, folder: str | Path) -> None:
        from transformers import AutoTokenizer

        folder = Path(folder)
        if not folder.is_dir():
            raise FileNotFoundError(
                f"tokenizer folder not found: {folder} (expected a Hugging Face tokenizer folder "
                "with tokenizer.json or vocab files)"
            )
        self.tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
        start = _first_id(self.tokenizer, ("bos_token_id", "cls_token_id"))
        end = _first_id(self.tokenizer, ("eos_token_id", "sep_token_id"))
        if start is None or end is None:
            raise ValueError(
                f"tokenizer in {folder} defines neither BOS/EOS nor CLS/SEP tokens, so start and "
                "end positions cannot be marked; add them to its special_tokens_map.json"
            )
        self.start_id: int = start
        self.end_id: int = end
        self.pad_id = PAD_ID
        self.vocab_size: int = len(self.tokenizer)

    def encode(self, text: str) -> list[int]:
        """Token ids of one text, without special tokens and without truncation."""
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def __call__(self, texts: Sequence[str], max_words: int) -> tuple[Tensor, Tensor]:
        """Tokenize texts into ids [T, Nw] long and mask [T, Nw] bool (Nw = max_words)."""
        texts = _check_texts(texts)
        if not texts:
            return pack_tokens([], self.start_id, self.end_id, max_words)
        encoded = self.tokenizer(texts, add_special_tokens=False)["input_ids"]
        return pack_tokens(encoded, self.start_id, self.end_id, max_words)


def _first_id(tokenizer: object, names: tuple[str, ...]) -> int | None:
    for name in names:
        value = getattr(tokenizer, name, None)
        if value is not None:
            return int(value)
    return None


def load_tokenizer(path: str | Path | None = None) -> Tokenizer:
    """The tokenizer at ``path``: None is the vendored CLIP BPE, a file a CLIP BPE merge list
    (``.txt`` / ``.txt.gz``), a folder a Hugging Face tokenizer."""
    if path is None:
        return ClipTokenizer()
    path = Path(path)
    if path.is_dir():
        return HFTokenizerAdapter(path)
    return ClipTokenizer(path)
