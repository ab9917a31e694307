"""Publication: a model card for a training run, and ``mxr0 push`` to the Hugging Face Hub.

    mxr0 push runs/tiny-classify --repo-id my-org/tiny-classify            private repo, branch main
    mxr0 push runs/xr0 --repo-id my-org/xr0 --revision v0.1 --eval runs/xr0/eval-vision/results.json
    mxr0 push runs/xr0 --repo-id my-org/xr0 --card-only card.md            write the card, upload nothing

What is uploaded: the run's Hugging Face export (``RUN_DIR/export``: config, safetensors weights,
processor / tokenizer files, the ``mxr0_*.json`` settings, a LoRA ``adapter/`` when there is one) and a
generated ``README.md`` (the model card). Never uploaded: ``checkpoints/`` (optimizer states), logs,
TensorBoard files, the training data.

The card holds the architecture and base checkpoints, the resolved training recipe (run folder and local
paths redacted: a local path keeps only its last component), the data section, evaluation tables (final
validation metrics from ``results.json`` and any ``mxr0 eval vision|reports|align`` outputs found in the
run folder or passed with ``--eval``, with bootstrap medians and 95% intervals and fairness slices where
present), intended use with a research-only disclaimer, and limitations.

The token comes from the ``token`` argument, else ``HF_TOKEN``, else the stored login
(``huggingface-cli login`` / ``hf auth login``); it is never logged, printed or written into the card.
``HF_ENDPOINT`` (or ``endpoint``) selects another Hub server: ``https://``, or plain ``http://`` to a loopback
host only (127.0.0.0/8, ::1, localhost), since the token goes with every request (`check_endpoint`).
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import struct
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from mxr0 import __version__
from mxr0.eval.align import markdown_report as alignment_markdown
from mxr0.eval.reports.api import markdown_report as reports_markdown
from mxr0.eval.vision.report import to_markdown
from mxr0.models.download import is_hub_id, scrub_tokens  # noqa: F401 (moved; re-exported)
from mxr0.tasks import get_task_class
from mxr0.tasks.base import Task

log = logging.getLogger("mxr0.hub")

TAGS = ["radiology", "x-ray", "medical", "mxr0"]
BASE_MODEL_FIELDS = ("init_from", "encoder", "vision", "text", "llm")
"""``model.*`` fields of the recipes that name a starting checkpoint (a Hub id or a local path)."""

# files / folders of an export that are never uploaded (training state, not the model)
EXCLUDE_PATTERNS = ("checkpoints/*", "optimizer*", "scheduler*", "rng_state*", "random_states*", "*.tmp*", ".*",
                    "training_args.bin", "README.md")

DISCLAIMER = (
    "**Research use only. Not a medical device.** This model has not been cleared or approved by any regulatory "
    "authority and has not been validated for clinical use. Its outputs must not be used for diagnosis, triage, "
    "treatment decisions or any other clinical purpose, and must not replace the judgement of a qualified "
    "radiologist."
)

# an absolute POSIX path that is not part of a URL, a word or a fraction: /a/b..., ~/a..., C:\a...
_ABS_PATH_RE = re.compile(r"(?<![\w:/.\]\)])(?:~|[A-Za-z]:)?[/\\](?:[\w.@+-]+[/\\])+[\w.@+-]*")


class HubError(RuntimeError):
    """Pushing to the Hub failed or cannot start (no token, offline mode, no export); the message says why and how to fix it."""


# ----------------------------------------------------------------------------------------------
# Redaction
# ----------------------------------------------------------------------------------------------


def _redact_abs_paths(text: str) -> str:
    """Absolute local paths (which may name users and machines) → ``<local>/<last component>``."""

    def sub(m: re.Match) -> str:
        p = m.group(0).rstrip("/\\")
        name = re.split(r"[/\\]", p)[-1] if p else ""
        return f"<local>/{name}" if name else "<local>"

    return _ABS_PATH_RE.sub(sub, text)


def _redact_value(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _redact_value(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_redact_value(v) for v in value]
    if isinstance(value, str) and value and not is_hub_id(value):
        looks_path = (value.startswith(("/", "~", "./", "../")) or re.match(r"^[A-Za-z]:[/\\]", value)
                      or (("/" in value or "\\" in value) and " " not in value.strip()))
        if looks_path and not value.startswith(("http://", "https://")):
            name = re.split(r"[/\\]", value.rstrip("/\\"))[-1]
            return f"<local>/{name}" if name else "<local>"
    return value


def redact_recipe(raw: dict) -> dict:
    """The resolved recipe with the run folder removed and local paths cut to their last component;
    Hub ids (``org/name``) are kept."""
    raw = json.loads(json.dumps(raw, default=str))
    if isinstance(raw.get("train"), dict) and "output_dir" in raw["train"]:
        raw["train"]["output_dir"] = "<redacted>"
    return _redact_value(raw)


# ----------------------------------------------------------------------------------------------
# Reading a run folder
# ----------------------------------------------------------------------------------------------


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _load_recipe_raw(run_dir: Path) -> dict:
    path = run_dir / "recipe.yaml"
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: {run_dir} is not an mxr0 training run folder "
                                "(it should hold recipe.yaml, results.json and export/)")
    raw = yaml.safe_load(path.read_text()) or {}
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: expected a mapping")
    return raw


def export_dir_of(run_dir: str | os.PathLike) -> Path:
    """The Hugging Face folder of a run: ``RUN_DIR/export`` (or RUN_DIR itself when it is an export)."""
    run_dir = Path(run_dir)
    if (run_dir / "export" / "config.json").exists():
        return run_dir / "export"
    if (run_dir / "config.json").exists():
        return run_dir
    raise FileNotFoundError(f"no exported model in {run_dir}: expected {run_dir / 'export'}/config.json. Finish the "
                            f"training run, or write one from a checkpoint with: mxr0 export {run_dir}")


def safetensors_param_count(folder: Path) -> int | None:
    """Number of parameters from the safetensors headers (no weights are read)."""
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        return None
    total = 0
    for f in files:
        try:
            with open(f, "rb") as fh:
                (n,) = struct.unpack("<Q", fh.read(8))
                header = json.loads(fh.read(n))
        except (OSError, ValueError, struct.error):
            return None
        for k, v in header.items():
            if k != "__metadata__" and isinstance(v, dict):
                total += math.prod(v.get("shape") or [1])
    return total


def _fmt_count(n: int | None) -> str:
    if n is None:
        return "unknown"
    for div, unit in ((1e9, "B"), (1e6, "M"), (1e3, "k")):
        if n >= div:
            return f"{n / div:.2f}{unit} ({n:,})"
    return f"{n:,}"


_ARCH_KEYS = ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "image_size",
              "patch_size", "num_register_tokens", "vocab_size", "max_position_embeddings", "projection_dim",
              "num_labels")


def _arch_rows(cfg: dict, prefix: str = "") -> list[tuple[str, str]]:
    rows = []
    if "model_type" in cfg:
        rows.append((f"{prefix}model_type", f"`{cfg['model_type']}`"))
    if prefix == "" and cfg.get("architectures"):
        rows.append(("architectures", ", ".join(f"`{a}`" for a in cfg["architectures"])))
    for k in _ARCH_KEYS:
        if k == "num_labels" and "id2label" in cfg:
            rows.append((f"{prefix}num_labels", str(len(cfg["id2label"]))))
        elif k in cfg and cfg[k] is not None:
            rows.append((f"{prefix}{k}", str(cfg[k])))
    for sub in ("vision_config", "text_config"):
        if isinstance(cfg.get(sub), dict):
            rows += _arch_rows(cfg[sub], prefix=f"{sub}.")
    return rows


def _git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=Path(__file__).resolve().parent,
                             capture_output=True, text=True, timeout=5)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=Path(__file__).resolve().parent, capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0 or not out.stdout.strip():
        return None
    return out.stdout.strip() + (" (with local changes)" if dirty.returncode == 0 and dirty.stdout.strip() else "")


def _is_phantom(data: dict) -> bool:
    """Trained on the procedurally drawn phantom set (``data.source: phantom`` or phantom records)."""
    if data.get("source") == "phantom":
        return True
    p = Path(str(data.get("path", "")))
    folder = p if p.is_dir() else p.parent
    if (folder / "phantom.json").exists():
        return True
    rec = folder / "records.jsonl" if p.is_dir() else p
    if rec.suffix == ".jsonl" and rec.is_file():
        try:
            with open(rec) as f:
                first = json.loads(f.readline() or "{}")
            return first.get("source") == "phantom"
        except (OSError, ValueError):
            return False
    return False


def _data_counts(data: dict) -> dict[str, dict[str, int]] | None:
    """``{"split": {split: n}, "source": {source: n}}`` of the records when they are readable here and small."""
    p = Path(str(data.get("path", "")))
    if p.is_dir():
        p = next((p / n for n in ("records.jsonl", "records.parquet") if (p / n).exists()), p)
    if not p.is_file():
        return None
    counts: dict[str, dict[str, int]] = {"split": {}, "source": {}}
    try:
        if p.suffix == ".jsonl":
            if p.stat().st_size > 64 * 2**20:
                return None
            with open(p) as f:
                rows = (json.loads(line) for line in f if line.strip())
                for r in rows:
                    for k in counts:
                        counts[k][str(r.get(k))] = counts[k].get(str(r.get(k)), 0) + 1
        elif p.suffix == ".parquet":
            import pyarrow.parquet as pq

            table = pq.read_table(p, columns=["split", "source"])
            for k in counts:
                for v in table.column(k).to_pylist():
                    counts[k][str(v)] = counts[k].get(str(v), 0) + 1
        else:
            return None
    except Exception:  # the counts are a nicety; the card never fails for them
        return None
    return counts


# ----------------------------------------------------------------------------------------------
# Evaluation tables
# ----------------------------------------------------------------------------------------------


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


def _training_metrics_md(results: dict) -> str:
    metrics = results.get("metrics") or {}
    main = results.get("main_metric")
    state = results.get("state") or {}
    lines = []
    top = {k: v for k, v in metrics.items() if "/" not in k}
    per = {k: v for k, v in metrics.items() if "/" in k}
    if not metrics:
        return "The run recorded no final evaluation metrics.\n"
    lines += ["| metric | value |", "|---|---|"]
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


def _kind_of(res: Any) -> str | None:
    if not isinstance(res, dict):
        return None
    if isinstance(res.get("encoders"), dict):
        return "vision"
    m = res.get("metrics")
    if isinstance(m, dict) and m and all(isinstance(v, dict) and "value" in v for v in m.values()):
        return "reports"
    if any(k in res for k in ("i2t_r1", "t2i_r1", "zeroshot_mean_auroc", "grounding_miou")):
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
    res = _read_json(path)
    kind = _kind_of(res)
    if kind == "vision":

        md = to_markdown(res, title=f"Frozen-encoder evaluation ({label})")
        return _demote(md, 1).strip() + "\n", bool(_has_fairness(res))
    if kind == "reports":

        return reports_markdown(res, title=f"Report generation ({label})"), _has_fairness(res)
    if kind == "align":

        return alignment_markdown(res, title=f"Alignment ({label})").strip() + "\n", False
    if kind == "training":
        return f"### {label}\n\n" + _training_metrics_md(res), False
    if isinstance(res, dict):
        md = _generic_md(res)
        return (f"### {label}\n\n{md}", _has_fairness(res)) if md else None
    return None


_SKIP_DIRS = {"checkpoints", "export", "tensorboard", "wandb", "adapter", "cache"}


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
            if _kind_of(_read_json(p)) in ("vision", "reports", "align"):
                found.append(p)
    return found


# ----------------------------------------------------------------------------------------------
# The card
# ----------------------------------------------------------------------------------------------


def card_info_of(task: str, repo: str, export: Path):
    """The task's model-card details (`mxr0.tasks.base.CardInfo`: pipeline tag, summary, usage snippet,
    limitations), declared by the task class; a task mxr0 does not know gets the generic ones."""

    try:
        cls = get_task_class(task)
    except KeyError:
        cls = type("UnknownTask", (Task,), {"name": task})
    return cls.card_info(repo, export)


def _front_matter(meta: dict) -> str:
    return "---\n" + yaml.safe_dump(meta, sort_keys=False, allow_unicode=True) + "---\n"


def render_model_card(run_dir: str | os.PathLike, extra_eval: Sequence[str | os.PathLike] | None = None,
                      base_models: Sequence[str] | None = None, repo_id: str | None = None,
                      datasets: Sequence[str] | None = None, license: str = "other") -> str:
    """The Hub model card (``README.md``) of a training run folder, as Markdown with YAML front matter.

    ``extra_eval``: evaluation outputs to include besides those found in the run folder (mxr0 JSON
    results of ``eval vision / reports / align``, or Markdown files, or folders holding them).
    ``base_models``: Hub ids of the starting checkpoints; default: the recipe's ``model.init_from /
    encoder / vision / text / llm`` that are Hub ids (local paths are never listed).
    ``repo_id``: the Hub repository, used in the loading snippet. ``datasets``: Hub dataset ids.
    """

    run_dir = Path(run_dir)
    raw = _load_recipe_raw(run_dir)
    task = str(raw.get("task", "classify"))
    model_cfg = raw.get("model") or {}
    data = raw.get("data") or {}
    export = export_dir_of(run_dir)
    cfg = _read_json(export / "config.json") or {}
    results = _read_json(run_dir / "results.json") or {}
    name = raw.get("name") or run_dir.resolve().name
    repo = repo_id or f"<org>/{name}"

    if base_models is None:
        base_models = [model_cfg[k] for k in BASE_MODEL_FIELDS if is_hub_id(model_cfg.get(k))]
    base_models = list(dict.fromkeys(base_models))
    local_bases = [f"`model.{k}` = local checkpoint `{_redact_value(model_cfg[k])}`" for k in BASE_MODEL_FIELDS
                   if isinstance(model_cfg.get(k), str) and model_cfg.get(k) and not is_hub_id(model_cfg[k])]
    phantom = _is_phantom(data)
    info = card_info_of(task, repo, export)

    meta: dict[str, Any] = {"license": license, "library_name": "transformers",
                            "pipeline_tag": info.pipeline_tag,
                            "tags": TAGS + [task] + (["synthetic-data"] if phantom else [])}
    if base_models:
        meta["base_model"] = base_models
    if datasets:
        meta["datasets"] = list(datasets)

    n_params = safetensors_param_count(export)
    arch = cfg.get("architectures") or [cfg.get("model_type", "?")]
    S: list[str] = [_front_matter(meta)]
    S.append(f"# {name}\n")
    S.append(f"> {DISCLAIMER}\n")
    if phantom:
        S.append("> **Demo model trained on synthetic (phantom) images.** It has never seen a real radiograph; its "
                 "numbers say nothing about performance on patients.\n")
    S.append("License: `other` — set the license of this model before sharing it: it must be compatible with the "
             "licenses of the base checkpoints and the data-use agreements of the training data.\n"
             if license == "other" else f"License: `{license}`.\n")

    # --- summary / architecture ------------------------------------------------------------
    S.append("## Model summary\n")
    S.append(f"Task `{task}`: {info.summary}. Trained with [mxr0](#how-it-was-made). Architecture "
             f"{', '.join(f'`{a}`' for a in arch)}; {_fmt_count(n_params)} parameters (from the safetensors "
             "headers).\n")
    S.append("### Architecture\n")
    rows = _arch_rows(cfg) or [("model_type", "unknown")]
    S.append("| | |\n|---|---|\n" + "\n".join(f"| {k} | {v} |" for k, v in rows) + "\n")
    S.append("### Base checkpoints\n")
    if base_models or local_bases:
        S.append("\n".join([f"- [`{b}`](https://huggingface.co/{b})" for b in base_models]
                           + [f"- {x}" for x in local_bases]) + "\n")
    else:
        S.append("None: every weight was initialised randomly and trained by this run.\n")
    files = sorted(p.relative_to(export).as_posix() for p in export.rglob("*") if p.is_file()
                   and not _excluded(p.relative_to(export).as_posix()))
    S.append("Files: " + ", ".join(f"`{f}`" for f in files) + ".\n")

    # --- usage -------------------------------------------------------------------------------
    S.append("## How to use\n")
    S.append("Plain `transformers`, no `trust_remote_code`:\n")
    S.append(info.usage + "\n")

    # --- data ----------------------------------------------------------------------------------
    S.append("## Training data\n")
    src = data.get("source", "?")
    drows = [("source", f"`{src}`" + (" (phantom: procedurally drawn synthetic radiographs)" if phantom else "")),
             ("records", f"`{_basename(data.get('path'))}`"),
             ("train split", f"`{data.get('train_split', 'train')}`"),
             ("evaluation split", f"`{data.get('eval_split', 'validation')}`"),
             ("anatomies", ", ".join(data["anatomies"]) if data.get("anatomies") else "all"),
             ("views", ", ".join(data["views"]) if data.get("views") else "all")]
    if data.get("max_train_studies"):
        drows.append(("max training studies", str(data["max_train_studies"])))
    if data.get("max_eval_studies"):
        drows.append(("max evaluation studies", str(data["max_eval_studies"])))
    if src == "phantom" and isinstance(data.get("phantom"), dict):
        drows.append(("phantom", ", ".join(f"{k}={v}" for k, v in data["phantom"].items())))
    counts = _data_counts(data)
    if counts:
        drows.append(("studies per split (before filters)", ", ".join(f"{k}: {v}" for k, v in counts["split"].items())))
        drows.append(("record sources", ", ".join(f"{k}: {v}" for k, v in counts["source"].items())))
    S.append("| | |\n|---|---|\n" + "\n".join(f"| {k} | {v} |" for k, v in drows) + "\n")
    S.append("No images, reports or patient data are included in this repository.\n")

    # --- procedure -------------------------------------------------------------------------------
    S.append("## Training procedure\n")
    t = raw.get("train") or {}
    state = results.get("state") or {}
    facts = []
    if state.get("step") is not None:
        facts.append(f"{state['step']} optimiser steps")
    if results.get("num_processes"):
        facts.append(f"{results['num_processes']} process(es)")
    for k, label in (("batch_size", "micro-batch"), ("grad_accum", "gradient accumulation"), ("lr", "peak lr"),
                     ("schedule", "schedule"), ("mixed_precision", "precision")):
        if k in t:
            facts.append(f"{label} {t[k]}")
    if facts:
        S.append("; ".join(facts) + ".\n")
    S.append("The resolved recipe (`recipe.yaml`; run folder and local paths redacted). Retrain with "
             "`mxr0 train recipe.yaml` (or `accelerate launch -m mxr0 train recipe.yaml`):\n")
    S.append("```yaml\n" + yaml.safe_dump(redact_recipe(raw), sort_keys=False, allow_unicode=True) + "```\n")

    # --- evaluation ---------------------------------------------------------------------------------
    S.append("## Evaluation\n")
    S.append(f"### Final evaluation during training (`{data.get('eval_split', 'validation')}` split)\n")
    S.append(_training_metrics_md(results) if results else "No `results.json` in the run folder (unfinished run?).\n")
    eval_paths = find_eval_outputs(run_dir)
    for e in extra_eval or []:
        e = Path(e)
        eval_paths += find_eval_outputs(e) if e.is_dir() else [e]
    fairness = False
    seen = set()
    for p in eval_paths:
        key = p.resolve()
        if key in seen or not p.exists():
            continue
        seen.add(key)
        label = p.relative_to(run_dir).as_posix() if p.resolve().is_relative_to(run_dir.resolve()) else p.name
        sec = eval_section(p, label)
        if sec is None:
            log.warning("%s is not an mxr0 evaluation output; left out of the card", p.name)
            continue
        S.append(sec[0])
        fairness = fairness or sec[1]
    if any(p.resolve() in seen for p in eval_paths):
        S.append("Intervals: medians with 95% percentile bootstrap intervals over test studies, where shown.\n")
    S.append("### Fairness\n")
    S.append("Per-subgroup results (sex, age band) and the largest gap between groups are in the table above.\n"
             if fairness else
             "No subgroup (sex / age band) slices were computed for this model. Before any use beyond a demo, "
             "evaluate them, e.g. `mxr0 eval vision --model NAME=EXPORT --tasks probe fairness --data RECORDS`.\n")

    # --- use / limits ---------------------------------------------------------------------------------
    S.append("## Intended use\n")
    S.append("Research on radiology representation learning, vision-language alignment and report generation: "
             "benchmarking, ablations, feature extraction and as a starting checkpoint for further research.\n")
    S.append(DISCLAIMER + " Out of scope: any clinical or patient-facing use, use on patients' data without "
             "the approvals that data requires, and any claim of diagnostic performance.\n")
    S.append("## Limitations\n")
    lim = []
    if phantom:
        lim.append("**Synthetic data.** The model was trained on procedurally drawn phantom images, not real "
                   "radiographs: it is a demo of the training stack (and a test fixture), and it will not work on "
                   "real X-rays.")
    lim += [
        "Trained and evaluated on the data described above only; performance on other hospitals, scanners, "
        "populations, anatomies or view positions is unknown and likely lower (dataset shift).",
        "Labels extracted from reports by rule-based or learned labellers are noisy; metrics inherit that noise.",
        "Subgroup performance may differ (sex, age, ethnicity, devices); see the fairness section above.",
    ]
    lim += list(info.limitations)
    if state.get("step") is not None and state["step"] < 1000:
        lim.append(f"Trained for only {state['step']} optimiser steps.")
    S.append("\n".join(f"- {x}" for x in lim) + "\n")

    # --- provenance ---------------------------------------------------------------------------------
    S.append("## How it was made\n")
    commit = _git_commit()
    S.append("Trained with the mxr0 training loop (`mxr0 train`) and exported as a plain Hugging Face folder. This "
             f"card was generated by `mxr0 push` with mxr0 {__version__}" + (f" (git commit `{commit}`)" if commit else "")
             + " from the run folder's `recipe.yaml`, `results.json` and evaluation outputs.\n")
    card = "\n".join(S)
    card = _redact_abs_paths(card)
    for p in {str(run_dir.resolve()), str(Path.home())}:
        if len(p) > 1:
            card = card.replace(p, "<local>")
    return scrub_tokens(card)


def _basename(path: Any) -> str:
    if not path:
        return ""
    return re.split(r"[/\\]", str(path).rstrip("/\\"))[-1]


def _excluded(rel: str) -> bool:
    from fnmatch import fnmatch

    parts = rel.split("/")
    return any(fnmatch(rel, pat) or fnmatch(parts[-1], pat) for pat in EXCLUDE_PATTERNS) or "checkpoints" in parts[:-1]


# ----------------------------------------------------------------------------------------------
# Push
# ----------------------------------------------------------------------------------------------


def resolve_token(token: str | None = None) -> str:
    """The token to use: the argument, else ``HF_TOKEN``, else the stored Hub login; a `HubError` when none."""
    token = token or os.environ.get("HF_TOKEN") or os.environ.get("HUGGING_FACE_HUB_TOKEN")
    if not token:
        from huggingface_hub import get_token

        token = get_token()
    if not token:
        raise HubError("no Hugging Face token: log in once with `hf auth login` (or `huggingface-cli login`), or set "
                       "HF_TOKEN to a token with write access (https://huggingface.co/settings/tokens)")
    return token


_LOOPBACK_NAMES = ("localhost",)


def check_endpoint(endpoint: str | None, what: str = "--endpoint") -> str | None:
    """``endpoint`` unchanged when the Hub token may be sent to it: an ``https://`` URL, or plain ``http://``
    to a loopback host only (127.0.0.0/8, ::1, ``localhost``: a local mirror or test server, never on the
    wire). Anything else is a `HubError` naming ``what`` (the option or variable it came from)."""
    if not endpoint:
        return endpoint
    import ipaddress
    from urllib.parse import urlsplit

    try:
        url = urlsplit(str(endpoint).strip())
        host = (url.hostname or "").lower()
        url.port  # noqa: B018 - raises ValueError for a bad port
    except ValueError as e:
        raise HubError(f"{what} {endpoint!r} is not a valid URL ({e}); expected https://HOST[:PORT]") from None
    scheme = url.scheme.lower()
    if not host or scheme not in ("http", "https"):
        raise HubError(f"{what} {endpoint!r}: expected an https://HOST[:PORT] URL (the Hub server to push to)")
    if scheme == "https":
        return endpoint
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = host in _LOOPBACK_NAMES
    if not loopback:
        raise HubError(f"{what} {endpoint!r}: plain http:// would send your Hugging Face token unencrypted to "
                       f"{host}; use https://{url.netloc}{url.path} (plain http is allowed only to a loopback host: "
                       "127.0.0.0/8, ::1, localhost)")
    return endpoint


def push_run(run_dir: str | os.PathLike, repo_id: str, private: bool = True, revision: str | None = None,
             token: str | None = None, commit_message: str | None = None, create_pr: bool = False,
             endpoint: str | None = None, extra_eval: Sequence[str | os.PathLike] | None = None) -> str:
    """Upload a run's Hugging Face export and its model card to ``repo_id``; returns the commit URL.

    The repository is created when missing (private unless ``private=False``; an existing repository keeps
    its visibility). ``revision``: a branch, created from the default branch when missing. One commit holds
    every file of ``RUN_DIR/export`` (never checkpoints or optimizer states) and the generated README.md.
    ``endpoint``: another Hub server (default ``HF_ENDPOINT`` or huggingface.co); https, or plain http to a
    loopback host only (`check_endpoint`), since the token goes with every request.
    """
    from huggingface_hub import CommitOperationAdd, HfApi, constants

    run_dir = Path(run_dir)
    export = export_dir_of(run_dir)
    if "/" not in repo_id:
        raise HubError(f"--repo-id {repo_id!r}: expected OWNER/NAME (a user or organisation, then the model name)")
    if constants.is_offline_mode():
        raise HubError("offline mode is on (HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE is set): unset it to push, "
                       f"or write the card only with `mxr0 push {run_dir} --repo-id {repo_id} --card-only README.md`")
    what = "--endpoint" if endpoint else "HF_ENDPOINT" if os.environ.get("HF_ENDPOINT") else "the Hub endpoint"
    endpoint = endpoint or os.environ.get("HF_ENDPOINT") or None
    check_endpoint(endpoint or constants.ENDPOINT, what)  # before the token is even looked up
    token = resolve_token(token)
    card = scrub_tokens(render_model_card(run_dir, extra_eval=extra_eval, repo_id=repo_id), [token])

    api = HfApi(endpoint=endpoint, token=token)
    try:
        url = api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        log.info("repository %s (%s)", url, "private" if private else "public")
        if revision and revision != constants.DEFAULT_REVISION:
            api.create_branch(repo_id, branch=revision, exist_ok=True, repo_type="model")
        ops = [CommitOperationAdd(path_in_repo=rel, path_or_fileobj=str(export / rel))
               for rel in sorted(p.relative_to(export).as_posix() for p in export.rglob("*") if p.is_file())
               if not _excluded(rel)]
        ops.append(CommitOperationAdd(path_in_repo="README.md", path_or_fileobj=card.encode()))
        log.info("uploading %d files from %s to %s@%s", len(ops), export.name, repo_id, revision or "main")
        info = api.create_commit(repo_id, operations=ops, repo_type="model", revision=revision,
                                 commit_message=commit_message or f"Upload {run_dir.resolve().name} with mxr0",
                                 create_pr=create_pr)
    except HubError:
        raise
    except Exception as e:  # the token must never surface in an error message either
        raise HubError(scrub_tokens(f"pushing {run_dir} to {repo_id} failed: {type(e).__name__}: {e}", [token])) from None
    out = str(info.pr_url or info.commit_url) if create_pr else str(info.commit_url)
    log.info("pushed %s to %s: %s", run_dir.resolve().name, repo_id, out)
    return out


__all__ = ["HubError", "check_endpoint", "export_dir_of", "find_eval_outputs", "push_run", "redact_recipe", "render_model_card",
           "resolve_token", "safetensors_param_count", "scrub_tokens"]
