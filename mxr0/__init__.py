"""mxr0: an open training stack for radiology vision-language models; ``mxr0.Pipeline`` keeps exported models loaded.

``import mxr0`` stays light: `Pipeline` (torch, transformers) is imported on first use (PEP 562).
"""

from mxr0._version import __version__


def __getattr__(name: str):
    if name == "Pipeline":
        from mxr0.serve.pipeline import Pipeline  # lazy: `import mxr0` (and `mxr0 --help`) must not load torch

        return Pipeline
    raise AttributeError(f"module 'mxr0' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), "Pipeline"])


__all__ = ["Pipeline", "__version__"]
