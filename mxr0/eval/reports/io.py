"""Reading predicted and reference reports and pairing them by study id.

Accepted files:

* JSONL, one object per line: ``{"study_id": ..., "report": "..."}``; the id may also be called
  ``id``; the text ``report``, ``findings`` or ``text`` (first present wins; ``null`` = empty report);
* JSON: a list of such objects, or an object mapping study id to text (or to such an object).

Pairing is by study id (compared as strings); every reference needs a prediction and every
prediction a reference, else the error names the missing ids. Order follows the reference file.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Mapping, Sequence

__all__ = ["ID_KEYS", "TEXT_KEYS", "read_reports", "pair_reports", "as_report_map"]

ID_KEYS = ("study_id", "id")
TEXT_KEYS = ("report", "findings", "text")


def _text_of(obj, where: str) -> str:
    if isinstance(obj, str):
        return obj
    if not isinstance(obj, Mapping):
        raise ValueError(f"{where}: expected a report object or a string, got {type(obj).__name__}")
    for k in TEXT_KEYS:
        if k in obj:
            v = obj[k]
            if v is None:
                return ""
            if not isinstance(v, str):
                raise ValueError(f"{where}: '{k}' must be a string, got {type(v).__name__}: {v!r:.60}")
            return v
    raise ValueError(f"{where}: no report text; expected one of the keys {', '.join(TEXT_KEYS)} "
                     f"(keys present: {', '.join(map(str, obj)) or 'none'})")


def _id_of(obj: Mapping, where: str) -> str:
    for k in ID_KEYS:
        if k in obj and obj[k] is not None:
            return str(obj[k])
    raise ValueError(f"{where}: no study id; expected one of the keys {', '.join(ID_KEYS)} "
                     f"(keys present: {', '.join(map(str, obj)) or 'none'})")


def read_reports(path: str | Path) -> dict[str, str]:
    """{study id: report text} from a JSONL or JSON file (see the module docstring)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file (expected JSONL with study_id and report per line)")
    raw = path.read_text(encoding="utf-8")
    out: dict[str, str] = {}

    def add(sid: str, text: str, where: str):
        if sid in out:
            raise ValueError(f"{where}: study id {sid!r} appears twice in {path}")
        out[sid] = text

    stripped = raw.lstrip()
    if path.suffix.lower() == ".json" or (stripped[:1] in "[{" and not _looks_jsonl(raw)):
        try:
            data = json.loads(raw)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: not valid JSON ({e}); for one report per line use a .jsonl file") from e
        if isinstance(data, list):
            for i, obj in enumerate(data):
                where = f"{path} item {i}"
                if not isinstance(obj, Mapping):
                    raise ValueError(f"{where}: expected an object with study_id and report")
                add(_id_of(obj, where), _text_of(obj, where), where)
        elif isinstance(data, Mapping):
            for sid, obj in data.items():
                add(str(sid), _text_of(obj, f"{path} key {sid!r}"), f"{path} key {sid!r}")
        else:
            raise ValueError(f"{path}: expected a list of report objects or an id -> report mapping")
        return out
    for ln, line in enumerate(raw.splitlines(), 1):
        if not line.strip():
            continue
        where = f"{path}:{ln}"
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{where}: not valid JSON ({e.msg} at column {e.colno})") from e
        if not isinstance(obj, Mapping):
            raise ValueError(f"{where}: expected a JSON object with study_id and report")
        add(_id_of(obj, where), _text_of(obj, where), where)
    return out


def _looks_jsonl(raw: str) -> bool:
    lines = [ln for ln in raw.splitlines() if ln.strip()]
    if len(lines) < 2:
        return False
    try:
        json.loads(lines[0])
        return True
    except json.JSONDecodeError:
        return False


def as_report_map(x, name: str) -> dict[str, str] | list[str]:
    """A path, a {id: text} mapping or a list of texts -> mapping or list."""
    if isinstance(x, (str, Path)):
        return read_reports(x)
    if isinstance(x, Mapping):
        return {str(k): _text_of(v, f"{name}[{k!r}]") for k, v in x.items()}
    if isinstance(x, Sequence):
        return [_text_of(v, f"{name}[{i}]") for i, v in enumerate(x)]
    raise TypeError(f"{name}: expected a file path, a {{study_id: report}} mapping or a list of reports")


def _fmt_ids(ids: list[str]) -> str:
    return ", ".join(ids[:10]) + (f" ... ({len(ids)} in all)" if len(ids) > 10 else "")


def pair_reports(predictions, references, pred_name: str = "predictions",
                 ref_name: str = "references") -> tuple[list[str], list[str], list[str]]:
    """(study ids, predicted texts, reference texts), aligned. Lists pair by position."""
    p, r = as_report_map(predictions, pred_name), as_report_map(references, ref_name)
    if isinstance(p, list) and isinstance(r, list):
        if len(p) != len(r):
            raise ValueError(f"{len(p)} {pred_name} but {len(r)} {ref_name}; lists pair by position")
        return [str(i) for i in range(len(r))], p, r
    if isinstance(p, list) or isinstance(r, list):
        raise ValueError(f"{pred_name} and {ref_name} must both be lists or both carry study ids")
    missing = [sid for sid in r if sid not in p]
    extra = [sid for sid in p if sid not in r]
    if missing or extra:
        msg = []
        if missing:
            msg.append(f"{len(missing)} reference studies have no prediction: {_fmt_ids(missing)}")
        if extra:
            msg.append(f"{len(extra)} predicted studies have no reference: {_fmt_ids(extra)}")
        raise ValueError("; ".join(msg) + " (studies pair by study_id)")
    ids = list(r)
    return ids, [p[i] for i in ids], [r[i] for i in ids]
