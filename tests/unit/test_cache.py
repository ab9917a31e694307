"""The preprocessed image cache (`mxr0.data.cache`) and `mxr0 prepare ... --cache-size`."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mxr0.cli import main
from mxr0.data.cache import build_cache, cached_size
from mxr0.data.records import empty_record, read_records, write_records
from mxr0.data.transforms import ImageTransform
from mxr0.data.xray import read_xray

SIZE = 64


def _ramp(h: int, w: int, seed: int) -> np.ndarray:
    """A smooth, non-symmetric image in [0, 1] (so a flipped or shifted frame would show)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    img = 0.2 + 0.5 * x / w + 0.25 * np.sin(y / h * 5.0) ** 2 + rng.normal(0, 0.01, (h, w))
    return np.clip(img, 0, 1).astype(np.float32)


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    """Phantom studies at 128 px plus larger non-square PNG (16-bit) / JPEG images and a small one."""
    from mxr0.data.phantom import generate_phantom

    root = tmp_path_factory.mktemp("cache_src")
    rec_path = generate_phantom(root, n_studies=40, image_size=128, seed=0, workers=1, progress=False)
    records = read_records(rec_path, resolve_paths=False)
    (root / "extra").mkdir()
    extras = {
        "wide16.png": (200, 300, "png16"),
        "tall.jpg": (260, 150, "jpeg"),
        "small.png": (40, 50, "png8"),
    }
    for i, (name, (h, w, fmt)) in enumerate(extras.items()):
        img = _ramp(h, w, i)
        if fmt == "png16":
            Image.fromarray(np.rint(img * 65535).astype(np.uint16)).save(root / "extra" / name)
        elif fmt == "jpeg":
            Image.fromarray(np.rint(img * 255).astype(np.uint8)).save(root / "extra" / name, quality=95)
        else:
            Image.fromarray(np.rint(img * 255).astype(np.uint8)).save(root / "extra" / name)
        r = empty_record(f"extra-{i}", source="test")
        r["images"] = [{"path": f"extra/{name}", "view": "PA", "role": "current"}]
        r["boxes"] = [{"phrase": "p", "label": "Lung Opacity", "image_index": 0,
                       "x0": 0.1, "y0": 0.2, "x1": 0.55, "y1": 0.7}]
        records.append(r)
    write_records(records, rec_path)
    return rec_path


