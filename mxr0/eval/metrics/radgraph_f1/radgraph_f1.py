"""RadGraph F1 (RG_E, RG_ER, complete) of radiology reports, offline.

Load with ``evaluate.load("<path to this folder>")`` (``mxr0.eval.reports.metric_path("radgraph_f1")``).
The RadGraph model is never downloaded: pass ``model=`` (radgraph-xl.tar.gz, its extracted folder, or a
model type found in the caches) or set MXR0_RADGRAPH_MODEL; the error names what is missing.
"""

import datasets
import evaluate

from mxr0.eval.reports.radgraph import RadGraph, RadGraphStats

_DESCRIPTION = """RadGraph entities and relations of predictions and references (the official DyGIE models,
re-implemented for batched inference on current transformers), compared per report pair at the three reward
levels of radgraph's F1RadGraph (simple = RG_E, partial = RG_ER, complete), averaged over pairs; empty reports or
reports without entities score 0; entity tokens compared case-insensitively."""

_KWARGS = """
Args:
    predictions: list of generated reports (str).
    references: list of reference reports (str).
    model: path to radgraph-xl.tar.gz / radgraph.tar.gz / modern-radgraph-xl.tar.gz or its folder, or a model type.
    batch_size: reports per forward pass (default 16). device: "cpu", "cuda", ... (default: auto).
Returns:
    radgraph_f1_rg_e, radgraph_f1_rg_er, radgraph_f1_complete.
"""

_CITATION = """@inproceedings{delbrouck2022improving, title={Improving the Factual Correctness of Radiology Report
Generation with Semantic Rewards}, author={Delbrouck, Jean-Benoit and Chambon, Pierre and Bluethgen, Christian and
Tsai, Emily and Almusa, Omar and Langlotz, Curtis}, booktitle={Findings of EMNLP}, year={2022}}"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS)
class RadGraphF1(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION, citation=_CITATION, inputs_description=_KWARGS,
            features=datasets.Features({"predictions": datasets.Value("string"),
                                        "references": datasets.Value("string")}))

    def _compute(self, predictions, references, model=None, batch_size=16, device=None):
        rg = getattr(self, "_mxr0_model", None)
        if rg is None or getattr(self, "_mxr0_key", None) != (model, device):
            rg = RadGraph.load(model, device=device)
            self._mxr0_model, self._mxr0_key = rg, (model, device)
        texts = [t for t in list(references) + list(predictions) if t]
        by_text = dict(zip(texts, rg.annotate(texts, batch_size=batch_size)))
        empty = {"text": "", "entities": {}}
        stats = RadGraphStats(predictions, references, [by_text.get(t, empty) for t in predictions],
                              [by_text.get(t, empty) for t in references])
        return stats.value()
