"""Report generation with an exported mXR-0 VLM: one study (streamed to the terminal) or a whole split
(batched, KV cache, greedy / beam / sampling), predictions as JSONL keyed by study id, resumable.

    mxr0 generate --model runs/tiny-report/export --image frontal.png --image lateral.dcm --indication "Cough."
    mxr0 generate --model runs/tiny-report/export --data data_cache/phantom --split test --out preds.jsonl
    mxr0 generate --model my-org/mxr0-report --revision main --data data_cache/phantom --out preds.jsonl

``--model`` is an export folder or a Hub repo id (downloaded with ``huggingface_hub.snapshot_download``,
which honours ``HF_ENDPOINT``, ``HF_TOKEN`` / ``hf auth login``, ``HF_HOME`` and ``HF_HUB_OFFLINE``).

The prompt is rebuilt exactly as in training from the export's ``mxr0_report.json`` (views, instruction,
context sections). Batches are left-padded; a greedy batch gives the same tokens as one-by-one decoding
(`scripts/bench_generate.py` checks it and measures the speed-up).

Precision: fp32 by default; ``precision="bf16"`` (autocast), ``"bf16-weights"`` or ``"auto"`` (see
`mxr0.precision`) in `load_vlm` / `generate_split`. Written prediction lines then carry
``"precision"``. Identity checks (batched against one-by-one) hold in fp32 only: padding changes bf16 results.
"""

from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path

import torch

from mxr0.config.tasks import ReportModelConfig
from mxr0.data.boxes_text import parse_boxes, to_original
from mxr0.data.chat import stop_token_ids
from mxr0.data.instruct import BOX_KINDS, KINDS, parse_grounded_report, report_answer
from mxr0.data.report_dataset import ReportDataset
from mxr0.data.transforms import ImageTransform
from mxr0.data.xray import read_xray
from mxr0.eval.grounding import draw_overlay
from mxr0.eval.instruct import ranked_closed_accuracy, score_kind
from mxr0.models.decoding import clean_generation, generate_batch  # noqa: F401 (moved; re-exported)
from mxr0.models.download import ModelNotFound, resolve_model_dir  # noqa: F401 (moved; re-exported)
from mxr0.precision import set_model_precision

log = logging.getLogger(__name__)


def load_settings(model_dir: str | os.PathLike, revision: str | None = None) -> dict:
    """The prompt settings (``mxr0_report.json``) of a report-generation export (folder or repo id)."""
    source = str(model_dir)
    folder = resolve_model_dir(model_dir, revision)
    settings_file = folder / "mxr0_report.json"
    if not settings_file.exists():
        where = str(folder) if source == str(folder) else f"{source} (downloaded to {folder})"
        raise ModelNotFound(f"mxr0_report.json is missing: {where} is not an mxr0 report-generation export "
                            "(train recipes/tiny/mxr0_report.yaml, or pass the run's export/ folder)")
    return json.loads(settings_file.read_text())


def load_vlm(model_dir: str | os.PathLike, device: str | None = None, revision: str | None = None,
             precision: str = "fp32"):
    """(model, tokenizer, transform, settings) of an export from the ``report`` task: a local folder or a Hub
    repo id (see `resolve_model_dir`). ``precision``: see the module docstring (``model.mxr0_precision``)."""
    from transformers import AutoModelForImageTextToText, AutoTokenizer


    model_dir = resolve_model_dir(model_dir, revision)
    settings = load_settings(model_dir)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    model = AutoModelForImageTextToText.from_pretrained(str(model_dir)).eval().to(device)
    set_model_precision(model, precision, device)
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    transform = ImageTransform.from_pretrained(str(model_dir))
    return model, tokenizer, transform, settings


def _config_from(settings: dict):

    cfg = ReportModelConfig()
    for k, v in settings.items():
        if hasattr(cfg, k):
            setattr(cfg, k, v)
    return cfg


