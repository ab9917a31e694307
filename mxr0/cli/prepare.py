"""``mxr0 prepare SOURCE``: phantom studies, a dataset (its converter in `mxr0.data.sources` declares its own
options), a merge of prepared records or an image cache, written as canonical records."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from mxr0.data.records import FolderBusyError, IncompleteFolderError
from mxr0.data.sources import SOURCES, SourceError, add_source_arguments, convert, describe

#: The sources that are no dataset converter; their options are declared here.
BUILTIN = ("phantom", "cache")


def add_parser(commands: argparse._SubParsersAction) -> None:
    """Declare ``mxr0 prepare SOURCE [options]``; the options are parsed by `source_parser` (SOURCE's own)."""
    pr = commands.add_parser("prepare", help="convert a source into canonical study records",
                             description="Convert a source into canonical study records. `mxr0 prepare SOURCE "
                                         "--help` lists the options of SOURCE.")
    pr.add_argument("source", metavar="SOURCE", help=f"phantom, {', '.join(SOURCES)}, or cache (resize the images "
                    "and masks of the records at --root; needs --cache-size)")
    pr.add_argument("options", nargs=argparse.REMAINDER, help="the options of SOURCE (mxr0 prepare SOURCE --help)")
    pr.set_defaults(fn=run)


class _UsageError(Exception):
    """A ``mxr0 prepare SOURCE`` usage error, already printed with the usage line."""


class _SourceParser(argparse.ArgumentParser):
    """The parser of one source's options. A usage error makes the command return 2 (as the checks it replaced
    did), not leave the process: callers of `mxr0.cli.main` get the status back."""

    def error(self, message: str):
        self.print_usage(sys.stderr)
        print(f"{self.prog}: error: {message}", file=sys.stderr)
        raise _UsageError(message)


def source_parser(name: str) -> tuple[argparse.ArgumentParser, set[str]]:
    """The parser of ``mxr0 prepare NAME`` and the destinations of the options every source shares (``--out``,
    ``--cache-size`` …); the other options are keyword arguments of NAME's converter."""
    if name not in (*BUILTIN, *SOURCES):
        raise ValueError(f"unknown source {name!r}; available: {', '.join((*BUILTIN, *SOURCES))}")
    if name == "phantom":
        p = _SourceParser(prog="mxr0 prepare phantom", description="Phantom studies: synthetic chest, hand, knee "
                          "and pelvis radiographs with reports, CheXpert labels, boxes, masks and QA pairs.")
        _add_phantom_arguments(p)
    elif name == "cache":
        p = _SourceParser(prog="mxr0 prepare cache", description="Cache the images and masks of prepared records, "
                          "resized to --cache-size (resumable).")
    else:
        p = _SourceParser(prog=f"mxr0 prepare {name}", description=describe(name))
        add_source_arguments(name, p)
    return p, _add_shared_arguments(p, name)


def _add_phantom_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--n", type=int, default=2000, help="studies to draw")
    p.add_argument("--size", type=int, default=128, help="image side in pixels")
    p.add_argument("--seed", type=int, default=0, help="random seed")
    p.add_argument("--preview", help="write a contact sheet PNG with boxes drawn")
    p.add_argument("--prior-fraction", type=float, default=0.0,
                   help="share of chest studies drawn as longitudinal pairs (prior image + report, comparison "
                        "statements); default 0 (none)")
    p.add_argument("--anatomies", type=_anatomy_list, default=None,
                   help="draw only these anatomies, comma-separated (e.g. chest), in their default proportions; "
                        "default: all (60%% chest)")


def _anatomy_list(text: str) -> list[str]:
    from mxr0.data.phantom import PHANTOM_ANATOMIES  # lazy: keep mxr0 --help fast

    names = [a.strip() for a in text.split(",") if a.strip()]
    bad = [a for a in names if a not in PHANTOM_ANATOMIES]
    if not names or bad:
        raise argparse.ArgumentTypeError(f"{text!r}: the phantom draws {', '.join(PHANTOM_ANATOMIES)}")
    return names


_REBUILD = "rebuild a cache made with other settings"


def _add_shared_arguments(p: argparse.ArgumentParser, name: str) -> set[str]:
    """Declare the options the sources share (``--root`` all but phantom, ``--format`` the converters, the cache
    options all); return their destinations."""
    cache = name == "cache"
    g = p.add_argument_group("common options")
    shared = []
    if name != "phantom":
        shared.append(g.add_argument("--root", required=True,
                                     help="a records file or folder" if cache else "the dataset folder"))
    shared.append(g.add_argument("--out", default=None if cache else f"data_cache/{name}",
                                 help="cache folder (default cache-N beside the records)" if cache
                                 else f"output folder (default data_cache/{name})"))
    if name not in BUILTIN:
        shared.append(g.add_argument("--format", choices=["jsonl", "parquet"], default="jsonl",
                                     help="records file format"))
    # the cache is written by mxr0.data.cache.build_cache
    shared.append(g.add_argument("--cache-size", type=int, required=cache, default=None,
                                 help="images resized to this shortest side (e.g. 518)" if cache else
                                 "also write a training cache: images resized to this shortest side (e.g. 518), "
                                 "in OUT/cache-N (resumable)"))
    shared.append(g.add_argument("--cache-bits", type=int, choices=[8, 16], default=8,
                                 help="cache: PNG bit depth (default 8)"))
    shared.append(g.add_argument("--workers", type=int, default=None,
                                 help="cache: decoding processes (default min(4, CPUs))"))
    overwrite = {"phantom": f"draw again even if the same set exists; with --cache-size: {_REBUILD}",
                 "cache": _REBUILD}
    shared.append(g.add_argument("--overwrite", action="store_true",
                                 help=overwrite.get(name, f"with --cache-size: {_REBUILD}")))
    return {a.dest for a in shared}


def run(args: argparse.Namespace) -> int:
    """``mxr0 prepare``: every output folder is written under its lock (``.mxr0-prepare.lock``): a second
    run into the same folder waits for the first (up to ``$MXR0_PREPARE_LOCK_TIMEOUT`` s, default 3600)
    and then reuses or rewrites it; a folder is marked complete only after every file is verified."""
    if args.source not in (*BUILTIN, *SOURCES):
        print(f"mxr0 prepare: unknown source {args.source!r}; available: {', '.join((*BUILTIN, *SOURCES))}",
              file=sys.stderr)
        return 2
    parser, shared = source_parser(args.source)
    try:
        opts = parser.parse_args(args.options)
    except _UsageError:
        return 2
    try:
        if args.source == "phantom":
            return _prepare_phantom(opts)
        if args.source == "cache":
            return _prepare_cache(opts, None)
        return _prepare_source(args.source, opts, {k: v for k, v in vars(opts).items() if k not in shared})
    except (FolderBusyError, IncompleteFolderError) as e:
        print(f"mxr0 prepare {args.source}: {e}", file=sys.stderr)
        return 1


def _prepare_phantom(opts: argparse.Namespace) -> int:
    from mxr0.data.phantom import DEFAULT_ANATOMY_MIX, generate_phantom, preview_grid  # lazy: keep mxr0 --help fast

    t0 = time.perf_counter()
    mix = None if opts.anatomies is None else {a: DEFAULT_ANATOMY_MIX[a] for a in opts.anatomies}
    path = generate_phantom(opts.out, n_studies=opts.n, image_size=opts.size, seed=opts.seed, anatomy_mix=mix,
                            overwrite=opts.overwrite, progress=True, prior_fraction=opts.prior_fraction)
    print(f"[mxr0] phantom records: {path} ({time.perf_counter() - t0:.1f} s)")
    if opts.preview:
        preview_grid(path, opts.preview)
        print(f"[mxr0] preview: {opts.preview}")
    return _prepare_cache(opts, path) if opts.cache_size else 0


def _prepare_source(name: str, opts: argparse.Namespace, options: dict) -> int:
    """Run source ``name``'s converter with its own ``options`` (its keyword arguments)."""
    t0 = time.perf_counter()
    try:
        path = convert(name, opts.root, opts.out, fmt=opts.format, show_progress=True, **options)
    except (SourceError, FileNotFoundError, ValueError) as e:
        print(f"mxr0 prepare {name}: {e}", file=sys.stderr)
        return 1
    print(f"[mxr0] {name} records: {path} ({time.perf_counter() - t0:.1f} s)")
    return _prepare_cache(opts, path) if opts.cache_size else 0


def _prepare_cache(opts: argparse.Namespace, records) -> int:
    """``--cache-size N``: cache the images of ``records`` in ``<records folder>/cache-N``; with
    ``records=None`` (``mxr0 prepare cache``) those of ``--root``, into ``--out`` if given."""
    from mxr0.data.cache import build_cache  # lazy: keep mxr0 --help fast

    if records is None:
        records = Path(opts.root)
        folder = records if records.is_dir() else records.parent
        out = Path(opts.out) if opts.out else folder / f"cache-{opts.cache_size}"
    else:
        out = Path(records).parent / f"cache-{opts.cache_size}"
    t0 = time.perf_counter()
    try:
        path = build_cache(records, out, size=opts.cache_size, bits=opts.cache_bits, workers=opts.workers,
                           progress=True, overwrite=opts.overwrite)
    except (FileNotFoundError, ValueError) as e:
        print(f"mxr0 prepare: {e}", file=sys.stderr)
        return 1
    m = json.loads((out / "cache.json").read_text())
    print(f"[mxr0] cache {opts.cache_size}px {opts.cache_bits}-bit: {m['files']} files ({m['written']} written, "
          f"{m['skipped']} already cached, {m['failed']} unreadable), {m['studies']} studies "
          f"({m['studies_dropped']} dropped{', see cache.json' if m['failed'] else ''}) "
          f"({time.perf_counter() - t0:.1f} s)")
    print(f"[mxr0] cached records: {path}  (recipe: data.source=records data.path={out})")
    return 0
