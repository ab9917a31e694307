"""Rule-based CheXpert-style labeler for report text, and a finding-level F1 on top of it.

Fast, dependency-free (``re`` and numpy) stand-in for the CheXbert model of :mod:`.chexbert`: used
to judge generated reports on the phantom dataset (:mod:`mxr0.data.phantom`) and as a quick
offline check on real reports. It is *not* CheXbert and its numbers must not be reported as
CheXbert F1; the output of :func:`finding_f1` names itself ``rules_f1_*``.

Labels (``mxr0.data.records.CHEXPERT_LABELS``, CheXbert order): ``1`` positive, ``0`` negative,
``-1`` uncertain, ``None`` not mentioned.

How a report is labelled (CheXpert-labeler style, regular expressions instead of a parser):

1. **Sentences.** The text is lower-cased, whitespace-collapsed and split at ``.``/``!``/``?``
   followed by a space or the end (so ``2.9 cm`` stays whole) and at newlines; each sentence is
   cut into *clauses* at ``;``, ``:``, and the words ``but``, ``however``, ``although``, ``though``,
   ``whereas``, ``which``, ``except``, ``other than``, ``apart from``, ``aside from``. Negation and
   uncertainty never cross a clause boundary; commas and ``or``/``and`` do not end a clause, so
   "No pleural effusion, consolidation or pneumothorax" negates all three.
2. **Mentions.** Each observation has phrase patterns (``_MENTIONS``), with the synonyms common in
   real reports: effusion / pleural fluid; pneumothorax; cardiomegaly / enlarged heart / enlarged
   cardiac silhouette / the heart is enlarged; widened mediastinum / mediastinal widening;
   edema / (pulmonary) vascular congestion / CHF; consolidation; atelectasis / collapse;
   nodule / mass / (lung) lesion; opacity / opacities / opacification / infiltrate / airspace
   disease (``density`` only when the clause names no other lung finding: "Linear density may
   represent atelectasis" is an atelectasis); fracture; pneumonia; pleural thickening / plaque;
   devices (endotracheal / enteric / nasogastric / feeding / chest tube, tracheostomy, central
   venous / IJ / subclavian / PICC line or catheter, catheter, pacemaker / pacer / ICD / leads,
   wires, a bare "tube(s)", "lines and tubes", "support devices"; a bare "line" is not a device:
   "pleural line", "Kerley lines").
3. **Status of a mention**, checked in this order within its clause:
   (a) *pre-negation uncertainty* -- "cannot be excluded", "not excluded", "cannot rule out",
   "not be ruled out" anywhere in the clause -> ``-1``;
   (b) *negation* -- a cue before the mention ("no", "without", "negative for", "free of",
   "absence of", "no evidence of", "not", "clear of", "resolution of", "removal of") or after it
   ("resolved", "ruled out", "removed", "absent", "not seen / identified / present ...",
   "no longer") -> ``0``; "no change / no significant change / no increase ..." are not negations;
   (c) *uncertainty* -- "possible", "possibly", "may", "might", "could", "questionable",
   "question of", "suspicious for", "suspected", "concern(ing) for", "suggest(s/ive/ing)",
   "probable", "probably", "likely", "presumed", "versus"/"vs", "differential", "equivocal",
   "indeterminate", "borderline", "not excluded", "rule out" (while "ruled out" negates),
   "evaluate for" anywhere in the clause -> ``-1``. "Likely" counts
   as uncertain here (as in the CheXpert labeler's guidelines, where "likely" findings are
   uncertain);
   (d) otherwise ``1``.
4. **Normal phrasing** gives negatives: "the lungs are (otherwise) clear" / "clear lungs" ->
   Lung Opacity 0 and Consolidation 0; a clause that speaks of the heart / cardiac size or
   silhouette as "normal", "within normal limits", "unremarkable" or "not enlarged / widened" (and no
   "enlarged", "widened", "prominent", "increased" otherwise) -> Cardiomegaly 0; of the mediastinum / mediastinal contours -> Enlarged Cardiomediastinum 0;
   "cardiomediastinal silhouette / contours ... normal" -> both 0.
5. **Several mentions** of one observation: positive > uncertain > negative (the CheXpert
   labeler's aggregation): any ``1`` wins, else any ``-1``, else ``0``, else ``None``.
6. **Hierarchy** (``hierarchy=True``, as the phantom and CheXpert's label hierarchy do): a
   positive or uncertain Consolidation makes Lung Opacity at least as strong (1 > -1).
7. **No Finding** = ``1`` when none of the 12 pathologies (all observations except Support Devices
   and No Finding) is ``1`` or ``-1``; otherwise ``0``. Never ``None``: an empty report, or one
   that only says "No acute cardiopulmonary abnormality", is No Finding 1; a report with only a
   tube is No Finding 1 (Support Devices do not count, as in CheXpert). Explicit "no finding"
   phrases need no pattern: they mention no pathology.

Finding-level F1 (:func:`finding_f1`) uses exactly the CheXbert F1 conventions of
:mod:`.chexbert` (README "CheXbert F1"): references are the truth; a study is positive for an
observation when its label is ``1``, plus ``-1`` with ``uncertain="positive"``; ``0`` and ``None``
are negative; per-observation F1 with ``zero_division=0`` (an observation positive nowhere scores
0 and stays in the macro mean); F1-14 over all 14 observations (No Finding included) and F1-5
over Atelectasis, Cardiomegaly, Consolidation, Edema, Pleural Effusion; micro and macro as
sklearn's ``classification_report``. The F1 arithmetic is :meth:`CheXbertStats._f1`.
"""

