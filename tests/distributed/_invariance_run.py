"""Short runs of the real training loop for tests/distributed/test_invariance.py.

    python tests/distributed/_invariance_run.py DATA TOKENIZER OUT BATCH ACCUM           # one process
    ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes 2 tests/distributed/_invariance_run.py DATA TOKENIZER OUT 4 1

trains each task of `TASKS` for `STEPS` optimiser steps with micro-batch BATCH and ACCUM accumulation
steps into ``OUT/<task>``, logging every step to ``metrics.jsonl``; every rank writes
``OUT/world.rank{r}.json`` with the world size it saw. The settings make a run a function of the
global batch only: the loop's default seeded shuffle (not length grouping), no augmentation, no
dropout, so that rank r's share of step s is the slice of the one-process global batch that accelerate's
batch sharding gives it. The alignment runs share one saved WordPiece tokenizer (`align_tokenizer`):
one trained in each run (and on each rank) can differ, because the trainer is not deterministic.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
STEPS = 4
TASKS = ("classify", "align", "report", "ssl")
VIT = ("{hidden_size: 32, num_hidden_layers: 2, num_attention_heads: 2, mlp_ratio: 2, patch_size: 14, "
       "num_register_tokens: 2}")
RECIPES = {"classify": "classify.yaml", "align": "mxr0_align.yaml", "report": "mxr0_report.yaml",
           "ssl": "xr0_pretrain.yaml"}
TASK_OVERRIDES = {
    "classify": ["model.image_size=56", f"model.encoder_config={VIT}", "model.augment=false"],
    "align": [
        "model.image_size=56", f"model.vision_config={VIT}",
        "model.text_config={hidden_size: 32, num_hidden_layers: 2, num_attention_heads: 2, intermediate_size: 64, "
        "hidden_dropout_prob: 0.0, attention_probs_dropout_prob: 0.0}",
        "model.tokenizer_vocab_size=300", "model.projection_dim=16", "model.max_text_length=64", "model.augment=false",
        "model.sentence_keep=1.0", "model.shuffle_sentences=false", "model.texts_per_image=1",
    ],
    "report": [
        "model.vision=", "model.image_size=56", f"model.vision_config={VIT}",
        "model.llm_config={hidden_size: 32, intermediate_size: 64, num_hidden_layers: 2, num_attention_heads: 2, "
        "num_key_value_heads: 2}",
        "model.tokenizer_vocab_size=300", "model.max_length=256", "model.train_llm=full", "model.train_vision=frozen",
        "model.augment=false", "model.cache_features=false", "model.group_by_length=false", "model.eval_generate=0",
        "model.target_sections=[impression]",  # answers of 21 to 147 tokens: micro-batches differ in tokens
    ],
    "ssl": [  # crops and masks are functions of (seed, epoch, index); KoLeo is per micro-batch, so off
        "model.encoder_config={hidden_size: 32, num_hidden_layers: 2, num_attention_heads: 2, mlp_ratio: 2, "
        "patch_size: 8, layerscale_value: 0.1}",
        "model.num_register_tokens=2", "model.global_crop_size=32", "model.local_crop_size=16", "model.n_local_crops=2",
        "model.dino_n_prototypes=64", "model.dino_hidden_dim=64", "model.dino_bottleneck_dim=16",
        "model.eval_gallery_studies=16", "model.koleo_loss_weight=0", "model.drop_path_rate=0",
        "model.freeze_last_layer_epochs=0",
    ],
}


def align_tokenizer(data: Path, out: Path) -> Path:
    """A WordPiece tokenizer of the training reports, saved to ``out`` for every alignment run."""
    from mxr0.data.loading import load_split
    from mxr0.data.text import report_text, train_wordpiece_tokenizer

    rec = recipe("align", data, None, Path(out), 1, 1)
    records = load_split(rec.data, rec.data.train_split, rec.data.max_train_studies)
    texts = [report_text(r, rec.model.text_sections) for r in records]
    train_wordpiece_tokenizer([t for t in texts if t], 300, 64, save_dir=out)
    return Path(out)


def recipe(task: str, data: Path, tokenizer: Path | None, out: Path, batch: int, accum: int):
    from mxr0.config import load_recipe

    common = [
        "data.source=records", f"data.path={data}", "data.max_train_studies=24", "data.max_eval_studies=8",
        f"train.output_dir={out}", f"train.batch_size={batch}", f"train.grad_accum={accum}",
        f"train.max_steps={STEPS}", "train.warmup_steps=0", "train.log_every=1", "train.eval_every=0",
        "train.save_every=0", "train.progress=false", "train.trackers=[jsonl]",
    ]
    extra = [f"model.tokenizer={tokenizer}"] if task == "align" and tokenizer else []
    return load_recipe(REPO / "recipes" / "tiny" / RECIPES[task], common + TASK_OVERRIDES[task] + extra)


def run_all(data: Path, tokenizer: Path, out: Path, batch: int, accum: int, tasks=TASKS) -> dict[str, int]:
    """Trains every task; returns the number of processes each run saw."""
    from unittest import mock

    from accelerate import Accelerator

    from mxr0.train.loop import train

    # One process group serves the runs one after another (`end_training` would destroy it, and setting
    # up a second one under the same launcher can hang); it ends with the process.
    with mock.patch.object(Accelerator, "end_training", lambda self: None):
        return {task: train(recipe(task, data, tokenizer, out / task, batch, accum))["num_processes"] for task in tasks}


def step_logs(run_dir: Path) -> list[dict]:
    """The per-step training lines of a run's metrics.jsonl."""
    lines = [json.loads(x) for x in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]
    return [x for x in lines if "train/loss" in x]


if __name__ == "__main__":
    import os

    data, tokenizer, out = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
    worlds = run_all(data, tokenizer, out, int(sys.argv[4]), int(sys.argv[5]))
    rank = int(os.environ.get("RANK", 0))
    (out / f"world.rank{rank}.json").write_text(json.dumps(worlds))
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()
