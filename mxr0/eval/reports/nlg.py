"""BLEU-1..4, CIDEr-D and ROUGE-L with pycocoevalcap's conventions, and ROUGE-L as rouge_score computes it.

Everything is computed from per-pair sufficient statistics so that a bootstrap resample or a
paired permutation recomputes the *corpus* metric (not a mean of sentence scores) cheaply:

* **BLEU-n** (pycocoevalcap ``Bleu(4)``, ``option='closest'``): PTB-tokenised, lower-cased,
  punctuation-stripped text split on whitespace; clipped n-gram matches and candidate n-gram counts
  summed over the corpus, ``(correct + 1e-15) / (guess + 1e-9)`` per order, geometric mean, and the
  corpus brevity penalty ``exp(1 - r/c)`` when the total candidate length ``c`` is below the total
  closest-reference length ``r``. Not sacrebleu, not NLTK (no smoothing, different tokenisation).
* **CIDEr-D** (pycocoevalcap ``Cider``, which *is* CIDEr-D): n = 1..4 TF-IDF vectors with raw
  term counts, document frequencies from the references of the evaluated set (one document per
  study), ``idf = log(N) - log(max(1, df))``, clipped similarity ``min(h, r) * r``, Gaussian length
  penalty with sigma 6 on the difference of the *bigram* counts (pycocoevalcap's ``length``),
  mean over n, x10, averaged over studies. Under the bootstrap the document frequencies and ``N``
  are recomputed on every resample, exactly as pycocoevalcap would on the resampled list.
* **ROUGE-L, pycocoevalcap**: LCS on the PTB tokens (``str.split(" ")``, so an empty text is one
  empty token), ``F = (1 + b^2) P R / (R + b^2 P)`` with ``b = 1.2``, averaged over studies.
* **ROUGE-L F1, rouge_score**: rouge_score's tokeniser (lower-case, ``[^a-z0-9]+`` -> space,
  optional Porter stemming of tokens longer than 3 characters), ``F = 2 P R / (P + R)``, 0 when
  either side is empty, averaged over studies (what ``evaluate.load("rouge")`` approximates by the
  median of its own bootstrap; RadEval uses ``use_stemmer=True``).
* **METEOR** is not computed: pycocoevalcap's METEOR is the Java Meteor 1.5 jar (exact, stem,
  WordNet-synonym and paraphrase-table matching with its own parameters); no pure-Python
  implementation reproduces it (NLTK's ``meteor_score`` uses different matching, parameters and
  fragmentation penalty and gives different numbers), so we report no METEOR rather than a
  METEOR that is not comparable with published figures.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from typing import Sequence

import numpy as np

from .ptb import tokenize_corpus
from .stats import AdditiveStats

__all__ = ["BleuStats", "CiderDStats", "RougeLStats", "RougeScoreLStats", "lcs_length", "nlg_stats",
           "rouge_score_tokenize", "METEOR_NOTE", "NLG_CONVENTIONS"]

METEOR_NOTE = ("METEOR not computed: pycocoevalcap's METEOR runs the Java Meteor 1.5 jar (WordNet synonyms, "
               "paraphrase tables, its own parameters); no pure-Python implementation reproduces its numbers "
               "(NLTK's meteor_score differs), so a METEOR from this tool would not be comparable with papers.")

NLG_CONVENTIONS = {
    "tokenization": ("pycocoevalcap PTBTokenizer (Stanford CoreNLP 3.4.1 PTBLexer, re-implemented in Python; "
                     "-preserveLines -lowerCase), punctuation tokens removed as pycocoevalcap does; brackets stay "
                     "as -lrb-/-rrb- tokens; each side (references, predictions) lexed as one stream"),
    "bleu": ("pycocoevalcap Bleu(4): corpus-level, option='closest' reference length, (correct+1e-15)/(guess+1e-9) "
             "per order, corpus brevity penalty exp(1-r/c) when c<r; no smoothing"),
    "cider_d": ("pycocoevalcap Cider (CIDEr-D): n=1..4, raw tf, idf=log(N)-log(max(1,df)) with df from the "
                "references of the evaluated set, clipped min(h,r)*r, Gaussian penalty sigma=6 on bigram-count "
                "difference, x10; recomputed (df and N included) on every bootstrap resample"),
    "rouge_l": "pycocoevalcap Rouge: LCS F-measure with beta=1.2 on PTB tokens, mean over studies",
    "rouge_l_f1": ("rouge_score RougeScorer(['rougeL']).fmeasure (beta=1, its own [a-z0-9] tokeniser{stem}), "
                   "mean over studies"),
    "meteor": METEOR_NOTE,
}

_TINY, _SMALL = 1e-15, 1e-9


# ---------------------------------------------------------------------------------------------
def _ngrams(words: Sequence[str], n: int) -> Counter:
    c: Counter = Counter()
    for k in range(1, n + 1):
        for i in range(len(words) - k + 1):
            c[tuple(words[i:i + k])] += 1
    return c


def lcs_length(a: Sequence, b: Sequence) -> int:
    """Length of the longest common subsequence (bit-parallel; equal to the textbook DP)."""
    if not a or not b:
        return 0
    if len(a) < len(b):
        a, b = b, a
    masks: dict = {}
    for i, tok in enumerate(a):
        masks[tok] = masks.get(tok, 0) | (1 << i)
    full = (1 << len(a)) - 1
    v = full
    for tok in b:
        m = masks.get(tok)
        if m is None:
            continue
        u = v & m
        v = ((v + u) | (v - u)) & full
    return len(a) - bin(v).count("1")


# ---------------------------------------------------------------------------------------------
class BleuStats(AdditiveStats):
    """Columns: correct_1..4, guess_1..4, candidate length, closest reference length."""

    names = ("bleu_1", "bleu_2", "bleu_3", "bleu_4")

    def __init__(self, hyp_tokens: Sequence[Sequence[str]], ref_tokens: Sequence[Sequence[str]], n: int = 4):
        self.n = n
        x = np.zeros((len(hyp_tokens), 2 * n + 2), dtype=np.float64)
        for i, (h, r) in enumerate(zip(hyp_tokens, ref_tokens)):
            hc, rc = _ngrams(h, n), _ngrams(r, n)
            for g, cnt in hc.items():
                x[i, len(g) - 1] += min(rc.get(g, 0), cnt)
            for k in range(1, n + 1):
                x[i, n + k - 1] = max(0, len(h) - k + 1)
            x[i, 2 * n] = len(h)
            x[i, 2 * n + 1] = len(r)  # one reference: the closest reference length is its length
        super().__init__(x)

    def finalize(self, sums: np.ndarray, counts: np.ndarray) -> np.ndarray:
        n = self.n
        correct, guess = sums[:, :n], sums[:, n:2 * n]
        testlen, reflen = sums[:, 2 * n], sums[:, 2 * n + 1]
        prec = (correct + _TINY) / (guess + _SMALL)
        bleu = np.cumprod(prec, axis=1) ** (1.0 / np.arange(1, n + 1))
        ratio = (testlen + _TINY) / (reflen + _SMALL)
        with np.errstate(divide="ignore", over="ignore"):
            bp = np.where(ratio < 1, np.exp(1 - 1 / ratio), 1.0)
        return bleu * bp[:, None]


class RougeLStats(AdditiveStats):
    """pycocoevalcap ROUGE-L (beta 1.2) per study; corpus value = mean."""

    names = ("rouge_l",)

    def __init__(self, hyp_texts: Sequence[str], ref_texts: Sequence[str], beta: float = 1.2):
        x = np.zeros((len(hyp_texts), 1))
        b2 = beta ** 2
        for i, (h, r) in enumerate(zip(hyp_texts, ref_texts)):
            tc, tr = h.split(" "), r.split(" ")
            lcs = lcs_length(tr, tc)
            p, rec = lcs / len(tc), lcs / len(tr)
            x[i, 0] = ((1 + b2) * p * rec) / (rec + b2 * p) if (p != 0 and rec != 0) else 0.0
        self.per_pair = x[:, 0]
        super().__init__(x)

    def finalize(self, sums, counts):
        return sums / counts[:, None]


_NON_ALNUM = re.compile(r"[^a-z0-9]+")
_SPACES = re.compile(r"\s+")
_VALID = re.compile(r"^[a-z0-9]+$")


def rouge_score_tokenize(text: str, stemmer=None) -> list[str]:
    """rouge_score.tokenize.tokenize: lower-case, non-alphanumerics to spaces, stem tokens > 3 chars."""
    text = _NON_ALNUM.sub(" ", text.lower())
    toks = _SPACES.split(text)
    if stemmer is not None:
        toks = [stemmer.stem(t) if len(t) > 3 else t for t in toks]
    return [t for t in toks if _VALID.match(t)]


def _porter_stemmer():
    try:
        from nltk.stem import porter
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("rouge_l_f1 with stemming needs NLTK's Porter stemmer (the one rouge_score uses): "
                          "pip install nltk, or turn stemming off") from e
    return porter.PorterStemmer()


class RougeScoreLStats(AdditiveStats):
    """rouge_score's ROUGE-L F-measure (beta 1) per study; corpus value = mean."""

    names = ("rouge_l_f1",)

    def __init__(self, hyps: Sequence[str], refs: Sequence[str], use_stemmer: bool = False):
        stem = _porter_stemmer() if use_stemmer else None
        cache: dict = {}

        def tok(s):
            if s not in cache:
                cache[s] = rouge_score_tokenize(s, stem)
            return cache[s]

        x = np.zeros((len(hyps), 1))
        for i, (h, r) in enumerate(zip(hyps, refs)):
            th, tr = tok(h), tok(r)
            if not th or not tr:
                continue
            lcs = lcs_length(tr, th)
            p, rec = lcs / len(th), lcs / len(tr)
            x[i, 0] = 2 * p * rec / (p + rec) if p + rec > 0 else 0.0
        self.per_pair = x[:, 0]
        super().__init__(x)

    def finalize(self, sums, counts):
        return sums / counts[:, None]


