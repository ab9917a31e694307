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

import numpy as np
import torch
from torch import nn

from mxr0.config import ConfigError
from mxr0.data.instruct import BOX_KINDS, KINDS, Prompts, report_answer, study_images  # noqa: F401 (re-exported)
from mxr0.data.loading import load_split
from mxr0.eval.instruct import main_metric_of
from mxr0.tasks.base import CardInfo, Task
from mxr0.config.tasks import VIEW_CHOICES, ReportModelConfig  # noqa: F401 (VIEW_CHOICES re-exported)

log = logging.getLogger(__name__)

class ReportDataset(torch.utils.data.Dataset):
    """Chat examples of studies (`mxr0.data.instruct`: report, VQA, grounding, … as ``cfg.tasks`` says): pixel
    values of each image, input ids and answer-only labels. ``records[i]`` is example ``i``'s study."""

    def __init__(self, records, tokenizer, transform, cfg: ReportModelConfig, n_image_tokens: int, train: bool,
                 seed: int = 0, with_answer: bool = True, kinds: list[str] | None = None):
        from mxr0.data.instruct import build_examples

        kinds = list(kinds or [k for k, w in cfg.tasks.items() if w > 0])
        self.examples, empty = build_examples(records, kinds, views=cfg.views, target_sections=cfg.target_sections,
                                              prompts=prompts_of(cfg), vqa_answer_types=cfg.vqa_answer_types)
        self.records = [records[ex.record] for ex in self.examples]
        if empty and "report" in empty:
            log.warning("%d studies without a current frontal image or without %s text are left out", empty["report"],
                        "/".join(cfg.target_sections))
        for k, n in empty.items():
            if k != "report":
                log.info("%s: %d of %d studies give no example", k, n, len(records))
        self.tokenizer, self.transform, self.cfg = tokenizer, transform, cfg
        self.n_image_tokens, self.train, self.seed, self.epoch = n_image_tokens, train, seed, 0
        self.features: list[torch.Tensor] | None = None
        """Cached vision hidden states per example ([n_images, tokens, width]); used instead of images."""
        self.with_answer = with_answer
        """False: prompt only, for generation."""
        self._lengths: list[int] | None = None

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.examples)

    @property
    def kinds(self) -> list[str]:
        return [ex.kind for ex in self.examples]

    def messages(self, i: int) -> list[dict]:
        from mxr0.data.chat import study_messages

        ex, c = self.examples[i], self.cfg
        sections = c.context_sections if ex.kind in ("report", "grounded_report") else []
        return study_messages(self.records[i], [v for v, _ in ex.images], ex.instruction, sections, c.system_prompt)

    def geometry(self, i: int):
        """How example ``i``'s (first) image lands in the model frame (for boxes)."""
        from mxr0.data.instruct import image_size

        return self.transform.geometry(*image_size(self.examples[i].images[0][1]))

    def answer(self, i: int) -> str:
        """The target text; boxes are written in the model frame of the example's image."""
        from mxr0.data.instruct import boxes_answer, grounded_report_text

        ex = self.examples[i]
        if ex.kind in ("grounding", "localisation"):
            return boxes_answer(self.geometry(i).to_model(np.asarray(ex.boxes)), self.cfg.box_format)
        if ex.kind == "grounded_report" and ex.meta["phrases"]:
            g = self.geometry(i)
            phrases = [(p, g.to_model(np.asarray(b))) for p, b in ex.meta["phrases"]]
            return grounded_report_text(ex.answer, phrases, self.cfg.box_format)
        return ex.answer

    def encode(self, i: int, with_answer: bool = True) -> tuple[list[int], list[int]]:
        from mxr0.data.chat import encode_example

        return encode_example(self.tokenizer, self.messages(i), self.answer(i) if with_answer else None,
                              self.n_image_tokens, self.cfg.max_length)

    @property
    def lengths(self) -> list[int]:
        """Token lengths of the examples (for length-grouped batching), computed once."""
        if self._lengths is None:
            self._lengths = [len(self.encode(i)[0]) for i in range(len(self))]
        return self._lengths

    def pixel_values(self, i: int) -> torch.Tensor:
        if self.features is not None:
            return self.features[i].float()
        return self.read_images(i)

    def read_images(self, i: int) -> torch.Tensor:
        from mxr0.data.augment import light_augment, sample_generator
        from mxr0.data.xray import read_xray

        out = []
        for k, (_, path) in enumerate(self.examples[i].images):
            img = read_xray(path)
            if self.train and self.cfg.augment and self.examples[i].kind not in BOX_KINDS:  # boxes stay put
                img = light_augment(img, generator=sample_generator(self.seed, self.epoch, i * 8 + k))
            out.append(self.transform(img))
        return torch.stack(out)

    def __getitem__(self, i: int) -> dict:
        ids, labels = self.encode(i, with_answer=self.with_answer)
        return {"pixel_values": self.pixel_values(i), "input_ids": ids, "labels": labels, "index": i}


