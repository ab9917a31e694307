"""Reading X-rays: DICOM grayscale pipeline, colour, compression, PNG/JPEG, errors, header metadata."""

from __future__ import annotations

import io
import json
import os
import pickle
import stat
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.pixels import convert_color_space, get_encoder
from pydicom.uid import (
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGLSLossless,
    RLELossless,
    SecondaryCaptureImageStorage,
    generate_uid,
)

from mxr0.data import xray
from mxr0.data.xray import DICOM_META_KEYS, XrayReadError, read_dicom_meta, read_xray, write_png

LUMA = np.array([0.299, 0.587, 0.114])


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------


def make_dicom(
    path: Path,
    arr: np.ndarray,
    *,
    photometric: str = "MONOCHROME2",
    bits_stored: int | None = None,
    save: bool = True,
    **tags,
) -> Dataset:
    """Write a single-frame uncompressed DICOM with ``arr`` as stored values; return the dataset."""
    arr = np.asarray(arr)
    fm = FileMetaDataset()
    fm.TransferSyntaxUID = ExplicitVRLittleEndian
    fm.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    fm.MediaStorageSOPInstanceUID = generate_uid()
    ds = Dataset()
    ds.file_meta = fm
    ds.SOPClassUID = fm.MediaStorageSOPClassUID
    ds.SOPInstanceUID = fm.MediaStorageSOPInstanceUID
    ds.Modality = "CR"
    ds.Rows, ds.Columns = arr.shape[:2]
    ds.SamplesPerPixel = 3 if arr.ndim == 3 else 1
    if arr.ndim == 3:
        ds.PlanarConfiguration = 0
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = arr.dtype.itemsize * 8
    ds.BitsStored = bits_stored or ds.BitsAllocated
    ds.HighBit = ds.BitsStored - 1
    ds.PixelRepresentation = 1 if arr.dtype.kind == "i" else 0
    for k, v in tags.items():
        setattr(ds, k, v)
    ds.PixelData = np.ascontiguousarray(arr).tobytes()
    if save:
        ds.save_as(path, enforce_file_format=True)
    return ds


def luma255(rgb: np.ndarray) -> np.ndarray:
    return rgb[..., :3].astype(np.float64) @ LUMA / 255.0


@pytest.fixture
def dicom_dir(shared_data: Path) -> Path:
    d = shared_data / "dicom"
    if not d.is_dir():
        pytest.skip(f"no real DICOM samples at {d}")
    return d


def expect_error(path: Path, *fragments: str) -> XrayReadError:
    with pytest.raises(XrayReadError) as info:
        read_xray(path)
    err = info.value
    assert isinstance(err, ValueError)
    assert err.path == str(path)
    assert path.name in str(err)
    for frag in fragments:
        assert frag.lower() in str(err).lower(), str(err)
    return err


# ---------------------------------------------------------------------------------------------
# photometric interpretation
# ---------------------------------------------------------------------------------------------


@pytest.mark.real_data
def test_real_monochrome1_is_inverse_of_monochrome2(dicom_dir: Path) -> None:
    m2, m1 = dicom_dir / "siim_cr_chest.dcm", dicom_dir / "txv_Fake_MONOHR1.dcm"
    h2, h1 = pydicom.dcmread(m2, stop_before_pixels=True), pydicom.dcmread(m1, stop_before_pixels=True)
    # Same 8-bit JPEG-baseline pixels, no VOI or rescale tags: only the photometric label differs.
    assert (h2.PhotometricInterpretation, h1.PhotometricInterpretation) == ("MONOCHROME2", "MONOCHROME1")
    for h in (h1, h2):
        assert "WindowCenter" not in h and "VOILUTSequence" not in h and "RescaleSlope" not in h
    a, b = read_xray(m2), read_xray(m1)
    assert a.shape == b.shape == (1024, 1024)
    assert a.dtype == b.dtype == np.float32
    assert 0.0 <= a.min() and a.max() <= 1.0
    assert np.allclose(a, 1.0 - b, atol=1e-6)
    # Bone bright: the mediastinum/spine column is brighter than the lung fields beside it.
    assert a[300:700, 480:544].mean() > a[300:700, 200:300].mean()


