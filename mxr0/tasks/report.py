"""mXR-0 report generation: a Llava VLM (DINOv2-family encoder + projector + causal LM) trained to write
the findings and impression of a study, MAIRA-2 style inputs.

Stages (LLaVA / LLaVA-Rad recipe): stage 1 trains the projector only (``train_llm: frozen``,
``train_vision: frozen``); stage 2 starts from the stage-1 export (``init_from``) and adds LoRA on the LLM
(``train_llm: lora``, target modules by regex scoped to the language model) with the projector trained
and the encoder frozen or with LoRA; ``qlora`` loads the LLM in 4-bit (bitsandbytes: a CUDA GPU, or >= 0.50 on a CPU).
Tiny CPU recipes train a small Llama from scratch (``train_llm: full``) with a tokenizer trained on the
training reports.

Inputs per study (each optional): current frontal, current lateral, prior frontal (with the prior
report), and the indication / technique / comparison sections; the loss covers only the assistant's
answer. The export is one merged Hugging Face checkpoint (``AutoModelForImageTextToText`` +
``AutoProcessor`` with the chat template), plus ``adapter/`` (the LoRA adapter with the projector) when
LoRA was used, and ``mxr0_report.json`` (prompt settings for `mxr0 generate`).

The pieces live below: the section's checks and the model build in `mxr0.models.report_vlm`, the tokenizer in
`mxr0.data.task_tokenizers`, the evaluation in `mxr0.eval.vlm_monitor`, the export in `mxr0.models.vlm`.
"""

from __future__ import annotations

import logging
from pathlib import Path

from torch import nn

from mxr0.config import ConfigError
from mxr0.config.tasks import ReportModelConfig
from mxr0.data.instruct import MixtureSampler
from mxr0.data.loading import load_split
from mxr0.data.report_dataset import ChatCollator, ReportDataset
from mxr0.data.task_tokenizers import report_tokenizer
from mxr0.data.transforms import ImageTransform
from mxr0.distributed import shards_parameters
from mxr0.eval.instruct import main_metric_of
from mxr0.eval.vlm_monitor import answer_loss, generation_metrics
from mxr0.losses.answer import answer_forward, answer_token_count
from mxr0.models.report_vlm import build_report_vlm, check_report_config, report_vision_config
from mxr0.models.vlm import cache_vision_features, image_token_count, restore_vision_tower, save_vlm_export
from mxr0.tasks.base import CardInfo, Task
from mxr0.tasks.cards import instruct_card, report_card

log = logging.getLogger(__name__)


