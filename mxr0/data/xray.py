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
:class:`XrayReadError`, a ``ValueError`` that names the file, the reason and what to do. Its message
holds only the path, tag names, technical sizes / bit depths and the reason: never file bytes or
header values (patient data), and quoted text from the underlying library's message is masked.

Guarantees against damaged files (each one tested in ``tests/unit/test_bad_images.py``):

- only regular files are opened (a FIFO, a device such as ``/dev/zero``, a socket: refused before
  opening, so nothing hangs), and files over :data:`MAX_FILE_BYTES` are refused; the file is read
  once into memory and parsed from there, so a damaged length field cannot reserve memory;
- the declared geometry (Rows, Columns, SamplesPerPixel, NumberOfFrames, BitsAllocated, BitsStored,
  HighBit, PixelRepresentation, PhotometricInterpretation) is checked before any pixel buffer is
  allocated: for uncompressed transfer syntaxes the Pixel Data length must equal what the geometry
  declares (one byte of padding allowed); for compressed ones, and for PNG / JPEG headers, the
  size is capped at :data:`MAX_PIXELS`;
- a non-finite or float32-overflowing Rescale Slope / Intercept or Window Center / Width, or a
  modality transform that overflows, is an error (it used to be ignored or give a black image);
- stored values that contradict Bits Stored / Pixel Representation are an error (uncompressed
  data): the bits above Bits Stored must be the same in every pixel (then they are ignored, as
  DICOM says), or, for signed data, each pixel's zero or its sign extension (see
  :func:`_check_stored_bits` for what cannot be detected);
- 16-bit grayscale PNGs: see :func:`_png16_scale` (the ``sBIT`` chunk when present);
- the output is checked to be a finite, non-empty 2-D array in ``[0, 1]`` before it is returned;
  any other exception from the parsing libraries is turned into :class:`XrayReadError`.

