"""The report and align tasks' tokenizers: a pretrained one from a folder / Hub id, or one trained on the training texts."""

from __future__ import annotations

import logging
from pathlib import Path

from mxr0.config.tasks import AlignModelConfig, ReportModelConfig
from mxr0.data.boxes_text import box_special_tokens
from mxr0.data.chat import TINY_CHAT_TEMPLATE, ensure_image_token, train_chat_tokenizer
from mxr0.data.report_dataset import ReportDataset
from mxr0.data.text import cached_tokenizer, report_text, text_fingerprint, train_wordpiece_tokenizer

log = logging.getLogger(__name__)


def report_tokenizer(cfg: ReportModelConfig, train_ds: ReportDataset):
    """The VLM's chat tokenizer: ``init_from`` / ``llm``'s (with the image token, and mxr0's plain template when it
    has none), or a BPE tokenizer trained on the training answers, instructions and context sections; box tokens
    added when ``box_format`` is ``tokens``."""
    from transformers import AutoTokenizer

    c = cfg
    if c.init_from or c.llm:
        tok = AutoTokenizer.from_pretrained(c.init_from or c.llm)
        ensure_image_token(tok)
        if not tok.chat_template:
            log.warning("%s has no chat template; using mxr0's plain role-marker template", c.init_from or c.llm)
            tok.chat_template = TINY_CHAT_TEMPLATE
    else:
        texts = [train_ds.answer(i) for i in range(len(train_ds))]
        texts += sorted({ex.instruction for ex in train_ds.examples})
        texts += [r.get(s) or "" for r in train_ds.records for s in c.context_sections]
        tok = train_chat_tokenizer([t for t in texts if t], c.tokenizer_vocab_size, c.max_length)
    if c.box_format == "tokens":
        new = [t for t in box_special_tokens() if t not in tok.get_vocab()]
        if new:
            tok.add_tokens(new, special_tokens=True)
    return tok


def align_tokenizer(cfg: AlignModelConfig, train_records: list[dict], folder: Path):
    """The text tower's tokenizer: ``tokenizer`` / ``text``'s, or a WordPiece tokenizer trained on the training
    reports, once per run folder (``folder``, shared by every rank and a resumed run: see `cached_tokenizer`)."""
    c = cfg
    if c.tokenizer or c.text:
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(c.tokenizer or c.text)
    texts = [t for t in (report_text(r, c.text_sections) for r in train_records) if t]
    tok = cached_tokenizer(folder, text_fingerprint(texts, c.tokenizer_vocab_size, c.max_text_length),
                           lambda: train_wordpiece_tokenizer(texts, c.tokenizer_vocab_size, c.max_text_length))
    log.info("trained a WordPiece tokenizer of %d tokens on %d training reports", len(tok), len(texts))
    return tok