class ReportTask(Task):
    name = "report"
    ModelConfig = ReportModelConfig

    def __init__(self, recipe):
        super().__init__(recipe)
        check_report_config(self.cfg)
        self.tokenizer = None
        self._transform = None
        self.eval_ds: ReportDataset | None = None
        self.train_ds: ReportDataset | None = None
        self._model = None
        """The model `build_model` returned (the feature cache patches its vision tower in `setup`)."""

    @property
    def kinds(self) -> list[str]:
        """The trained kinds, in the recipe's order."""
        return [k for k, w in self.cfg.tasks.items() if w > 0]

    @property
    def main_metric(self) -> str:  # type: ignore[override]
        return main_metric_of(self.kinds[0])

    # --- parts ---------------------------------------------------------------------------------
    @property
    def transform(self):
        if self._transform is None:
            c = self.cfg
            self._transform = ImageTransform.for_encoder(c.init_from or c.vision, c.image_size, c.image_mean, c.image_std)
        return self._transform

    @property
    def n_image_tokens(self) -> int:
        return image_token_count(report_vision_config(self.cfg), self.transform.size, self.cfg.select_strategy)

    def build_datasets(self):
        d = self.recipe.data
        train_recs = load_split(d, d.train_split, d.max_train_studies)
        eval_recs = load_split(d, d.eval_split, d.max_eval_studies)
        n = self.n_image_tokens
        self.train_ds = ReportDataset(train_recs, None, self.transform, self.cfg, n, train=True,
                                      seed=self.recipe.train.seed)
        self.eval_ds = ReportDataset(eval_recs, None, self.transform, self.cfg, n, train=False)
        missing = [k for k in self.kinds if k not in self.train_ds.kinds]
        if missing:
            raise ConfigError(f"model.tasks has {missing} but the training records give no such examples (no "
                              f"{'QA pairs' if 'vqa' in missing else 'boxes'} in {d.path or d.source}, split {d.train_split})")
        self.tokenizer = report_tokenizer(self.cfg, self.train_ds)
        self.train_ds.tokenizer = self.eval_ds.tokenizer = self.tokenizer
        self.collate = ChatCollator(self.tokenizer.pad_token_id, "right")
        return self.train_ds, self.eval_ds

    def sampler(self, dataset, batch_size: int, seed: int):
        """The task mixture for the training set (per-kind sampling weights, length-grouped when
        ``group_by_length``); the loop asks, None = its default shuffle."""
        if dataset is not self.train_ds:
            return None
        lengths = dataset.lengths if self.cfg.group_by_length else None
        return MixtureSampler(dataset.kinds, self.cfg.tasks, seed, lengths, batch_size)

    def build_model(self) -> nn.Module:
        if self.tokenizer is None:
            raise RuntimeError("build_datasets must run before build_model (the tokenizer sizes the LLM)")
        self._model = build_report_vlm(self.cfg, self.tokenizer, self.transform.size, self.n_image_tokens,
                                       self.recipe.train.gradient_checkpointing, self.recipe.train.mixed_precision)
        return self._model

    # --- frozen-feature cache --------------------------------------------------------------------
    def setup(self, total_steps, steps_per_epoch, accelerator):
        if self.cfg.cache_features:
            cache_vision_features(self._model, [self.train_ds, self.eval_ds], accelerator.device)

    # --- train ---------------------------------------------------------------------------------
    def count_items(self, batch):
        """Answer tokens the loss covers: the loop weights every token of a global batch equally."""
        return answer_token_count(batch["labels"])

    def training_step(self, model, batch, num_items=None):
        """Next-token loss over the answer tokens: summed and divided by ``num_items`` (from the loop, see
        `Task.count_items`), or their mean in this batch when None."""
        return {"loss": answer_forward(model, batch, num_items)}

    # --- evaluate ------------------------------------------------------------------------------
    def evaluate(self, model, loader, accelerator):
        metrics = {"loss": answer_loss(model, loader, accelerator)}
        c = self.cfg
        if c.eval_generate > 0:
            if shards_parameters(accelerator):  # each model call needs every rank: decoding on one would hang
                if accelerator.is_main_process:
                    log.warning("model.eval_generate: no in-training generation metrics under ZeRO-3 / FSDP; "
                                "run `mxr0 generate` on the export")
            elif accelerator.is_main_process:
                metrics.update(generation_metrics(accelerator.unwrap_model(model), self.tokenizer, self.eval_ds,
                                                  self.kinds, c.eval_generate, c.max_new_tokens,
                                                  c.max_new_tokens_short, train_ds=self.train_ds))
        if accelerator.num_processes > 1:  # every rank returns the main process's generation metrics
            from accelerate.utils import broadcast_object_list

            box = [metrics if accelerator.is_main_process else None]
            broadcast_object_list(box, from_process=0)  # the key set is known on the main process only
            metrics = {**box[0], "loss": metrics["loss"]}
        return metrics

    # --- export --------------------------------------------------------------------------------
    def export(self, model, out_dir: Path, accelerator):
        restore_vision_tower(model)
        if not accelerator.is_main_process:
            return
        save_vlm_export(model, self.tokenizer, self.transform, Path(out_dir), self.cfg, self.n_image_tokens)

    @classmethod
    def card_info(cls, repo: str, export: Path) -> CardInfo:
        return report_card(repo, export)


class InstructTask(ReportTask):
    """The same VLM task under the name recipes for VQA, grounding and task mixtures use (``task: instruct``)."""

    name = "instruct"

    @classmethod
    def card_info(cls, repo: str, export: Path) -> CardInfo:
        return instruct_card(repo, export)
