"""The model card's evaluation: Markdown tables of mxr0 evaluation outputs and the ``model-index`` results."""

from __future__ import annotations

import math
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from huggingface_hub import EvalResult

from mxr0.eval.align import markdown_report as alignment_markdown
from mxr0.eval.reports.api import markdown_report as reports_markdown
from mxr0.eval.vision.report import to_markdown
from mxr0.hub.run_folder import read_json

_SKIP_DIRS = {"checkpoints", "export", "tensorboard", "wandb", "adapter", "cache"}
_ALIGN_KEYS = ("i2t_r1", "t2i_r1", "zeroshot_mean_auroc", "grounding_miou")


def _demote(md: str, levels: int = 1) -> str:
    """Push Markdown headings down (``## x`` → ``### x``) so they nest under the card's sections."""
    out, fence = [], False
    for line in md.splitlines():
        if line.lstrip().startswith("```"):
            fence = not fence
        m = re.match(r"^(#{1,6}) ", line)
        if not fence and m and levels:
            line = "#" * min(6, len(m.group(1)) + levels) + line[len(m.group(1)):]
        out.append(line)
    return "\n".join(out)


def _f(v: Any, digits: int = 4) -> str:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return "–" if v is None else str(v)
    if isinstance(v, float) and not math.isfinite(v):
        return "–"
    return f"{v:.{digits}f}" if isinstance(v, float) else str(v)


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def training_metrics_md(results: dict) -> str:
    """The final validation metrics of a training ``results.json``: the main one first, per-class groups after."""
    metrics = results.get("metrics") or {}
    main = results.get("main_metric")
    state = results.get("state") or {}
    if not metrics:
        return "The run recorded no final evaluation metrics.\n"
    top = {k: v for k, v in metrics.items() if "/" not in k}
    per = {k: v for k, v in metrics.items() if "/" in k}
    lines = ["| metric | value |", "|---|---|"]
    for k, v in sorted(top.items(), key=lambda kv: (kv[0] != main, kv[0])):
        lines.append(f"| **{k}** (main) | **{_f(v)}** |" if k == main else f"| {k} | {_f(v)} |")
    if per:
        groups: dict[str, dict[str, Any]] = {}
        for k, v in per.items():
            g, name = k.split("/", 1)
            groups.setdefault(g, {})[name] = v
        for g, vals in groups.items():
            lines += ["", f"| {g} per class | value |", "|---|---|"]
            lines += [f"| {name} | {_f(v)} |" for name, v in vals.items()]
    if state.get("step") is not None:
        lines += ["", f"After {state['step']} optimiser steps ({state.get('samples', '?')} training samples seen); "
                      "point estimates on the evaluation split, no confidence intervals."]
    return "\n".join(lines) + "\n"


def _generic_md(res: dict) -> str:
    """A table of the numeric leaves of a JSON result (with ``median [ci_low, ci_high]`` when present)."""
    rows = []

    def walk(x: Any, key: str, depth: int) -> None:
        if isinstance(x, dict):
            if "value" in x and isinstance(x.get("value"), (int, float)):
                ci = (f"{_f(x['median'])} [{_f(x['ci_low'])}, {_f(x['ci_high'])}]"
                      if all(k in x for k in ("median", "ci_low", "ci_high")) else "")
                rows.append((key, _f(x["value"]), ci))
                return
            if depth < 4:
                for k, v in x.items():
                    walk(v, f"{key}/{k}" if key else str(k), depth + 1)
        elif isinstance(x, (int, float)) and not isinstance(x, bool):
            rows.append((key, _f(x), ""))

    walk(res, "", 0)
    if not rows:
        return ""
    has_ci = any(r[2] for r in rows)
    lines = ["| metric | value |" + (" median [95% CI] |" if has_ci else ""),
             "|---|---|" + ("---|" if has_ci else "")]
    lines += [f"| {k} | {v} |" + (f" {c} |" if has_ci else "") for k, v, c in rows[:200]]
    return "\n".join(lines) + "\n"


def kind_of(res: Any) -> str | None:
    """Which mxr0 output a JSON result is: ``vision``, ``reports``, ``align``, ``training`` or None."""
    if not isinstance(res, dict):
        return None
    if isinstance(res.get("encoders"), dict):
        return "vision"
    m = res.get("metrics")
    if isinstance(m, dict) and m and all(isinstance(v, dict) and "value" in v for v in m.values()):
        return "reports"
    if any(k in res for k in _ALIGN_KEYS):
        return "align"
    if isinstance(m, dict) and "main_metric" in res:
        return "training"
    return None


def _has_fairness(res: Any) -> bool:
    if isinstance(res, dict):
        return "fairness" in res or any(_has_fairness(v) for v in res.values())
    return False


