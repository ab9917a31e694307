#!/usr/bin/env bash
# The first thing to run on a lent GPU machine: a short, offline check (random weights, nothing downloaded).
#
#   bash scripts/gpu_check.sh              # on the GPU machine (a few minutes on one H100)
#   bash scripts/gpu_check.sh --dry-run    # the same code with tiny shapes on the CPU (no figures worth keeping)
#
# Prints: the device, bf16 / tf32 / fp32 matmul TFLOP/s, a ViT-B/14 (XR-0 shape) training step under bf16
# autocast with its MFU, the CheXbert labeller ratio on the GPU (one fp32 report per pass vs bf16 batches of
# 32, labels compared), and import checks of peft / bitsandbytes (QLoRA) / deepspeed (NOT RUN when absent),
# then a summary. Without CUDA (and without --dry-run) it says "no CUDA" and exits with status 2 at once.
#
# Python: $MXR0_PYTHON, else .venv/bin/python, else python3 (the GPU image has its own Python with torch,
# transformers, accelerate and peft; mxr0 is imported from this checkout, only the light modules).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${MXR0_PYTHON:-}"
if [[ -z "$PY" ]]; then
  if [[ -x "$ROOT/.venv/bin/python" ]]; then PY="$ROOT/.venv/bin/python"; else PY="$(command -v python3 || command -v python)"; fi
fi
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
cd "$ROOT"
exec "$PY" - "$@" <<'PY'
import argparse, contextlib, importlib, os, platform, sys, tempfile, time

ap = argparse.ArgumentParser(prog="gpu_check.sh")
ap.add_argument("--dry-run", action="store_true", help="tiny shapes on the CPU")
args = ap.parse_args()
t_start = time.perf_counter()
try:
    import torch
except Exception as e:  # noqa: BLE001
    print(f"[gpu_check] FAILED: torch does not import with {sys.executable}: {e}")
    sys.exit(1)

cuda = torch.cuda.is_available()
print(f"[gpu_check] python {sys.version.split()[0]} ({sys.executable}), torch {torch.__version__}, "
      f"CUDA build {torch.version.cuda}, {platform.machine()}")
if not cuda and not args.dry_run:
    print("[gpu_check] no CUDA device visible (torch.cuda.is_available() is False): nothing to check on this machine. "
          "On a GPU machine check nvidia-smi and that this Python's torch is a CUDA build; "
          "--dry-run runs the same code with tiny shapes on the CPU.")
    sys.exit(2)

dev = torch.device("cuda" if cuda and not args.dry_run else "cpu")
dry = args.dry_run
summary: list[tuple[str, str]] = []


def sync():
    if dev.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, reps):
    fn()
    sync()
    t0 = time.perf_counter()
    for _ in range(reps):
        fn()
    sync()
    return (time.perf_counter() - t0) / reps


def section(name):
    print(f"\n[gpu_check] --- {name}")


# 1. device -------------------------------------------------------------------------------------------
section("device")
if dev.type == "cuda":
    p = torch.cuda.get_device_properties(0)
    name = torch.cuda.get_device_name(0)
    print(f"{name}: {p.total_memory / 2**30:.1f} GiB, {p.multi_processor_count} SMs, capability {p.major}.{p.minor}, "
          f"bf16 {torch.cuda.is_bf16_supported()}, {torch.cuda.device_count()} visible")
    summary.append(("device", f"{name} x{torch.cuda.device_count()}"))
else:
    name = "CPU (dry run)"
    summary.append(("device", "CPU (dry run: tiny shapes, no figures worth keeping)"))
PEAK_BF16 = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L40S": 362e12, "L4": 121e12, "A10": 125e12}
peak = next((v for k, v in PEAK_BF16.items() if k in name), None)
if "H100 PCIe" in name:
    peak = 756e12

# 2. matmul roof --------------------------------------------------------------------------------------
section("matmul TFLOP/s")
n = 256 if dry else 8192
roof = {}
for label, dtype, tf32 in (("bf16", torch.bfloat16, False), ("tf32", torch.float32, True), ("fp32", torch.float32, False)):
    if dev.type == "cpu" and label == "tf32":
        continue
    torch.backends.cuda.matmul.allow_tf32 = tf32
    a = torch.randn(n, n, device=dev, dtype=dtype)
    b = torch.randn(n, n, device=dev, dtype=dtype)
    s = timed(lambda: a @ b, 3 if dry else 20)
    roof[label] = 2 * n ** 3 / s
    print(f"{label}: {roof[label] / 1e12:8.1f} TFLOP/s ({n}x{n})")
torch.backends.cuda.matmul.allow_tf32 = False
summary.append(("bf16 matmul", f"{roof['bf16'] / 1e12:.1f} TFLOP/s" + (f" ({100 * roof['bf16'] / peak:.0f}% of the "
                f"{peak / 1e12:.0f} spec)" if peak else "")))

