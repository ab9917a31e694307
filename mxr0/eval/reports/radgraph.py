"""RadGraph F1 (Delbrouck et al. 2022) with our own batched inference of the official RadGraph models.

**Scoring** follows ``radgraph.F1RadGraph`` (Stanford-AIMI/radgraph) reward levels, computed per
report pair and averaged over pairs:

* ``simple`` = RG_E: set of (entity tokens, label);
* ``partial`` = RG_ER: (tokens, label) for entities without relations and
  (tokens, label, True) for entities with at least one relation;
* ``complete`` (RG_ER-bar): (tokens, label) for entities without relations and
  (tokens, label, relation, target tokens) for each relation;

F1 of the two sets (precision and recall 0 when a set is empty). A pair whose hypothesis or
reference string is empty (``len == 0``), or whose annotation of either side has no entity,
scores 0 on every level and still counts in the mean, as in the reference. Entity tokens are
compared lower-cased, as upstream since PR #15 (radgraph 0.1.18 on PyPI lower-cases only the
relation tuples; pass ``case_insensitive=False`` for that behaviour).

**Inference**: radgraph 0.1.18 fails on transformers 5 (``encode_plus`` no longer exists), runs one
report per forward pass and downloads its models at first use. :class:`RadGraph` loads the same
model archives (``radgraph.tar.gz``, ``radgraph-xl.tar.gz``, ``modern-radgraph-xl.tar.gz`` from
``StanfordAIMI/RRG_scorers``: ``config.json``, ``weights.th``, ``vocabulary/``) from a local path and
re-implements the DyGIE forward pass the package uses (network: :mod:`.radgraph_dygie`): the report
pre-processing of each model type, words split into word pieces (mismatched embedder: wordpiece
vectors averaged per word, documents longer than ``max_length`` folded into segments), spans up to
``max_span_width`` words embedded as [start; end; width embedding], a NER feed-forward scorer with a
fixed 0 score for the null label, span pruning to ``ceil(words * spans_per_word)`` by a mention
scorer, pairwise relation scores ``FFNN([a; b; a*b]) + s_a + s_b`` with a null 0 score, and the
package's post-processing into
``{"text", "entities": {id: {tokens, label, start_ix, end_ix, relations}}}``. The transformer
config and tokenizer named in ``config.json`` come from a folder next to the weights
(``transformer/``), a local path, or the Hugging Face cache; they are never downloaded.
Reports are batched through the transformer; spans and relations are decoded per report.

**Precision**: ``annotate(..., precision="bf16")`` (autocast), ``"bf16-weights"`` or ``"auto"`` (see
`mxr0.precision`) runs the transformer in bf16; span, NER and relation scores are computed in fp32 from
its word vectors. The annotations do not change: a report whose smallest decision margin (top-two NER
score gap of any span, top-two relation score gap of any kept pair, or the pruner's gap between the last
kept and the first dropped span) is below the threshold is annotated again with an fp32 transformer. The
threshold is the larger of ``margin`` and 4x the largest |bf16 - fp32| score difference on a calibration
sample (2% of the reports, at least 16, annotated in fp32), as for CheXbert. ``self.last_run`` records the
precision, the calibration, the threshold and how many reports were redone.
"""

from __future__ import annotations

import hashlib
import math
import os
import re
import tarfile
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from mxr0.precision import autocast, resolve_precision

from .batching import length_batches
from .radgraph_dygie import decision_margin, decode_annotation, load_dygie, segment_documents, special_tokens
from .stats import AdditiveStats
from .weights import MissingWeightsError, hf_cached_file, user_cache_dir

__all__ = ["RadGraph", "RadGraphStats", "rewards", "preprocess_report", "resolve_radgraph_model",
           "MODEL_TYPES", "REWARD_NAMES"]

MODEL_TYPES = {"radgraph": "radgraph.tar.gz", "radgraph-xl": "radgraph-xl.tar.gz",
               "modern-radgraph-xl": "modern-radgraph-xl.tar.gz"}
HUB_REPO = "StanfordAIMI/RRG_scorers"
REWARD_NAMES = ("radgraph_f1_rg_e", "radgraph_f1_rg_er", "radgraph_f1_complete")
DEFAULT_MARGIN, DEFAULT_MAX_RELABEL = 0.1, 0.10  # as for CheXbert (chexbert.py)


