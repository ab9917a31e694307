"""``evaluate_reports``: every report metric, bootstrap intervals and a paired test, in one call.

    from mxr0.eval.reports import evaluate_reports, markdown_report
    result = evaluate_reports("preds.jsonl", "refs.jsonl", bootstrap=500, uncertain="positive",
                              chexbert_weights="weights/chexbert", radgraph_model="weights/radgraph-xl.tar.gz")
    print(markdown_report(result))

``predictions``/``references`` are JSONL/JSON paths, ``{study_id: text}`` mappings, or equal-length
lists of texts. The result is a JSON-serialisable dict; its ``conventions`` entry says exactly how
each number was computed.
"""

from __future__ import annotations

import time
import warnings
from typing import Sequence

from .chexbert import CheXbert, CheXbertStats
from .io import MAX_REPORT_CHARS, pair_inputs
from .nlg import METEOR_NOTE, NLG_CONVENTIONS, nlg_stats
from .ptb import tokenize_corpus
from .radgraph import RadGraph, RadGraphStats
from .rules import CHANGE_CONVENTION, ChangeStats
from .stats import bootstrap as run_bootstrap
from .stats import paired_randomization, summarize
from .weights import MissingWeightsError

__all__ = ["evaluate_reports", "markdown_report", "METRIC_FAMILIES", "DEFAULT_METRICS", "parse_metrics"]

METRIC_FAMILIES = ("bleu", "rouge_l", "rouge_l_f1", "cider_d", "chexbert", "radgraph", "change")
DEFAULT_METRICS = METRIC_FAMILIES[:-1]
"""``all``: the field's standard report metrics. ``change`` (rule-based per-finding change F1 of reports read
against a prior study) is asked for by name: on reports without change statements it would show a row of zeros."""
_ALIASES = {"nlg": ("bleu", "rouge_l", "rouge_l_f1", "cider_d"), "all": DEFAULT_METRICS,
            "rouge": ("rouge_l", "rouge_l_f1"), "cider": ("cider_d",), "rougel": ("rouge_l",),
            "chexbert_f1": ("chexbert",), "radgraph_f1": ("radgraph",)}

LABELS = {
    "bleu_1": "BLEU-1", "bleu_2": "BLEU-2", "bleu_3": "BLEU-3", "bleu_4": "BLEU-4",
    "rouge_l": "ROUGE-L (pycocoevalcap, beta 1.2)", "rouge_l_f1": "ROUGE-L F1 (rouge_score)", "cider_d": "CIDEr-D",
    "chexbert_f1_14_micro": "CheXbert micro-F1-14", "chexbert_f1_14_macro": "CheXbert macro-F1-14",
    "chexbert_f1_5_micro": "CheXbert micro-F1-5", "chexbert_f1_5_macro": "CheXbert macro-F1-5",
    "radgraph_f1_rg_e": "RadGraph F1 RG_E (simple)", "radgraph_f1_rg_er": "RadGraph F1 RG_ER (partial)",
    "radgraph_f1_complete": "RadGraph F1 complete",
    "change_f1_micro": "change F1 micro (rule-based, per finding)", "change_f1_macro": "change F1 macro (per status)",
}


def parse_metrics(metrics: str | Sequence[str] | None) -> list[str]:
    """Metric families from names/aliases (``nlg``, ``all``, ``rouge``...), comma-separated or a list."""
    if metrics is None:
        return list(DEFAULT_METRICS)
    items = metrics.split(",") if isinstance(metrics, str) else list(metrics)
    out: list[str] = []
    for m in items:
        m = m.strip().lower().replace("-", "_")
        if not m:
            continue
        fams = _ALIASES.get(m, (m,))
        for f in fams:
            if f not in METRIC_FAMILIES:
                raise ValueError(f"unknown metric {m!r}; choose from {', '.join(METRIC_FAMILIES)} "
                                 f"or {', '.join(_ALIASES)}")
            if f not in out:
                out.append(f)
    if not out:
        raise ValueError("no metric selected")
    return out


