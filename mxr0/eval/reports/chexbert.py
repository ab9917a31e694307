"""CheXbert labeler (Smit et al. 2020) with batched, length-sorted inference, and CheXbert F1.

Model: ``bert-base-uncased`` encoder, dropout, 13 linear heads of 4 classes and one head of 2
classes (No Finding) on the [CLS] vector, as in stanfordmlgroup/CheXbert ``bert_labeler``. The
official checkpoint (``chexbert.pth``; ``StanfordAIMI/RRG_scorers`` on the Hub) is a dict with a
``model_state_dict`` whose keys carry DataParallel's ``module.`` prefix; a bare state dict works too.

Head classes (CheXbert ``label.py``): 0 blank (not mentioned), 1 positive, 2 negative,
3 uncertain; the No Finding head: 0 blank, 1 positive. CheXbert writes them as CheXpert labels
(blank, 1, 0, -1): see :func:`classes_to_chexpert`.

Report text is prepared exactly as f1chexbert / LLaVA-Rad do: strip, newlines to spaces,
whitespace runs collapsed, WordPiece-tokenised, ``[CLS] ... [SEP]``, truncated to 512 ids as
``ids[:511] + [SEP]``; an empty report becomes ``[CLS] [SEP]``. We label many reports per forward
pass (sorted by length, padded with an attention mask) where f1chexbert labels one at a time;
identical texts are labelled once.

CheXbert F1 (the "rrg" binarisation of f1chexbert / LLaVA-Rad): a study is positive for an
observation when its class is positive, and -- with ``uncertain="positive"`` (f1chexbert, RadEval,
LLaVA-Rad's "+" numbers) -- also when it is uncertain; with ``uncertain="negative"`` (LLaVA-Rad,
MAIRA-2) uncertain counts as negative. Blank and negative are negative. F1 per observation with
the references as truth, ``zero_division=0`` (an observation never positive in either references
or predictions scores 0 and still counts in the macro average, as sklearn's classification_report
does for f1chexbert); micro/macro over all 14 observations (No Finding included) = "F1-14", and
over Atelectasis, Cardiomegaly, Consolidation, Edema, Pleural Effusion = "F1-5".
"""

from __future__ import annotations

import os
import re
from collections import OrderedDict
from pathlib import Path
from typing import Sequence

import numpy as np

from mxr0.precision import autocast, resolve_precision, top2_margin

from .batching import length_batches
from .stats import AdditiveStats
from .weights import MissingWeightsError, hf_cached_file, user_cache_dir

__all__ = ["CONDITIONS", "TOP5", "CheXbert", "CheXbertStats", "classes_to_chexpert", "binarize",
           "load_chexbert", "resolve_chexbert_files", "encode_report"]

CONDITIONS = ("Enlarged Cardiomediastinum", "Cardiomegaly", "Lung Opacity", "Lung Lesion", "Edema",
              "Consolidation", "Pneumonia", "Atelectasis", "Pneumothorax", "Pleural Effusion", "Pleural Other",
              "Fracture", "Support Devices", "No Finding")
TOP5 = ("Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Pleural Effusion")
TOP5_INDEX = tuple(sorted(CONDITIONS.index(c) for c in TOP5))
BLANK, POSITIVE, NEGATIVE, UNCERTAIN = 0, 1, 2, 3

HUB_REPO, HUB_FILE = "StanfordAIMI/RRG_scorers", "chexbert.pth"
# bf16 safety rule (CheXbert.label): a report whose bf16 logits have a top-two margin below the threshold in
# any head is labelled again in fp32. The threshold is the larger of DEFAULT_MARGIN and SAFETY times the
# largest |bf16 - fp32| logit difference on a calibration sample of the same call: the error scales with the
# model (0.013 with autocast, 0.027 with bf16 weights for bert-base shapes with random weights on 256 IU
# X-ray reports; 9.4 for the tiny test stand-in, whose heads are scaled up).
DEFAULT_MARGIN, DEFAULT_MAX_RELABEL = 0.1, 0.10
SAFETY, CALIBRATION_SHARE, CALIBRATION_MIN = 4.0, 0.02, 16
_NO_CLASS = -1e9
TOKENIZER_ID = "bert-base-uncased"


