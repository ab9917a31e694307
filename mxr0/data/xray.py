"""Read radiographs (DICOM, PNG, JPEG) into one canonical array, and write the PNG cache.

Every reader returns a 2-D ``float32`` array in ``[0, 1]`` with **bone bright** (the MONOCHROME2
convention), whatever the source format. The DICOM path follows the display pipeline of PS3.3 C.11:

1. decode the stored values (compressed transfer syntaxes through the pydicom pixel plugins:
   pylibjpeg-libjpeg for JPEG / JPEG-LS, pylibjpeg-openjpeg for JPEG 2000, RLE natively);
2. Modality LUT: Rescale Slope / Intercept, or a Modality LUT Sequence;
3. VOI transform: the first item of the VOI LUT Sequence, else the first Window Center / Width pair
   (LINEAR, LINEAR_EXACT or SIGMOID as VOI LUT Function says), mapped to ``[0, 1]``;
   without a VOI transform, the *nominal* range is mapped to ``[0, 1]``: the stored range given by
   Bits Stored and Pixel Representation (12-bit data in 16-bit words: ``[0, 4095]``) pushed through
   the modality transform. The nominal range is the default because it is deterministic and keeps
   absolute intensities comparable between images; ``read_xray(path, no_voi="minmax")`` stretches
   each image to its own minimum and maximum instead (useful for files whose Bits Stored overstates
   the data, e.g. 16 declared, 12 used);
4. MONOCHROME1 is inverted, so that high values are bright bone in every output.

Colour files (RGB, YBR_FULL, YBR_FULL_422, and colour PNG / JPEG) are reduced to ITU-R BT.601 luma
(0.299 R + 0.587 G + 0.114 B), the same weights Pillow uses for ``convert("L")``.

Every failure (corrupt, truncated, unsupported, not an image, multi-frame, missing decoder) raises
:class:`XrayReadError`, a ``ValueError`` that names the file, the reason and what to do.
EXIF orientation in JPEG files is deliberately ignored: box and mask annotations of X-ray datasets
refer to the stored pixel grid.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pydicom
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.pixels import convert_color_space, get_decoder
from pydicom.uid import (
    HTJ2K,
    JPEG2000,
    UID,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    HTJ2KLossless,
    HTJ2KLosslessRPCL,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
)

__all__ = [
    "DICOM_META_KEYS",
    "XrayReadError",
    "read_dicom_meta",
    "read_xray",
    "write_png",
]

PathLike = str | os.PathLike[str]

#: BT.601 luma weights (R, G, B), as used by Pillow's ``convert("L")``.
LUMA_WEIGHTS = np.array([0.299, 0.587, 0.114], dtype=np.float32)

#: The only header fields :func:`read_dicom_meta` returns: acquisition geometry and pixel encoding.
#: Nothing here identifies a patient, a study, an institution or a date (no names, ids, UIDs of
#: instances, dates, times, accession numbers, institutions or free text).
DICOM_META_KEYS: tuple[str, ...] = (
    "Modality",
    "ViewPosition",
    "Laterality",
    "ImageLaterality",
    "BodyPartExamined",
    "PatientOrientation",
    "PhotometricInterpretation",
    "Rows",
    "Columns",
    "SamplesPerPixel",
    "NumberOfFrames",
    "BitsAllocated",
    "BitsStored",
    "PixelRepresentation",
    "PixelSpacing",
    "ImagerPixelSpacing",
    "TransferSyntaxUID",
)

_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_JPEG_MAGIC = b"\xff\xd8\xff"

# Pip packages that provide a decoder, per compressed transfer syntax (pydicom's pixel plugins).
_LIBJPEG = "pylibjpeg pylibjpeg-libjpeg"
_OPENJPEG = "pylibjpeg pylibjpeg-openjpeg"
_DECODER_PACKAGES: dict[str, str] = {
    JPEGBaseline8Bit: _LIBJPEG,
    JPEGExtended12Bit: _LIBJPEG,
    JPEGLossless: _LIBJPEG,
    JPEGLosslessSV1: _LIBJPEG,
    JPEGLSLossless: _LIBJPEG,
    JPEGLSNearLossless: _LIBJPEG,
    JPEG2000Lossless: _OPENJPEG,
    JPEG2000: _OPENJPEG,
    HTJ2KLossless: _OPENJPEG,
    HTJ2KLosslessRPCL: _OPENJPEG,
    HTJ2K: _OPENJPEG,
    RLELossless: "pylibjpeg pylibjpeg-rle",
}

_HINT_CORRUPT = "The file is damaged or incomplete; re-download or re-export it, or drop it from the index"
_HINT_FORMAT = "Supported formats are DICOM, PNG and JPEG; convert the file or drop it from the index"


class XrayReadError(ValueError):
    """An X-ray file could not be read: corrupt, truncated, unsupported or not an image.

    ``path`` is the file, ``reason`` what was seen, ``hint`` what to do about it.
    """

    def __init__(self, path: PathLike, reason: str, hint: str = _HINT_CORRUPT) -> None:
        self.path = str(path)
        self.reason = reason
        self.hint = hint
        super().__init__(f"cannot read X-ray '{self.path}': {reason}. {hint}.")

    def __reduce__(self) -> tuple[Any, ...]:
        # Keep the error picklable (DataLoader workers send exceptions between processes).
        return (type(self), (self.path, self.reason, self.hint))


# ---------------------------------------------------------------------------------------------
# Format sniffing
# ---------------------------------------------------------------------------------------------


def _sniff(path: Path) -> str:
    """Return the file's format from its first bytes: 'dicom', 'dicom_raw', 'png', 'jpeg' or ''.

    'dicom' has the 128-byte preamble and "DICM"; 'dicom_raw' has no preamble but starts like a
    DICOM data set (first tag in group 0000, 0002 or 0008, either byte order), as old ACR-NEMA
    files and some exports do.
    """
    try:
        with open(path, "rb") as f:
            head = f.read(132)
    except FileNotFoundError:
        raise XrayReadError(path, "file not found", "Check the path and the data root") from None
    except IsADirectoryError:
        raise XrayReadError(path, "it is a directory, not a file", "Pass the path of an image file") from None
    except OSError as e:
        raise XrayReadError(path, f"cannot open the file ({e.strerror or e})", "Check the file's permissions") from e
    if not head:
        raise XrayReadError(path, "empty file (0 bytes)")
    if len(head) >= 132 and head[128:132] == b"DICM":
        return "dicom"
    if head.startswith(_PNG_MAGIC):
        return "png"
    if head.startswith(_JPEG_MAGIC):
        return "jpeg"
    if len(head) >= 8:
        group_le = int.from_bytes(head[:2], "little")
        group_be = int.from_bytes(head[:2], "big")
        if group_le in (0x0000, 0x0002, 0x0008) or group_be in (0x0002, 0x0008):
            return "dicom_raw"
    return ""


def _not_an_image(path: Path) -> XrayReadError:
    with open(path, "rb") as f:
        head = f.read(8)
    return XrayReadError(path, f"not a DICOM, PNG or JPEG file (starts with {head!r})", _HINT_FORMAT)


# ---------------------------------------------------------------------------------------------
# Public API
# ---------------------------------------------------------------------------------------------


def read_xray(path: PathLike, *, no_voi: Literal["stored", "minmax"] = "stored") -> np.ndarray:
    """Read a radiograph as a 2-D float32 array in [0, 1], bone bright.

    The format is decided from the file's content, not its extension. ``no_voi`` chooses how a
    DICOM without VOI LUT / window is scaled: ``"stored"`` maps the nominal range given by Bits
    Stored (through the modality transform) to [0, 1]; ``"minmax"`` uses the image's own range.
    Raises :class:`XrayReadError` for anything that cannot be read.
    """
    if no_voi not in ("stored", "minmax"):
        raise ValueError(f"no_voi must be 'stored' or 'minmax', got {no_voi!r}")
    p = Path(path)
    kind = _sniff(p)
    if kind in ("png", "jpeg"):
        return _read_pillow(p)
    if kind in ("dicom", "dicom_raw"):
        ds = _dcmread(p, force=kind == "dicom_raw", header_only=False)
        return _dicom_to_unit(p, ds, no_voi)
    raise _not_an_image(p)


def read_dicom_meta(path: PathLike) -> dict[str, Any]:
    """Read the non-identifying technical header fields of a DICOM file (pixels are not read).

    Returns a dict with exactly the keys of :data:`DICOM_META_KEYS` (``None`` where the tag is
    absent or empty): view, laterality, body part, photometric interpretation, size, bit depth,
    pixel spacing, modality and transfer syntax. Patient names and ids, dates, institutions,
    accession numbers and UIDs are never returned, so the result is safe to store in records.
    """
    p = Path(path)
    kind = _sniff(p)
    if kind not in ("dicom", "dicom_raw"):
        raise XrayReadError(p, "not a DICOM file", "read_dicom_meta only reads DICOM headers")
    ds = _dcmread(p, force=kind == "dicom_raw", header_only=True)
    out: dict[str, Any] = {}
    for key in DICOM_META_KEYS:
        if key == "TransferSyntaxUID":  # for files without file meta: the syntax they were read with
            value = str(_transfer_syntax(ds))
        else:
            value = ds.get(key)
        out[key] = _plain(value)
    return out


def write_png(path: PathLike, img: np.ndarray, bits: int = 8) -> Path:
    """Write a 2-D image with values in [0, 1] as a grayscale PNG, atomically; return the path.

    ``bits=8`` stores round(x * 255), ``bits=16`` round(x * 65535), so :func:`read_xray` reads the
    image back to within half a quantisation step. The file is written to a temporary name in the
    same folder and renamed over ``path`` (``os.replace``), so readers never see a partial PNG.
    Values outside [0, 1] by more than 1e-3, or non-finite values, raise ``ValueError``.
    """
    if bits not in (8, 16):
        raise ValueError(f"bits must be 8 or 16, got {bits!r}")
    arr = np.asarray(img)
    if arr.ndim != 2:
        raise ValueError(f"write_png expects a 2-D (H, W) image, got shape {arr.shape}")
    if arr.size == 0:
        raise ValueError("write_png got an empty image")
    arr = arr.astype(np.float32, copy=False)
    lo, hi = float(arr.min()), float(arr.max())
    if not (np.isfinite(lo) and np.isfinite(hi)):
        raise ValueError(f"write_png got non-finite values for '{path}'")
    if lo < -1e-3 or hi > 1 + 1e-3:
        raise ValueError(f"write_png expects values in [0, 1], got [{lo:.4g}, {hi:.4g}] for '{path}'")
    top = 255 if bits == 8 else 65535
    q = np.rint(np.clip(arr, 0.0, 1.0) * top).astype(np.uint8 if bits == 8 else np.uint16)
    im = Image.fromarray(q)  # mode "L" or "I;16"

    dest = Path(path)
    dest.parent.mkdir(parents=True, exist_ok=True)
    # Not mkstemp: its 0600 mode would make a shared cache unreadable to others; "x" honours umask.
    tmp = dest.parent / f".{dest.name}.{os.getpid()}.{uuid.uuid4().hex}.tmp"
    try:
        with open(tmp, "xb") as f:
            im.save(f, format="PNG")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, dest)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    return dest


# ---------------------------------------------------------------------------------------------
# PNG / JPEG
# ---------------------------------------------------------------------------------------------


def _luma(rgb: np.ndarray) -> np.ndarray:
    """BT.601 luma of an (H, W, >=3) array, in the input's units, as float32."""
    return rgb[..., :3].astype(np.float32, copy=False) @ LUMA_WEIGHTS


