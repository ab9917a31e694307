"""Uploaded images: bytes (multipart files or ``data:`` URIs) → mxr0's canonical [0, 1] array, and the
pictures the web page shows (the image as mxr0 read it, windowed; the similarity heat map).

Uploads are written to a private temporary file only for the time `mxr0.data.xray.read_xray` reads them
(it reads DICOM / PNG / JPEG from a path, deciding the format from the content) and removed at once;
they are never stored or logged. Error messages name the problem (`XrayReadError`'s reason and hint),
never the temporary path, header values or file bytes. Of a DICOM header only technical, non-identifying
fields are kept (view, laterality, orientation, photometric interpretation, size: `DISPLAY_META_KEYS`).
"""

from __future__ import annotations

import base64
import binascii
import io
import os
import re
import tempfile
from dataclasses import dataclass, field

import numpy as np

from mxr0.data.xray import XrayReadError, read_dicom_meta, read_xray
from mxr0.eval.align import _heat

IMAGE_MIME = {"image/png": "png", "image/jpeg": "jpeg", "image/jpg": "jpeg", "application/dicom": "dicom",
              "image/dicom": "dicom", "application/octet-stream": "auto"}
"""``data:`` URI media types accepted for images (octet-stream: the format is decided from the content)."""

DISPLAY_META_KEYS = ("Modality", "ViewPosition", "Laterality", "ImageLaterality", "BodyPartExamined",
                     "PatientOrientation", "PhotometricInterpretation", "Rows", "Columns")
"""The DICOM fields a response may carry: technical and non-identifying (a subset of
`mxr0.data.xray.DICOM_META_KEYS`); never names, ids, dates, institutions or UIDs."""

WINDOW_PRESETS: dict[str, tuple[float, float] | None] = {
    "default": None,
    "lung": (0.35, 0.70),
    "mediastinum": (0.60, 0.45),
    "bone": (0.75, 0.50),
}
"""Display windows (centre, width) on the [0, 1] image as mxr0 read it (after the file's Modality LUT, VOI LUT
/ window and MONOCHROME1 inversion, bone bright). Radiographs have no Hounsfield scale, so the presets are
relative: ``lung`` spreads the dark (aerated) range, ``mediastinum`` the middle, ``bone`` the bright range;
``default`` is the image exactly as the model's transform receives it. Display only: the model always sees
the default."""

_DATA_URI = re.compile(r"^data:(?P<mime>[\w.+-]+/[\w.+-]+)?(?P<params>(?:;[\w.+-]+=[^;,]*)*)(?P<b64>;base64)?,", re.I)


class ImageError(ValueError):
    """A bad upload; ``status`` is the HTTP status to answer (400 unreadable, 413 too large, 415 wrong type)."""

    def __init__(self, message: str, status: int = 400, code: str = "invalid_image"):
        super().__init__(message)
        self.status, self.code = status, code


@dataclass
class XrayImage:
    """One decoded upload: ``pixels`` [H, W] float32 in [0, 1] (bone bright), its format and safe header fields."""

    pixels: np.ndarray
    format: str
    meta: dict = field(default_factory=dict)

    @property
    def height(self) -> int:
        return int(self.pixels.shape[0])

    @property
    def width(self) -> int:
        return int(self.pixels.shape[1])

    def info(self) -> dict:
        return {"format": self.format, "width": self.width, "height": self.height, "meta": self.meta,
                "orientation": orientation_markers(self.meta)}


def decode_data_uri(uri: str, what: str = "image", max_bytes: int | None = None) -> tuple[bytes, str]:
    """(bytes, format hint) of a ``data:<mime>;base64,<data>`` image URI. http(s) URLs are refused (the server
    fetches nothing)."""
    if not isinstance(uri, str) or not uri:
        raise ImageError(f"{what}: image_url.url is missing")
    if uri.startswith(("http://", "https://")):
        raise ImageError(f"{what}: remote image URLs are not fetched; send the image inline as a data URI "
                         "(data:image/png;base64,…, data:image/jpeg;base64,… or data:application/dicom;base64,…)",
                         code="unsupported_image_url")
    m = _DATA_URI.match(uri[:512])
    if not m:
        raise ImageError(f"{what}: not a data URI (expected data:<media type>;base64,<data>)")
    mime = (m.group("mime") or "").lower()
    if mime not in IMAGE_MIME:
        raise ImageError(f"{what}: unsupported media type {mime or '(none)'!r}; use image/png, image/jpeg or "
                         "application/dicom", status=415, code="unsupported_media_type")
    if not m.group("b64"):
        raise ImageError(f"{what}: the data URI must be base64-encoded (;base64,)")
    payload = uri[m.end():]
    if max_bytes is not None and len(payload) * 3 // 4 > max_bytes:
        raise ImageError(f"{what}: the image is larger than {max_bytes} bytes", status=413, code="image_too_large")
    try:
        data = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise ImageError(f"{what}: the base64 data is corrupt") from None
    return data, IMAGE_MIME[mime]