from __future__ import annotations

import re
from typing import Iterable, Mapping, Sequence

import numpy as np

from mxr0.data.records import CHEXPERT_LABELS

from .chexbert import TOP5, CheXbertStats
from .stats import AdditiveStats

__all__ = ["label_report", "label_reports", "finding_f1", "majority_baseline_f1", "labels_to_matrix", "change_report",
           "change_f1", "CHANGE_STATUSES", "CHANGE_LABELS",
           "PATHOLOGIES", "RULES_CONVENTION"]

PATHOLOGIES: tuple[str, ...] = tuple(n for n in CHEXPERT_LABELS if n not in ("Support Devices", "No Finding"))

RULES_CONVENTION = (
    "rule-based labeler (mxr0.eval.reports.rules, not CheXbert); references are the truth; positive = label 1"
    "{unc}; 0 and None = negative; per-label F1 with zero_division=0; F1-14 over the 14 CheXpert observations "
    "in CheXbert order (No Finding included), F1-5 over Atelectasis, Cardiomegaly, Consolidation, Edema, "
    "Pleural Effusion; micro and macro as sklearn classification_report (CheXbert F1 conventions)")

# ---------------------------------------------------------------------------------------------
# patterns
_MENTIONS: dict[str, list[str]] = {
    "Enlarged Cardiomediastinum": [
        r"widen\w*\s+(?:of\s+)?(?:the\s+)?(?:superior\s+)?mediastin\w*",
        r"mediastin\w*\s+(?:contours?\s+|silhouette\s+)?(?:widening|enlargement|prominence)",
        r"(?:widened|enlarged|prominent)\s+(?:superior\s+)?(?:cardio)?mediastin\w*(?:\s+(?:silhouette|contours?))?",
        r"(?:cardio)?mediastin\w*(?:\s+(?:silhouette|contours?))?\s+(?:is|are|appears?|remains?)\s+"
        r"(?:\w+ly\s+)?(?:widened|enlarged|prominent)",
    ],
    "Cardiomegaly": [
        r"cardiomegaly",
        r"cardiac\s+enlargement",
        r"enlarge\w*\s+(?:of\s+)?(?:the\s+)?(?:heart|cardiac\s+silhouette)",
        r"(?:enlarged|prominent)\s+(?:heart|cardiac(?:\s+silhouette|\s+size)?)",
        r"(?:heart|cardiac\s+silhouette|heart\s+size|cardiac\s+size)\s+(?:is|are|appears?|remains?)\s+"
        r"(?:\w+ly\s+)?(?:enlarged|increased|prominent)",
    ],
    "Lung Opacity": [
        r"opaci\w*",
        r"infiltrat\w*",
        r"air[\s-]?space\s+(?:disease|process)",
        r"ground[\s-]glass",
    ],
    "Lung Lesion": [
        r"nodul\w*",
        r"mass(?:es)?(?!\s+effect)",
        r"(?:lung|pulmonary|cavitary|cavitating)\s+lesions?",
        r"neoplasm\w*",
        r"tumou?rs?",
        r"carcinoma",
    ],
    "Edema": [
        r"edema",
        r"oedema",
        r"(?:pulmonary\s+)?(?:vascular|venous)\s+congestion",
        r"pulmonary\s+congestion",
        r"congestive\s+heart\s+failure",
        r"\bchf\b",
    ],
    "Consolidation": [r"consolidat\w*"],
    "Pneumonia": [r"pneumonia\w*", r"pneumonitis"],
    "Atelectasis": [r"atelecta\w*", r"(?:lobar|lobe|segmental)\s+collapse", r"collapse\s+of\s+the\s+\w+\s+(?:\w+\s+)?lobe"],
    "Pneumothorax": [r"pneumothora\w*", r"hydropneumothora\w*"],
    "Pleural Effusion": [r"(?<!pericardial\s)effusions?", r"pleural\s+fluid", r"hydrothorax"],
    "Pleural Other": [r"pleural\s+(?:thickening|plaques?|scarring|calcification)", r"fibrothorax"],
    "Fracture": [r"fractur\w*"],
    "Support Devices": [
        r"(?:endotracheal|et|enteric|nasogastric|ng|orogastric|og|feeding|dobhoff|chest|tracheostomy|gastric|"
        r"nasoenteric)\s+tubes?",
        r"\bett\b", r"tracheostomy", r"\bpicc\b",
        r"(?:central|venous|\bij\b|jugular|subclavian|picc|arterial|swan[\s-]ganz|midline)\s+(?:venous\s+)?"
        r"(?:lines?|catheters?)",
        r"catheters?",
        r"pacemaker\w*", r"\bpacer\b", r"\baicd\b", r"\bicd\b", r"defibrillator", r"\bleads?\b",
        r"\bwires?\b",
        r"(?:lines?|tubes?)\s+(?:and|or)\s+(?:lines?|tubes?)",
        r"support\s+devices?",
        r"\btubes?\b",
    ],
}
_DENSITY = re.compile(r"\bdensit(?:y|ies)\b")
_OTHER_LUNG = ("Lung Lesion", "Edema", "Consolidation", "Pneumonia", "Atelectasis", "Lung Opacity")
_MENTION_RE = {k: re.compile(r"\b(?:" + "|".join(v) + r")") for k, v in _MENTIONS.items()}

