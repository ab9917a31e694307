#!/usr/bin/env python
"""Benchmark: CheXbert labelling throughput, batched vs one report per forward pass; and the memory and
time of a 10,000-pair evaluation with a 500-resample bootstrap.

    python scripts/bench_chexbert.py                       # both parts, real IU X-ray reports when present
    python scripts/bench_chexbert.py --part labeler --n 512 --batch-size 32 --threads 2
    python scripts/bench_chexbert.py --part bootstrap --pairs 10000 --resamples 500

Part "labeler": the CheXbert labeler with the real dimensions (bert-base-uncased: hidden 768, 12
layers, 12 heads, vocabulary 30522) -- throughput depends only on shapes, but the bf16 relabel share
depends on the weights' margins. Without ``--weights`` (official chexbert.pth, when present) the encoder
is random and, with ``--stand-in fitted`` (default), the 14 heads are fitted to rule-based labels of
``--fit-n`` other IU reports so that margins vary per report; ``--stand-in random`` keeps random heads. The
tokenizer is a WordPiece vocabulary made from the same reports (all their words are whole tokens;
bert-base-uncased would split some rare words, so its sequences are a little longer), or
bert-base-uncased itself with ``--tokenizer DIR``. The same reports go through, in interleaved rounds
(order rotated, ``--threads`` pinned, 1 by default):
(a) ``CheXbert.label(batch_size=1, sort_by_length=False, dedupe=False)``: f1chexbert's way, one report per
    forward pass, in fp32 (the reference of every ratio);
(b) fp32 length-sorted batches of B, (c) the same with identical texts labelled once;
(d, e) ``precision="bf16"`` (autocast) and ``"bf16-weights"``: batched + dedupe in bf16 with the safety
    rule (calibration sample and low-margin reports labelled again in fp32: labels identical to fp32);
(f, g) the same two bf16 modes without the rule (labels may change): the speed bf16 alone would give.
It prints reports/s, ratios against (a) with their spread, labels compared with fp32, the relabel share,
the largest |bf16 - fp32| logit difference, and last the headline: the faster exact bf16 mode against (a).

Part "bootstrap": ``evaluate_reports`` on ``--pairs`` prediction/reference pairs (IU X-ray reports
sampled with replacement; predictions are other reports) with BLEU-1..4, both ROUGE-L, CIDEr-D,
CheXbert F1 and RadGraph F1 (tiny random models in the official layouts stand in for the weights:
their inference time is not the point here) and a ``--resamples`` bootstrap; prints wall time per
stage and the peak resident memory of the process (ru_maxrss).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import resource
import sys
import tempfile
import time
from pathlib import Path


def _reports(n: int | None, seed: int = 0) -> tuple[list[str], str]:
    """``n`` report texts (all of them when ``n`` is None), repeating reports when ``n`` exceeds the set."""
    root = Path(os.environ.get("MXR0_SHARED_DATA", Path(__file__).resolve().parents[1].parent / "shared" / "data"))
    f = root / "iu_xray" / "iu_studies.jsonl"
    if f.is_file():
        rows = [json.loads(line) for line in f.open()]
        texts = [f"{r.get('findings') or ''} {r.get('impression') or ''}".strip() for r in rows]
        texts = [t for t in texts if t]
        src = f"IU X-ray reports ({f})"
    else:
        from mxr0.eval.reports.testing import SAMPLE_REPORTS
        texts, src = list(SAMPLE_REPORTS), "built-in sample reports (IU X-ray data not found)"
    if n is None:
        return texts, src
    rng = random.Random(seed)
    out = texts[:n] if n <= len(texts) else texts + [rng.choice(texts) for _ in range(n - len(texts))]
    return out, src


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def fit_heads(cx, texts, batch_size=32, scale=4.0, ridge=10.0, components=16):
    """Give a random-weight CheXbert "trained-like" heads, so that margins vary from report to report: the 14
    heads are a ridge fit, on the top ``components`` whitened principal components of the fp32 [CLS] vectors
    of ``texts``, to the rule-based CheXpert labeller's classes (targets +-``scale``). A random encoder's
    [CLS] barely changes between reports, so any head that separates them amplifies bf16's error too: this
    is still no trained CheXbert (see BENCHMARKS.md). Returns the fit's training accuracy."""
    import numpy as np
    import torch

    from mxr0.eval.reports.batching import length_batches
    from mxr0.eval.reports.chexbert import CONDITIONS, encode_report
    from mxr0.eval.reports.rules import label_reports

    ids = [encode_report(t, cx.tokenizer) for t in texts]
    cls = torch.zeros((len(ids), cx.model.bert.config.hidden_size), dtype=torch.float64)
    with torch.inference_mode():
        for idx in length_batches([len(x) for x in ids], batch_size):
            L = max(len(ids[i]) for i in idx)
            x = torch.zeros((len(idx), L), dtype=torch.long)
            m = torch.zeros((len(idx), L))
            for r, i in enumerate(idx):
                x[r, :len(ids[i])] = torch.tensor(ids[i])
                m[r, :len(ids[i])] = 1
            cls[torch.as_tensor(idx)] = cx.model.bert(x, attention_mask=m)[0][:, 0].double()
    mu = cls.mean(0)
    _, S, V = torch.linalg.svd(cls - mu, full_matrices=False)
    P = V[:components].T / S[:components] * np.sqrt(len(ids))  # (D, k): whitened top components
    z = torch.cat([(cls - mu) @ P, torch.ones(len(ids), 1, dtype=torch.float64)], 1)
    rules = label_reports(texts)
    cls_of = {1: 1, 0: 2, -1: 3, None: 0}
    y = np.array([[cls_of[r[c]] for c in CONDITIONS[:13]] + [1 if r["No Finding"] == 1 else 0] for r in rules])
    gram = z.T @ z + ridge * torch.eye(z.shape[1], dtype=torch.float64)
    hit = 0
    with torch.no_grad():
        for h, head in enumerate(cx.model.linear_heads):
            t = torch.full((len(ids), head.out_features), -scale, dtype=torch.float64)
            t[torch.arange(len(ids)), torch.as_tensor(y[:, h])] = scale
            w = torch.linalg.solve(gram, z.T @ t)  # (k + 1, classes)
            head.weight.copy_((P @ w[:-1]).T.float())
            head.bias.copy_((w[-1] - mu @ P @ w[:-1]).float())
            hit += int(((z @ w).argmax(1).numpy() == y[:, h]).sum())
    return hit / y.size


