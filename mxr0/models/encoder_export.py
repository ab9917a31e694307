"""``mxr0 export-encoder``: the image encoder of any stage's export as a standalone Hugging Face folder.

From an XR-0 export, a DINOv2 / RAD-DINO folder or Hub id, a classifier export, an alignment export
(``VisionTextDualEncoderModel``) or a report / VLM export (``LlavaForConditionalGeneration``), write
``config.json`` + ``model.safetensors`` (a plain ``Dinov2Model`` / ``Dinov2WithRegistersModel``) +
``preprocessor_config.json`` (the source's image-processor config), loadable with
``transformers.AutoModel`` / ``AutoImageProcessor`` and by every mxr0 recipe as an encoder. The folder is
written beside its destination and renamed into place, so a crash never leaves a half-written encoder.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

from mxr0.models.encoder import EncoderSourceError, encoder_source, image_processor_config, load_encoder

log = logging.getLogger(__name__)

# keys of a processor's own bookkeeping that would make AutoImageProcessor / AutoProcessor look for the
# composite processor (and its tokenizer) in the encoder folder
_DROP_KEYS = ("processor_class", "auto_map")


def export_encoder(source: str | os.PathLike, out_dir: str | os.PathLike, overwrite: bool = False) -> Path:
    """Write the encoder of ``source`` (any kind `mxr0.models.encoder.load_encoder` accepts) to ``out_dir``;
    returns ``out_dir``. Raises `EncoderSourceError` for an unknown source, ``FileExistsError`` when
    ``out_dir`` exists and ``overwrite`` is false."""
    import json

    out = Path(out_dir)
    src_path = Path(source)
    if src_path.exists() and out.resolve() == src_path.resolve():
        raise FileExistsError(f"{out}: the output folder is the source itself; choose another --out")
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out}: already exists; pass --overwrite to replace it")
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"{out}: exists and is not a folder")
    src = encoder_source(source)
    proc = image_processor_config(source)
    if proc is None:
        raise EncoderSourceError(f"{source}: no image-processor config (preprocessor_config.json, or an "
                                 "image_processor in processor_config.json); an encoder folder needs one")
    proc = {k: v for k, v in proc.items() if k not in _DROP_KEYS}
    model = load_encoder(source)

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        (tmp / "preprocessor_config.json").write_text(json.dumps(proc, indent=2))
        if not (tmp / "config.json").is_file() or not any(tmp.glob("model*.safetensors")):
            raise RuntimeError(f"{tmp}: save_pretrained wrote no config.json / safetensors; report this bug")
        old = None
        if out.exists():  # --overwrite: move the old folder aside, put the new one in place, then delete the old
            old = out.parent / f".{out.name}.old-{os.getpid()}"
            os.replace(out, old)
        os.replace(tmp, out)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    log.info("wrote the encoder of %s export %s (%s) to %s", src.kind, source, type(model).__name__, out)
    return out