# ---------------------------------------------------------------------------------------------
# Scoring
def _set_f1(h: set, r: set) -> float:
    p = sum(1 for x in h if x in r) / len(h) if h else 0.0
    rc = sum(1 for x in r if x in h) / len(r) if r else 0.0
    return 2 * p * rc / (p + rc) if p + rc > 0 else 0.0


def _candidates(ann: dict, level: str, lower: bool) -> set:
    ents = ann["entities"]

    def t(e):
        return e["tokens"].lower() if lower else e["tokens"]

    out = set()
    for e in ents.values():
        rels = e.get("relations") or []
        if level == "simple":
            out.add((t(e), e["label"]))
        elif level == "partial":
            out.add((t(e), e["label"], True) if rels else (t(e), e["label"]))
        else:
            if not rels:
                out.add((t(e), e["label"]))
            for rel in rels:
                # relation tuples are lower-cased in every radgraph version
                out.add((e["tokens"].lower(), e["label"], rel[0], ents[rel[1]]["tokens"].lower()))
    return out


def rewards(hyp_ann: dict, ref_ann: dict, case_insensitive: bool = True) -> tuple[float, float, float]:
    """(simple, partial, complete) F1 of one pair of RadGraph annotations."""
    if not hyp_ann.get("entities") or not ref_ann.get("entities"):
        return 0.0, 0.0, 0.0
    return tuple(_set_f1(_candidates(hyp_ann, lv, case_insensitive), _candidates(ref_ann, lv, case_insensitive))
                 for lv in ("simple", "partial", "complete"))  # type: ignore[return-value]


class RadGraphStats(AdditiveStats):
    """Per-pair RadGraph rewards; corpus value = mean over pairs."""

    names = REWARD_NAMES

    def __init__(self, hyps: Sequence[str], refs: Sequence[str], hyp_anns: Sequence[dict],
                 ref_anns: Sequence[dict], case_insensitive: bool = True):
        x = np.zeros((len(hyps), 3))
        for i, (h, r, ha, ra) in enumerate(zip(hyps, refs, hyp_anns, ref_anns)):
            if len(h) == 0 or len(r) == 0:
                continue
            x[i] = rewards(ha, ra, case_insensitive)
        self.per_pair = x
        super().__init__(x)

    def finalize(self, sums, counts):
        return sums / counts[:, None]


# ---------------------------------------------------------------------------------------------
# Pre-processing (radgraph.utils.preprocess_reports)
_WORDPUNCT = re.compile(r"\w+|[^\w\s]+")  # nltk.tokenize.wordpunct_tokenize
_RADGRAPH_V1 = re.compile(r"(?<! )(?=[/,-,:,.,!?()])|(?<=[/,-,:,.,!?()])(?! )")


def preprocess_report(text: str, model_type: str) -> list[str]:
    """Words fed to the model, as the radgraph package splits a report for ``model_type``."""
    if model_type == "radgraph":
        return _RADGRAPH_V1.sub(" ", text).split()
    # radgraph-xl and modern-radgraph-xl (and, through a bug in the package, every other type)
    t = text.replace("\\n", "  ").replace("\\f", "  ").replace("\\u2122", "      ").replace("\n", " ")
    t = t.replace('\\"', "``")
    t = re.sub(r"\s+", " ", t)
    t = " ".join(_WORDPUNCT.findall(t))
    t = t.replace(").", ") .").replace("%.", "% .").replace(".'", ". '").replace("%,", "% ,").replace("%)", "% )")
    return t.split()


# ---------------------------------------------------------------------------------------------
# Model files
def _is_model_dir(p: Path) -> bool:
    return (p / "config.json").is_file() and (p / "weights.th").is_file() and (p / "vocabulary").is_dir()


_TAR_DATA_FILTER = hasattr(tarfile, "data_filter")  # Python 3.12+, 3.8.17+, 3.9.17+, 3.10.12+, 3.11.4+