def bench_labeler(args) -> dict:
    import numpy as np
    import torch
    from transformers import BertTokenizer

    from mxr0.eval.reports.chexbert import encode_report
    from mxr0.eval.reports.testing import random_chexbert, write_wordpiece_vocab

    import warnings

    warnings.filterwarnings("ignore", message="CheXbert")  # the relabel share is printed below
    if args.threads:
        torch.set_num_threads(args.threads)
    texts, src = _reports(args.n)
    if args.tokenizer:
        tok = BertTokenizer.from_pretrained(args.tokenizer, local_files_only=True)
        tok_src = args.tokenizer
    else:
        tmp = tempfile.mkdtemp(prefix="mxr0-bench-")
        all_texts, _ = _reports(None)
        write_wordpiece_vocab(all_texts, tmp)
        tok = BertTokenizer.from_pretrained(tmp, do_lower_case=True)
        tok_src = "WordPiece vocabulary of the report words (made locally)"
    weights_note = "random weights"
    if args.weights:
        from mxr0.eval.reports.chexbert import CheXbert

        cx = CheXbert.load(args.weights, device=args.device or "cpu")
        tok, tok_src, weights_note = cx.tokenizer, "the checkpoint's tokenizer", f"official weights ({args.weights})"
    else:
        cx = random_chexbert(tokenizer=tok, device=args.device or "cpu")
        if args.stand_in == "fitted":
            fit_texts, _ = _reports(args.n + args.fit_n)
            fit_texts = fit_texts[args.n:]  # disjoint from the timed reports: margins are out-of-sample
            acc = fit_heads(cx, fit_texts)
            weights_note = (f"random encoder, heads fitted to the rule-based labels of {len(fit_texts)} other reports "
                            f"(train accuracy {acc:.3f})")
    lens = [len(encode_report(t, tok)) for t in texts]
    cx.label(texts[:8], batch_size=8)  # warm-up
    cx.label(texts[:8], batch_size=8, precision="bf16")
    cx.label(texts[:8], batch_size=8, precision="bf16-weights")
    cx.label(texts[:2], batch_size=1, sort_by_length=False, dedupe=False)
    B = args.batch_size
    modes = {"one_per_pass": dict(batch_size=1, sort_by_length=False, dedupe=False),
             "batched": dict(batch_size=B, dedupe=False),
             "batched_dedupe": dict(batch_size=B, dedupe=True),
             "bf16": dict(batch_size=B, dedupe=True, precision="bf16", margin=args.margin),
             "bf16_weights": dict(batch_size=B, dedupe=True, precision="bf16-weights", margin=args.margin)}
    names = {"one_per_pass": "fp32, one report per forward pass (f1chexbert)",
             "batched": f"fp32, length-sorted batches of {B}",
             "batched_dedupe": "fp32, batched + identical texts once",
             "bf16": "bf16 autocast, batched + dedupe + fp32 relabel",
             "bf16_weights": "bf16 weights, batched + dedupe + fp32 relabel"}
    if args.skip_one_per_pass:
        modes.pop("one_per_pass")
    uniq_ids = [encode_report(t, tok) for t in dict.fromkeys(texts)]
    pos = {t: i for i, t in enumerate(dict.fromkeys(texts))}
    back = np.array([pos[t] for t in texts])

    def unchecked(precision):  # bf16 alone, no fp32 relabelling: the speed bf16 could give (labels may change)
        def run():
            import torch as _torch

            with _torch.inference_mode():
                return cx._logits(uniq_ids, B, True, precision).argmax(-1).numpy().astype(np.int8)[back]
        return run

    calls = {m: (lambda kw=kw: cx.label(texts, **kw)) for m, kw in modes.items()}
    if not args.skip_unchecked:
        calls["bf16_unchecked"] = unchecked("bf16")
        calls["bf16_weights_unchecked"] = unchecked("bf16-weights")
        names["bf16_unchecked"] = "bf16 autocast, batched + dedupe, NO relabel"
        names["bf16_weights_unchecked"] = "bf16 weights, batched + dedupe, NO relabel"
        calls["bf16_weights_unchecked"]()  # builds the bf16 copy outside the timing
    times: dict[str, list[float]] = {m: [] for m in calls}
    labels, runs = {}, {}
    order = list(calls)
    for r in range(args.repeats):  # interleaved rounds, order rotated: a shared VM's load drifts
        for m in order[r % len(order):] + order[:r % len(order)]:
            t0 = time.perf_counter()
            labels[m] = calls[m]()
            times[m].append(time.perf_counter() - t0)
            runs[m] = dict(cx.last_run)
    modes = calls
    # how far bf16 logits are from fp32 ones on these reports (not timed)
    from mxr0.precision import top2_margin
    import torch as _t

    with _t.inference_mode():
        f32 = cx._logits(uniq_ids, B, True, "fp32")
        dev = {p: float((cx._logits(uniq_ids, B, True, p) - f32)[f32 > -1e8].abs().max())
               for p in ("bf16", "bf16-weights")}
    fp32_margin = top2_margin(f32).min(dim=1).values
    n = len(texts)
    ref = "one_per_pass" if "one_per_pass" in modes else "batched"
    med = {m: float(np.median(v)) for m, v in times.items()}
    ratio = {m: [a / b for a, b in zip(times[ref], times[m])] for m in modes}
    res = {
        "reports": n, "distinct_reports": len(set(texts)), "source": src, "tokenizer": tok_src, "weights": weights_note,
        "mean_tokens": float(np.mean(lens)), "max_tokens": int(max(lens)), "batch_size": B,
        "threads": torch.get_num_threads(), "device": str(cx.device), "repeats": args.repeats, "reference": ref,
        "reports_per_s": {m: n / med[m] for m in modes},
        "ratio_median": {m: float(np.median(v)) for m, v in ratio.items()},
        "ratio_per_round": ratio,
        "labels_equal_to_fp32_batched": {m: int((labels[m] == labels["batched"]).all(axis=1).sum()) for m in modes},
        "runs": runs, "max_abs_logit_diff": dev,
        "fp32_min_margin_quantiles": {q: float(fp32_margin.quantile(q)) for q in (0.01, 0.05, 0.1, 0.5)},
        "seconds": times,
    }
    # achieved GFLOP/s (docs/performance.md reads it against the machine's roof, scripts/bench_roof.py): a forward
    # pass costs 2 x (the encoder's linear weights) per token plus 4 x layers x tokens^2 x hidden for attention;
    # the rates count distinct reports only where a mode labels each distinct text once
    bert = cx.model.bert
    lin = sum(m.weight.numel() for m in bert.encoder.modules() if isinstance(m, _t.nn.Linear))
    cfg = bert.config
    flop = {t: 2 * lin * t + 4 * cfg.num_hidden_layers * t * t * cfg.hidden_size for t in set(lens)}
    all_flop = sum(flop[t] for t in lens)
    uniq_flop = sum(flop[len(u)] for u in uniq_ids)
    res["gflop_per_s"] = {m: (uniq_flop if ("dedupe" in m or m.startswith("bf16")) else all_flop) / med[m] / 1e9
                          for m in modes}
    # the old keys, kept for readers of --json output
    res["one_per_pass_reports_per_s"] = res["reports_per_s"].get("one_per_pass")
    res["ratio_batched"] = res["ratio_median"]["batched"]
    print(f"[labeler] {n} reports ({res['distinct_reports']} distinct) from {src}; mean {res['mean_tokens']:.1f} "
          f"tokens (max {res['max_tokens']}); bert-base-uncased shapes, {weights_note}; device {res['device']}, "
          f"{res['threads']} threads (pinned)")
    print(f"[labeler] {args.repeats} interleaved rounds; reports/s from the median time; ratio = median of the "
          f"per-round ratios against {ref} [min-max]")
    for m in modes:
        rr = ratio[m]
        extra = ""
        if m in ("bf16", "bf16_weights"):
            ru = runs[m]
            extra = (f"; fp32 relabel {ru['relabelled_fp32']} + calibration {ru['calibration_fp32']} of "
                     f"{ru['reports']} ({100 * ru['relabel_fraction']:.1f}% relabelled, threshold {ru['threshold']:.3g})")
        print(f"[labeler] {names[m]:<50} {res['reports_per_s'][m]:7.2f} reports/s  {res['gflop_per_s'][m]:6.1f} GFLOP/s  "
              f"{np.median(rr):5.2f}x [{min(rr):.2f}-{max(rr):.2f}]  labels = fp32: "
              f"{res['labels_equal_to_fp32_batched'][m]}/{n}{extra}")
    print(f"[labeler] max |bf16 - fp32| logit: autocast {dev['bf16']:.4f}, bf16 weights {dev['bf16-weights']:.4f}; "
          f"fp32 min-over-heads top-two margin quantiles 1/5/10/50%: "
          + " / ".join(f"{v:.3f}" for v in res["fp32_min_margin_quantiles"].values()))
    best = max(("bf16", "bf16_weights"), key=lambda m: res["ratio_median"][m])
    exact = res["labels_equal_to_fp32_batched"][best] == n
    res["headline"] = {"mode": best, "ratio": res["ratio_median"][best], "labels_identical": exact}
    print(f"{res['ratio_median'][best]:.2f}x ({names[best]} vs {ref}, labels identical to fp32: "
          f"{'yes' if exact else 'NO'})")
    return res


