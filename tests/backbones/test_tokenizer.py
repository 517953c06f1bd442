"""CLIP BPE tokenizer: known ids, layout (start, truncation, end, padding), cleanup, and agreement
with the Hugging Face `tokenizers` implementation of the same merges."""

from __future__ import annotations

import gzip
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers import BertTokenizer, CLIPTokenizer

from vtrkit.backbones.tokenizer import (
    ClipTokenizer,
    HFTokenizerAdapter,
    load_tokenizer,
)

ASSET = Path(__file__).parents[2] / "src/vtrkit/backbones/assets/bpe_simple_vocab_16e6.txt.gz"

CAPTIONS = [
    "a photo of a cat",
    "A man is playing a guitar on stage while people are cheering",
    "someone's cooking pasta in the kitchen, then they've added 12 tomatoes!!",
    "the quick brown fox jumps over the lazy dog :-)",
    "a woman wearing a red dress walks down the street at night",
    "café naïve résumé über",
    "日本語のテキスト and emoji 😀👍",
    "unbelievably antidisestablishmentarianism",
]


@pytest.fixture(scope="module")
def tok() -> ClipTokenizer:
    return ClipTokenizer()


def test_known_answer(tok: ClipTokenizer) -> None:
    ids, mask = tok(["a photo of a cat"], 7)
    assert ids.tolist() == [[49406, 320, 1125, 539, 320, 2368, 49407]]
    assert mask.all()
    assert tok.vocab_size == 49408 and (tok.start_id, tok.end_id) == (49406, 49407)
    # Single bytes come first in CLIP's vocabulary, then bytes ending a word: "!" is id 0.
    assert tok.decoder[0] == "!" and tok.decoder[256] == "!</w>"


def test_padding_and_end_position(tok: ClipTokenizer) -> None:
    ids, mask = tok(["a photo of a cat", "cat"], 10)
    assert ids.dtype == torch.long and mask.dtype == torch.bool
    assert ids[0].tolist() == [49406, 320, 1125, 539, 320, 2368, 49407, 0, 0, 0]
    assert ids[1].tolist() == [49406, 2368, 49407, 0, 0, 0, 0, 0, 0, 0]
    assert mask.sum(1).tolist() == [7, 3]
    end = mask.sum(1) - 1
    assert ids[torch.arange(2), end].tolist() == [49407, 49407]


def test_truncation_keeps_start_and_end(tok: ClipTokenizer) -> None:
    ids, mask = tok(["a photo of a cat"], 5)
    assert ids.tolist() == [[49406, 320, 1125, 539, 49407]]
    assert mask.all()
    ids, mask = tok(["", "a photo"], 2)
    assert ids.tolist() == [[49406, 49407], [49406, 49407]]
    with pytest.raises(ValueError, match="at least 2"):
        tok(["a"], 1)
    with pytest.raises(TypeError, match="single str"):
        tok("a photo of a cat", 8)
    empty_ids, empty_mask = tok([], 8)
    assert empty_ids.shape == (0, 8) and empty_mask.shape == (0, 8)


def test_cleanup(tok: ClipTokenizer) -> None:
    plain = tok.encode("a photo of a cat")
    assert tok.encode("  A\tPHOTO \n of  a Cat ") == plain
    assert tok.encode("fish &amp; chips") == tok.encode("fish & chips")
    assert tok.encode("fish &amp;amp; chips") == tok.encode("fish & chips")  # unescaped twice
    assert tok.encode("don\u2019t") == tok.encode("don't")
    assert tok.encode("\ufb01sh") == tok.encode("fish")
    assert tok.encode("\uff43\uff41\uff54") == tok.encode("cat")  # full-width letters
    assert tok.encode("cafe\u0301") == tok.encode("caf\u00e9")  # NFC
    assert tok.encode("don't") == [847, 713]  # contractions are their own words: "don", "'t"


def test_matches_hugging_face_bpe_on_the_same_merges(tok: ClipTokenizer, tmp_path: Path) -> None:
    """An independent BPE (the Rust `tokenizers` CLIP pipeline) gives the same ids."""
    merges = sorted(tok.ranks, key=tok.ranks.get)
    CLIPTokenizer(vocab=dict(tok.encoder), merges=merges).save_pretrained(str(tmp_path))
    adapter = HFTokenizerAdapter(tmp_path)
    assert (adapter.start_id, adapter.end_id) == (49406, 49407)
    ours = tok(CAPTIONS, 24)
    theirs = adapter(CAPTIONS, 24)
    assert torch.equal(ours[0], theirs[0])
    assert torch.equal(ours[1], theirs[1])


def test_hf_adapter_uses_cls_and_sep_for_bert_vocabularies(tmp_path: Path) -> None:
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "photo", "of", "cat", "##s"]
    BertTokenizer(vocab={w: i for i, w in enumerate(vocab)}).save_pretrained(str(tmp_path))
    adapter = HFTokenizerAdapter(tmp_path)
    ids, mask = adapter(["a photo of cats", "cat"], 5)
    assert ids.tolist() == [[2, 5, 6, 7, 3], [2, 8, 3, 0, 0]]
    assert mask.sum(1).tolist() == [5, 3]


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.text(alphabet="abcdefghijklmnopqrstuvwxyz", min_size=1, max_size=12), max_size=6)
)
def test_decode_inverts_encode_for_words(tok: ClipTokenizer, words: list[str]) -> None:
    text = " ".join(words)
    assert tok.decode(tok.encode(text)).strip() == text


def test_load_tokenizer_dispatch(tok: ClipTokenizer, tmp_path: Path) -> None:
    plain = tmp_path / "bpe.txt"
    plain.write_bytes(gzip.decompress(ASSET.read_bytes()))
    from_file = load_tokenizer(plain)
    assert isinstance(from_file, ClipTokenizer)
    assert torch.equal(from_file(CAPTIONS, 16)[0], tok(CAPTIONS, 16)[0])
    assert isinstance(load_tokenizer(None), ClipTokenizer)
    with pytest.raises(FileNotFoundError, match=r"missing_vocab\.txt\.gz"):
        load_tokenizer(tmp_path / "missing_vocab.txt.gz")
    short = tmp_path / "short.txt"
    short.write_text("#version: 0.2\ni n\nt h\n")
    with pytest.raises(ValueError, match=r"short\.txt: expected 48894 merges"):
        ClipTokenizer(short)
    with pytest.raises(FileNotFoundError, match="tokenizer folder not found"):
        HFTokenizerAdapter(tmp_path / "no_folder")


def test_vendored_licence_notice_is_shipped() -> None:
    notice = (ASSET.parent / "LICENSE-CLIP.txt").read_text()
    assert "MIT" in notice and "OpenAI" in notice and "bpe_simple_vocab_16e6.txt.gz" in notice