def _check_tar_members(tar: tarfile.TarFile, archive: Path) -> list[tarfile.TarInfo]:
    """The members of ``tar`` if every one is safe to extract, else a ValueError naming the archive and the
    member: our own ``filter="data"`` for Pythons without tar filters (and run on every version, before the
    filter). Refused: absolute paths, ``..`` components, links whose target (resolved within the archive)
    is outside it, paths that go through a symbolic link of the archive (the link-chain escape), device
    files and FIFOs. Setuid/setgid/sticky bits and group/other write permission are cleared."""
    import posixpath

    def bad_path(name: str) -> str | None:
        if name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":"):
            return "an absolute path"
        if ".." in name.replace("\\", "/").split("/"):
            return "a '..' path component"
        return None

    def outside(path: str) -> bool:  # lexically, relative to the archive root
        norm = posixpath.normpath(path)
        return norm == ".." or norm.startswith("../") or posixpath.isabs(norm)

    members = tar.getmembers()
    symlinks: set[str] = set()
    for m in members:
        name = m.name.replace("\\", "/")
        why = bad_path(name)
        parts = posixpath.normpath(name).split("/")
        if why is None and any("/".join(parts[:i]) in symlinks for i in range(1, len(parts))):
            why = "a path through a symbolic link of the archive"
        if why is None:
            if m.ischr() or m.isblk() or m.isfifo() or m.isdev():
                why = "a device file or FIFO"
            elif m.islnk():
                if bad_path(m.linkname) or outside(m.linkname):
                    why = f"a hard link pointing outside the archive (to {m.linkname!r})"
            elif m.issym():
                target = m.linkname.replace("\\", "/")
                if target.startswith("/") or outside(posixpath.join(posixpath.dirname(name), target)):
                    why = f"a symbolic link pointing outside the archive (to {m.linkname!r})"
                symlinks.add(posixpath.normpath(name))
            elif not (m.isfile() or m.isdir()):
                why = f"an unsupported member type {m.type!r}"
        if why:
            raise ValueError(f"{archive}: refusing to extract member {m.name!r}: {why}. A RadGraph model archive "
                             "holds only config.json, weights.th and vocabulary/; re-download it "
                             "(StanfordAIMI/RRG_scorers) or pass an extracted folder you trust with --radgraph-model")
        if m.isfile() or m.isdir():
            m.mode &= 0o755
    return members


def _extract(archive: Path) -> Path:
    key = hashlib.sha256(f"{archive.resolve()}:{archive.stat().st_size}:{archive.stat().st_mtime_ns}".encode()
                         ).hexdigest()[:16]
    dest = user_cache_dir("mxr0") / "radgraph" / f"{archive.name.split('.')[0]}-{key}"
    if _is_model_dir(dest):
        return dest
    tmp = dest.with_name(dest.name + f".tmp{os.getpid()}")
    tmp.mkdir(parents=True, exist_ok=True)
    import shutil

    try:
        with tarfile.open(archive, "r:*") as tar:
            members = _check_tar_members(tar, archive)
            if _TAR_DATA_FILTER:
                tar.extractall(tmp, members=members, filter="data")
            else:  # checked above, member by member
                tar.extractall(tmp, members=members)  # noqa: S202
    except (tarfile.TarError, ValueError) as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(e, tarfile.TarError):
            raise ValueError(f"{archive}: not a readable or safe tar archive ({type(e).__name__}: {e}); re-download "
                             "it or pass its extracted folder with --radgraph-model") from e
        raise
    found = tmp if _is_model_dir(tmp) else next((d for d in tmp.rglob("*") if d.is_dir() and _is_model_dir(d)), None)
    if found is None:
        shutil.rmtree(tmp, ignore_errors=True)
        raise ValueError(f"{archive}: no config.json + weights.th + vocabulary/ inside the archive")
    if not dest.exists():
        found.rename(dest)
    shutil.rmtree(tmp, ignore_errors=True)
    return dest


