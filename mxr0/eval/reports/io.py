"""Reading predicted and reference reports and pairing them by study id.

Accepted files (UTF-8; any other encoding is an error naming the file and line):

* JSONL (any name but ``.json``; ``.jsonl`` by convention), one object per line:
  ``{"study_id": ..., "report": "..."}``; the id may also be called ``id``; the text ``report``,
  ``findings`` or ``text`` (first present wins; ``null`` = empty report). Always read line by line:
  a one-line file is one study, never a map.
* ``.json`` only: one document, a list of such objects or an object mapping study id to text (or to
  such an object). A single report object in a ``.json`` file is refused, not read as a map.

Pairing is by study id (compared as strings); every reference needs a prediction and every
prediction a reference, else the error names the missing ids, unless ``allow_partial``, which
scores the studies on both sides and reports how many were dropped. Order follows the references.
Reports longer than ``max_chars`` (default :data:`MAX_REPORT_CHARS`) are cut to that length, with
a warning and a count (the metrics are quadratic in the length of a report: one runaway
10 MB generation took 428 s and 0.75 GB).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

__all__ = ["ID_KEYS", "TEXT_KEYS", "MAX_REPORT_CHARS", "Pairing", "read_reports", "pair_reports", "pair_inputs",
           "as_report_map"]

#: reports longer than this many characters are truncated before scoring (0 or None: no bound)
MAX_REPORT_CHARS = 20_000

ID_KEYS = ("study_id", "id")
TEXT_KEYS = ("report", "findings", "text")


def _text_of(obj, where: str) -> str:
    if isinstance(obj, str):
        return obj
    if obj is None:  # null is an empty report, as for the text keys below
        return ""
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


def _decode(data: bytes, path: Path, first_line: int = 1) -> str:
    """UTF-8 text of ``data`` (a leading BOM is dropped); a named error with the line and column otherwise."""
    try:
        return data.decode("utf-8-sig" if first_line == 1 else "utf-8")
    except UnicodeDecodeError as e:
        line = first_line + data.count(b"\n", 0, e.start)
        col = e.start - (data.rfind(b"\n", 0, e.start) + 1) + 1
        raise ValueError(f"{path}:{line}: not UTF-8 (byte 0x{data[e.start]:02x} at column {col}); report files must "
                         f"be UTF-8: re-encode it, e.g. `iconv -f latin1 -t utf-8 {path.name} > fixed.jsonl`") from None


def _single_record(data: Mapping) -> bool:
    """``{"study_id": ..., "report": ...}``: one report object, not an ``{id: text}`` map."""
    return bool(data) and set(map(str, data)) <= set(ID_KEYS + TEXT_KEYS) and any(k in data for k in ID_KEYS)


def read_reports(path: str | Path) -> dict[str, str]:
    """{study id: report text} from a JSONL or JSON file (see the module docstring).

    Only a ``.json`` file is parsed as one JSON document (a list of report objects or an
    ``{id: text}`` map); every other file (``.jsonl``, ``.ndjson``...) is read as one object per line,
    whatever its first character, so a one-line JSONL file is never mistaken for a map."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file (expected JSONL with study_id and report per line)")
    data = path.read_bytes()
    out: dict[str, str] = {}

    def add(sid: str, text: str, where: str):
        if sid in out:
            raise ValueError(f"{where}: study id {sid!r} appears twice in {path}")
        out[sid] = text

    if path.suffix.lower() == ".json":
        raw = _decode(data, path)
        try:
            doc = json.loads(raw)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}:{e.lineno}: not valid JSON ({e.msg} at column {e.colno}); for one report "
                             "object per line use a .jsonl file") from e
        if isinstance(doc, list):
            for i, obj in enumerate(doc):
                where = f"{path} item {i}"
                if not isinstance(obj, Mapping):
                    raise ValueError(f"{where}: expected an object with study_id and report")
                add(_id_of(obj, where), _text_of(obj, where), where)
        elif isinstance(doc, Mapping):
            if _single_record(doc):
                raise ValueError(f"{path}: this is one report object (keys {', '.join(map(str, doc))}), not a "
                                 "{study_id: text} map; put one object per line in a .jsonl file, or a list "
                                 "[{...}, ...] in the .json file")
            for sid, obj in doc.items():
                add(str(sid), _text_of(obj, f"{path} key {sid!r}"), f"{path} key {sid!r}")
        else:
            raise ValueError(f"{path}: expected a list of report objects or an id -> report mapping")
        return out
    # JSON Lines: split on b"\n" only (str.splitlines would also split inside a report at U+2028 & co.)
    for ln, line_b in enumerate(data.split(b"\n"), 1):
        if not line_b.strip():
            continue
        line = _decode(line_b, path, ln)
        where = f"{path}:{ln}"
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            hint = ("; a JSON document (a list, or an {study_id: text} map) must be in a file named .json"
                    if ln == 1 and line.lstrip()[:1] in "[{" else "")
            raise ValueError(f"{where}: not valid JSON ({e.msg} at column {e.colno}){hint}") from e
        if not isinstance(obj, Mapping):
            raise ValueError(f"{where}: expected a JSON object with study_id and report, got "
                             f"{type(obj).__name__}; a JSON list of reports must be in a file named .json")
        add(_id_of(obj, where), _text_of(obj, where), where)
    return out


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