EXIF orientation in JPEG files is deliberately ignored: box and mask annotations of X-ray datasets
refer to the stored pixel grid.
"""

from __future__ import annotations

import io
import os
import re
import stat
import struct
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

#: Largest image accepted, in pixels (rows x columns x samples x frames): 16k x 16k.
MAX_PIXELS = 16384 * 16384
#: Largest file accepted, in bytes (a 16k x 16k 16-bit radiograph is 512 MiB).
MAX_FILE_BYTES = 1 << 30

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


_QUOTED = re.compile(r"b?'[^']*'" + r'|b?"[^"]*"')


def _why(e: BaseException) -> str:
    """``TypeName: message`` of a library exception, safe for logs: quoted text (which may hold
    header values or file bytes) is masked and the message is cut to 200 characters."""
    msg = _QUOTED.sub("'…'", str(e)).replace("\n", " ").strip()
    if len(msg) > 200:
        msg = msg[:200] + "…"
    return f"{type(e).__name__}: {msg}" if msg else type(e).__name__


def _check_regular(path: Path, st: os.stat_result) -> None:
    if stat.S_ISDIR(st.st_mode):
        raise XrayReadError(path, "it is a directory, not a file", "Pass the path of an image file")
    if not stat.S_ISREG(st.st_mode):
        kind = ("a FIFO (named pipe)" if stat.S_ISFIFO(st.st_mode) else "a character device"
                if stat.S_ISCHR(st.st_mode) else "a block device" if stat.S_ISBLK(st.st_mode)
                else "a socket" if stat.S_ISSOCK(st.st_mode) else "not a regular file")
        raise XrayReadError(path, f"not a regular file ({kind}); it is refused before opening",
                            "Pass the path of an image file")
    if st.st_size > MAX_FILE_BYTES:
        raise XrayReadError(path, f"file too large ({st.st_size} bytes, more than {MAX_FILE_BYTES})",
                            "Downsample or split the image first")


def _load(path: Path) -> bytes:
    """The whole file, read once: only regular files (a FIFO or a device would block or never end:
    refused before opening) of at most :data:`MAX_FILE_BYTES`. The file is opened non-blocking and
    checked again on its descriptor, in case the path was swapped between the stat and the open."""
    try:
        _check_regular(path, os.stat(path))
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
        with os.fdopen(fd, "rb") as f:
            _check_regular(path, os.fstat(f.fileno()))
            data = f.read()
    except FileNotFoundError:
        raise XrayReadError(path, "file not found", "Check the path and the data root") from None
    except OSError as e:
        raise XrayReadError(path, f"cannot open the file ({e.strerror or type(e).__name__})",
                            "Check the path and the file's permissions") from e
    if len(data) > MAX_FILE_BYTES:  # grew since the stat
        raise XrayReadError(path, f"file too large (more than {MAX_FILE_BYTES} bytes)",
                            "Downsample or split the image first")
    return data


def _sniff(path: Path, data: bytes) -> str:
    """Return the file's format from its first bytes: 'dicom', 'dicom_raw', 'png', 'jpeg' or ''.

    'dicom' has the 128-byte preamble and "DICM"; 'dicom_raw' has no preamble but starts like a
    DICOM data set (first tag in group 0000, 0002 or 0008, either byte order), as old ACR-NEMA
    files and some exports do.
    """
    head = data[:132]
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
    # The file's first bytes are not quoted: for a text file they could be a report or a name.
    return XrayReadError(
        path, "not a DICOM, PNG or JPEG file (no DICOM preamble or data set, PNG or JPEG signature)", _HINT_FORMAT
    )


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
    data = _load(p)
    kind = _sniff(p, data)
    try:
        if kind in ("png", "jpeg"):
            out = _read_pillow(p, data)
        elif kind in ("dicom", "dicom_raw"):
            ds = _dcmread(p, data, force=kind == "dicom_raw", header_only=False)
            out = _dicom_to_unit(p, ds, no_voi, data)
        else:
            raise _not_an_image(p)
    except XrayReadError:
        raise
    except Exception as e:  # noqa: BLE001 - a damaged file must give the named error, never a raw traceback
        raise XrayReadError(p, f"unexpected failure while decoding ({_why(e)})") from e
    return _checked_output(p, out)


def _checked_output(path: Path, out: np.ndarray) -> np.ndarray:
    """The last guard: a finite, non-empty 2-D float32 array in [0, 1]."""
    out = np.ascontiguousarray(out, dtype=np.float32)
    if out.ndim != 2 or out.size == 0:
        raise XrayReadError(path, f"the decoded image has shape {out.shape}, not a non-empty 2-D image")
    if not np.isfinite(out).all():
        raise XrayReadError(path, "the decoded image has non-finite values (NaN or inf)")
    if float(out.min()) < 0.0 or float(out.max()) > 1.0:
        raise XrayReadError(path, "the decoded image has values outside [0, 1]")
    return out


def read_dicom_meta(path: PathLike) -> dict[str, Any]:
    """Read the non-identifying technical header fields of a DICOM file (pixels are not read).

    Returns a dict with exactly the keys of :data:`DICOM_META_KEYS` (``None`` where the tag is
    absent or empty): view, laterality, body part, photometric interpretation, size, bit depth,
    pixel spacing, modality and transfer syntax. Patient names and ids, dates, institutions,
    accession numbers and UIDs are never returned, so the result is safe to store in records.
    """
    p = Path(path)
    data = _load(p)
    kind = _sniff(p, data)
    if kind not in ("dicom", "dicom_raw"):
        raise XrayReadError(p, "not a DICOM file", "read_dicom_meta only reads DICOM headers")
    ds = _dcmread(p, data, force=kind == "dicom_raw", header_only=True)
    out: dict[str, Any] = {}
    for key in DICOM_META_KEYS:
        try:
            if key == "TransferSyntaxUID":  # for files without file meta: the syntax they were read with
                value = str(_transfer_syntax(ds))
            else:
                value = ds.get(key)
            out[key] = _plain(value)
        except Exception as e:  # noqa: BLE001 - a damaged value of one tag
            raise XrayReadError(p, f"invalid {key} tag ({_why(e)})") from e
    return out


def write_png(path: PathLike, img: np.ndarray, bits: int = 8) -> Path:
    """Write a 2-D image with values in [0, 1] as a grayscale PNG, atomically; return the path.

    ``bits=8`` stores round(x * 255), ``bits=16`` round(x * 65535) with an ``sBIT`` chunk saying
    16 significant bits, so :func:`read_xray` reads the image back to within half a quantisation step
    (even a dark one: see :func:`_png16_scale`). The file is written to a temporary name in the
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
    info = None
    if bits == 16:
        from PIL.PngImagePlugin import PngInfo

        info = PngInfo()
        info.add(b"sBIT", bytes([16]))  # all 16 bits significant: the full range is the scale

    dest = Path(path)
    dest.parent.mkdir(parents=True, exist_ok=True)
    # Not mkstemp: its 0600 mode would make a shared cache unreadable to others; "x" honours umask.
    tmp = dest.parent / f".{dest.name}.{os.getpid()}.{uuid.uuid4().hex}.tmp"
    try:
        with open(tmp, "xb") as f:
            im.save(f, format="PNG", pnginfo=info)
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


