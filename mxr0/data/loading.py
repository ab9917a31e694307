"""From a recipe's ``data`` section to filtered study records (drawing the phantom set when asked)."""

from __future__ import annotations

import logging
from pathlib import Path

from mxr0.config import ConfigError, DataConfig
from mxr0.data.records import read_records

log = logging.getLogger(__name__)


def ensure_data(cfg: DataConfig) -> Path:
    """The records path of ``cfg``; draws the phantom set first when ``source == 'phantom'`` and it
    is missing or was drawn with other arguments."""
    path = Path(cfg.path)
    if cfg.source == "phantom":
        from mxr0.data.phantom import generate_phantom

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
    return path


def load_split(cfg: DataConfig, split: str, limit: int | None = None) -> list[dict]:
    """Records of one split after the recipe's anatomy filter and cap."""
    records = read_records(ensure_data(cfg), splits=[split])
    seen = {r["study_id"]: cfg.path for r in records}
    for extra in cfg.extra_paths:
        if not Path(extra).exists():
            raise ConfigError(f"data.extra_paths: {extra!r} does not exist (create it with `mxr0 prepare <source>`)")
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