# ---------------------------------------------------------------------------------------------
def classes_to_chexpert(classes: np.ndarray) -> np.ndarray:
    """Head classes (N, 14) -> CheXpert labels: 1 positive, 0 negative, -1 uncertain, NaN blank."""
    c = np.asarray(classes)
    out = np.full(c.shape, np.nan)
    out[c == POSITIVE] = 1.0
    out[c == NEGATIVE] = 0.0
    out[c == UNCERTAIN] = -1.0
    return out


def binarize(classes: np.ndarray, uncertain: str = "positive") -> np.ndarray:
    """Head classes (N, 14) -> bool positives under the chosen uncertain convention."""
    c = np.asarray(classes)
    if uncertain == "positive":
        return (c == POSITIVE) | (c == UNCERTAIN)
    if uncertain == "negative":
        return c == POSITIVE
    raise ValueError(f"uncertain must be 'positive' or 'negative', got {uncertain!r}")


class CheXbertStats(AdditiveStats):
    """Per-study TP/FP/FN for the 14 observations (columns tp[14], fp[14], fn[14])."""

    names = ("chexbert_f1_14_micro", "chexbert_f1_14_macro", "chexbert_f1_5_micro", "chexbert_f1_5_macro")

    def __init__(self, hyp_classes: np.ndarray, ref_classes: np.ndarray, uncertain: str = "positive"):
        yp, yt = binarize(hyp_classes, uncertain), binarize(ref_classes, uncertain)
        if yp.shape != yt.shape or yp.shape[1:] != (len(CONDITIONS),):
            raise ValueError(f"label arrays must be (N, 14); got {yp.shape} and {yt.shape}")
        self.uncertain = uncertain
        super().__init__(np.concatenate([yp & yt, yp & ~yt, ~yp & yt], axis=1))

    @staticmethod
    def _f1(tp, fp, fn):
        den = 2 * tp + fp + fn
        return np.where(den > 0, 2 * tp / np.where(den > 0, den, 1), 0.0)

    def finalize(self, sums, counts):
        k = len(CONDITIONS)
        tp, fp, fn = sums[:, :k], sums[:, k:2 * k], sums[:, 2 * k:]
        f1 = self._f1(tp, fp, fn)
        idx = list(TOP5_INDEX)
        micro14 = self._f1(tp.sum(1), fp.sum(1), fn.sum(1))
        micro5 = self._f1(tp[:, idx].sum(1), fp[:, idx].sum(1), fn[:, idx].sum(1))
        return np.stack([micro14, f1.mean(1), micro5, f1[:, idx].mean(1)], axis=1)

    @classmethod
    def f1_table(cls, tp, fp, fn, names) -> dict[str, dict[str, float]]:
        """F1, precision, recall (0 without predictions / support) and support per name from count arrays."""
        tp, fp, fn = (np.asarray(v, dtype=np.float64) for v in (tp, fp, fn))
        f1 = cls._f1(tp, fp, fn)
        prec = np.where(tp + fp > 0, tp / np.maximum(tp + fp, 1), 0.0)
        rec = np.where(tp + fn > 0, tp / np.maximum(tp + fn, 1), 0.0)
        return {c: {"f1": float(f1[i]), "precision": float(prec[i]), "recall": float(rec[i]),
                    "support": int(tp[i] + fn[i])} for i, c in enumerate(names)}

    def per_label(self) -> dict[str, dict[str, float]]:
        k = len(CONDITIONS)
        s = self.x.sum(0)
        return self.f1_table(s[:k], s[k:2 * k], s[2 * k:], CONDITIONS)