@dataclass
class Pairing:
    """Aligned studies (``ids``, ``hyps``, ``refs``, ``hyps_b`` for a compared system) and what was
    done to get there: ``dropped`` (reason -> study ids left out under ``allow_partial``) and
    ``truncated`` (side -> study ids cut to ``max_chars``)."""

    ids: list[str]
    hyps: list[str]
    refs: list[str]
    hyps_b: list[str] | None = None
    dropped: dict[str, list[str]] = field(default_factory=dict)
    truncated: dict[str, list[str]] = field(default_factory=dict)
    max_chars: int | None = None
    allow_partial: bool = False

    @property
    def n_dropped(self) -> int:
        return sum(len(v) for v in self.dropped.values())

    def notes(self) -> list[str]:
        """Human-readable warnings about dropped studies and truncated reports (empty when none)."""
        out = []
        for why, ids in self.dropped.items():
            if ids:
                out.append(f"--allow-partial: dropped {len(ids)} {why.replace('_', ' ')}: {_fmt_ids(ids)}")
        for side, ids in self.truncated.items():
            if ids:
                out.append(f"truncated {len(ids)} {side} longer than {self.max_chars} characters to their first "
                           f"{self.max_chars}: {_fmt_ids(ids)}")
        return out

    def summary(self, keep_ids: int = 100) -> dict:
        """The JSON record of the pairing (counts, and the first ``keep_ids`` ids of each list)."""
        return {"n_scored": len(self.ids), "allow_partial": self.allow_partial, "n_dropped": self.n_dropped,
                "dropped": {k: len(v) for k, v in self.dropped.items()},
                "dropped_ids": {k: v[:keep_ids] for k, v in self.dropped.items() if v},
                "max_report_chars": self.max_chars,
                "truncated": {k: len(v) for k, v in self.truncated.items()},
                "truncated_ids": {k: v[:keep_ids] for k, v in self.truncated.items() if v}}


def _truncate(texts: list[str], ids: list[str], max_chars: int | None) -> tuple[list[str], list[str]]:
    if not max_chars or max_chars <= 0:
        return texts, []
    cut = [i for i, t in zip(ids, texts) if len(t) > max_chars]
    return ([t[:max_chars] for t in texts] if cut else texts), cut


