"""The model-card details (`mxr0.tasks.base.CardInfo`) of every task's export: classify, ssl, align, report, instruct."""

from __future__ import annotations

import json
from pathlib import Path

from mxr0.tasks.base import CardInfo

HALLUCINATION = ("Generated text can be fluent and wrong: it may omit findings or describe findings that are not in the "
                 "image (hallucination), including devices and comparisons with priors.")


def classify_card(repo: str) -> CardInfo:
    return CardInfo("image-classification",
                    "a multi-label finding classifier (image → per-finding probabilities)", f'''```python
import torch
from PIL import Image
from transformers import AutoImageProcessor, AutoModelForImageClassification

repo = "{repo}"
processor = AutoImageProcessor.from_pretrained(repo)
model = AutoModelForImageClassification.from_pretrained(repo).eval()

image = Image.open("chest_xray.png").convert("RGB")
with torch.no_grad():
    logits = model(**processor(images=image, return_tensors="pt")).logits
probs = logits.sigmoid()[0]  # multi-label: one independent probability per finding
print({{model.config.id2label[i]: round(float(p), 3) for i, p in enumerate(probs)}})
```

`mxr0_labels.json` holds the label list and how uncertain / blank labels were mapped in training.''')


def ssl_card(repo: str) -> CardInfo:
    return CardInfo("image-feature-extraction",
                    "a self-supervised image encoder (DINOv2-style image- and patch-level objectives)", f'''```python
import torch
from PIL import Image
from transformers import AutoImageProcessor, AutoModel

repo = "{repo}"
processor = AutoImageProcessor.from_pretrained(repo)
model = AutoModel.from_pretrained(repo).eval()

image = Image.open("xray.png").convert("RGB")
with torch.no_grad():
    out = model(**processor(images=image, return_tensors="pt"))
embedding = out.pooler_output                       # (1, hidden_size) image-level feature (CLS)
n_skip = 1 + getattr(model.config, "num_register_tokens", 0)
patches = out.last_hidden_state[:, n_skip:]         # (1, n_patches, hidden_size) patch features
```

A frozen encoder: use the features with a linear probe, kNN, or a segmentation decoder
(`mxr0 eval vision` runs all of these).''')


def align_card(repo: str) -> CardInfo:
    return CardInfo("zero-shot-image-classification",
                    "a contrastive image–report dual encoder (retrieval, zero-shot classification)", f'''```python
import torch
from PIL import Image
from transformers import VisionTextDualEncoderModel, VisionTextDualEncoderProcessor

repo = "{repo}"
model = VisionTextDualEncoderModel.from_pretrained(repo).eval()
processor = VisionTextDualEncoderProcessor.from_pretrained(repo)

image = Image.open("chest_xray.png").convert("RGB")
texts = ["No pleural effusion.", "Large right pleural effusion."]
inputs = processor(text=texts, images=image, return_tensors="pt", padding=True)
with torch.no_grad():
    out = model(**inputs)
print(out.logits_per_image.softmax(dim=-1))  # zero-shot: which text fits the image best
```

`mxr0_align.json` holds the training loss, the report sections used as text, the zero-shot prompts
and the logit bias (sigmoid loss).''')


def report_card(repo: str, export: Path) -> CardInfo:
    return CardInfo("image-text-to-text", "a vision-language model that writes radiology reports from images",
                    _vlm_usage(repo, export, "The exact prompt (views, indication / technique / comparison, "
                               "instruction, number of image tokens) is in\n`mxr0_report.json`; `mxr0 generate "
                               "--model <downloaded folder> --image frontal.png --image lateral.png`\nbuilds it "
                               "and streams a report."),
                    (HALLUCINATION,))


def instruct_card(repo: str, export: Path) -> CardInfo:
    settings = {}
    try:
        settings = json.loads((Path(export) / "mxr0_report.json").read_text())
    except (OSError, ValueError):
        pass
    tasks = [k for k, w in (settings.get("tasks") or {}).items() if w]
    trained = f" (trained on: {', '.join(tasks)})" if tasks else ""
    return CardInfo(
        "image-text-to-text",
        "a radiology vision-language model that follows instructions: visual question answering, grounding "
        f"and localisation (boxes written as text) and reports{trained}",
        _vlm_usage(repo, export, "The prompts of each kind (instruction, VQA, grounding and localisation "
                   "prompts), the box format and the number of image\ntokens are in `mxr0_report.json`; "
                   "`mxr0 generate --task vqa|grounding|localisation|grounded_report --model <downloaded folder> "
                   "--image cxr.png --prompt \"...\"`\nbuilds them and parses the boxes of an answer."),
        (HALLUCINATION, "Boxes are text the model writes, in coordinates of the image as the model saw it (after "
         "resizing / padding): they can be malformed, misplaced or name findings that are not there; answers to "
         "questions can be fluent and wrong."))


def _vlm_usage(repo: str, export: Path, prompt_note: str) -> str:
    adapter = "\nA LoRA adapter (before merging) is in `adapter/`." if (Path(export) / "adapter").exists() else ""
    return f'''```python
from transformers import AutoModelForImageTextToText, AutoProcessor

repo = "{repo}"
model = AutoModelForImageTextToText.from_pretrained(repo).eval()   # LlavaForConditionalGeneration
processor = AutoProcessor.from_pretrained(repo)
```

{prompt_note}{adapter}'''