_CLAUSE_SPLIT = re.compile(r"[;:]|\b(?:but|however|although|though|whereas|which|except|other\s+than|apart\s+from|"
                           r"aside\s+from)\b")
_SENT_SPLIT = re.compile(r"(?<=[.!?])\s+|\n+|[.!?]$")
_PRE_UNCERTAIN = re.compile(r"\b(?:cannot|can\s*not|can't|could\s+not|not)\s+(?:be\s+)?(?:entirely\s+|completely\s+|"
                            r"definitely\s+)?(?:excluded|exclude|ruled\s+out|rule\s+out)\b|\bdifficult\s+to\s+exclude\b")
_PSEUDO_NEG = re.compile(r"\bno\s+(?:significant\s+|interval\s+|appreciable\s+|substantial\s+|definite\s+)?"
                         r"(?:change|increase|decrease|worsening|improvement|progression)\w*|\bnot\s+only\b|"
                         r"\bnot\s+(?:significantly\s+)?changed\b")
_NEG_PRE = re.compile(r"\b(?:no|without|negative\s+for|free\s+of|absence\s+of|absent|not|clear\s+of|resolution\s+of|"
                      r"removal\s+of|rather\s+than|ruled\s+out|neither|nor)\b")
_NEG_POST = re.compile(r"\b(?:resolved|resolving|ruled\s+out|removed|absent|no\s+longer|not\s+(?:\w+\s+)?"
                       r"(?:seen|identified|present|visualized|appreciated|evident|demonstrated|detected|noted))\b")
_UNCERTAIN = re.compile(r"\b(?:possible|possibly|may|might|could|questionabl[ey]|question\s+of|suspicious|suspected|"
                        r"suspect|suspicion|concern\s+for|concerning|suggest\w*|probable|probably|likely|presumed|"
                        r"presumably|versus|vs|differential|equivocal|indeterminate|borderline|cannot\s+be\s+excluded|"
                        r"not\s+excluded|uncertain|rule\s+out|r/o|evaluate\s+for)\b")