def _png_sbit(path: Path, data: bytes) -> int | None:
    """The significant bits of the gray channel from a PNG's ``sBIT`` chunk (before IDAT), or None."""
    pos = 8
    while pos + 8 <= len(data):
        length, ctype = struct.unpack(">I4s", data[pos : pos + 8])
        if ctype in (b"IDAT", b"IEND"):
            return None
        if ctype == b"sBIT":
            if length < 1 or pos + 8 + length > len(data):
                raise XrayReadError(path, "invalid PNG sBIT chunk (empty or truncated)")
            return data[pos + 8]
        pos += 12 + length
    return None


def _png16_scale(path: Path, data: bytes, values: np.ndarray) -> float:
    """The divisor that maps a 16-bit grayscale PNG to [0, 1]. One documented rule:

    - with an ``sBIT`` chunk of ``s`` significant bits (1-16): if every value fits in ``s`` bits the
      values are taken as stored in the low bits (as many medical exports do: 12-bit data in 16-bit
      samples) and divided by ``2**s - 1``; otherwise they are scaled to the full range, as the PNG
      specification prescribes, and divided by 65535;
    - without ``sBIT``: 65535, unless every value fits in 12 bits (maximum <= 4095): then the file is
      taken for 12-bit data stored in the low bits (the commonest radiograph export, which would
      otherwise come out 16x too dark) and divided by 4095. :func:`write_png` writes ``sBIT`` = 16, so
      mxr0's own cache is always read on the full range.
    """
    sbit = _png_sbit(path, data)
    top = int(values.max()) if values.size else 0
    if sbit is not None:
        if not 1 <= sbit <= 16:
            raise XrayReadError(path, f"invalid PNG sBIT chunk ({sbit} significant bits for 16-bit samples)")
        return float(2**sbit - 1) if top <= 2**sbit - 1 else 65535.0
    return 4095.0 if top <= 4095 else 65535.0


def _read_pillow(path: Path, data: bytes) -> np.ndarray:
    """Decode a PNG or JPEG fully (``load()``, so truncation is caught) and scale it to [0, 1].

    The declared size is checked against :data:`MAX_PIXELS` before decoding. 16-bit grayscale
    (modes I;16*, I) is scaled by :func:`_png16_scale`, 8-bit divided by 255; colour, palette and
    alpha images become luma (alpha is dropped, not composited).
    """
    try:
        with Image.open(io.BytesIO(data)) as im:
            w, h = im.size
            if w < 1 or h < 1 or w * h > MAX_PIXELS:
                raise XrayReadError(path, f"declared {im.format} size {w} x {h} is empty or over the "
                                    f"{MAX_PIXELS}-pixel limit", "Downsample the image first")
            im.load()
            mode = im.mode
            if mode.startswith("I;16") or mode == "I":
                values = np.asarray(im)
                if values.size and int(values.min()) < 0:
                    raise XrayReadError(path, f"negative values in a {im.format} of mode {mode!r}")
                return (values.astype(np.float32) / np.float32(_png16_scale(path, data, values))).clip(0.0, 1.0)
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
        raise XrayReadError(path, f"image too large to decode safely ({_why(e)})", "Downsample the image first") from e
    except Exception as e:  # noqa: BLE001 - Pillow raises OSError, ValueError, SyntaxError, struct.error ...
        raise XrayReadError(path, f"cannot decode the image ({_why(e)})") from e


# ---------------------------------------------------------------------------------------------
# DICOM
# ---------------------------------------------------------------------------------------------


def _dcmread(path: Path, data: bytes, *, force: bool, header_only: bool) -> Dataset:
    """Parse a DICOM file from its bytes (a damaged length then cannot make the parser reserve
    memory for data the file does not hold), mapping every parser failure to XrayReadError."""
    try:
        ds = pydicom.dcmread(io.BytesIO(data), force=force, stop_before_pixels=header_only)
    except Exception as e:  # pydicom raises many types (InvalidDicomError, EOFError, struct.error ...)
        if force:
            raise _not_an_image(path) from e
        raise XrayReadError(path, f"cannot parse the DICOM file ({_why(e)})") from e
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


