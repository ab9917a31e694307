"""One writer per prepared folder (issue #16 items 2 / 6): `mxr0 prepare` holds the output folder's
lock, a folder is marked complete only after its files are verified, and an incomplete folder is
never reused."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from filelock import FileLock

from mxr0.config import ConfigError, DataConfig
from mxr0.data.loading import ensure_data
from mxr0.data.phantom import generate_phantom
from mxr0.data.records import LOCK_NAME, FolderBusyError, folder_lock, missing_files, read_records

REPO = Path(__file__).resolve().parents[2]


def _env(**kw):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    env.update(kw)
    return env


def _prepare(out: Path, n: int = 60, stderr=subprocess.PIPE, **env) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "mxr0", "prepare", "phantom", "--out", str(out), "--n", str(n),
                             "--size", "32"], cwd=REPO, env=_env(**env), stdout=subprocess.PIPE,
                            stderr=stderr, text=True)


def _assert_complete(out: Path, n: int) -> None:
    assert (out / "phantom.json").exists() and not (out / ".phantom-incomplete").exists()
    recs = read_records(out / "records.jsonl", resolve_paths=False)
    assert len(recs) == n
    assert missing_files(recs, out) == []
    assert not [p for p in out.iterdir() if ".tmp" in p.name]


def test_two_concurrent_prepare_runs_serialise_and_leave_a_complete_folder(tmp_path):
    """Two real `mxr0 prepare phantom` processes into one folder. The test holds the folder's lock
    until both have started and said they wait, so they must contend; then one draws, the other
    waits again, verifies and reuses the folder. Both succeed and every file of the records exists."""
    out = tmp_path / "phantom"
    out.mkdir()
    logs = [tmp_path / "a.err", tmp_path / "b.err"]
    held = FileLock(str(out / LOCK_NAME))
    held.acquire()
    try:
        procs = [_prepare(out, stderr=open(f, "w")) for f in logs]
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and not all("waiting up to" in f.read_text() for f in logs):
            if all(p.poll() is not None for p in procs):
                break
            time.sleep(0.3)
        assert all("waiting up to" in f.read_text() for f in logs), [f.read_text()[-800:] for f in logs]
        assert not (out / "images").exists(), "a run wrote the folder while another process held its lock"
    finally:
        held.release()
    for p, f in zip(procs, logs):
        p.communicate(timeout=300)
        assert p.returncode == 0, f.read_text()[-2000:]
    _assert_complete(out, 60)
    assert (out / "records.roots.json").exists()


def test_second_writer_times_out_with_a_named_message(tmp_path):
    out = tmp_path / "phantom"
    out.mkdir()
    with FileLock(str(out / LOCK_NAME)):
        p = _prepare(out, MXR0_PREPARE_LOCK_TIMEOUT="1")
        so, se = p.communicate(timeout=120)
    assert p.returncode == 1
    assert "still being written by another process" in se and str(out) in se and LOCK_NAME in se
    assert "MXR0_PREPARE_LOCK_TIMEOUT" in se and "Traceback" not in se
    assert not (out / "records.jsonl").exists()


def test_lock_in_process_waits_then_fails(tmp_path, monkeypatch):
    """`mxr0 prepare <source>` (sources.convert) and `prepare cache` (build_cache) take the lock too."""
    from mxr0.data.cache import build_cache
    from mxr0.data.sources import convert

    monkeypatch.setenv("MXR0_PREPARE_LOCK_TIMEOUT", "0.2")
    rec = generate_phantom(tmp_path / "ph", n_studies=4, image_size=32, workers=0, progress=False)
    busy = tmp_path / "out"
    busy.mkdir()
    with FileLock(str(busy / LOCK_NAME)):
        with pytest.raises(FolderBusyError, match="mxr0 prepare chexpert: .*out is still being written"):
            convert("chexpert", tmp_path / "nowhere", busy)
        with pytest.raises(FolderBusyError, match="mxr0 prepare cache"):
            build_cache(rec, busy, size=16, workers=0, progress=False)
    with folder_lock(busy, timeout=0.1):  # released: free again
        pass


def test_incomplete_folder_is_redrawn_not_reused(tmp_path, caplog):
    out = tmp_path / "ph"
    rec = generate_phantom(out, n_studies=6, image_size=32, workers=0, progress=False)
    victim = out / read_records(rec, resolve_paths=False)[2]["images"][0]["path"]
    victim.unlink()
    (out / "masks" / sorted(os.listdir(out / "masks"))[0]).write_bytes(b"")
    generate_phantom(out, n_studies=6, image_size=32, workers=0, progress=False)
    assert "missing or empty" in caplog.text and "drawing it again" in caplog.text
    assert victim.stat().st_size > 0
    _assert_complete(out, 6)
    # an earlier run that did not finish (marker left) is never reused either
    (out / ".phantom-incomplete").write_text("x")
    stamp = (out / "records.jsonl").stat().st_mtime_ns
    time.sleep(0.01)
    generate_phantom(out, n_studies=6, image_size=32, workers=0, progress=False)
    assert (out / "records.jsonl").stat().st_mtime_ns != stamp
    _assert_complete(out, 6)


def test_training_refuses_an_incomplete_prepared_folder(tmp_path):
    rec = generate_phantom(tmp_path / "ph", n_studies=4, image_size=32, workers=0, progress=False)
    from mxr0.data.cache import build_cache

    cached = build_cache(rec, tmp_path / "cache", size=16, workers=0, progress=False)
    cfg = DataConfig(source="records", path=str(cached.parent))
    assert ensure_data(cfg) == cached.parent
    meta = json.loads((cached.parent / "cache.json").read_text())
    (cached.parent / "cache.json").write_text(json.dumps({**meta, "complete": False}))
    with pytest.raises(ConfigError, match=r"data.path=.*cache.*is not complete.*mxr0 prepare cache"):
        ensure_data(cfg)
    (tmp_path / "ph" / ".phantom-incomplete").write_text("x")
    with pytest.raises(ConfigError, match=r"phantom folder .* was not finished"):
        ensure_data(DataConfig(source="records", path=str(tmp_path / "ph")))