# ---------------------------------------------------------------------------------------------
_WS = re.compile(r"\s+")


def encode_report(text: str, tokenizer) -> list[int]:
    """Token ids of one report, exactly as f1chexbert/LLaVA-Rad's ``tokenize`` builds them."""
    t = _WS.sub(" ", text.strip().replace("\n", " ")).strip()
    toks = tokenizer.tokenize(t)
    if not toks:
        return [tokenizer.cls_token_id, tokenizer.sep_token_id]
    ids = [tokenizer.cls_token_id] + tokenizer.convert_tokens_to_ids(toks) + [tokenizer.sep_token_id]
    if len(ids) > 512:
        ids = ids[:511] + [tokenizer.sep_token_id]
    return ids


def _labeler_class():
    import torch
    from torch import nn
    from transformers import BertModel

    class CheXbertLabeler(nn.Module):
        """bert_labeler: BERT, dropout 0.1, 13 x Linear(h, 4) + Linear(h, 2) on [CLS]."""

        def __init__(self, config):
            super().__init__()
            self.bert = BertModel(config)
            self.dropout = nn.Dropout(0.1)
            h = config.hidden_size
            self.linear_heads = nn.ModuleList([nn.Linear(h, 4) for _ in range(13)] + [nn.Linear(h, 2)])

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> list[torch.Tensor]:
            cls = self.bert(input_ids, attention_mask=attention_mask)[0][:, 0, :]
            cls = self.dropout(cls)
            return [head(cls) for head in self.linear_heads]

    return CheXbertLabeler