def _pixel_data_present_in_file(data: bytes) -> bool:
    """Whether the raw bytes contain a (7FE0,0010) Pixel Data tag (either byte order)."""
    return b"\xe0\x7f\x10\x00" in data or b"\x7f\xe0\x00\x10" in data


def _ts_label(ts: UID) -> str:
    return f"{ts.name} ({ts})" if ts.name != ts else str(ts)


_HINT_TAGS = "A header tag contradicts the pixel data; fix the tag (e.g. with pydicom) or drop the file from the index"


def _int_tag(path: Path, ds: Dataset, key: str, default: int | None = None) -> int:
    """An integer tag's value (the first of several); ``default`` when absent, else a named error."""
    try:
        value = ds.get(key)
    except Exception as e:  # noqa: BLE001 - a damaged value of the tag
        raise XrayReadError(path, f"invalid {key} tag ({_why(e)})", _HINT_TAGS) from e
    if isinstance(value, (MultiValue, list, tuple)):
        value = value[0] if len(value) else None
    if value is None or value == "":
        if default is None:
            raise XrayReadError(path, f"the {key} tag is missing", _HINT_TAGS)
        return default
    try:
        number = float(value)
        if not number.is_integer():
            raise ValueError
        return int(number)
    except (TypeError, ValueError, OverflowError):
        raise XrayReadError(path, f"the {key} tag is not an integer", _HINT_TAGS) from None


_PHOTOMETRIC_TERMS = frozenset({
    "MONOCHROME1", "MONOCHROME2", "PALETTE COLOR", "RGB", "YBR_FULL", "YBR_FULL_422", "YBR_PARTIAL_422",
    "YBR_PARTIAL_420", "YBR_ICT", "YBR_RCT", "HSV", "ARGB", "CMYK", "XYB",
})


