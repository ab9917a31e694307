"""Where a model comes from: a local export folder, or a Hub id resolved through ``snapshot_download`` with
named errors (not found, gated, offline without a cached copy); tokens are scrubbed from every message."""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

_TOKEN_RE = re.compile(r"\b(?:hf|api_org)_[A-Za-z0-9]{8,}\b")
_HUB_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")
_LOCAL_PREFIXES = ("runs", "data_cache", "outputs", "output", "checkpoints", "export", "data", "models", "tmp")


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

    name = str(model)
    if not is_hub_id(name):
        raise ModelNotFound(f"{name}: no such folder, and not a Hub repo id (OWNER/NAME)")
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

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

        raise ModelNotFound(scrub_tokens(f"downloading {at} from {endpoint} failed: {type(e).__name__}: {e}")) from None
    log.info("model %s: %s", at, folder)
    return Path(folder)


def scrub_tokens(text: str, secrets: Iterable[str] = ()) -> str:
    """Replace anything that looks like a Hugging Face token (``hf_…``, ``api_org_…``) and the given
    secrets by ``<redacted>``."""
    for s in secrets:
        if s:
            text = text.replace(s, "<redacted>")
    return _TOKEN_RE.sub("<redacted>", text)


def is_hub_id(value: Any) -> bool:
    """``org/name`` that is not a local path (exists here, absolute, or under runs/, data_cache/, …)."""
    if not isinstance(value, str) or not _HUB_ID_RE.match(value):
        return False
    if value.split("/")[0] in _LOCAL_PREFIXES or value.startswith("."):
        return False
    return not Path(value).exists()
