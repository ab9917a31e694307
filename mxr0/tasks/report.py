"""mXR-0 report generation: a Llava VLM (DINOv2-family encoder + projector + causal LM) trained to write
the findings and impression of a study, MAIRA-2 style inputs.

Stages (LLaVA / LLaVA-Rad recipe): stage 1 trains the projector only (``train_llm: frozen``,
``train_vision: frozen``); stage 2 starts from the stage-1 export (``init_from``) and adds LoRA on the LLM
(``train_llm: lora``, target modules by regex scoped to the language model) with the projector trained
and the encoder frozen or with LoRA; ``qlora`` loads the LLM in 4-bit (bitsandbytes, CUDA only).
Tiny CPU recipes train a small Llama from scratch (``train_llm: full``) with a tokenizer trained on the
training reports.

Inputs per study (each optional): current frontal, current lateral, prior frontal (with the prior
report), and the indication / technique / comparison sections; the loss covers only the assistant's
answer. The export is one merged Hugging Face checkpoint (``AutoModelForImageTextToText`` +
``AutoProcessor`` with the chat template), plus ``adapter/`` (the LoRA adapter with the projector) when
LoRA was used, and ``mxr0_report.json`` (prompt settings for `mxr0 generate`).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
from torch import nn

from mxr0.config import ConfigError
from mxr0.config.tasks import VIEW_CHOICES, ReportModelConfig  # noqa: F401 (VIEW_CHOICES re-exported)
from mxr0.data.boxes_text import box_special_tokens
from mxr0.data.chat import IMAGE_TOKEN, TINY_CHAT_TEMPLATE, ensure_image_token, train_chat_tokenizer
from mxr0.data.instruct import KINDS, MixtureSampler  # noqa: F401 (re-exported)
from mxr0.data.loading import load_split
from mxr0.data.report_dataset import ChatCollator, ReportDataset  # noqa: F401 (moved; re-exported)
from mxr0.data.transforms import ImageTransform
from mxr0.distributed import shards_parameters
from mxr0.eval.instruct import main_metric_of, ranked_closed_accuracy, score_kind
from mxr0.losses.answer import answer_token_count, answer_token_loss  # noqa: F401 (moved; re-exported)
from mxr0.models.decoding import generate_batch
from mxr0.models.encoder import encoder_config, load_encoder, new_encoder, new_encoder_config
from mxr0.models.vlm import (  # noqa: F401 (moved; re-exported)
    build_vlm,
    cache_vision_features,
    check_image_token_budget,
    image_token_count,
    restore_vision_tower,
    save_vlm_export,
    tiny_causal_lm,
)
from mxr0.tasks.base import CardInfo, Task

log = logging.getLogger(__name__)


def _check_local_path(value: str, key: str) -> None:
    """A clear error for a missing local folder (Hub ids are ``org/name``: one slash, no leading dot)."""
    if not value or Path(value).exists():
        return
    if value.startswith((".", "/", "~")) or value.count("/") > 1:
        hint = " (train recipes/tiny/classify.yaml first, or set it to an encoder folder / Hub id)" \
            if "classify" in value else ""
        raise ConfigError(f"{key}={value!r}: no such folder{hint}")


class ReportTask(Task):
    name = "report"
    ModelConfig = ReportModelConfig

    def __init__(self, recipe):
        super().__init__(recipe)
        c = self.cfg
        bad = {k: w for k, w in c.tasks.items() if k not in KINDS or not isinstance(w, (int, float)) or w < 0}
        if bad or not any(w > 0 for w in c.tasks.values()):
            raise ConfigError(f"model.tasks={c.tasks}: give kinds from {list(KINDS)} with sampling weights >= 0, "
                              "at least one > 0 (e.g. {report: 1.0, vqa: 1.0, grounding: 0.5})")
        if c.box_format not in ("plain", "tokens"):
            raise ConfigError(f"model.box_format={c.box_format!r}: choose 'plain' or 'tokens'")
        if not c.vqa_answer_types or any(t not in ("closed", "open") for t in c.vqa_answer_types):
            raise ConfigError(f"model.vqa_answer_types={c.vqa_answer_types}: choose from ['closed', 'open']")
        bad = [v for v in c.views if v not in VIEW_CHOICES]
        if bad or "frontal" not in c.views:
            raise ConfigError(f"model.views={c.views}: must include 'frontal'; choices {list(VIEW_CHOICES)}")
        for key, allowed in (("context_sections", ("indication", "technique", "comparison")),
                             ("target_sections", ("findings", "impression"))):
            vals = getattr(c, key)
            if any(s not in allowed for s in vals) or (key == "target_sections" and not vals):
                raise ConfigError(f"model.{key}={vals}: choose from {list(allowed)}")
        for key in ("vision", "llm", "init_from"):
            _check_local_path(getattr(c, key), f"model.{key}")
        if c.cache_features and (c.train_vision != "frozen" or c.augment):
            raise ConfigError("model.cache_features=true needs model.train_vision=frozen and model.augment=false "
                              "(the cached features are those of the unaugmented images through the frozen encoder)")
        if c.train_llm == "qlora" and not torch.cuda.is_available():
            raise ConfigError("model.train_llm=qlora needs a CUDA GPU (bitsandbytes 4-bit kernels); on this machine "
                              "use model.train_llm=lora (or full for tiny models)")
        if c.train_llm == "qlora" and not c.init_from and not c.llm:
            raise ConfigError("model.train_llm=qlora quantises a pretrained LLM: set model.llm or model.init_from")
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

    def _build_tokenizer(self, train_ds: ReportDataset):
        from transformers import AutoTokenizer


        c = self.cfg
        if c.init_from or c.llm:
            tok = AutoTokenizer.from_pretrained(c.init_from or c.llm)
            ensure_image_token(tok)
            if not tok.chat_template:
                log.warning("%s has no chat template; using mxr0's plain role-marker template", c.init_from or c.llm)
                tok.chat_template = TINY_CHAT_TEMPLATE
        else:
            texts = [train_ds.answer(i) for i in range(len(train_ds))]
            texts += sorted({ex.instruction for ex in train_ds.examples})
            texts += [r.get(s) or "" for r in train_ds.records for s in c.context_sections]
            tok = train_chat_tokenizer([t for t in texts if t], c.tokenizer_vocab_size, c.max_length)
        if c.box_format == "tokens":
            new = [t for t in box_special_tokens() if t not in tok.get_vocab()]
            if new:
                tok.add_tokens(new, special_tokens=True)
        return tok

    @property
    def n_image_tokens(self) -> int:

        return image_token_count(self._vision_config(), self.transform.size, self.cfg.select_strategy)

    def _vision_config(self):
        from transformers import AutoConfig


        c = self.cfg
        if c.init_from:
            return AutoConfig.from_pretrained(c.init_from).vision_config
        if c.vision:
            return encoder_config(c.vision)  # any stage's export: an encoder, a classifier, an alignment / VLM tower
        return new_encoder_config(c.image_size, **c.vision_config)

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
        self.tokenizer = self._build_tokenizer(self.train_ds)
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

        c = self.cfg
        if self.tokenizer is None:
            raise RuntimeError("build_datasets must run before build_model (the tokenizer sizes the LLM)")

        check_image_token_budget(c, self.n_image_tokens)  # before loading any weights: images must fit max_length
        image_token_id = self.tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
        if c.init_from:
            model = self._load_vlm(c.init_from)
        else:
            model = self._new_vlm(image_token_id)
        if len(self.tokenizer) > model.config.text_config.vocab_size:
            model.resize_token_embeddings(len(self.tokenizer))
        model.config.pad_token_id = self.tokenizer.pad_token_id
        self._model = self._set_trainable(model)
        return self._model

    def _load_vlm(self, path: str):
        from transformers import AutoModelForImageTextToText

        kwargs = {}
        if self.cfg.train_llm == "qlora":
            from transformers import BitsAndBytesConfig

            kwargs["quantization_config"] = BitsAndBytesConfig(
                load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.bfloat16,
                bnb_4bit_use_double_quant=True, llm_int8_skip_modules=["vision_tower", "multi_modal_projector", "lm_head"])
        return AutoModelForImageTextToText.from_pretrained(path, **kwargs)

    def _new_vlm(self, image_token_id: int):

        c = self.cfg
        vision = load_encoder(c.vision) if c.vision else new_encoder(c.image_size, **c.vision_config)
        if c.llm:
            from transformers import AutoModelForCausalLM

            lm = AutoModelForCausalLM.from_pretrained(c.llm)
            if len(self.tokenizer) > lm.config.vocab_size:
                lm.resize_token_embeddings(len(self.tokenizer))
        else:
            t = self.tokenizer
            try:
                lm = tiny_causal_lm(len(t), t.pad_token_id, t.bos_token_id, t.eos_token_id,
                                    **{"max_position_embeddings": max(c.max_length, 256), **c.llm_config})
            except TypeError as e:
                raise ConfigError(f"model.llm_config: {e}") from e
        return build_vlm(vision, lm, image_token_id, self.transform.size, c.select_strategy, c.feature_layer,
                         c.projector_act)

    def _set_trainable(self, model):
        c = self.cfg
        for name, p in model.named_parameters():
            part = "vision" if "vision_tower" in name else "projector" if "multi_modal_projector" in name else "llm"
            want = {"vision": c.train_vision == "full", "projector": c.train_projector,
                    "llm": c.train_llm == "full"}[part]
            p.requires_grad_(want and not name.endswith("mask_token"))
        targets = []
        if c.train_llm in ("lora", "qlora"):
            targets.append(c.lora_target)
        if c.train_vision == "lora":
            targets.append(c.vision_lora_target)
        if not targets:
            return model
        from peft import LoraConfig, get_peft_model

        if c.train_llm == "qlora":
            from peft import prepare_model_for_kbit_training

            model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=self.recipe.train.gradient_checkpointing)
        lora = LoraConfig(r=c.lora_r, lora_alpha=c.lora_alpha, lora_dropout=c.lora_dropout,
                          target_modules="|".join(f"(?:{t})" for t in targets),
                          modules_to_save=["multi_modal_projector"] if c.train_projector else None)
        model = get_peft_model(model, lora)
        if c.train_vision == "full":
            for name, p in model.named_parameters():
                if "vision_tower" in name and not name.endswith("mask_token"):
                    p.requires_grad_(True)
        n = sum(p.numel() for p in model.parameters() if p.requires_grad)
        log.info("LoRA on %s: %.2fM trainable parameters", targets, n / 1e6)
        return model

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
        out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                    pixel_values=batch["pixel_values"])
        return {"loss": answer_token_loss(out.logits, batch["labels"], num_items)}

    # --- evaluate ------------------------------------------------------------------------------
    def evaluate(self, model, loader, accelerator):
        losses, tokens = [], []
        for batch in loader:
            out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                        pixel_values=batch["pixel_values"], labels=batch["labels"])
            n = (batch["labels"][:, 1:] != -100).sum()
            lt = accelerator.gather_for_metrics(torch.stack([out.loss.detach().float() * n, n.float()])[None])
            losses.append(lt[:, 0].sum())
            tokens.append(lt[:, 1].sum())
        metrics = {"loss": float(torch.stack(losses).sum() / torch.stack(tokens).sum().clamp_min(1))}
        if self.cfg.eval_generate > 0:

            if shards_parameters(accelerator):  # each model call needs every rank: decoding on one would hang
                if accelerator.is_main_process:
                    log.warning("model.eval_generate: no in-training generation metrics under ZeRO-3 / FSDP; "
                                "run `mxr0 generate` on the export")
            elif accelerator.is_main_process:
                metrics.update(self._generation_metrics(accelerator.unwrap_model(model)))
        if accelerator.num_processes > 1:  # every rank returns the main process's generation metrics
            from accelerate.utils import broadcast_object_list

            box = [metrics if accelerator.is_main_process else None]
            broadcast_object_list(box, from_process=0)  # the key set is known on the main process only
            metrics = {**box[0], "loss": metrics["loss"]}
        return metrics

    def _generation_metrics(self, model) -> dict[str, float]:
        """Greedy answers for the first ``eval_generate`` evaluation examples of each kind, scored per kind
        (`mxr0.eval.instruct.score_kind`)."""

        ds = self.eval_ds
        metrics: dict[str, float] = {}
        ds.with_answer = False
        try:
            for kind in self.kinds:
                idx = [i for i, k in enumerate(ds.kinds) if k == kind][: self.cfg.eval_generate]
                limit = self.cfg.max_new_tokens if kind in ("report", "grounded_report") else self.cfg.max_new_tokens_short
                preds = []
                for s in range(0, len(idx), 16):
                    items = [ds[i] for i in idx[s:s + 16]]
                    preds += generate_batch(model, self.tokenizer, items, max_new_tokens=limit)
                metrics.update(score_kind(ds, idx, preds, kind, train_ds=self.train_ds))
                if kind == "vqa":
                    metrics.update(ranked_closed_accuracy(model, self.tokenizer, ds, idx))
        finally:
            ds.with_answer = True
        return metrics

    # --- export --------------------------------------------------------------------------------
    def export(self, model, out_dir: Path, accelerator):
        restore_vision_tower(model)
        if not accelerator.is_main_process:
            return
        save_vlm_export(model, self.tokenizer, self.transform, Path(out_dir), self.cfg, self.n_image_tokens)

    @classmethod
    def card_info(cls, repo: str, export: Path) -> CardInfo:
        return CardInfo("image-text-to-text", "a vision-language model that writes radiology reports from images",
                        _vlm_usage(repo, export, "The exact prompt (views, indication / technique / comparison, "
                                   "instruction, number of image tokens) is in\n`mxr0_report.json`; `mxr0 generate "
                                   "--model <downloaded folder> --image frontal.png --image lateral.png`\nbuilds it "
                                   "and streams a report."),
                        (HALLUCINATION,))


class InstructTask(ReportTask):
    """The same VLM task under the name recipes for VQA, grounding and task mixtures use (``task: instruct``)."""

    name = "instruct"

    @classmethod
    def card_info(cls, repo: str, export: Path) -> CardInfo:
        settings = {}
        try:
            settings = json.loads((Path(export) / "mxr0_report.json").read_text())
        except (OSError, ValueError):
            pass
        tasks = [k for k, w in (settings.get("tasks") or {}).items() if w]
        trained = f" (trained on: {', '.join(tasks)})" if tasks else ""
        return CardInfo(
            "image-text-to-text",
            "a radiology vision-language model that follows instructions: visual question answering, grounding "
            f"and localisation (boxes written as text) and reports{trained}",
            _vlm_usage(repo, export, "The prompts of each kind (instruction, VQA, grounding and localisation "
                       "prompts), the box format and the number of image\ntokens are in `mxr0_report.json`; "
                       "`mxr0 generate --task vqa|grounding|localisation|grounded_report --model <downloaded folder> "
                       "--image cxr.png --prompt \"...\"`\nbuilds them and parses the boxes of an answer."),
            (HALLUCINATION, "Boxes are text the model writes, in coordinates of the image as the model saw it (after "
             "resizing / padding): they can be malformed, misplaced or name findings that are not there; answers to "
             "questions can be fluent and wrong."))


HALLUCINATION = ("Generated text can be fluent and wrong: it may omit findings or describe findings that are not in the "
                 "image (hallucination), including devices and comparisons with priors.")


def _vlm_usage(repo: str, export: Path, prompt_note: str) -> str:
    adapter = "\nA LoRA adapter (before merging) is in `adapter/`." if (Path(export) / "adapter").exists() else ""
    return f'''```python
from transformers import AutoModelForImageTextToText, AutoProcessor

repo = "{repo}"
model = AutoModelForImageTextToText.from_pretrained(repo).eval()   # LlavaForConditionalGeneration
processor = AutoProcessor.from_pretrained(repo)
```

{prompt_note}{adapter}'''