def resolve_radgraph_model(model: str | os.PathLike | None = None) -> Path:
    """A RadGraph model folder (or MissingWeightsError). ``model`` is a folder, a ``.tar.gz``
    archive, or a model type (radgraph, radgraph-xl, modern-radgraph-xl) looked up in
    ``$MXR0_RADGRAPH_MODEL``, the radgraph package's cache and the Hugging Face cache."""
    mtype = "radgraph-xl"
    tried: list[str] = []
    for src in (model, os.environ.get("MXR0_RADGRAPH_MODEL")):
        if not src:
            continue
        if str(src) in MODEL_TYPES:
            mtype = str(src)
            continue
        p = Path(src)
        if p.is_file():
            return _extract(p)
        if _is_model_dir(p):
            return p
        for sub in (p / mtype, *(p / t for t in MODEL_TYPES)):
            if _is_model_dir(sub):
                return sub
        tried.append(str(p))
    base = user_cache_dir("radgraph")
    if base.is_dir():
        for d in sorted(base.glob(f"*/{mtype}")):
            if _is_model_dir(d):
                return d
    tried.append(f"{base}/<version>/{mtype}")
    hub = hf_cached_file(HUB_REPO, MODEL_TYPES[mtype])
    if hub is not None:
        return _extract(hub)
    tried.append(f"the Hugging Face cache ({HUB_REPO}/{MODEL_TYPES[mtype]})")
    raise MissingWeightsError("radgraph", (
        f"RadGraph F1 needs the {mtype} model ({HUB_REPO}, file {MODEL_TYPES[mtype]}: config.json, weights.th, "
        "vocabulary/) and the config + tokenizer of the transformer named in its config.json. Looked in: "
        + "; ".join(tried) + ". Pass --radgraph-model PATH (the .tar.gz or its extracted folder) or set "
        "MXR0_RADGRAPH_MODEL=PATH; put the transformer's config.json and tokenizer files in a 'transformer/' "
        "folder beside weights.th (or have them in the Hugging Face cache). To fetch where there is internet: "
        f"`hf download {HUB_REPO} {MODEL_TYPES[mtype]}`. Or pass --skip-missing to report the other metrics."))


def _calibration_sample(order, n: int) -> list[int]:
    """Indices of the reports annotated in fp32 to calibrate the threshold: evenly spread over ``order``
    (the reports sorted by length), 2% of them and at least 16, as for CheXbert."""
    from .chexbert import CALIBRATION_MIN, CALIBRATION_SHARE

    k = min(n, max(CALIBRATION_MIN, int(np.ceil(CALIBRATION_SHARE * n))))
    return sorted({int(order[j]) for j in np.linspace(0, n - 1, k).round().astype(int)})


def _score_deviation(dev: float, ref: tuple, low: tuple) -> float:
    """``dev`` raised to the largest |fp32 - bf16| score difference of one report (scores with margins)."""
    if ref[1] is not None:
        dev = max(dev, float((ref[1] - low[1]).abs().max()), float((ref[5] - low[5]).abs().max()))
        if ref[2] == low[2] and ref[3].numel():
            dev = max(dev, float((ref[3] - low[3]).abs().max()))
    return dev


def _run_record(prec: str, requested: str, n: int, n_calib: int, dev: float, thr: float, n_redo: int,
                margin: float, max_relabel: float) -> dict:
    """``RadGraph.last_run``: what one ``annotate`` call ran."""
    frac = n_redo / n if n else 0.0
    return {"precision": prec, "requested": requested, "reports": n,
            "calibration_fp32": n_calib, "max_abs_score_diff": dev if n_calib else None,
            "threshold": thr if n_calib else None, "relabelled_fp32": n_redo, "relabel_fraction": frac,
            "margin": float(margin), "max_relabel": float(max_relabel),
            "over_cap": prec != "fp32" and frac > max_relabel}


def _warn_over_cap(run: dict, thr: float) -> None:
    import warnings

    warnings.warn(f"RadGraph {run['precision']}: {run['relabelled_fp32']} of {run['reports']} reports "
                  f"({100 * run['relabel_fraction']:.0f}%, cap {100 * run['max_relabel']:.0f}%) had a decision margin "
                  f"below {thr:.3g} and were annotated again in fp32: the annotations are exact but bf16 "
                  "is little or no faster for this model", stacklevel=3)


