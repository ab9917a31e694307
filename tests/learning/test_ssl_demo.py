"""The XR-0 part of the demo (`mxr0.demo.xr0.run_ssl_demo`) end to end, in its fast form."""

from __future__ import annotations

import json

import pytest


@pytest.mark.slow
def test_ssl_demo_fast_runs_and_reports(tmp_path):
    from transformers import AutoModel

    from mxr0.demo.xr0 import run_ssl_demo

    out = run_ssl_demo(tmp_path / "demo", tmp_path / "phantom", fast=True)
    metrics = [r["metric"] for r in out["rows"]]
    assert metrics[:2] == ["probe mean AUROC (chest findings)", "kNN anatomy accuracy"]
    assert all(r["pretrained"] is not None and r["random"] is not None for r in out["rows"])
    for key in ("json", "markdown", "probe_png", "pretraining_png"):
        assert (tmp_path / "demo" / "eval").joinpath(out["files"][key].split("/")[-1]).exists()
    assert json.loads((tmp_path / "demo" / "ssl_summary.json").read_text())["export_dir"] == out["export_dir"]
    assert AutoModel.from_pretrained(out["export_dir"]).config.model_type == "dinov2_with_registers"
