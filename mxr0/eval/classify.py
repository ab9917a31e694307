"""Evaluate an exported classifier folder on canonical records: per-label and mean AUROC.

    mxr0 eval classify --model runs/tiny-classify/export --data data_cache/phantom --split test
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from mxr0.data.classify_dataset import StudyImageDataset
from mxr0.data.transforms import ImageTransform
from mxr0.eval.vision.probe import auroc_columns


def evaluate_classifier(model_dir: str | Path, records: list[dict], batch_size: int = 64,
                        views: list[str] | None = None, device: str | None = None) -> dict[str, float]:
    """Per-label AUROC, mean AUROC and the number of studies, under the label policy saved with the
    model (``mxr0_labels.json``; U-Ones and blank-as-negative when absent)."""
    from transformers import AutoModelForImageClassification


    model_dir = Path(model_dir)
    model = AutoModelForImageClassification.from_pretrained(model_dir).eval()
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    model.to(device)
    labels = [model.config.id2label[i] for i in range(model.config.num_labels)]
    policy_file = model_dir / "mxr0_labels.json"
    policy = json.loads(policy_file.read_text()) if policy_file.exists() else {}
    uncertain, blank = policy.get("uncertain", "ones"), policy.get("blank", "zeros")
    ds = StudyImageDataset(records, labels, ImageTransform.from_pretrained(str(model_dir)), uncertain, blank, views)
    loader = torch.utils.data.DataLoader(ds, batch_size=batch_size, shuffle=False)
    scores, targets, masks = [], [], []
    with torch.no_grad():
        for batch in loader:
            logits = model(pixel_values=batch["pixel_values"].to(device)).logits.float()
            scores.append(torch.sigmoid(logits).cpu().numpy())
            targets.append(batch["labels"].numpy())
            masks.append(batch["label_mask"].numpy())
    out = auroc_table(np.concatenate(scores), np.concatenate(targets), np.concatenate(masks), labels)
    out["n_studies"] = float(len(ds))
    out["policy"] = f"uncertain={uncertain}, blank={blank}"  # type: ignore[assignment]
    return out


def markdown_table(metrics: dict, title: str = "") -> str:
    """A Markdown table of per-label AUROC with the mean in the last row."""
    rows = [(k.split("/", 1)[1], v) for k, v in metrics.items() if k.startswith("auroc/")]
    lines = [f"### {title}", ""] if title else []
    lines += ["| observation | AUROC |", "|---|---|"]
    lines += [f"| {name} | {v:.3f} |" for name, v in rows]
    if "mean_auroc" in metrics:
        lines.append(f"| **mean** | **{metrics['mean_auroc']:.3f}** |")
    if "policy" in metrics:
        lines += ["", f"{int(metrics.get('n_studies', 0))} studies; label policy: {metrics['policy']}; chance = 0.5."]
    return "\n".join(lines)


def auroc_table(scores: np.ndarray, targets: np.ndarray, mask: np.ndarray, labels: list[str]) -> dict[str, float]:
    """Per-label AUROC (labels with both classes among valid entries) and their mean."""
    out = {f"auroc/{name}": float(a) for name, a in zip(labels, auroc_columns(scores, targets, mask))
           if np.isfinite(a)}
    if out:
        out["mean_auroc"] = float(np.mean(list(out.values())))
    return out
