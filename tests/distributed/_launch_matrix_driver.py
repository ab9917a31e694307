"""Several ``mxr0 train`` command lines in one ``accelerate launch`` (for tests/distributed/test_launch_matrix.py).

    ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes 2 tests/distributed/_launch_matrix_driver.py RUNS.json

``RUNS.json`` is a list of argument lists for ``mxr0.cli.main`` (what ``-m mxr0`` runs), run one after the other
in the same processes: a process start costs ~8 s on a 2-core machine, a tiny run ~2 s. ``train`` ends with
``accelerator.end_training()``, which destroys the process group; here it keeps it for the next run.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def main(spec: str) -> int:
    from accelerate import Accelerator

    def end_training(self):  # keep the process group (and accelerate's singleton state) for the next run
        for tracker in self.trackers:
            tracker.finish()

    Accelerator.end_training = end_training
    from mxr0.cli import main as cli

    for argv in json.loads(Path(spec).read_text()):
        print(f"[driver] mxr0 {' '.join(argv[:2])} {'--resume' if '--resume' in argv else ''}", flush=True)
        rc = cli(argv)
        if rc:
            return rc
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
