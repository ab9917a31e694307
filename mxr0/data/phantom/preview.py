"""The phantom's contact sheet (`preview_grid`): first images with their boxes and positive labels."""

from __future__ import annotations

import math
import os
from collections.abc import Iterable
from pathlib import Path

from mxr0.data.records import read_records

_BOX_COLOURS = {
    "Cardiomegaly": (255, 80, 80), "Enlarged Cardiomediastinum": (255, 150, 60), "Pleural Effusion": (60, 160, 255),
    "Pneumothorax": (255, 230, 40), "Lung Opacity": (80, 230, 120), "Consolidation": (80, 230, 120),
    "Lung Lesion": (230, 90, 255), "Atelectasis": (40, 230, 230), "Support Devices": (255, 140, 200),
    "Fracture": (255, 60, 60),
}
_SHORT = {"Enlarged Cardiomediastinum": "EnlCM", "Cardiomegaly": "Cardiomeg", "Lung Opacity": "Opacity",
          "Lung Lesion": "Lesion", "Consolidation": "Consol", "Pleural Effusion": "Effusion",
          "Pneumothorax": "PTX", "Support Devices": "Devices", "Atelectasis": "Atelect", "Pneumonia": "Pneumonia",
          "Edema": "Edema", "Fracture": "Fracture", "No Finding": "No Finding"}


def preview_grid(records_path_or_records: str | os.PathLike | Iterable[dict], out_png: str | os.PathLike, n: int = 16,
                 cols: int = 4, draw_boxes: bool = True, tile: int = 256) -> Path:
    """Write a contact sheet of the first ``n`` studies' first images to ``out_png``.

    Each tile is upscaled to ``tile`` px with the study's boxes on that image drawn as coloured
    outlines and a caption (study id, anatomy, view, sex/age, positive labels; ``?`` marks uncertain
    ones). Takes a records file / folder (paths resolved against it) or a list of records whose
    paths are absolute or relative to the working directory. The sheet is ``cols * tile`` wide and
    ``rows * (tile + 40)`` high.
    """
    from PIL import Image, ImageDraw, ImageFont

    if isinstance(records_path_or_records, (str, os.PathLike)):
        records = read_records(records_path_or_records)
    else:
        records = list(records_path_or_records)
    records = records[:n]
    if not records:
        raise ValueError("preview_grid: no records to show")
    cols = max(1, min(cols, len(records)))
    rows = math.ceil(len(records) / cols)
    cap_h = 40
    sheet = Image.new("RGB", (cols * tile, rows * (tile + cap_h)), (16, 16, 16))
    draw = ImageDraw.Draw(sheet)
    try:
        font = ImageFont.load_default(size=12)
    except TypeError:  # Pillow < 10.1 has only the bitmap font
        font = ImageFont.load_default()
    for i, r in enumerate(records):
        x0, y0 = (i % cols) * tile, (i // cols) * (tile + cap_h)
        with Image.open(r["images"][0]["path"]) as im:
            sheet.paste(im.convert("RGB").resize((tile, tile), Image.BILINEAR), (x0, y0))
        if draw_boxes:
            for b in r.get("boxes", []):
                if b.get("image_index", 0) != 0:
                    continue
                col = _BOX_COLOURS.get(b["label"], (255, 255, 255))
                draw.rectangle([x0 + b["x0"] * tile, y0 + b["y0"] * tile, x0 + b["x1"] * tile - 1, y0 + b["y1"] * tile - 1],
                               outline=col, width=2)
        pos = [(_SHORT.get(k, k) + ("?" if v == -1 else "")) for k, v in r["labels"].items()
               if v in (1, -1) and k != "No Finding"]
        if r["labels"].get("No Finding") == 1 and not pos:
            pos = ["No Finding"]
        view = "+".join(im["view"] for im in r["images"])
        line1 = f"{r['study_id']} {r['anatomy']} {view} {r.get('sex', '')}{'' if r.get('age') is None else int(r['age'])}"
        line2 = ", ".join(pos) if pos else "-"
        draw.text((x0 + 4, y0 + tile + 3), line1, fill=(230, 230, 230), font=font)
        while len(line2) > 4 and draw.textlength(line2, font=font) > tile - 8:  # keep it inside the tile
            line2 = line2[:-2].rstrip(", ") + "…"
        draw.text((x0 + 4, y0 + tile + 20), line2, fill=(255, 210, 120), font=font)
    out = Path(out_png)
    out.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(out)
    return out
