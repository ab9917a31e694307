"""The model section of a recipe, one typed dataclass per task: its fields, their documentation and their
range checks. They live here, below the tasks, so that a recipe is checked (and ``mxr0 config show`` documents
it) without importing any task, model or torch; `TASK_MODEL_CONFIGS` maps each task name to its class."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from mxr0.config.checks import (
    FieldError,
    check_choices,
    check_format,
    check_hf_config,
    check_mean_std,
    check_pair,
    check_ranges,
    check_regex,
    check_value,
    hf_config_keys,
)
from mxr0.data.prompts import merged_prompts
from mxr0.data.records import CHEXPERT_LABELS, REPORT_SECTIONS

KINDS = ("report", "vqa", "grounding", "localisation", "grounded_report")
"""The kinds of chat examples an instruction recipe mixes (``model.tasks`` weights them; `mxr0.data.instruct`
builds them)."""
VIEW_CHOICES = ("frontal", "lateral", "prior")
"""Image roles a report prompt can show."""


@dataclass
class ClassifyModelConfig:
    """The encoder, its head and the label policy."""

    encoder: str = ""
    """Path or Hub id of a DINOv2-family checkpoint (e.g. microsoft/rad-dino); empty builds a new
    Dinov2WithRegisters encoder from ``encoder_config``."""
    encoder_config: dict = field(default_factory=dict)
    """Dinov2WithRegistersConfig arguments for a new encoder (hidden_size, num_hidden_layers, …)."""
    image_size: int = 224
    """Input side for a new encoder (a pretrained one uses its image-processor config)."""
    image_mean: list[float] = field(default_factory=lambda: [0.5, 0.5, 0.5])
    """Normalisation mean for a new encoder."""
    image_std: list[float] = field(default_factory=lambda: [0.25, 0.25, 0.25])
    """Normalisation std for a new encoder."""
    freeze_encoder: bool = False
    """Train only the head (linear probe) when true."""
    labels: list[str] = field(default_factory=list)
    """CheXpert observations to predict; empty: every observation with positives and negatives in
    the training split."""
    uncertain: Literal["ones", "zeros", "ignore"] = "ones"
    """Uncertain labels (-1) as positive (U-Ones), negative (U-Zeros) or masked out."""
    blank: Literal["zeros", "ignore"] = "zeros"
    """Not-mentioned labels as negative or masked out."""
    augment: bool = True
    """Light training augmentation (`mxr0.data.augment.light_augment`: crop jitter, gamma, contrast; no
    rotation); never flips, because laterality matters."""

    def __post_init__(self):

        check_value("image_size", self.image_size, "[1, inf)")
        check_mean_std(self)
        check_choices(self, "labels", CHEXPERT_LABELS, note="; [] takes every observation found in training")
        reserved = {k: "the task sets it from model.labels" for k in ("num_labels", "id2label", "label2id", "problem_type")}
        reserved["image_size"] = "set model.image_size"
        enc = check_hf_config(self, "encoder_config", "Dinov2WithRegistersConfig", aliases=("intermediate_size",),
                              reserved=reserved)
        if not self.encoder and self.image_size < enc.get("patch_size", 16):
            raise FieldError("image_size", f"must be >= the patch size {enc.get('patch_size', 16)}", self.image_size)


@dataclass
class SSLModelConfig:
    """Encoder, multi-crop views, DINO / iBOT / KoLeo objectives and the teacher schedules."""

    # --- encoder ---------------------------------------------------------------------------
    encoder: str = ""
    """Path or Hub id of a DINOv2-family checkpoint to continue pretraining from (e.g.
    facebook/dinov2-with-registers-base, microsoft/rad-dino, an XR-0 export); empty builds a new
    Dinov2WithRegisters encoder from ``encoder_config``."""
    encoder_config: dict = field(default_factory=dict)
    """Dinov2WithRegistersConfig arguments for a new encoder (hidden_size, num_hidden_layers,
    num_attention_heads, mlp_ratio, patch_size, layerscale_value, …)."""
    num_register_tokens: int | None = None
    """Register tokens. ``null``: 4 for a new encoder, the checkpoint's count for a pretrained one;
    a number different from the checkpoint's converts it to Dinov2WithRegisters (new registers
    start near zero, every other weight is kept)."""
    drop_path_rate: float = 0.1
    """Stochastic depth of the student (the teacher runs without it)."""
    load_heads: bool = True
    """When ``encoder`` is an XR-0 export with ``ssl_heads.safetensors``, start the heads (and loss
    centres) from it; otherwise heads start fresh."""
    image_mean: list[float] = field(default_factory=lambda: [0.5, 0.5, 0.5])
    """Normalisation mean (in [0, 1] units) for a new encoder; a pretrained one uses its image-processor config."""
    image_std: list[float] = field(default_factory=lambda: [0.25, 0.25, 0.25])
    """Normalisation std for a new encoder."""

    # --- multi-crop --------------------------------------------------------------------------
    global_crop_size: int = 224
    """Side of the two global crops (a multiple of the patch size); also the exported processor's input size."""
    local_crop_size: int = 98
    """Side of the local crops (a multiple of the patch size)."""
    n_local_crops: int = 8
    """Local crops per image (0 disables them)."""
    global_crop_scale: list[float] = field(default_factory=lambda: [0.32, 1.0])
    """Area range of a global crop, as a fraction of the image."""
    local_crop_scale: list[float] = field(default_factory=lambda: [0.05, 0.32])
    """Area range of a local crop, as a fraction of the image."""
    flip_prob: float = 0.0
    """Horizontal flip probability per crop. 0 by default: laterality is anatomy on a radiograph."""
    intensity_prob: float = 0.8
    """Probability of brightness / contrast / gamma jitter per crop."""
    brightness: float = 0.4
    """Brightness factor drawn from [1 - b, 1 + b] (exposure)."""
    contrast: float = 0.4
    """Contrast factor drawn from [1 - c, 1 + c] (windowing)."""
    gamma: list[float] = field(default_factory=lambda: [0.7, 1.4])
    """Gamma range (log-uniform): the detector / VOI LUT response curve."""
    blur_prob: list[float] = field(default_factory=lambda: [1.0, 0.1, 0.5])
    """Gaussian-blur probability for (first global, other globals, locals), DINOv2's asymmetric recipe."""
    solarize_prob: list[float] = field(default_factory=lambda: [0.0, 0.2, 0.0])
    """Solarisation probability for (first global, other globals, locals)."""
    noise_prob: float = 0.2
    """Probability of additive Gaussian noise (quantum mottle) per crop."""
    noise_std: float = 0.03
    """Largest noise standard deviation, in [0, 1] intensity units."""
    all_images: bool = True
    """Pretrain on every current image of a study (frontal and lateral); false takes the first only."""

    # --- DINO --------------------------------------------------------------------------------
    dino_loss_weight: float = 1.0
    """Weight of the image-level DINO loss (CLS token)."""
    dino_n_prototypes: int = 65536
    """Prototypes (output dimension) of the DINO head."""
    dino_hidden_dim: int = 2048
    """Hidden width of the DINO head MLP."""
    dino_bottleneck_dim: int = 256
    """Bottleneck (L2-normalised) dimension before the prototype layer."""
    dino_nlayers: int = 3
    """Linear layers in the head MLP."""
    norm_last_layer: bool = True
    """Keep the prototype vectors unit-norm (cosine scores, DINO's default); false learns their scale."""
    koleo_loss_weight: float = 0.1
    """Weight of the KoLeo regulariser on the student's global-crop CLS tokens (0 disables it)."""
    centering: Literal["centering", "sinkhorn_knopp"] = "centering"
    """Teacher target normalisation: EMA centre (``centering``) or Sinkhorn-Knopp."""
    center_momentum: float = 0.9
    """Momentum of the EMA centre."""
    sinkhorn_iterations: int = 3
    """Sinkhorn-Knopp iterations."""
    student_temp: float = 0.1
    """Student softmax temperature."""
    teacher_temp: float = 0.07
    """Teacher softmax temperature after warm-up."""
    warmup_teacher_temp: float = 0.04
    """Teacher temperature at the start of training."""
    warmup_teacher_temp_epochs: float = 30.0
    """Epochs of linear teacher-temperature warm-up (capped at the run length)."""

    # --- iBOT --------------------------------------------------------------------------------
    ibot_loss_weight: float = 1.0
    """Weight of the patch-level iBOT loss (0 disables masking and the loss)."""
    ibot_separate_head: bool = False
    """A separate iBOT head (true) or the DINO head shared for patches (false, DINOv2's default)."""
    ibot_n_prototypes: int = 65536
    """Prototypes of a separate iBOT head."""
    ibot_hidden_dim: int = 2048
    """Hidden width of a separate iBOT head."""
    ibot_bottleneck_dim: int = 256
    """Bottleneck dimension of a separate iBOT head."""
    ibot_nlayers: int = 3
    """Linear layers of a separate iBOT head."""
    mask_probability: float = 0.5
    """Probability that a global crop is masked."""
    mask_ratio: list[float] = field(default_factory=lambda: [0.1, 0.5])
    """Range of the masked share of patches of a masked crop (block masking)."""

    # --- teacher and optimisation -------------------------------------------------------------
    momentum_teacher: float = 0.992
    """EMA momentum of the teacher at the start (cosine schedule to ``final_momentum_teacher``)."""
    final_momentum_teacher: float = 1.0
    """EMA momentum at the end of training."""
    freeze_last_layer_epochs: float = 1.0
    """Epochs during which the prototype layers of the student heads are not updated."""
    layerwise_decay: float = 0.9
    """Layer-wise learning-rate decay: block i of L gets lr x decay^(L + 1 - (i + 1)); 1 disables it."""
    patch_embed_lr_mult: float = 0.2
    """Extra learning-rate factor of the patch embedding."""

    # --- evaluation during training ----------------------------------------------------------
    eval_gallery_studies: int = 1000
    """Training studies whose teacher features form the kNN gallery and the linear-probe training set
    of the in-training evaluation (frozen teacher, evaluation split as queries)."""
    eval_knn_k: int = 20
    """Neighbours of the in-training kNN evaluation."""

    def __post_init__(self):

        check_hf_config(self, "encoder_config", "Dinov2WithRegistersConfig", aliases=("intermediate_size",),
                        reserved={"image_size": "set model.global_crop_size", "drop_path_rate": "set model.drop_path_rate"})
        n_reg = self.encoder_config.get("num_register_tokens")
        if self.num_register_tokens is not None and n_reg is not None and n_reg != self.num_register_tokens:
            raise FieldError("encoder_config.num_register_tokens", f"disagrees with model.num_register_tokens="
                             f"{self.num_register_tokens} (which wins); set one of them", n_reg)
        check_mean_std(self)
        check_ranges(self, {
            "num_register_tokens": "[0, inf)", "drop_path_rate": "[0, 1)", "global_crop_size": "[1, inf)",
            "local_crop_size": "[1, inf)", "n_local_crops": "[0, inf)", "flip_prob": "[0, 1]", "intensity_prob": "[0, 1]",
            "brightness": "[0, 1]", "contrast": "[0, 1]", "blur_prob": "[0, 1]", "solarize_prob": "[0, 1]",
            "noise_prob": "[0, 1]", "noise_std": "[0, inf)", "dino_loss_weight": "(0, inf)",
            "dino_n_prototypes": "[1, inf)", "dino_hidden_dim": "[1, inf)", "dino_bottleneck_dim": "[1, inf)",
            "dino_nlayers": "[1, inf)", "koleo_loss_weight": "[0, inf)", "center_momentum": "[0, 1]",
            "sinkhorn_iterations": "[1, inf)", "student_temp": "(0, inf)", "teacher_temp": "(0, inf)",
            "warmup_teacher_temp": "(0, inf)", "warmup_teacher_temp_epochs": "[0, inf)", "ibot_loss_weight": "[0, inf)",
            "ibot_n_prototypes": "[1, inf)", "ibot_hidden_dim": "[1, inf)", "ibot_bottleneck_dim": "[1, inf)",
            "ibot_nlayers": "[1, inf)", "mask_probability": "[0, 1]", "momentum_teacher": "[0, 1]",
            "final_momentum_teacher": "[0, 1]", "freeze_last_layer_epochs": "[0, inf)", "layerwise_decay": "(0, 1]",
            "patch_embed_lr_mult": "[0, inf)", "eval_gallery_studies": "[1, inf)", "eval_knn_k": "[1, inf)",
        })
        for name in ("global_crop_scale", "local_crop_scale"):
            check_pair(self, name, "(0, 1]")
        check_pair(self, "gamma", "(0, inf)")
        check_pair(self, "mask_ratio", "[0, 1)")
        for name in ("blur_prob", "solarize_prob"):
            if len(getattr(self, name)) != 3:
                raise FieldError(name, "expected 3 probabilities (first global, other globals, locals)", getattr(self, name))
        if not self.encoder:  # a new encoder: its patch size is known here (a pretrained one is checked at build)
            p = self.encoder_config.get("patch_size", 16)
            p = int(p[0] if isinstance(p, (list, tuple)) else p)
            for name in ("global_crop_size", "local_crop_size"):
                if getattr(self, name) % p:
                    raise FieldError(name, f"must be a multiple of the patch size {p} (model.encoder_config.patch_size)",
                                     getattr(self, name))