_LUNGS_CLEAR = re.compile(r"\b(?:lungs?|lung\s+fields?)\s+(?:are|is|remain|appear)?\s*(?:otherwise\s+)?clear\b|"
                          r"\bclear\s+lungs?\b")
_NORMAL = re.compile(r"\b(?:normal|within\s+normal\s+limits|unremarkable|not\s+(?:\w+\s+)?(?:enlarged|widened)|upper\s+limits?\s+of\s+normal)\b")
_ABNORMAL = re.compile(r"\b(?:enlarg\w*|widen\w*|promin\w*|increas\w*|abnormal|cardiomegaly|top\s+normal|"
                       r"upper\s+limits?\s+of\s+normal)\b")
_NOT_ENLARGED = re.compile(r"\bnot\s+(?:\w+\s+)?(?:enlarged|widened)\b")
_HEART = re.compile(r"\b(?:heart|cardiac)\b")
_MEDIASTINUM = re.compile(r"\bmediastin\w*")
_CARDIOMED = re.compile(r"\bcardiomediastin\w*")

_RANK = {1: 3, -1: 2, 0: 1}


def _merge(a: int | None, b: int | None) -> int | None:
    """positive > uncertain > negative > None."""
    if a is None:
        return b
    if b is None:
        return a
    return a if _RANK[a] >= _RANK[b] else b


def _sentences(text: str) -> list[str]:
    text = re.sub(r"[ \t\r\f\v]+", " ", (text or "").lower())
    return [s.strip() for s in _SENT_SPLIT.split(text) if s and s.strip()]


def _clauses(sentence: str) -> list[str]:
    return [c.strip(" ,") for c in _CLAUSE_SPLIT.split(sentence) if c.strip(" ,")]


def _status(clause: str, start: int, end: int) -> int:
    if _PRE_UNCERTAIN.search(clause):
        return -1
    masked = _PSEUDO_NEG.sub(lambda m: "_" * len(m.group()), clause)
    if _NEG_PRE.search(masked[:start]) or _NEG_POST.search(masked[end:]):
        return 0
    if _UNCERTAIN.search(masked):
        return -1
    return 1


def _label_clause(clause: str, out: dict[str, int | None]) -> None:
    found: dict[str, list[tuple[int, int]]] = {}
    for name, rx in _MENTION_RE.items():
        spans = [m.span() for m in rx.finditer(clause)]
        if spans:
            found[name] = spans
    if not any(n in found for n in _OTHER_LUNG):
        spans = [m.span() for m in _DENSITY.finditer(clause)]
        if spans:
            found["Lung Opacity"] = spans
    for name, spans in found.items():
        for s, e in spans:
            out[name] = _merge(out[name], _status(clause, s, e))
    # normal phrasing -> negatives
    if _LUNGS_CLEAR.search(clause) and not _NEG_PRE.search(clause[:_LUNGS_CLEAR.search(clause).start()]):
        out["Lung Opacity"] = _merge(out["Lung Opacity"], 0)
        out["Consolidation"] = _merge(out["Consolidation"], 0)
    if _NORMAL.search(clause) and not _ABNORMAL.search(_NOT_ENLARGED.sub(" ", clause)):
        if _CARDIOMED.search(clause):
            out["Cardiomegaly"] = _merge(out["Cardiomegaly"], 0)
            out["Enlarged Cardiomediastinum"] = _merge(out["Enlarged Cardiomediastinum"], 0)
        else:
            if _HEART.search(clause):
                out["Cardiomegaly"] = _merge(out["Cardiomegaly"], 0)
            if _MEDIASTINUM.search(clause):
                out["Enlarged Cardiomediastinum"] = _merge(out["Enlarged Cardiomediastinum"], 0)


def label_report(text: str | None, hierarchy: bool = True) -> dict[str, int | None]:
    """The 14 CheXpert observations of one report: 1 / 0 / -1 / None (module docstring: the rules)."""
    out: dict[str, int | None] = {n: None for n in CHEXPERT_LABELS}
    for sent in _sentences(text or ""):
        for clause in _clauses(sent):
            _label_clause(clause, out)
    if hierarchy and out["Consolidation"] in (1, -1):
        out["Lung Opacity"] = _merge(out["Lung Opacity"], out["Consolidation"])
    out["No Finding"] = 0 if any(out[n] in (1, -1) for n in PATHOLOGIES) else 1
    return out


