"""The demo's recipe chain without training: the recipes link each stage to the previous stage's export, a stage
left out is replaced by a new ViT of the XR-0 shape, and the one table renders whatever parts ran."""

from __future__ import annotations

import pytest

from mxr0.config import load_recipe
from mxr0.demo.chain import STAGES, _from_scratch, plan
from mxr0.demo.common import recipe_path
from mxr0.demo.table import chain_table


def _field(recipe, dotted: str):
    obj = recipe
    for part in dotted.split("."):
        obj = getattr(obj, part)
    return obj


def test_each_chain_recipe_starts_from_the_previous_stage_export():
    recipes = [load_recipe(recipe_path(s.recipe)) for s in STAGES]
    assert [r.task for r in recipes] == ["ssl", "classify", "align", "report", "instruct"]
    for prev, stage, recipe in zip(recipes, STAGES[1:], recipes[1:]):
        assert _field(recipe, stage.takes) == f"{prev.train.output_dir}/export", stage
    stage2 = recipes[-1].model
    assert set(stage2.tasks) == {"report", "vqa", "grounding", "grounded_report"}
    assert recipes[2].model.vision_unlocked_layers == 1  # partly unlocked


def test_plan_leaves_stages_out_in_order():
    assert [s.key for s in plan()] == ["xr0", "classify", "align", "vlm_stage1", "vlm_stage2"]
    assert [s.key for s in plan(xr0=False, vlm=False)] == ["classify", "align"]
    assert [s.key for s in plan(classify=False, align=False)] == ["xr0", "vlm_stage1", "vlm_stage2"]


@pytest.mark.parametrize("key", ["classify", "align", "vlm_stage1"])
def test_a_stage_without_a_previous_export_gets_a_new_vit_of_the_xr0_shape(key):
    stage = next(s for s in STAGES if s.key == key)
    recipe = load_recipe(recipe_path(stage.recipe), _from_scratch(stage))
    xr0 = load_recipe(recipe_path(STAGES[0].recipe)).model
    m = recipe.model
    shape = m.encoder_config if key == "classify" else m.vision_config
    assert shape["hidden_size"] == xr0.encoder_config["hidden_size"] and shape["patch_size"] == 8
    assert shape["num_register_tokens"] == xr0.num_register_tokens and m.image_size == xr0.global_crop_size
    with pytest.raises(ValueError, match="previous stage"):
        _from_scratch(STAGES[-1])


ENC = {"encoders": {n: {"probe_auroc": 0.7, "knn_anatomy": 0.9, "seg_dice": 0.6, "sex_gap": 0.01, "age_gap": None}
                    for n in ("random init", "XR-0", "+ classifier", "+ alignment")},
       "baselines": {"probe_auroc": 0.5, "knn_anatomy": 0.6, "seg_dice": 0.8}}
ALIGN = {"i2t_r5": 0.3, "t2i_r5": 0.25, "chance_r5": 0.04, "zeroshot_mean_auroc": 0.7, "grounding_miou": 0.05,
         "grounding_baseline_miou": 0.09}
SIDE = {"rules_f1_14_micro": 0.6, "rules_f1_14_macro": 0.4, "rules_f1_5_micro": 0.5, "rules_f1_5_macro": 0.45,
        "bleu_4": 0.2, "rouge_l": 0.4}
VLM = {"report": {"ours": SIDE, "constant": {k: v / 4 for k, v in SIDE.items()}}, "vqa_closed_accuracy": 0.7,
       "vqa_closed_accuracy_ranked": 0.72, "vqa_prior_closed_accuracy": 0.33, "grounding_acc50": 0.3,
       "grounding_miou": 0.3, "grounding_prior_acc50": 0.0, "grounding_prior_miou": 0.1}


def test_the_one_table_puts_every_stage_side_by_side():
    lines = chain_table(ENC, ALIGN, VLM).splitlines()
    assert lines[0] == ("| metric (held-out studies) | random init | XR-0 | + classifier | + alignment | VLM stage 2 | "
                        "trivial baseline |")
    assert all(line.count("|") == lines[0].count("|") for line in lines)
    r5 = next(line for line in lines if "R@5" in line).split("|")
    assert r5[5].strip() == "0.300 / 0.250" and "0.040 (chance)" in r5[7]  # in the aligned tower's column
    vqa = next(line for line in lines if "VQA" in line).split("|")
    assert vqa[6].strip() == "0.700 / 0.720" and "0.330 (prior answer)" in vqa[7]
    assert "0.010 / –" in next(line for line in lines if "gap" in line)


def test_the_table_without_encoders_or_vlm():
    only_align = chain_table(None, ALIGN, None).splitlines()
    assert only_align[0] == "| metric (held-out studies) | + alignment | trivial baseline |"
    assert len(only_align) == 5
    no_align = chain_table({**ENC, "encoders": {"random init": ENC["encoders"]["random init"]}}, None, VLM)
    assert "R@5" not in no_align and "| random init | VLM stage 2 |" in no_align