def test_synthetic_monochrome1_inverted(tmp_path: Path) -> None:
    arr = np.array([[0, 64, 128], [192, 255, 10]], dtype=np.uint8)
    make_dicom(tmp_path / "m1.dcm", arr, photometric="MONOCHROME1")
    make_dicom(tmp_path / "m2.dcm", arr)
    assert np.allclose(read_xray(tmp_path / "m1.dcm"), 1.0 - arr / 255.0, atol=1e-6)
    assert np.allclose(read_xray(tmp_path / "m2.dcm"), arr / 255.0, atol=1e-6)
    # Inversion comes after windowing: MONOCHROME1 + window = 1 - window(x).
    make_dicom(tmp_path / "m1w.dcm", arr, photometric="MONOCHROME1", WindowCenter=128, WindowWidth=128,
               VOILUTFunction="LINEAR_EXACT")
    expected = 1.0 - np.clip((arr - 128.0) / 128.0 + 0.5, 0, 1)
    assert np.allclose(read_xray(tmp_path / "m1w.dcm"), expected, atol=1e-6)


# ---------------------------------------------------------------------------------------------
# VOI: LUT sequence and windows
# ---------------------------------------------------------------------------------------------


@pytest.mark.real_data
def test_real_voi_lut_sequence(dicom_dir: Path) -> None:
    path = dicom_dir / "vlut_04.dcm"
    ds = pydicom.dcmread(path)
    item = ds.VOILUTSequence[0]
    assert list(item.LUTDescriptor) == [256, 0, 16]  # 8-bit input, 16-bit output: x -> 257 x
    out = read_xray(path)
    assert out.shape == (512, 512)
    assert np.allclose(out, ds.pixel_array / 255.0, atol=1e-6)