@dataclass
class AlignModelConfig:
    """The two towers, the contrastive loss and the text pipeline."""

    vision: str = ""
    """Path or Hub id of a DINOv2-family encoder (XR-0 export, microsoft/rad-dino, …); empty builds a
    new Dinov2WithRegisters ViT from ``vision_config``."""
    vision_config: dict = field(default_factory=dict)
    """Dinov2WithRegistersConfig arguments for a new vision tower (hidden_size, num_hidden_layers, …)."""
    image_size: int = 224
    """Input side for a new vision tower (a pretrained one uses its image-processor config)."""
    image_mean: list[float] = field(default_factory=lambda: [0.5, 0.5, 0.5])
    """Normalisation mean for a new vision tower."""
    image_std: list[float] = field(default_factory=lambda: [0.25, 0.25, 0.25])
    """Normalisation std for a new vision tower."""
    text: str = ""
    """Path or Hub id of a BERT-like text encoder loadable with AutoModel (with a pooler), e.g.
    microsoft/BiomedVLP-CXR-BERT-general; empty builds a new BERT from ``text_config``."""
    text_config: dict = field(default_factory=dict)
    """BertConfig arguments for a new text tower (hidden_size, num_hidden_layers, …)."""
    tokenizer: str = ""
    """Tokenizer path or Hub id; empty: the text tower's own, or (new text tower) a WordPiece tokenizer
    trained on the training reports."""
    tokenizer_vocab_size: int = 2000
    """Vocabulary size of a tokenizer trained on the training reports."""
    projection_dim: int = 512
    """Width of the shared embedding space."""
    loss: Literal["clip", "siglip"] = "clip"
    """``clip``: symmetric InfoNCE with a learnable temperature; ``siglip``: pairwise sigmoid loss with a
    learnable scale and bias."""
    logit_scale_init: float | None = None
    """Initial log inverse temperature; ``null``: log(1/0.07) for CLIP, log(10) for SigLIP."""
    logit_bias_init: float = -10.0
    """Initial SigLIP bias."""
    local_loss: bool = True
    """Score only this rank's rows against the gathered batch (memory O(b·N·b)); the mean over ranks
    equals the full loss."""
    gather_with_grad: bool = True
    """Differentiable feature gather: N processes give exactly the one-process full-batch gradient.
    ``false`` is cheaper and approximate (open_clip's default)."""
    vision_unlocked_layers: int = -1
    """Trainable last blocks of the vision tower (plus its final norm): -1 all, 0 frozen (LiT)."""
    text_unlocked_layers: int = -1
    """Trainable last blocks of the text tower (plus its pooler): -1 all, 0 frozen."""
    text_sections: list[str] = field(default_factory=lambda: ["findings", "impression"])
    """Report sections that form the text (joined in this order)."""
    max_text_length: int = 128
    """Token limit; texts are truncated at min(this, the tokenizer's and the text tower's maximum)."""
    sentence_keep: float = 1.0
    """Share of a report's sentences kept in each training sample (at least one); 1 keeps all."""
    shuffle_sentences: bool = True
    """Shuffle sentence order in training samples."""
    texts_per_image: int = 1
    """Positives per image: 1 uses the (sampled) report; K > 1 uses K single sentences of the report
    (multi-positive InfoNCE; with SigLIP every one is a positive pair)."""
    patch_loss_weight: float = 0.0
    """Weight of a second, token-level contrastive loss: an image–text score is a smooth maximum over
    the projected patch tokens (multiple-instance learning). It makes patch tokens text-aligned, which
    phrase grounding from similarity maps needs; the exported image embedding stays the CLS one. 0 disables it."""
    patch_temperature: float = 0.1
    """Sharpness τ of the smooth maximum over patches (τ·log-mean-exp of cosine/τ)."""
    augment: bool = True
    """Light image augmentation (crop jitter, gamma, contrast; never flips)."""
    zero_shot_prompts: dict = field(default_factory=dict)
    """Overrides of the zero-shot prompts: {observation: {positive: [...], negative: [...]}}."""

    def __post_init__(self):

        check_hf_config(self, "vision_config", "Dinov2WithRegistersConfig", aliases=("intermediate_size",),
                        reserved={"image_size": "set model.image_size"})
        check_hf_config(self, "text_config", "BertConfig",
                        reserved={k: "the task sets it from the tokenizer" for k in ("vocab_size", "pad_token_id")})
        check_mean_std(self)
        check_ranges(self, {
            "image_size": "[1, inf)", "tokenizer_vocab_size": "[1, inf)", "projection_dim": "[1, inf)",
            "logit_scale_init": "(-inf, inf)", "logit_bias_init": "(-inf, inf)", "vision_unlocked_layers": "[-1, inf)",
            "text_unlocked_layers": "[-1, inf)", "max_text_length": "[2, inf)", "sentence_keep": "(0, 1]",
            "texts_per_image": "[1, inf)", "patch_loss_weight": "[0, inf)", "patch_temperature": "(0, inf)",
        })
        check_choices(self, "text_sections", REPORT_SECTIONS, empty_ok=False)
        if not self.gather_with_grad and not self.local_loss:
            raise FieldError("gather_with_grad", "needs model.local_loss=true (without gradient through the "
                             "gather, a full loss on every rank trains only on local pairs)", self.gather_with_grad)
        if self.zero_shot_prompts:

            try:
                merged_prompts(self.zero_shot_prompts)
            except ValueError as e:
                raise FieldError("zero_shot_prompts", str(e)) from None


