"""Instruction examples for the generation task mixture: one study record → chat examples of several kinds.

Kinds (``KINDS``), each a user turn and the assistant's answer, over the same VLM:

- ``report``: the images (+ context sections) → ``Findings: …`` / ``Impression: …`` (MAIRA-2 style inputs).
- ``vqa``: one example per question of the record's ``qa``: the question (closed questions with more
  than yes/no list their options) → the answer.
- ``grounding`` (phrase grounding, MS-CXR style): one example per distinct box phrase: "Locate this
  finding: <phrase>" → its boxes as text.
- ``localisation`` (NIH / VinDr / RSNA style): one example per box label: "Locate the <label> …" → every
  box of that label.
- ``grounded_report``: the report whose sentences carry the boxes of the phrases they mention (MAIRA-2
  grounded reporting).

Boxes are written by `mxr0.data.boxes_text` in the frame the model sees (the `Geometry` of the
encoder's transform for that image: crop or pad), and parsed predictions are mapped back to the original
frame for scoring, so a recipe may change the image size or the crop without touching the targets.
Only the boxes drawn on the example's image (``image_index``) are used.

`MixtureSampler` draws an epoch of examples with per-kind sampling weights (RadVLM / CheXagent style
multi-task training), reproducibly from (seed, epoch), optionally length-grouped.
"""

from __future__ import annotations

import random
import re
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from mxr0.config.tasks import KINDS  # noqa: F401 (the example kinds a recipe weights; re-exported)
from mxr0.data.boxes_text import OBJ, TOKEN_BOX, format_boxes, parse_boxes
from mxr0.data.text import split_sentences
from mxr0.data.xray import read_dicom_meta

BOX_KINDS = ("grounding", "localisation", "grounded_report")
"""Kinds whose answers hold boxes: their images are never augmented geometrically (the boxes would move)."""
FRONTAL, LATERAL = ("PA", "AP", "AP_SUPINE"), ("LATERAL", "LL", "RL")
YES_NO = {"yes", "no"}
PLAIN_GROUP = re.compile(r"(?:[ \t]*\[[^\[\]\n]*\](?:[ \t]*,)?)+")
"""A run of plain boxes (``[…], […]``) after a grounded sentence."""


@dataclass
class Example:
    """One chat example: ``record`` indexes the dataset's records, ``images`` are (view name, path)."""

    record: int
    kind: str
    images: list[tuple[str, str]]
    instruction: str
    answer: str = ""
    """Fixed answer text (report, VQA); box kinds build theirs from ``boxes`` in the model frame."""
    boxes: list[list[float]] = field(default_factory=list)
    """Reference boxes in the ORIGINAL image's normalised frame (grounding, localisation)."""
    meta: dict = field(default_factory=dict)
    """VQA: answer_type, question_type, options; grounding: phrase / label; grounded report: sentences."""


def report_answer(record: dict, sections: Sequence[str]) -> str:
    """The target text: one ``Section: text`` line per non-empty section."""
    return "\n".join(f"{s.capitalize()}: {' '.join(record[s].split())}" for s in sections if (record.get(s) or "").strip())


def study_images(record: dict, views: Sequence[str]) -> list[tuple[str, str]]:
    """(view name, image path) of the images a study gives for ``views`` (frontal first, the prior frontal
    last: MAIRA-2's order)."""
    cur = [im for im in record["images"] if im.get("role", "current") == "current"]
    prior = [im for im in record["images"] if im.get("role") == "prior" and im["view"] in FRONTAL]
    out = []
    for v in [v for v in views if v != "prior"] + [v for v in views if v == "prior"]:
        pool = {"frontal": [im for im in cur if im["view"] in FRONTAL], "lateral": [im for im in cur if im["view"] in LATERAL],
                "prior": prior}[v]
        if pool:
            out.append(("prior frontal" if v == "prior" else v, pool[0]["path"]))
    return out


def main_image(record: dict) -> tuple[int, str] | None:
    """(index, path) of the image a single-image example uses: the first current frontal view, else the
    first current image (non-chest studies: hand PA, knee AP, … or unknown views)."""
    cur = [(i, im) for i, im in enumerate(record["images"]) if im.get("role", "current") == "current"]
    for i, im in cur:
        if im["view"] in FRONTAL:
            return i, im["path"]
    return (cur[0][0], cur[0][1]["path"]) if cur else None


def vqa_prompt(q: dict) -> str:
    """The question; closed questions whose options are not just yes/no list them."""
    opts = [str(o) for o in (q.get("options") or [])]
    text = q["question"].strip()
    if q.get("answer_type") == "closed" and opts and set(o.lower() for o in opts) != YES_NO and "Options:" not in text:
        text += " Options: " + ", ".join(opts) + "."
    return text


def _boxes_on(record: dict, image_index: int) -> list[dict]:
    return [b for b in record.get("boxes") or [] if int(b.get("image_index", 0)) == image_index]


def _xyxy(b: dict) -> list[float]:
    return [float(b["x0"]), float(b["y0"]), float(b["x1"]), float(b["y1"])]


