"""The demo's one table: every stage of the chain side by side, each metric next to its own trivial baseline."""

from __future__ import annotations

from typing import Any

from mxr0.demo.common import fmt

# encoder columns, in chain order (names given to `mxr0.demo.scores.encoder_scores`)
ENCODERS = ("random init", "XR-0", "+ classifier", "+ alignment")

ENCODER_ROWS = (
    ("probe mean AUROC, chest findings", "probe_auroc", "chance"),
    ("kNN anatomy accuracy", "knn_anatomy", "majority anatomy"),
    ("segmentation Dice, lungs + heart (linear head)", "seg_dice", "organ-position prior"),
    ("probe AUROC gap, sex / age (largest)", ("sex_gap", "age_gap"), ""),
)


def _pair(a, b) -> str:
    return f"{fmt(a)} / {fmt(b)}" if a is not None or b is not None else "–"


def _encoder_rows(enc: dict[str, Any], names: list[str], width: int) -> list[str]:
    lines = []
    for label, key, base_name in ENCODER_ROWS:
        cells = []
        for n in names:
            e = enc["encoders"].get(n, {})
            cells.append(_pair(e.get(key[0]), e.get(key[1])) if isinstance(key, tuple) else fmt(e.get(key)))
        cells += [""] * (width - len(cells))
        base = "" if isinstance(key, tuple) else f"{fmt(enc['baselines'].get(key))} ({base_name})"
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {base} |")
    return lines


def _row(label: str, col: int, width: int, value: str, base: str) -> str:
    cells = [""] * width
    cells[col] = value
    return f"| {label} | " + " | ".join(cells) + f" | {base} |"


def chain_table(enc: dict[str, Any] | None, align: dict[str, float] | None, vlm: dict[str, Any] | None) -> str:
    """Markdown: rows are metrics, columns the chain's stages (random init and the frozen tower after each stage; the
    alignment model's own scores in its tower's column; the stage-2 VLM), the last column each metric's trivial
    baseline. Missing parts are left out."""
    names = [n for n in ENCODERS if enc and n in enc["encoders"]]
    heads = list(names) + (["+ alignment"] if align and "+ alignment" not in names else [])
    heads += ["VLM stage 2"] if vlm else []
    width = len(heads)
    lines = ["| metric (held-out studies) | " + " | ".join(heads) + " | trivial baseline |",
             "|---|" + "---|" * (width + 1)]
    if names:
        lines += _encoder_rows(enc, names, width)
    if align:  # the alignment model's own scores go in the column of its (frozen) tower
        c = heads.index("+ alignment")
        lines += [
            _row("alignment R@5, image→report / report→image", c, width,
                 _pair(align.get("i2t_r5"), align.get("t2i_r5")), f"{fmt(align.get('chance_r5'))} (chance)"),
            _row("alignment zero-shot mean AUROC", c, width, fmt(align.get("zeroshot_mean_auroc")), "0.500 (chance)"),
            _row("similarity-map grounding mIoU", c, width, fmt(align.get("grounding_miou")),
                 f"{fmt(align.get('grounding_baseline_miou'))} (centred box)"),
        ]
    if vlm:
        c = width - 1
        ours, const = vlm["report"]["ours"], vlm["report"]["constant"]
        for label, key in (("report finding F1-14 micro / macro", ("rules_f1_14_micro", "rules_f1_14_macro")),
                           ("report finding F1-5 micro / macro", ("rules_f1_5_micro", "rules_f1_5_macro")),
                           ("report BLEU-4 / ROUGE-L", ("bleu_4", "rouge_l"))):
            lines.append(_row(label, c, width, _pair(ours[key[0]], ours[key[1]]),
                              f"{_pair(const[key[0]], const[key[1]])} (constant report)"))
        if "vqa_closed_accuracy" in vlm:
            lines.append(_row("VQA closed accuracy, generated / option-ranked", c, width,
                              _pair(vlm.get("vqa_closed_accuracy"), vlm.get("vqa_closed_accuracy_ranked")),
                              f"{fmt(vlm.get('vqa_prior_closed_accuracy'))} (prior answer)"))
        if "grounding_acc50" in vlm:
            prior = _pair(vlm.get("grounding_prior_acc50"), vlm.get("grounding_prior_miou"))
            lines.append(_row("grounding Acc@0.5 / mIoU", c, width,
                              _pair(vlm.get("grounding_acc50"), vlm.get("grounding_miou")), f"{prior} (prior box)"))
    return "\n".join(lines)
