"""bf16 on the CPU (AMX / AVX512-BF16) where results hold: the labellers' fp32-relabel safety rule (labels
identical to fp32 on the IU X-ray reports), frozen-feature extraction (cosine > 0.99), greedy generation
(mostly identical), the training loop's `train.mixed_precision: bf16`, and `scripts/gpu_check.sh` on a
machine without CUDA. No timings here: speed is measured by `scripts/bench_*.py` (BENCHMARKS.md)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from mxr0.precision import autocast, fast_bf16, model_precision, resolve_precision, set_model_precision, top2_margin

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models on a shared 2-core VM
    yield
    torch.set_num_threads(n)


def _iu_texts() -> list[str] | None:
    root = Path(os.environ.get("MXR0_SHARED_DATA", REPO.parent / "shared" / "data"))
    f = root / "iu_xray" / "iu_studies.jsonl"
    if not f.is_file():
        return None
    rows = [json.loads(line) for line in f.open()]
    return [t for t in (f"{r.get('findings') or ''} {r.get('impression') or ''}".strip() for r in rows) if t]


# --- precision helpers -------------------------------------------------------------------------
def test_resolve_precision_and_margins():
    assert resolve_precision(None) == "fp32" and resolve_precision("bfloat16") == "bf16"
    assert resolve_precision("bf16_weights") == "bf16-weights"
    assert resolve_precision("auto", "cpu") == ("bf16" if fast_bf16("cpu") else "fp32")
    with pytest.raises(ValueError, match="precision must be one of"):
        resolve_precision("fp16")
    m = top2_margin(torch.tensor([[3.0, 1.0, 2.5], [0.0, 0.0, -1.0]]))
    assert m.tolist() == [0.5, 0.0]
    lin = torch.nn.Linear(4, 4)
    assert model_precision(lin) == "fp32"
    assert set_model_precision(lin, "bf16-weights") == "bf16-weights" and lin.weight.dtype == torch.bfloat16
    with autocast("bf16"):
        assert (torch.ones(2, 4) @ torch.ones(4, 4)).dtype == torch.bfloat16
    with autocast("fp32"):
        assert (torch.ones(2, 4) @ torch.ones(4, 4)).dtype == torch.float32


# --- CheXbert ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def iu_chexbert(tmp_path_factory):
    from mxr0.eval.reports import CheXbert
    from mxr0.eval.reports.testing import save_tiny_chexbert

    texts = _iu_texts()
    if texts is None:
        pytest.skip("IU X-ray reports not present (../shared/data/iu_xray)")
    folder = save_tiny_chexbert(tmp_path_factory.mktemp("chexbert-iu"), texts=texts[:400], vocab_size=1500)
    return CheXbert.load(folder, device="cpu"), texts


@pytest.mark.parametrize("precision", ["bf16", "bf16-weights"])
def test_chexbert_bf16_labels_equal_fp32_on_every_iu_report(iu_chexbert, precision):
    cx, texts = iu_chexbert
    ref = cx.label(texts, precision="fp32")
    assert cx.last_run["precision"] == "fp32" and cx.last_run["relabelled_fp32"] == 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # random stand-in weights: the relabel share may pass the cap
        out = cx.label(texts, precision=precision)
    run = cx.last_run
    assert run["precision"] == precision and run["reports"] == len(set(texts))
    assert (out == ref).all(), f"{int((out != ref).any(1).sum())} of {len(texts)} reports changed"
    assert run["calibration_fp32"] >= 16 and run["threshold"] >= max(run["margin"], 4 * run["max_abs_logit_diff"])
    assert 0 <= run["relabelled_fp32"] <= run["reports"] - run["calibration_fp32"]


def test_chexbert_relabel_rule_and_cap(iu_chexbert):
    cx, texts = iu_chexbert
    texts = texts[:200]
    ref = cx.label(texts)
    with pytest.warns(UserWarning, match="labelled again in fp32"):
        out = cx.label(texts, precision="bf16", margin=float("inf"))  # everything relabelled: over the cap
    run = cx.last_run
    assert (out == ref).all() and run["over_cap"] and run["relabelled_fp32"] + run["calibration_fp32"] == run["reports"]
    assert cx.last_run["threshold"] == float("inf")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cx.label(texts, precision="auto")
    assert cx.last_run["precision"] == resolve_precision("auto", "cpu")


def test_bf16_logits_track_fp32_at_bert_base_width():
    """The safety margin is set from this deviation: bert-base shapes, a few IU-like reports."""
    from transformers import BertConfig

    from mxr0.eval.reports.chexbert import DEFAULT_MARGIN, _labeler_class

    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=500, hidden_size=768, num_hidden_layers=2, num_attention_heads=12,
                     intermediate_size=3072)
    model = _labeler_class()(cfg).eval()
    x = torch.randint(5, 500, (8, 48))
    mask = torch.ones(8, 48)
    with torch.inference_mode():
        f = torch.cat(model(x, mask), 1)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            b = torch.cat(model(x, mask), 1).float()
    assert (b - f).abs().max() < DEFAULT_MARGIN / 2


# --- RadGraph ----------------------------------------------------------------------------------
def test_radgraph_bf16_annotations_equal_fp32(tmp_path):
    from mxr0.eval.reports import RadGraph
    from mxr0.eval.reports.testing import SAMPLE_REPORTS, save_tiny_radgraph

    texts = (_iu_texts() or list(SAMPLE_REPORTS))[:300]
    rg = RadGraph.load(save_tiny_radgraph(tmp_path / "rg", dataset="radgraph-xl"), device="cpu")
    ref = rg.annotate(texts)
    assert rg.last_run["precision"] == "fp32"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = rg.annotate(texts, precision="bf16")
    assert rg.last_run["precision"] == "bf16" and rg.last_run["reports"] == len(set(texts))
    assert out == ref


# --- frozen features ---------------------------------------------------------------------------
def test_bf16_features_agree_with_fp32(phantom_small, tmp_path):
    from transformers import Dinov2Config, Dinov2Model

    from mxr0.data.records import read_records
    from mxr0.data.transforms import ImageTransform
    from mxr0.eval.vision.features import Encoder, StudyImages, cached_features

    torch.manual_seed(0)
    model = Dinov2Model(Dinov2Config(hidden_size=64, num_hidden_layers=3, num_attention_heads=4, intermediate_size=128,
                                     patch_size=8, image_size=64)).eval()
    recs = read_records(phantom_small, splits=["test"])[:24]
    ds = StudyImages(recs, ImageTransform(64))
    enc = Encoder(model, ds.transform, "tiny", "tiny-random-0")
    f32 = cached_features(enc, ds, tmp_path, batch_size=8, last4=True, device="cpu")
    b16 = cached_features(enc, ds, tmp_path, batch_size=8, last4=True, device="cpu", precision="bf16")
    assert f32["precision"] == "fp32" and b16["precision"] == "bf16"
    assert len(list(tmp_path.glob("features-*.npz"))) == 2  # the precision is part of the cache key
    for k in ("cls", "mean_patch", "last4"):
        a, b = f32[k], b16[k]
        assert a.dtype == b.dtype == np.float32
        cos = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
        assert cos.min() > 0.99, (k, cos.min())
    again = cached_features(enc, ds, tmp_path, batch_size=8, last4=True, device="cpu", precision="bf16")
    assert again["precision"] == "bf16" and np.array_equal(again["cls"], b16["cls"])
    with pytest.raises(ValueError, match="bf16-weights"):
        cached_features(enc, ds, None, device="cpu", precision="bf16-weights")


# --- generation --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_vlm(phantom_small, tmp_path_factory):
    from mxr0.config import load_recipe
    from mxr0.train.loop import train

    out = tmp_path_factory.mktemp("bf16-vlm")
    overrides = [
        "data.source=records", f"data.path={phantom_small}", f"train.output_dir={out}", "model.vision=",
        "model.image_size=56",
        "model.vision_config={hidden_size: 32, num_hidden_layers: 2, num_attention_heads: 2, mlp_ratio: 2, "
        "patch_size: 14, num_register_tokens: 2}",
        "model.llm_config={hidden_size: 32, intermediate_size: 64, num_hidden_layers: 2, num_attention_heads: 2, "
        "num_key_value_heads: 2}",
        "model.tokenizer_vocab_size=400", "model.cache_features=false", "model.eval_generate=0",
        "model.max_new_tokens=24", "model.max_length=256", "train.batch_size=8", "train.max_steps=30",
        "train.eval_every=0", "train.save_every=0", "train.progress=false", "train.trackers=[jsonl]"]
    return train(load_recipe(REPO / "recipes/tiny/mxr0_report.yaml", overrides))["export_dir"], phantom_small


def test_bf16_greedy_generation_mostly_identical_and_recorded(tiny_vlm, tmp_path):
    from mxr0.data.records import read_records
    from mxr0.generate import generate_split

    export, data = tiny_vlm
    recs = [r for r in read_records(data, splits=["test"]) if r["anatomy"] == "chest"][:16]
    a = generate_split(export, recs, tmp_path / "fp32.jsonl", batch_size=1, max_new_tokens=24, progress=False)
    b = generate_split(export, recs, tmp_path / "bf16.jsonl", batch_size=1, max_new_tokens=24, progress=False,
                       precision="bf16")
    ra = [json.loads(x) for x in a.read_text().splitlines()]
    rb = [json.loads(x) for x in b.read_text().splitlines()]
    assert all("precision" not in r for r in ra) and all(r["precision"] == "bf16" for r in rb)
    same = sum(x["report"] == y["report"] for x, y in zip(ra, rb))
    assert same >= 0.75 * len(ra), f"only {same}/{len(ra)} greedy reports identical in bf16"


# --- training loop: train.mixed_precision: bf16 --------------------------------------------------
@pytest.mark.parametrize("recipe", ["classify", "xr0_pretrain"])
def test_training_loop_bf16_on_cpu_keeps_fp32_master_weights_and_optimizer_state(recipe, phantom_small, tmp_path):
    """Through the recipe setting only (mxr0/train/loop.py unchanged): bf16 autocast on the CPU, finite
    losses, parameters (the SSL teacher, updated by EMA, included) and AdamW moments in fp32."""
    from mxr0.config import load_recipe
    from mxr0.train.loop import train

    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)  # another test of this process may have set "no"
    out = tmp_path / "run"
    res = train(load_recipe(REPO / f"recipes/tiny/{recipe}.yaml", [
        "data.source=records", f"data.path={phantom_small}", f"train.output_dir={out}", "train.max_steps=4",
        "train.mixed_precision=bf16", "train.eval_every=0", "train.save_every=4", "train.progress=false",
        "train.trackers=[jsonl]", "train.batch_size=8", "train.log_every=1"]))
    logs = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines() if x.strip()]
    losses = [r["train/loss"] for r in logs if "train/loss" in r]
    assert losses and all(np.isfinite(losses))
    ckpt = sorted((out / "checkpoints").glob("step-*"))[-1]
    opt = next(ckpt.rglob("optimizer*.bin"), None)
    assert opt is not None, list(ckpt.rglob("*"))
    state = torch.load(str(opt), map_location="cpu", weights_only=False)["state"]
    dtypes = {v.dtype for s in state.values() for v in s.values() if torch.is_tensor(v) and v.ndim}
    assert dtypes == {torch.float32}, dtypes
    from safetensors.torch import load_file

    weights = load_file(str(next(ckpt.rglob("model*.safetensors"))))
    assert {v.dtype for v in weights.values() if v.is_floating_point()} == {torch.float32}
    if recipe == "xr0_pretrain":
        assert any("teacher" in k for k in weights), list(weights)[:5]
    AcceleratorState._reset_state(reset_partial_state=True)
    assert res is not None


# --- scripts/gpu_check.sh ----------------------------------------------------------------------
def test_gpu_check_says_no_cuda_on_this_cpu():
    if torch.cuda.is_available():
        pytest.skip("CUDA present: run scripts/gpu_check.sh itself")
    env = dict(os.environ, MXR0_PYTHON=sys.executable)
    p = subprocess.run(["bash", str(REPO / "scripts/gpu_check.sh")], capture_output=True, text=True, env=env,
                       timeout=120)
    assert p.returncode == 2, p.stdout + p.stderr
    assert "no CUDA" in p.stdout


def test_gpu_check_dry_run_runs_every_section_on_the_cpu():
    env = dict(os.environ, MXR0_PYTHON=sys.executable, OMP_NUM_THREADS="1")
    p = subprocess.run(["bash", str(REPO / "scripts/gpu_check.sh"), "--dry-run"], capture_output=True, text=True,
                       env=env, timeout=300)
    assert p.returncode == 0, p.stdout + p.stderr
    for line in ("bf16 matmul", "ViT-B/14 bf16 step", "CheXbert ratio", "QLoRA nf4 layer", "[gpu_check] done"):
        assert line in p.stdout, (line, p.stdout)
    assert "labels 32/32" in p.stdout  # the bf16 labeller with its fp32 relabelling is exact here too
