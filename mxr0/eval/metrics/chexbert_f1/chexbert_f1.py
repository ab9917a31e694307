"""CheXbert F1 (micro/macro over 14 observations and over the CheXpert 5) of radiology reports, offline.

Load with ``evaluate.load("<path to this folder>")`` (``mxr0.eval.reports.metric_path("chexbert_f1")``).
The CheXbert checkpoint is never downloaded: pass ``weights=`` (chexbert.pth or a folder with it and
bert-base-uncased's vocab.txt) or set MXR0_CHEXBERT_WEIGHTS; the error names what is missing.
"""

import datasets
import evaluate

from mxr0.eval.reports.chexbert import CheXbert, CheXbertStats

_DESCRIPTION = """CheXbert labeler (bert-base-uncased, 13 four-class heads + No Finding) run on predictions and
references; a finding is positive when labelled positive (and, with uncertain="positive", uncertain); F1 per
observation with the references as truth (zero_division=0), micro and macro over the 14 observations (F1-14) and
over Atelectasis, Cardiomegaly, Consolidation, Edema, Pleural Effusion (F1-5), as f1chexbert / LLaVA-Rad."""

_KWARGS = """
Args:
    predictions: list of generated reports (str).
    references: list of reference reports (str).
    uncertain: "positive" (f1chexbert, RadEval) or "negative" (LLaVA-Rad, MAIRA-2).
    weights: chexbert.pth or a folder holding it and vocab.txt (default: MXR0_CHEXBERT_WEIGHTS / caches).
    batch_size: reports per forward pass (default 32). device: "cpu", "cuda", ... (default: auto).
Returns:
    chexbert_f1_14_micro, chexbert_f1_14_macro, chexbert_f1_5_micro, chexbert_f1_5_macro, per_label, uncertain.
"""

_CITATION = """@inproceedings{smit2020chexbert, title={Combining Automatic Labelers and Expert Annotations for Accurate
Radiology Report Labeling Using BERT}, author={Smit, Akshay and Jain, Saahil and Rajpurkar, Pranav and Pareek, Anuj and
Ng, Andrew Y and Lungren, Matthew P}, booktitle={EMNLP}, year={2020}}"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS)
class CheXbertF1(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION, citation=_CITATION, inputs_description=_KWARGS,
            features=datasets.Features({"predictions": datasets.Value("string"),
                                        "references": datasets.Value("string")}))

    def _compute(self, predictions, references, uncertain="positive", weights=None, batch_size=32, device=None):
        model = getattr(self, "_mxr0_model", None)
        if model is None or getattr(self, "_mxr0_weights", None) != (weights, device):
            model = CheXbert.load(weights, device=device)
            self._mxr0_model, self._mxr0_weights = model, (weights, device)
        classes = model.label(list(references) + list(predictions), batch_size=batch_size)
        n = len(references)
        stats = CheXbertStats(classes[n:], classes[:n], uncertain)
        out = stats.value()
        out["per_label"] = stats.per_label()
        out["uncertain"] = uncertain
        return out