class RadGraph:
    """RadGraph entity/relation extraction from an official model archive (see the module docstring)."""

    def __init__(self, model, tokenizer, cfg: dict, ner_labels: list[str], rel_labels: list[str],
                 model_type: str, device: str = "cpu"):
        self.model, self.tokenizer, self.cfg = model, tokenizer, cfg
        self.ner_labels, self.rel_labels = ner_labels, rel_labels
        self.model_type, self.device = model_type, device
        mc = cfg["model"]
        self.max_span_width = int(mc["max_span_width"])
        self.spans_per_word = float(mc["modules"]["relation"]["spans_per_word"])
        tok_cfg = cfg.get("dataset_reader", {}).get("token_indexers", {}).get("bert", {})
        emb_cfg = mc.get("embedder", {}).get("token_embedders", {}).get("bert", {})
        self.max_length = emb_cfg.get("max_length", tok_cfg.get("max_length"))
        self.prefix, self.suffix = special_tokens(tokenizer)
        self.n_start, self.n_end = len(self.prefix), len(self.suffix)
        limit = getattr(model.transformer.config, "max_position_embeddings", 512)
        self.segment_len = int(self.max_length) if self.max_length else int(limit)
        self._wp_cache: dict[str, list[int]] = {}
        self.last_run: dict = {}  # what the last ``annotate`` call ran: precision, reports redone in fp32

    @classmethod
    def load(cls, model: str | os.PathLike | None = None, device: str | None = None) -> "RadGraph":
        return cls(*load_dygie(resolve_radgraph_model(model), device))

    # -----------------------------------------------------------------------------------------
    def _wordpieces(self, word: str) -> list[int]:
        ids = self._wp_cache.get(word)
        if ids is None:
            ids = list(self.tokenizer(word, add_special_tokens=False)["input_ids"])
            self._wp_cache[word] = ids
        return ids

    def _bf16_transformer(self):
        m = getattr(self, "_bf16_tf", None)
        if m is None:
            import copy

            m = self._bf16_tf = copy.deepcopy(self.model.transformer).to(torch.bfloat16).eval()
        return m

    def _embed_words(self, docs: list[list[str]], batch_size: int, precision: str = "fp32"):
        """Word vectors of each document: the mean of its word pieces' vectors (mismatched embedder);
        zeros for a word without word pieces. Long documents are folded into segments of
        ``max_length`` as allennlp does; all segments of all documents go through the transformer in
        length-sorted batches."""
        transformer = self._bf16_transformer() if precision == "bf16-weights" else self.model.transformer
        eff = self.segment_len - self.n_start - self.n_end
        seg_rows, piece_row, piece_col, piece_word, n_words = segment_documents(
            docs, self._wordpieces, eff, self.prefix, self.suffix)
        hidden = self.model.transformer.config.hidden_size
        L = max(len(r) for r in seg_rows)
        states = torch.zeros((len(seg_rows), L, hidden), device=self.device)
        pad = self.tokenizer.pad_token_id or 0
        for idx in length_batches([len(r) for r in seg_rows], batch_size):
            Lb = max(len(seg_rows[i]) for i in idx)
            x = torch.full((len(idx), Lb), pad, dtype=torch.long)
            m = torch.zeros((len(idx), Lb), dtype=torch.long)
            for r, i in enumerate(idx):
                x[r, :len(seg_rows[i])] = torch.tensor(seg_rows[i])
                m[r, :len(seg_rows[i])] = 1
            with autocast(precision, self.device):
                h = transformer(input_ids=x.to(self.device), attention_mask=m.to(self.device))[0]
            states[torch.as_tensor(idx, device=self.device), :Lb] = h.float()
        sums = torch.zeros((sum(n_words), hidden), device=self.device)
        counts = torch.zeros((sum(n_words), 1), device=self.device)
        if piece_word:
            pw = torch.tensor(piece_word, device=self.device)
            vec = states[torch.tensor(piece_row, device=self.device), torch.tensor(piece_col, device=self.device)]
            sums.index_add_(0, pw, vec)
            counts.index_add_(0, pw, torch.ones((len(piece_word), 1), device=self.device))
        wv = sums / counts.clamp_min(1)
        return list(torch.split(wv, n_words))

    def _embedded(self, docs: list[list[str]], indices, batch_size: int, precision: str):
        """``(i, word vectors of docs[i])`` for each of ``indices``, embedded ``batch_size`` documents at a time."""
        for s in range(0, len(indices), max(batch_size, 1)):
            idx = indices[s:s + batch_size]
            yield from zip(idx, self._embed_words([docs[i] for i in idx], batch_size, precision))

    def _scores(self, words: list[str], wv, with_margin: bool = False):
        """One document: (spans, NER scores (spans, 1 + labels) with the null column first, indices of
        the spans kept by the pruner (ascending), relation scores (kept, kept, 1 + labels)); with
        ``with_margin`` also the smallest decision margin (see the module docstring) and the mention scores."""
        L = len(words)
        W = self.max_span_width
        spans = [(s, e) for s in range(L) for e in range(s, min(s + W, L))]
        if not spans:
            return (spans, None, [], None, float("inf"), None) if with_margin else (spans, None, [], None)
        st = torch.tensor([s for s, _ in spans], device=self.device)
        en = torch.tensor([e for _, e in spans], device=self.device)
        emb = torch.cat([wv[st], wv[en], self.model.width(en - st)], dim=-1)
        ner = self.model.ner_out(self.model.ner_ff(emb))
        ner = torch.cat([ner.new_zeros((ner.shape[0], 1)), ner], dim=-1)
        mention = self.model.prune_out(self.model.prune_ff(emb)).squeeze(-1)
        k = min(max(int(math.ceil(L * self.spans_per_word)), 1), len(spans))
        top = torch.sort(torch.topk(mention, k).indices).values
        te, ts = emb[top], mention[top]
        kk = te.shape[0]
        pair = torch.cat([te[:, None, :].expand(kk, kk, -1), te[None, :, :].expand(kk, kk, -1),
                          te[:, None, :] * te[None, :, :]], dim=-1)
        rel = self.model.rel_out(self.model.rel_ff(pair)) + ts[:, None, None] + ts[None, :, None]
        rel = torch.cat([rel.new_zeros((kk, kk, 1)), rel], dim=-1)
        if not with_margin:
            return spans, ner, top.tolist(), rel
        return spans, ner, top.tolist(), rel, decision_margin(ner, rel, mention, k, len(spans)), mention

    def _decode(self, words: list[str], wv, scores=None) -> dict:
        scores = scores if scores is not None else self._scores(words, wv)
        return decode_annotation(words, scores, self.ner_labels, self.rel_labels)

    def annotate(self, texts: Sequence[str], batch_size: int = 16, precision: str = "fp32",
                 margin: float = DEFAULT_MARGIN, max_relabel: float = DEFAULT_MAX_RELABEL) -> list[dict]:
        """RadGraph annotations of each text (empty text -> the package's "None" stand-in).

        ``precision``: ``fp32`` (default), ``bf16``, ``bf16-weights`` or ``auto``; outside fp32 a report
        whose smallest decision margin is below ``margin`` is annotated again in fp32 (module docstring),
        so the annotations equal the fp32 ones. More than ``max_relabel`` of the reports redone: a warning
        (bf16 buys little for this model) and ``last_run["over_cap"]``."""
        prec = resolve_precision(precision, self.device)
        uniq = list(dict.fromkeys(texts))
        docs = [preprocess_report(t if t else "None", self.model_type) for t in uniq]
        out: dict[str, dict] = {}
        redo: list[int] = []
        pending: dict[int, tuple] = {}  # bf16 scores of each report, decided once the threshold is known
        order = np.argsort([len(d) for d in docs], kind="stable")
        calib = _calibration_sample(order, len(uniq)) if prec != "fp32" and uniq else []
        with torch.inference_mode():
            for i, wv in self._embedded(docs, order, batch_size, prec):
                if prec == "fp32":
                    out[uniq[i]] = self._decode(docs[i], wv)
                else:
                    pending[int(i)] = (wv, self._scores(docs[i], wv, with_margin=True))
            dev = 0.0
            for i, wv in self._embedded(docs, calib, batch_size, "fp32"):
                ref = self._scores(docs[i], wv, with_margin=True)
                dev = _score_deviation(dev, ref, pending.pop(i)[1])
                out[uniq[i]] = self._decode(docs[i], wv, ref)
            thr = max(float(margin), 4.0 * dev)
            for i, (wv, sc) in pending.items():
                if sc[4] < thr:
                    redo.append(i)
                else:
                    out[uniq[i]] = self._decode(docs[i], wv, sc)
            for i, wv in self._embedded(docs, redo, batch_size, "fp32"):
                out[uniq[i]] = self._decode(docs[i], wv)
        self.last_run = _run_record(prec, precision, len(uniq), len(calib), dev, thr, len(redo), margin, max_relabel)
        if self.last_run["over_cap"]:
            _warn_over_cap(self.last_run, thr)
        return [out[t] for t in texts]