def _read_pillow(path: Path) -> np.ndarray:
    """Decode a PNG or JPEG fully (``load()``, so truncation is caught) and scale it to [0, 1].

    16-bit grayscale (modes I;16*, I) is divided by 65535, 8-bit by 255; colour, palette and
    alpha images become luma (alpha is dropped, not composited).
    """
    try:
        with Image.open(path) as im:
            im.load()
            mode = im.mode
            if mode.startswith("I;16") or mode == "I":
                return (np.asarray(im).astype(np.float32) / 65535.0).clip(0.0, 1.0)
            if mode == "L":
                return np.asarray(im).astype(np.float32) / 255.0
            if mode == "LA":
                return np.asarray(im)[..., 0].astype(np.float32) / 255.0
            if mode == "1":
                return np.asarray(im.convert("L")).astype(np.float32) / 255.0
            if mode in ("RGB", "RGBA", "RGBX"):
                return _luma(np.asarray(im)) / 255.0
            if mode in ("P", "PA", "CMYK", "YCbCr", "LAB", "HSV"):
                return _luma(np.asarray(im.convert("RGB"))) / 255.0
            raise XrayReadError(path, f"unsupported {im.format} pixel mode {mode!r}", _HINT_FORMAT)
    except XrayReadError:
        raise
    except Image.DecompressionBombError as e:
        raise XrayReadError(path, f"image too large to decode safely ({e})", "Downsample the image first") from e
    except (OSError, ValueError, SyntaxError, EOFError, MemoryError) as e:
        raise XrayReadError(path, f"cannot decode the image ({type(e).__name__}: {e})") from e