def label_reports(texts: Iterable[str | None], hierarchy: bool = True) -> list[dict[str, int | None]]:
    """:func:`label_report` of each text (identical texts labelled once)."""
    cache: dict[str, dict] = {}
    res = []
    for t in texts:
        key = t or ""
        if key not in cache:
            cache[key] = label_report(key, hierarchy=hierarchy)
        res.append(dict(cache[key]))
    return res


# ---------------------------------------------------------------------------------------------
def _check_uncertain(uncertain: str) -> None:
    if uncertain not in ("positive", "negative"):
        raise ValueError(f"uncertain must be 'positive' or 'negative', got {uncertain!r}")


def labels_to_matrix(items: Sequence[str | Mapping | None], labels: Sequence[str] = CHEXPERT_LABELS,
                     uncertain: str = "negative") -> np.ndarray:
    """Texts (labelled by :func:`label_report`) or label dicts -> bool positives (N, len(labels))."""
    _check_uncertain(uncertain)
    pos = (1, -1) if uncertain == "positive" else (1,)
    texts = [x for x in items if not isinstance(x, Mapping)]
    lab = iter(label_reports(texts)) if texts else iter(())
    rows = []
    for x in items:
        d = x if isinstance(x, Mapping) else next(lab)
        rows.append([_as_int(d.get(n)) in pos for n in labels])
    return np.asarray(rows, dtype=bool).reshape(len(items), len(labels))


def _as_int(v) -> int | None:
    if v is None:
        return None
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return None if f != f else int(f)  # NaN -> None


def _f1_from_matrices(yp: np.ndarray, yt: np.ndarray, labels: Sequence[str], uncertain: str,
                      prefix: str = "rules_f1") -> dict:
    tp = (yp & yt).sum(0).astype(float)
    fp = (yp & ~yt).sum(0).astype(float)
    fn = (~yp & yt).sum(0).astype(float)
    f1 = CheXbertStats._f1(tp, fp, fn)
    labels = list(labels)
    out: dict = {}
    out[f"{prefix}_14_micro"] = float(CheXbertStats._f1(tp.sum(), fp.sum(), fn.sum())) if labels else 0.0
    out[f"{prefix}_14_macro"] = float(f1.mean()) if labels else 0.0
    idx = [labels.index(c) for c in TOP5 if c in labels]
    if idx:
        out[f"{prefix}_5_micro"] = float(CheXbertStats._f1(tp[idx].sum(), fp[idx].sum(), fn[idx].sum()))
        out[f"{prefix}_5_macro"] = float(f1[idx].mean())
    out["per_label"] = CheXbertStats.f1_table(tp, fp, fn, labels)
    out["n"] = int(yp.shape[0])
    out["uncertain"] = uncertain
    out["labels"] = labels
    out["convention"] = RULES_CONVENTION.format(unc=" or -1 (uncertain counted as positive)" if uncertain == "positive"
                                                else " (uncertain -1 counted as negative)")
    return out


def finding_f1(preds: Sequence[str | Mapping | None], refs: Sequence[str | Mapping | None],
               labels: Sequence[str] = CHEXPERT_LABELS, uncertain: str = "negative") -> dict:
    """Finding-level F1 of predicted reports against references.

    ``preds``: report texts (labelled by :func:`label_report`) or label dicts; ``refs``: texts or
    label dicts (e.g. the records' ground-truth ``labels``). Returns ``rules_f1_14_micro``,
    ``rules_f1_14_macro``, ``rules_f1_5_micro``, ``rules_f1_5_macro`` ("14" = all of ``labels``;
    the "5" keys only when ``labels`` contains competition labels), ``per_label`` (f1, precision,
    recall, support), ``n``, ``uncertain``, ``labels`` and ``convention`` (CheXbert F1 conventions).
    """
    if len(preds) != len(refs):
        raise ValueError(f"preds and refs must have the same length, got {len(preds)} and {len(refs)}")
    yp = labels_to_matrix(preds, labels, uncertain)
    yt = labels_to_matrix(refs, labels, uncertain)
    return _f1_from_matrices(yp, yt, labels, uncertain)


