"""The README's main command (`mxr0 demo`), a package of its parts: `main` runs the tiny recipe chain (`chain`:
XR-0 → classifier → alignment → VLM stage 1 → stage 2), scores every stage (`scores`, reports in `report`) and
prints one table of them (`table`); `common` holds what they share. (The XR-0-only branch, `xr0`, went with the
chain: its stage 1 is XR-0 pretraining, and `mxr0 eval vision` scores any export against random init.)"""

from mxr0.demo.common import recipe_path
from mxr0.demo.main import run_demo

__all__ = ["recipe_path", "run_demo"]
