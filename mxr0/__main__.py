"""``python -m mxr0`` (and ``accelerate launch -m mxr0 …``)."""
import sys

from mxr0.cli import main

sys.exit(main())
