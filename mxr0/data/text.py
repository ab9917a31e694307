"""Report text for text encoders: section selection, sentence splitting and sampling, and a WordPiece
tokenizer trained on the training reports (for tiny text towers built from a config).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

REPORT_SECTIONS = ("indication", "technique", "comparison", "findings", "impression")

_LIST_MARK = re.compile(r"(?:(?<=\s)|^)\d{1,2}[.)]\s+")
_SENT_END = re.compile(r"(?<=[.!?])\s+|(?<=[.!?])(?=[A-Z])")


def report_text(record: dict, sections: Sequence[str]) -> str:
    """The chosen report sections of a record joined with a space (empty sections skipped)."""
    for s in sections:
        if s not in REPORT_SECTIONS:
            raise ValueError(f"unknown report section {s!r}; valid: {', '.join(REPORT_SECTIONS)}")
    return " ".join(t.strip() for t in (record.get(s) or "" for s in sections) if t and t.strip())


def split_sentences(text: str) -> list[str]:
    """Sentences of a report, with list numbering ("1. ", "2) ") removed.

    Splits after ``.``/``!``/``?`` followed by white space or a capital letter (reports glued without a
    space, "limits.No acute"); decimals such as "2.5 cm" stay whole."""
    text = _LIST_MARK.sub(" ", " " + text).strip()
    return [s.strip() for s in _SENT_END.split(text) if s and s.strip(" .")]


def sample_sentences(sentences: Sequence[str], rng: np.random.Generator, keep: float, shuffle: bool) -> str:
    """A training view of a report: a random subset of ``keep`` of its sentences (at least one),
    in random order when ``shuffle``."""
    n = len(sentences)
    if n == 0:
        return ""
    idx = np.arange(n)
    if keep < 1.0:
        m = max(1, int(round(keep * n)))
        idx = np.sort(rng.choice(n, size=m, replace=False))
    if shuffle:
        idx = rng.permutation(idx)
    return " ".join(sentences[i] for i in idx)


def normalise_text(text: str) -> str:
    """Lowercase, single-spaced: two reports equal after this are the same report (retrieval dedup)."""
    return " ".join(text.lower().split())


def train_wordpiece_tokenizer(texts: Iterable[str], vocab_size: int = 2000, model_max_length: int = 128,
                              save_dir: str | os.PathLike | None = None):
    """A lowercasing BERT WordPiece tokenizer (``BertTokenizerFast``) trained on ``texts``.

    Deterministic for the same texts; saved with ``save_pretrained`` when ``save_dir`` is given."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import BertTokenizerFast

    special = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    trainer = trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=special, min_frequency=1,
                                        show_progress=False)
    tok.train_from_iterator(list(texts), trainer=trainer)
    cls_id, sep_id = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)]
    )
    fast = BertTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", sep_token="[SEP]", pad_token="[PAD]",
                             cls_token="[CLS]", mask_token="[MASK]", do_lower_case=True,
                             model_max_length=model_max_length)
    if save_dir is not None:
        Path(save_dir).mkdir(parents=True, exist_ok=True)
        fast.save_pretrained(str(save_dir))
    return fast
