"""The Hub model card (``README.md``) of a training run, built on ``huggingface_hub.ModelCard``.

The YAML metadata is a `huggingface_hub.ModelCardData` (license, pipeline tag, tags, base models, datasets and
a ``model-index`` of `huggingface_hub.EvalResult` from the run's evaluation metrics, which the Hub shows on the
model page); the Markdown body holds the architecture, the per-task usage snippet, data, the redacted recipe,
evaluation tables, intended use and limitations. Each task declares its own card details (`Task.card_info`).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import yaml
from huggingface_hub import ModelCard, ModelCardData

from mxr0._version import __version__
from mxr0.hub.evals import eval_outputs, eval_results, eval_section, training_metrics_md
from mxr0.hub.run_folder import (
    arch_rows,
    basename,
    data_counts,
    export_dir_of,
    fmt_count,
    git_commit,
    is_phantom,
    load_recipe_raw,
    read_json,
    redact_abs_paths,
    redact_recipe,
    redact_value,
    safetensors_param_count,
    uploaded_files,
)
from mxr0.models.download import is_hub_id, scrub_tokens
from mxr0.tasks import get_task_class
from mxr0.tasks.base import CardInfo, Task

log = logging.getLogger("mxr0.hub")

TAGS = ["radiology", "x-ray", "medical", "mxr0"]
BASE_MODEL_FIELDS = ("init_from", "encoder", "vision", "text", "llm")
"""``model.*`` fields of the recipes that name a starting checkpoint (a Hub id or a local path)."""

DISCLAIMER = (
    "**Research use only. Not a medical device.** This model has not been cleared or approved by any regulatory "
    "authority and has not been validated for clinical use. Its outputs must not be used for diagnosis, triage, "
    "treatment decisions or any other clinical purpose, and must not replace the judgement of a qualified "
    "radiologist."
)


@dataclass
class _Run:
    """What the card reads from a run folder."""

    dir: Path
    raw: dict
    task: str
    data: dict
    export: Path
    cfg: dict
    results: dict
    name: str
    phantom: bool

    @classmethod
    def read(cls, run_dir: Path) -> _Run:
        raw = load_recipe_raw(run_dir)
        data = raw.get("data") or {}
        export = export_dir_of(run_dir)
        return cls(dir=run_dir, raw=raw, task=str(raw.get("task", "classify")), data=data, export=export,
                   cfg=read_json(export / "config.json") or {}, results=read_json(run_dir / "results.json") or {},
                   name=raw.get("name") or run_dir.resolve().name, phantom=is_phantom(data))


def card_info_of(task: str, repo: str, export: Path) -> CardInfo:
    """The task's model-card details (`mxr0.tasks.base.CardInfo`: pipeline tag, summary, usage snippet,
    limitations), declared by the task class; a task mxr0 does not know gets the generic ones."""
    try:
        cls = get_task_class(task)
    except KeyError:
        cls = type("UnknownTask", (Task,), {"name": task})
    return cls.card_info(repo, export)


def _card_data(run: _Run, info: CardInfo, base_models: list[str], datasets: Sequence[str] | None, license: str,
               outputs: list[tuple[Path, str]]) -> ModelCardData:
    """The YAML metadata, with the ``model-index`` of the run's evaluation metrics."""
    source = "phantom" if run.phantom else str(run.data.get("source", "records"))
    results = eval_results(run.results, outputs, run.export, task_type=info.pipeline_tag,
                           dataset_type=datasets[0] if datasets else source,
                           dataset_name="phantom (synthetic radiographs)" if run.phantom else source,
                           eval_split=str(run.data.get("eval_split", "validation")))
    return ModelCardData(license=license, library_name="transformers", pipeline_tag=info.pipeline_tag,
                         tags=TAGS + [run.task] + (["synthetic-data"] if run.phantom else []),
                         base_model=base_models or None, datasets=list(datasets) if datasets else None,
                         model_name=run.name if results else None, eval_results=results or None)


