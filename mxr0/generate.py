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
"""

from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path

import torch

log = logging.getLogger(__name__)


def clean_generation(text: str, tokenizer, generation_config=None) -> str:
    """Generated text (decoded with its special tokens) up to the first stop token, without special tokens
    except the box tokens (``<box>``, ``<x12>``, …) of grounding answers.

    The stop and special tokens are the ``tokenizer``'s (`mxr0.data.chat.stop_token_ids`: eos, end-of-turn,
    ``generation_config.eos_token_id``)."""
    from mxr0.data.chat import special_token_ids, stop_token_ids, visible_special_tokens

    stops = tokenizer.convert_ids_to_tokens(stop_token_ids(tokenizer, generation_config))
    keep = visible_special_tokens(tokenizer)
    drop = [t for t in tokenizer.convert_ids_to_tokens(sorted(special_token_ids(tokenizer))) if t and t not in keep]
    for stop in stops:
        if stop:
            text = text.split(stop)[0]
    if drop:
        text = re.sub("|".join(re.escape(t) for t in sorted(drop, key=len, reverse=True)), "", text)
    return text.strip()


@torch.no_grad()
def generate_batch(model, tokenizer, items: list[dict], max_new_tokens: int = 160, num_beams: int = 1,
                   do_sample: bool = False, temperature: float = 1.0, top_p: float = 1.0) -> list[str]:
    """Reports for prompt-only dataset items (``input_ids`` and ``pixel_values`` each), left-padded."""
    from mxr0.data.chat import stop_token_ids
    from mxr0.tasks.report import ChatCollator

    batch = ChatCollator(tokenizer.pad_token_id, "left")(items)
    device = next(model.parameters()).device
    gen_cfg = getattr(model, "generation_config", None)
    end_ids = stop_token_ids(tokenizer, gen_cfg)
    kwargs = dict(max_new_tokens=max_new_tokens, num_beams=num_beams, do_sample=do_sample, eos_token_id=end_ids,
                  pad_token_id=tokenizer.pad_token_id, use_cache=True)
    if do_sample:
        kwargs.update(temperature=temperature, top_p=top_p)
    out = model.generate(input_ids=batch["input_ids"].to(device), attention_mask=batch["attention_mask"].to(device),
                         pixel_values=batch["pixel_values"].to(device, dtype=next(model.parameters()).dtype), **kwargs)
    new = out[:, batch["input_ids"].shape[1]:]
    return [clean_generation(t, tokenizer, gen_cfg) for t in tokenizer.batch_decode(new, skip_special_tokens=False)]


class ModelNotFound(FileNotFoundError):
    """``--model`` is neither a local folder nor a Hub repository that can be downloaded; the message says why."""


def resolve_model_dir(model: str | os.PathLike, revision: str | None = None) -> Path:
    """A local folder as it is; a Hub repo id (``OWNER/NAME``) is downloaded to (or found in) the Hugging Face
    cache with ``snapshot_download`` and its snapshot folder returned. ``revision``: branch, tag or commit."""
    path = Path(model)
    if path.exists():
        if revision:
            log.warning("--revision %s is ignored: %s is a local folder", revision, path)
        return path
    from mxr0.hub import is_hub_id

    name = str(model)
    if not is_hub_id(name):
        raise ModelNotFound(f"{name}: no such folder, and not a Hub repo id (OWNER/NAME)")
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import (GatedRepoError, HfHubHTTPError, LocalEntryNotFoundError, RepositoryNotFoundError,
                                        RevisionNotFoundError)

    at = f"{name}@{revision}" if revision else name
    endpoint = os.environ.get("HF_ENDPOINT") or constants.ENDPOINT  # read now, as `mxr0 push` does
    try:
        folder = snapshot_download(name, revision=revision, repo_type="model", endpoint=endpoint)
    except RevisionNotFoundError:
        raise ModelNotFound(f"{name} has no revision {revision!r} on {endpoint}: pass an existing branch, tag or commit "
                            "with --revision (or leave it out for main)") from None
    except GatedRepoError:
        raise ModelNotFound(f"{at} is gated on {endpoint}: accept its terms on the model page, then log in with "
                            "`hf auth login` (or set HF_TOKEN)") from None
    except RepositoryNotFoundError:
        raise ModelNotFound(f"{at} was not found on {endpoint}, or it is private and this token cannot read it: check "
                            "the repo id, log in with `hf auth login` (or set HF_TOKEN), or pass a local export "
                            "folder") from None
    except LocalEntryNotFoundError as e:
        if constants.is_offline_mode():
            raise ModelNotFound(f"{at} is not in the Hugging Face cache ({constants.HF_HUB_CACHE}) and offline mode is "
                                "on (HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE): unset it to download, download it "
                                f"first with `hf download {name}`, or pass a local export folder") from None
        raise ModelNotFound(f"{at} could not be downloaded from {endpoint} and is not in the cache "
                            f"({type(e).__name__}): check the network and HF_ENDPOINT, or pass a local export "
                            "folder") from None
    except (HfHubHTTPError, OSError) as e:
        from mxr0.hub import scrub_tokens

        raise ModelNotFound(scrub_tokens(f"downloading {at} from {endpoint} failed: {type(e).__name__}: {e}")) from None
    log.info("model %s: %s", at, folder)
    return Path(folder)


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


def load_vlm(model_dir: str | os.PathLike, device: str | None = None, revision: str | None = None):
    """(model, tokenizer, transform, settings) of an export from the ``report`` task: a local folder or a Hub
    repo id (see `resolve_model_dir`)."""
    from transformers import AutoModelForImageTextToText, AutoTokenizer

    from mxr0.data.transforms import ImageTransform

    model_dir = resolve_model_dir(model_dir, revision)
    settings = load_settings(model_dir)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    model = AutoModelForImageTextToText.from_pretrained(str(model_dir)).eval().to(device)
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    transform = ImageTransform.from_pretrained(str(model_dir))
    return model, tokenizer, transform, settings


def _config_from(settings: dict):
    from mxr0.tasks.report import ReportModelConfig

    cfg = ReportModelConfig()
    for k, v in settings.items():
        if hasattr(cfg, k):
            setattr(cfg, k, v)
    return cfg


def generate_split(model_dir: str | os.PathLike, records: list[dict], out_path: str | os.PathLike, batch_size: int = 16,
                   max_new_tokens: int | None = None, num_beams: int = 1, do_sample: bool = False,
                   temperature: float = 1.0, top_p: float = 1.0, seed: int = 0, progress: bool = True,
                   revision: str | None = None) -> Path:
    """Write ``{"study_id", "report"}`` lines for ``records`` to ``out_path``; studies already in the file
    are skipped (resume after an interruption). Each batch is appended and flushed as it completes."""
    from tqdm.auto import tqdm

    from mxr0.tasks.report import ReportDataset

    model, tokenizer, transform, settings = load_vlm(model_dir, revision=revision)
    cfg = _config_from(settings)
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
                f.write(json.dumps({"study_id": ds.records[i]["study_id"], "report": text}) + "\n")
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
    from mxr0.tasks.report import report_answer

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


def generate_study(model_dir: str | os.PathLike, images: list[str], views: list[str] | None = None,
                   indication: str = "", technique: str = "", comparison: str = "", stream: bool = True,
                   max_new_tokens: int | None = None, revision: str | None = None) -> str:
    """A report for one study from image files (PNG / JPEG / DICOM), streamed to stdout when ``stream``."""
    from transformers import TextStreamer

    from mxr0.data.chat import stop_token_ids
    from mxr0.tasks.report import ReportDataset

    model, tokenizer, transform, settings = load_vlm(model_dir, revision=revision)
    cfg = _config_from(settings)
    views = views or (["PA", "LATERAL", "PA"][: len(images)])
    record = {"study_id": "study", "images": [{"path": str(p), "view": v, "role": "current"} for p, v in zip(images, views)],
              "indication": indication, "technique": technique, "comparison": comparison, "findings": "-", "impression": "-"}
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

    from mxr0.data.instruct import BOX_KINDS, KINDS
    from mxr0.eval.instruct import score_kind
    from mxr0.tasks.report import ReportDataset

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
        from mxr0.eval.instruct import ranked_closed_accuracy

        metrics.update(ranked_closed_accuracy(model, tokenizer, ds, range(len(ds))))
    tmp = out_path.with_name(f".{out_path.name}.metrics.tmp")
    tmp.write_text(json.dumps(metrics, indent=2))
    os.replace(tmp, out_path.with_name(out_path.name + ".metrics.json"))
    if overlay_dir is not None and task in BOX_KINDS:
        for i in range(min(overlay_n, len(ds))):
            _overlay(ds, i, done[keys[i]], Path(overlay_dir) / f"{keys[i].replace('/', '_')}.png")
    return out_path, metrics


def _answer_row(ds, i: int, key: str, text: str) -> dict:
    from mxr0.data.boxes_text import parse_boxes, to_original
    from mxr0.data.instruct import parse_grounded_report

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
    from mxr0.data.xray import read_xray
    from mxr0.eval.grounding import draw_overlay

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
    from mxr0.data.boxes_text import parse_boxes, to_original
    from mxr0.tasks.report import ReportDataset

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
            from mxr0.data.xray import read_xray
            from mxr0.eval.grounding import draw_overlay

            draw_overlay(read_xray(image), overlay, pred=boxes, phrase=text)
    return answer, boxes


@torch.no_grad()
def rank_options(model, tokenizer, ds, indices, batch_size: int = 32) -> list[str | None]:
    """Closed questions answered by ranking their options: each option scored as the assistant's answer by its mean
    token log-likelihood (teacher-forced, answer tokens and end marker), the best one returned (lm-eval style
    multiple choice, length-normalised). None for examples without options (open questions)."""
    from mxr0.data.chat import encode_example
    from mxr0.tasks.report import ChatCollator

    device = next(model.parameters()).device
    dtype = next(model.parameters()).dtype
    jobs = []  # (position in indices, option, item)
    for k, i in enumerate(indices):
        ex = ds.examples[i]
        for opt in ex.meta.get("options") or []:
            ids, labels = encode_example(tokenizer, ds.messages(i), str(opt), ds.n_image_tokens, ds.cfg.max_length)
            jobs.append((k, str(opt), {"input_ids": ids, "labels": labels, "pixel_values": ds.pixel_values(i), "index": i}))
    best: dict[int, tuple[float, str]] = {}
    collate = ChatCollator(tokenizer.pad_token_id, "right")
    for s in range(0, len(jobs), batch_size):
        chunk = jobs[s:s + batch_size]
        b = collate([it for _, _, it in chunk])
        logits = model(input_ids=b["input_ids"].to(device), attention_mask=b["attention_mask"].to(device),
                       pixel_values=b["pixel_values"].to(device, dtype=dtype)).logits.float()
        labels = b["labels"][:, 1:].to(device)
        logp = torch.log_softmax(logits[:, :-1], dim=-1)
        mask = labels != -100
        tok = logp.gather(-1, labels.clamp_min(0)[..., None])[..., 0] * mask
        score = (tok.sum(1) / mask.sum(1).clamp_min(1)).tolist()
        for (k, opt, _), sc in zip(chunk, score):
            if k not in best or sc > best[k][0]:
                best[k] = (sc, opt)
    return [best[k][1] if k in best else None for k in range(len(indices))]
