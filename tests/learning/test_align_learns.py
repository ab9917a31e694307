"""End to end: the tiny dual encoder learns image–report alignment on the phantom studies (margins over
chance on held-out studies, not only that it runs)."""

from __future__ import annotations

from pathlib import Path

import pytest

from mxr0.config import load_recipe
from mxr0.data.records import read_records
from mxr0.eval.align_cli import evaluate_export
from mxr0.train.loop import train

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def phantom_1200(tmp_path_factory) -> Path:
    from mxr0.data.phantom import generate_phantom

    return Path(generate_phantom(tmp_path_factory.mktemp("ph1200"), n_studies=1200, image_size=128, seed=3,
                                 progress=False))


@pytest.mark.slow
def test_tiny_dual_encoder_beats_chance_on_held_out_studies(phantom_1200, tmp_path, one_thread):
    recipe = load_recipe(REPO / "recipes/tiny/mxr0_align.yaml", [
        "data.source=records", f"data.path={phantom_1200}", f"train.output_dir={tmp_path / 'run'}",
        "train.max_steps=400", "train.eval_every=0", "train.save_every=0", "train.progress=false",
        "train.trackers=[jsonl]",
    ])
    result = train(recipe)
    held_out = [r for r in read_records(phantom_1200, splits=["validation", "test"]) if r["anatomy"] == "chest"]
    m = evaluate_export(result["export_dir"], held_out, views=["PA", "AP"])
    print({k: round(v, 3) for k, v in m.items() if "/" not in k})  # shown with pytest -s
    assert m["n_images"] >= 100, m
    # retrieval: R@5 at least 2.5x chance over both directions, and above 1.5x chance in each; zero-shot AUROC from
    # prompts alone above chance (0.5). The run is deterministic (the WordPiece vocabulary is learnt by sorted merges,
    # one torch thread): i2t / t2i R@5 0.104 / 0.076 (chance 0.035), zero-shot AUROC 0.605 measured here. With the
    # earlier hash-ordered HF trainer the vocabulary changed run to run (R@5 0.076-0.15, zero-shot 0.648-0.745), and a
    # whole-word vocabulary tried here gave R@5 0.139 / 0.153 and zero-shot 0.563: the zero-shot bound sits below all
    # of these; the retrieval bounds are the original ones (not yet measured over 5 seeds).
    assert m["i2t_r5"] + m["t2i_r5"] >= 2.5 * (m["chance_r5_i2t"] + m["chance_r5_t2i"]), m
    assert min(m["i2t_r5"] / m["chance_r5_i2t"], m["t2i_r5"] / m["chance_r5_t2i"]) >= 1.5, m
    assert m["zeroshot_mean_auroc"] >= 0.55, m