def bench_bootstrap(args) -> dict:
    import torch

    from mxr0.eval.reports import evaluate_reports
    from mxr0.eval.reports.testing import save_tiny_chexbert, save_tiny_radgraph

    # tiny stand-in models: thread hand-offs cost more than their work on a busy 2-core VM
    torch.set_num_threads(args.threads or 1)
    rss0 = _rss_mb()
    texts, src = _reports(None)
    rng = random.Random(1)
    refs = [rng.choice(texts) for _ in range(args.pairs)]
    preds = [rng.choice(texts) if rng.random() < 0.8 else r for r in refs]
    with tempfile.TemporaryDirectory(prefix="mxr0-bench-") as tmp:
        cx = save_tiny_chexbert(Path(tmp) / "chexbert")
        rg = save_tiny_radgraph(Path(tmp) / "rg", dataset="radgraph-xl")
        t0 = time.perf_counter()
        res = evaluate_reports(preds, refs, metrics="all", bootstrap=args.resamples, seed=0, chexbert_weights=cx,
                               radgraph_model=rg, batch_size=args.batch_size, device="cpu",
                               log=lambda m: print(f"[bootstrap] {m}"))
        total = time.perf_counter() - t0
    out = {"pairs": args.pairs, "resamples": args.resamples, "source": src, "total_s": total,
           "stage_s": res["timing_s"], "peak_rss_mb": _rss_mb(), "rss_before_mb": rss0,
           "metrics": len(res["metrics"])}
    print(f"[bootstrap] {args.pairs} pairs x {args.resamples} resamples, {out['metrics']} metrics: {total:.1f} s in "
          f"all; stages {res['timing_s']}")
    print(f"[bootstrap] peak RSS {out['peak_rss_mb']:.0f} MB (process, models and libraries included)")
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--part", choices=("labeler", "bootstrap", "all"), default="all")
    p.add_argument("--n", type=int, default=512, help="reports to label (default 512)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--repeats", type=int, default=3, help="interleaved timing rounds of the labeler (default 3)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads, pinned (default 1: on a shared 2-core VM two threads scatter the rounds)")
    p.add_argument("--weights", help="official CheXbert weights (chexbert.pth or its folder) instead of stand-ins")
    p.add_argument("--stand-in", choices=("fitted", "random"), default="fitted",
                   help="without --weights: 'fitted' = random encoder with heads fitted to rule-based labels of "
                        "other reports (margins that vary per report, as a trained labeller's), 'random' = all random")
    p.add_argument("--fit-n", type=int, default=384, help="reports the fitted stand-in's heads learn from")
    p.add_argument("--margin", type=float, default=None, help="bf16 relabel margin (default: the labeller's)")
    p.add_argument("--skip-one-per-pass", action="store_true", help="leave out the slow reference")
    p.add_argument("--skip-unchecked", action="store_true", help="leave out bf16 without the fp32 relabelling")
    p.add_argument("--device", default=None)
    p.add_argument("--tokenizer", help="a local bert-base-uncased tokenizer folder (optional)")
    p.add_argument("--pairs", type=int, default=10000)
    p.add_argument("--resamples", type=int, default=500)
    p.add_argument("--json", help="also write the results here")
    args = p.parse_args(argv)
    if args.margin is None:
        from mxr0.eval.reports.chexbert import DEFAULT_MARGIN
        args.margin = DEFAULT_MARGIN
    print(f"[env] {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, load average "
          f"{os.getloadavg()[0]:.2f}, python {sys.version.split()[0]}")
    out = {"load_average_start": os.getloadavg()[0]}
    if args.part in ("labeler", "all"):
        out["labeler"] = bench_labeler(args)
    if args.part in ("bootstrap", "all"):
        out["bootstrap"] = bench_bootstrap(args)
    out["load_average_end"] = os.getloadavg()[0]
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