@dataclass
class ReportModelConfig:
    """The VLM's parts, what trains, and the prompt."""

    init_from: str = ""
    """A VLM export (e.g. the stage-1 run's ``export/``) to start from; then ``vision`` / ``llm`` are ignored."""
    vision: str = ""
    """Path or Hub id of a DINOv2-family encoder (XR-0 export, microsoft/rad-dino, a classifier export);
    empty builds a new ViT from ``vision_config``."""
    vision_config: dict = field(default_factory=dict)
    """Dinov2WithRegistersConfig arguments for a new vision tower."""
    image_size: int = 224
    """Input side for a new vision tower (a pretrained one uses its image-processor config)."""
    image_mean: list[float] = field(default_factory=lambda: [0.5, 0.5, 0.5])
    """Normalisation mean for a new vision tower."""
    image_std: list[float] = field(default_factory=lambda: [0.25, 0.25, 0.25])
    """Normalisation std for a new vision tower."""
    llm: str = ""
    """Path or Hub id of a causal LM (Llama, Qwen2, Phi, Mistral families); empty builds a tiny Llama from
    ``llm_config`` with a byte-level BPE tokenizer trained on the training reports."""
    llm_config: dict = field(default_factory=dict)
    """LlamaConfig arguments for a new LLM (hidden_size, num_hidden_layers, …)."""
    tokenizer_vocab_size: int = 2000
    """Vocabulary of a tokenizer trained on the training reports (new LLM only)."""
    select_strategy: Literal["default", "full"] = "default"
    """Image tokens: ``default`` = registers + patches (CLS dropped), ``full`` = CLS + registers + patches."""
    feature_layer: int = -1
    """Vision hidden state fed to the projector (before the final layer norm; -1 = last block)."""
    projector_act: str = "gelu"
    """Activation of the 2-layer MLP projector."""
    train_vision: Literal["frozen", "full", "lora"] = "frozen"
    """Vision tower: frozen, fully trained, or LoRA on its attention projections."""
    train_llm: Literal["frozen", "full", "lora", "qlora"] = "lora"
    """LLM: frozen (stage 1), full, LoRA (stage 2), or QLoRA (4-bit base, CUDA only)."""
    train_projector: bool = True
    """Train the projector."""
    lora_r: int = 16
    """LoRA rank."""
    lora_alpha: int = 32
    """LoRA scaling numerator."""
    lora_dropout: float = 0.05
    """Dropout on the LoRA branch."""
    lora_target: str = r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)"
    """Regex of LLM modules that get LoRA (scoped to the language model: DINOv2 also has q_proj/v_proj)."""
    vision_lora_target: str = r".*vision_tower.*\.(q_proj|v_proj)"
    """Regex of vision modules that get LoRA when ``train_vision: lora``."""
    views: list[str] = field(default_factory=lambda: ["frontal", "lateral"])
    """Images given to the model, each used when the study has it: ``frontal``, ``lateral`` (current),
    ``prior`` (prior frontal, with the prior report when the record has ``prior_report``). A study
    without a frontal image is skipped."""
    context_sections: list[str] = field(default_factory=lambda: ["indication"])
    """Report sections given as input (``indication``, ``technique``, ``comparison``)."""
    target_sections: list[str] = field(default_factory=lambda: ["findings", "impression"])
    """Sections the model writes, as ``Findings: …`` / ``Impression: …`` lines."""
    instruction: str = "Write the findings and impression of this chest X-ray report."
    """The user instruction."""
    system_prompt: str = ""
    """Optional system turn."""
    max_length: int = 512
    """Token limit of an example (prompt + answer); longer answers are truncated."""
    augment: bool = True
    """Light image augmentation in training (never flips)."""
    group_by_length: bool = True
    """Batches of similar length (less padding): shuffled megabatches sorted by length."""
    cache_features: bool = False
    """Run the frozen vision tower once over every training and evaluation image and reuse its hidden
    states every epoch (needs ``train_vision: frozen`` and ``augment: false``; kept in RAM as float16,
    so for small and medium sets: a size estimate over 8 GB is refused)."""
    eval_generate: int = 48
    """Evaluation examples per task kind answered by greedy generation (report → finding F1, VQA → accuracy,
    grounding → IoU, …); 0 disables."""
    max_new_tokens: int = 160
    """Generation limit for reports during evaluation and the default for `mxr0 generate`."""
    tasks: dict[str, float] = field(default_factory=lambda: {"report": 1.0})
    """Instruction kinds trained together, with sampling weights (share of each epoch): ``report``, ``vqa``,
    ``grounding``, ``localisation``, ``grounded_report`` (see `mxr0.data.instruct`)."""
    box_format: Literal["plain", "tokens"] = "plain"
    """Boxes in text: ``plain`` ``[x1, y1, x2, y2]`` (two decimals) or MAIRA-2 ``tokens`` (``<box><x12>…</box>``,
    100 bins, added to the tokenizer as special tokens)."""
    vqa_answer_types: list[str] = field(default_factory=lambda: ["closed", "open"])
    """VQA questions used: ``closed`` (yes/no, multiple choice) and / or ``open``."""
    grounding_prompt: str = "Locate this finding: {phrase}."
    """User turn of phrase grounding (``{phrase}`` is the record's box phrase)."""
    localisation_prompt: str = "Locate every {label} on this image."
    """User turn of localisation by finding name (``{label}``: the box label, lower case)."""
    grounded_instruction: str = ("Write the findings and impression of this chest X-ray report, with a bounding box "
                                 "after each finding that can be localised.")
    """User turn of grounded report generation."""
    max_new_tokens_short: int = 48
    """Generation limit for VQA answers and box lists."""

    def __post_init__(self):

        vis = check_hf_config(self, "vision_config", "Dinov2WithRegistersConfig", aliases=("intermediate_size",),
                              reserved={"image_size": "set model.image_size"})
        check_hf_config(self, "llm_config", "LlamaConfig", reserved={
            k: "the task sets it from the tokenizer" for k in ("vocab_size", "pad_token_id", "bos_token_id", "eos_token_id")})
        check_mean_std(self)
        check_ranges(self, {
            "image_size": "[1, inf)", "tokenizer_vocab_size": "[1, inf)", "lora_r": "[1, inf)", "lora_alpha": "[1, inf)",
            "lora_dropout": "[0, 1)", "max_length": "[1, inf)", "eval_generate": "[0, inf)", "max_new_tokens": "[1, inf)",
            "max_new_tokens_short": "[1, inf)",
        })
        if self.feature_layer != -1 and not self.vision and not self.init_from:  # a new vision tower: depth known
            n = (vis or hf_config_keys("Dinov2WithRegistersConfig")[1]).get("num_hidden_layers", 12)
            check_value("feature_layer", self.feature_layer, f"[{-(n + 1)}, {n}]",
                        note=f" (a hidden state of the {n}-block vision tower)")
        if self.projector_act != "gelu":
            from transformers.activations import ACT2FN

            if self.projector_act not in ACT2FN:
                raise FieldError("projector_act", f"expected one of {sorted(ACT2FN)}", self.projector_act)
        check_regex(self, "lora_target")
        check_regex(self, "vision_lora_target")
        check_choices(self, "views", VIEW_CHOICES, empty_ok=False)
        if "frontal" not in self.views:
            raise FieldError("views", "must include 'frontal' (a study without a frontal image is skipped)", self.views)
        check_choices(self, "context_sections", ("indication", "technique", "comparison"))
        check_choices(self, "target_sections", ("findings", "impression"), empty_ok=False)
        check_choices(self, "tasks", KINDS, empty_ok=False, note=" with sampling weights, e.g. {report: 1.0, vqa: 0.5}")
        for kind, w in self.tasks.items():
            check_value(f"tasks.{kind}", w, "[0, inf)", note=" (a sampling weight)")
        if not any(w > 0 for w in self.tasks.values()):
            raise FieldError("tasks", "at least one kind needs a sampling weight > 0", self.tasks)
        check_choices(self, "vqa_answer_types", ("closed", "open"), empty_ok=False)
        check_format(self, "grounding_prompt", ("phrase", "label"), required=("phrase",))
        check_format(self, "localisation_prompt", ("phrase", "label"), required=("label",))
        if self.cache_features and (self.train_vision != "frozen" or self.augment):
            raise FieldError("cache_features", "needs model.train_vision=frozen and model.augment=false (the cached "
                             "features are those of the unaugmented images through the frozen encoder)", True)
        if self.train_llm == "qlora" and not self.init_from and not self.llm:
            raise FieldError("train_llm", "qlora quantises a pretrained LLM: set model.llm or model.init_from", "qlora")


TASK_MODEL_CONFIGS: dict[str, type] = {
    "classify": ClassifyModelConfig,
    "ssl": SSLModelConfig,
    "align": AlignModelConfig,
    "report": ReportModelConfig,
    "instruct": ReportModelConfig,
}
"""Task name → the dataclass of its recipe's ``model`` section (`mxr0.tasks.TASKS` names the same tasks)."""