def majority_baseline_f1(refs: Sequence[str | Mapping | None], labels: Sequence[str] = CHEXPERT_LABELS,
                         uncertain: str = "negative") -> dict:
    """F1 of a trivial generator that predicts, for every study, each label's majority class on ``refs``.

    Per label the constant prediction is positive when more than half of the references are
    positive (ties -> negative), under the same ``uncertain`` convention. Same keys as
    :func:`finding_f1`, plus ``majority`` (label -> bool constant prediction).
    """
    yt = labels_to_matrix(refs, labels, uncertain)
    n = yt.shape[0]
    maj = yt.sum(0) * 2 > n
    yp = np.broadcast_to(maj, yt.shape).copy()
    out = _f1_from_matrices(yp, yt, labels, uncertain)
    out["majority"] = {c: bool(maj[i]) for i, c in enumerate(labels)}
    return out


# ---------------------------------------------------------------------------------------------
# change statements (longitudinal reports: the current study read against the prior)
CHANGE_STATUSES: tuple[str, ...] = ("new", "unchanged", "resolved", "worse", "better")
"""What a report says of a finding compared with the prior study."""
CHANGE_LABELS: tuple[str, ...] = PATHOLOGIES
"""Observations a change statement is read for: the 12 pathologies (not Support Devices, not No Finding)."""

CHANGE_CONVENTION = (
    "per-finding change F1 (mxr0.eval.reports.rules.change_f1): each report is read by change_report into at most "
    "one status per observation (new / unchanged / resolved / worse / better, or none); references are the truth; "
    "for each status, TP = pred and ref give the finding that status, FP = pred gives it and ref does not (another "
    "status or none), FN = ref gives it and pred does not; micro F1 over all statuses and findings; macro = mean "
    "per-status F1 over the statuses present in the references (zero_division=0)")

_CHANGE_CUES: tuple[tuple[str, re.Pattern], ...] = (
    ("resolved", re.compile(r"\b(?:resolution|resolved|no\s+longer|(?:has|have)\s+cleared|interval\s+clearing)\b")),
    ("new", re.compile(r"\b(?:new|newly|interval\s+(?:development|appearance)|development\s+of|(?:has|have)\s+"
                       r"developed)\b")),
    ("worse", re.compile(r"\b(?:increas\w*|worse|worsen\w*|enlarging|progress\w*|larger|more\s+extensive)\b")),
    ("better", re.compile(r"\b(?:decreas\w*|improv\w*|smaller|less\s+extensive|diminish\w*|reduc\w*|resolving|"
                          r"regress\w*)\b")),
    ("unchanged", re.compile(r"\b(?:unchanged|stable|persist\w*|no\s+(?:significant\s+|interval\s+|appreciable\s+)?"
                             r"change\w*|not\s+(?:significantly\s+)?changed|similar|redemonstrat\w*|again\s+"
                             r"(?:seen|noted|demonstrated)|remains?)\b")),
)
_CHANGE_RANK = {"new": 5, "worse": 4, "better": 3, "resolved": 2, "unchanged": 1}


def _mention_spans(clause: str) -> dict[str, list[tuple[int, int]]]:
    found: dict[str, list[tuple[int, int]]] = {}
    for name, rx in _MENTION_RE.items():
        spans = [m.span() for m in rx.finditer(clause)]
        if spans:
            found[name] = spans
    if not any(n in found for n in _OTHER_LUNG):
        spans = [m.span() for m in _DENSITY.finditer(clause)]
        if spans:
            found["Lung Opacity"] = spans
    return found


def change_report(text: str | None, hierarchy: bool = True) -> dict[str, str | None]:
    """The change status of each of `CHANGE_LABELS` in one report: ``new``, ``unchanged``, ``resolved``,
    ``worse``, ``better`` or ``None`` (no change statement).

    Rules (same sentences, clauses and mentions as :func:`label_report`): a mention takes the status of the
    nearest change cue in its clause, a cue after the mention counting twice its distance (so "new left
    effusion and stable cardiomegaly" reads new effusion, unchanged cardiomegaly): resolution ("interval
    resolution of", "has resolved", "no longer"), new ("new", "newly", "interval development of"), worse
    ("increased", "worsening", "enlarging", "progression"), better ("decreased", "improving", "smaller",
    "resolving"), unchanged ("unchanged", "stable", "persistent", "no (significant) change", "not
    significantly changed", "again seen", "remains"). A negated mention ("No new effusion") states no change
    unless its cue is a resolution. Several statements on one observation: new > worse > better > resolved >
    unchanged. With ``hierarchy`` a Consolidation status is given to Lung Opacity when that has none.
    """
    out: dict[str, str | None] = {n: None for n in CHANGE_LABELS}
    for sent in _sentences(text or ""):
        for clause in _clauses(sent):
            cues = [(m.start(), m.end(), st) for st, rx in _CHANGE_CUES for m in rx.finditer(clause)]
            if not cues:
                continue
            for name, spans in _mention_spans(clause).items():
                if name not in out:
                    continue
                for s, e in spans:
                    best = min(cues, key=lambda c: s - c[1] if c[1] <= s else (2 * (c[0] - e) + 1 if c[0] >= e else 0))
                    st = best[2]
                    if st != "resolved" and _status(clause, s, e) == 0:
                        continue
                    if out[name] is None or _CHANGE_RANK[st] > _CHANGE_RANK[out[name]]:
                        out[name] = st
    if hierarchy and out["Consolidation"] is not None and out["Lung Opacity"] is None:
        out["Lung Opacity"] = out["Consolidation"]
    return out