def prompts_of(cfg: ReportModelConfig) -> Prompts:
    """The per-kind instructions of a config."""
    return Prompts(report=cfg.instruction, grounding=cfg.grounding_prompt, localisation=cfg.localisation_prompt,
                   grounded_report=cfg.grounded_instruction)


class ChatCollator:
    """Pads a batch (right for training, left for generation) and concatenates its images."""

    def __init__(self, pad_id: int, side: str = "right"):
        self.pad_id, self.side = pad_id, side

    def __call__(self, items: list[dict]) -> dict:
        n = max(len(it["input_ids"]) for it in items)
        ids = torch.full((len(items), n), self.pad_id, dtype=torch.long)
        labels = torch.full((len(items), n), -100, dtype=torch.long)
        mask = torch.zeros((len(items), n), dtype=torch.long)
        for b, it in enumerate(items):
            k = len(it["input_ids"])
            sl = slice(0, k) if self.side == "right" else slice(n - k, n)
            ids[b, sl] = torch.tensor(it["input_ids"])
            labels[b, sl] = torch.tensor(it["labels"])
            mask[b, sl] = 1
        return {"input_ids": ids, "attention_mask": mask, "labels": labels,
                "pixel_values": torch.cat([it["pixel_values"] for it in items]),
                "index": torch.tensor([it["index"] for it in items])}


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
        from mxr0.data.transforms import ImageTransform

        if self._transform is None:
            c = self.cfg
            self._transform = ImageTransform.for_encoder(c.init_from or c.vision, c.image_size, c.image_mean, c.image_std)
        return self._transform

    def _build_tokenizer(self, train_ds: ReportDataset):
        from transformers import AutoTokenizer

        from mxr0.data.boxes_text import box_special_tokens
        from mxr0.data.chat import TINY_CHAT_TEMPLATE, ensure_image_token, train_chat_tokenizer

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
        from mxr0.models.vlm import image_token_count

        return image_token_count(self._vision_config(), self.transform.size, self.cfg.select_strategy)

    def _vision_config(self):
        from transformers import AutoConfig

        from mxr0.models.encoder import encoder_config, new_encoder_config

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
        from mxr0.data.instruct import MixtureSampler

        if dataset is not self.train_ds:
            return None
        lengths = dataset.lengths if self.cfg.group_by_length else None
        return MixtureSampler(dataset.kinds, self.cfg.tasks, seed, lengths, batch_size)

    def build_model(self) -> nn.Module:
        from mxr0.data.chat import IMAGE_TOKEN

        c = self.cfg
        if self.tokenizer is None:
            raise RuntimeError("build_datasets must run before build_model (the tokenizer sizes the LLM)")
        from mxr0.models.sizing import check_image_token_budget

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
        from mxr0.models.encoder import load_encoder, new_encoder
        from mxr0.models.vlm import build_vlm, tiny_causal_lm

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
            from mxr0.train.loop import shards_parameters

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
        from mxr0.eval.instruct import ranked_closed_accuracy, score_kind
        from mxr0.generate import generate_batch

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


def answer_token_count(labels: torch.Tensor) -> torch.Tensor:
    """Tokens predicted under the loss (label after the shift is not -100)."""
    return (labels[:, 1:] != -100).sum()


def answer_token_loss(logits: torch.Tensor, labels: torch.Tensor, num_items=None) -> torch.Tensor:
    """Causal-LM cross-entropy over the answer tokens (labels -100 are ignored), as transformers computes it:
    their sum divided by ``num_items``, or their mean when None."""
    target = labels[:, 1:].to(logits.device)
    total = nn.functional.cross_entropy(logits[:, :-1].float().flatten(0, 1), target.flatten(), ignore_index=-100,
                                        reduction="sum")
    return total / (answer_token_count(labels).clamp_min(1) if num_items is None else num_items)


