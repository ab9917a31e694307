"""Boxes in text: one module writes and parses them, for grounding, localisation and grounded reports.

Two formats (coordinates are normalised to the image **as the model saw it**, the model frame of
`mxr0.data.transforms.Geometry`; `to_original` maps parsed boxes back to the original pixel frame):

- ``plain`` (default, RadVLM style): ``[x1, y1, x2, y2]`` with two decimals, several boxes joined with
  ``", "``: ``[0.12, 0.30, 0.45, 0.62], [0.55, 0.31, 0.88, 0.60]``.
- ``tokens`` (MAIRA-2 style): ``<obj>phrase</obj><box><x12><y30><x45><y62></box>`` with ``bins`` (100)
  quantisation bins per axis; `box_special_tokens` lists the tokens to add to a tokenizer.

Round trips are exact to the quantisation step: plain rounds each coordinate to 0.01 (error <= 0.005);
tokens write the bins a box covers and parse back their outer edges (error < 1 / bins, the box never
shrinks). Parsing is tolerant: a malformed or out-of-range box yields no box and is counted in
`ParseResult.malformed`, never an exception and never a silently wrong box (x2 <= x1 or y2 <= y1 is
malformed too).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

PLAIN_BOX = re.compile(r"\[\s*([^\[\]]*?)\s*\]")
TOKEN_BOX = re.compile(r"<box>(.*?)</box>", re.S)
TOKEN_COORD = re.compile(r"<([xy])(\d+)>")
OBJ = re.compile(r"<obj>(.*?)</obj>", re.S)


@dataclass
class ParseResult:
    """Boxes found in a text (normalised x1, y1, x2, y2 in the model frame), the phrase before each
    token-format box when given with ``<obj>``, and how many box-like spans were malformed."""

    boxes: np.ndarray = field(default_factory=lambda: np.zeros((0, 4)))
    phrases: list[str] = field(default_factory=list)
    malformed: int = 0


def box_special_tokens(bins: int = 100) -> list[str]:
    """Tokens of the ``tokens`` format: ``<box> </box> <obj> </obj>`` and ``<x0>…<x{bins-1}>``, ``<y0>…``."""
    return ["<box>", "</box>", "<obj>", "</obj>"] + [f"<{a}{i}>" for a in "xy" for i in range(bins)]


def _valid(b: Sequence[float]) -> bool:
    x1, y1, x2, y2 = b
    return all(0.0 <= v <= 1.0 for v in b) and x2 > x1 and y2 > y1


def quantise(v: float, bins: int) -> int:
    return int(min(bins - 1, max(0, np.floor(v * bins))))


def format_boxes(boxes: Iterable[Sequence[float]], fmt: str = "plain", bins: int = 100, phrase: str | None = None) -> str:
    """Boxes (normalised x1, y1, x2, y2, model frame) as text; ``phrase`` is wrapped in ``<obj>`` in the
    token format (and written before the boxes in the plain one)."""
    boxes = [list(map(float, b)) for b in boxes]
    bad = [b for b in boxes if not _valid(b)]
    if bad:
        raise ValueError(f"boxes must be normalised x1 < x2, y1 < y2 in [0, 1]; got {bad[:3]}")
    if fmt == "plain":
        text = ", ".join("[" + ", ".join(f"{v:.2f}" for v in b) + "]" for b in boxes)
        return f"{phrase} {text}".strip() if phrase else text
    if fmt == "tokens":
        parts = []
        for x1, y1, x2, y2 in boxes:
            q = [quantise(x1, bins), quantise(y1, bins), quantise(x2, bins), quantise(y2, bins)]
            q[2], q[3] = max(q[2], q[0]), max(q[3], q[1])  # a sliver box keeps at least one bin
            parts.append(f"<box><x{q[0]}><y{q[1]}><x{q[2]}><y{q[3]}></box>")
        return (f"<obj>{phrase}</obj>" if phrase else "") + "".join(parts)
    raise ValueError(f"box format {fmt!r}: expected 'plain' or 'tokens'")


def parse_boxes(text: str, fmt: str = "plain", bins: int = 100) -> ParseResult:
    """Every box in ``text``; malformed ones are skipped and counted."""
    out, phrases, bad = [], [], 0
    if fmt == "plain":
        for m in PLAIN_BOX.finditer(text):
            parts = [p.strip() for p in m.group(1).split(",")]
            try:
                vals = [float(p) for p in parts]
            except ValueError:
                bad += 1
                continue
            if len(vals) != 4 or not _valid(vals):
                bad += 1
                continue
            out.append(vals)
    elif fmt == "tokens":
        last_phrase = ""
        pos = 0
        for m in TOKEN_BOX.finditer(text):
            before = text[pos:m.start()]
            objs = OBJ.findall(before)
            if objs:
                last_phrase = objs[-1].strip()
            pos = m.end()
            coords = TOKEN_COORD.findall(m.group(1))
            leftover = TOKEN_COORD.sub("", m.group(1)).strip()
            if len(coords) != 4 or leftover or [a for a, _ in coords] != ["x", "y", "x", "y"]:
                bad += 1
                continue
            idx = [int(v) for _, v in coords]
            if any(i >= bins for i in idx) or idx[2] < idx[0] or idx[3] < idx[1]:
                bad += 1
                continue
            lo = [idx[0] / bins, idx[1] / bins]
            hi = [(idx[2] + 1) / bins, (idx[3] + 1) / bins]  # inclusive bins: the box spans whole bins
            out.append([lo[0], lo[1], hi[0], hi[1]])
            phrases.append(last_phrase)
    else:
        raise ValueError(f"box format {fmt!r}: expected 'plain' or 'tokens'")
    return ParseResult(np.asarray(out, dtype=np.float64).reshape(-1, 4), phrases, bad)


def to_original(boxes_model: np.ndarray, geometry) -> np.ndarray:
    """Parsed model-frame boxes mapped to the original image's normalised frame (`Geometry.to_original`)."""
    return geometry.to_original(np.asarray(boxes_model, dtype=np.float64).reshape(-1, 4))


def to_pixels(boxes_norm: np.ndarray, height: int, width: int) -> np.ndarray:
    """Normalised boxes in pixel coordinates of an ``height`` x ``width`` image."""
    return np.asarray(boxes_norm, dtype=np.float64).reshape(-1, 4) * np.array([width, height, width, height])