def test_voi_lut_sequence_8bit_output_for_12bit_input(tmp_path: Path) -> None:
    # 4096-entry LUT with 8-bit output: indices above 255 must not wrap (pydicom's apply_voi does).
    arr = np.array([[0, 100, 300, 1000], [2000, 3000, 4000, 4095]], dtype=np.uint16)
    lut = Dataset()
    lut.add_new("LUTDescriptor", "US", [4096, 0, 8])
    lut.add_new("LUTData", "US", [i // 16 for i in range(4096)])
    make_dicom(tmp_path / "v.dcm", arr, bits_stored=12, VOILUTSequence=[lut])
    assert np.allclose(read_xray(tmp_path / "v.dcm"), (arr // 16) / 255.0, atol=1e-6)


def test_voi_lut_first_mapped_value_clamps(tmp_path: Path) -> None:
    arr = np.array([[0, 99, 100, 150, 200, 300]], dtype=np.uint16)
    lut = Dataset()
    lut.add_new("LUTDescriptor", "US", [101, 100, 16])  # maps 100..200; below -> first, above -> last
    table = np.rint(np.arange(101) * 65535 / 100).astype("<u2")
    lut.add_new("LUTData", "OW", table.tobytes())  # OW: raw 16-bit words
    make_dicom(tmp_path / "v.dcm", arr, bits_stored=12, VOILUTSequence=[lut])
    expected = np.array([[0, 0, 0, 0.5, 1, 1]])
    assert np.allclose(read_xray(tmp_path / "v.dcm"), expected, atol=1e-4)


@pytest.mark.real_data
def test_real_window_center_width_rescale_monochrome1(dicom_dir: Path) -> None:
    path = dicom_dir / "pydicom_dicomdirtests_CR1_6154.dcm"
    ds = pydicom.dcmread(path)
    assert ds.PhotometricInterpretation == "MONOCHROME1"
    assert (float(ds.WindowCenter), float(ds.WindowWidth)) == (1600.0, 2800.0)
    assert (float(ds.RescaleSlope), float(ds.RescaleIntercept)) == (0.684, 200.0)
    x = ds.pixel_array.astype(np.float64) * 0.684 + 200.0  # modality LUT first
    c, w = 1600.0 - 0.5, 2800.0 - 1.0  # LINEAR window (PS3.3 C.11.2.1.2.1)
    expected = 1.0 - np.clip((x - c) / w + 0.5, 0.0, 1.0)
    out = read_xray(path)
    assert out.shape == (16, 16)
    assert np.allclose(out, expected, atol=1e-5)
    # Cross-check with pydicom's windowing, whose output range is the rescaled 12-bit range.
    from pydicom.pixels import apply_modality_lut, apply_windowing

    pw = apply_windowing(apply_modality_lut(ds.pixel_array, ds), ds, index=0)
    lo, hi = 200.0, 4095 * 0.684 + 200.0
    assert np.allclose(out, 1.0 - (pw - lo) / (hi - lo), atol=1e-5)


def test_window_first_pair_and_functions(tmp_path: Path) -> None:
    arr = np.array([[0, 1000, 2000, 3000, 4095]], dtype=np.uint16)
    # Several pairs: the first (2000 / 2000) is used.
    make_dicom(tmp_path / "w.dcm", arr, bits_stored=12, WindowCenter=[2000, 500], WindowWidth=[2000, 100],
               VOILUTFunction="LINEAR_EXACT")
    assert np.allclose(read_xray(tmp_path / "w.dcm"), [[0, 0, 0.5, 1, 1]], atol=1e-6)
    make_dicom(tmp_path / "s.dcm", arr, bits_stored=12, WindowCenter=2000, WindowWidth=1000, VOILUTFunction="SIGMOID")
    expected = 1 / (1 + np.exp(-4 * (arr - 2000.0) / 1000.0))
    assert np.allclose(read_xray(tmp_path / "s.dcm"), expected, atol=1e-6)
    # LINEAR (the default) uses c - 0.5 and w - 1.
    make_dicom(tmp_path / "l.dcm", arr, bits_stored=12, WindowCenter=2000.5, WindowWidth=2001)
    assert np.allclose(read_xray(tmp_path / "l.dcm"), [[0, 0, 0.5, 1, 1]], atol=1e-6)
    # An invalid window (width 0) is ignored: the stored range is used instead.
    make_dicom(tmp_path / "z.dcm", arr, bits_stored=12, WindowCenter=2000, WindowWidth=0)
    assert np.allclose(read_xray(tmp_path / "z.dcm"), arr / 4095.0, atol=1e-6)


# ---------------------------------------------------------------------------------------------
# Modality LUT: sequence and rescale
# ---------------------------------------------------------------------------------------------


@pytest.mark.real_data
def test_real_modality_lut_sequence(dicom_dir: Path) -> None:
    path = dicom_dir / "mlut_18.dcm"
    ds = pydicom.dcmread(path)
    assert list(ds.ModalityLUTSequence[0].LUTDescriptor) == [4096, -2048, 16]
    raw = ds.pixel_array  # signed 12 bit, -2048..2047
    assert raw.min() < 0
    out = read_xray(path)
    # The LUT maps -2048..2047 linearly onto 0..65535 and there is no VOI: output = (raw + 2048) / 4095.
    assert np.allclose(out, (raw.astype(np.float64) + 2048) / 4095.0, atol=1e-4)


def test_rescale_slope_intercept(tmp_path: Path) -> None:
    arr = np.array([[0, 1024, 2048, 3072, 4095]], dtype=np.uint16)
    # No VOI: the nominal 12-bit range is pushed through the rescale, so the result is x / 4095.
    make_dicom(tmp_path / "r.dcm", arr, bits_stored=12, RescaleSlope=2, RescaleIntercept=-1024)
    assert np.allclose(read_xray(tmp_path / "r.dcm"), arr / 4095.0, atol=1e-6)
    # The window is in rescaled units: values -1024, 1024, 3072, 5120, 7166.
    make_dicom(tmp_path / "rw.dcm", arr, bits_stored=12, RescaleSlope=2, RescaleIntercept=-1024,
               WindowCenter=3072, WindowWidth=4096, VOILUTFunction="LINEAR_EXACT")
    assert np.allclose(read_xray(tmp_path / "rw.dcm"), [[0, 0, 0.5, 1, 1]], atol=1e-6)


def test_signed_pixels_stored_range(tmp_path: Path) -> None:
    arr = np.array([[-2048, 0, 2047]], dtype=np.int16)
    make_dicom(tmp_path / "s.dcm", arr, bits_stored=12)
    assert np.allclose(read_xray(tmp_path / "s.dcm"), (arr + 2048.0) / 4095.0, atol=1e-6)


# ---------------------------------------------------------------------------------------------
# bit depth
# ---------------------------------------------------------------------------------------------


def test_16bit_dicom_with_12_bits_stored(tmp_path: Path) -> None:
    arr = np.array([[0, 1024, 2048, 4095]], dtype=np.uint16)
    make_dicom(tmp_path / "a.dcm", arr, bits_stored=12)
    assert np.allclose(read_xray(tmp_path / "a.dcm"), [[0, 1024 / 4095, 2048 / 4095, 1]], atol=1e-6)
    # Bits above Bits Stored are not pixel data (overlays, garbage) and are ignored.
    make_dicom(tmp_path / "hi.dcm", arr | 0xF000, bits_stored=12)
    assert np.allclose(read_xray(tmp_path / "hi.dcm"), arr / 4095.0, atol=1e-6)


def test_no_voi_minmax_option(tmp_path: Path) -> None:
    arr = np.array([[1000, 2000, 3000]], dtype=np.uint16)
    make_dicom(tmp_path / "a.dcm", arr, bits_stored=16)
    assert np.allclose(read_xray(tmp_path / "a.dcm"), arr / 65535.0, atol=1e-6)
    assert np.allclose(read_xray(tmp_path / "a.dcm", no_voi="minmax"), [[0, 0.5, 1]], atol=1e-6)
    with pytest.raises(ValueError):
        read_xray(tmp_path / "a.dcm", no_voi="auto")  # type: ignore[arg-type]


def test_png_8_and_16_bit(tmp_path: Path) -> None:
    a16 = np.array([[0, 32768, 65535]], dtype=np.uint16)
    Image.fromarray(a16).save(tmp_path / "g16.png")
    assert Image.open(tmp_path / "g16.png").mode.startswith("I")
    out = read_xray(tmp_path / "g16.png")
    assert out.dtype == np.float32 and out.shape == (1, 3)
    assert out[0, 0] == 0.0 and out[0, 2] == 1.0 and abs(out[0, 1] - 0.5) < 1e-4
    a8 = np.array([[0, 128, 255]], dtype=np.uint8)
    Image.fromarray(a8).save(tmp_path / "g8.png")
    assert np.allclose(read_xray(tmp_path / "g8.png"), a8 / 255.0, atol=1e-7)


# ---------------------------------------------------------------------------------------------
# colour
# ---------------------------------------------------------------------------------------------


def _rgb_pattern() -> np.ndarray:
    rgb = np.zeros((8, 8, 3), dtype=np.uint8)
    rgb[..., 0] = np.arange(8)[:, None] * 32
    rgb[..., 1] = np.arange(8)[None, :] * 30
    rgb[..., 2] = 200
    rgb[0, 0] = (255, 0, 0)
    return rgb


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "P", "LA"])
def test_colour_png_to_luma(tmp_path: Path, mode: str) -> None:
    rgb = _rgb_pattern()
    im = Image.fromarray(rgb)
    if mode == "RGBA":
        im = im.convert("RGBA")
    elif mode == "P":
        im = im.convert("P", palette=Image.Palette.ADAPTIVE, colors=256)
    elif mode == "LA":
        im = im.convert("LA")
    im.save(tmp_path / "c.png")
    assert Image.open(tmp_path / "c.png").mode == mode
    out = read_xray(tmp_path / "c.png")
    assert out.shape == (8, 8)
    reference = np.asarray(im.convert("RGB"))
    assert np.allclose(out, luma255(reference), atol=1.01 / 255)  # "LA" stores Pillow's rounded luma
    if mode == "RGB":
        assert abs(out[0, 0] - 0.299) < 1e-6  # pure red -> BT.601 weight of red


def test_rgb_dicom_to_luma(tmp_path: Path) -> None:
    rgb = _rgb_pattern()
    make_dicom(tmp_path / "rgb.dcm", rgb, photometric="RGB")
    assert np.allclose(read_xray(tmp_path / "rgb.dcm"), luma255(rgb), atol=1e-5)


def test_ybr_full_dicom_to_luma(tmp_path: Path) -> None:
    rgb = _rgb_pattern()
    ybr = convert_color_space(rgb, "RGB", "YBR_FULL")
    make_dicom(tmp_path / "ybr.dcm", ybr, photometric="YBR_FULL")
    assert np.allclose(read_xray(tmp_path / "ybr.dcm"), luma255(rgb), atol=2.01 / 255)


def _jpeg_dicom(path: Path, jpeg: bytes, shape: tuple[int, ...], photometric: str) -> None:
    ds = make_dicom(path, np.zeros(shape, dtype=np.uint8), photometric=photometric, save=False)
    ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    ds.PixelData = encapsulate([jpeg])
    ds["PixelData"].VR = "OB"
    ds.save_as(path, enforce_file_format=True)


def test_jpeg_baseline_dicom_gray_and_ybr422(tmp_path: Path) -> None:
    yy, xx = np.mgrid[0:64, 0:48]
    gray = ((xx * 3 + yy * 2) % 256).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(gray).save(buf, format="JPEG", quality=95)
    _jpeg_dicom(tmp_path / "g.dcm", buf.getvalue(), gray.shape, "MONOCHROME2")
    decoded = np.asarray(Image.open(io.BytesIO(buf.getvalue()))) / 255.0
    assert np.allclose(read_xray(tmp_path / "g.dcm"), decoded, atol=2.01 / 255)

    rgb = np.stack([gray, 255 - gray, np.full_like(gray, 90)], axis=-1)
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="JPEG", quality=95, subsampling=1)  # 4:2:2
    _jpeg_dicom(tmp_path / "c.dcm", buf.getvalue(), rgb.shape, "YBR_FULL_422")
    decoded_rgb = np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))
    assert np.allclose(read_xray(tmp_path / "c.dcm"), luma255(decoded_rgb), atol=3.01 / 255)


