"""The frozen-encoder suite: metrics against hand-computed or reference values, heads that learn from
informative features and not from noise, subgroup slices, convergence, reports, and the CLI."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from mxr0.eval.vision import fairness
from mxr0.eval.vision.bootstrap import mean_ci
from mxr0.eval.vision.convergence import compare, run_curve, speedup, steps_to_target
from mxr0.eval.vision.knn import knn_classify, retrieval_metrics
from mxr0.eval.vision.probe import (
    auroc,
    auroc_columns,
    bootstrap_mean_auroc,
    sweep_linear_probe,
    trainable_labels,
)
from mxr0.eval.vision.segmentation import dice_scores, predict_masks, train_seg_head


pytestmark = pytest.mark.usefixtures("one_thread")


# ---------------------------------------------------------------------------------------------
# AUROC and the linear probe
# ---------------------------------------------------------------------------------------------


def _mann_whitney_auroc(y: np.ndarray, s: np.ndarray) -> float:
    """AUROC straight from its definition: P(score of a positive > score of a negative), ties count one half."""
    pos, neg = s[y > 0.5][:, None], s[y <= 0.5][None, :]
    return float(((pos > neg) + 0.5 * (pos == neg)).mean())


def test_auroc_is_the_mann_whitney_statistic_with_ties_and_masks():
    rng = np.random.default_rng(0)
    for trial in range(20):
        n, c = int(rng.integers(5, 250)), 3
        y = (rng.random((n, c)) < rng.uniform(0.1, 0.9)).astype(np.float32)
        s = np.round(rng.normal(size=(n, c)) + y, trial % 3)  # rounding creates ties
        m = (rng.random((n, c)) > 0.2).astype(np.float32)
        got = auroc_columns(s, y, m)
        for j in range(c):
            keep = m[:, j] > 0
            if 0 < y[keep, j].sum() < keep.sum():
                assert got[j] == pytest.approx(_mann_whitney_auroc(y[keep, j], s[keep, j]), abs=1e-12)
            else:
                assert np.isnan(got[j])
    assert np.isnan(auroc(np.ones(5), np.arange(5)))


def test_auroc_equals_sklearn_and_refuses_non_finite_scores():
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(1)
    for trial in range(30):
        n = int(rng.integers(3, 400))
        y = rng.random(n) < rng.uniform(0.05, 0.95)
        if y.all() or not y.any():
            continue
        s = np.round(rng.normal(size=n) + y, trial % 4).astype(np.float32)  # ties, float32 as probes give
        assert auroc(y.astype(np.float32), s) == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    with pytest.raises(ValueError, match="non-finite"):
        auroc(np.array([0, 1, 1.0]), np.array([0.1, np.nan, 0.3]))


def test_bootstrap_intervals_match_a_direct_percentile_bootstrap():
    rng = np.random.default_rng(3)
    y = (rng.random((150, 4)) < 0.3).astype(np.float32)
    s = rng.normal(size=(150, 4)) + y
    m = np.ones_like(y)
    lo, hi = bootstrap_mean_auroc(s, y, m, n_bootstrap=300, seed=0)
    assert (lo, hi) == bootstrap_mean_auroc(s, y, m, n_bootstrap=300, seed=0)  # seeded
    direct_rng = np.random.default_rng(1)
    direct = [float(np.nanmean(auroc_columns(s[i], y[i], m[i])))
              for i in direct_rng.integers(0, 150, (300, 150))]
    assert lo == pytest.approx(np.quantile(direct, 0.025), abs=0.02)
    assert hi == pytest.approx(np.quantile(direct, 0.975), abs=0.02)
    assert lo < float(np.nanmean(auroc_columns(s, y, m))) < hi
    # per-study means (kNN accuracy, Dice): the same against the closed-form spread of a mean
    v = rng.random(400)
    lo2, hi2 = mean_ci(v, 1000, seed=0)
    half = 1.96 * v.std() / np.sqrt(len(v))
    assert lo2 == pytest.approx(v.mean() - half, abs=0.01) and hi2 == pytest.approx(v.mean() + half, abs=0.01)
    assert mean_ci(v, 0) == (None, None) and mean_ci(v[:1], 100) == (None, None)
    # resamples where no label has both classes are left out, not turned into a nan interval
    y1 = np.zeros((6, 1), np.float32)
    y1[0] = 1
    lo3, hi3 = bootstrap_mean_auroc(np.arange(6.0)[:, None], y1, np.ones_like(y1), n_bootstrap=200)
    assert np.isfinite(lo3) and np.isfinite(hi3)
    assert np.isnan(bootstrap_mean_auroc(s, y, m, n_bootstrap=0)[0])


def _synthetic(n: int, seed: int, d: int = 16):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d)).astype(np.float32) * 5 + 3  # unstandardised on purpose
    y = np.stack([(x[:, 0] + x[:, 1] + rng.normal(size=n) > 6), (x[:, 2] - x[:, 3] > 0),
                  rng.random(n) > 0.5], 1).astype(np.float32)  # the third label is pure noise
    m = np.ones_like(y)
    return x, y, m


def test_linear_probe_learns_signal_and_not_noise():
    (xt, yt, mt), (xv, yv, mv), (xs, ys, ms) = _synthetic(400, 0), _synthetic(150, 1), _synthetic(300, 2)
    # masked entries carry wrong labels: they must be ignored
    mt[::3, 0] = 0
    yt[::3, 0] = 1 - yt[::3, 0]
    sw = sweep_linear_probe(xt, yt, mt, xv, yv, mv, lrs=(1e-4, 1e-2, 1e-1), steps=150, eval_every=25)
    assert sw.val_curves.shape == (3, 6) and sw.eval_steps[-1] == 150
    assert sw.best == int(np.argmax(sw.val_curves[:, -1]))
    a = auroc_columns(sw.scores(xs), ys, ms)
    assert a[0] > 0.9 and a[1] > 0.95 and abs(a[2] - 0.5) < 0.1
    assert sw.val_curves[sw.best, -1] > sw.val_curves[sw.best, 0] - 1e-9  # validation AUROC rises or stays
    lo, hi = bootstrap_mean_auroc(sw.scores(xs), ys, ms, n_bootstrap=100)
    assert lo < float(np.nanmean(a)) < hi and hi - lo < 0.2
    # a label without both classes is not trainable
    y2 = yt.copy()
    y2[:, 1] = 0
    assert trainable_labels(y2, mt).tolist() == [0, 2]


# ---------------------------------------------------------------------------------------------
# kNN and retrieval
# ---------------------------------------------------------------------------------------------


def test_knn_and_retrieval_by_hand():
    gallery = np.array([[1, 0], [0.9, 0.1], [0, 1], [0.1, 0.9], [-1, 0]], np.float32)
    gy = np.array([0, 0, 1, 1, 2])
    queries = np.array([[1, 0.05], [0.05, 1]], np.float32)
    qy = np.array([0, 1])
    pred, scores = knn_classify(gallery, gy, queries, k=2, n_classes=3)
    assert pred.tolist() == [0, 1] and np.allclose(scores.sum(1), 1)
    # k = 5 with a hot temperature: the votes follow similarity, the far class gets almost nothing
    _, s5 = knn_classify(gallery, gy, queries, k=5, temperature=0.07, n_classes=3)
    assert s5[0, 2] < 1e-6
    r = retrieval_metrics(gallery, gy, queries, qy, ks=(1, 2, 3))
    # query 0 ranks: [0, 1] relevant, then 3, 2, 4: P@1 = 1, P@2 = 1, P@3 = 2/3, AP = 1
    assert r["precision@1"] == 1.0 and r["precision@2"] == 1.0
    assert r["precision@3"] == pytest.approx(2 / 3)
    assert r["mAP"] == pytest.approx(1.0)
    # a query whose relevant items rank 2nd and 3rd: AP = (1/2 + 2/3) / 2
    r2 = retrieval_metrics(gallery, gy, np.array([[0.8, 0.6]], np.float32), np.array([1]))
    sims = gallery @ np.array([0.8, 0.6]) / np.linalg.norm(gallery, axis=1)
    ranks = np.argsort(-sims)
    rel = (gy[ranks] == 1).astype(float)
    expected = np.sum(np.cumsum(rel) / np.arange(1, 6) * rel) / rel.sum()
    assert r2["mAP"] == pytest.approx(expected)


# ---------------------------------------------------------------------------------------------
# Segmentation
# ---------------------------------------------------------------------------------------------


def test_dice_scores_by_hand():
    p = np.zeros((2, 2, 4, 4), bool)
    t = np.zeros((2, 2, 4, 4), bool)
    p[0, 0, :2] = True  # 8 pixels
    t[0, 0, :1] = True  # 4 pixels, all inside p: dice = 2 * 4 / 12
    t[1, 0, 0, 0] = True  # missed entirely
    d = dice_scores(p, t)
    assert d[0, 0] == pytest.approx(8 / 12) and d[1, 0] == 0.0 and d[0, 1] == 1.0  # both empty


def _seg_data(n: int, seed: int, informative: bool):
    """Blobs at random places; informative maps carry the blob (patch grid) in channel 0."""
    rng = np.random.default_rng(seed)
    masks = np.zeros((n, 2, 32, 32), bool)
    maps = rng.normal(size=(n, 4, 8, 8, 8)).astype(np.float32)
    yy, xx = np.mgrid[:32, :32]
    for i in range(n):
        cy, cx = rng.integers(8, 24, 2)
        masks[i, 0] = (yy - cy) ** 2 + (xx - cx) ** 2 < 49
        masks[i, 1] = ~masks[i, 0]
        if informative:
            coarse = torch.nn.functional.adaptive_avg_pool2d(torch.from_numpy(masks[i, :1].astype(np.float32)), 8)
            maps[i, :, 0] += 4 * coarse[0].numpy()
    return maps.astype(np.float16), masks


@pytest.mark.parametrize("head", ["linear", "multiscale"])
def test_segmentation_heads_learn_from_informative_features_only(head):
    xt, mt = _seg_data(96, 0, True)
    xs, ms = _seg_data(48, 1, True)
    steps = 120 if head == "linear" else 60
    model = train_seg_head(head, xt, mt, steps=steps, lr=0.1 if head == "linear" else 3e-3)
    good = dice_scores(predict_masks(model, xs, (32, 32)), ms)[:, 0].mean()
    nt, nm = _seg_data(96, 0, False)
    ns, nsm = _seg_data(48, 1, False)
    noise = train_seg_head(head, nt, nm, steps=steps, lr=0.1 if head == "linear" else 3e-3)
    bad = dice_scores(predict_masks(noise, ns, (32, 32)), nsm)[:, 0].mean()
    assert good > 0.75 and good > bad + 0.25, (good, bad)


def test_study_images_masks_follow_the_image_geometry(tmp_path):
    from PIL import Image

    from mxr0.data.transforms import ImageTransform
    from mxr0.eval.vision.features import StudyImages

    img = np.zeros((60, 90), np.uint8)
    img[10:40, 50:80] = 255  # a bright box, right of centre, in a landscape image
    Image.fromarray(img).save(tmp_path / "im.png")
    Image.fromarray(img).save(tmp_path / "mask.png")
    rec = {"study_id": "s", "anatomy": "chest", "images": [{"path": str(tmp_path / "im.png"), "view": "PA"}],
           "masks": [{"name": "box", "path": str(tmp_path / "mask.png"), "image_index": 0}], "labels": {},
           "sex": "F", "age": 50.0}
    for t in (ImageTransform(size=32, mean=(0.5,), std=(0.25,)),
              ImageTransform(size=32, mode="pad", mean=(0.5,), std=(0.25,))):
        ds = StudyImages([rec], t, masks=["box"])
        item = ds[0]
        bright = (item["pixel_values"][0] * 0.25 + 0.5) > 0.5
        mask = item["masks"][0]
        assert mask.shape == (32, 32) and mask.any()
        assert (bright == mask).float().mean() > 0.97
    # studies without the requested masks are left out
    assert len(StudyImages([rec], t, masks=["heart"])) == 0


# ---------------------------------------------------------------------------------------------
# Fairness, convergence
# ---------------------------------------------------------------------------------------------


def test_age_bands_and_subgroup_gaps():
    assert [fairness.age_band(a) for a in (18, 39.9, 40, 59, 60, 74, 75, 90, None)] == \
        ["<40", "<40", "40-59", "40-59", "60-74", "60-74", "75+", "75+", "unknown"]
    sex = ["M"] * 6 + ["F"] * 6 + [""]
    age = [30] * 3 + [80] * 3 + [30] * 6 + [None]
    g = fairness.group_labels(sex, age)
    values = np.array([1, 1, 1, 0, 0, 0, 1, 1, 1, 1, 1, 0, 1], float)
    out = fairness.slice_metric(lambda idx: float(values[idx].mean()), g, min_size=3)
    assert out["sex"]["groups"]["M"] == {"value": 0.5, "n": 6}
    assert out["sex"]["groups"]["F"]["value"] == pytest.approx(5 / 6)
    assert out["sex"]["gap"] == pytest.approx(5 / 6 - 0.5) and out["sex"]["worst"] == "M"
    assert out["sex"]["groups"]["unknown"]["n"] == 1  # reported, never part of the gap
    assert out["age"]["groups"]["75+"]["value"] == 0.0 and out["age"]["gap"] == pytest.approx(8 / 9)
    small = fairness.slice_metric(lambda idx: float(values[idx].mean()), g, min_size=7)
    assert small["sex"]["gap"] is None  # both groups under the minimum size


def test_convergence(tmp_path):
    assert steps_to_target([10, 20, 30], [0.5, 0.7, 0.8], 0.7) == 20
    assert steps_to_target([10, 20], [0.5, float("nan")], 0.6) is None
    assert speedup(10, 40) == 4.0 and speedup(None, 40) is None
    c = compare({"fast": ([10, 20, 30], [0.6, 0.8, 0.9]), "slow": ([10, 20, 30], [0.5, 0.6, 0.8])}, 0.8)
    assert c["steps_to_target"] == {"fast": 20, "slow": 30} and c["reference"] == "slow"
    assert c["speedup"]["fast"] == pytest.approx(1.5)
    (tmp_path / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in [
        {"step": 10, "train/loss": 1.0}, {"step": 50, "eval/probe_mean_auroc": 0.6},
        {"step": 100, "eval/probe_mean_auroc": 0.7}]) + "\n")
    assert run_curve(tmp_path) == ([50, 100], [0.6, 0.7])
    with pytest.raises(FileNotFoundError, match="metrics"):
        run_curve(tmp_path / "nope")


# ---------------------------------------------------------------------------------------------
# Suite, report and CLI on phantom studies
# ---------------------------------------------------------------------------------------------


def _tiny_encoder(path: Path) -> Path:
    from transformers import Dinov2WithRegistersConfig, Dinov2WithRegistersModel

    from mxr0.data.transforms import ImageTransform

    torch.manual_seed(7)  # not the random baseline's seed (0)
    m = Dinov2WithRegistersModel(Dinov2WithRegistersConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, mlp_ratio=2, patch_size=8, image_size=32,
        num_register_tokens=2, layerscale_value=0.1))
    m.save_pretrained(path)
    (path / "preprocessor_config.json").write_text(json.dumps(
        ImageTransform(size=32, mean=(0.5,) * 3, std=(0.25,) * 3).to_processor_config()))
    return path


def test_cli_runs_the_whole_suite_and_reuses_cached_features(phantom_small, tmp_path, monkeypatch, capsys):
    from PIL import Image

    from mxr0.eval.vision import cli, features

    enc = _tiny_encoder(tmp_path / "enc")
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text("\n".join(json.dumps({"step": s, "eval/probe_mean_auroc": v})
                                                 for s, v in [(20, 0.55), (40, 0.6), (60, 0.62)]) + "\n")
    calls = []
    real = features.encode_loader
    monkeypatch.setattr(features, "encode_loader", lambda *a, **k: calls.append(1) or real(*a, **k))
    argv = ["--model", f"tiny={enc}", "--random-baseline", "--data", str(phantom_small.parent), "--out",
            str(tmp_path / "out"), "--run", f"tiny={run}", "--probe-steps", "60", "--seg-steps", "20",
            "--n-bootstrap", "20", "--cache-dir", str(tmp_path / "cache"), "--lrs", "0.01", "0.1"]
    parser = cli.add_arguments(argparse.ArgumentParser())
    assert cli.run(parser.parse_args(argv)) == 0
    first = len(calls)
    assert first == 10  # 2 encoders x (3 splits + 2 segmentation splits)
    md = capsys.readouterr().out
    for section in ("Linear probe", "kNN anatomy", "Segmentation", "Fairness", "Convergence"):
        assert section in md
    res = json.loads((tmp_path / "out" / "results.json").read_text())
    assert set(res["encoders"]) == {"tiny", "random-init"}
    e = res["encoders"]["tiny"]
    assert 0 <= e["probe"]["mean_auroc"] <= 1 and e["probe"]["best"]["lr"] in (0.01, 0.1)
    assert set(e["probe"]["fairness"]) == {"sex", "age"}
    assert 0 <= e["knn"]["accuracy"] <= 1 and "mAP" in e["knn"]["retrieval"]
    assert set(e["segmentation"]["heads"]) == {"linear", "multiscale"}
    assert set(e["segmentation"]["heads"]["linear"]["dice"]) == {"right_lung", "left_lung", "heart"}
    assert res["convergence"]["pretraining"]["curves"]["tiny"]["steps"] == [20, 40, 60]
    assert "probe" in res["convergence"]
    for png in ("probe_convergence.png", "pretraining_curve.png"):
        with Image.open(tmp_path / "out" / png) as im:
            assert im.size == (800, 500) and len(np.unique(np.asarray(im).reshape(-1, 3), axis=0)) > 5  # drawn
    # the random baseline is a different encoder: different features, not a copy
    assert e["knn"]["retrieval"] != res["encoders"]["random-init"]["knn"]["retrieval"]
    # a second run (another sweep) reads every feature from the cache
    assert cli.run(parser.parse_args(argv[:-3] + ["--lrs", "0.03"])) == 0
    assert len(calls) == first
    assert e["precision"] == "fp32"
    # --precision bf16: new features (the precision is part of the cache key), and the result says what ran
    assert cli.run(parser.parse_args(argv + ["--precision", "bf16", "--tasks", "probe"])) == 0
    assert len(calls) > first
    res = json.loads((tmp_path / "out" / "results.json").read_text())
    assert {v["precision"] for v in res["encoders"].values()} == {"bf16"}


def test_subgroups_are_listed_in_a_readable_order():
    g = {"age": np.array(["75+", "<40", "60-74", "unknown", "40-59"]), "sex": np.array(["M", "F", "unknown", "F", "M"])}
    out = fairness.slice_metric(lambda idx: 1.0, g, min_size=1)
    assert list(out["age"]["groups"]) == ["<40", "40-59", "60-74", "75+", "unknown"]
    assert list(out["sex"]["groups"]) == ["F", "M", "unknown"]