def _conventions(fams: list[str], uncertain: str, rouge_stemmer: bool, radgraph_model: RadGraph | None) -> dict:
    conv = {}
    if any(f in fams for f in ("bleu", "rouge_l", "cider_d")):
        conv["tokenization"] = NLG_CONVENTIONS["tokenization"]
    for f in ("bleu", "rouge_l", "cider_d"):
        if f in fams:
            conv[f] = NLG_CONVENTIONS[f]
    if "rouge_l_f1" in fams:
        conv["rouge_l_f1"] = NLG_CONVENTIONS["rouge_l_f1"].format(
            stem=", Porter stemming (use_stemmer=True, as RadEval)" if rouge_stemmer else ", no stemming "
            "(use_stemmer=False, evaluate's default)")
    if "chexbert" in fams:
        conv["chexbert"] = (
            f"uncertain counted as {uncertain} ("
            + ("f1chexbert / RadEval convention" if uncertain == "positive" else "LLaVA-Rad / MAIRA-2 convention")
            + "); positive = head class 1" + (" or 3 (uncertain)" if uncertain == "positive" else "")
            + "; blank (0) and negative (2) = 0; references are the truth; per-label F1 with zero_division=0; "
            "F1-14 over all 14 CheXbert observations in CheXbert order (No Finding included), F1-5 over "
            "Atelectasis, Cardiomegaly, Consolidation, Edema, Pleural Effusion; micro and macro as sklearn "
            "classification_report (what f1chexbert reports)")
    if "radgraph" in fams:
        conv["radgraph"] = (
            "radgraph F1RadGraph reward levels: RG_E = 'simple' (entity tokens + label), RG_ER = 'partial' "
            "(+ whether the entity has a relation), complete = (+ each relation and its target); F1 per report pair, "
            "mean over pairs; a pair with an empty hypothesis or reference, or no entity on either side, scores 0; "
            "entity tokens compared lower-cased (upstream fix after 0.1.18)"
            + (f"; model type {radgraph_model.model_type}" if radgraph_model is not None else ""))
    if "change" in fams:
        conv["change"] = CHANGE_CONVENTION
    conv["meteor"] = METEOR_NOTE
    return conv


_BOOTSTRAP_NOTES = {"unit": "study (report pair)", "center": "median of the resampled corpus values",
                    "interval": "95% percentile interval (2.5th-97.5th percentiles)",
                    "note": "corpus metrics are recomputed on every resample (BLEU brevity penalty, "
                            "CIDEr-D document frequencies, micro/macro F1), not averaged per study"}
_PAIRED_TEST = ("paired approximate randomisation (swap each study's two outputs with probability 1/2), "
                "two-sided, p = (1 + #{|delta*| >= |delta|}) / (1 + trials)")


def _load(name: str, loader, skip_missing: bool, skipped: dict, timing: dict):
    """``loader()`` timed as ``{name}_load``; None, with the reason under ``skipped[name]``, when its files are
    missing and ``skip_missing``."""
    t0 = time.perf_counter()
    model = None
    try:
        model = loader()
    except MissingWeightsError as e:
        if not skip_missing:
            raise
        skipped[name] = str(e)
    timing[f"{name}_load"] = time.perf_counter() - t0
    return model


def _nlg_stats(active: list[str], systems: dict, refs, stats: dict, rouge_stemmer: bool, timing: dict, say) -> None:
    """The NLG metrics of ``active`` for each system, into ``stats[system]``."""
    nlg = [f for f in active if f in ("bleu", "rouge_l", "rouge_l_f1", "cider_d")]
    if not nlg:
        return
    t0 = time.perf_counter()
    ptb_refs = tokenize_corpus(refs) if any(f in nlg for f in ("bleu", "rouge_l", "cider_d")) else None
    for k, h in systems.items():
        stats[k].update(nlg_stats(h, refs, nlg, rouge_stemmer=rouge_stemmer, ptb_refs=ptb_refs))
    timing["nlg"] = time.perf_counter() - t0
    say(f"NLG metrics: {timing['nlg']:.1f} s")


def _chexbert_stats(chexbert: CheXbert, systems: dict, refs, stats: dict, uncertain: str, batch_size: int,
                    timing: dict, say, precision: str = "fp32") -> dict:
    """CheXbert F1 of each system into ``stats[system]``; returns the per-label tables."""
    t0 = time.perf_counter()
    per_label = {}
    texts = list(refs) + [t for h in systems.values() for t in h]
    classes = chexbert.label(texts, batch_size=batch_size, precision=precision)
    n = len(refs)
    for j, (k, h) in enumerate(systems.items()):
        st = CheXbertStats(classes[n * (j + 1):n * (j + 2)], classes[:n], uncertain)
        stats[k]["chexbert"] = st
        per_label[f"chexbert_{k}" if k != "a" else "chexbert"] = st.per_label()
    timing["chexbert"] = time.perf_counter() - t0
    say(f"CheXbert: labelled {len(set(texts))} distinct reports in {timing['chexbert']:.1f} s")
    return per_label


