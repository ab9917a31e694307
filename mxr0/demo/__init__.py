"""The README's main command (`mxr0 demo`), a package of its parts: `main` runs them in order; `report` is
the report-generation part, `xr0` the XR-0 pretraining part; `common` holds what they share."""

from mxr0.demo.common import recipe_path
from mxr0.demo.main import run_demo

__all__ = ["recipe_path", "run_demo"]
