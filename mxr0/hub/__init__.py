"""Publication: a model card for a training run (`mxr0.hub.card`), and ``mxr0 push`` to the Hugging Face Hub (here).

    mxr0 push runs/tiny-classify --repo-id my-org/tiny-classify            private repo, branch main
    mxr0 push runs/xr0 --repo-id my-org/xr0 --revision v0.1 --eval runs/xr0/eval-vision/results.json
    mxr0 push runs/xr0 --repo-id my-org/xr0 --card-only card.md            write the card, upload nothing

What is uploaded, in one commit (``HfApi.upload_folder``): the run's Hugging Face export (``RUN_DIR/export``:
config, safetensors weights, processor / tokenizer files, the ``mxr0_*.json`` settings, a LoRA ``adapter/`` when
there is one) and a generated ``README.md`` (the model card). Never uploaded: ``checkpoints/`` (optimizer
states), logs, TensorBoard files, the training data.

The card holds the architecture and base checkpoints, the resolved training recipe (run folder and local
paths redacted: a local path keeps only its last component), the data section, evaluation tables (final
validation metrics from ``results.json`` and any ``mxr0 eval vision|reports|align`` outputs found in the
run folder or passed with ``--eval``, with bootstrap medians and 95% intervals and fairness slices where
present) and the same numbers as the YAML ``model-index``, intended use with a research-only disclaimer,
and limitations.

The token comes from the ``token`` argument, else ``HF_TOKEN``, else the stored login
(``huggingface-cli login`` / ``hf auth login``); it is never logged, printed or written into the card.
``HF_ENDPOINT`` (or ``endpoint``) selects another Hub server: ``https://``, or plain ``http://`` to a loopback
host only (127.0.0.0/8, ::1, localhost), since the token goes with every request (`check_endpoint`).
"""

from __future__ import annotations

import ipaddress
import logging
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import urlsplit

from mxr0.hub.card import DISCLAIMER, render_model_card
from mxr0.hub.run_folder import export_dir_of, uploaded_files
from mxr0.models.download import scrub_tokens

log = logging.getLogger("mxr0.hub")

_LOOPBACK_NAMES = ("localhost",)


class HubError(RuntimeError):
    """Pushing to the Hub failed or cannot start (no token, offline mode, no export); the message says why and how to fix it."""


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


def check_endpoint(endpoint: str | None, what: str = "--endpoint") -> str | None:
    """``endpoint`` unchanged when the Hub token may be sent to it: an ``https://`` URL, or plain ``http://``
    to a loopback host only (127.0.0.0/8, ::1, ``localhost``: a local mirror or test server, never on the
    wire). Anything else is a `HubError` naming ``what`` (the option or variable it came from)."""
    if not endpoint:
        return endpoint
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


def _stage(export: Path, card: str, folder: Path) -> int:
    """Lay out in ``folder`` what one commit uploads: links to the export's uploaded files (a copy where the
    file system has no symbolic links) and the card as ``README.md``; returns the number of files."""
    files = uploaded_files(export)
    for rel in files:
        dst = folder / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        try:
            dst.symlink_to((export / rel).resolve())
        except OSError:
            shutil.copy2(export / rel, dst)
    (folder / "README.md").write_text(card, encoding="utf-8")
    return len(files) + 1


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
    from huggingface_hub import HfApi, constants

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
        with tempfile.TemporaryDirectory(prefix="mxr0-push-") as tmp:
            n = _stage(export, card, Path(tmp))
            log.info("uploading %d files from %s to %s@%s", n, export.name, repo_id, revision or "main")
            info = api.upload_folder(repo_id=repo_id, folder_path=tmp, repo_type="model", revision=revision,
                                     commit_message=commit_message or f"Upload {run_dir.resolve().name} with mxr0",
                                     create_pr=create_pr)
    except Exception as e:  # the token must never surface in an error message either
        raise HubError(scrub_tokens(f"pushing {run_dir} to {repo_id} failed: {type(e).__name__}: {e}", [token])) from None
    out = str(info.pr_url or info.commit_url) if create_pr else str(info.commit_url)
    log.info("pushed %s to %s: %s", run_dir.resolve().name, repo_id, out)
    return out


__all__ = ["DISCLAIMER", "HubError", "check_endpoint", "push_run", "render_model_card", "resolve_token"]