def generate_split(model_dir: str | os.PathLike, records: list[dict], out_path: str | os.PathLike, batch_size: int = 16,
                   max_new_tokens: int | None = None, num_beams: int = 1, do_sample: bool = False,
                   temperature: float = 1.0, top_p: float = 1.0, seed: int = 0, progress: bool = True,
                   revision: str | None = None, precision: str = "fp32") -> Path:
    """Write ``{"study_id", "report"}`` lines for ``records`` to ``out_path``; studies already in the file
    are skipped (resume after an interruption). Each batch is appended and flushed as it completes.
    Outside fp32 each line also records ``"precision"``."""
    from tqdm.auto import tqdm


    model, tokenizer, transform, settings = load_vlm(model_dir, revision=revision, precision=precision)
    cfg = _config_from(settings)
    prec = getattr(model, "mxr0_precision", "fp32")
    tag = {} if prec == "fp32" else {"precision": prec}
    out_path = Path(out_path)
    done: set[str] = set()
    if out_path.exists():
        for line_no, line in enumerate(_resume_lines(out_path), 1):
            if line.strip():
                try:
                    done.add(json.loads(line)["study_id"])
                except (json.JSONDecodeError, KeyError, TypeError):
                    log.warning("%s line %d is incomplete (an interrupted write); it is generated again", out_path, line_no)
    todo = [r for r in records if r["study_id"] not in done]
    ds = ReportDataset(todo, tokenizer, transform, cfg, int(settings["n_image_tokens"]), train=False, with_answer=False,
                       kinds=["report"])
    torch.manual_seed(seed)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    bar = tqdm(total=len(ds), disable=not progress, desc="generate", unit="study")
    with open(out_path, "a") as f:
        for s in range(0, len(ds), batch_size):
            idx = list(range(s, min(len(ds), s + batch_size)))
            texts = generate_batch(model, tokenizer, [ds[i] for i in idx], max_new_tokens or cfg.max_new_tokens,
                                   num_beams, do_sample, temperature, top_p)
            for i, text in zip(idx, texts):
                f.write(json.dumps({"study_id": ds.records[i]["study_id"], "report": text, **tag}) + "\n")
            f.flush()
            os.fsync(f.fileno())
            bar.update(len(idx))
    bar.close()
    if len(done):
        log.info("resumed: %d studies were already in %s", len(done), out_path)
    return out_path


def write_references(records: list[dict], path: str | os.PathLike, sections: list[str]) -> Path:
    """The reference reports of ``records`` (the sections the model writes) as JSONL keyed by study id, the
    ``--ref`` side of `mxr0 eval reports`."""

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w") as f:
        for r in records:
            text = report_answer(r, sections)
            if text:
                f.write(json.dumps({"study_id": r["study_id"], "report": text}) + "\n")
    os.replace(tmp, path)
    return path


def _resume_lines(path: Path) -> list[str]:
    """The lines of an existing output file, after making it end with a newline so that appends start on a
    line of their own: a last line without its newline is kept when it is a complete JSON object (the write
    finished but for the newline) and dropped when it is not (an interrupted write, generated again)."""
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        cut = data.rfind(b"\n") + 1
        try:
            complete = isinstance(json.loads(data[cut:]), dict)
        except ValueError:  # JSONDecodeError, UnicodeDecodeError
            complete = False
        if complete:
            with open(path, "ab") as f:
                f.write(b"\n")
            data += b"\n"
        else:
            log.warning("%s: dropping its incomplete last line (an interrupted write): %r", path, data[cut:cut + 80])
            path.write_bytes(data[:cut])
            data = data[:cut]
    try:
        return data.decode("utf-8").split("\n")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise ValueError(f"{path}:{line}: not UTF-8; cannot resume from it: move it away (or fix that line) "
                         "and run again") from None


def prior_sections(text: str) -> dict[str, str]:
    """A prior report given as text (``--prior-report``) as the record's ``prior_findings`` /
    ``prior_impression``: split at ``Findings:`` / ``Impression:`` headers (any case) when it has them, else
    all of it is the findings."""

    text = (text or "").strip()
    parts = re.split(r"(?i)\b(findings|impression)\s*:", text)
    if len(parts) == 1:
        return {"prior_findings": text, "prior_impression": ""}
    out = {"prior_findings": parts[0].strip(), "prior_impression": ""}
    for head, body in zip(parts[1::2], parts[2::2]):
        key = f"prior_{head.lower()}"
        out[key] = " ".join(x for x in (out[key], body.strip()) if x)
    return out