# ---------------------------------------------------------------------------------------------
# DICOM
# ---------------------------------------------------------------------------------------------


def _dcmread(path: Path, *, force: bool, header_only: bool) -> Dataset:
    """Parse a DICOM file, mapping every parser failure to XrayReadError."""
    try:
        ds = pydicom.dcmread(path, force=force, stop_before_pixels=header_only)
    except Exception as e:  # pydicom raises many types (InvalidDicomError, EOFError, struct.error ...)
        if force:
            raise _not_an_image(path) from e
        raise XrayReadError(path, f"cannot parse the DICOM file ({type(e).__name__}: {e})") from e
    if force and not any(tag.group in (0x0008, 0x0028) for tag in ds.keys()):
        # A forced parse of arbitrary bytes yields junk tags; a real data set has groups 0008/0028.
        raise _not_an_image(path)
    return ds


def _transfer_syntax(ds: Dataset) -> UID:
    """The data set's transfer syntax; for files without file meta, the one they were read with."""
    fm = getattr(ds, "file_meta", None)
    ts = fm.get("TransferSyntaxUID") if fm is not None else None
    if ts:
        return UID(ts)
    implicit, little = getattr(ds, "original_encoding", (None, None))
    if implicit:
        ts = ImplicitVRLittleEndian
    elif little is False:
        ts = ExplicitVRBigEndian
    else:
        ts = ExplicitVRLittleEndian
    ds.ensure_file_meta()
    ds.file_meta.TransferSyntaxUID = ts
    return ts