def llava_core(model: nn.Module) -> nn.Module:
    """The ``LlavaModel`` inside a (peft-wrapped) ``LlavaForConditionalGeneration``."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return base.model


@torch.no_grad()
def cache_vision_features(model: nn.Module, datasets: list, device, batch_size: int = 32, limit_gb: float = 8.0) -> None:
    """Compute the frozen vision tower's hidden states once for every example of ``datasets`` and make the
    tower return them instead of recomputing (its weights and state-dict names are untouched)."""
    from tqdm.auto import tqdm

    core = llava_core(model)
    tower = core.vision_tower
    layer = model.config.vision_feature_layer
    datasets = [d for d in datasets if d is not None]
    n_images = len({path for d in datasets for ex in d.examples for _, path in ex.images})
    vcfg = model.config.vision_config
    size = int(datasets[0].transform.size)
    p = int(np.ravel(vcfg.patch_size)[0])
    tokens = (size // p) ** 2 + 1 + int(getattr(vcfg, "num_register_tokens", 0) or 0)
    gb = n_images * tokens * vcfg.hidden_size * 2 / 1e9
    if gb > limit_gb:
        raise ConfigError(f"model.cache_features: {n_images} images x {tokens} tokens x {vcfg.hidden_size} would take "
                          f"{gb:.1f} GB of RAM (limit {limit_gb} GB); turn the cache off for a set this size")
    was_training = tower.training
    tower.eval()
    done: dict[tuple[str, ...], torch.Tensor] = {}  # examples of one study (VQA, grounding, …) share images
    for ds in datasets:
        feats: list[torch.Tensor] = []
        for i in tqdm(range(len(ds)), desc="caching vision features", leave=False, mininterval=2.0):
            key = tuple(path for _, path in ds.examples[i].images)
            if key not in done:
                px = ds.read_images(i).to(device)
                hs = tower(pixel_values=px, output_hidden_states=True, return_dict=True).hidden_states[layer]
                done[key] = hs.to("cpu", torch.float16)
            feats.append(done[key])
        ds.features = feats
    tower.train(was_training)
    n_states = int(vcfg.num_hidden_layers) + 1  # any vision_feature_layer index finds the cached state

    def cached_forward(pixel_values=None, **kwargs):
        from transformers.modeling_outputs import BaseModelOutputWithPooling

        if pixel_values is None or pixel_values.ndim != 3:
            raise RuntimeError("the vision tower serves cached features: expected [images, tokens, width] inputs")
        hs = pixel_values.to(next(core.multi_modal_projector.parameters()).dtype)
        return BaseModelOutputWithPooling(last_hidden_state=hs, pooler_output=hs[:, 0], hidden_states=(hs,) * n_states)

    tower.forward = cached_forward
    log.info("cached vision features of %d images (%.2f GB float16)", n_images, gb)


def restore_vision_tower(model: nn.Module) -> None:
    tower = llava_core(model).vision_tower
    if "forward" in tower.__dict__:
        del tower.forward


def save_vlm_export(model, tokenizer, transform, out_dir: Path, cfg: ReportModelConfig, n_image_tokens: int) -> Path:
    """The merged Hugging Face model + processor (+ ``adapter/`` when LoRA was used) + ``mxr0_report.json``."""
    from transformers import LlavaProcessor

    out_dir.mkdir(parents=True, exist_ok=True)
    if hasattr(model, "merge_and_unload"):  # a peft model: keep the adapter, then merge for the export
        model.save_pretrained(out_dir / "adapter", safe_serialization=True)
        model = model.merge_and_unload()
    if getattr(model, "generation_config", None) is not None:  # plain `model.generate` stops at the end of the turn
        from mxr0.data.chat import stop_token_ids

        model.generation_config.eos_token_id = stop_token_ids(tokenizer, model.generation_config)
    model.save_pretrained(out_dir, safe_serialization=True)
    vcfg = model.config.vision_config
    processor = LlavaProcessor(image_processor=transform.to_image_processor(), tokenizer=tokenizer,
                               patch_size=int(np.ravel(vcfg.patch_size)[0]),
                               vision_feature_select_strategy=model.config.vision_feature_select_strategy,
                               num_additional_image_tokens=1 + int(getattr(vcfg, "num_register_tokens", 0) or 0),
                               chat_template=tokenizer.chat_template)
    processor.save_pretrained(out_dir)
    transform.save_pretrained(out_dir, keep_existing=True)  # also for AutoImageProcessor (the processor file nests it)
    settings = {k: getattr(cfg, k) for k in ("views", "context_sections", "target_sections", "instruction",
                                             "system_prompt", "max_length", "max_new_tokens", "tasks", "box_format",
                                             "vqa_answer_types", "grounding_prompt", "localisation_prompt",
                                             "grounded_instruction", "max_new_tokens_short")}
    settings["n_image_tokens"] = n_image_tokens
    (out_dir / "mxr0_report.json").write_text(json.dumps(settings, indent=2))
    return out_dir


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