def _config_from_state(state: dict, config_dir: Path | None):
    from transformers import BertConfig

    if config_dir is not None and (config_dir / "config.json").is_file():
        return BertConfig.from_pretrained(str(config_dir))
    emb = state["bert.embeddings.word_embeddings.weight"]
    layers = {int(k.split(".")[3]) for k in state if k.startswith("bert.encoder.layer.")}
    hidden = emb.shape[1]
    return BertConfig(vocab_size=emb.shape[0], hidden_size=hidden, num_hidden_layers=max(layers) + 1,
                      num_attention_heads=max(1, hidden // 64),
                      intermediate_size=state["bert.encoder.layer.0.intermediate.dense.weight"].shape[0],
                      max_position_embeddings=state["bert.embeddings.position_embeddings.weight"].shape[0],
                      type_vocab_size=state["bert.embeddings.token_type_embeddings.weight"].shape[0])


def _load_state(path: Path) -> dict:
    import torch

    try:
        ckpt = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001
        raise ValueError(f"{path}: not a readable PyTorch checkpoint ({type(e).__name__}: {e}); the CheXbert "
                         "checkpoint is chexbert.pth from StanfordAIMI/RRG_scorers") from e
    state = ckpt.get("model_state_dict", ckpt) if isinstance(ckpt, dict) else None
    if not isinstance(state, dict) or not state:
        raise ValueError(f"{path}: expected a dict with 'model_state_dict' (the official CheXbert checkpoint) "
                         f"or a state dict, got {type(ckpt).__name__}")
    out = OrderedDict()
    for k, v in state.items():
        out[k[len("module."):] if k.startswith("module.") else k] = v
    if "bert.embeddings.word_embeddings.weight" not in out or "linear_heads.13.weight" not in out:
        raise ValueError(f"{path}: does not look like a CheXbert checkpoint (no bert.* encoder or no 14th "
                         f"linear head); first keys: {list(out)[:5]}")
    return out


def _checkpoint_candidates(weights) -> list[Path]:
    cands: list[Path] = []
    for src in (weights, os.environ.get("MXR0_CHEXBERT_WEIGHTS")):
        if src:
            p = Path(src)
            cands.append(p / HUB_FILE if p.is_dir() else p)
    hub = hf_cached_file(HUB_REPO, HUB_FILE)
    if hub is not None:
        cands.append(hub)
    cands.append(user_cache_dir("chexbert") / HUB_FILE)  # where f1chexbert keeps it
    return cands


def _tokenizer_candidates(ckpt: Path | None) -> list[Path]:
    dirs = []
    if os.environ.get("MXR0_CHEXBERT_TOKENIZER"):
        dirs.append(Path(os.environ["MXR0_CHEXBERT_TOKENIZER"]))
    if ckpt is not None:
        dirs.append(ckpt.parent)
    return dirs


def resolve_chexbert_files(weights: str | os.PathLike | None = None, tokenizer: object | None = None
                           ) -> tuple[Path, object]:
    """(checkpoint path, tokenizer source) or :class:`MissingWeightsError`.

    The checkpoint: ``weights`` (a file, or a folder holding chexbert.pth), then
    ``$MXR0_CHEXBERT_WEIGHTS``, then the Hugging Face cache (StanfordAIMI/RRG_scorers), then
    f1chexbert's cache (~/.cache/chexbert). The tokenizer: ``tokenizer`` if given, else
    ``$MXR0_CHEXBERT_TOKENIZER``, else the checkpoint's folder if it holds vocab.txt or
    tokenizer.json, else bert-base-uncased from the Hugging Face cache."""
    cands = _checkpoint_candidates(weights)
    ckpt = next((c for c in cands if c.is_file()), None)
    tok: object | None = tokenizer
    tok_dirs = _tokenizer_candidates(ckpt)
    if tok is None:
        tok = next((d for d in tok_dirs if (d / "vocab.txt").is_file() or (d / "tokenizer.json").is_file()), None)
    if tok is None and hf_cached_file(TOKENIZER_ID, "vocab.txt") is not None:
        tok = TOKENIZER_ID
    if ckpt is not None and tok is not None:
        return ckpt, tok
    missing, tried = [], []
    if ckpt is None:
        missing.append(f"the CheXbert checkpoint '{HUB_FILE}' (Hub: {HUB_REPO}, file {HUB_FILE}, about 420 MB)")
        tried += [str(c) for c in cands] + [f"the Hugging Face cache ({HUB_REPO}/{HUB_FILE})"]
    if tok is None:
        missing.append(f"the {TOKENIZER_ID} tokenizer (vocab.txt)")
        tried += [f"{d}/vocab.txt" for d in tok_dirs] + [f"the Hugging Face cache ({TOKENIZER_ID}/vocab.txt)"]
    raise MissingWeightsError("chexbert", (
        "CheXbert F1 needs " + " and ".join(missing) + ". Looked in: " + "; ".join(tried) + ". "
        "Put chexbert.pth and the vocab.txt of bert-base-uncased in one folder and pass --chexbert-weights "
        "FOLDER (or the .pth file), or set MXR0_CHEXBERT_WEIGHTS=PATH and MXR0_CHEXBERT_TOKENIZER=DIR; files "
        "already in the Hugging Face cache (HF_HOME) are found too. To fetch them where there is internet: "
        f"`hf download {HUB_REPO} {HUB_FILE}` and `hf download {TOKENIZER_ID} vocab.txt`. "
        "Or pass --skip-missing to report the other metrics."))


def _make_tokenizer(src: object):
    from transformers import AutoTokenizer, BertTokenizer

    if not isinstance(src, (str, Path)):
        return src  # already a tokenizer
    p = Path(src)
    if p.is_dir() and not (p / "tokenizer.json").is_file() and not (p / "tokenizer_config.json").is_file():
        # just vocab.txt (e.g. beside chexbert.pth): bert-base-uncased's settings
        return BertTokenizer.from_pretrained(str(p), do_lower_case=True, local_files_only=True)
    return AutoTokenizer.from_pretrained(str(src), local_files_only=True)


class CheXbert:
    """The CheXbert labeler: ``CheXbert.load(weights)``, then ``.label(texts)`` -> (N, 14) head classes."""

    def __init__(self, model, tokenizer, device: str = "cpu"):
        self.model, self.tokenizer, self.device = model, tokenizer, device
        self.last_run: dict = {}  # what the last ``label`` call ran: precision, reports relabelled in fp32

    @classmethod
    def load(cls, weights: str | os.PathLike | None = None, tokenizer: object | None = None,
             device: str | None = None) -> "CheXbert":
        """Load the official checkpoint layout (``model_state_dict``, ``module.`` prefixes) or a bare
        state dict; every parameter of the labeler must be present (f1chexbert loads with
        ``strict=False`` and would silently keep random heads)."""
        import torch

        ckpt, tok_src = resolve_chexbert_files(weights, tokenizer)
        state = _load_state(Path(ckpt))
        cfg_dir = Path(tok_src) if isinstance(tok_src, (str, Path)) and Path(tok_src).is_dir() else None
        config = _config_from_state(state, cfg_dir)
        model = _labeler_class()(config)
        expected = set(model.state_dict())
        extra = sorted(set(state) - expected - {"bert.embeddings.position_ids"})
        missing = sorted(expected - set(state))
        if missing or extra:
            raise ValueError(f"{ckpt}: the checkpoint does not match the CheXbert labeler: missing "
                             f"{missing[:8]}{'...' if len(missing) > 8 else ''}, unexpected "
                             f"{extra[:8]}{'...' if len(extra) > 8 else ''}")
        model.load_state_dict({k: v for k, v in state.items() if k in expected}, strict=True)
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        model.to(device).eval()
        tk = _make_tokenizer(tok_src)
        if len(tk) != config.vocab_size:
            raise ValueError(f"the tokenizer has {len(tk)} tokens but the checkpoint's vocabulary has "
                             f"{config.vocab_size}; CheXbert uses bert-base-uncased")
        return cls(model, tk, device)

    def label(self, texts: Sequence[str], batch_size: int = 32, sort_by_length: bool = True,
              dedupe: bool = True, precision: str = "fp32", margin: float = DEFAULT_MARGIN,
              max_relabel: float = DEFAULT_MAX_RELABEL) -> np.ndarray:
        """Head classes (N, 14) int8 for the reports. Reports are sorted by length and grouped into
        batches of at most ``batch_size`` with at most ~10% padded positions (see
        :func:`~mxr0.eval.reports.batching.length_batches`); identical texts are labelled once.
        ``batch_size=1, sort_by_length=False, dedupe=False`` is the f1chexbert way (one report per
        forward pass, in input order).

        ``precision``: ``"fp32"`` (default), ``"bf16"`` (autocast), ``"bf16-weights"`` (a bf16 copy of
        the weights) or ``"auto"`` (bf16 where the device has fast bf16, see :mod:`mxr0.precision`).
        In bf16 the labels do not change. The rule: a calibration sample of the reports (2%, at least 16,
        spread over the length order) is labelled in both precisions; their fp32 labels are kept and the
        largest |bf16 - fp32| logit difference on them, times ``SAFETY`` (4), or ``margin`` if larger, is the
        threshold; every other report whose bf16 logits have a top-two margin below the threshold in any of
        the 14 heads is labelled again in fp32. ``self.last_run`` records the precision that ran, the
        calibration, the threshold and how many reports were relabelled. More than ``max_relabel`` of
        the reports relabelled means bf16 buys little for this model: the labels stay exact and
        ``last_run["over_cap"]`` (and a warning) say so."""
        import torch


        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        texts = list(texts)
        if dedupe:
            uniq, inverse = np.unique(np.array(texts, dtype=object), return_inverse=True)
            uniq = list(uniq)
        else:
            uniq, inverse = texts, np.arange(len(texts))
        ids = [encode_report(t, self.tokenizer) for t in uniq]
        prec = resolve_precision(precision, self.device)
        run = {"precision": prec, "requested": precision, "reports": len(ids), "calibration_fp32": 0,
               "max_abs_logit_diff": None, "threshold": None, "relabelled_fp32": 0, "relabel_fraction": 0.0,
               "margin": float(margin), "max_relabel": float(max_relabel), "over_cap": False}
        with torch.inference_mode():
            logits = self._logits(ids, batch_size, sort_by_length, prec)
            out = logits.argmax(-1).numpy().astype(np.int8)
            if prec != "fp32" and len(ids):

                n = len(ids)
                by_len = np.argsort([len(x) for x in ids], kind="stable")
                k = min(n, max(CALIBRATION_MIN, int(np.ceil(CALIBRATION_SHARE * n))))
                calib = np.unique(by_len[np.linspace(0, n - 1, k).round().astype(int)])
                ref = self._logits([ids[i] for i in calib], batch_size, sort_by_length, "fp32")
                out[calib] = ref.argmax(-1).numpy().astype(np.int8)
                dev = float((ref - logits[calib])[ref > _NO_CLASS / 2].abs().max())
                thr = max(float(margin), SAFETY * dev)
                low = np.flatnonzero((top2_margin(logits).min(dim=1).values < thr).numpy())
                low = np.setdiff1d(low, calib)
                if len(low):
                    out[low] = self._logits([ids[i] for i in low], batch_size, sort_by_length,
                                            "fp32").argmax(-1).numpy().astype(np.int8)
                run.update(calibration_fp32=int(len(calib)), max_abs_logit_diff=dev, threshold=thr,
                           relabelled_fp32=int(len(low)), relabel_fraction=len(low) / n,
                           over_cap=len(low) / n > max_relabel)
                if run["over_cap"]:
                    import warnings

                    warnings.warn(f"CheXbert {prec}: {len(low)} of {n} reports ({100 * len(low) / n:.0f}%, cap "
                                  f"{100 * max_relabel:.0f}%) had a top-two logit margin below {thr:.3g} (bf16 moved "
                                  f"logits by up to {dev:.3g} on {len(calib)} calibration reports) and were labelled "
                                  "again in fp32: the labels are exact but bf16 is little or no faster for this "
                                  "model; use precision='fp32'", stacklevel=2)
        self.last_run = run
        return out[np.asarray(inverse)]

    def _logits(self, ids: list[list[int]], batch_size: int, sort_by_length: bool, precision: str):
        """Logits (n, 14, 4) float32 of the token-id lists (the No Finding head's two missing classes
        padded with a very negative value)."""
        import torch


        model = self._bf16_weights() if precision == "bf16-weights" else self.model
        mdtype = torch.bfloat16 if precision == "bf16-weights" else torch.float32
        out = torch.full((len(ids), len(CONDITIONS), 4), _NO_CLASS)
        pad = self.tokenizer.pad_token_id or 0
        for idx in length_batches([len(x) for x in ids], batch_size, sort=sort_by_length):
            L = max(len(ids[i]) for i in idx)
            x = torch.full((len(idx), L), pad, dtype=torch.long)
            mask = torch.zeros((len(idx), L), dtype=mdtype)
            for r, i in enumerate(idx):
                x[r, :len(ids[i])] = torch.tensor(ids[i])
                mask[r, :len(ids[i])] = 1
            with autocast(precision, self.device):
                logits = model(x.to(self.device), mask.to(self.device))
            rows = torch.as_tensor(idx)
            for h, lg in enumerate(logits):
                out[rows, h, :lg.shape[1]] = lg.float().cpu()
        return out

    def _bf16_weights(self):
        m = getattr(self, "_bf16_model", None)
        if m is None:
            import copy

            import torch

            m = self._bf16_model = copy.deepcopy(self.model).to(torch.bfloat16).eval()
        return m


def load_chexbert(weights=None, device=None) -> CheXbert:
    return CheXbert.load(weights, device=device)
