"""The real-radiograph check (`scripts/real_smoke.py`) runs end to end on ../shared/data: JSRT and the NIH labelled
subset converted by mxr0's own converters, XR-0 pretrained a few steps on JSRT's train split, the frozen suite (JSRT
Dice per organ, NIH probe) against random initialisation, with bootstrap intervals.

It asserts that the pipeline runs and gives well-formed numbers, not a margin: the shared sets are small (19 JSRT
and 14 NIH test images) and the full run's differences (README, "On real radiographs") lie inside their 95%
intervals, so no margin would hold over seeds. Skipped when ../shared/data is absent (a user's fresh clone)."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SHARED = REPO.parent / "shared" / "data"

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not (SHARED / "jsrt").is_dir() or not (SHARED / "nih_cxr14").is_dir(),
                                 reason="../shared/data (JSRT, NIH ChestX-ray14) is absent")]


def _script():
    spec = importlib.util.spec_from_file_location("real_smoke", REPO / "scripts" / "real_smoke.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_real_smoke_pipeline_runs_on_jsrt_and_nih(tmp_path, capsys):
    out = tmp_path / "out"
    rc = _script().main(["--pretrain-sets", "jsrt", "--steps", "6", "--fast", "--cache-size", "96",
                         "--data-out", str(tmp_path / "real"), "--out", str(out), "train.batch_size=16",
                         "train.save_every=0", "model.eval_gallery_studies=40"])
    assert rc == 0
    res = json.loads((out / "results.json").read_text())
    seg = res["jsrt"]["encoders"]
    assert set(seg) == {"xr0-real", "random-init"}
    for enc in seg.values():
        dice = enc["segmentation"]["heads"]["linear"]["dice"]
        assert set(dice) == {"right_lung", "left_lung", "heart"}
        assert all(0.0 <= v <= 1.0 for v in dice.values()), dice
        lo, hi = enc["segmentation"]["heads"]["linear"]["mean_dice_ci95"]
        assert lo <= enc["segmentation"]["heads"]["linear"]["mean_dice"] <= hi
    assert res["jsrt"]["n_studies"]["test"] == 19
    probe = res["nih"]["encoders"]["xr0-real"]["probe"]
    assert probe["mean_auroc"] is None or math.isnan(probe["mean_auroc"]) or 0.0 <= probe["mean_auroc"] <= 1.0
    md = (out / "results.md").read_text()
    assert "JSRT" in md and "NIH" in md and "Segmentation" in md
    printed = capsys.readouterr().out
    assert "xr0-real" in printed and "random-init" in printed
