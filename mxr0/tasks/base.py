"""The interface between a task and the one training loop."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import nn

if TYPE_CHECKING:
    from accelerate import Accelerator

    from mxr0.config import Recipe


def decay_param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Trainable parameters split into decayed (matrices) and non-decayed (biases, norms, tokens)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if p.ndim < 2 or name.endswith(".bias") or "norm" in name.lower() or "token" in name.lower():
            no_decay.append(p)
        else:
            decay.append(p)
    groups = []
    if decay:
        groups.append({"params": decay, "weight_decay": weight_decay, "wd_scale": 1.0})
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0, "wd_scale": 0.0})
    return groups


@dataclass(frozen=True)
class CardInfo:
    """What the model card (`mxr0.hub.render_model_card`) says about a task's export.

    ``pipeline_tag``: the Hub pipeline tag. ``summary``: what the model is, one phrase. ``usage``: Markdown with a
    Python snippet that loads the export with plain transformers. ``limitations``: task-specific items added to
    the card's limitations."""

    pipeline_tag: str
    summary: str
    usage: str
    limitations: tuple[str, ...] = ()


class Task:
    """Subclass and register in ``mxr0.tasks.TASKS``.

    The loop calls, in order: `build_datasets`, `build_model`, `param_groups`, `setup`, then per
    micro-batch `training_step` (returns a dict of named scalar tensors; ``loss`` is optimised, the
    rest are logged), `before_optimizer_step` once the step's gradients are complete, `on_step_end`
    after each optimiser step, `evaluate` at the evaluation cadence, and
    `export` at the end (a Hugging Face-native folder).

    Exact resume: random augmentations must draw from `mxr0.data.augment.sample_generator(seed,
    epoch, index)` (datasets get ``set_epoch`` calls from the loader), not from the global RNG, which
    the loader's prefetching advances ahead of the checkpoint.
    """

    name: ClassVar[str] = ""
    ModelConfig: ClassVar[type] = dict
    main_metric: ClassVar[str] = "loss"
    """The evaluation metric shown in the final summary."""

    def __init__(self, recipe: Recipe):
        self.recipe = recipe
        self.cfg = recipe.model

    # --- build ------------------------------------------------------------------------------
    def build_model(self) -> nn.Module:
        raise NotImplementedError

    def build_datasets(self) -> tuple[torch.utils.data.Dataset, torch.utils.data.Dataset | None]:
        """(train, eval) datasets; items are collated by `collate`."""
        raise NotImplementedError

    def collate(self, items: list[Any]) -> Any:
        return torch.utils.data.default_collate(items)

    def sampler(self, dataset: torch.utils.data.Dataset, batch_size: int, seed: int) -> torch.utils.data.Sampler | None:
        """The training order (a sampler with ``set_epoch`` whose order depends only on seed and epoch,
        for exact resume), or None for the loop's seeded shuffle. E.g. length-grouped batches."""
        return None

    def param_groups(self, model: nn.Module) -> list[dict]:
        """Optimiser parameter groups. Optional keys ``lr_scale`` / ``wd_scale`` multiply the
        scheduled learning rate / weight decay each step (layer-wise decay, no-decay groups)."""
        return decay_param_groups(model, self.recipe.train.weight_decay)

    # --- train ------------------------------------------------------------------------------
    def setup(self, total_steps: int, steps_per_epoch: int, accelerator: Accelerator) -> None:
        """Called once before the first step, when the run length is known (precompute per-step
        schedules here, e.g. teacher momentum or temperature)."""

    def training_step(self, model: nn.Module, batch: Any) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def count_items(self, batch: Any) -> int | torch.Tensor | None:
        """How many items the loss of ``batch`` averages over. Override it (and accept a ``num_items``
        keyword in `training_step`) when that number varies between micro-batches, e.g. the answer
        tokens of a language-model loss: a mean per micro-batch would then weight tokens unequally and
        change with the batch split across accumulation steps and processes.

        The loop then looks ahead over the accumulation window and calls
        ``training_step(model, batch, num_items=n)``, where ``n`` is the global batch's count (every
        micro-batch of the optimiser step on every process) divided by ``grad_accum × processes``; the
        task returns the *sum* of its item losses divided by ``n``. The loop's averaging over
        micro-batches and processes then yields the per-item mean of the global batch, in the gradient
        and in the logged loss, however the global batch is split (transformers' ``num_items_in_batch``).
        None (the default): the loss is a mean over equally sized micro-batches and needs no count."""
        return None

    def before_optimizer_step(self, model: nn.Module, step: int) -> None:
        """Called after the gradients of a step are complete, before clipping and the optimiser
        step (e.g. zero the gradients of a layer that stays frozen for the first epochs)."""

    def on_step_end(self, model: nn.Module, step: int, accelerator: Accelerator) -> None:
        """Called after every optimiser step (e.g. an EMA teacher update)."""

    # --- evaluate / export ------------------------------------------------------------------
    def evaluate(self, model: nn.Module, loader: torch.utils.data.DataLoader, accelerator: Accelerator) -> dict[str, float]:
        """Metrics on the evaluation set (all ranks call this; gather inside)."""
        return {}

    def export(self, model: nn.Module, out_dir: Path, accelerator: Accelerator) -> None:
        """Write the trained model as a Hugging Face-native folder (main process writes)."""

    @classmethod
    def card_info(cls, repo: str, export: Path) -> CardInfo:
        """The model card's details of this task's export (``repo``: the Hub id the snippet loads; ``export``: the
        exported folder). Override it in every task: this default loads a bare ``AutoModel``."""
        return CardInfo(
            pipeline_tag="feature-extraction", summary=f"a model trained by the `{cls.name}` task",
            usage=f'```python\nfrom transformers import AutoModel\n\nmodel = AutoModel.from_pretrained("{repo}")\n```')
