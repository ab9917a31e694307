"""XR-0 SSL pretraining: multi-crop and masks, the meta-architecture, schedules, parameter groups,
export to Hugging Face, exact resume, and continued pretraining from a DINOv2 folder."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from mxr0.config import ConfigError, field_docs, load_recipe
from mxr0.data.multicrop import BlockMasking, MultiCrop, collate_multicrop
from mxr0.config.tasks import SSLModelConfig
from mxr0.models.ssl_meta_arch import HEADS_FILE, SSLMetaArch
from mxr0.optim import layerwise_param_groups, momentum_schedule, teacher_temp_schedule
from mxr0.tasks.ssl import SSLTask

REPO = Path(__file__).resolve().parents[2]
TINY = REPO / "recipes" / "tiny" / "xr0_pretrain.yaml"
PROD = REPO / "recipes" / "xr0_pretrain.yaml"


pytestmark = pytest.mark.usefixtures("one_thread")


def micro_overrides(data_dir: Path, out: Path, **extra) -> list[str]:
    """The tiny recipe shrunk further: 32 px global / 16 px local crops of 8 px patches, 2 blocks."""
    o = {
        "data.source": "records",
        "data.path": str(data_dir),
        "model.encoder_config": "{hidden_size: 32, num_hidden_layers: 2, num_attention_heads: 2, mlp_ratio: 2, "
                                "patch_size: 8, layerscale_value: 0.1}",
        "model.num_register_tokens": 2,
        "model.global_crop_size": 32,
        "model.local_crop_size": 16,
        "model.n_local_crops": 2,
        "model.dino_n_prototypes": 64,
        "model.dino_hidden_dim": 64,
        "model.dino_bottleneck_dim": 16,
        "model.eval_gallery_studies": 120,
        "model.freeze_last_layer_epochs": 0.2,
        "model.warmup_teacher_temp_epochs": 0.5,
        "train.output_dir": str(out),
        "train.batch_size": 16,
        "train.max_steps": 6,
        "train.warmup_steps": 2,
        "train.log_every": 2,
        "train.eval_every": 3,
        "train.save_every": 3,
        "train.keep_last": 3,
        "train.progress": "false",
        "train.trackers": "[jsonl]",
    }
    o.update(extra)
    return [f"{k}={v}" for k, v in o.items()]


def small_cfg(**kw) -> SSLModelConfig:
    base = dict(dino_n_prototypes=64, dino_hidden_dim=64, dino_bottleneck_dim=16, global_crop_size=32,
                local_crop_size=16, n_local_crops=2, drop_path_rate=0.0)
    base.update(kw)
    return SSLModelConfig(**base)


def small_model(cfg: SSLModelConfig | None = None, seed: int = 0, layers: int = 2) -> SSLMetaArch:
    from mxr0.models.encoder import new_encoder

    cfg = cfg or small_cfg()
    torch.manual_seed(seed)
    bb = new_encoder(image_size=32, hidden_size=32, num_hidden_layers=layers, num_attention_heads=2, mlp_ratio=2,
                     patch_size=8, num_register_tokens=2, drop_path_rate=cfg.drop_path_rate, layerscale_value=0.1)
    m = SSLMetaArch(bb, cfg)
    m.sync_teacher()
    return m


def small_batch(b: int = 4, seed: int = 0, n_local: int = 2):
    g = torch.Generator().manual_seed(seed)
    masks = torch.rand(2 * b, 16, generator=g) < 0.3
    return (torch.randn(2 * b, 3, 32, 32, generator=g), torch.randn(n_local * b, 3, 16, 16, generator=g), masks)


# ---------------------------------------------------------------------------------------------
# Recipes and config
# ---------------------------------------------------------------------------------------------


def test_recipes_parse_and_every_model_field_is_documented():
    tiny, prod = load_recipe(TINY), load_recipe(PROD)
    assert tiny.task == prod.task == "ssl"
    assert isinstance(prod.model, SSLModelConfig) and prod.model.dino_n_prototypes == 65536
    assert prod.model.global_crop_size % prod.model.encoder_config["patch_size"] == 0
    docs = field_docs(SSLModelConfig)
    missing = [f.name for f in dataclasses.fields(SSLModelConfig) if not docs.get(f.name)]
    assert not missing, f"undocumented SSLModelConfig fields: {missing}"


def test_bad_settings_are_config_errors(phantom_small, tmp_path):
    with pytest.raises(ConfigError, match="mask_ratio"):
        SSLTask(load_recipe(TINY, ["model.mask_ratio=[0.5, 1.0]"]))
    with pytest.raises(ConfigError, match="unknown key"):
        load_recipe(TINY, ["model.n_local=4"])
    with pytest.raises(ConfigError, match="model.local_crop_size=20: must be a multiple of the patch size 8"):
        load_recipe(TINY, micro_overrides(phantom_small.parent, tmp_path, **{"model.local_crop_size": 20}))


# ---------------------------------------------------------------------------------------------
# Multi-crop and masks
# ---------------------------------------------------------------------------------------------


def _half_bright(h=64, w=64) -> np.ndarray:
    img = np.full((h, w), 0.1, np.float32)
    img[:, : w // 2] = 0.9  # bright on the image's left
    return img


def test_multicrop_shapes_determinism_and_laterality():
    mc = MultiCrop(global_size=32, local_size=16, n_local=3, global_scale=(1.0, 1.0), aspect_ratio=(1.0, 1.0),
                   intensity_prob=0.0, noise_prob=0.0, solarize_prob=(0, 0, 0), blur_prob=(0, 0, 0))
    img = _half_bright()
    g1, l1 = mc(img, torch.Generator().manual_seed(5))
    g2, l2 = mc(img, torch.Generator().manual_seed(5))
    assert g1.shape == (2, 3, 32, 32) and l1.shape == (3, 3, 16, 16)
    assert torch.equal(g1, g2) and torch.equal(l1, l2)
    g3, _ = MultiCrop(global_size=32, local_size=16, n_local=3)(img, torch.Generator().manual_seed(6))
    assert not torch.equal(g1, g3)
    # no flips by default: the bright half stays on the image's left in every full-image view
    for v in g1:
        assert v[0, :, :16].mean() > v[0, :, 16:].mean()
    flipped, _ = dataclasses.replace(mc, flip_prob=1.0)(img, torch.Generator().manual_seed(5))
    for v in flipped:
        assert v[0, :, :16].mean() < v[0, :, 16:].mean()
    # normalisation with the encoder's mean / std
    x = (g1[0, 0] * 0.25 + 0.5)
    assert abs(float(x.max()) - 0.9) < 1e-4 and abs(float(x.min()) - 0.1) < 1e-4


def test_block_masks_cover_the_requested_ratio_in_blocks():
    m = BlockMasking(8)
    g = torch.Generator().manual_seed(0)
    for target in (6, 13, 19, 25, 32):
        mask = m(target, g)
        assert mask.shape == (8, 8) and 0.5 * target <= int(mask.sum()) <= target

    def adjacency(mask):  # 4-neighbour masked pairs per masked patch: high for blocks, low for scattered patches
        mask = mask.int()
        pairs = (mask[1:] * mask[:-1]).sum() + (mask[:, 1:] * mask[:, :-1]).sum()
        return float(pairs) / max(int(mask.sum()), 1)

    block = np.mean([adjacency(m(16, g)) for _ in range(50)])
    scattered = np.mean([adjacency((torch.randperm(64, generator=g) < 16).view(8, 8)) for _ in range(50)])
    assert block > 1.0 > 0.6 > scattered
    flat = [m.sample(g, 0.5, (0.1, 0.5)) for _ in range(400)]
    share = np.mean([bool(f.any()) for f in flat])
    ratios = [float(f.float().mean()) for f in flat if f.any()]
    assert 0.4 < share < 0.6 and 0.04 < min(ratios) and max(ratios) <= 0.5


def test_collate_is_crop_major():
    items = [{"global_crops": torch.full((2, 1, 2, 2), float(i)) + torch.tensor([0.0, 0.5]).view(2, 1, 1, 1),
              "local_crops": torch.full((3, 1, 1, 1), float(i)), "masks": torch.tensor([[i % 2 == 0], [True]])}
             for i in range(4)]
    b = collate_multicrop(items)
    assert b["global_crops"][:, 0, 0, 0].tolist() == [0, 1, 2, 3, 0.5, 1.5, 2.5, 3.5]
    assert b["local_crops"][:, 0, 0, 0].tolist() == [0, 1, 2, 3] * 3
    assert b["masks"][:, 0].tolist() == [True, False, True, False, True, True, True, True]


# ---------------------------------------------------------------------------------------------
# Meta-architecture, parameter groups, schedules
# ---------------------------------------------------------------------------------------------


def test_step_gives_student_gradients_only_and_ema_is_exact():
    m = small_model()
    glob, loc, masks = small_batch()
    losses = m(glob, loc, masks, teacher_temp=0.05)
    assert set(losses) == {"dino_global", "dino_local", "koleo", "ibot", "loss"}
    expected = losses["dino_global"] + losses["dino_local"] + 0.1 * losses["koleo"] + losses["ibot"]
    torch.testing.assert_close(losses["loss"], expected)
    losses["loss"].backward()
    assert all(p.grad is None for p in m.teacher.parameters())
    assert m.student["backbone"].embeddings.mask_token.grad.abs().sum() > 0  # iBOT trains the mask token
    assert m.student["dino_head"].last_layer.weight_v.grad.abs().sum() > 0
    assert float(m.dino_loss.center.abs().sum()) > 0 and float(m.ibot_loss.center.abs().sum()) > 0
    with torch.no_grad():
        for p in m.student.parameters():
            p.add_(0.01)
    t0 = {k: v.clone() for k, v in m.teacher.state_dict().items()}
    s = m.student.state_dict()
    m.update_teacher(0.9)
    for k, v in m.teacher.state_dict().items():
        torch.testing.assert_close(v, 0.9 * t0[k] + 0.1 * s[k])


def test_teacher_stays_in_eval_mode_and_separate_ibot_head():
    m = small_model(small_cfg(ibot_separate_head=True, ibot_n_prototypes=48, drop_path_rate=0.2))
    m.train()
    assert m.student.training and not m.teacher.training
    assert m.ibot_loss.center.shape == (1, 48) and "ibot_head" in m.teacher
    glob, loc, masks = small_batch()
    m(glob, loc, masks, teacher_temp=0.05)["loss"].backward()
    assert m.student["ibot_head"].last_layer.weight_v.grad.abs().sum() > 0
    # without local crops and without iBOT, only the global DINO part and KoLeo remain
    m2 = small_model(small_cfg(ibot_loss_weight=0.0, n_local_crops=0))
    out = m2(glob, loc[:0], masks[:, :0], teacher_temp=0.05)
    assert "ibot" not in out and float(out["dino_local"]) == 0.0


def test_layerwise_decay_groups():
    m = small_model(layers=2)
    groups = layerwise_param_groups(m.student, weight_decay=0.04, layerwise_decay=0.5, patch_embed_lr_mult=0.2)
    seen = [p for g in groups for p in g["params"]]
    trainable = [p for p in m.student.parameters() if p.requires_grad]
    assert len(seen) == len(trainable) and {id(p) for p in seen} == {id(p) for p in trainable}
    assert not any(p is q for p in seen for q in m.teacher.parameters())

    def group_of(param):
        return next(g for g in groups if any(param is q for q in g["params"]))

    bb = m.student["backbone"]
    cases = [
        (bb.embeddings.patch_embeddings.projection.weight, 0.5 ** 3 * 0.2, 1.0),  # layer 0, patch-embed factor
        (bb.embeddings.cls_token, 0.5 ** 3, 0.0),
        (bb.embeddings.position_embeddings, 0.5 ** 3, 0.0),
        (bb.encoder.layer[0].attention.q_proj.weight, 0.5 ** 2, 1.0),
        (bb.encoder.layer[0].attention.q_proj.bias, 0.5 ** 2, 0.0),
        (bb.encoder.layer[1].mlp.fc1.weight, 0.5, 1.0),
        (bb.encoder.layer[1].layer_scale1.lambda1, 0.5, 0.0),
        (bb.layernorm.weight, 1.0, 0.0),
        (m.student["dino_head"].mlp[0].weight, 1.0, 1.0),
    ]
    for p, lr_scale, wd_scale in cases:
        g = group_of(p)
        assert g["lr_scale"] == pytest.approx(lr_scale) and g["wd_scale"] == wd_scale
        assert g["weight_decay"] == pytest.approx(0.04 * wd_scale)
    # prototypes are unit-norm by default: their scale is not trained
    assert not m.student["dino_head"].last_layer.weight_g.requires_grad


def test_schedules():
    t = teacher_temp_schedule(10, 4, 0.04, 0.07)
    np.testing.assert_allclose(t, [0.04, 0.0475, 0.055, 0.0625] + [0.07] * 6)
    assert len(teacher_temp_schedule(3, 30, 0.04, 0.07)) == 3  # warm-up capped at the run length
    mom = momentum_schedule(11, 0.992, 1.0)
    assert mom[0] == pytest.approx(0.992) and mom[-1] == pytest.approx(1.0)
    assert np.all(np.diff(mom) >= 0) and mom[5] == pytest.approx(0.996)


def test_last_layer_is_frozen_early(phantom_small, tmp_path):
    task = SSLTask(load_recipe(TINY, micro_overrides(phantom_small.parent, tmp_path)))
    m = small_model()
    task.setup(total_steps=20, steps_per_epoch=10, accelerator=None)
    assert task.freeze_last_layer_steps == 2  # 0.2 epochs of 10 steps
    glob, loc, masks = small_batch()
    for step, frozen in ((0, True), (1, True), (2, False)):
        m.zero_grad(set_to_none=True)
        m(glob, loc, masks, teacher_temp=0.05)["loss"].backward()
        task.before_optimizer_step(m, step)
        assert (m.student["dino_head"].last_layer.weight_v.grad is None) == frozen
        assert m.student["dino_head"].mlp[0].weight.grad is not None


# ---------------------------------------------------------------------------------------------
# Through the loop: export, features, resume, continued pretraining
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def trained(phantom_small, tmp_path_factory):
    from mxr0.train.loop import train

    old = torch.get_num_threads()
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("ssl_run") / "run"
    recipe = load_recipe(TINY, micro_overrides(phantom_small.parent, out))
    result = train(recipe)
    torch.set_num_threads(old)
    return out, recipe, result


def _load_meta(recipe, ckpt: Path) -> SSLMetaArch:
    from safetensors.torch import load_file

    task = SSLTask(recipe)
    m = task.build_model()
    m.load_state_dict(load_file(str(ckpt / "model.safetensors")))
    return m.eval()


def test_export_loads_with_auto_classes_and_gives_the_teacher_features(trained):
    from transformers import AutoImageProcessor, AutoModel

    from mxr0.data.transforms import ImageTransform

    out, recipe, result = trained
    assert result["state"]["step"] == 6
    export = out / "export"
    model = AutoModel.from_pretrained(export).eval()
    proc = AutoImageProcessor.from_pretrained(export)
    assert type(model).__name__ == "Dinov2WithRegistersModel" and model.config.num_register_tokens == 2
    assert proc.crop_size["height"] == 32
    meta = _load_meta(recipe, out / "checkpoints" / "step-00000006")
    assert int(meta.step) == 6
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(pixel_values=x).last_hidden_state, meta.teacher_features(x), rtol=0, atol=0)
    # the teacher moved away from its initialisation, and away from the student (EMA, not a copy)
    s_w = meta.student["backbone"].encoder.layer[0].mlp.fc1.weight
    t_w = meta.teacher["backbone"].encoder.layer[0].mlp.fc1.weight
    assert not torch.equal(s_w, t_w)
    # the exported processor is our eval transform
    t = ImageTransform.from_pretrained(export)
    assert t.size == 32 and t.mean == pytest.approx((0.5,) * 3) and t.std == pytest.approx((0.25,) * 3)
    # heads and centres beside the backbone
    from safetensors.torch import load_file

    heads = load_file(str(export / HEADS_FILE))
    torch.testing.assert_close(heads["loss.dino_center"], meta.dino_loss.center)
    torch.testing.assert_close(heads["dino_head.last_layer.weight_v"], meta.teacher["dino_head"].last_layer.weight_v)
    assert json.loads((export / "ssl_heads.json").read_text())["step"] == 6
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in rows if "eval/knn_anatomy_acc" in r]
    assert evals and all(0 <= r["eval/knn_anatomy_acc"] <= 1 and r["eval/feature_std"] > 0 for r in evals)
    assert all(k in rows[0] for k in ("train/dino_global", "train/dino_local", "train/ibot", "train/koleo"))


def test_resume_from_a_checkpoint_repeats_the_run_exactly(trained, tmp_path):
    from safetensors.torch import load_file

    from mxr0.train.loop import train

    out, recipe, _ = trained
    run = tmp_path / "resumed"
    (run / "checkpoints").mkdir(parents=True)
    shutil.copytree(out / "checkpoints" / "step-00000003", run / "checkpoints" / "step-00000003")
    phantom = Path(recipe.data.path)
    train(load_recipe(TINY, micro_overrides(phantom, run)), resume="latest")
    a = load_file(str(out / "checkpoints" / "step-00000006" / "model.safetensors"))
    b = load_file(str(run / "checkpoints" / "step-00000006" / "model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:  # teacher, student, centres and the step counter
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=f"differs after resume: {k}")


def _tiny_dinov2_folder(path: Path) -> Path:
    from transformers import Dinov2Config, Dinov2Model

    from mxr0.data.transforms import ImageTransform

    torch.manual_seed(3)
    m = Dinov2Model(Dinov2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, mlp_ratio=2,
                                 patch_size=8, image_size=32))
    m.save_pretrained(path)
    t = ImageTransform(size=32, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
    (path / "preprocessor_config.json").write_text(json.dumps(t.to_processor_config()))
    return path


def test_continued_pretraining_from_a_dinov2_folder_with_added_registers(phantom_small, tmp_path):
    from transformers import AutoModel

    from mxr0.train.loop import train

    src = _tiny_dinov2_folder(tmp_path / "dinov2-tiny")
    over = micro_overrides(phantom_small.parent, tmp_path / "cont", **{
        "model.encoder": str(src), "model.num_register_tokens": 4, "train.max_steps": 2, "train.eval_every": 0,
        "train.save_every": 0})
    task = SSLTask(load_recipe(TINY, over))
    m = task.build_model()
    bb = m.student["backbone"]
    assert type(bb).__name__ == "Dinov2WithRegistersModel" and bb.config.num_register_tokens == 4
    orig = AutoModel.from_pretrained(src).state_dict()
    for k, v in orig.items():
        torch.testing.assert_close(bb.state_dict()[k], v, rtol=0, atol=0)
    assert float(bb.embeddings.register_tokens.detach().abs().max()) < 1e-4
    assert task.transform.mean == pytest.approx((0.485, 0.456, 0.406))  # the checkpoint's normalisation

    train(load_recipe(TINY, over))
    exported = AutoModel.from_pretrained(tmp_path / "cont" / "export")
    assert exported.config.num_register_tokens == 4 and exported.config.hidden_size == 32


def test_continued_pretraining_from_an_export_restores_heads_and_centres(trained, tmp_path):
    from safetensors.torch import load_file

    out, recipe, _ = trained
    export = out / "export"
    over = micro_overrides(Path(recipe.data.path), tmp_path / "again", **{"model.encoder": str(export)})
    m = SSLTask(load_recipe(TINY, over)).build_model()
    heads = load_file(str(export / HEADS_FILE))
    torch.testing.assert_close(m.student["dino_head"].mlp[0].weight, heads["dino_head.mlp.0.weight"])
    torch.testing.assert_close(m.teacher["dino_head"].mlp[0].weight, heads["dino_head.mlp.0.weight"])
    torch.testing.assert_close(m.dino_loss.center, heads["loss.dino_center"])
    # different head sizes: fresh heads, with a warning rather than a crash
    over2 = micro_overrides(Path(recipe.data.path), tmp_path / "again2",
                            **{"model.encoder": str(export), "model.dino_n_prototypes": 32})
    m2 = SSLTask(load_recipe(TINY, over2)).build_model()
    assert m2.student["dino_head"].last_layer.weight_v.shape[0] == 32


def test_the_benchmark_reference_computes_the_same_objective():
    """scripts/bench_ssl.py compares two implementations of one objective, not two objectives."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_ssl", REPO / "scripts" / "bench_ssl.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    args = bench.main.__globals__["argparse"].Namespace(
        batch_size=4, hidden=32, layers=2, heads=2, patch=8, global_size=32, local_size=16, n_local=3,
        prototypes=64, head_hidden=64, bottleneck=16)
    assert bench.check_same_maths(args) < 1e-5