@pytest.fixture(scope="module")
def cache16(source, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("cache16") / f"cache-{SIZE}"
    return build_cache(source, out, size=SIZE, bits=16, workers=2, progress=False)


def _strip_paths(records):
    return [{**r, "images": [{**im, "path": ""} for im in r["images"]],
             "masks": [{**m, "path": ""} for m in r["masks"]]} for r in records]


def test_cached_size_rule():
    assert cached_size(2500, 2048, 518) == (632, 518)
    assert cached_size(2048, 2500, 518) == (518, 632)
    assert cached_size(400, 500, 518) == (400, 500)  # never upscaled
    assert cached_size(518, 4000, 518) == (518, 4000)


def test_sizes_records_and_masks(source, cache16):
    src = read_records(source)
    cached = read_records(cache16)
    assert len(cached) == len(src) == 43
    # identical except the paths (boxes, labels, reports, splits untouched)
    assert _strip_paths(cached) == _strip_paths(src)
    meta = json.loads((cache16.parent / "cache.json").read_text())
    assert meta["complete"] and meta["size"] == SIZE and meta["bits"] == 16
    assert meta["failed"] == 0 and meta["studies"] == 43 and meta["written"] == meta["files"]
    for a, b in zip(src, cached):
        for ia, ib in zip(a["images"], b["images"]):
            assert Path(ib["path"]).is_relative_to(cache16.parent / "images")
            with Image.open(ia["path"]) as x, Image.open(ib["path"]) as y:
                (w, h), (cw, ch) = x.size, y.size
                assert y.mode == "I;16"
            if min(h, w) <= SIZE:
                assert (ch, cw) == (h, w)
            else:
                assert min(ch, cw) == SIZE
                assert abs(cw / ch - w / h) < 2 / SIZE
        for ma, mb in zip(a["masks"], b["masks"]):
            img_b = b["images"][mb["image_index"]]["path"]
            with Image.open(mb["path"]) as m, Image.open(img_b) as im:
                assert m.size == im.size and m.mode == "L"
                assert set(np.unique(np.asarray(m))) <= {0, 255}
    # the small image was not upscaled
    small = next(r for r in cached if r["study_id"] == "extra-2")
    assert read_xray(small["images"][0]["path"]).shape == (40, 50)


def test_16_bit_precision_and_same_field_of_view(source, cache16):
    src = {r["study_id"]: r for r in read_records(source)}
    cached = {r["study_id"]: r for r in read_records(cache16)}
    wide = read_xray(cached["extra-0"]["images"][0]["path"])
    assert wide.shape == (SIZE, 96)
    assert len(np.unique(wide)) > 1024  # more levels than 8 bits could hold
    orig = read_xray(src["extra-0"]["images"][0]["path"])
    ref = np.asarray(Image.fromarray(orig, mode="F").resize((96, SIZE), Image.Resampling.LANCZOS)).clip(0, 1)
    assert np.abs(wide - ref).max() <= 0.5 / 65535 + 1e-6

    t = ImageTransform(size=56)
    std = torch.tensor(t.std).view(-1, 1, 1)
    for sid in ["phantom-000000", "phantom-000001", "phantom-000002", "extra-0", "extra-1", "extra-2"]:
        xa = t(read_xray(src[sid]["images"][0]["path"])) * std
        xb = t(read_xray(cached[sid]["images"][0]["path"])) * std
        assert float((xa - xb).abs().mean()) < 0.02, sid


def test_resume_rewrites_only_missing_and_cleans_tmp(source, tmp_path):
    out = tmp_path / "c"
    rec = build_cache(source, out, size=SIZE, bits=8, workers=1, progress=False)
    cached = read_records(rec)
    victim = Path(cached[3]["images"][0]["path"])
    victim.unlink()
    other = Path(cached[5]["images"][0]["path"])
    before = other.stat().st_mtime_ns
    stray = victim.parent / f".{victim.name}.123.abc.tmp"
    stray.write_bytes(b"half a png")
    rec2 = build_cache(source, out, size=SIZE, bits=8, workers=1, progress=False)
    meta = json.loads((out / "cache.json").read_text())
    assert meta["written"] == 1 and meta["skipped"] == meta["files"] - 1 and meta["failed"] == 0
    assert victim.exists() and not stray.exists()
    assert other.stat().st_mtime_ns == before
    assert read_records(rec2) == cached
    # other settings in the same folder are refused unless overwritten
    with pytest.raises(ValueError, match="other settings"):
        build_cache(source, out, size=SIZE, bits=16, workers=1, progress=False)
    build_cache(source, out, size=SIZE, bits=16, workers=1, progress=False, overwrite=True)
    assert json.loads((out / "cache.json").read_text())["bits"] == 16


def test_unreadable_images_are_counted_reported_and_dropped(tmp_path, caplog):
    root = tmp_path / "src"
    (root / "images").mkdir(parents=True)
    Image.fromarray(np.rint(_ramp(100, 120, 0) * 255).astype(np.uint8)).save(root / "images/good.png")
    (root / "images/broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    records = []
    for i, name in enumerate(["good.png", "broken.png", "missing.png"]):
        r = empty_record(f"s{i}")
        r["images"] = [{"path": f"images/{name}", "view": "PA", "role": "current"}]
        records.append(r)
    src = write_records(records, root / "records.jsonl")
    with caplog.at_level(logging.WARNING, logger="mxr0.data.cache"):
        rec = build_cache(src, root / "cache-64", size=SIZE, workers=1, progress=False)
    meta = json.loads((root / "cache-64" / "cache.json").read_text())
    assert meta["failed"] == 2 and meta["studies"] == 1 and meta["studies_dropped"] == 2
    assert sorted(meta["dropped_study_ids"]) == ["s1", "s2"]
    reasons = {f["path"]: f["reason"] for f in meta["failures"]}
    assert reasons["images/missing.png"] == "file not found"
    assert "decode" in reasons["images/broken.png"]
    assert "broken.png" in caplog.text and "missing.png" in caplog.text
    assert [r["study_id"] for r in read_records(rec)] == ["s0"]


def test_cli_prepare_cache_and_phantom_with_cache(source, tmp_path, capsys):
    out = tmp_path / "cli-cache"
    assert main(["prepare", "cache", "--root", str(source.parent), "--cache-size", "48", "--workers", "1",
                 "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert f"data.path={out}" in text and "0 unreadable" in text
    assert len(read_records(out)) == 43

    ph = tmp_path / "ph"
    assert main(["prepare", "phantom", "--out", str(ph), "--n", "12", "--size", "64", "--cache-size", "32",
                 "--cache-bits", "16", "--workers", "1"]) == 0
    text = capsys.readouterr().out
    assert f"data.path={ph / 'cache-32'}" in text
    cached = read_records(ph / "cache-32")
    assert len(cached) == 12
    assert read_xray(cached[0]["images"][0]["path"]).shape == (32, 32)

    assert main(["prepare", "cache", "--root", str(ph)]) == 2  # --cache-size is required
    assert "--cache-size" in capsys.readouterr().err
    assert main(["prepare", "cache", "--root", str(tmp_path / "nowhere"), "--cache-size", "32"]) == 1
    assert os.path.exists(ph / "cache-32" / "cache.json")
