"""Benchmark the training data path: decoding full-size originals versus the preprocessed cache.

    .venv/bin/python scripts/bench_data.py                       # 48 images of 2500x2048, 2 workers
    .venv/bin/python scripts/bench_data.py --n 128 --workers 8 --crop 518 --size 518 --bits 16

The script draws a synthetic set of large radiographs in a temporary folder (``--height`` x
``--width``, a third each 8-bit JPEG, 16-bit PNG and 12-bit uncompressed DICOM, like MIMIC-CXR-JPG /
exported PNG / PACS sources), writes canonical records for them, builds the cache with
:func:`mxr0.data.cache.build_cache` at ``--size`` (timed: a one-off cost), then measures images/s of
what a classification run does per sample: ``StudyImageDataset`` of ``mxr0/tasks/classify.py``
(``read_xray`` then ``ImageTransform(size=--crop)``) through a torch ``DataLoader`` with
``--workers`` processes. Both sides run in the same process, in interleaved rounds (after one
warm-up pass each), and the median round is reported. The cache side repeats its images
``--repeat`` times per round so its rounds are long enough to time.

The originals are read from the page cache (they were just written), so disk or network reads,
which make the originals slower still, are not counted. It also prints the mean absolute
difference of the transformed images between the two paths (in [0, 1] pixel units) to show that
the cache changes only resampling, not the field of view. The last line is the ratio cache /
originals.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mxr0.data.cache import build_cache  # noqa: E402
from mxr0.data.records import CHEXPERT_LABELS, empty_record, read_records, write_records  # noqa: E402
from mxr0.data.transforms import ImageTransform  # noqa: E402
from mxr0.data.xray import read_xray  # noqa: E402
from mxr0.data.classify_dataset import StudyImageDataset  # noqa: E402

FORMATS = ("jpeg", "png16", "dicom")


def synthetic_xray(h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    """A chest-film-like float image in [0, 1]: bright mediastinum and ribs-ish bands, dark lungs, noise."""
    y = np.linspace(-1, 1, h, dtype=np.float32)[:, None]
    x = np.linspace(-1, 1, w, dtype=np.float32)[None, :]
    cx, cy = rng.uniform(-0.05, 0.05, 2)
    img = 0.75 - 0.15 * (y - cy)
    for side in (-1, 1):
        lung = ((x - cx - side * 0.42) / 0.3) ** 2 + ((y - cy + 0.05) / 0.6) ** 2 < 1
        img = np.where(lung, img - 0.35, img)
    img = img + 0.04 * np.sin(y * rng.uniform(25, 35)) * (np.abs(x) > 0.15)
    img = img + rng.normal(0, 0.01, (h, w)).astype(np.float32)
    return np.clip(img, 0, 1).astype(np.float32)


def write_dicom(path: Path, img: np.ndarray) -> None:
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    arr = np.rint(img * 4095).astype(np.uint16)
    fm = FileMetaDataset()
    fm.TransferSyntaxUID = ExplicitVRLittleEndian
    fm.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    fm.MediaStorageSOPInstanceUID = generate_uid()
    ds = Dataset()
    ds.file_meta = fm
    ds.SOPClassUID, ds.SOPInstanceUID = fm.MediaStorageSOPClassUID, fm.MediaStorageSOPInstanceUID
    ds.Modality = "CR"
    ds.Rows, ds.Columns = arr.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.WindowCenter, ds.WindowWidth = 2048, 4096
    ds.PixelData = arr.tobytes()
    ds.save_as(path, enforce_file_format=True)


def make_originals(root: Path, n: int, h: int, w: int, seed: int = 0) -> Path:
    from PIL import Image

    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    records = []
    for i in range(n):
        fmt = FORMATS[i % len(FORMATS)]
        # vary the shape a little, portrait and landscape, as real films do
        hh, ww = (h, w) if i % 4 else (w, h)
        img = synthetic_xray(hh, ww, rng)
        if fmt == "jpeg":
            name = f"images/s{i:04d}.jpg"
            Image.fromarray(np.rint(img * 255).astype(np.uint8)).save(root / name, quality=95)
        elif fmt == "png16":
            name = f"images/s{i:04d}.png"
            Image.fromarray(np.rint(img * 65535).astype(np.uint16)).save(root / name, compress_level=1)
        else:
            name = f"images/s{i:04d}.dcm"
            write_dicom(root / name, img)
        r = empty_record(f"s{i:04d}", source="bench")
        r["images"] = [{"path": name, "view": "PA", "role": "current"}]
        r["labels"] = {k: int(rng.integers(0, 2)) for k in CHEXPERT_LABELS}
        records.append(r)
    return write_records(records, root / "records.jsonl")


def loader(records, transform, workers: int, batch_size: int, repeat: int = 1):
    ds = StudyImageDataset(records * repeat, list(CHEXPERT_LABELS), transform)
    return torch.utils.data.DataLoader(ds, batch_size=batch_size, num_workers=workers,
                                       persistent_workers=workers > 0, shuffle=False)


def one_pass(dl) -> tuple[int, float]:
    t = time.perf_counter()
    n = 0
    for batch in dl:
        n += batch["pixel_values"].shape[0]
    return n, time.perf_counter() - t


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=48, help="synthetic studies (one image each)")
    p.add_argument("--height", type=int, default=2500)
    p.add_argument("--width", type=int, default=2048)
    p.add_argument("--size", type=int, default=518, help="cache size (shortest side)")
    p.add_argument("--bits", type=int, choices=[8, 16], default=8, help="cache bit depth")
    p.add_argument("--crop", type=int, default=224, help="ImageTransform size the model sees")
    p.add_argument("--workers", type=int, default=2, help="DataLoader workers (and cache build processes)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--rounds", type=int, default=3, help="timed rounds per side (interleaved)")
    p.add_argument("--repeat", type=int, default=6, help="cache side: passes over the images per round")
    p.add_argument("--threads", type=int, default=1, help="torch threads in this process (workers use 1)")
    p.add_argument("--keep", help="write the data here and keep it (default: a temporary folder)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory(prefix="bench_data_") as tmp:
        root = Path(args.keep or tmp)
        t = time.perf_counter()
        rec_path = make_originals(root / "originals", args.n, args.height, args.width)
        print(f"synthetic originals: {args.n} images of ~{args.height}x{args.width} "
              f"(JPEG / 16-bit PNG / 12-bit DICOM) in {time.perf_counter() - t:.1f} s")
        t = time.perf_counter()
        cache_path = build_cache(rec_path, root / "originals" / f"cache-{args.size}", size=args.size, bits=args.bits,
                                 workers=args.workers, progress=False)
        build_s = time.perf_counter() - t
        print(f"cache build ({args.size}px, {args.bits}-bit, {args.workers} processes): {build_s:.1f} s "
              f"= {args.n / build_s:.1f} images/s, once")

        transform = ImageTransform(size=args.crop)
        orig = read_records(rec_path)
        cached = read_records(cache_path)
        diffs = []
        std = torch.tensor(transform.std).view(-1, 1, 1)
        for a, b in list(zip(orig, cached))[:6]:
            xa = transform(read_xray(a["images"][0]["path"])) * std
            xb = transform(read_xray(b["images"][0]["path"])) * std
            diffs.append(float((xa - xb).abs().mean()))
        print(f"same field of view: mean |original - cache| after ImageTransform({args.crop}) = "
              f"{statistics.mean(diffs):.4f} (pixel units in [0, 1])")

        sides = {"originals": loader(orig, transform, args.workers, args.batch_size),
                 "cache": loader(cached, transform, args.workers, args.batch_size, repeat=args.repeat)}
        for dl in sides.values():  # warm-up: start the workers, fill the page cache
            one_pass(dl)
        rates: dict[str, list[float]] = {k: [] for k in sides}
        for i in range(args.rounds):  # interleaved, so machine noise hits both sides alike
            for name in (("originals", "cache") if i % 2 == 0 else ("cache", "originals")):
                n, s = one_pass(sides[name])
                rates[name].append(n / s)
        del sides
    med = {k: statistics.median(v) for k, v in rates.items()}
    print(f"training data path: read_xray + ImageTransform({args.crop}), DataLoader with {args.workers} workers, "
          f"batch {args.batch_size}, median of {args.rounds} rounds")
    print(f"  originals (~{args.height}x{args.width}, decoded every step): {med['originals']:8.1f} images/s")
    print(f"  cache ({args.size}px {args.bits}-bit PNG):                       {med['cache']:8.1f} images/s")
    print(f"  ratio cache / originals: {med['cache'] / med['originals']:.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