def _pixel_data_present_in_file(path: Path) -> bool:
    """Whether the raw bytes contain a (7FE0,0010) Pixel Data tag (either byte order)."""
    data = path.read_bytes()
    return b"\xe0\x7f\x10\x00" in data or b"\x7f\xe0\x00\x10" in data


def _ts_label(ts: UID) -> str:
    return f"{ts.name} ({ts})" if ts.name != ts else str(ts)


def _decode(path: Path, ds: Dataset) -> tuple[np.ndarray, dict[str, Any]]:
    """Decode the single frame of ``ds`` to its stored values (colour converted to RGB)."""
    if "PixelData" not in ds:
        if "FloatPixelData" in ds or "DoubleFloatPixelData" in ds:
            raise XrayReadError(path, "float pixel data is not supported", _HINT_FORMAT)
        if _pixel_data_present_in_file(path):
            raise XrayReadError(path, "the pixel data is truncated (the file ends inside Pixel Data)")
        raise XrayReadError(
            path,
            "no pixel data",
            "This DICOM holds no image (e.g. a report, presentation state or header-only export); "
            "drop it from the index",
        )
    try:
        frames = int(ds.get("NumberOfFrames") or 1)
    except (TypeError, ValueError):
        frames = 1
    if frames > 1:
        raise XrayReadError(
            path,
            f"multi-frame DICOM ({frames} frames); only single radiographs are supported",
            "Extract the frame you need (pydicom.pixels.pixel_array(path, index=i)) and save it as its own file",
        )
    ts = _transfer_syntax(ds)
    try:
        decoder = get_decoder(ts)
    except NotImplementedError:
        raise XrayReadError(
            path,
            f"transfer syntax {_ts_label(ts)} is not supported by pydicom",
            "Convert the file to an uncompressed transfer syntax (e.g. `gdcmconv --raw` or `dcmdjpeg`)",
        ) from None
    if not decoder.is_available:
        pkgs = _DECODER_PACKAGES.get(ts, "pylibjpeg pylibjpeg-libjpeg pylibjpeg-openjpeg")
        raise XrayReadError(
            path,
            f"no decoder installed for transfer syntax {_ts_label(ts)}",
            f"Install one with `pip install {pkgs}`",
        )
    try:
        arr, meta = decoder.as_array(ds, as_rgb=True)
    except Exception as e:  # plugins raise RuntimeError / ValueError / AttributeError ...
        if "less than expected" in str(e):  # native data shorter than Rows x Columns x bits says
            raise XrayReadError(path, f"the pixel data is truncated ({e})") from e
        raise XrayReadError(
            path, f"cannot decode the {_ts_label(ts)} pixel data ({type(e).__name__}: {e})"
        ) from e
    return arr, meta