def _radgraph_stats(radgraph: RadGraph, systems: dict, refs, stats: dict, batch_size: int, timing: dict, say,
                    precision: str = "fp32") -> None:
    """RadGraph F1 of each system into ``stats[system]``."""
    t0 = time.perf_counter()
    texts = list(refs) + [t for h in systems.values() for t in h]
    anns = radgraph.annotate([t for t in texts if t], batch_size=max(1, batch_size // 2), precision=precision)
    by_text = dict(zip([t for t in texts if t], anns))
    empty = {"text": "", "entities": {}}
    ref_anns = [by_text.get(t, empty) for t in refs]
    for k, h in systems.items():
        stats[k]["radgraph"] = RadGraphStats(h, refs, [by_text.get(t, empty) for t in h], ref_anns)
    timing["radgraph"] = time.perf_counter() - t0
    say(f"RadGraph: annotated {len(by_text)} distinct reports in {timing['radgraph']:.1f} s")


def evaluate_reports(predictions, references, *, metrics: str | Sequence[str] | None = None, bootstrap: int = 500,
                     seed: int = 0, uncertain: str = "positive", chexbert_weights=None, radgraph_model=None,
                     skip_missing: bool = False, compare=None, batch_size: int = 32, device: str | None = None,
                     rouge_stemmer: bool = False, trials: int = 10000, chexbert: CheXbert | None = None,
                     radgraph: RadGraph | None = None, log=None, allow_partial: bool = False,
                     max_report_chars: int | None = MAX_REPORT_CHARS, precision: str = "fp32") -> dict:
    """Score predicted reports against references; see the module and package docs.

    ``bootstrap``: resamples for the 95% percentile intervals (0 = none). ``compare``: a second
    system's predictions (same forms as ``predictions``) for the paired approximate-randomisation
    test (``trials`` permutations). ``chexbert``/``radgraph``: already-loaded models (else loaded
    from ``chexbert_weights``/``radgraph_model`` or the caches). Missing model files raise
    :class:`MissingWeightsError` unless ``skip_missing``, which reports the other metrics and says
    what was skipped and why. ``allow_partial``: score only the studies present on every side (else a
    study missing on one side is an error); the result's ``pairing`` entry counts and lists the dropped
    ids. ``max_report_chars``: longer reports are cut to that many characters (0/None: no bound), with
    a warning and a count under ``pairing``. Warnings go to ``log`` (else :func:`warnings.warn`)."""
    if uncertain not in ("positive", "negative"):
        raise ValueError(f"uncertain must be 'positive' or 'negative', got {uncertain!r}")
    say = log or (lambda msg: None)
    fams = parse_metrics(metrics)
    pairing = pair_inputs(predictions, references, compare=compare, allow_partial=allow_partial,
                          max_chars=max_report_chars)
    ids, hyps, refs, hyps_b = pairing.ids, pairing.hyps, pairing.refs, pairing.hyps_b
    if not ids:
        raise ValueError("no report pairs to evaluate")
    for note in pairing.notes():
        if log is not None:
            say(f"warning: {note}")
        else:
            warnings.warn(note, stacklevel=2)
    skipped: dict[str, str] = {}
    timing: dict[str, float] = {}
    # Load the models first: a missing file should fail before minutes of work.
    if "chexbert" in fams and chexbert is None:
        chexbert = _load("chexbert", lambda: CheXbert.load(chexbert_weights, device=device), skip_missing, skipped,
                         timing)
    if "radgraph" in fams and radgraph is None:
        radgraph = _load("radgraph", lambda: RadGraph.load(radgraph_model, device=device), skip_missing, skipped,
                         timing)
    active = [f for f in fams if f not in skipped]

    systems = {"a": hyps} if hyps_b is None else {"a": hyps, "b": hyps_b}
    stats: dict[str, dict] = {k: {} for k in systems}
    per_label = {}
    _nlg_stats(active, systems, refs, stats, rouge_stemmer, timing, say)
    if "chexbert" in active:
        per_label = _chexbert_stats(chexbert, systems, refs, stats, uncertain, batch_size, timing, say, precision)
    if "radgraph" in active:
        _radgraph_stats(radgraph, systems, refs, stats, batch_size, timing, say, precision)
    if "change" in active:
        for k, h in systems.items():
            stats[k]["change"] = ChangeStats(h, refs)
        per_label["change"] = stats["a"]["change"].per_status()

    values_a = {k: v for s in stats["a"].values() for k, v in s.value().items()}
    samples = None
    if bootstrap and bootstrap > 0 and stats["a"]:
        t0 = time.perf_counter()
        samples = run_bootstrap(stats["a"], n_resamples=int(bootstrap), seed=seed)
        timing["bootstrap"] = time.perf_counter() - t0
        say(f"bootstrap ({bootstrap} resamples): {timing['bootstrap']:.1f} s")
    result: dict = {
        "n_studies": len(ids),
        "pairing": pairing.summary(),
        "metrics_requested": fams,
        "metrics": summarize(values_a, samples),
        "per_label": per_label,
        "skipped": skipped,
        "not_computed": {"meteor": METEOR_NOTE},
        "conventions": _conventions(active, uncertain, rouge_stemmer, radgraph),
        "settings": {"uncertain": uncertain, "rouge_stemmer": rouge_stemmer, "seed": seed,
                     "allow_partial": allow_partial, "max_report_chars": pairing.max_chars, "precision": precision},
        # what ran: the precision, and how many reports the labellers relabelled in fp32 (bf16 margin rule)
        "labeller_runs": {name: dict(getattr(m, "last_run", {}) or {}) for name, m in
                          (("chexbert", chexbert), ("radgraph", radgraph)) if m is not None and name in active},
    }
    if samples is not None:
        result["bootstrap"] = {"n_resamples": int(bootstrap), "seed": seed, **_BOOTSTRAP_NOTES}
    if hyps_b is not None:
        t0 = time.perf_counter()
        test = paired_randomization(stats["a"], stats["b"], trials=trials, seed=seed)
        timing["paired_test"] = time.perf_counter() - t0
        result["comparison"] = {"method": _PAIRED_TEST, "trials": trials, "seed": seed,
                                "delta": "system B (compare) minus system A (pred)", "results": test}
    result["timing_s"] = {k: round(v, 3) for k, v in timing.items()}
    return result


def _fmt(v: float) -> str:
    return f"{v:.4f}"


def markdown_report(result: dict, title: str | None = None) -> str:
    """A Markdown table of a result from :func:`evaluate_reports`, with the conventions underneath."""
    lines = [f"### {title}", ""] if title else []
    has_ci = "bootstrap" in result
    head = "| metric | value |" + (" median [95% CI] |" if has_ci else "")
    lines += [head, "|---|---|" + ("---|" if has_ci else "")]
    for k, row in result["metrics"].items():
        label = LABELS.get(k, k)
        if k.startswith("chexbert"):
            label += f" (uncertain={result['settings']['uncertain']})"
        cells = f"| {label} | {_fmt(row['value'])} |"
        if has_ci:
            cells += f" {_fmt(row['median'])} [{_fmt(row['ci_low'])}, {_fmt(row['ci_high'])}] |" if "median" in row \
                else " |"
        lines.append(cells)
    lines.append("")
    n = result["n_studies"]
    pairing = result.get("pairing") or {}
    extra = ""
    if pairing.get("n_dropped"):
        extra += (f" **Partial:** {pairing['n_dropped']} studies without a counterpart were dropped "
                  f"(--allow-partial: " + ", ".join(f"{v} {k.replace('_', ' ')}" for k, v in pairing["dropped"].items()
                                                    if v) + ").")
    if any((pairing.get("truncated") or {}).values()):
        extra += (f" **Truncated** to {pairing['max_report_chars']} characters: "
                  + ", ".join(f"{v} {k}" for k, v in pairing["truncated"].items() if v) + ".")
    lines.append(f"{n} studies." + extra + (f" Bootstrap: {result['bootstrap']['n_resamples']} resamples of the studies, "
                                   f"seed {result['bootstrap']['seed']}, median and 95% percentile interval; corpus "
                                   "metrics recomputed on each resample." if has_ci else ""))
    if "comparison" in result:
        c = result["comparison"]
        lines += ["", f"Paired test (approximate randomisation, {c['trials']} trials, two-sided), "
                      "B = compared system, A = predictions:", "",
                  "| metric | A | B | B - A | p |", "|---|---|---|---|---|"]
        for k, r in c["results"].items():
            lines.append(f"| {LABELS.get(k, k)} | {_fmt(r['a'])} | {_fmt(r['b'])} | {r['delta']:+.4f} | "
                         f"{r['p_value']:.4f} |")
    if result.get("skipped"):
        lines += ["", "Skipped:"] + [f"- {k}: {v}" for k, v in result["skipped"].items()]
    lines += ["", "Conventions:"] + [f"- {k}: {v}" for k, v in result["conventions"].items()]
    return "\n".join(lines) + "\n"
