"""``mxr0 serve`` and ``mxr0.Pipeline``: the models behind an OpenAI-compatible endpoint, task endpoints and a web page.

`Pipeline` (also ``mxr0.Pipeline``) keeps the models loaded (usable from Python), `Batcher` groups concurrent
generation requests into batched ``generate`` calls, `create_app` builds the FastAPI app (needs the ``serve`` extra:
fastapi, uvicorn, python-multipart). See docs/serving.md.
"""

from mxr0.serve.batching import Batcher, Job, QueueFull
from mxr0.serve.images import ImageError, XrayImage, read_upload
from mxr0.serve.loading import RequestError
from mxr0.serve.pipeline import Pipeline


def create_app(*args, **kwargs):
    """The FastAPI app (`mxr0.serve.app.create_app`)."""
    from mxr0.serve.app import create_app as _create  # lazy: fastapi is the optional `serve` extra

    return _create(*args, **kwargs)


__all__ = ["Batcher", "ImageError", "Job", "Pipeline", "QueueFull", "RequestError", "XrayImage", "create_app",
           "read_upload"]
