"""From a recipe's ``data`` section to filtered study records (drawing the phantom set when asked).

``data.path`` and each ``data.extra_paths`` entry are read with their own declared image roots
(``records.roots.json``, see `mxr0.data.records`); a prepared folder not marked complete is refused."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from mxr0.config import ConfigError, DataConfig
from mxr0.data.phantom import generate_phantom
from mxr0.data.records import read_records

log = logging.getLogger(__name__)


def ensure_data(cfg: DataConfig) -> Path:
    """The records path of ``cfg``; draws the phantom set first when ``source == 'phantom'`` and it
    is missing or was drawn with other arguments."""
    path = Path(cfg.path)
    if cfg.source == "phantom":

        return Path(
            generate_phantom(
                path,
                n_studies=cfg.phantom.n_studies,
                image_size=cfg.phantom.image_size,
                seed=cfg.phantom.seed,
                overwrite=False,
            )
        )
    if not path.exists():
        raise ConfigError(
            f"data.path={cfg.path!r} does not exist. Create records with `mxr0 prepare <source>` "
            "or use data.source=phantom for the embedded phantom set"
        )
    _refuse_incomplete(path, "data.path")
    return path


def _refuse_incomplete(path: Path, field: str) -> None:
    """A prepared folder that its writer did not mark complete (an interrupted or concurrent
    `mxr0 prepare`) is never used: ConfigError naming the folder and how to finish it."""
    folder = path if path.is_dir() else path.parent
    if (folder / ".phantom-incomplete").exists():
        raise ConfigError(f"{field}={str(path)!r}: the phantom folder {folder} was not finished (an interrupted or "
                          "concurrent `mxr0 prepare phantom`); run `mxr0 prepare phantom --out "
                          f"{folder} --overwrite` or use data.source=phantom")
    meta = folder / "cache.json"
    if meta.exists():
        try:
            complete = json.loads(meta.read_text(encoding="utf-8")).get("complete") is True
        except (OSError, ValueError, AttributeError):
            complete = False
        if not complete:
            raise ConfigError(f"{field}={str(path)!r}: the image cache {folder} is not complete (cache.json does not "
                              "say complete: true; an interrupted or running `mxr0 prepare cache`). Run `mxr0 prepare "
                              "cache` for it again (it resumes) and wait for it to finish")


def load_split(cfg: DataConfig, split: str, limit: int | None = None) -> list[dict]:
    """Records of one split after the recipe's anatomy filter and cap."""
    records = read_records(ensure_data(cfg), splits=[split])
    seen = {r["study_id"]: cfg.path for r in records}
    for extra in cfg.extra_paths:
        if not Path(extra).exists():
            raise ConfigError(f"data.extra_paths: {extra!r} does not exist (create it with `mxr0 prepare <source>`)")
        _refuse_incomplete(Path(extra), "data.extra_paths")
        more = read_records(extra, splits=[split])
        clash = [r["study_id"] for r in more if r["study_id"] in seen]
        if clash:
            raise ConfigError(f"study id {clash[0]!r} is in both {seen[clash[0]]} and {extra} ({len(clash)} clashes); "
                              "the sources of one run need distinct study ids")
        seen.update({r["study_id"]: extra for r in more})
        records += more
    if cfg.anatomies is not None:
        records = [r for r in records if r["anatomy"] in set(cfg.anatomies)]
    if limit is not None:
        records = records[:limit]
    if not records:
        raise ConfigError(
            f"no studies left in split {split!r} of {cfg.path} after filtering "
            f"(data.anatomies={cfg.anatomies}); check the data or the filter"
        )
    return records


def select_image(record: dict, views: list[str] | None) -> int | None:
    """Index of the first current image whose view is allowed (None when the study has none)."""
    for i, im in enumerate(record["images"]):
        if im.get("role", "current") != "current":
            continue
        if views is None or im["view"] in views:
            return i
    return None
