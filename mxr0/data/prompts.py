"""CheXzero-style zero-shot prompts: a positive and a negative phrasing per CheXpert observation, and a
recipe's or user's overrides merged over them (checked: unknown observations and malformed sides are named)."""

from __future__ import annotations

from mxr0.data.records import CHEXPERT_LABELS

DEFAULT_PROMPTS: dict[str, dict[str, list[str]]] = {
    "Enlarged Cardiomediastinum": {"positive": ["widened mediastinum", "enlarged cardiomediastinum"],
                                   "negative": ["normal mediastinal contours", "no widened mediastinum"]},
    "Cardiomegaly": {"positive": ["cardiomegaly", "the heart is enlarged"],
                     "negative": ["normal heart size", "no cardiomegaly"]},
    "Lung Opacity": {"positive": ["lung opacity", "airspace opacity"],
                     "negative": ["no focal airspace opacity", "the lungs are clear"]},
    "Lung Lesion": {"positive": ["pulmonary nodule", "lung mass"],
                    "negative": ["no pulmonary nodule or mass"]},
    "Edema": {"positive": ["pulmonary edema"], "negative": ["no pulmonary edema"]},
    "Consolidation": {"positive": ["consolidation"], "negative": ["no focal consolidation"]},
    "Pneumonia": {"positive": ["pneumonia"], "negative": ["no pneumonia"]},
    "Atelectasis": {"positive": ["atelectasis"], "negative": ["no atelectasis"]},
    "Pneumothorax": {"positive": ["pneumothorax"], "negative": ["no pneumothorax"]},
    "Pleural Effusion": {"positive": ["pleural effusion"], "negative": ["no pleural effusion"]},
    "Pleural Other": {"positive": ["pleural thickening"], "negative": ["no pleural abnormality"]},
    "Fracture": {"positive": ["fracture"], "negative": ["no fracture"]},
    "Support Devices": {"positive": ["support devices", "central venous catheter", "endotracheal tube"],
                        "negative": ["no support devices", "no lines or tubes"]},
    "No Finding": {"positive": ["no acute cardiopulmonary abnormality"],
                   "negative": ["acute cardiopulmonary abnormality"]},
}
"""Positive and negative prompts per CheXpert observation; recipes and the CLI can override any."""


def merged_prompts(overrides: dict | None = None) -> dict[str, dict[str, list[str]]]:
    """The default prompts with a recipe's / user's overrides (per observation, per side) applied."""

    prompts = {k: {s: list(v) for s, v in d.items()} for k, d in DEFAULT_PROMPTS.items()}
    for label, sides in (overrides or {}).items():
        if label not in CHEXPERT_LABELS:
            raise ValueError(f"zero-shot prompts: unknown observation {label!r}; valid: {list(CHEXPERT_LABELS)}")
        if not isinstance(sides, dict) or set(sides) - {"positive", "negative"}:
            raise ValueError(f"zero-shot prompts for {label!r}: expected a mapping with 'positive' and/or "
                             f"'negative' lists of prompts, got {sides!r}")
        for side, texts in sides.items():
            prompts[label][side] = [texts] if isinstance(texts, str) else list(texts)
    return prompts