def generate_study(model_dir: str | os.PathLike, images: list[str], views: list[str] | None = None,
                   indication: str = "", technique: str = "", comparison: str = "", stream: bool = True,
                   max_new_tokens: int | None = None, revision: str | None = None,
                   prior_image: str | os.PathLike | None = None, prior_report: str = "",
                   prior_view: str = "PA") -> str:
    """A report for one study from image files (PNG / JPEG / DICOM), streamed to stdout when ``stream``.

    ``prior_image`` (the prior study's frontal image, view ``prior_view``) and ``prior_report`` (its text;
    `prior_sections`) are given to a model trained with the ``prior`` view (``model.views``), in MAIRA-2's
    order; a model trained without it ignores them (a warning says so)."""
    from transformers import TextStreamer


    model, tokenizer, transform, settings = load_vlm(model_dir, revision=revision)
    cfg = _config_from(settings)
    views = views or (["PA", "LATERAL", "PA"][: len(images)])
    record = {"study_id": "study", "images": [{"path": str(p), "view": v, "role": "current"} for p, v in zip(images, views)],
              "indication": indication, "technique": technique, "comparison": comparison, "findings": "-", "impression": "-"}
    if prior_image is not None or prior_report:
        if "prior" not in cfg.views:
            log.warning("this model was trained without the prior view (model.views=%s): the prior image and report "
                        "are ignored", cfg.views)
        if prior_report and prior_image is None:
            log.warning("a prior report is shown to the model only with its prior image (--prior-image)")
        if prior_image is not None:
            record["images"].append({"path": str(prior_image), "view": prior_view, "role": "prior"})
        record.update(prior_study_id="prior", **prior_sections(prior_report))
    ds = ReportDataset([record], tokenizer, transform, cfg, int(settings["n_image_tokens"]), train=False, with_answer=False,
                       kinds=["report"])
    if len(ds) == 0:
        raise ValueError("the study needs a frontal image (view PA or AP): pass --view PA for the first --image")
    item = ds[0]
    device = next(model.parameters()).device
    streamer = TextStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True) if stream else None
    gen_cfg = getattr(model, "generation_config", None)
    with torch.no_grad():
        out = model.generate(input_ids=torch.tensor([item["input_ids"]], device=device),
                             pixel_values=item["pixel_values"].to(device), max_new_tokens=max_new_tokens or cfg.max_new_tokens,
                             do_sample=False, eos_token_id=stop_token_ids(tokenizer, gen_cfg),
                             pad_token_id=tokenizer.pad_token_id, streamer=streamer)
    return clean_generation(tokenizer.decode(out[0, len(item["input_ids"]):], skip_special_tokens=False), tokenizer,
                            gen_cfg)


def generate_task(model_dir: str | os.PathLike, records: list[dict], out_path: str | os.PathLike, task: str,
                  batch_size: int = 16, max_new_tokens: int | None = None, overlay_dir: str | os.PathLike | None = None,
                  overlay_n: int = 16, progress: bool = True, revision: str | None = None) -> tuple[Path, dict]:
    """Answers of an instruction export for every ``task`` example (``vqa``, ``grounding``, ``localisation``,
    ``grounded_report``, or ``report``) of ``records``, one JSONL line per example keyed ``<study>/<kind>/<k>``
    (resumable like `generate_split`), with the reference, and for box kinds the parsed boxes mapped to the
    original frame; then the kind's scores (`mxr0.eval.instruct.score_kind`) over the whole file, written beside
    it as ``<out>.metrics.json``. ``overlay_dir``: PNGs of the first ``overlay_n`` box examples (predicted red,
    reference green)."""
    from tqdm.auto import tqdm


    if task not in KINDS:
        raise ValueError(f"--task {task!r}: choose from {list(KINDS)}")
    model, tokenizer, transform, settings = load_vlm(model_dir, revision=revision)
    cfg = _config_from(settings)
    if task not in (settings.get("tasks") or {"report": 1.0}):
        log.warning("the model was not trained on %r (its tasks: %s)", task, settings.get("tasks"))
    ds = ReportDataset(records, tokenizer, transform, cfg, int(settings["n_image_tokens"]), train=False,
                       with_answer=False, kinds=[task])
    seen: dict[tuple[str, str], int] = {}
    keys = []
    for ex in ds.examples:
        sid = records[ex.record]["study_id"]
        k = seen.get((sid, task), 0)
        seen[(sid, task)] = k + 1
        keys.append(f"{sid}/{task}/{k}")
    out_path = Path(out_path)
    done: dict[str, dict] = {}
    if out_path.exists():
        for line in _resume_lines(out_path):
            if line.strip():
                row = json.loads(line)
                done[row["id"]] = row
    todo = [i for i, key in enumerate(keys) if key not in done]
    limit = max_new_tokens or (cfg.max_new_tokens if task in ("report", "grounded_report") else cfg.max_new_tokens_short)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    bar = tqdm(total=len(todo), disable=not progress, desc=f"generate {task}", unit="example")
    with open(out_path, "a") as f:
        for s in range(0, len(todo), batch_size):
            idx = todo[s:s + batch_size]
            texts = generate_batch(model, tokenizer, [ds[i] for i in idx], limit)
            for i, text in zip(idx, texts):
                row = _answer_row(ds, i, keys[i], text)
                done[keys[i]] = row
                f.write(json.dumps(row) + "\n")
            f.flush()
            os.fsync(f.fileno())
            bar.update(len(idx))
    bar.close()
    preds = [done[k]["prediction"] for k in keys]
    metrics = score_kind(ds, list(range(len(ds))), preds, task) if len(ds) else {}
    if task == "vqa" and len(ds):

        metrics.update(ranked_closed_accuracy(model, tokenizer, ds, range(len(ds))))
    tmp = out_path.with_name(f".{out_path.name}.metrics.tmp")
    tmp.write_text(json.dumps(metrics, indent=2))
    os.replace(tmp, out_path.with_name(out_path.name + ".metrics.json"))
    if overlay_dir is not None and task in BOX_KINDS:
        for i in range(min(overlay_n, len(ds))):
            _overlay(ds, i, done[keys[i]], Path(overlay_dir) / f"{keys[i].replace('/', '_')}.png")
    return out_path, metrics


