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


def _wordpiece_vocab(counts: dict[str, int], vocab_size: int, min_frequency: int, special: list[str]) -> list[str]:
    """A WordPiece vocabulary learnt by byte-pair merges, deterministically: a word is its first character and
    ``##``-prefixed continuation characters; the most frequent adjacent pair (weighted by word counts) is merged
    until ``vocab_size`` tokens exist or no pair occurs ``min_frequency`` times. Ties go to the pair that sorts
    first, so every process learns the same tokens in the same order (HF's trainer breaks ties in hash order)."""
    words = {w: [w[0]] + ["##" + c for c in w[1:]] for w in counts}
    vocab = list(special) + sorted({p for sym in words.values() for p in sym})
    known = set(vocab)

    def merged(a: str, b: str) -> str:
        return a + (b[2:] if b.startswith("##") else b)

    while len(vocab) < vocab_size:
        pairs: dict[tuple[str, str], int] = {}
        for w, sym in words.items():
            n = counts[w]
            for pair in zip(sym, sym[1:]):
                pairs[pair] = pairs.get(pair, 0) + n
        if not pairs:
            break
        best, n = min(pairs.items(), key=lambda kv: (-kv[1], kv[0]))
        if n < min_frequency:
            break
        token = merged(*best)
        for w, sym in words.items():
            if len(sym) < 2:
                continue
            out, i = [], 0
            while i < len(sym):
                if i + 1 < len(sym) and (sym[i], sym[i + 1]) == best:
                    out.append(token)
                    i += 2
                else:
                    out.append(sym[i])
                    i += 1
            words[w] = out
        if token not in known:
            vocab.append(token)
            known.add(token)
    return vocab


def train_wordpiece_tokenizer(texts: Iterable[str], vocab_size: int = 2000, model_max_length: int = 128,
                              save_dir: str | os.PathLike | None = None, min_frequency: int = 1):
    """A lowercasing BERT WordPiece tokenizer (``BertTokenizerFast``) with a vocabulary learnt from ``texts``.

    Deterministic: the same texts give the same vocabulary and ids in every process (`_wordpiece_vocab`). HF
    tokenizers' ``WordPieceTrainer`` does not: it breaks ties between equally frequent merges in hash order, which
    Rust seeds per process (592-594 tokens and different ids measured on the same texts). Text is normalised and
    split by the same BERT normaliser and pre-tokeniser the saved tokenizer uses. Saved with ``save_pretrained``
    when ``save_dir`` is given."""
    from collections import Counter

    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import BertTokenizerFast

    special = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    normaliser, splitter = normalizers.BertNormalizer(lowercase=True), pre_tokenizers.BertPreTokenizer()
    counts: Counter[str] = Counter()
    for text in texts:
        counts.update(w for w, _ in splitter.pre_tokenize_str(normaliser.normalize_str(text)))
    vocab = _wordpiece_vocab(counts, vocab_size, min_frequency, special)
    tok = Tokenizer(models.WordPiece({t: i for i, t in enumerate(vocab)}, unk_token="[UNK]"))
    tok.normalizer = normaliser
    tok.pre_tokenizer = splitter
    tok.decoder = decoders.WordPiece()
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


def text_fingerprint(texts: Iterable[str], *settings) -> str:
    """A sha256 of the texts and the settings a tokenizer is trained with."""
    import hashlib

    h = hashlib.sha256(repr(settings).encode())
    for t in texts:
        h.update(t.encode("utf-8", "replace") + b"\x00")
    return h.hexdigest()


def cached_tokenizer(folder: str | os.PathLike, fingerprint: str, build):
    """The tokenizer saved in ``folder`` when it was trained on the same texts and settings (``fingerprint``),
    else ``build()``'s, saved there atomically. Trained tokenizers are not deterministic across processes, so
    the loop's ``main_process_first`` lets the main process train and save it and every other rank (and a
    resumed run) load that same one, instead of each rank training its own vocabulary."""
    import shutil
    import tempfile

    from transformers import AutoTokenizer

    folder = Path(folder)
    stamp = folder / "mxr0_fingerprint.txt"
    if stamp.is_file() and stamp.read_text().strip() == fingerprint:
        return AutoTokenizer.from_pretrained(str(folder))
    tok = build()
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
    tok.save_pretrained(str(tmp))
    (tmp / "mxr0_fingerprint.txt").write_text(fingerprint)
    shutil.rmtree(folder, ignore_errors=True)
    try:
        os.replace(tmp, folder)
    except OSError:  # another process saved it first: theirs is as good
        shutil.rmtree(tmp, ignore_errors=True)
    return tok