@dataclass
class Prompts:
    """The user instructions of each kind (``{phrase}`` / ``{label}`` are filled in)."""

    report: str = "Write the findings and impression of this chest X-ray report."
    grounding: str = "Locate this finding: {phrase}."
    localisation: str = "Locate every {label} on this image."
    grounded_report: str = ("Write the findings and impression of this chest X-ray report, with a bounding box after "
                            "each finding that can be localised.")


def build_examples(records: Sequence[dict], kinds: Sequence[str], *, views: Sequence[str] = ("frontal",),
                   target_sections: Sequence[str] = ("findings", "impression"), prompts: Prompts | None = None,
                   vqa_answer_types: Sequence[str] = ("closed", "open")) -> tuple[list[Example], dict[str, int]]:
    """Examples of ``kinds`` from ``records`` and, per kind, how many records gave none (counted, not errors:
    a study without QA simply has no VQA example)."""
    prompts = prompts or Prompts()
    bad = [k for k in kinds if k not in KINDS]
    if bad:
        raise ValueError(f"unknown task kind(s) {bad}; choose from {list(KINDS)}")
    out: list[Example] = []
    empty: dict[str, int] = defaultdict(int)
    for ri, r in enumerate(records):
        for kind in kinds:
            n0 = len(out)
            if kind in ("report", "grounded_report"):
                imgs = study_images(r, views)
                answer = report_answer(r, target_sections)
                if imgs and imgs[0][0] == "frontal" and answer:
                    if kind == "report":
                        out.append(Example(ri, kind, imgs, prompts.report, answer))
                    else:
                        mi = main_image(r)
                        boxes = _boxes_on(r, mi[0]) if mi and mi[1] == imgs[0][1] else []
                        out.append(Example(ri, kind, imgs, prompts.grounded_report, answer,
                                           meta={"phrases": [(b["phrase"], _xyxy(b)) for b in boxes]}))
            else:
                mi = main_image(r)
                if mi is None:
                    empty[kind] += 1
                    continue
                view = "frontal" if r["images"][mi[0]]["view"] in FRONTAL else "image"
                imgs = [(view, mi[1])]
                if kind == "vqa":
                    for q in r.get("qa") or []:
                        if q.get("answer_type") in vqa_answer_types and str(q.get("answer", "")).strip():
                            out.append(Example(ri, kind, imgs, vqa_prompt(q), str(q["answer"]).strip(),
                                               meta={k: q.get(k) for k in ("answer_type", "question_type", "options")}))
                else:
                    key = "phrase" if kind == "grounding" else "label"
                    groups: dict[str, list[list[float]]] = {}
                    for b in _boxes_on(r, mi[0]):
                        name = str(b.get(key) or "").strip()
                        if name:
                            groups.setdefault(name, []).append(_xyxy(b))
                    for name, bxs in groups.items():
                        text = getattr(prompts, kind).format(phrase=name, label=name.lower())
                        out.append(Example(ri, kind, imgs, text, boxes=bxs, meta={key: name}))
            if len(out) == n0:
                empty[kind] += 1
    return out, dict(empty)


# ---------------------------------------------------------------------------------------------------
# answers with boxes (model frame)
# ---------------------------------------------------------------------------------------------------
def boxes_answer(boxes_model: np.ndarray, fmt: str, phrase: str | None = None) -> str:
    """Model-frame boxes as the answer text (boxes cropped away by the transform are dropped; none left →
    ``"none"``)."""
    keep = [b for b in np.asarray(boxes_model, dtype=np.float64).reshape(-1, 4) if not np.isnan(b).any()]
    keep = [b for b in keep if b[2] > b[0] and b[3] > b[1]]
    return format_boxes(keep, fmt, phrase=phrase if fmt == "tokens" else None) if keep else "none"


def grounded_report_text(answer: str, phrases: Sequence[tuple[str, np.ndarray]], fmt: str) -> str:
    """The report with each sentence that mentions a box phrase followed by that phrase's boxes
    (model frame): plain ``Sentence. [x1, y1, x2, y2]``, tokens ``<obj>Sentence.</obj><box>…</box>``."""

    lines = []
    for line in answer.split("\n"):
        head, sep, body = line.partition(": ")
        if not sep:
            head, body = "", line
        parts = []
        for s in split_sentences(body):
            low = s.lower()
            boxes = [b for p, bx in phrases if p and p.lower() in low for b in np.asarray(bx).reshape(-1, 4)
                     if not np.isnan(b).any() and b[2] > b[0] and b[3] > b[1]]
            if not boxes:
                parts.append(s)
            elif fmt == "tokens":
                parts.append(format_boxes(boxes, "tokens", phrase=s))
            else:
                parts.append(f"{s} {format_boxes(boxes, 'plain')}")
        lines.append((f"{head}: " if head else "") + " ".join(parts))
    return "\n".join(lines)