def eval_section(path: Path, label: str) -> tuple[str, bool] | None:
    """(Markdown, has fairness slices) of one evaluation output (mxr0 JSON or Markdown), or None when unknown."""
    if path.suffix.lower() == ".md":
        try:
            text = path.read_text()
        except OSError:
            return None
        levels = [len(m.group(1)) for m in re.finditer(r"^(#{1,6}) ", text, flags=re.M)]
        shift = max(0, 4 - min(levels)) if levels else 0  # its top headings nest under "### <file>"
        return f"### {label}\n\n" + _demote(text, shift).strip() + "\n", "fairness" in text.lower()
    res = read_json(path)
    kind = kind_of(res)
    if kind == "vision":
        md = to_markdown(res, title=f"Frozen-encoder evaluation ({label})")
        return _demote(md, 1).strip() + "\n", bool(_has_fairness(res))
    if kind == "reports":
        return reports_markdown(res, title=f"Report generation ({label})"), _has_fairness(res)
    if kind == "align":
        return alignment_markdown(res, title=f"Alignment ({label})").strip() + "\n", False
    if kind == "training":
        return f"### {label}\n\n" + training_metrics_md(res), False
    if isinstance(res, dict):
        md = _generic_md(res)
        return (f"### {label}\n\n{md}", _has_fairness(res)) if md else None
    return None


def find_eval_outputs(run_dir: Path) -> list[Path]:
    """mxr0 evaluation outputs inside a run folder (``results.json`` of ``mxr0 eval vision``,
    ``align_metrics.json``, ``mxr0 eval reports`` JSON), not the training ``results.json`` at the top."""
    found = []
    for root, dirs, files in os.walk(run_dir):
        dirs[:] = sorted(d for d in dirs if d not in _SKIP_DIRS and not d.startswith(("export", ".")))
        for name in sorted(files):
            p = Path(root) / name
            if p.suffix != ".json" or p == run_dir / "results.json" or p.name.startswith("."):
                continue
            if p.stat().st_size > 20 * 2**20:
                continue
            if kind_of(read_json(p)) in ("vision", "reports", "align"):
                found.append(p)
    return found


def eval_outputs(run_dir: Path, extra: Sequence[str | os.PathLike] | None) -> list[tuple[Path, str]]:
    """(path, label) of each evaluation output of the card: those found in the run folder, then ``extra``
    (files, or folders searched like the run folder); each once, existing ones only. The label is the path
    relative to the run folder, or the file name outside it (never an absolute path)."""
    paths = find_eval_outputs(run_dir)
    for e in extra or []:
        e = Path(e)
        paths += find_eval_outputs(e) if e.is_dir() else [e]
    out, seen = [], set()
    for p in paths:
        key = p.resolve()
        if key in seen or not p.exists():
            continue
        seen.add(key)
        label = p.relative_to(run_dir).as_posix() if key.is_relative_to(run_dir.resolve()) else p.name
        out.append((p, label))
    return out


# ----------------------------------------------------------------------------------------------
# model-index: the numbers the Hub shows on the model page
# ----------------------------------------------------------------------------------------------


def _vision_metrics(res: dict, export: Path) -> list[tuple[str, Any]]:
    """Headline test metrics of the vision-suite encoder that is this run's export (not a baseline)."""
    out = []
    for enc in res["encoders"].values():
        spec = str(enc.get("spec", ""))
        if not spec or spec.startswith("random:") or Path(spec).resolve() != export.resolve():
            continue
        out += [("probe_mean_auroc", (enc.get("probe") or {}).get("mean_auroc")),
                ("knn_accuracy", (enc.get("knn") or {}).get("accuracy"))]
        out += [(f"mean_dice_{head}", h.get("mean_dice"))
                for head, h in ((enc.get("segmentation") or {}).get("heads") or {}).items()]
    return out


def _output_metrics(res: Any, export: Path) -> tuple[str | None, list[tuple[str, Any]]]:
    """(split, (metric, value) pairs) of one mxr0 evaluation output."""
    kind = kind_of(res)
    if kind == "vision":
        return (res.get("config") or {}).get("test_split", "test"), _vision_metrics(res, export)
    if kind == "reports":
        return res.get("split"), [(k, v.get("value")) for k, v in res["metrics"].items()]
    if kind == "align":
        return res.get("split"), [(k, v) for k, v in res.items() if "/" not in k]
    return None, []


def eval_results(results: dict, outputs: list[tuple[Path, str]], export: Path, *, task_type: str,
                 dataset_type: str, dataset_name: str, eval_split: str) -> list[EvalResult]:
    """The card's ``model-index`` entries: the final validation metrics of ``results.json`` (top-level ones;
    per-class values stay in the tables), then the headline numbers of each JSON evaluation output that
    are about this model (metric name: ``METRIC (LABEL)``). Non-numeric and non-finite values are left out."""

    def result(metric: str, value: Any, split: str | None, name: str) -> EvalResult:
        return EvalResult(task_type=task_type, dataset_type=dataset_type, dataset_name=dataset_name,
                          dataset_split=split, metric_type=metric, metric_name=name, metric_value=float(value))

    out = [result(k, v, eval_split, f"{k} (final validation)")
           for k, v in (results.get("metrics") or {}).items() if "/" not in k and _number(v)]
    for path, label in outputs:
        if path.suffix.lower() != ".json":
            continue
        split, metrics = _output_metrics(read_json(path), export)
        out += [result(k, v, split, f"{k} ({label})") for k, v in metrics if _number(v)]
    return out
