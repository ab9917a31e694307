"""Export any checkpoint of a run as the task's Hugging Face-native folder (``mxr0 export``).

The run folder's ``recipe.yaml`` rebuilds the task and its model exactly as in training (LoRA wrappers
included), the checkpoint's weights are loaded strictly (a missing or unexpected key is an error, never a
silently half-initialised model), and the task's own ``export`` writes the folder: for report generation
that is the merged model, its processor and the adapter.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from mxr0.config import load_recipe
from mxr0.tasks import get_task_class
from mxr0.train.checkpoint import read_state, resolve_checkpoint

log = logging.getLogger(__name__)


def export_checkpoint(run_dir: str | os.PathLike, checkpoint: str = "latest", out_dir: str | os.PathLike | None = None) -> Path:
    from accelerate import Accelerator
    from safetensors.torch import load_file


    run_dir = Path(run_dir)
    recipe_file = run_dir / "recipe.yaml"
    if not recipe_file.exists():
        raise FileNotFoundError(f"{recipe_file} not found: pass a run folder made by `mxr0 train`")
    ckpt = resolve_checkpoint(run_dir, checkpoint)
    if ckpt is None:
        raise FileNotFoundError(f"no complete checkpoint in {run_dir / 'checkpoints'} (asked for {checkpoint!r})")
    weights = ckpt / "model.safetensors"
    if not weights.exists():
        raise FileNotFoundError(f"{weights} not found; checkpoints written by sharded launchers (FSDP / ZeRO-3) must be "
                                "consolidated first (see accelerate_configs/README)")
    recipe = load_recipe(recipe_file)
    task = get_task_class(recipe.task)(recipe)
    task.build_datasets()
    model = task.build_model()
    state = load_file(str(weights))
    missing, unexpected = model.load_state_dict(state, strict=False)
    tied = {k for k in missing if k.endswith("lm_head.weight") or k.endswith("lm_head.base_layer.weight")}
    missing = [k for k in missing if k not in tied]
    if missing or unexpected:
        raise RuntimeError(f"{weights} does not match the recipe's model: missing {missing[:5]}, unexpected {unexpected[:5]}")
    if tied and hasattr(model, "tie_weights"):
        model.tie_weights()
    step = read_state(ckpt).step
    out = Path(out_dir) if out_dir else run_dir / f"export-step-{step:08d}"
    task.export(model, out, Accelerator(cpu=True))
    log.info("exported %s (step %d) to %s", ckpt, step, out)
    return out
