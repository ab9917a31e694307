"""A corpus of bad recipes: each is refused by `load_recipe` (so by ``mxr0 config show`` and ``mxr0 train``)
with a `ConfigError` that names the dotted key, before any data or model is built.

Each case is a tiny recipe plus dotted overrides and the key (``section.field``, with ``=value`` where the
message shows the value) that the error must name. The good-recipe side: every recipe under recipes/ loads
(tests/unit/test_config.py) and the edge cases in `GOOD` stay valid.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from mxr0.config import ConfigError, DataConfig, FieldError, PhantomConfig, TrainConfig, load_recipe

REPO = Path(__file__).resolve().parents[2]
TINY = REPO / "recipes" / "tiny"
CLS, SSL, ALIGN, REPORT = (TINY / n for n in ("classify.yaml", "xr0_pretrain.yaml", "mxr0_align.yaml", "mxr0_report.yaml"))

# (id, recipe, overrides, the key the message must name)
CORPUS: list[tuple[str, Path, list[str], str]] = [
    # --- train: the fault probe's nonsense settings -----------------------------------------------
    ("lr-negative", CLS, ["train.lr=-1e-3"], "train.lr=-0.001"),
    ("lr-zero", CLS, ["train.lr=0"], "train.lr=0.0"),
    ("lr-nan", CLS, ["train.lr=.nan"], "train.lr=nan"),
    ("lr-inf", CLS, ["train.lr=.inf"], "train.lr=inf"),
    ("batch-size-zero", CLS, ["train.batch_size=0"], "train.batch_size=0"),
    ("grad-accum-zero", CLS, ["train.grad_accum=0"], "train.grad_accum=0"),
    ("log-every-zero", CLS, ["train.log_every=0"], "train.log_every=0"),
    ("epochs-inf", CLS, ["train.epochs=.inf"], "train.epochs=inf"),
    ("epochs-zero-without-max-steps", CLS, ["train.epochs=0"], "train.epochs=0.0"),
    ("max-grad-norm-negative", CLS, ["train.max_grad_norm=-1"], "train.max_grad_norm=-1.0"),
    ("min-lr-above-lr", CLS, ["train.min_lr=0.01"], "train.min_lr=0.01"),
    ("output-dir-empty", CLS, ["train.output_dir="], "train.output_dir=''"),
    ("output-dir-blank", CLS, ["train.output_dir='   '"], "train.output_dir='   '"),
    ("max-steps-negative", CLS, ["train.max_steps=-5"], "train.max_steps=-5"),
    ("warmup-negative", CLS, ["train.warmup_steps=-1"], "train.warmup_steps=-1"),
    ("weight-decay-negative", CLS, ["train.weight_decay=-0.1"], "train.weight_decay=-0.1"),
    ("weight-decay-end-nan", SSL, ["train.weight_decay_end=.nan"], "train.weight_decay_end=nan"),
    ("betas-one", CLS, ["train.betas=[0.9, 1.0]"], "train.betas[1]=1.0"),
    ("betas-three", CLS, ["train.betas=[0.9, 0.99, 0.999]"], "train.betas="),
    ("eval-every-negative", CLS, ["train.eval_every=-1"], "train.eval_every=-1"),
    ("save-every-negative", CLS, ["train.save_every=-10"], "train.save_every=-10"),
    ("keep-last-negative", CLS, ["train.keep_last=-1"], "train.keep_last=-1"),
    ("max-nonfinite-negative", CLS, ["train.max_nonfinite=-1"], "train.max_nonfinite=-1"),
    ("seed-negative", CLS, ["train.seed=-1"], "train.seed=-1"),
    ("tracker-typo", CLS, ["train.trackers=[jsonl, tensorbord]"], "train.trackers="),
    ("push-without-repo", CLS, ["train.push_to_hub=true"], "train.hub_repo_id=''"),
    ("push-repo-not-owner-name", CLS, ["train.push_to_hub=true", "train.hub_repo_id=justaname"], "train.hub_repo_id="),
    # --- data and the phantom ---------------------------------------------------------------------
    ("data-path-empty", CLS, ["data.path="], "data.path=''"),
    ("data-extra-path-empty", CLS, ["data.extra_paths=['']"], "data.extra_paths[0]=''"),
    ("data-split-typo", CLS, ["data.train_split=trian"], "data.train_split='trian'"),
    ("data-eval-split-unknown", CLS, ["data.eval_split=val"], "data.eval_split='val'"),
    ("data-anatomy-typo", CLS, ["data.anatomies=[chset]"], "data.anatomies="),
    ("data-anatomies-empty", CLS, ["data.anatomies=[]"], "data.anatomies=[]"),
    ("data-view-unknown", CLS, ["data.views=[PA, frontal]"], "data.views="),
    ("data-max-train-zero", CLS, ["data.max_train_studies=0"], "data.max_train_studies=0"),
    ("data-workers-negative", CLS, ["data.num_workers=-1"], "data.num_workers=-1"),
    ("data-bad-samples-negative", CLS, ["data.max_bad_samples=-1"], "data.max_bad_samples=-1"),
    ("phantom-no-studies", CLS, ["data.phantom.n_studies=0"], "data.phantom.n_studies=0"),
    ("phantom-too-small", CLS, ["data.phantom.image_size=16"], "data.phantom.image_size=16"),
    ("phantom-seed-negative", CLS, ["data.phantom.seed=-3"], "data.phantom.seed=-3"),
    # --- classify ---------------------------------------------------------------------------------
    ("classify-encoder-config-typo", CLS, ["model.encoder_config={hidden_sise: 96}"], "model.encoder_config.hidden_sise"),
    ("classify-encoder-config-not-a-mapping", CLS, ["model.encoder_config=96"], "model.encoder_config"),
    ("classify-heads-do-not-divide", CLS, ["model.encoder_config={hidden_size: 96, num_attention_heads: 5}"],
     "model.encoder_config.hidden_size=96"),
    ("classify-layers-zero", CLS, ["model.encoder_config={num_hidden_layers: 0}"], "model.encoder_config.num_hidden_layers=0"),
    ("classify-dropout-one", CLS, ["model.encoder_config={hidden_dropout_prob: 1.0}"],
     "model.encoder_config.hidden_dropout_prob=1.0"),
    ("classify-num-labels-set-by-task", CLS, ["model.encoder_config={num_labels: 3}"], "model.encoder_config.num_labels=3"),
    ("classify-label-typo", CLS, ["model.labels=[Cardiomegaly, Pneumothrax]"], "model.labels="),
    ("classify-image-size-zero", CLS, ["model.image_size=0"], "model.image_size=0"),
    ("classify-image-below-patch", CLS, ["model.image_size=8"], "model.image_size=8"),
    ("classify-std-zero", CLS, ["model.image_std=[0.25, 0.0, 0.25]"], "model.image_std[1]=0.0"),
    ("classify-mean-two-values", CLS, ["model.image_mean=[0.5, 0.5]"], "model.image_mean="),
    # --- ssl --------------------------------------------------------------------------------------
    ("ssl-encoder-config-typo", SSL, ["model.encoder_config={pach_size: 8}"], "model.encoder_config.pach_size"),
    ("ssl-drop-path-in-encoder-config", SSL, ["model.encoder_config={patch_size: 8, drop_path_rate: 0.2}"],
     "model.encoder_config.drop_path_rate=0.2"),
    ("ssl-registers-disagree", SSL, ["model.encoder_config={patch_size: 8, num_register_tokens: 2}"],
     "model.encoder_config.num_register_tokens=2"),
    ("ssl-local-crop-not-patch-multiple", SSL, ["model.local_crop_size=20"], "model.local_crop_size=20"),
    ("ssl-global-crop-not-patch-multiple", SSL, ["model.global_crop_size=60"], "model.global_crop_size=60"),
    ("ssl-mask-ratio-one", SSL, ["model.mask_ratio=[0.5, 1.0]"], "model.mask_ratio[1]=1.0"),
    ("ssl-crop-scale-reversed", SSL, ["model.global_crop_scale=[0.9, 0.4]"], "model.global_crop_scale="),
    ("ssl-crop-scale-zero", SSL, ["model.local_crop_scale=[0.0, 0.3]"], "model.local_crop_scale[0]=0.0"),
    ("ssl-blur-two-values", SSL, ["model.blur_prob=[1.0, 0.1]"], "model.blur_prob="),
    ("ssl-solarize-above-one", SSL, ["model.solarize_prob=[0.0, 1.2, 0.0]"], "model.solarize_prob[1]=1.2"),
    ("ssl-flip-prob-above-one", SSL, ["model.flip_prob=2"], "model.flip_prob=2.0"),
    ("ssl-teacher-temp-zero", SSL, ["model.teacher_temp=0"], "model.teacher_temp=0.0"),
    ("ssl-momentum-above-one", SSL, ["model.momentum_teacher=1.5"], "model.momentum_teacher=1.5"),
    ("ssl-layerwise-decay-zero", SSL, ["model.layerwise_decay=0"], "model.layerwise_decay=0.0"),
    ("ssl-dino-weight-zero", SSL, ["model.dino_loss_weight=0"], "model.dino_loss_weight=0.0"),
    ("ssl-prototypes-zero", SSL, ["model.dino_n_prototypes=0"], "model.dino_n_prototypes=0"),
    ("ssl-local-crops-negative", SSL, ["model.n_local_crops=-1"], "model.n_local_crops=-1"),
    ("ssl-knn-k-zero", SSL, ["model.eval_knn_k=0"], "model.eval_knn_k=0"),
    # --- align ------------------------------------------------------------------------------------
    ("align-text-config-typo", ALIGN, ["model.text_config={num_atention_heads: 4}"], "model.text_config.num_atention_heads"),
    ("align-vision-config-typo", ALIGN, ["model.vision_config={hiden_size: 96}"], "model.vision_config.hiden_size"),
    ("align-vision-image-size", ALIGN, ["model.vision_config={image_size: 224}"], "model.vision_config.image_size=224"),
    ("align-text-vocab-set-by-task", ALIGN, ["model.text_config={vocab_size: 10}"], "model.text_config.vocab_size=10"),
    ("align-text-sections-unknown", ALIGN, ["model.text_sections=[summary]"], "model.text_sections="),
    ("align-sentence-keep-zero", ALIGN, ["model.sentence_keep=0"], "model.sentence_keep=0.0"),
    ("align-texts-per-image-zero", ALIGN, ["model.texts_per_image=0"], "model.texts_per_image=0"),
    ("align-gather-without-local-loss", ALIGN, ["model.gather_with_grad=false", "model.local_loss=false"],
     "model.gather_with_grad=False"),
    ("align-patch-temperature-zero", ALIGN, ["model.patch_temperature=0"], "model.patch_temperature=0.0"),
    ("align-unlocked-layers", ALIGN, ["model.vision_unlocked_layers=-2"], "model.vision_unlocked_layers=-2"),
    ("align-prompt-observation-typo", ALIGN, ["model.zero_shot_prompts={Cardiomegalyy: {positive: [big heart]}}"],
     "model.zero_shot_prompts"),
    # --- report -----------------------------------------------------------------------------------
    ("report-llm-config-typo", REPORT, ["model.llm_config={num_key_value_head: 4}"], "model.llm_config.num_key_value_head"),
    ("report-vision-config-typo", REPORT, ["model.vision_config={patchsize: 14}"], "model.vision_config.patchsize"),
    ("report-kv-heads", REPORT, ["model.llm_config={hidden_size: 128, num_attention_heads: 4, num_key_value_heads: 3}"],
     "model.llm_config.num_key_value_heads=3"),
    ("report-pad-id-set-by-task", REPORT, ["model.llm_config={pad_token_id: 0}"], "model.llm_config.pad_token_id=0"),
    ("report-task-kind-typo", REPORT, ["model.tasks={report: 1.0, vqaa: 1.0}"], "model.tasks="),
    ("report-task-weights-zero", REPORT, ["model.tasks={report: 0.0}"], "model.tasks="),
    ("report-task-weight-nan", REPORT, ["model.tasks={report: .nan}"], "model.tasks.report=nan"),
    ("report-views-without-frontal", REPORT, ["model.views=[lateral]"], "model.views="),
    ("report-target-sections-empty", REPORT, ["model.target_sections=[]"], "model.target_sections=[]"),
    ("report-vqa-types-empty", REPORT, ["model.vqa_answer_types=[]"], "model.vqa_answer_types=[]"),
    ("report-lora-dropout-one", REPORT, ["model.lora_dropout=1"], "model.lora_dropout=1.0"),
    ("report-lora-r-zero", REPORT, ["model.lora_r=0"], "model.lora_r=0"),
    ("report-lora-target-regex", REPORT, ["model.lora_target=(q_proj"], "model.lora_target="),
    ("report-feature-layer-deep", REPORT, ["model.vision=", "model.feature_layer=9"], "model.feature_layer=9"),
    ("report-projector-act", REPORT, ["model.projector_act=gelux"], "model.projector_act='gelux'"),
    ("report-grounding-prompt-placeholder", REPORT, ["model.grounding_prompt='Find {finding}.'"], "model.grounding_prompt="),
    ("report-grounding-prompt-no-phrase", REPORT, ["model.grounding_prompt='Find it.'"], "model.grounding_prompt="),
    ("report-cache-with-augment", REPORT, ["model.augment=true"], "model.cache_features=True"),
    ("report-qlora-without-llm", REPORT, ["model.train_llm=qlora"], "model.train_llm='qlora'"),
    ("report-max-new-tokens-zero", REPORT, ["model.max_new_tokens=0"], "model.max_new_tokens=0"),
    ("report-eval-generate-negative", REPORT, ["model.eval_generate=-1"], "model.eval_generate=-1"),
]

# Valid edge cases that must keep loading (smoke-run overrides, documented special values).
GOOD: list[tuple[str, Path, list[str]]] = [
    ("smoke-run-shorter-than-warmup", CLS, ["train.max_steps=3"]),
    ("epochs-zero-with-max-steps", CLS, ["train.epochs=0", "train.max_steps=10"]),
    ("keep-all-checkpoints", CLS, ["train.keep_last=0", "train.max_grad_norm=0", "train.min_lr=0.001"]),
    ("push-with-repo", CLS, ["train.push_to_hub=true", "train.hub_repo_id=my-org/tiny"]),
    ("all-anatomies-and-views", SSL, ["data.anatomies=null", "data.views=null"]),
    ("intermediate-size-alias", ALIGN, ["model.vision_config={hidden_size: 32, num_attention_heads: 2, intermediate_size: 64}"]),
    ("llm-config-legacy-keys", REPORT, ["model.llm_config={hidden_size: 64, num_attention_heads: 4, rope_theta: 5000.0, "
                                        "torch_dtype: float32}"]),
    ("feature-layer-in-range", REPORT, ["model.vision=", "model.feature_layer=-2"]),
    ("pretrained-encoder-skips-patch-check", SSL, ["model.encoder=some-org/some-vit", "model.local_crop_size=20"]),
]


def _error(path: Path, overrides: list[str]) -> str | None:
    """The ConfigError message of a recipe, or None when it loads."""
    try:
        load_recipe(path, overrides)
    except ConfigError as e:
        return str(e)
    return None


@pytest.mark.parametrize("case", CORPUS, ids=[c[0] for c in CORPUS])
def test_bad_recipe_is_a_config_error_naming_the_key(case):
    _, path, overrides, key = case
    msg = _error(path, overrides)
    assert msg is not None, f"{path.name} {overrides} loaded; expected an error naming {key}"
    assert key in msg, f"the error does not name {key!r}: {msg}"
    # ... and says what is allowed
    assert any(w in msg for w in ("expected", "must", "needs", "allowed", "valid", "set ", "unknown key")), msg


def test_bad_recipe_corpus_summary(capsys):
    """One pass over the whole corpus, with the count shown in the test output."""
    assert len(CORPUS) >= 40 and len({c[0] for c in CORPUS}) == len(CORPUS)
    named, failures = 0, []
    for name, path, overrides, key in CORPUS:
        msg = _error(path, overrides)
        if msg is not None and key in msg:
            named += 1
        else:
            failures.append(f"{name}: {msg!r}")
    with capsys.disabled():
        print(f"\nbad-recipe corpus: {len(CORPUS)} cases, {named} named errors")
    assert not failures, "\n".join(failures)


@pytest.mark.parametrize("case", GOOD, ids=[c[0] for c in GOOD])
def test_valid_edge_cases_still_load(case):
    _, path, overrides = case
    assert _error(path, overrides) is None


def test_a_typo_in_a_hf_config_says_did_you_mean():
    msg = _error(CLS, ["model.encoder_config={hidden_size: 96, num_hidden_layer: 4}"])
    assert "model.encoder_config.num_hidden_layer: unknown key of transformers.Dinov2WithRegistersConfig" in msg
    assert "Did you mean 'num_hidden_layers'?" in msg


def test_a_bad_recipe_file_names_the_file_and_the_key(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(CLS.read_text().replace("lr: 1.0e-3", "lr: .nan").replace("lr: 1e-3", "lr: .nan"))
    assert "lr: .nan" in bad.read_text()
    msg = _error(bad, [])
    assert msg is not None and msg.startswith(f"{bad}: train.lr=nan")


def test_cli_refuses_before_building_data_or_a_run_folder(tmp_path, capsys):
    """``mxr0 config show`` and ``mxr0 train`` stop at the recipe check: exit 2, the key named, nothing written."""
    from mxr0.cli import main

    data, run = tmp_path / "data", tmp_path / "run"
    args = [str(CLS), "train.batch_size=0", f"data.path={data}", f"train.output_dir={run}"]
    assert main(["config", "show", *args]) == 2
    assert "train.batch_size=0: expected an integer >= 1" in capsys.readouterr().err
    assert main(["train", *args]) == 2
    assert "train.batch_size=0" in capsys.readouterr().err
    assert not data.exists() and not run.exists()


def test_sections_check_themselves_and_build_names_the_full_key():
    with pytest.raises(FieldError, match=r"^lr=-1.0: expected a finite number > 0$"):
        TrainConfig(lr=-1.0)
    with pytest.raises(FieldError, match="^seed=-1"):
        PhantomConfig(seed=-1)
    with pytest.raises(FieldError, match="^max_eval_studies=0"):
        DataConfig(max_eval_studies=0)
    assert "data.phantom.seed=-1" in _error(CLS, ["data.phantom.seed=-1"])
    TrainConfig(), DataConfig(), PhantomConfig()  # the defaults are valid


def test_the_config_module_does_not_import_transformers():
    """The HF key check imports transformers lazily: ``mxr0 --help`` (which imports mxr0.config) stays fast."""
    code = "import sys, mxr0.config, mxr0.cli; sys.exit('transformers' in sys.modules or 'torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], cwd=REPO).returncode == 0
