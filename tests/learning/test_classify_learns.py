"""End to end: the tiny ViT classifier learns the phantom findings (a margin over chance, not only runs)."""

from __future__ import annotations

from pathlib import Path

import pytest

from mxr0.config import load_recipe
from mxr0.data.records import read_records
from mxr0.eval.classify import evaluate_classifier
from mxr0.train.loop import train

REPO = Path(__file__).resolve().parents[2]
EASY = "[Cardiomegaly, Enlarged Cardiomediastinum, Edema, Pleural Effusion, Support Devices]"


@pytest.fixture(scope="module")
def phantom_800(tmp_path_factory) -> Path:
    from mxr0.data.phantom import generate_phantom

    return Path(generate_phantom(tmp_path_factory.mktemp("ph800"), n_studies=800, image_size=64, seed=1, progress=False))


@pytest.mark.slow
def test_tiny_classifier_beats_chance_on_held_out_studies(phantom_800, tmp_path):
    recipe = load_recipe(REPO / "recipes/tiny/classify.yaml", [
        "data.source=records", f"data.path={phantom_800}", f"train.output_dir={tmp_path / 'run'}",
        f"model.labels={EASY}", "model.image_size=56",
        "model.encoder_config={hidden_size: 64, num_hidden_layers: 3, num_attention_heads: 4, "
        "intermediate_size: 128, patch_size: 7, num_register_tokens: 2}",
        "train.epochs=25", "train.lr=2e-3", "train.warmup_steps=20", "train.eval_every=0", "train.save_every=0",
        "train.progress=false", "train.trackers=[jsonl]",
    ])
    result = train(recipe)
    # validation + test: ~100 held-out chest studies (validation only logged, never used for selection)
    held_out = [r for r in read_records(phantom_800, splits=["validation", "test"]) if r["anatomy"] == "chest"]
    metrics = evaluate_classifier(result["export_dir"], held_out, views=["PA", "AP"])
    per_label = {k: v for k, v in metrics.items() if k.startswith("auroc/")}
    assert len(per_label) == 5, metrics
    assert metrics["mean_auroc"] >= 0.75, metrics  # chance is 0.5
    assert min(per_label.values()) >= 0.65, metrics
