"""``mxr0 serve``: the models behind an OpenAI-compatible endpoint, task endpoints and a web page.

`Session` keeps the models loaded (usable from Python), `Batcher` groups concurrent generation requests into
batched ``generate`` calls, `create_app` builds the FastAPI app (needs the ``serve`` extra: fastapi, uvicorn,
python-multipart). See docs/serving.md.
"""

from mxr0.serve.batching import Batcher, Job, QueueFull
from mxr0.serve.images import ImageError, XrayImage, read_upload
from mxr0.serve.session import RequestError, Session


def create_app(*args, **kwargs):
    from mxr0.serve.app import create_app as _create

    return _create(*args, **kwargs)


__all__ = ["Batcher", "ImageError", "Job", "QueueFull", "RequestError", "Session", "XrayImage", "create_app",
           "read_upload"]