def _plain(value: Any) -> Any:
    """Convert a pydicom value to plain Python (str, int, float, list); empty becomes None."""
    if value is None:
        return None
    if isinstance(value, (MultiValue, list, tuple)):
        items = [_plain(v) for v in value]
        return items or None
    if isinstance(value, float):  # DSfloat
        return float(value)
    if isinstance(value, int):  # IS, US
        return int(value)
    if isinstance(value, bytes):
        return None
    text = str(value).strip()
    return text or None


def _first_number(value: Any) -> float | None:
    """First element of a possibly multi-valued numeric tag as float, or None if absent/invalid."""
    if isinstance(value, (MultiValue, list, tuple)):
        value = value[0] if len(value) else None
    if value is None or value == "":
        return None
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return out if np.isfinite(out) else None


def _lut_item(item: Dataset, ds: Dataset) -> tuple[int, int, np.ndarray]:
    """(first mapped value, bits per entry, table) of a Modality or VOI LUT Sequence item.

    LUT Descriptor is (number of entries, 0 meaning 65536; first stored value mapped; bits).
    LUT Data is US (a list) or OW (raw 16-bit words in the data set's byte order).
    """
    desc = [int(v) for v in item.LUTDescriptor]
    n = desc[0] or 65536
    first, depth = desc[1], desc[2]
    elem = item["LUTData"]
    if isinstance(elem.value, (bytes, bytearray)):
        little = getattr(ds, "original_encoding", (None, True))[1] is not False
        table = np.frombuffer(elem.value, dtype="<u2" if little else ">u2")
    else:
        val = elem.value
        table = np.asarray([val] if isinstance(val, int) else list(val))
    table = table[:n].astype(np.float32)
    if table.size == 0:
        raise ValueError("empty LUT Data")
    return first, depth, table


def _lookup(x: np.ndarray, first: int, table: np.ndarray) -> np.ndarray:
    """Apply a LUT: values below ``first`` take the first entry, above the end the last (C.11.1/2)."""
    idx = np.rint(x - np.float32(first)) if x.dtype.kind == "f" else x.astype(np.int32) - np.int32(first)
    idx = np.clip(idx, 0, table.size - 1).astype(np.int32, copy=False)
    return table[idx]


def _window(x: np.ndarray, center: float, width: float, func: str) -> np.ndarray | None:
    """DICOM windowing (PS3.3 C.11.2.1.2) straight to [0, 1]; None when the window is invalid."""
    if func == "SIGMOID":
        if width <= 0:
            return None
        with np.errstate(over="ignore"):  # exp overflow -> inf -> 0, which is the right limit
            z = np.exp(np.float32(-4.0 / width) * (x - np.float32(center)))
        return (np.float32(1.0) / (np.float32(1.0) + z)).astype(np.float32, copy=False)
    if func == "LINEAR_EXACT":
        if width <= 0:
            return None
        c, w = center, width
    else:  # LINEAR, the default; unknown functions are treated as LINEAR
        if width < 1:
            return None
        if width == 1:  # degenerate: a threshold at center - 0.5
            return (x > center - 0.5).astype(np.float32)
        c, w = center - 0.5, width - 1.0
    y = (x - np.float32(c)) * np.float32(1.0 / w) + np.float32(0.5)
    return np.clip(y, 0.0, 1.0, out=y).astype(np.float32, copy=False)