def _header(run: _Run, license: str) -> str:
    s = [f"# {run.name}\n", f"> {DISCLAIMER}\n"]
    if run.phantom:
        s.append("> **Demo model trained on synthetic (phantom) images.** It has never seen a real radiograph; its "
                 "numbers say nothing about performance on patients.\n")
    s.append("License: `other` — set the license of this model before sharing it: it must be compatible with the "
             "licenses of the base checkpoints and the data-use agreements of the training data.\n"
             if license == "other" else f"License: `{license}`.\n")
    return "\n".join(s)


def _summary(run: _Run, info: CardInfo, base_models: list[str]) -> str:
    model_cfg = run.raw.get("model") or {}
    local_bases = [f"`model.{k}` = local checkpoint `{redact_value(model_cfg[k])}`" for k in BASE_MODEL_FIELDS
                   if isinstance(model_cfg.get(k), str) and model_cfg.get(k) and not is_hub_id(model_cfg[k])]
    arch = run.cfg.get("architectures") or [run.cfg.get("model_type", "?")]
    rows = arch_rows(run.cfg) or [("model_type", "unknown")]
    s = ["## Model summary\n",
         f"Task `{run.task}`: {info.summary}. Trained with [mxr0](#how-it-was-made). Architecture "
         f"{', '.join(f'`{a}`' for a in arch)}; {fmt_count(safetensors_param_count(run.export))} parameters (from "
         "the safetensors headers).\n",
         "### Architecture\n",
         "| | |\n|---|---|\n" + "\n".join(f"| {k} | {v} |" for k, v in rows) + "\n",
         "### Base checkpoints\n"]
    if base_models or local_bases:
        s.append("\n".join([f"- [`{b}`](https://huggingface.co/{b})" for b in base_models]
                           + [f"- {x}" for x in local_bases]) + "\n")
    else:
        s.append("None: every weight was initialised randomly and trained by this run.\n")
    s.append("Files: " + ", ".join(f"`{f}`" for f in uploaded_files(run.export)) + ".\n")
    s += ["## How to use\n", "Plain `transformers`, no `trust_remote_code`:\n", info.usage + "\n"]
    return "\n".join(s)


def _training_data(data: dict, phantom: bool) -> str:
    src = data.get("source", "?")
    rows = [("source", f"`{src}`" + (" (phantom: procedurally drawn synthetic radiographs)" if phantom else "")),
            ("records", f"`{basename(data.get('path'))}`"),
            ("train split", f"`{data.get('train_split', 'train')}`"),
            ("evaluation split", f"`{data.get('eval_split', 'validation')}`"),
            ("anatomies", ", ".join(data["anatomies"]) if data.get("anatomies") else "all"),
            ("views", ", ".join(data["views"]) if data.get("views") else "all")]
    if data.get("max_train_studies"):
        rows.append(("max training studies", str(data["max_train_studies"])))
    if data.get("max_eval_studies"):
        rows.append(("max evaluation studies", str(data["max_eval_studies"])))
    if src == "phantom" and isinstance(data.get("phantom"), dict):
        rows.append(("phantom", ", ".join(f"{k}={v}" for k, v in data["phantom"].items())))
    counts = data_counts(data)
    if counts:
        rows.append(("studies per split (before filters)", ", ".join(f"{k}: {v}" for k, v in counts["split"].items())))
        rows.append(("record sources", ", ".join(f"{k}: {v}" for k, v in counts["source"].items())))
    return ("## Training data\n\n| | |\n|---|---|\n" + "\n".join(f"| {k} | {v} |" for k, v in rows) + "\n\n"
            "No images, reports or patient data are included in this repository.\n")