def pair_inputs(predictions, references, *, compare=None, allow_partial: bool = False,
                max_chars: int | None = MAX_REPORT_CHARS, pred_name: str = "predictions",
                ref_name: str = "references", compare_name: str = "compared predictions") -> Pairing:
    """Read and align predictions (and a ``compare`` system) with the references; see the module docstring.

    Lists pair by position (and must have equal lengths); mappings and files pair by study id. A study
    missing on one side is an error naming the ids, unless ``allow_partial``: then only the studies
    present on every side are scored and :attr:`Pairing.dropped` lists the others."""
    r = as_report_map(references, ref_name)
    systems = {pred_name: as_report_map(predictions, pred_name)}
    if compare is not None:
        systems[compare_name] = as_report_map(compare, compare_name)
    if isinstance(r, list) or any(isinstance(p, list) for p in systems.values()):
        if not (isinstance(r, list) and all(isinstance(p, list) for p in systems.values())):
            raise ValueError(f"{' and '.join(systems)} and {ref_name} must all be lists or all carry study ids")
        for name, p in systems.items():
            if len(p) != len(r):
                raise ValueError(f"{len(p)} {name} but {len(r)} {ref_name}; lists pair by position")
        ids = [str(i) for i in range(len(r))]
        texts = {name: list(p) for name, p in systems.items()}
        refs = list(r)
        dropped: dict[str, list[str]] = {}
    else:
        dropped = {}
        errors = []
        for name, p in systems.items():
            one = name[:-1] if name.endswith("s") else name  # "prediction", "compared prediction"
            missing = [sid for sid in r if sid not in p]
            extra = [sid for sid in p if sid not in r]
            dropped[f"{ref_name} without {one}".replace(" ", "_")] = missing
            dropped[f"{name} without {ref_name[:-1]}".replace(" ", "_")] = extra
            if missing:
                errors.append(f"{len(missing)} reference studies have no {one}: {_fmt_ids(missing)}")
            if extra:
                errors.append(f"{len(extra)} {one.replace('prediction', 'predicted')} studies have no reference: "
                              f"{_fmt_ids(extra)}")
        files = [f"{n}: {x}" for n, x in ((ref_name, references), (pred_name, predictions), (compare_name, compare))
                 if isinstance(x, (str, Path))]
        files = f" [{'; '.join(files)}]" if files else ""
        if errors and not allow_partial:
            raise ValueError("; ".join(errors) + f"{files} (studies pair by study_id; --allow-partial / "
                             "allow_partial=True scores only the studies on both sides and reports how many were "
                             "dropped)")
        if not r:
            raise ValueError(f"no {ref_name} to evaluate{files}")
        ids = [sid for sid in r if all(sid in p for p in systems.values())]
        if not ids:
            raise ValueError(f"no study id is in both the {' and '.join(systems)} and the {ref_name} "
                             f"({len(r)} references; first ids: {_fmt_ids(list(r))}){files}; check that both "
                             "files use the same study ids")
        texts = {name: [p[i] for i in ids] for name, p in systems.items()}
        refs = [r[i] for i in ids]
    truncated: dict[str, list[str]] = {}
    refs, truncated[ref_name] = _truncate(refs, ids, max_chars)
    for name in systems:
        texts[name], truncated[name] = _truncate(texts[name], ids, max_chars)
    return Pairing(ids, texts[pred_name], refs, texts.get(compare_name), dropped=dropped, truncated=truncated,
                   max_chars=max_chars if max_chars and max_chars > 0 else None, allow_partial=allow_partial)


def pair_reports(predictions, references, pred_name: str = "predictions",
                 ref_name: str = "references", *, allow_partial: bool = False,
                 max_chars: int | None = None) -> tuple[list[str], list[str], list[str]]:
    """(study ids, predicted texts, reference texts), aligned. Lists pair by position.

    :func:`pair_inputs` also says what was dropped or truncated; this keeps the old three-tuple."""
    pr = pair_inputs(predictions, references, allow_partial=allow_partial, max_chars=max_chars,
                     pred_name=pred_name, ref_name=ref_name)
    return pr.ids, pr.hyps, pr.refs