def _dicom_to_unit(path: Path, ds: Dataset, no_voi: str) -> np.ndarray:
    """Decode and map a single-frame DICOM to [0, 1], bone bright (see the module docstring)."""
    arr, meta = _decode(path, ds)
    pi = str(meta.get("photometric_interpretation") or ds.get("PhotometricInterpretation", "")).strip().upper()
    bits = int(meta.get("bits_stored") or ds.get("BitsStored") or 8)

    try:
        if arr.ndim == 3:  # colour: no modality / VOI transforms apply (C.11.1, C.11.2 are monochrome)
            if pi.startswith("YBR_FULL"):
                arr = convert_color_space(arr, pi, "RGB")
            elif pi not in ("RGB", "YBR_ICT", "YBR_RCT"):
                raise XrayReadError(path, f"unsupported colour photometric interpretation {pi!r}", _HINT_FORMAT)
            out = _luma(arr) / np.float32(2**bits - 1)
            return np.clip(out, 0.0, 1.0, out=out)
        if arr.ndim != 2:
            raise XrayReadError(path, f"unexpected pixel array shape {arr.shape}")
        if pi not in ("MONOCHROME1", "MONOCHROME2"):
            raise XrayReadError(
                path,
                f"unsupported photometric interpretation {pi!r} for single-sample pixels",
                "Convert the file to MONOCHROME2 (or RGB) first",
            )
        out = _monochrome_to_unit(arr, ds, bits, no_voi)
    except XrayReadError:
        raise
    except (ValueError, TypeError, KeyError, AttributeError, IndexError) as e:
        raise XrayReadError(path, f"invalid grayscale transform tags ({type(e).__name__}: {e})") from e
    if pi == "MONOCHROME1":  # low values are bright: invert after VOI (C.7.6.3.1.2)
        out = np.subtract(np.float32(1.0), out, out=out)
    return np.ascontiguousarray(out, dtype=np.float32)


def _monochrome_to_unit(arr: np.ndarray, ds: Dataset, bits: int, no_voi: str) -> np.ndarray:
    """Modality LUT, then VOI (LUT or window), then scaling to [0, 1], as float32."""
    signed = int(ds.get("PixelRepresentation") or 0) == 1
    lo_s, hi_s = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)

    # 1. Modality LUT (C.11.1): a LUT sequence wins over rescale (they must not both be present).
    mlut = ds.get("ModalityLUTSequence")
    if mlut:
        first, _, table = _lut_item(mlut[0], ds)
        x = _lookup(arr, first, table)
        lo_i, hi_i = (int(np.clip(v - first, 0, table.size - 1)) for v in (lo_s, hi_s))
        span = table[lo_i : hi_i + 1]
        lo, hi = float(span.min()), float(span.max())
    else:
        slope = _first_number(ds.get("RescaleSlope"))
        intercept = _first_number(ds.get("RescaleIntercept"))
        slope = 1.0 if slope is None or slope == 0 else slope
        intercept = 0.0 if intercept is None else intercept
        x = arr.astype(np.float32)
        if slope != 1.0:
            x *= np.float32(slope)
        if intercept != 0.0:
            x += np.float32(intercept)
        lo, hi = sorted((lo_s * slope + intercept, hi_s * slope + intercept))

    # 2. VOI (C.11.2): VOI LUT Sequence first item, else first window pair.
    vlut = ds.get("VOILUTSequence")
    if vlut:
        first, depth, table = _lut_item(vlut[0], ds)
        top = float(table.max())
        if 1 <= depth <= 16:
            top = max(top, float(2**depth - 1))  # LUT output range is [0, 2^bits - 1] (C.11.2.1.1)
        y = _lookup(x, first, table)
        return (y / np.float32(top)).astype(np.float32) if top > 0 else np.zeros_like(y, dtype=np.float32)

    center = _first_number(ds.get("WindowCenter"))
    width = _first_number(ds.get("WindowWidth"))
    if center is not None and width is not None:
        func = str(ds.get("VOILUTFunction") or "LINEAR").strip().upper()
        y = _window(x, center, width, func)
        if y is not None:
            return y

    # 3. No (valid) VOI: scale the nominal or the actual range to [0, 1].
    if no_voi == "minmax":
        lo, hi = float(x.min()), float(x.max())
    if hi <= lo:
        return np.zeros(x.shape, dtype=np.float32)
    y = (x - np.float32(lo)) * np.float32(1.0 / (hi - lo))
    return np.clip(y, 0.0, 1.0, out=y).astype(np.float32, copy=False)
