"""``mxr0 export`` (a run's checkpoint as a Hugging Face folder) and ``mxr0 export-encoder`` (the image encoder of
any export as a standalone encoder folder)."""

from __future__ import annotations

import argparse
import sys


def add_parser(commands: argparse._SubParsersAction) -> None:
    """Declare ``mxr0 export`` and ``mxr0 export-encoder``."""
    x = commands.add_parser("export", help="write a run's checkpoint as a Hugging Face folder (LoRA merged)")
    x.add_argument("run_dir", help="a training run folder (holds recipe.yaml and checkpoints/)")
    x.add_argument("--checkpoint", default="latest", help="checkpoint folder or 'latest'")
    x.add_argument("--out", default=None, help="output folder (default RUN_DIR/export-step-N)")
    x.add_argument("--merge", action="store_true", default=True,
                   help="merge LoRA adapters into the weights (always done; the adapter is kept in adapter/)")
    x.set_defaults(fn=run_export)

    xe = commands.add_parser("export-encoder", help="write the image encoder of any export (XR-0, classifier, "
                             "alignment, report / VLM) as a standalone Hugging Face encoder folder")
    xe.add_argument("source", help="an export folder or Hub id: XR-0 / DINOv2 / RAD-DINO encoder, classifier, "
                    "alignment dual encoder (its vision tower) or report / VLM (its vision tower)")
    xe.add_argument("--out", required=True, help="output folder (config.json, model.safetensors, "
                    "preprocessor_config.json; AutoModel / AutoImageProcessor load it)")
    xe.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    xe.set_defaults(fn=run_export_encoder)


def run_export(args: argparse.Namespace) -> int:
    from mxr0.train.export import export_checkpoint  # lazy: keep mxr0 --help fast

    out = export_checkpoint(args.run_dir, checkpoint=args.checkpoint, out_dir=args.out)
    print(f"[mxr0] exported {out}")
    return 0


def run_export_encoder(args: argparse.Namespace) -> int:
    from mxr0.models.encoder import EncoderSourceError  # lazy: keep mxr0 --help fast
    from mxr0.models.encoder_export import export_encoder  # lazy: keep mxr0 --help fast

    try:
        out = export_encoder(args.source, args.out, overwrite=args.overwrite)
    except (EncoderSourceError, FileExistsError, FileNotFoundError) as e:
        print(f"mxr0 export-encoder: {e}", file=sys.stderr)
        return 1
    print(f"[mxr0] encoder exported: {out}")
    return 0