def test_plain_jpeg_file(tmp_path: Path) -> None:
    gray = (np.arange(64 * 64).reshape(64, 64) % 251).astype(np.uint8)
    Image.fromarray(gray).save(tmp_path / "x.jpg", quality=90)
    reference = np.asarray(Image.open(tmp_path / "x.jpg")) / 255.0
    assert np.allclose(read_xray(tmp_path / "x.jpg"), reference, atol=1e-6)


# ---------------------------------------------------------------------------------------------
# compressed transfer syntaxes (lossless round trips written by the test)
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ts", "kwargs"),
    [(RLELossless, {}), (JPEG2000Lossless, {"encoding_plugin": "pylibjpeg"}), (JPEGLSLossless, {})],
    ids=["rle", "jpeg2000", "jpegls"],
)
def test_lossless_compressed_round_trip(tmp_path: Path, ts, kwargs) -> None:
    encoder = get_encoder(ts)
    if not encoder.is_available:
        pytest.skip(f"no encoder for {ts.name}: {encoder.missing_dependencies}")
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 4096, (40, 56)).astype(np.uint16)
    make_dicom(tmp_path / "raw.dcm", arr, bits_stored=12)
    ds = make_dicom(tmp_path / "unused.dcm", arr, bits_stored=12, save=False)
    ds.compress(ts, **kwargs)
    ds.save_as(tmp_path / "c.dcm", enforce_file_format=True)
    assert pydicom.dcmread(tmp_path / "c.dcm").file_meta.TransferSyntaxUID == ts
    assert np.array_equal(read_xray(tmp_path / "c.dcm"), read_xray(tmp_path / "raw.dcm"))


