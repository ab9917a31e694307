"""The model-facing ImageTransform: shapes, normalisation, geometry and box round trips, HF parity."""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mxr0.data.transforms import IMAGENET_MEAN, IMAGENET_STD, Geometry, ImageTransform
from mxr0.data.xray import read_xray

DINO_CFG = {  # the shape of facebook/dinov2-* preprocessor_config.json
    "crop_size": {"height": 224, "width": 224},
    "do_center_crop": True,
    "do_convert_rgb": True,
    "do_normalize": True,
    "do_rescale": True,
    "do_resize": True,
    "image_mean": [0.485, 0.456, 0.406],
    "image_processor_type": "BitImageProcessor",
    "image_std": [0.229, 0.224, 0.225],
    "resample": 3,
    "rescale_factor": 0.00392156862745098,
    "size": {"shortest_edge": 256},
}


def smooth_image(h: int, w: int, seed: int = 0) -> np.ndarray:
    """A smooth 'radiograph-like' float image in [0, 1] with some structure."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    img = 0.5 + 0.25 * np.sin(xx / 17.0) * np.cos(yy / 23.0) + 0.2 * (yy / h - 0.5)
    rng = np.random.default_rng(seed)
    img += rng.normal(0, 0.01, img.shape).astype(np.float32)
    return np.clip(img, 0, 1).astype(np.float32)


# ---------------------------------------------------------------------------------------------
# shapes and normalisation
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["crop", "pad"])
@pytest.mark.parametrize("hw", [(100, 100), (120, 80), (80, 130), (600, 500), (37, 41)])
def test_output_shape_and_dtype(mode: str, hw: tuple[int, int]) -> None:
    t = ImageTransform(size=64, mode=mode)
    out = t(smooth_image(*hw))
    assert out.shape == (3, 64, 64) and out.dtype == torch.float32 and out.is_contiguous()
    one = ImageTransform(size=32, mode=mode, channels=1, mean=(0.5,), std=(0.25,))(smooth_image(*hw))
    assert one.shape == (1, 32, 32)


def test_normalisation_per_channel() -> None:
    t = ImageTransform(size=16, mean=(0.1, 0.2, 0.3), std=(0.5, 0.25, 0.125))
    out = t(np.full((40, 30), 0.6, dtype=np.float32))
    for c, (m, s) in enumerate(zip(t.mean, t.std, strict=True)):
        assert torch.allclose(out[c], torch.full((16, 16), (0.6 - m) / s), atol=1e-5)


def test_identity_size_skips_resize_and_accepts_tensors() -> None:
    img = smooth_image(32, 32)
    t = ImageTransform(size=32, mean=(0.0,), std=(1.0,))
    assert torch.equal(t(img)[0], torch.from_numpy(img))
    assert torch.equal(t(torch.from_numpy(img)), t(img))
    flipped = img[::-1]  # negative strides, read-only views and float64 are all accepted
    flipped.flags.writeable = False
    assert torch.equal(t(flipped), t(np.ascontiguousarray(flipped)))
    assert torch.allclose(t(img.astype(np.float64)), t(img))


def test_pad_value_fills_the_border() -> None:
    t = ImageTransform(size=40, mode="pad", pad_value=0.0)
    out = t(np.ones((20, 40), dtype=np.float32))  # landscape: 10 rows of padding above and below
    pad = (0.0 - IMAGENET_MEAN[0]) / IMAGENET_STD[0]
    fill = (1.0 - IMAGENET_MEAN[0]) / IMAGENET_STD[0]
    assert torch.allclose(out[0, :10], torch.tensor(pad)) and torch.allclose(out[0, 30:], torch.tensor(pad))
    assert torch.allclose(out[0, 10:30], torch.tensor(fill), atol=1e-5)


def test_invalid_arguments() -> None:
    with pytest.raises(ValueError, match="mode"):
        ImageTransform(size=32, mode="letterbox")
    with pytest.raises(ValueError, match="resize"):
        ImageTransform(size=32, resize="longest")
    with pytest.raises(ValueError, match="mean"):
        ImageTransform(size=32, channels=1)  # 3 ImageNet means for 1 channel
    with pytest.raises(ValueError, match="resize_size"):
        ImageTransform(size=32, resize_size=16)
    with pytest.raises(ValueError, match="2-D"):
        ImageTransform(size=32)(np.zeros((8, 8, 3), dtype=np.float32))


def test_picklable_for_dataloader_workers() -> None:
    t = ImageTransform(size=48, resize_size=56, mean=(0.5,) * 3, std=(0.3,) * 3)
    back = pickle.loads(pickle.dumps(t))
    assert back == t
    img = smooth_image(70, 90)
    assert torch.equal(back(img), t(img))


# ---------------------------------------------------------------------------------------------
# geometry and boxes
# ---------------------------------------------------------------------------------------------


def test_crop_geometry_numbers() -> None:
    g = ImageTransform(size=64).geometry(200, 100)  # portrait: width -> 64, height -> 128, crop rows 32..96
    assert (g.resized_height, g.resized_width, g.offset_x, g.offset_y) == (128, 64, 0, -32)
    assert np.allclose(g.crop_box, [0, 0.25, 1, 0.75])
    boxes = np.array([[0.0, 0.0, 1.0, 1.0], [0.0, 0.0, 1.0, 0.2], [0.25, 0.5, 0.75, 0.625]])
    m = g.to_model(boxes)
    assert np.allclose(m[0], [0, 0, 1, 1])  # clipped to the frame
    assert np.isnan(m[1]).all()  # entirely above the crop: marked
    assert np.allclose(m[2], [0.25, 0.5, 0.75, 0.75])
    assert g.visible(boxes).tolist() == [True, False, True]


def test_pad_geometry_numbers() -> None:
    g = ImageTransform(size=64, mode="pad").geometry(100, 200)  # landscape: 32 x 64, 16 rows padding on top
    assert (g.resized_height, g.resized_width, g.offset_x, g.offset_y) == (32, 64, 0, 16)
    assert np.allclose(g.to_model([0.0, 0.0, 1.0, 1.0]), [0, 0.25, 1, 0.75])
    # A predicted box reaching into the padding maps back clipped to the image.
    assert np.allclose(g.to_original([0.0, 0.0, 0.5, 0.5]), [0, 0, 0.5, 0.5])
    assert np.allclose(g.crop_box, [0, 0, 1, 1])


def test_hf_style_resize_then_crop_geometry() -> None:
    t = ImageTransform.from_processor_config(DINO_CFG)
    g = t.geometry(480, 640)  # 256 x int(256 * 640 / 480) = 341, crop 224 at (58, 16)
    assert (g.resized_height, g.resized_width, g.offset_x, g.offset_y) == (256, 341, -58, -16)


@pytest.mark.parametrize("mode", ["crop", "pad"])
@pytest.mark.parametrize("hw", [(300, 200), (200, 300), (257, 257), (123, 456)])
def test_box_round_trip(mode: str, hw: tuple[int, int]) -> None:
    g = ImageTransform(size=96, resize_size=112 if mode == "crop" else None, mode=mode).geometry(*hw)
    x0, y0, x1, y1 = g.crop_box
    rng = np.random.default_rng(3)
    a = rng.uniform(0, 1, (200, 2))
    b = rng.uniform(0, 1, (200, 2))
    lo, hi = np.minimum(a, b), np.maximum(a, b)
    span, origin = np.array([x1 - x0, y1 - y0] * 2), np.array([x0, y0] * 2)
    boxes = np.concatenate([lo, hi], axis=1) * span + origin  # inside the visible part
    m = g.to_model(boxes)
    assert not np.isnan(m).any() and (m >= 0).all() and (m <= 1).all()
    assert np.allclose(g.to_original(m), boxes, atol=1e-12)
    assert np.allclose(g.to_model(g.to_original(m)), m, atol=1e-12)
    assert g.to_model(np.zeros((0, 4))).shape == (0, 4)
    with pytest.raises(ValueError, match=r"\[N, 4\]"):
        g.to_model(np.zeros((3, 5)))


@pytest.mark.parametrize("mode", ["crop", "pad"])
@pytest.mark.parametrize("hw", [(240, 160), (160, 240)])
def test_geometry_matches_pixels(mode: str, hw: tuple[int, int]) -> None:
    """A bright rectangle lands where Geometry.to_model says (within a pixel)."""
    h, w = hw
    img = np.zeros(hw, dtype=np.float32)
    y0, y1, x0, x1 = int(0.35 * h), int(0.7 * h), int(0.3 * w), int(0.6 * w)
    img[y0:y1, x0:x1] = 1.0
    t = ImageTransform(size=80, mode=mode, channels=1, mean=(0.0,), std=(1.0,))
    out = t(img)[0].numpy()
    ys, xs = np.nonzero(out > 0.5)
    found = np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]) / 80
    expected = t.geometry(h, w).to_model([x0 / w, y0 / h, x1 / w, y1 / h])
    assert np.abs(found - expected).max() <= 1.0 / 80


# ---------------------------------------------------------------------------------------------
# Hugging Face processor configs
# ---------------------------------------------------------------------------------------------


def test_from_processor_config_dinov2() -> None:
    t = ImageTransform.from_processor_config(DINO_CFG)
    assert (t.size, t.resize, t.resize_size, t.mode, t.channels) == (224, "shortest", 256, "crop", 3)
    assert t.mean == pytest.approx(DINO_CFG["image_mean"]) and t.std == pytest.approx(DINO_CFG["image_std"])


def test_from_processor_config_variants() -> None:
    # size as height/width, no crop: a direct (stretching) resize, e.g. ViT-style configs.
    t = ImageTransform.from_processor_config(
        {"size": {"height": 518, "width": 518}, "do_center_crop": False, "image_mean": 0.5, "image_std": 0.25}
    )
    assert (t.size, t.resize, t.resize_size) == (518, "stretch", None)
    assert t.mean == pytest.approx((0.5,) * 3) and t.std == pytest.approx((0.25,) * 3)
    assert t(smooth_image(300, 200)).shape == (3, 518, 518)
    # No rescale: HF normalises 0..255 values, which is mean / 255 and std / 255 in [0, 1] units.
    t = ImageTransform.from_processor_config(
        {**DINO_CFG, "do_rescale": False, "image_mean": [127.5] * 3, "image_std": [63.75] * 3}
    )
    assert t.mean == pytest.approx((0.5,) * 3) and t.std == pytest.approx((0.25,) * 3)
    t = ImageTransform.from_processor_config({**DINO_CFG, "do_normalize": False})
    assert t.mean == pytest.approx((0.0,) * 3) and t.std == pytest.approx((1.0,) * 3)
    for bad in (
        {**DINO_CFG, "do_center_crop": False},  # non-square output
        {**DINO_CFG, "crop_size": {"height": 224, "width": 200}},
        {**DINO_CFG, "size": {"shortest_edge": 256, "longest_edge": 512}},
        {**DINO_CFG, "do_resize": False},
    ):
        with pytest.raises(ValueError):
            ImageTransform.from_processor_config(bad)


def test_processor_config_round_trip() -> None:
    for t in (
        ImageTransform(size=224, resize_size=256, mean=(0.53,) * 3, std=(0.26,) * 3),
        ImageTransform(size=518, resize="stretch"),
        ImageTransform(size=64),
    ):
        back = ImageTransform.from_processor_config(t.to_processor_config())
        assert (back.size, back.resize, back.resize_size, back.mode) == (t.size, t.resize, t.resize_size, t.mode)
        assert back.mean == pytest.approx(t.mean) and back.std == pytest.approx(t.std)
    with pytest.raises(ValueError, match="pad"):
        ImageTransform(size=64, mode="pad").to_processor_config()


def test_from_pretrained_local_folder_and_file(tmp_path: Path) -> None:
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(DINO_CFG))
    assert ImageTransform.from_pretrained(tmp_path) == ImageTransform.from_processor_config(DINO_CFG)
    assert ImageTransform.from_pretrained(tmp_path / "preprocessor_config.json").size == 224
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="preprocessor_config.json"):
        ImageTransform.from_pretrained(tmp_path / "empty")


def _hf_parity_images(shared: Path | None) -> list[Image.Image]:
    yy, xx = np.mgrid[0:300, 0:400]
    synth = (127 + 80 * np.sin(xx / 25.0) * np.cos(yy / 31.0) + 0.1 * yy).clip(0, 255).astype(np.uint8)
    images = [Image.fromarray(synth)]
    if shared is not None:
        for p in sorted((shared / "jsrt" / "images").glob("*.png"))[:1] + sorted(
            (shared / "nih_cxr14" / "images").glob("*.png")
        )[:1]:
            with Image.open(p) as im:
                images.append(im.convert("L").crop((0, 0, im.width, int(im.height * 0.8))))  # not square
    return images


def test_hf_processor_loads_and_matches(tmp_path: Path, shared_data_or_none: Path | None) -> None:
    from transformers import AutoImageProcessor

    t = ImageTransform(size=224, resize_size=256, mean=(0.5307,) * 3, std=(0.2583,) * 3)
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(t.to_processor_config()))
    processor = AutoImageProcessor.from_pretrained(tmp_path)  # no remote code, offline
    assert type(processor).__name__.startswith("BitImageProcessor")
    assert ImageTransform.from_processor_config(processor.to_dict()) == t
    for i, im in enumerate(_hf_parity_images(shared_data_or_none)):
        path = tmp_path / f"img{i}.png"
        im.save(path)
        ours = t(read_xray(path))
        theirs = processor(images=Image.open(path), return_tensors="pt")["pixel_values"][0]
        assert ours.shape == theirs.shape == (3, 224, 224)
        # Same geometry and normalisation; only the resampling filters differ (bilinear vs bicubic).
        assert (ours - theirs).abs().mean().item() < 0.05


@pytest.fixture
def shared_data_or_none() -> Path | None:
    """``../shared/data`` beside the checkout (or $MXR0_SHARED_DATA) when present; the test also
    runs on a synthetic image without it."""
    d = Path(os.environ.get("MXR0_SHARED_DATA", Path(__file__).resolve().parents[2].parent / "shared" / "data"))
    return d if d.is_dir() else None


def test_geometry_is_a_frozen_value() -> None:
    g = ImageTransform(size=32).geometry(64, 48)
    assert isinstance(g, Geometry)
    with pytest.raises(AttributeError):
        g.size = 3  # type: ignore[misc]
