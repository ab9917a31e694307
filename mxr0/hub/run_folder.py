"""What a model card reads from a training run folder, and the redaction of local paths it needs."""

from __future__ import annotations

import json
import math
import os
import re
import struct
import subprocess
from fnmatch import fnmatch
from pathlib import Path
from typing import Any

import yaml

from mxr0.models.download import is_hub_id

# files / folders of an export that are never uploaded (training state, not the model)
EXCLUDE_PATTERNS = ("checkpoints/*", "optimizer*", "scheduler*", "rng_state*", "random_states*", "*.tmp*", ".*",
                    "training_args.bin", "README.md")

# an absolute POSIX path that is not part of a URL, a word or a fraction: /a/b..., ~/a..., C:\a...
_ABS_PATH_RE = re.compile(r"(?<![\w:/.\]\)])(?:~|[A-Za-z]:)?[/\\](?:[\w.@+-]+[/\\])+[\w.@+-]*")

_ARCH_KEYS = ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "image_size",
              "patch_size", "num_register_tokens", "vocab_size", "max_position_embeddings", "projection_dim",
              "num_labels")


# ----------------------------------------------------------------------------------------------
# Redaction
# ----------------------------------------------------------------------------------------------


def redact_abs_paths(text: str) -> str:
    """Absolute local paths (which may name users and machines) → ``<local>/<last component>``."""

    def sub(m: re.Match) -> str:
        p = m.group(0).rstrip("/\\")
        name = re.split(r"[/\\]", p)[-1] if p else ""
        return f"<local>/{name}" if name else "<local>"

    return _ABS_PATH_RE.sub(sub, text)


def redact_value(value: Any) -> Any:
    """``value`` with every string that looks like a local path cut to ``<local>/<last component>``."""
    if isinstance(value, dict):
        return {k: redact_value(v) for k, v in value.items()}
    if isinstance(value, list):
        return [redact_value(v) for v in value]
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
    return redact_value(raw)


def basename(path: Any) -> str:
    """The last component of a local path (``""`` for none)."""
    if not path:
        return ""
    return re.split(r"[/\\]", str(path).rstrip("/\\"))[-1]


# ----------------------------------------------------------------------------------------------
# Reading a run folder
# ----------------------------------------------------------------------------------------------


def read_json(path: Path) -> Any:
    """The JSON in ``path``, or None when it is missing or not JSON."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def load_recipe_raw(run_dir: Path) -> dict:
    """The run's resolved ``recipe.yaml`` as a plain mapping."""
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


def is_excluded(rel: str) -> bool:
    """Whether the export file at ``rel`` (POSIX, relative) is training state that is never uploaded."""
    parts = rel.split("/")
    return any(fnmatch(rel, pat) or fnmatch(parts[-1], pat) for pat in EXCLUDE_PATTERNS) or "checkpoints" in parts[:-1]


def uploaded_files(export: Path) -> list[str]:
    """The export's files that are uploaded (relative POSIX paths, sorted)."""
    return sorted(rel for rel in (p.relative_to(export).as_posix() for p in export.rglob("*") if p.is_file())
                  if not is_excluded(rel))


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


def fmt_count(n: int | None) -> str:
    """``45.90k (45,898)``-style parameter count."""
    if n is None:
        return "unknown"
    for div, unit in ((1e9, "B"), (1e6, "M"), (1e3, "k")):
        if n >= div:
            return f"{n / div:.2f}{unit} ({n:,})"
    return f"{n:,}"


def arch_rows(cfg: dict, prefix: str = "") -> list[tuple[str, str]]:
    """(key, value) rows of the architecture table from an export's ``config.json``."""
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
            rows += arch_rows(cfg[sub], prefix=f"{sub}.")
    return rows


def git_commit() -> str | None:
    """The short commit of the mxr0 checkout (marked when it has local changes), or None outside git."""
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=here, capture_output=True, text=True,
                             timeout=5)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0 or not out.stdout.strip():
        return None
    return out.stdout.strip() + (" (with local changes)" if dirty.returncode == 0 and dirty.stdout.strip() else "")


def is_phantom(data: dict) -> bool:
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


def data_counts(data: dict) -> dict[str, dict[str, int]] | None:
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