def read_upload(data: bytes, what: str = "image", max_bytes: int | None = None) -> XrayImage:
    """Decode an uploaded file's bytes with mxr0's reader (format from the content)."""
    if not data:
        raise ImageError(f"{what}: the upload is empty")
    if max_bytes is not None and len(data) > max_bytes:
        raise ImageError(f"{what}: the image is larger than {max_bytes} bytes", status=413, code="image_too_large")
    folder = _private_dir()
    fd, name = tempfile.mkstemp(dir=folder, suffix=".upload")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        try:
            pixels = read_xray(name)
            is_dicom = _is_dicom(data)
            meta = {}
            if is_dicom:
                raw = read_dicom_meta(name)
                meta = {k: raw.get(k) for k in DISPLAY_META_KEYS if raw.get(k) not in (None, "", [])}
        except XrayReadError as e:
            raise ImageError(f"{what}: cannot read the image: {e.reason}. {e.hint}.") from None
    finally:
        try:
            os.unlink(name)
        except OSError:
            pass
    fmt = "dicom" if is_dicom else "png" if data[:8] == b"\x89PNG\r\n\x1a\n" else "jpeg"
    return XrayImage(pixels, fmt, meta)


def _is_dicom(data: bytes) -> bool:
    return data[128:132] == b"DICM" or not (data.startswith(b"\x89PNG") or data.startswith(b"\xff\xd8"))


_DIR: str | None = None


def _private_dir() -> str:
    """A temporary folder only this user can read (mode 0700), made once per process."""
    global _DIR
    if _DIR is None or not os.path.isdir(_DIR):
        _DIR = tempfile.mkdtemp(prefix="mxr0-serve-")
    return _DIR


def orientation_markers(meta: dict) -> dict:
    """Letters for the image's left and right edges: from DICOM PatientOrientation (its first value is the
    patient direction of the rows, i.e. towards the image's right) when present, else the display convention
    for frontal views (the patient's right on the image's left: ``R`` left, ``L`` right, marked ``assumed``);
    empty for other views."""
    opposite = {"L": "R", "R": "L", "A": "P", "P": "A", "H": "F", "F": "H"}
    po = meta.get("PatientOrientation")
    if isinstance(po, str):
        po = po.split("\\")
    if isinstance(po, (list, tuple)) and po and str(po[0])[:1].upper() in opposite:
        right = str(po[0])[:1].upper()
        return {"left": opposite[right], "right": right, "source": "PatientOrientation"}
    view = str(meta.get("ViewPosition") or "").upper()
    if view in ("PA", "AP", "AP_SUPINE", ""):
        return {"left": "R", "right": "L", "source": "assumed (frontal display convention)"}
    return {}


def window(pixels: np.ndarray, preset: str) -> np.ndarray:
    """The image through a display preset (`WINDOW_PRESETS`), still in [0, 1]."""
    if preset not in WINDOW_PRESETS:
        raise ImageError(f"unknown window preset {preset!r}; choose from {list(WINDOW_PRESETS)}", code="invalid_preset")
    cw = WINDOW_PRESETS[preset]
    if cw is None:
        return pixels
    c, w = cw
    return np.clip((pixels - (c - w / 2)) / w, 0.0, 1.0)


def display_png(pixels: np.ndarray, preset: str = "default", max_side: int = 1024) -> tuple[str, int, int]:
    """(base64 PNG, width, height) of the windowed image, downscaled so its longest side is ``max_side``."""
    from PIL import Image

    img = Image.fromarray(np.round(window(pixels, preset) * 255).astype(np.uint8))
    scale = min(1.0, max_side / max(img.size))
    if scale < 1.0:
        img = img.resize((max(1, round(img.width * scale)), max(1, round(img.height * scale))), Image.BILINEAR)
    return _b64png(img), img.width, img.height


def heat_png(sim_model: np.ndarray, geometry, height: int, width: int, max_side: int = 512) -> tuple[str, int, int]:
    """An RGBA PNG of a model-frame map (``size`` x ``size``) laid over the ORIGINAL image frame (``height`` x
    ``width``, downscaled to ``max_side``): min–max scaled, coloured dark blue → red → yellow, transparent
    where the model saw no pixel (cropped away or padding)."""
    from PIL import Image

    scale = min(1.0, max_side / max(height, width))
    h, w = max(1, round(height * scale)), max(1, round(width * scale))
    size = sim_model.shape[0]
    ys, xs = (np.arange(h) + 0.5) / h, (np.arange(w) + 0.5) / w
    # original normalised -> model normalised (Geometry's affine), then model pixel indices
    mx = (xs * geometry.resized_width + geometry.offset_x) / geometry.size
    my = (ys * geometry.resized_height + geometry.offset_y) / geometry.size
    ix, iy = np.floor(mx * size).astype(int), np.floor(my * size).astype(int)
    inside = ((iy >= 0) & (iy < size))[:, None] & ((ix >= 0) & (ix < size))[None, :]
    vals = sim_model[np.clip(iy, 0, size - 1)[:, None], np.clip(ix, 0, size - 1)[None, :]]
    lo, hi = float(sim_model.min()), float(sim_model.max())
    rgb = _heat((vals - lo) / max(hi - lo, 1e-8))
    alpha = np.where(inside, 150, 0).astype(np.uint8)[..., None]
    return _b64png(Image.fromarray(np.concatenate([rgb, alpha], -1))), w, h


def _b64png(img) -> str:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def png_bytes(pixels: np.ndarray) -> bytes:
    """A [0, 1] image as 8-bit PNG bytes (tests and examples)."""
    return base64.b64decode(display_png(pixels, max_side=1 << 16)[0])


__all__ = ["DISPLAY_META_KEYS", "IMAGE_MIME", "ImageError", "WINDOW_PRESETS", "XrayImage", "decode_data_uri",
           "display_png", "heat_png", "orientation_markers", "read_upload", "window"]