def _geometry(path: Path, ds: Dataset, ts: UID) -> tuple[int, int, int, int]:
    """Check the declared geometry against the pixel data *before* anything is decoded or allocated;
    return (BitsAllocated, BitsStored, PixelRepresentation, expected native byte length or 0)."""
    rows = _int_tag(path, ds, "Rows")
    cols = _int_tag(path, ds, "Columns")
    spp = _int_tag(path, ds, "SamplesPerPixel", 1)
    ba = _int_tag(path, ds, "BitsAllocated")
    bs = _int_tag(path, ds, "BitsStored", ba)
    hb = _int_tag(path, ds, "HighBit", bs - 1)
    pr = _int_tag(path, ds, "PixelRepresentation", 0)
    for key, value in (("Rows", rows), ("Columns", cols)):
        if value < 1:
            raise XrayReadError(path, f"{key} is {value}: the image is empty", _HINT_TAGS)
    if spp not in (1, 3):
        raise XrayReadError(path, f"SamplesPerPixel={spp} is not 1 (grayscale) or 3 (colour)", _HINT_TAGS)
    if ba not in (8, 16, 32):
        raise XrayReadError(path, f"unsupported BitsAllocated={ba} (8, 16 or 32 are read)", _HINT_TAGS)
    if not 1 <= bs <= ba:
        raise XrayReadError(path, f"BitsStored={bs} contradicts BitsAllocated={ba}", _HINT_TAGS)
    if hb != bs - 1:
        raise XrayReadError(path, f"HighBit={hb} is not BitsStored - 1 ({bs - 1}): unsupported bit layout", _HINT_TAGS)
    if pr not in (0, 1):
        raise XrayReadError(path, f"PixelRepresentation={pr} is neither 0 (unsigned) nor 1 (signed)", _HINT_TAGS)
    if rows * cols * spp > MAX_PIXELS:
        raise XrayReadError(
            path, f"declared size Rows x Columns x SamplesPerPixel = {rows} x {cols} x {spp} is over the "
            f"{MAX_PIXELS}-pixel limit", "Downsample the image first, or drop the file if the tags are damaged",
        )
    pi = str(ds.get("PhotometricInterpretation", "")).strip().upper()
    if pi not in _PHOTOMETRIC_TERMS:  # not echoed: a damaged tag could hold anything
        raise XrayReadError(path, "PhotometricInterpretation is missing or not a DICOM defined term", _HINT_TAGS)
    if spp == 1 and pi not in ("MONOCHROME1", "MONOCHROME2"):
        raise XrayReadError(
            path, f"unsupported photometric interpretation {pi!r} for single-sample pixels",
            "Convert the file to MONOCHROME2 (or RGB) first",
        )
    if spp == 3 and pi.startswith("MONOCHROME"):
        raise XrayReadError(path, f"SamplesPerPixel=3 contradicts PhotometricInterpretation {pi}", _HINT_TAGS)
    if ts.is_encapsulated:
        return ba, bs, pr, 0
    samples = rows * cols * (2 if spp == 3 and pi == "YBR_FULL_422" else spp)
    expected = samples * (ba // 8)
    actual = len(ds.PixelData)
    if actual < expected:
        raise XrayReadError(
            path, f"the pixel data is truncated (Pixel Data holds {actual} bytes; Rows, Columns, SamplesPerPixel "
            f"and BitsAllocated declare {expected})",
        )
    if actual > expected + 1:  # one byte pads an odd length to even
        raise XrayReadError(
            path, f"Pixel Data holds {actual} bytes, more than the {expected} that Rows, Columns, SamplesPerPixel "
            "and BitsAllocated declare (a geometry tag contradicts the data)", _HINT_TAGS,
        )
    return ba, bs, pr, expected


def _check_stored_bits(path: Path, ds: Dataset, ts: UID, ba: int, bs: int, pr: int, nbytes: int) -> None:
    """Bits Stored / Pixel Representation against the raw words of uncompressed pixel data.

    The bits above Bits Stored are ignored (DICOM: they are not pixel data) only when they are the
    same in every pixel, or, for signed data, each pixel's either zero or its sign extension (real
    files mix both: mlut_18.dcm sign-extends 256 of its pixels). Anything else means the
    data use more bits than Bits Stored says, or the signedness is wrong: a named error instead of a
    masked (garbage) image. The rule's limit: signed data whose high bits are all zero are valid
    two's complement in Bits Stored bits (pydicom's own test file mlut_18.dcm is such), so unsigned
    data mislabelled signed *without* any high bit set cannot be told apart and are read as signed;
    likewise when Bits Stored equals Bits Allocated there are no spare bits to check.
    """
    if bs == ba or not nbytes:
        return
    dtype = np.dtype(f"u{ba // 8}").newbyteorder(">" if ts == ExplicitVRBigEndian else "<")
    words = np.frombuffer(ds.PixelData, dtype=dtype, count=nbytes // (ba // 8))
    if not words.size:
        return
    high = words >> np.array(bs, dtype=dtype)
    constant = int(high.min()) == int(high.max())
    if pr == 0:
        if not constant:
            raise XrayReadError(
                path, f"stored values use bits above BitsStored={bs} (BitsAllocated={ba}): BitsStored or "
                "PixelRepresentation contradicts the data (or a retired overlay plane is stored in the pixels)",
                _HINT_TAGS,
            )
        return
    sign = (words >> np.array(bs - 1, dtype=dtype)) & np.array(1, dtype=dtype)
    extension = sign * np.array((1 << (ba - bs)) - 1, dtype=dtype)
    if constant or bool(((high == 0) | (high == extension)).all()):
        return
    raise XrayReadError(
        path, f"PixelRepresentation=1 (signed) but the bits above BitsStored={bs} are neither zero nor the "
        "sign extension of the values: BitsStored or PixelRepresentation contradicts the data", _HINT_TAGS,
    )


def _decode(path: Path, ds: Dataset, data: bytes) -> tuple[np.ndarray, dict[str, Any]]:
    """Decode the single frame of ``ds`` to its stored values (colour converted to RGB)."""
    if "PixelData" not in ds:
        if "FloatPixelData" in ds or "DoubleFloatPixelData" in ds:
            raise XrayReadError(path, "float pixel data is not supported", _HINT_FORMAT)
        if _pixel_data_present_in_file(data):
            raise XrayReadError(path, "the pixel data is truncated (the file ends inside Pixel Data)")
        raise XrayReadError(
            path,
            "no pixel data",
            "This DICOM holds no image (e.g. a report, presentation state or header-only export); "
            "drop it from the index",
        )
    frames = _int_tag(path, ds, "NumberOfFrames", 1)
    if frames < 1:
        raise XrayReadError(path, f"NumberOfFrames is {frames}", _HINT_TAGS)
    if frames > 1:
        raise XrayReadError(
            path,
            f"multi-frame DICOM ({frames} frames); only single radiographs are supported",
            "Extract the frame you need (pydicom.pixels.pixel_array(path, index=i)) and save it as its own file",
        )
    ts = _transfer_syntax(ds)
    ba, bs, pr, nbytes = _geometry(path, ds, ts)
    _check_stored_bits(path, ds, ts, ba, bs, pr, nbytes)
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
            raise XrayReadError(path, f"the pixel data is truncated ({_why(e)})") from e
        raise XrayReadError(path, f"cannot decode the {_ts_label(ts)} pixel data ({_why(e)})") from e
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


_FLOAT32_MAX = float(np.finfo(np.float32).max)


def _number(path: Path, ds: Dataset, key: str) -> float | None:
    """First value of a numeric tag as float; None when absent or empty. A value that is not a
    number, not finite (NaN, inf) or beyond the float32 range is a named error, never a default."""
    try:
        value = ds.get(key)
    except Exception as e:  # noqa: BLE001 - a damaged value of the tag
        raise XrayReadError(path, f"invalid {key} tag ({_why(e)})", _HINT_TAGS) from e
    if isinstance(value, (MultiValue, list, tuple)):
        value = value[0] if len(value) else None
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    try:
        out = float(value)
    except (TypeError, ValueError, OverflowError):
        raise XrayReadError(path, f"the {key} tag is not a number", _HINT_TAGS) from None
    if not np.isfinite(out) or abs(out) > _FLOAT32_MAX:
        raise XrayReadError(path, f"the {key} tag is not finite (NaN, inf or beyond the float32 range)", _HINT_TAGS)
    return out


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


def _dicom_to_unit(path: Path, ds: Dataset, no_voi: str, data: bytes) -> np.ndarray:
    """Decode and map a single-frame DICOM to [0, 1], bone bright (see the module docstring)."""
    arr, meta = _decode(path, ds, data)
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
        out = _monochrome_to_unit(path, arr, ds, bits, no_voi)
    except XrayReadError:
        raise
    except Exception as e:  # noqa: BLE001 - damaged LUT / window tags raise many types
        raise XrayReadError(path, f"invalid grayscale transform tags ({_why(e)})", _HINT_TAGS) from e
    if pi == "MONOCHROME1":  # low values are bright: invert after VOI (C.7.6.3.1.2)
        out = np.subtract(np.float32(1.0), out, out=out)
    return np.ascontiguousarray(out, dtype=np.float32)


def _monochrome_to_unit(path: Path, arr: np.ndarray, ds: Dataset, bits: int, no_voi: str) -> np.ndarray:
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
        slope = _number(path, ds, "RescaleSlope")
        intercept = _number(path, ds, "RescaleIntercept")
        slope = 1.0 if slope is None or slope == 0 else slope
        intercept = 0.0 if intercept is None else intercept
        x = arr.astype(np.float32)
        with np.errstate(over="ignore", invalid="ignore"):
            if slope != 1.0:
                x *= np.float32(slope)
            if intercept != 0.0:
                x += np.float32(intercept)
        lo, hi = sorted((lo_s * slope + intercept, hi_s * slope + intercept))
        if not (abs(lo) <= _FLOAT32_MAX and abs(hi) <= _FLOAT32_MAX and np.isfinite(x).all()):
            raise XrayReadError(
                path, "RescaleSlope / RescaleIntercept overflow the float32 range (non-finite values)", _HINT_TAGS
            )

    # 2. VOI (C.11.2): VOI LUT Sequence first item, else first window pair.
    vlut = ds.get("VOILUTSequence")
    if vlut:
        first, depth, table = _lut_item(vlut[0], ds)
        top = float(table.max())
        if 1 <= depth <= 16:
            top = max(top, float(2**depth - 1))  # LUT output range is [0, 2^bits - 1] (C.11.2.1.1)
        y = _lookup(x, first, table)
        return (y / np.float32(top)).astype(np.float32) if top > 0 else np.zeros_like(y, dtype=np.float32)

    center = _number(path, ds, "WindowCenter")
    width = _number(path, ds, "WindowWidth")
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