def _procedure(run: _Run) -> str:
    t = run.raw.get("train") or {}
    state = run.results.get("state") or {}
    facts = []
    if state.get("step") is not None:
        facts.append(f"{state['step']} optimiser steps")
    if run.results.get("num_processes"):
        facts.append(f"{run.results['num_processes']} process(es)")
    for k, label in (("batch_size", "micro-batch"), ("grad_accum", "gradient accumulation"), ("lr", "peak lr"),
                     ("schedule", "schedule"), ("mixed_precision", "precision")):
        if k in t:
            facts.append(f"{label} {t[k]}")
    s = ["## Training procedure\n"] + (["; ".join(facts) + ".\n"] if facts else [])
    s.append("The resolved recipe (`recipe.yaml`; run folder and local paths redacted). Retrain with "
             "`mxr0 train recipe.yaml` (or `accelerate launch -m mxr0 train recipe.yaml`):\n")
    s.append("```yaml\n" + yaml.safe_dump(redact_recipe(run.raw), sort_keys=False, allow_unicode=True) + "```\n")
    return "\n".join(s)


def _evaluation(run: _Run, outputs: list[tuple[Path, str]]) -> str:
    s = ["## Evaluation\n", f"### Final evaluation during training (`{run.data.get('eval_split', 'validation')}` split)\n",
         training_metrics_md(run.results) if run.results else "No `results.json` in the run folder (unfinished run?).\n"]
    fairness = shown = False
    for path, label in outputs:
        sec = eval_section(path, label)
        if sec is None:
            log.warning("%s is not an mxr0 evaluation output; left out of the card", path.name)
            continue
        s.append(sec[0])
        fairness, shown = fairness or sec[1], True
    if shown:
        s.append("Intervals: medians with 95% percentile bootstrap intervals over test studies, where shown.\n")
    s.append("### Fairness\n")
    s.append("Per-subgroup results (sex, age band) and the largest gap between groups are in the table above.\n"
             if fairness else
             "No subgroup (sex / age band) slices were computed for this model. Before any use beyond a demo, "
             "evaluate them, e.g. `mxr0 eval vision --model NAME=EXPORT --tasks probe fairness --data RECORDS`.\n")
    return "\n".join(s)


def _use_and_limits(run: _Run, info: CardInfo) -> str:
    s = ["## Intended use\n",
         "Research on radiology representation learning, vision-language alignment and report generation: "
         "benchmarking, ablations, feature extraction and as a starting checkpoint for further research.\n",
         DISCLAIMER + " Out of scope: any clinical or patient-facing use, use on patients' data without "
         "the approvals that data requires, and any claim of diagnostic performance.\n",
         "## Limitations\n"]
    lim = []
    if run.phantom:
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
    step = (run.results.get("state") or {}).get("step")
    if step is not None and step < 1000:
        lim.append(f"Trained for only {step} optimiser steps.")
    s.append("\n".join(f"- {x}" for x in lim) + "\n")
    commit = git_commit()
    s += ["## How it was made\n",
          "Trained with the mxr0 training loop (`mxr0 train`) and exported as a plain Hugging Face folder. This "
          f"card was generated by `mxr0 push` with mxr0 {__version__}" + (f" (git commit `{commit}`)" if commit else "")
          + " from the run folder's `recipe.yaml`, `results.json` and evaluation outputs.\n"]
    return "\n".join(s)


def _redacted(text: str, run_dir: Path) -> str:
    """``text`` without local absolute paths (the run folder and the home folder included) or tokens."""
    text = redact_abs_paths(text)
    for p in {str(run_dir.resolve()), str(Path.home())}:
        if len(p) > 1:
            text = text.replace(p, "<local>")
    return scrub_tokens(text)


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
    run = _Run.read(Path(run_dir))
    model_cfg = run.raw.get("model") or {}
    if base_models is None:
        base_models = [model_cfg[k] for k in BASE_MODEL_FIELDS if is_hub_id(model_cfg.get(k))]
    base_models = list(dict.fromkeys(base_models))
    info = card_info_of(run.task, repo_id or f"<org>/{run.name}", run.export)
    outputs = eval_outputs(run.dir, extra_eval)
    data = _card_data(run, info, base_models, datasets, license, outputs)
    body = "\n".join([_header(run, license), _summary(run, info, base_models), _training_data(run.data, run.phantom),
                      _procedure(run), _evaluation(run, outputs), _use_and_limits(run, info)])
    card = ModelCard(f"---\n{data.to_yaml()}\n---\n{body}")
    return _redacted(str(card), run.dir)