class CiderDStats(AdditiveStats):
    """pycocoevalcap CIDEr-D. Additive only when the references are fixed (paired tests): the
    per-study scores then depend on the document frequencies of the whole reference set. Under
    the bootstrap, :meth:`resample_values` recomputes the document frequencies and ``N`` of every
    resample."""

    names = ("cider_d",)

    def __init__(self, hyp_tokens: Sequence[Sequence[str]], ref_tokens: Sequence[Sequence[str]],
                 n: int = 4, sigma: float = 6.0):
        self.n, self.sigma = n, sigma
        N = len(hyp_tokens)
        vocab: dict = {}
        h_pair, h_order, h_gram, h_tf, h_rtf = [], [], [], [], []
        r_pair, r_order, r_gram, r_tf = [], [], [], []
        len_h = np.zeros(N)
        len_r = np.zeros(N)
        for i, (h, r) in enumerate(zip(hyp_tokens, ref_tokens)):
            hc, rc = _ngrams(h, n), _ngrams(r, n)
            len_h[i] = max(0, len(h) - 1)  # pycocoevalcap's "length" counts bigrams
            len_r[i] = max(0, len(r) - 1)
            for g, c in rc.items():
                gid = vocab.setdefault(g, len(vocab))
                r_pair.append(i), r_order.append(len(g) - 1), r_gram.append(gid), r_tf.append(c)
            for g, c in hc.items():
                gid = vocab.setdefault(g, len(vocab))
                h_pair.append(i), h_order.append(len(g) - 1), h_gram.append(gid), h_tf.append(c)
                h_rtf.append(rc.get(g, 0))
        self.N, self.G = N, len(vocab)
        self.h_slot = np.asarray(h_pair, np.int64) * n + np.asarray(h_order, np.int64)
        self.h_gram = np.asarray(h_gram, np.int64)
        self.h_tf = np.asarray(h_tf, np.float64)
        self.h_rtf = np.asarray(h_rtf, np.float64)
        self.r_pair = np.asarray(r_pair, np.int64)
        self.r_slot = self.r_pair * n + np.asarray(r_order, np.int64)
        self.r_gram = np.asarray(r_gram, np.int64)
        self.r_tf = np.asarray(r_tf, np.float64)
        m = self.h_rtf > 0
        self.m_slot, self.m_gram = self.h_slot[m], self.h_gram[m]
        self.m_w = np.minimum(self.h_tf[m], self.h_rtf[m]) * self.h_rtf[m]
        delta = len_h - len_r
        self.penalty = np.exp(-(delta ** 2) / (2 * sigma ** 2))
        per_pair = self._scores(np.ones(N))
        self.per_pair = per_pair
        super().__init__(per_pair[:, None])

    def _scores(self, w: np.ndarray) -> np.ndarray:
        """Per-study CIDEr-D when study i appears w[i] times in the evaluated list."""
        n, N = self.n, self.N
        df = np.bincount(self.r_gram, weights=w[self.r_pair], minlength=self.G)
        total = float(w.sum())
        idf = math.log(total) - np.log(np.maximum(1.0, df))
        hv = self.h_tf * idf[self.h_gram]
        rv = self.r_tf * idf[self.r_gram]
        norm_h = np.sqrt(np.bincount(self.h_slot, weights=hv * hv, minlength=N * n))
        norm_r = np.sqrt(np.bincount(self.r_slot, weights=rv * rv, minlength=N * n))
        idf_m = idf[self.m_gram]
        val = np.bincount(self.m_slot, weights=self.m_w * idf_m * idf_m, minlength=N * n)
        denom = norm_h * norm_r
        val = np.where(denom != 0, val / np.where(denom != 0, denom, 1.0), val)
        val = val.reshape(N, n) * self.penalty[:, None]
        return val.mean(axis=1) * 10.0

    def finalize(self, sums, counts):
        return sums / counts[:, None]

    def resample_values(self, weights: np.ndarray) -> np.ndarray:
        out = np.empty((weights.shape[0], 1))
        for b, w in enumerate(weights):
            w = np.asarray(w, np.float64)
            out[b, 0] = float(np.dot(w, self._scores(w)) / w.sum())
        return out


