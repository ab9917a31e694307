"""BLEU-1..4, ROUGE-L and CIDEr-D of radiology reports with pycocoevalcap's conventions, offline.

Load with ``evaluate.load("<path to this folder>")`` (``mxr0.eval.reports.metric_path("report_nlg")``).
"""

import datasets
import evaluate

from mxr0.eval.reports.nlg import METEOR_NOTE, NLG_CONVENTIONS, nlg_stats

_DESCRIPTION = """Corpus BLEU-1..4 (pycocoevalcap Bleu, closest reference length, corpus brevity penalty), CIDEr-D
(pycocoevalcap Cider: df from the evaluated references, sigma 6, clipping, x10), ROUGE-L as pycocoevalcap
(beta 1.2, PTB tokens) and as rouge_score (F1, its own tokeniser), on PTB-tokenised, lower-cased,
punctuation-stripped text (pycocoevalcap's Stanford PTBTokenizer re-implemented in Python, no Java).
""" + METEOR_NOTE

_KWARGS = """
Args:
    predictions: list of generated reports (str).
    references: list of reference reports (str), one per prediction.
    rouge_stemmer: Porter stemming for rouge_l_f1 (rouge_score use_stemmer; default False).
Returns:
    bleu_1, bleu_2, bleu_3, bleu_4, rouge_l, rouge_l_f1, cider_d (floats).
"""

_CITATION = """@inproceedings{papineni2002bleu, title={BLEU: a method for automatic evaluation of machine translation},
author={Papineni, Kishore and Roukos, Salim and Ward, Todd and Zhu, Wei-Jing}, booktitle={ACL}, year={2002}}
@inproceedings{vedantam2015cider, title={CIDEr: Consensus-based image description evaluation},
author={Vedantam, Ramakrishna and Zitnick, C Lawrence and Parikh, Devi}, booktitle={CVPR}, year={2015}}
@inproceedings{lin2004rouge, title={ROUGE: A package for automatic evaluation of summaries}, author={Lin, Chin-Yew},
booktitle={Text Summarization Branches Out}, year={2004}}"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS)
class ReportNLG(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION, citation=_CITATION, inputs_description=_KWARGS,
            features=datasets.Features({"predictions": datasets.Value("string"),
                                        "references": datasets.Value("string")}))

    def _compute(self, predictions, references, rouge_stemmer=False):
        stats = nlg_stats(predictions, references, ("bleu", "rouge_l", "rouge_l_f1", "cider_d"),
                          rouge_stemmer=rouge_stemmer)
        out = {}
        for s in stats.values():
            out.update(s.value())
        out["conventions"] = dict(NLG_CONVENTIONS, rouge_l_f1=NLG_CONVENTIONS["rouge_l_f1"].format(
            stem=", Porter stemming" if rouge_stemmer else ", no stemming"))
        return out
