"""VQA scores with the field's conventions (VQA-RAD / SLAKE papers, RadVLM, CheXagent):

- closed questions (yes/no, multiple choice): accuracy of the normalised answer;
- open questions: exact match and token F1 (SQuAD-style bag of tokens), plus token recall (the "open
  recall" several VQA-RAD papers report);
- every score also per question type (``closed_accuracy/<type>``);
- the majority-answer baseline: for each closed question type the most frequent training answer
  (`MajorityBaseline`), the trivial model a VQA result has to beat.

Normalisation: lower case, punctuation and the articles a / an / the removed, whitespace collapsed
(``"Yes."`` == ``"yes"``, ``"The left lung"`` == ``"left lung"``).
"""

from __future__ import annotations

import re
import string
from collections import Counter, defaultdict
from collections.abc import Sequence

_PUNCT = re.compile(f"[{re.escape(string.punctuation)}]")
_ARTICLES = re.compile(r"\b(a|an|the)\b")


def normalise_answer(text: str) -> str:
    """Lower case, no punctuation, no articles, single spaces."""
    text = _PUNCT.sub(" ", str(text).lower())
    return " ".join(_ARTICLES.sub(" ", text).split())


def token_f1(pred: str, ref: str) -> tuple[float, float, float]:
    """(precision, recall, F1) of the normalised answers' token bags; two empty answers score 1."""
    p, r = normalise_answer(pred).split(), normalise_answer(ref).split()
    if not p or not r:
        v = float(p == r)
        return v, v, v
    common = sum((Counter(p) & Counter(r)).values())
    if common == 0:
        return 0.0, 0.0, 0.0
    prec, rec = common / len(p), common / len(r)
    return prec, rec, 2 * prec * rec / (prec + rec)


def vqa_scores(preds: Sequence[str], refs: Sequence[str], answer_types: Sequence[str],
               question_types: Sequence[str] | None = None) -> dict[str, float]:
    """Closed accuracy, open exact match / token F1 / token recall, overall and per question type, and the
    counts (``n_closed``, ``n_open``). Scores of a kind with no question are left out."""
    if not (len(preds) == len(refs) == len(answer_types)):
        raise ValueError(f"{len(preds)} predictions, {len(refs)} references and {len(answer_types)} answer types")
    qtypes = list(question_types) if question_types is not None else [""] * len(preds)
    per: dict[str, list[float]] = defaultdict(list)
    for p, r, at, qt in zip(preds, refs, answer_types, qtypes):
        exact = float(normalise_answer(p) == normalise_answer(r))
        if at == "closed":
            per["closed_accuracy"].append(exact)
            if qt:
                per[f"closed_accuracy/{qt}"].append(exact)
        else:
            _, rec, f1 = token_f1(p, r)
            per["open_exact_match"].append(exact)
            per["open_token_f1"].append(f1)
            per["open_recall"].append(rec)
            if qt:
                per[f"open_token_f1/{qt}"].append(f1)
    out = {k: sum(v) / len(v) for k, v in per.items()}
    out["n_closed"] = float(len(per["closed_accuracy"]))
    out["n_open"] = float(len(per["open_exact_match"]))
    return out


class MajorityBaseline:
    """Answers every closed question with the most frequent training answer of its question type (the
    overall most frequent closed answer for unseen types); ties broken alphabetically."""

    def __init__(self, answers: Sequence[str], answer_types: Sequence[str], question_types: Sequence[str]):
        by_type: dict[str, Counter] = defaultdict(Counter)
        overall: Counter = Counter()
        for a, at, qt in zip(answers, answer_types, question_types):
            if at == "closed":
                by_type[qt][normalise_answer(a)] += 1
                overall[normalise_answer(a)] += 1
        pick = lambda c: min(c.items(), key=lambda kv: (-kv[1], kv[0]))[0]  # noqa: E731
        self.by_type = {qt: pick(c) for qt, c in by_type.items()}
        self.overall = pick(overall) if overall else ""

    def predict(self, question_type: str) -> str:
        return self.by_type.get(question_type, self.overall)
