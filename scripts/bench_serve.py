"""Benchmark `mxr0 serve`: requests/s of 16 concurrent HTTP clients against the batching server, against the same
requests sent one at a time, and the same two sides in process (``generate_batch`` with batches of 16 against
batches of one, what ``scripts/bench_generate.py`` measures). HTTP and the queue should cost little: the served
ratio should be >= 80% of the in-process ratio on the same model.

    .venv/bin/python scripts/bench_serve.py                                   # a tiny untrained VLM (no training)
    .venv/bin/python scripts/bench_serve.py --model runs/demo/report/export --n 64 --max-tokens 160
    .venv/bin/python scripts/bench_serve.py --model runs/mxr0-report/export --device cuda --n 256

Every request is a greedy chat completion with its own image (phantom-like random images, or ``--images DIR`` of
PNG / JPEG / DICOM files) and ``max_tokens``; the script checks that both served sides give the same answers,
interleaves ``--repeats`` rounds of the four measurements against machine noise, and prints the ratios; the last
line is served ratio / in-process ratio.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import os
import socket
import subprocess
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "unit"))


def _images(args) -> list[bytes]:
    if args.images:
        files = sorted(p for p in Path(args.images).iterdir() if p.is_file())
        return [files[i % len(files)].read_bytes() for i in range(args.n)]
    from mxr0.serve.images import png_bytes

    out = []
    for i in range(args.n):
        g = np.random.default_rng(i)
        img = np.clip(np.linspace(0, 1, 96)[None, :] * 0.5 + g.random((112, 96)) * 0.5, 0, 1).astype(np.float32)
        out.append(png_bytes(img))
    return out


@contextlib.contextmanager
def serving(model_dir, args):
    """``mxr0 serve`` in a subprocess on a free loopback port (its own interpreter: no GIL shared with the clients)."""
    import httpx

    with socket.socket() as sk:
        sk.bind(("127.0.0.1", 0))
        port = sk.getsockname()[1]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads or os.cpu_count())}
    proc = subprocess.Popen([sys.executable, "-m", "mxr0", "serve", "--model", str(model_dir), "--port", str(port),
                             "--max-batch", str(args.clients), "--max-queue", str(max(64, 2 * args.n)),
                             "--device", args.device], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        t0 = time.monotonic()
        while True:
            try:
                if httpx.get(url + "/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if proc.poll() is not None or time.monotonic() - t0 > 300:
                raise RuntimeError("mxr0 serve did not start")
            time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        proc.wait(30)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", help="report VLM export (default: a tiny untrained one, built in seconds)")
    ap.add_argument("--images", help="folder of images to send (default: random images)")
    ap.add_argument("--n", type=int, default=32, help="requests per measurement")
    ap.add_argument("--clients", type=int, default=16, help="concurrent clients (and the server's --max-batch)")
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1, help="intra-op threads, pinned (0: torch's default)")
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    import httpx

    from mxr0.generate import generate_batch
    from _serve_exports import tiny_vlm_export  # the tests' tiny VLM builder
    from mxr0.serve import Pipeline

    model_dir = args.model
    if not model_dir:
        tmp = Path(tempfile.mkdtemp(prefix="mxr0-bench-serve-"))
        model_dir = tiny_vlm_export(tmp / "bench" / "export", tmp / "tok")
    session = Pipeline(model_dir, device=args.device, max_batch=args.clients, max_queue=max(64, 2 * args.n),
                      batch_wait_s=0.005)
    name = session.names["vlm"]
    images = _images(args)
    bodies = [{"model": name, "max_tokens": args.max_tokens, "messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "data:application/octet-stream;base64," + base64.b64encode(b).decode()}}]}]}
        for b in images]
    # in process: the same prompts straight into generate_batch
    reads = [session.read(b) for b in images]
    jobs = [session.chat_job([{"role": "user", "content": [{"type": "image"}]}], [im], max_new_tokens=args.max_tokens)
            for im in reads]
    items = [{"input_ids": j.input_ids, "labels": [-100] * len(j.input_ids), "pixel_values": j.pixel_values, "index": k}
             for k, j in enumerate(jobs)]
    model, tok = session.vlm["model"], session.vlm["tokenizer"]

    def direct(batch: int) -> list[str]:
        out = []
        for s in range(0, len(items), batch):
            out += generate_batch(model, tok, items[s:s + batch], args.max_tokens)
        return out

    with serving(model_dir, args) as url, httpx.Client(timeout=600, limits=httpx.Limits(max_connections=64)) as http:
        def ask(body):
            r = http.post(url + "/v1/chat/completions", json=body)
            r.raise_for_status()
            return r.json()["choices"][0]["message"]["content"]

        def one_at_a_time() -> list[str]:
            return [ask(b) for b in bodies]

        def concurrent() -> list[str]:
            with ThreadPoolExecutor(args.clients) as pool:
                return list(pool.map(ask, bodies))

        def health() -> tuple[int, int]:
            h = http.get(url + "/health").json()
            return h["batches"], h["batched_requests"]

        one = one_at_a_time()  # warm-up and the identity check
        b0, r0 = health()
        many = concurrent()
        b1, r1 = health()
        print(f"{args.clients} concurrent clients: {r1 - r0} requests in {b1 - b0} batched generate calls")
        same = sum(a == b for a, b in zip(one, many))
        print(f"identical greedy answers, {args.clients} concurrent clients vs one at a time: {same}/{len(bodies)}")
        direct(1), direct(args.clients)
        runs = {"served, one at a time": one_at_a_time, f"served, {args.clients} clients": concurrent,
                "in process, batch 1": lambda: direct(1), f"in process, batch {args.clients}": lambda: direct(args.clients)}
        times: dict[str, list[float]] = {k: [] for k in runs}
        order = list(runs)
        for r in range(args.repeats):
            for k in order[r % len(order):] + order[:r % len(order)]:
                t0 = time.perf_counter()
                runs[k]()
                times[k].append(time.perf_counter() - t0)
    session.close()
    rate = {k: len(bodies) / statistics.median(v) for k, v in times.items()}
    served = rate[order[1]] / rate[order[0]]
    direct_ratio = rate[order[3]] / rate[order[2]]
    print(f"model {model_dir}, requests {len(bodies)}, max_tokens {args.max_tokens}, threads {torch.get_num_threads()}, "
          f"device {args.device}, {args.repeats} interleaved rounds (medians); the server is `mxr0 serve` in its own "
          f"process (--max-batch {args.clients})")
    for k in order:
        print(f"{k:<28} {rate[k]:8.2f} requests/s")
    print(f"served ratio ({args.clients} clients / one at a time): {served:.2f}x; in-process ratio (batch "
          f"{args.clients} / batch 1): {direct_ratio:.2f}x")
    print(f"served {args.clients} clients / in-process batch {args.clients} throughput: {rate[order[1]] / rate[order[3]]:.2f}")
    print(f"served / in-process: {served / direct_ratio:.2f} (goal >= 0.80)")


if __name__ == "__main__":
    main()