def _answer_row(ds, i: int, key: str, text: str) -> dict:

    ex = ds.examples[i]
    row = {"id": key, "study_id": ds.records[i]["study_id"], "kind": ex.kind, "prompt": ex.instruction,
           "prediction": text, "reference": ds.answer(i)}
    if ex.kind in ("grounding", "localisation"):
        res = parse_boxes(text, ds.cfg.box_format)
        row["pred_boxes"] = to_original(res.boxes, ds.geometry(i)).round(4).tolist() if len(res.boxes) else []
        row["ref_boxes"] = [[round(v, 4) for v in b] for b in ex.boxes]
        row["malformed"] = res.malformed
    elif ex.kind == "grounded_report":
        plain, grounded, bad = parse_grounded_report(text, ds.cfg.box_format)
        row["report"] = plain  # the text without boxes: `mxr0 eval reports --pred` reads this field
        row["reference_report"] = ds.examples[i].answer
        g = ds.geometry(i)
        row["pred_sentences"] = [{"sentence": s, "boxes": to_original(b, g).round(4).tolist()} for s, b in grounded]
        row["malformed"] = bad
    elif ex.kind == "vqa":
        row.update({k: ex.meta.get(k) for k in ("answer_type", "question_type")})
    return row


def _overlay(ds, i: int, row: dict, path: Path) -> Path:

    image = read_xray(ds.examples[i].images[0][1])
    if row["kind"] == "grounded_report":
        pred = [b for s in row["pred_sentences"] for b in s["boxes"]]
        names = [s["sentence"] for s in row["pred_sentences"] for _ in s["boxes"]]
        ref = [bx for _, bx in ds.examples[i].meta["phrases"]]
        return draw_overlay(image, path, pred=pred, ref=ref, phrase="grounded report", pred_labels=names)
    return draw_overlay(image, path, pred=row["pred_boxes"], ref=row["ref_boxes"], phrase=ds.examples[i].instruction)


def ask_image(model_dir: str | os.PathLike, image: str | os.PathLike, task: str, text: str,
              overlay: str | os.PathLike | None = None, revision: str | None = None) -> tuple[str, list[list[float]]]:
    """One image file, one request: ``task`` ``vqa`` (``text`` = the question), ``grounding`` (a phrase) or
    ``localisation`` (a finding name). Returns (generated text, boxes normalised to the original image,
    empty for VQA); with ``overlay`` (a PNG path) the boxes are drawn on the image."""

    if task not in ("vqa", "grounding", "localisation"):
        raise ValueError(f"one image with a question / phrase: task must be vqa, grounding or localisation, not {task!r}")
    model, tokenizer, transform, settings = load_vlm(model_dir, revision=revision)
    cfg = _config_from(settings)
    record = {"study_id": "image", "images": [{"path": str(image), "view": "PA", "role": "current"}],
              "qa": [{"question": text, "answer": "-", "answer_type": "open", "question_type": "", "options": []}],
              "boxes": [{"phrase": text, "label": text, "image_index": 0, "x0": 0.0, "y0": 0.0, "x1": 1.0, "y1": 1.0}],
              "findings": "", "impression": ""}
    ds = ReportDataset([record], tokenizer, transform, cfg, int(settings["n_image_tokens"]), train=False,
                       with_answer=False, kinds=[task])
    answer = generate_batch(model, tokenizer, [ds[0]], cfg.max_new_tokens_short)[0]
    boxes: list[list[float]] = []
    if task != "vqa":
        res = parse_boxes(answer, cfg.box_format)
        boxes = to_original(res.boxes, ds.geometry(0)).round(4).tolist() if len(res.boxes) else []
        if overlay is not None:

            draw_overlay(read_xray(image), overlay, pred=boxes, phrase=text)
    return answer, boxes