def parse_grounded_report(text: str, fmt: str) -> tuple[str, list[tuple[str, np.ndarray]], int]:
    """(plain report without boxes, [(sentence, model-frame boxes)] of the grounded sentences, malformed box count)."""
    grounded: list[tuple[str, np.ndarray]] = []
    malformed = 0
    if fmt == "tokens":
        for m in re.finditer(r"<obj>(.*?)</obj>((?:\s*<box>.*?</box>)+)", text, re.S):
            res = parse_boxes(m.group(2), "tokens")
            malformed += res.malformed
            if len(res.boxes):
                grounded.append((m.group(1).strip(), res.boxes))
        plain = OBJ.sub(lambda m: m.group(1), TOKEN_BOX.sub("", text))
    else:
        pos = 0
        for m in PLAIN_GROUP.finditer(text):
            res = parse_boxes(m.group(0), "plain")
            malformed += res.malformed
            before = text[pos:m.start()]
            sentence = re.split(r"(?<=[.!?])\s+|\n|: ", before.strip())[-1].strip() if before.strip() else ""
            if len(res.boxes) and sentence:
                grounded.append((sentence, res.boxes))
            pos = m.end()
        plain = PLAIN_GROUP.sub("", text)
    plain = "\n".join(" ".join(line.split()) for line in plain.split("\n"))
    return plain, grounded, malformed


# ---------------------------------------------------------------------------------------------------
# image sizes (for the box frame), read from headers only
# ---------------------------------------------------------------------------------------------------
_SIZES: dict[str, tuple[int, int]] = {}


def image_size(path: str | Path) -> tuple[int, int]:
    """(height, width) of an image file from its header (PNG / JPEG via Pillow, DICOM Rows / Columns); cached."""
    key = str(path)
    if key not in _SIZES:
        from PIL import Image, UnidentifiedImageError

        try:
            with Image.open(key) as im:
                _SIZES[key] = (int(im.height), int(im.width))
        except UnidentifiedImageError:

            meta = read_dicom_meta(key)
            rows, cols = meta.get("Rows"), meta.get("Columns")
            if not rows or not cols:
                raise ValueError(f"{key}: cannot read the image size (no Rows / Columns in the DICOM header)") from None
            _SIZES[key] = (int(rows), int(cols))
    return _SIZES[key]


# ---------------------------------------------------------------------------------------------------
# sampling
# ---------------------------------------------------------------------------------------------------
class MixtureSampler(torch.utils.data.Sampler[int]):
    """An epoch of ``len(kinds)`` draws: each kind gets a share of the epoch proportional to its weight,
    filled by cycling through its examples in a fresh shuffle (so a small kind is repeated, a large one
    subsampled); the order depends only on (seed, epoch). With ``lengths`` and ``batch_size``, runs of
    ``batch_size`` have similar lengths (shuffled megabatches of 50 batches sorted by length)."""

    def __init__(self, kinds: Sequence[str], weights: dict[str, float], seed: int, lengths: Sequence[int] | None = None,
                 batch_size: int = 1):
        self.kinds, self.seed, self.epoch = list(kinds), seed, 0
        self.lengths, self.batch_size = lengths, batch_size
        self.by_kind: dict[str, list[int]] = defaultdict(list)
        for i, k in enumerate(self.kinds):
            self.by_kind[k].append(i)
        missing = [k for k, w in weights.items() if w > 0 and k not in self.by_kind]
        if missing:
            raise ValueError(f"task kinds {missing} have a sampling weight but no examples in the training data")
        w = {k: float(weights.get(k, 0.0)) for k in self.by_kind}
        total = sum(w.values())
        if total <= 0:
            raise ValueError(f"sampling weights {weights} give nothing to sample")
        n = len(self.kinds)
        share = {k: n * v / total for k, v in w.items()}
        self.counts = {k: int(np.floor(v)) for k, v in share.items()}
        for k in sorted(share, key=lambda k: (self.counts[k] - share[k], k))[: n - sum(self.counts.values())]:
            self.counts[k] += 1  # largest remainders: the epoch keeps exactly n draws

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return sum(self.counts.values())

    def __iter__(self):
        rng = random.Random(self.seed * 1_000_003 + self.epoch)
        idx: list[int] = []
        for k in sorted(self.counts):
            pool, need = self.by_kind[k], self.counts[k]
            while need > 0:
                perm = pool[:]
                rng.shuffle(perm)
                idx += perm[:need]
                need -= len(perm[:need])
        rng.shuffle(idx)
        if self.lengths is None or self.batch_size <= 1:
            return iter(idx)
        return iter(length_grouped(idx, self.lengths, self.batch_size, rng))


def length_grouped(idx: list[int], lengths: Sequence[int], batch_size: int, rng: random.Random) -> list[int]:
    """``idx`` reordered so that runs of ``batch_size`` have similar lengths (less padding): megabatches of
    50 batches each sorted by length, then the batch order shuffled."""
    mega = 50 * batch_size
    order: list[int] = []
    for s in range(0, len(idx), mega):
        order += sorted(idx[s:s + mega], key=lambda i: -lengths[i])
    batches = [order[s:s + batch_size] for s in range(0, len(order), batch_size)]
    rng.shuffle(batches)
    return [i for b in batches for i in b]
