"""Results of the frozen-encoder suite as JSON, Markdown tables and PNG line plots.

Plots are drawn with Pillow (already a dependency), so no plotting library is needed: probe AUROC
against probe-training steps for each encoder (``probe_convergence.png``) and probe AUROC against
pretraining steps for each run (``pretraining_curve.png``), with the convergence target dashed.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

COLOURS = [(31, 119, 180), (214, 39, 40), (44, 160, 44), (255, 127, 14), (148, 103, 189), (140, 86, 75),
           (227, 119, 194), (127, 127, 127)]


def _f(v: Any, digits: int = 3) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "–"
    return f"{v:.{digits}f}" if isinstance(v, float) else str(v)


def _ci(v: Any, ci: Sequence | None) -> str:
    s = _f(v)
    if ci and all(isinstance(c, (int, float)) and math.isfinite(c) for c in ci[:2]):
        s += f" [{ci[0]:.3f}, {ci[1]:.3f}]"
    return s


def to_markdown(res: dict[str, Any], title: str = "Frozen-encoder evaluation") -> str:
    enc = res["encoders"]
    names = list(enc)
    head = "| | " + " | ".join(names) + " |"
    sep = "|---|" + "---|" * len(names)
    n = res.get("n_studies", {})
    lines = [f"## {title}", "", f"Data: `{res['data']}` ({', '.join(f'{k}: {v}' for k, v in n.items())} studies; "
             f"one image per study). 95% intervals: percentile bootstrap over test studies. Features computed in "
             f"{'/'.join(sorted({e.get('precision', 'fp32') for e in enc.values()}))}.", ""]

    if any("probe" in e for e in enc.values()):
        first = next(e["probe"] for e in enc.values() if "probe" in e)
        lines += [f"### Linear probe, test AUROC (features: {first.get('features', '')}; {first.get('policy', '')}; "
                  "chance = 0.5)", "", head, sep]
        labels = []
        for e in enc.values():
            for k in e.get("probe", {}).get("auroc", {}):
                if k not in labels:
                    labels.append(k)
        for lab in labels:
            lines.append(f"| {lab} | " + " | ".join(_f(enc[x].get("probe", {}).get("auroc", {}).get(lab)) for x in names) + " |")
        lines.append("| **mean** | " + " | ".join(
            "**" + _ci(enc[x].get("probe", {}).get("mean_auroc"), enc[x].get("probe", {}).get("mean_auroc_ci95")) + "**"
            for x in names) + " |")
        lines.append("| chosen lr (val AUROC) | " + " | ".join(
            f"{enc[x]['probe']['best']['lr']:g} ({enc[x]['probe']['val_mean_auroc']:.3f})" if "best" in enc[x].get("probe", {})
            else "–" for x in names) + " |")
        lines.append("")

    if any("knn" in e for e in enc.values()):
        k0 = next(e["knn"] for e in enc.values() if "knn" in e)
        lines += [f"### kNN {k0['target']} (k = {k0['k']}, cosine; gallery: training split, queries: test split)", "",
                  head, sep]
        lines.append("| accuracy | " + " | ".join(_ci(enc[x].get("knn", {}).get("accuracy"),
                                                       enc[x].get("knn", {}).get("accuracy_ci95")) for x in names) + " |")
        lines.append("| balanced accuracy (mean over classes) | " + " | ".join(
            _f(enc[x].get("knn", {}).get("balanced_accuracy")) for x in names) + " |")
        for key in k0["retrieval"]:
            lines.append(f"| {key} | " + " | ".join(_f(enc[x].get("knn", {}).get("retrieval", {}).get(key)) for x in names) + " |")
        for c in k0.get("per_class_accuracy", {}):
            lines.append(f"| accuracy: {c} | " + " | ".join(
                _f(enc[x].get("knn", {}).get("per_class_accuracy", {}).get(c)) for x in names) + " |")
        lines.append("")

    if any("heads" in e.get("segmentation", {}) for e in enc.values()):
        s0 = next(e["segmentation"] for e in enc.values() if "heads" in e.get("segmentation", {}))
        lines += [f"### Segmentation with a frozen backbone, test Dice ({s0['n_train']} training / {s0['n_test']} "
                  f"test images; blocks {s0['layers']})", "", head, sep]
        for h in s0["heads"]:
            for organ in s0["masks"]:
                lines.append(f"| {h}: {organ} | " + " | ".join(
                    _f(enc[x].get("segmentation", {}).get("heads", {}).get(h, {}).get("dice", {}).get(organ)) for x in names) + " |")
            lines.append(f"| **{h}: mean** | " + " | ".join(
                "**" + _ci(enc[x].get("segmentation", {}).get("heads", {}).get(h, {}).get("mean_dice"),
                           enc[x].get("segmentation", {}).get("heads", {}).get(h, {}).get("mean_dice_ci95")) + "**"
                for x in names) + " |")
        lines.append("| organ-position prior (mean Dice) | " + " | ".join(
            _f(enc[x].get("segmentation", {}).get("prior_mean_dice")) for x in names) + " |")
        lines.append("")

    fair_rows = _fairness_rows(res)
    if fair_rows:
        lines += ["### Fairness: metric per subgroup (test split) and the largest gap", "",
                  "| metric | attribute | group | " + " | ".join(names) + " |", "|---|---|---|" + "---|" * len(names)]
        lines += fair_rows
        lines.append("")

    conv = res.get("convergence", {})
    for kind, label in (("probe", "probe-training steps"), ("pretraining", "pretraining steps")):
        c = conv.get(kind)
        if not c:
            continue
        lines += [f"### Convergence: {label} to reach validation mean AUROC {c['target']:.3f}", "",
                  "| encoder | steps | speed-up vs " + str(c["reference"]) + " |", "|---|---|---|"]
        for k, s in c["steps_to_target"].items():
            sp = c["speedup"].get(k)
            lines.append(f"| {k} | {s if s is not None else 'not reached'} | {f'{sp:.2f}x' if sp else '–'} |")
        lines.append("")
    return "\n".join(lines)


def _fairness_rows(res: dict[str, Any]) -> list[str]:
    enc = res["encoders"]
    names = list(enc)
    metrics: list[tuple[str, list[str]]] = [("probe mean AUROC", ["probe", "fairness"])]
    metrics += [("kNN accuracy", ["knn", "fairness", "accuracy"]), ("kNN mAP", ["knn", "fairness", "mAP"])]
    heads = set()
    for e in enc.values():
        heads |= set(e.get("segmentation", {}).get("heads", {}))
    metrics += [(f"Dice ({h})", ["segmentation", "heads", h, "fairness"]) for h in sorted(heads)]

    def get(e, path):
        for p in path:
            if not isinstance(e, dict) or p not in e:
                return None
            e = e[p]
        return e

    rows = []
    for label, path in metrics:
        sl = {x: get(enc[x], path) for x in names}
        if not any(sl.values()):
            continue
        attrs = next(v for v in sl.values() if v)
        for attr in attrs:
            groups = []
            for v in sl.values():
                for gname in (v or {}).get(attr, {}).get("groups", {}):
                    if gname not in groups:
                        groups.append(gname)
            for gname in groups:
                cells = []
                for x in names:
                    gr = ((sl[x] or {}).get(attr, {}).get("groups", {}).get(gname) or {})
                    cells.append(f"{_f(gr.get('value'))} (n={gr.get('n', 0)})")
                rows.append(f"| {label} | {attr} | {gname} | " + " | ".join(cells) + " |")
            rows.append(f"| {label} | {attr} | **largest gap** | " + " | ".join(
                _f((sl[x] or {}).get(attr, {}).get("gap")) for x in names) + " |")
    return rows


# ---------------------------------------------------------------------------------------------
# PNG line plots with Pillow
# ---------------------------------------------------------------------------------------------


def _nice_ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    if hi <= lo:
        hi = lo + 1.0
    raw = (hi - lo) / n
    mag = 10 ** math.floor(math.log10(raw))
    step = min((m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw), default=raw)
    start = math.ceil(lo / step) * step
    ticks, t = [], start
    while t <= hi + 1e-9:
        ticks.append(round(t, 10))
        t += step
    return ticks


def line_plot(series: dict[str, tuple[Sequence[float], Sequence[float]]], path: str | Path, title: str = "",
              xlabel: str = "", ylabel: str = "", hline: float | None = None, size: tuple[int, int] = (800, 500)) -> Path:
    """Draw ``name -> (x, y)`` series as a PNG line plot with axes, ticks, a legend and an optional
    dashed horizontal line (a target)."""
    from PIL import Image, ImageDraw, ImageFont

    w, h = size
    img = Image.new("RGB", size, "white")
    d = ImageDraw.Draw(img)
    font = ImageFont.load_default()
    left, right, top, bottom = 70, 20, 40, 55
    xs = [float(x) for s in series.values() for x in s[0]]
    ys = [float(y) for s in series.values() for y in s[1] if y is not None and math.isfinite(y)]
    if hline is not None:
        ys.append(hline)
    if not xs or not ys:
        xs, ys = [0.0, 1.0], [0.0, 1.0]
    x0, x1 = min(xs), max(xs)
    y0, y1 = min(ys), max(ys)
    pad = 0.05 * (y1 - y0 or 1.0)
    y0, y1 = y0 - pad, y1 + pad
    if x1 == x0:
        x1 = x0 + 1

    def px(x, y):
        return (left + (x - x0) / (x1 - x0) * (w - left - right), top + (1 - (y - y0) / (y1 - y0)) * (h - top - bottom))

    d.rectangle([left, top, w - right, h - bottom], outline=(0, 0, 0))
    for t in _nice_ticks(y0, y1):
        if y0 <= t <= y1:
            _, yy = px(x0, t)
            d.line([left - 4, yy, left, yy], fill=(0, 0, 0))
            d.line([left + 1, yy, w - right - 1, yy], fill=(235, 235, 235))
            d.text((left - 8, yy), f"{t:g}", fill=(0, 0, 0), font=font, anchor="rm")
    for t in _nice_ticks(x0, x1):
        if x0 <= t <= x1:
            xx, _ = px(t, y0)
            d.line([xx, h - bottom, xx, h - bottom + 4], fill=(0, 0, 0))
            d.text((xx, h - bottom + 8), f"{t:g}", fill=(0, 0, 0), font=font, anchor="mt")
    if hline is not None and y0 <= hline <= y1:
        _, yy = px(x0, hline)
        for xx in range(left, w - right, 12):
            d.line([xx, yy, min(xx + 6, w - right), yy], fill=(90, 90, 90), width=1)
        d.text((w - right - 4, yy - 3), f"target {hline:.3f}", fill=(90, 90, 90), font=font, anchor="rb")
    for i, (name, (sx, sy)) in enumerate(series.items()):
        col = COLOURS[i % len(COLOURS)]
        pts = [px(float(a), float(b)) for a, b in zip(sx, sy) if b is not None and math.isfinite(b)]
        if len(pts) > 1:
            d.line(pts, fill=col, width=2)
        for p in pts:
            d.ellipse([p[0] - 2.5, p[1] - 2.5, p[0] + 2.5, p[1] + 2.5], fill=col)
        ly = top + 8 + 14 * i
        d.line([left + 10, ly, left + 30, ly], fill=col, width=3)
        d.text((left + 36, ly), name, fill=(0, 0, 0), font=font, anchor="lm")
    d.text((w / 2, 14), title, fill=(0, 0, 0), font=font, anchor="mm")
    d.text((w / 2, h - 14), xlabel, fill=(0, 0, 0), font=font, anchor="mm")
    d.text((10, top - 18), ylabel, fill=(0, 0, 0), font=font, anchor="lm")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)
    return path


def write_report(res: dict[str, Any], out_dir: str | Path, title: str = "Frozen-encoder evaluation") -> dict[str, str]:
    """Write ``results.json``, ``results.md`` and the convergence plots; returns their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files = {"json": out / "results.json", "markdown": out / "results.md"}
    files["json"].write_text(json.dumps(res, indent=2, default=_json_default))
    files["markdown"].write_text(to_markdown(res, title) + "\n")
    conv = res.get("convergence", {})
    if conv.get("probe"):
        c = conv["probe"]
        series = {k: (v["steps"], v["val_mean_auroc"]) for k, v in c["curves"].items()}
        files["probe_png"] = line_plot(series, out / "probe_convergence.png", "Linear-probe convergence",
                                       "probe training step", "validation mean AUROC", hline=c["target"])
    if conv.get("pretraining"):
        c = conv["pretraining"]
        series = {k: (v["steps"], v["probe_mean_auroc"]) for k, v in c["curves"].items()}
        files["pretraining_png"] = line_plot(series, out / "pretraining_curve.png", "Probe AUROC during pretraining",
                                             "pretraining step", "probe mean AUROC", hline=c["target"])
    return {k: str(v) for k, v in files.items()}


def _json_default(o):
    import numpy as np

    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")