def test_missing_decoder_names_transfer_syntax_and_package(tmp_path: Path, monkeypatch) -> None:
    arr = np.arange(1024, dtype=np.uint16).reshape(32, 32)
    ds = make_dicom(tmp_path / "unused.dcm", arr, bits_stored=12, save=False)
    ds.compress(JPEG2000Lossless, encoding_plugin="pylibjpeg")
    ds.save_as(tmp_path / "j2k.dcm", enforce_file_format=True)

    class Unavailable:
        is_available = False

    monkeypatch.setattr(xray, "get_decoder", lambda ts: Unavailable())
    err = expect_error(tmp_path / "j2k.dcm", "JPEG 2000", "1.2.840.10008.1.2.4.90", "pip install",
                       "pylibjpeg-openjpeg")
    assert "no decoder" in err.reason


# ---------------------------------------------------------------------------------------------
# errors
# ---------------------------------------------------------------------------------------------


def test_truncated_native_dicom(tmp_path: Path) -> None:
    make_dicom(tmp_path / "full.dcm", np.zeros((64, 64), dtype=np.uint16), bits_stored=12)
    data = (tmp_path / "full.dcm").read_bytes()
    (tmp_path / "half.dcm").write_bytes(data[: len(data) // 2])
    expect_error(tmp_path / "half.dcm", "pixel data is truncated")


@pytest.mark.real_data
@pytest.mark.filterwarnings("ignore:End of file reached")
def test_truncated_real_jpeg_dicom(dicom_dir: Path, tmp_path: Path) -> None:
    data = (dicom_dir / "siim_cr_chest.dcm").read_bytes()
    (tmp_path / "siim_half.dcm").write_bytes(data[: len(data) // 2])
    expect_error(tmp_path / "siim_half.dcm", "truncated")


def test_truncated_png_and_jpeg(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    img = rng.integers(0, 256, (128, 128), dtype=np.uint8)
    for name in ("x.png", "x.jpg"):
        Image.fromarray(img).save(tmp_path / name)
        data = (tmp_path / name).read_bytes()
        (tmp_path / f"cut_{name}").write_bytes(data[: len(data) // 2])
        expect_error(tmp_path / f"cut_{name}", "cannot decode")


def test_not_an_image_empty_missing(tmp_path: Path) -> None:
    (tmp_path / "notes.dcm").write_text("FINDINGS: no acute cardiopulmonary process.\n" * 20)
    expect_error(tmp_path / "notes.dcm", "not a DICOM, PNG or JPEG")
    (tmp_path / "empty.png").write_bytes(b"")
    expect_error(tmp_path / "empty.png", "empty file")
    expect_error(tmp_path / "missing.png", "not found")
    (tmp_path / "zeros.bin").write_bytes(bytes(4096))  # starts like a raw data set, but is not one
    expect_error(tmp_path / "zeros.bin", "not a DICOM")


def test_multiframe_refused(tmp_path: Path) -> None:
    frames = np.zeros((3, 8, 8), dtype=np.uint8)
    ds = make_dicom(tmp_path / "unused.dcm", frames[0], save=False)
    ds.NumberOfFrames = 3
    ds.PixelData = frames.tobytes()
    ds.save_as(tmp_path / "multi.dcm", enforce_file_format=True)
    expect_error(tmp_path / "multi.dcm", "multi-frame", "3 frames")


def test_dicom_without_pixel_data(tmp_path: Path) -> None:
    ds = make_dicom(tmp_path / "unused.dcm", np.zeros((4, 4), dtype=np.uint8), save=False)
    del ds.PixelData
    ds.save_as(tmp_path / "nopix.dcm", enforce_file_format=True)
    err = expect_error(tmp_path / "nopix.dcm", "no pixel data")
    assert err.reason == "no pixel data"


def test_unsupported_photometric(tmp_path: Path) -> None:
    make_dicom(tmp_path / "pal.dcm", np.zeros((4, 4), dtype=np.uint8), photometric="PALETTE COLOR")
    expect_error(tmp_path / "pal.dcm", "PALETTE COLOR")


def test_error_is_picklable() -> None:
    err = XrayReadError("/data/a.dcm", "no pixel data", "Drop it")
    back = pickle.loads(pickle.dumps(err))
    assert (back.path, back.reason, back.hint, str(back)) == (err.path, err.reason, err.hint, str(err))
    assert str(err) == "cannot read X-ray '/data/a.dcm': no pixel data. Drop it."


# ---------------------------------------------------------------------------------------------
# dispatch on content
# ---------------------------------------------------------------------------------------------


def test_dispatch_on_content_not_extension(tmp_path: Path) -> None:
    a8 = np.array([[0, 51, 255]], dtype=np.uint8)
    Image.fromarray(a8).save(tmp_path / "img.png")
    (tmp_path / "png_named.dcm").write_bytes((tmp_path / "img.png").read_bytes())
    assert np.allclose(read_xray(tmp_path / "png_named.dcm"), a8 / 255.0)
    # A DICOM without the 128-byte preamble and "DICM" is still read.
    arr = np.array([[0, 2048, 4095]], dtype=np.uint16)
    make_dicom(tmp_path / "full.dcm", arr, bits_stored=12)
    (tmp_path / "raw.img").write_bytes((tmp_path / "full.dcm").read_bytes()[132:])
    assert np.allclose(read_xray(tmp_path / "raw.img"), arr / 4095.0, atol=1e-6)
    # ... and so is a bare implicit-VR data set without any file meta (old ACR-NEMA style exports).
    ds = make_dicom(tmp_path / "unused.dcm", arr, bits_stored=12, save=False)
    del ds.file_meta
    ds.preamble = None
    pydicom.dcmwrite(tmp_path / "bare.dcm", ds, implicit_vr=True, little_endian=True)
    assert (tmp_path / "bare.dcm").read_bytes()[:2] == b"\x08\x00"
    assert np.allclose(read_xray(tmp_path / "bare.dcm"), arr / 4095.0, atol=1e-6)
    assert read_dicom_meta(tmp_path / "bare.dcm")["TransferSyntaxUID"] == "1.2.840.10008.1.2"


@pytest.mark.real_data
def test_real_pngs(shared_data: Path) -> None:
    paths = sorted((shared_data / "jsrt" / "images").glob("*.png"))[:2]
    paths += sorted((shared_data / "nih_cxr14" / "images").glob("*.png"))[:2]
    if not paths:
        pytest.skip("no real PNG samples")
    for p in paths:
        img = read_xray(p)
        assert img.ndim == 2 and img.dtype == np.float32
        assert 0.0 <= img.min() <= img.max() <= 1.0
        assert img.std() > 0.05  # a real radiograph, not a blank


# ---------------------------------------------------------------------------------------------
# header metadata
# ---------------------------------------------------------------------------------------------

PHI = {
    "PatientName": "Doe^Jane",
    "PatientID": "MRN-123456",
    "PatientBirthDate": "19700101",
    "StudyDate": "20240102",
    "AccessionNumber": "ACC-987",
    "InstitutionName": "General Hospital",
    "StudyInstanceUID": "1.2.3.4.5.6.7.8",
    "ReferringPhysicianName": "House^Gregory",
}


def test_dicom_meta_has_no_phi(tmp_path: Path) -> None:
    make_dicom(tmp_path / "phi.dcm", np.zeros((4, 6), dtype=np.uint16), bits_stored=12,
               ViewPosition="PA", BodyPartExamined="CHEST", ImagerPixelSpacing=[0.15, 0.15], **PHI)
    meta = read_dicom_meta(tmp_path / "phi.dcm")
    assert tuple(meta) == DICOM_META_KEYS
    assert not set(PHI) & set(meta)
    dumped = json.dumps(meta)  # plain Python values only
    for value in PHI.values():
        assert value not in dumped
    assert meta["ViewPosition"] == "PA" and meta["BodyPartExamined"] == "CHEST"
    assert (meta["Rows"], meta["Columns"], meta["BitsStored"]) == (4, 6, 12)
    assert meta["ImagerPixelSpacing"] == [0.15, 0.15] and meta["PixelSpacing"] is None
    assert meta["PhotometricInterpretation"] == "MONOCHROME2"
    assert meta["TransferSyntaxUID"] == ExplicitVRLittleEndian
    with pytest.raises(XrayReadError, match="not a DICOM"):
        Image.fromarray(np.zeros((2, 2), dtype=np.uint8)).save(tmp_path / "x.png")
        read_dicom_meta(tmp_path / "x.png")


@pytest.mark.real_data
def test_real_dicom_meta(dicom_dir: Path) -> None:
    meta = read_dicom_meta(dicom_dir / "siim_cr_chest.dcm")
    assert meta["ViewPosition"] == "PA" and meta["Modality"] == "CR" and meta["BodyPartExamined"] == "CHEST"
    assert meta["PixelSpacing"] == [0.168, 0.168]
    assert meta["TransferSyntaxUID"] == JPEGBaseline8Bit
    cr = read_dicom_meta(dicom_dir / "pydicom_dicomdirtests_CR1_6154.dcm")
    assert cr["ViewPosition"] == "LL" and cr["PhotometricInterpretation"] == "MONOCHROME1"
    assert cr["Laterality"] is None  # present but empty in the file
    assert "Doe" not in json.dumps(cr)


# ---------------------------------------------------------------------------------------------
# write_png
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("bits", [8, 16])
def test_write_png_round_trip(tmp_path: Path, bits: int) -> None:
    rng = np.random.default_rng(2)
    img = rng.random((33, 47), dtype=np.float32)
    dest = tmp_path / "cache" / "sub" / "a.png"
    assert write_png(dest, img, bits=bits) == dest
    back = read_xray(dest)
    assert np.abs(back - img).max() <= 0.5 / (2**bits - 1) + 1e-6
    assert Image.open(dest).mode == ("L" if bits == 8 else "I;16")
    write_png(dest, 1.0 - img, bits=bits)  # overwrite in place
    assert np.abs(read_xray(dest) - (1.0 - img)).max() <= 0.5 / (2**bits - 1) + 1e-6
    assert sorted(p.name for p in dest.parent.iterdir()) == ["a.png"]  # no temporary files left
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(dest.stat().st_mode) == 0o666 & ~umask  # readable like any new file


def test_write_png_rejects_bad_input(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="bits"):
        write_png(tmp_path / "a.png", np.zeros((2, 2)), bits=12)
    with pytest.raises(ValueError, match="2-D"):
        write_png(tmp_path / "a.png", np.zeros((2, 2, 3)))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        write_png(tmp_path / "a.png", np.full((2, 2), 1.5))
    with pytest.raises(ValueError, match="non-finite"):
        write_png(tmp_path / "a.png", np.full((2, 2), np.nan))
    assert list(tmp_path.iterdir()) == []