# 3. ViT-B/14 training step under bf16 autocast -------------------------------------------------------
section("ViT-B/14 (XR-0 shape) training step, bf16 autocast, AdamW")
try:
    from transformers import Dinov2Config, Dinov2Model

    if dry:
        cfg = Dinov2Config(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128,
                           patch_size=14, image_size=56)
        batch, size = 4, 56
    else:
        cfg = Dinov2Config(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072,
                           patch_size=14, image_size=224)
        batch, size = 64, 224
    torch.manual_seed(0)
    vit = Dinov2Model(cfg).to(dev).train()
    opt = torch.optim.AdamW(vit.parameters(), lr=1e-4, fused=dev.type == "cuda")
    x = torch.randn(batch, 3, size, size, device=dev)

    def step():
        with torch.autocast(dev.type, dtype=torch.bfloat16):
            loss = vit(pixel_values=x).last_hidden_state.float().pow(2).mean()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss

    s = timed(step, 2 if dry else 10)
    n_params = sum(p.numel() for p in vit.parameters())
    tokens = (size // 14) ** 2 + 1
    L, d = cfg.num_hidden_layers, cfg.hidden_size
    flops = 6 * n_params * tokens * batch + 12 * L * tokens * tokens * d * batch  # dense + attention, fwd + bwd
    mfu_base = peak or roof["bf16"]
    mfu = flops / s / mfu_base
    assert torch.isfinite(step()), "non-finite loss"
    print(f"{n_params / 1e6:.1f} M params, batch {batch} x {tokens} tokens: {s * 1e3:.1f} ms/step, "
          f"{batch / s:.0f} img/s, {flops / s / 1e12:.1f} TFLOP/s, MFU {100 * mfu:.1f}% "
          f"(of {'the spec' if peak else 'the measured bf16 matmul roof'})")
    if dev.type == "cuda":
        print(f"peak memory {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB")
    summary.append(("ViT-B/14 bf16 step", f"{batch / s:.0f} img/s, MFU {100 * mfu:.1f}% (goal >= 40% on H100)"))
    del vit, opt, x
except Exception as e:  # noqa: BLE001
    print(f"FAILED: {type(e).__name__}: {e}")
    summary.append(("ViT-B/14 bf16 step", f"FAILED ({type(e).__name__})"))

# 4. CheXbert labeller on the device ------------------------------------------------------------------
section("CheXbert labeller: one fp32 report per pass vs bf16 batches of 32 (random bert-base weights)")
try:
    from transformers import BertConfig, BertTokenizer

    from mxr0.eval.reports.testing import SAMPLE_REPORTS, random_chexbert, write_wordpiece_vocab

    tmp = tempfile.mkdtemp(prefix="gpu-check-")
    write_wordpiece_vocab(SAMPLE_REPORTS, tmp)
    tok = BertTokenizer.from_pretrained(tmp, do_lower_case=True)
    bcfg = (BertConfig(vocab_size=len(tok), hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                       intermediate_size=128) if dry else
            BertConfig(vocab_size=len(tok), hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                       intermediate_size=3072))
    cx = random_chexbert(bcfg, tokenizer=tok, device=str(dev))
    n_rep = 32 if dry else 512
    texts = [f"{SAMPLE_REPORTS[i % len(SAMPLE_REPORTS)]} Study {i}." for i in range(n_rep)]
    cx.label(texts[:32], precision="bf16")
    t0 = time.perf_counter(); ref = cx.label(texts, batch_size=1, sort_by_length=False, dedupe=False); sync()
    t_ref = time.perf_counter() - t0
    t0 = time.perf_counter(); out = cx.label(texts, batch_size=32, precision="bf16"); sync()
    t_b = time.perf_counter() - t0
    same = int((out == ref).all(1).sum())
    run = cx.last_run
    print(f"{n_rep} reports: one per pass fp32 {n_rep / t_ref:.1f} reports/s, bf16 batched {n_rep / t_b:.1f} reports/s "
          f"-> {t_ref / t_b:.2f}x; labels identical {same}/{n_rep}; relabelled in fp32 {run['relabelled_fp32']} "
          f"+ {run['calibration_fp32']} calibration (threshold {run['threshold']:.3g})")
    summary.append(("CheXbert ratio", f"{t_ref / t_b:.2f}x, labels {same}/{n_rep} (goal >= 10x on a GPU)"))
except Exception as e:  # noqa: BLE001
    print(f"FAILED: {type(e).__name__}: {e}")
    summary.append(("CheXbert ratio", f"FAILED ({type(e).__name__})"))

# 5. optional packages --------------------------------------------------------------------------------
section("LoRA / QLoRA / DeepSpeed")
for mod in ("transformers", "accelerate", "peft", "bitsandbytes", "deepspeed"):
    try:
        with contextlib.redirect_stdout(sys.stderr):  # bitsandbytes and deepspeed print on import
            m = importlib.import_module(mod)
        ver = getattr(m, "__version__", "?")
        print(f"{mod} {ver}: imports")
        summary.append((mod, f"{ver}"))
    except Exception as e:  # noqa: BLE001
        print(f"{mod}: NOT RUN ({type(e).__name__}: {str(e)[:120]})")
        summary.append((mod, "NOT RUN (absent)"))
if dev.type == "cuda" and "bitsandbytes" in sys.modules:
    try:
        import bitsandbytes as bnb

        lin = bnb.nn.Linear4bit(1024, 1024, compute_dtype=torch.bfloat16, quant_type="nf4").to(dev)
        y = lin(torch.randn(8, 1024, device=dev, dtype=torch.bfloat16))
        print(f"nf4 Linear4bit forward: {tuple(y.shape)} {y.dtype}, finite {bool(torch.isfinite(y).all())}")
        summary.append(("QLoRA nf4 layer", "runs"))
    except Exception as e:  # noqa: BLE001
        print(f"nf4 Linear4bit: FAILED ({type(e).__name__}: {e})")
        summary.append(("QLoRA nf4 layer", f"FAILED ({type(e).__name__})"))
else:
    summary.append(("QLoRA nf4 layer", "NOT RUN (" + ("no CUDA" if dev.type != "cuda" else "no bitsandbytes") + ")"))

# summary ---------------------------------------------------------------------------------------------
section(f"summary ({time.perf_counter() - t_start:.0f} s)")
w = max(len(k) for k, _ in summary)
for k, v in summary:
    print(f"  {k:<{w}}  {v}")
failed = [k for k, v in summary if v.startswith("FAILED")]
print("[gpu_check] " + ("FAILED: " + ", ".join(failed) if failed else "done"))
sys.exit(1 if failed else 0)
PY
