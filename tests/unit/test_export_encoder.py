"""Any stage's encoder feeds the next: `load_encoder` and ``mxr0 export-encoder`` read the DINOv2-family
encoder out of every kind of export (XR-0 / plain encoder, classifier, alignment dual encoder, report VLM)
with identical weights and its image-processor config, and ``mxr0 eval vision`` scores a dual encoder.

Each export is built tiny here with the project's own builders and exporters, its tower's weights perturbed
so that no two towers (and no freshly initialised model) agree."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from mxr0.cli import main
from mxr0.data.transforms import ImageTransform
from mxr0.models.encoder import (
    EncoderSourceError,
    encoder_source,
    encoder_transform,
    load_encoder,
    new_encoder,
    random_like,
)

pytestmark = pytest.mark.usefixtures("one_thread")

VISION = dict(patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
              num_register_tokens=2)
SIZE = 32
# not the default normalisation, so that the processor config demonstrably travels with the encoder
TRANSFORM = ImageTransform(size=SIZE, mean=(0.41, 0.41, 0.41), std=(0.27, 0.27, 0.27))
TEXTS = ["no pleural effusion", "mild cardiomegaly", "the lungs are clear", "small left pleural effusion",
         "no pneumothorax", "heart size is normal"] * 4


def _tower(seed: int):
    torch.manual_seed(seed)
    enc = new_encoder(SIZE, **VISION)
    with torch.no_grad():  # layer norms / layer scales start at constants: make every weight distinctive
        for p in enc.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return enc.eval()


def _xr0(out: Path):
    enc = _tower(0)
    enc.save_pretrained(out, safe_serialization=True)  # what export_ssl writes: the backbone + its transform
    TRANSFORM.save_pretrained(out)
    return enc


def _classifier(out: Path):
    from transformers import Dinov2WithRegistersForImageClassification

    cfg = _tower(1).config
    cfg.num_labels = 3
    torch.manual_seed(1)
    clf = Dinov2WithRegistersForImageClassification(cfg)
    clf.base_model.load_state_dict(_tower(1).state_dict())
    clf.save_pretrained(out, safe_serialization=True)  # what the classify task's export writes
    TRANSFORM.save_pretrained(out)
    return clf.base_model.eval()


def _dual(out: Path, tok_dir: Path):
    from transformers import BertConfig, BertModel

    from mxr0.data.text import train_wordpiece_tokenizer
    from mxr0.models.dual_encoder import AlignModel, build_dual_encoder, save_align_export

    tok = train_wordpiece_tokenizer(TEXTS, vocab_size=80, save_dir=tok_dir)
    torch.manual_seed(2)
    text = BertModel(BertConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                intermediate_size=64, max_position_embeddings=64))
    dual = build_dual_encoder(_tower(2), text, projection_dim=16, logit_scale_init=2.6592)
    save_align_export(AlignModel(dual), tok, TRANSFORM, out, {"loss": "clip"})
    return dual.vision_model.eval()


def _vlm(out: Path, tok_dir: Path):
    from mxr0.data.chat import IMAGE_TOKEN, train_chat_tokenizer
    from mxr0.models.vlm import build_vlm, image_token_count, tiny_causal_lm
    from mxr0.config.tasks import ReportModelConfig
    from mxr0.models.vlm import save_vlm_export

    tok = train_chat_tokenizer(TEXTS, vocab_size=300, save_dir=tok_dir)
    torch.manual_seed(3)
    lm = tiny_causal_lm(len(tok), tok.pad_token_id, tok.bos_token_id, tok.eos_token_id, hidden_size=32,
                        intermediate_size=64, num_attention_heads=2, num_key_value_heads=2)
    vision = _tower(3)
    vlm = build_vlm(vision, lm, tok.convert_tokens_to_ids(IMAGE_TOKEN), SIZE)
    save_vlm_export(vlm, tok, TRANSFORM, out, ReportModelConfig(), image_token_count(vision.config, SIZE, "default"))
    return vlm.model.vision_tower.eval(), vlm


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    """kind -> (export folder, the source model's own vision tower)."""
    root = tmp_path_factory.mktemp("exports")
    vlm_tower, vlm = _vlm(root / "vlm", root / "tok-chat")
    out = {
        "encoder": (root / "xr0", _xr0(root / "xr0")),
        "classifier": (root / "classifier", _classifier(root / "classifier")),
        "dual-encoder": (root / "dual", _dual(root / "dual", root / "tok-wp")),
        "vlm": (root / "vlm", vlm_tower),
    }
    # a sharded VLM export (a real LLM's size): the tower must come out of the shards that hold it
    sharded = root / "vlm-sharded"
    vlm.save_pretrained(sharded, safe_serialization=True, max_shard_size="40KB")
    TRANSFORM.save_pretrained(sharded)
    out["vlm-sharded"] = (sharded, vlm_tower)
    return out


@pytest.fixture(scope="module")
def pixels():
    g = torch.Generator().manual_seed(0)
    return torch.randn(2, 3, SIZE, SIZE, generator=g)


def _same_outputs(a, b, pixels):
    with torch.no_grad():
        ha = a(pixel_values=pixels).last_hidden_state
        hb = b(pixel_values=pixels).last_hidden_state
    torch.testing.assert_close(ha, hb, rtol=0, atol=1e-6)


def _towers_differ(exports, pixels):
    """Guard for the comparisons: the towers of different exports really differ."""
    with torch.no_grad():
        outs = [t(pixel_values=pixels).last_hidden_state for k, (_, t) in exports.items() if k != "vlm-sharded"]
    for i in range(len(outs)):
        for j in range(i + 1, len(outs)):
            assert (outs[i] - outs[j]).abs().max() > 1e-2


KINDS = ["encoder", "classifier", "dual-encoder", "vlm", "vlm-sharded"]


@pytest.mark.parametrize("kind", KINDS)
def test_load_encoder_gives_the_source_tower(exports, pixels, kind):
    from transformers import Dinov2WithRegistersModel

    _towers_differ(exports, pixels)
    path, tower = exports[kind]
    assert encoder_source(path).kind == kind.replace("-sharded", "")
    enc = load_encoder(path).eval()
    assert type(enc) is Dinov2WithRegistersModel
    assert set(enc.state_dict()) == set(tower.state_dict())
    for k, v in tower.state_dict().items():
        assert torch.equal(enc.state_dict()[k], v), k
    _same_outputs(enc, tower, pixels)
    t = encoder_transform(path)
    assert t.size == SIZE and t.mean == pytest.approx(TRANSFORM.mean) and t.std == pytest.approx(TRANSFORM.std)


def test_vlm_tower_is_read_without_the_llm(exports, pixels, monkeypatch):
    """Only the vision tensors are read: the whole-model fallback is never used, and a shard that holds only
    LLM weights may even be missing."""
    import mxr0.models.encoder as encoder_mod

    def boom(src):
        raise AssertionError("the whole VLM was loaded")

    monkeypatch.setattr(encoder_mod, "_tower_from_full_model", boom)
    path, tower = exports["vlm-sharded"]
    index = json.loads((path / "model.safetensors.index.json").read_text())["weight_map"]
    shards: dict[str, set[str]] = {}
    for k, f in index.items():
        shards.setdefault(f, set()).add(k)
    assert len(shards) > 2, "the test export should be sharded"
    llm_only = [f for f, keys in shards.items() if not any(k.startswith("vision_tower.") for k in keys)]
    assert llm_only, "expected a shard without vision weights"
    copy = path.parent / "vlm-sharded-partial"
    shutil.copytree(path, copy)
    for f in llm_only:
        (copy / f).unlink()
    _same_outputs(load_encoder(copy), tower, pixels)


def test_overrides_registers_and_random_baseline_on_a_vlm(exports, pixels):
    path, tower = exports["vlm"]
    enc = load_encoder(path, num_register_tokens=4, drop_path_rate=0.1)
    assert enc.config.num_register_tokens == 4 and enc.config.drop_path_rate == 0.1
    assert torch.equal(enc.embeddings.register_tokens[:, :2], tower.embeddings.register_tokens)
    rnd = random_like(path, seed=0).eval()
    assert type(rnd) is type(tower) and rnd.config.hidden_size == tower.config.hidden_size
    with torch.no_grad():
        diff = (rnd(pixel_values=pixels).last_hidden_state - tower(pixel_values=pixels).last_hidden_state).abs().max()
    assert diff > 1e-2


@pytest.mark.parametrize("kind", KINDS)
def test_export_encoder_cli_round_trip(exports, pixels, kind, tmp_path, capsys):
    from transformers import AutoImageProcessor, AutoModel

    path, tower = exports[kind]
    out = tmp_path / "enc"
    assert main(["export-encoder", str(path), "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors", "preprocessor_config.json"]
    assert [p.name for p in tmp_path.iterdir()] == ["enc"], "a temporary folder was left behind"
    model = AutoModel.from_pretrained(out).eval()
    assert type(model).__name__ == "Dinov2WithRegistersModel"
    _same_outputs(model, tower, pixels)
    proc = AutoImageProcessor.from_pretrained(out)
    assert ImageTransform.from_processor_config(proc.to_dict()).mean == pytest.approx(TRANSFORM.mean, abs=1e-6)
    src_cfg = json.loads((path / "preprocessor_config.json").read_text())
    src_cfg.pop("processor_class", None)
    assert json.loads((out / "preprocessor_config.json").read_text()) == src_cfg
    assert ImageTransform.from_pretrained(out) == ImageTransform.from_pretrained(path)
    # the folder is itself an encoder source of the plain kind, with the same weights
    assert encoder_source(out).kind == "encoder"
    _same_outputs(load_encoder(out), tower, pixels)


def test_export_encoder_refuses_to_clobber_and_overwrites_atomically(exports, pixels, tmp_path, capsys):
    out = tmp_path / "enc"
    assert main(["export-encoder", str(exports["encoder"][0]), "--out", str(out)]) == 0
    capsys.readouterr()
    assert main(["export-encoder", str(exports["dual-encoder"][0]), "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert str(out) in err and "--overwrite" in err
    _same_outputs(load_encoder(out), exports["encoder"][1], pixels)  # untouched
    assert main(["export-encoder", str(exports["dual-encoder"][0]), "--out", str(out), "--overwrite"]) == 0
    _same_outputs(load_encoder(out), exports["dual-encoder"][1], pixels)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["enc"]
    assert main(["export-encoder", str(out), "--out", str(out), "--overwrite"]) == 1
    assert "source itself" in capsys.readouterr().err


def test_unknown_sources_are_clear_errors(tmp_path, capsys):
    from transformers import BertConfig, BertModel, ViTConfig, VisionTextDualEncoderConfig

    bert = tmp_path / "bert"
    BertModel(BertConfig(vocab_size=30, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=32)).save_pretrained(bert)
    assert main(["export-encoder", str(bert), "--out", str(tmp_path / "o")]) == 1
    err = capsys.readouterr().err
    assert str(bert) in err and "model_type 'bert'" in err
    assert "vision-text-dual-encoder" in err and "llava" in err and "dinov2" in err  # what is accepted
    assert not (tmp_path / "o").exists()

    empty = tmp_path / "run"
    (empty / "export").mkdir(parents=True)
    (empty / "export" / "config.json").write_text("{}")
    with pytest.raises(EncoderSourceError, match=r"no config\.json.*pass .*export"):
        load_encoder(empty)
    with pytest.raises(EncoderSourceError, match="not a local folder"):
        load_encoder(tmp_path / "no" / "such" / "folder")

    vit_dual = tmp_path / "vit-dual"
    VisionTextDualEncoderConfig.from_vision_text_configs(
        ViTConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32),
        BertConfig(vocab_size=30, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32),
    ).save_pretrained(vit_dual)
    with pytest.raises(EncoderSourceError, match="model_type 'vit', not a DINOv2-family encoder"):
        load_encoder(vit_dual)


def test_eval_vision_scores_a_dual_encoder_export(exports, phantom_small, tmp_path, capsys):
    from mxr0.data.records import read_records
    from mxr0.eval.vision.features import StudyImages, cached_features, load_encoder_spec

    path, tower = exports["dual-encoder"]
    records = read_records(phantom_small, splits=["test"])[:6]
    enc = load_encoder_spec(str(path))
    ds = StudyImages(records, enc.transform)
    feats = cached_features(enc, ds, cache_dir=tmp_path / "cache", batch_size=4, device="cpu")
    pix = torch.stack([ds[i]["pixel_values"] for i in range(len(ds))])
    with torch.no_grad():
        want = tower(pixel_values=pix).last_hidden_state[:, 0]
    torch.testing.assert_close(torch.as_tensor(feats["cls"]), want, rtol=0, atol=1e-5)

    rc = main(["eval", "vision", "--model", f"align={path}", "--random-baseline", "--data", str(phantom_small),
               "--tasks", "knn", "--out", str(tmp_path / "eval"), "--device", "cpu", "--n-bootstrap", "10"])
    assert rc == 0
    res = json.loads((tmp_path / "eval" / "results.json").read_text())
    assert set(res["encoders"]) == {"align", "random-init"}
    assert res["encoders"]["align"]["knn"]

    assert main(["eval", "vision", "--model", str(tmp_path), "--data", str(phantom_small), "--tasks", "knn"]) == 1
    assert "no config.json" in capsys.readouterr().err


def test_a_tower_that_does_not_fit_its_config_is_an_error(exports, monkeypatch):
    """Weights are checked key by key: a tensor missing from the export is an error, never a random init."""
    import mxr0.models.encoder as encoder_mod

    real = encoder_mod._tower_state

    def drop_one(src):
        state = real(src)
        state.pop(sorted(k for k in state if "layernorm" in k)[0])
        return state

    monkeypatch.setattr(encoder_mod, "_tower_state", drop_one)
    with pytest.raises(EncoderSourceError, match="do not fit its vision config.*missing_keys"):
        load_encoder(exports["dual-encoder"][0])


def test_an_alignment_export_feeds_the_report_vlm(exports, phantom_small, tmp_path, pixels):
    """The report task builds its VLM on an alignment export's vision tower (model.vision=<align export>)."""
    from mxr0.config import load_recipe
    from mxr0.tasks.report import ReportTask

    path, tower = exports["dual-encoder"]
    recipe = load_recipe(Path(__file__).resolve().parents[2] / "recipes/tiny/mxr0_report.yaml", [
        "data.source=records", f"data.path={phantom_small}", f"train.output_dir={tmp_path / 'run'}",
        f"model.vision={path}", "model.llm_config={hidden_size: 32, intermediate_size: 64, num_hidden_layers: 1, "
        "num_attention_heads: 2, num_key_value_heads: 2}", "model.tokenizer_vocab_size=300",
        "model.cache_features=false", "data.max_train_studies=16", "data.max_eval_studies=4"])
    task = ReportTask(recipe)
    assert task.n_image_tokens == (SIZE // 8) ** 2 + 2  # patches + registers of the dual encoder's tower
    task.build_datasets()
    vlm = task.build_model()
    _same_outputs(vlm.model.vision_tower.eval(), tower, pixels)


def test_new_encoder_maps_intermediate_size_to_mlp_ratio_or_says_why_not():
    from mxr0.config import ConfigError
    from mxr0.models.encoder import new_encoder_config

    assert new_encoder_config(28, hidden_size=32, intermediate_size=128, patch_size=14).mlp_ratio == 4
    with pytest.raises(ConfigError, match="not a multiple of hidden_size 32"):
        new_encoder_config(28, hidden_size=32, intermediate_size=100, patch_size=14)
    with pytest.raises(ConfigError, match="disagrees with mlp_ratio"):
        new_encoder_config(28, hidden_size=32, intermediate_size=128, mlp_ratio=2, patch_size=14)