# ---------------------------------------------------------------------------------------------
def nlg_stats(hyps: Sequence[str], refs: Sequence[str], metrics: Sequence[str] = ("bleu", "rouge_l", "cider_d"),
              rouge_stemmer: bool = False, ptb_hyps: Sequence[str] | None = None,
              ptb_refs: Sequence[str] | None = None) -> dict:
    """Sufficient statistics for the requested NLG metric families, keyed by family.

    ``metrics`` may hold ``bleu``, ``rouge_l`` (pycocoevalcap), ``rouge_l_f1`` (rouge_score),
    ``cider_d``. PTB tokenisation runs once per side (pass ``ptb_hyps``/``ptb_refs`` to reuse it)."""
    out: dict = {}
    need_ptb = any(m in metrics for m in ("bleu", "rouge_l", "cider_d"))
    if need_ptb:
        th = list(ptb_hyps) if ptb_hyps is not None else tokenize_corpus(hyps)
        tr = list(ptb_refs) if ptb_refs is not None else tokenize_corpus(refs)
        wh, wr = [s.split() for s in th], [s.split() for s in tr]
    for m in metrics:
        if m == "bleu":
            out["bleu"] = BleuStats(wh, wr)
        elif m == "rouge_l":
            out["rouge_l"] = RougeLStats(th, tr)
        elif m == "cider_d":
            out["cider_d"] = CiderDStats(wh, wr)
        elif m == "rouge_l_f1":
            out["rouge_l_f1"] = RougeScoreLStats(hyps, refs, use_stemmer=rouge_stemmer)
        else:
            raise ValueError(f"unknown NLG metric {m!r}; choose from bleu, rouge_l, rouge_l_f1, cider_d")
    return out
