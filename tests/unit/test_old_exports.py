"""Exports written by mxr0 before the architecture moves (commit 421ae1e) still load and give the same outputs.

The fixtures in tests/fixtures/exports_421ae1e were written by that commit's own code: a tiny classifier, XR-0
(SSL) encoder, dual encoder and report VLM, each trained 2 steps on a phantom set, and their outputs on three
phantom radiographs computed by that code (`make_reference.py` there says exactly how). Today's loaders must read
each of them and reproduce those numbers; a format change that breaks a user's saved model fails here.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from mxr0.data.report_dataset import ReportDataset
from mxr0.data.transforms import ImageTransform
from mxr0.data.xray import read_xray
from mxr0.generate import _config_from, generate_study, load_vlm
from mxr0.models.dual_encoder import image_outputs, make_text_encoder
from mxr0.models.encoder import load_encoder

FIX = Path(__file__).resolve().parents[1] / "fixtures" / "exports_421ae1e"
IMAGES = sorted(str(p) for p in (FIX / "images").glob("*.png"))
ATOL = 1e-5


@pytest.fixture(scope="module")
def ref():
    return load_file(str(FIX / "reference_outputs.safetensors")), json.loads((FIX / "reference_outputs.json").read_text())


def _pixels(export: Path) -> torch.Tensor:
    tf = ImageTransform.from_pretrained(str(export))
    return torch.stack([tf(read_xray(p)) for p in IMAGES])


def test_fixture_is_complete():
    assert len(IMAGES) == 3
    for kind in ("classify", "xr0", "align", "report"):
        assert (FIX / kind / "config.json").is_file() and (FIX / kind / "model.safetensors").is_file(), kind


@pytest.mark.parametrize("kind", ["classify", "xr0"])
def test_encoder_exports_preprocess_and_encode_the_same(kind, ref):
    tensors, _ = ref
    x = _pixels(FIX / kind)
    torch.testing.assert_close(x[:, 0], tensors[f"{kind}.pixel_values"], atol=ATOL, rtol=0)
    with torch.no_grad():
        hidden = load_encoder(str(FIX / kind)).eval()(pixel_values=x).last_hidden_state
    torch.testing.assert_close(hidden, tensors[f"{kind}.encoder_hidden"], atol=ATOL, rtol=1e-4)


def test_classifier_export_gives_the_same_logits_and_labels(ref):
    from transformers import AutoModelForImageClassification

    tensors, meta = ref
    model = AutoModelForImageClassification.from_pretrained(str(FIX / "classify")).eval()
    assert [model.config.id2label[i] for i in range(model.config.num_labels)] == meta["classify.labels"]
    with torch.no_grad():
        logits = model(pixel_values=_pixels(FIX / "classify")).logits
    torch.testing.assert_close(logits, tensors["classify.logits"], atol=ATOL, rtol=1e-4)


def test_dual_encoder_export_embeds_the_same_and_feeds_the_encoder_loader(ref):
    from transformers import AutoModel, AutoTokenizer

    tensors, meta = ref
    export = FIX / "align"
    dual = AutoModel.from_pretrained(str(export)).eval()
    x = _pixels(export)
    settings = json.loads((export / "mxr0_align.json").read_text())
    with torch.no_grad():
        emb, patch, _ = image_outputs(dual, x)
        text = make_text_encoder(dual, AutoTokenizer.from_pretrained(str(export)), int(settings.get("max_text_length", 96)))
        text_emb = text(meta["align.texts"])
        tower = load_encoder(str(export)).eval()(pixel_values=x).last_hidden_state
    torch.testing.assert_close(emb, tensors["align.image_emb"], atol=ATOL, rtol=1e-4)
    torch.testing.assert_close(patch, tensors["align.patch_emb"], atol=ATOL, rtol=1e-4)
    torch.testing.assert_close(text_emb, tensors["align.text_emb"], atol=ATOL, rtol=1e-4)
    # the export's vision tower, loaded through the one encoder loader, is the tower the old code ran
    torch.testing.assert_close(tower, tensors["align.vision_hidden"], atol=ATOL, rtol=1e-4)


def test_vlm_export_builds_the_same_prompt_and_predicts_the_same(ref):
    tensors, meta = ref
    export = FIX / "report"
    model, tokenizer, transform, settings = load_vlm(str(export), device="cpu")
    record = {"study_id": "s", "images": [{"path": IMAGES[0], "view": "PA", "role": "current"}],
              "indication": "Chest pain.", "technique": "", "comparison": "", "findings": "-", "impression": "-"}
    item = ReportDataset([record], tokenizer, transform, _config_from(settings), int(settings["n_image_tokens"]),
                         train=False, with_answer=False, kinds=["report"])[0]
    assert list(item["input_ids"]) == meta["report.prompt_ids"]
    ids = torch.tensor([item["input_ids"]])
    with torch.no_grad():
        logits = model(input_ids=ids, pixel_values=item["pixel_values"]).logits
        forced = model.generate(input_ids=ids, pixel_values=item["pixel_values"], max_new_tokens=12, min_new_tokens=12,
                                do_sample=False, pad_token_id=tokenizer.pad_token_id)
        tower = load_encoder(str(export)).eval()(pixel_values=_pixels(export)).last_hidden_state
    torch.testing.assert_close(logits[0, -1], tensors["report.last_logits"], atol=1e-4, rtol=1e-4)
    assert forced[0, ids.shape[1]:].tolist() == meta["report.forced_tokens"]
    torch.testing.assert_close(tower, tensors["report.vision_hidden"], atol=ATOL, rtol=1e-4)
    # the one-study entry point reads the old export and decodes what the old code decoded
    assert [generate_study(str(export), [p], ["PA"], stream=False, max_new_tokens=16) for p in IMAGES] == meta["report.greedy"]
