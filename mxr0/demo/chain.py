"""The tiny recipe chain (``recipes/tiny/chain/``): each stage trains with the one training loop and starts from the
previous stage's export, through the one encoder loader (`mxr0.models.encoder.load_encoder` reads the vision tower
out of an XR-0, classifier, dual-encoder or VLM export) or, for VLM stage 2, ``model.init_from``.

1. ``1_xr0.yaml``: XR-0 self-supervised pretraining (DINO + iBOT + KoLeo) of a tiny ViT, every anatomy;
2. ``2_classify.yaml``: the supervised finding classifier, fine-tuning the XR-0 encoder on the chest labels;
3. ``3_align.yaml``: image-report alignment (CLIP loss) of that tower, partly unlocked, with a new text tower;
4. ``4_vlm_stage1.yaml``: VLM stage 1, report generation over the aligned tower (frozen);
5. ``5_vlm_stage2.yaml``: VLM stage 2, the instruction mixture (report, VQA, grounding, grounded report).

Stages can be left out (`plan`): the next stage then starts from the last export there is (without XR-0, from a new
ViT of the XR-0 shape, i.e. from scratch).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mxr0.config import load_recipe
from mxr0.demo.common import recipe_path, torch_threads
from mxr0.train.loop import train


@dataclass(frozen=True)
class Stage:
    key: str
    recipe: str
    title: str
    takes: str | None
    """The recipe field set to the previous stage's export (None: the first stage)."""
    folder: str
    """Its run folder under the chain's output (the demo's ``runs/demo/classify`` and ``runs/demo/report`` keep the
    paths that `mxr0 serve`, the docs and the scripts name)."""


STAGES = (
    Stage("xr0", "tiny/chain/1_xr0.yaml", "XR-0 self-supervised pretraining", None, "xr0"),
    Stage("classify", "tiny/chain/2_classify.yaml", "finding classifier on the XR-0 encoder", "model.encoder",
          "classify"),
    Stage("align", "tiny/chain/3_align.yaml", "image-report alignment on that tower", "model.vision", "align"),
    Stage("vlm_stage1", "tiny/chain/4_vlm_stage1.yaml", "VLM stage 1 (reports) on the aligned tower", "model.vision",
          "vlm-stage1"),
    Stage("vlm_stage2", "tiny/chain/5_vlm_stage2.yaml", "VLM stage 2 (instruction mixture)", "model.init_from",
          "report"),
)

# --fast: a smoke run of every stage (a few dozen steps each)
FAST = {
    "xr0": ["train.max_steps=40", "train.eval_every=0", "train.save_every=0", "train.warmup_steps=5",
            "model.eval_gallery_studies=200"],
    "classify": ["train.max_steps=30", "train.eval_every=0", "train.save_every=0", "train.warmup_steps=5"],
    "align": ["train.max_steps=30", "train.eval_every=0", "train.save_every=0", "train.warmup_steps=5"],
    "vlm_stage1": ["train.max_steps=20", "train.eval_every=0", "train.save_every=0", "model.eval_generate=4"],
    "vlm_stage2": ["train.max_steps=20", "train.eval_every=0", "train.save_every=0", "model.eval_generate=4"],
}


def plan(xr0: bool = True, classify: bool = True, align: bool = True, vlm: bool = True) -> list[Stage]:
    """The stages to run, in order."""
    keep = {"xr0": xr0, "classify": classify, "align": align, "vlm_stage1": vlm, "vlm_stage2": vlm}
    return [s for s in STAGES if keep[s.key]]


def _from_scratch(stage: Stage) -> list[str]:
    """Overrides that give a stage with no previous export a new ViT of the XR-0 shape (1_xr0.yaml's encoder)."""
    m = load_recipe(recipe_path(STAGES[0].recipe)).model
    shape = {**m.encoder_config, "num_register_tokens": m.num_register_tokens}
    mean, std = list(m.image_mean), list(m.image_std)
    if stage.key == "classify":
        return ["model.encoder=", f"model.encoder_config={shape}", f"model.image_size={m.global_crop_size}",
                f"model.image_mean={mean}", f"model.image_std={std}"]
    if stage.takes == "model.vision":
        return ["model.vision=", f"model.vision_config={shape}", f"model.image_size={m.global_crop_size}",
                f"model.image_mean={mean}", f"model.image_std={std}"]
    raise ValueError(f"stage {stage.key} needs a previous stage's export")


def run_chain(out_dir: str | Path, data: str | Path, stages: list[Stage], common: list[str] | None = None,
              overrides: dict[str, list[str]] | None = None, threads: int | None = 1,
              echo: Callable[[str], Any] = print, after: Callable[[str, dict[str, dict[str, Any]]], Any] | None = None,
              start_from: str | None = None) -> dict[str, dict[str, Any]]:
    """Train ``stages`` in order into ``out_dir/<stage folder>``, each from the previous one's export; ``common``
    overrides go to every stage, ``overrides[key]`` to one; ``after(key, results so far)`` runs after each stage;
    ``start_from``: an export (any kind the encoder loader reads) the first stage starts from.
    Returns ``{key: {export, run_dir, seconds, metrics}}``."""

    out_dir = Path(out_dir)
    results: dict[str, dict[str, Any]] = {}
    prev: str | None = start_from
    for n, stage in enumerate(stages, 1):
        ov = [f"data.path={data}", f"train.output_dir={out_dir / stage.folder}", *(common or [])]
        if stage.takes is not None:
            ov += [f"{stage.takes}={prev}"] if prev else _from_scratch(stage)
        ov += (overrides or {}).get(stage.key, [])
        source = f" on {prev}" if prev and stage.takes else ""
        echo(f"[chain] {n}/{len(stages)} {stage.title} ({'recipes/' + stage.recipe}){source}")
        t0 = time.perf_counter()
        with torch_threads(threads):
            result = train(load_recipe(recipe_path(stage.recipe), ov))
        seconds = round(time.perf_counter() - t0, 1)
        prev = str(result["export_dir"])
        results[stage.key] = {"export": prev, "run_dir": str(result["run_dir"]), "seconds": seconds,
                              "metrics": result.get("metrics") or {}}
        echo(f"[chain]     {stage.key}: {seconds:.0f} s, export {prev}")
        if after is not None:
            after(stage.key, results)
    return results