class ChangeStats(AdditiveStats):
    """Per-study TP / FP / FN of each change status (columns tp[5], fp[5], fn[5], `CHANGE_STATUSES` order):
    `change_f1` on a corpus and, through `mxr0.eval.reports.evaluate_reports` (``metrics="change"``), with
    bootstrap intervals and the paired test. ``preds`` / ``refs``: report texts (read by :func:`change_report`)
    or dicts observation -> status."""

    names = ("change_f1_micro", "change_f1_macro")

    def __init__(self, preds: Sequence[str | Mapping | None], refs: Sequence[str | Mapping | None],
                 labels: Sequence[str] = CHANGE_LABELS):
        if len(preds) != len(refs):
            raise ValueError(f"preds and refs must have the same length, got {len(preds)} and {len(refs)}")
        k, col = len(CHANGE_STATUSES), {st: i for i, st in enumerate(CHANGE_STATUSES)}
        x = np.zeros((len(refs), 3 * k))
        for row, (p, t) in enumerate(zip(preds, refs)):
            p = p if isinstance(p, Mapping) else change_report(p)
            t = t if isinstance(t, Mapping) else change_report(t)
            for name in labels:
                ps, ts = p.get(name), t.get(name)
                for bad, field in ((ps, "pred"), (ts, "ref")):
                    if bad is not None and bad not in col:
                        raise ValueError(f"{field} status {bad!r} of {name} (study {row}) is not one of "
                                         f"{list(CHANGE_STATUSES)}")
                if ps is not None and ps == ts:
                    x[row, col[ps]] += 1
                    continue
                if ps is not None:
                    x[row, k + col[ps]] += 1
                if ts is not None:
                    x[row, 2 * k + col[ts]] += 1
        super().__init__(x)

    def finalize(self, sums, counts):
        k = len(CHANGE_STATUSES)
        tp, fp, fn = sums[:, :k], sums[:, k:2 * k], sums[:, 2 * k:]
        f1 = CheXbertStats._f1(tp, fp, fn)
        present = (tp + fn) > 0  # macro: the statuses the (resampled) references give
        macro = np.where(present.any(1), (f1 * present).sum(1) / np.maximum(present.sum(1), 1), 0.0)
        return np.stack([CheXbertStats._f1(tp.sum(1), fp.sum(1), fn.sum(1)), macro], axis=1)

    def per_status(self) -> dict[str, dict[str, float]]:
        k = len(CHANGE_STATUSES)
        s = self.x.sum(0)
        return CheXbertStats.f1_table(s[:k], s[k:2 * k], s[2 * k:], CHANGE_STATUSES)


def change_f1(preds: Sequence[str | Mapping | None], refs: Sequence[str | Mapping | None],
              labels: Sequence[str] = CHANGE_LABELS) -> dict:
    """Per-finding change F1 of predicted reports against references (``CHANGE_CONVENTION``).

    ``preds`` / ``refs``: report texts (read by :func:`change_report`) or dicts observation -> status.
    Returns ``change_f1_micro``, ``change_f1_macro``, ``per_status`` (f1, precision, recall, support),
    ``n_statements`` (reference statements), ``n``, ``labels`` and ``convention``."""
    st = ChangeStats(preds, refs, labels)
    per = st.per_status()
    return {**st.value(), "per_status": per, "n_statements": sum(v["support"] for v in per.values()),
            "n": len(refs), "labels": list(labels), "convention": CHANGE_CONVENTION}
