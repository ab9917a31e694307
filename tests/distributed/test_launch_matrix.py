"""Every task under every launcher that runs on a CPU: 2 real processes through ``accelerate launch``.

- DDP on 2 CPU ranks (gloo), the one form that starts synchronised processes
  (``ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes 2``): the four tiny recipes (classify,
  ssl, align, report with LoRA) train 4 steps with a checkpoint every 2, then a second launch continues each with
  ``--resume`` to step 6. Checked: world size 2, the ranks' weights equal at the end, checkpoints, the resume,
  and each export loads with plain transformers.
- DeepSpeed ZeRO-2 and ZeRO-3 on 2 CPU ranks (gloo; ``ACCELERATE_USE_CPU`` unset): classify (ZeRO-2 through the
  literal ``-m mxr0 train`` command line; ZeRO-3 with a resume) gives the DDP run's weights; the report's LoRA
  adapters trained under ZeRO-3 are saved with trained values and equal the DDP run's, after save, reload and
  merge. ``slow``: the first DeepSpeed launch on a machine compiles a small C++ op (~70 s, cached in
  TORCH_EXTENSIONS_DIR).
- FSDP through accelerate does not run on a CPU: every config in accelerate_configs/ is validated with
  accelerate's own loader, and a ``gpu`` test runs the FSDP / ZeRO-3 matrix where CUDA is present.

A launch costs ~8 s of process start on a 2-core machine, so the DDP runs share two launches
(tests/distributed/_launch_matrix_driver.py runs several ``mxr0 train`` command lines in one launch).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.slow  # several processes: out of the quick loop (-m 'not slow')

REPO = Path(__file__).resolve().parents[2]
CONFIGS = REPO / "accelerate_configs"
DRIVER = Path(__file__).resolve().parent / "_launch_matrix_driver.py"
RECIPES = {
    "classify": "recipes/tiny/classify.yaml",
    "ssl": "recipes/tiny/xr0_pretrain.yaml",
    "align": "recipes/tiny/mxr0_align.yaml",
    "report": "recipes/tiny/mxr0_report.yaml",
}
COMMON = ["train.batch_size=8", "train.warmup_steps=1", "train.save_every=2", "train.keep_last=2",
          "train.eval_every=0", "train.log_every=2", "train.progress=false", "train.trackers=[jsonl]"]
SHRINK = {
    "classify": ["model.image_size=28", "model.encoder_config={hidden_size: 16, num_hidden_layers: 1, "
                 "num_attention_heads: 2, intermediate_size: 32, patch_size: 14, num_register_tokens: 1}"],
    "ssl": ["model.encoder_config={hidden_size: 16, num_hidden_layers: 1, num_attention_heads: 2, mlp_ratio: 2, "
            "patch_size: 8, layerscale_value: 0.1}", "model.num_register_tokens=1", "model.global_crop_size=16",
            "model.local_crop_size=8", "model.n_local_crops=2", "model.dino_n_prototypes=32",
            "model.dino_hidden_dim=32", "model.dino_bottleneck_dim=16", "model.eval_gallery_studies=40",
            "model.freeze_last_layer_epochs=0.1", "model.warmup_teacher_temp_epochs=0.1", "data.num_workers=0"],
    "align": ["model.image_size=28", "model.vision_config={hidden_size: 16, num_hidden_layers: 1, "
              "num_attention_heads: 2, mlp_ratio: 2, patch_size: 14, num_register_tokens: 1}",
              "model.text_config={hidden_size: 16, num_hidden_layers: 1, num_attention_heads: 2, "
              "intermediate_size: 32}", "model.tokenizer_vocab_size=300", "model.projection_dim=16",
              "model.max_text_length=48"],
    "report": ["model.vision=", "model.image_size=28", "model.vision_config={hidden_size: 16, num_hidden_layers: 1, "
               "num_attention_heads: 2, mlp_ratio: 2, patch_size: 14, num_register_tokens: 1}",
               "model.llm_config={hidden_size: 32, intermediate_size: 64, num_hidden_layers: 1, "
               "num_attention_heads: 2, num_key_value_heads: 2}", "model.tokenizer_vocab_size=300",
               "model.cache_features=false", "model.augment=false", "model.eval_generate=2",
               "model.max_new_tokens=4", "model.max_length=192", "model.train_llm=lora", "model.lora_r=4",
               "model.lora_alpha=8", "model.train_vision=frozen"],
}


def _argv(task: str, data: Path, out: Path, steps: int, resume: bool = False) -> list[str]:
    return ["train", RECIPES[task], "data.source=records", f"data.path={data}", f"train.output_dir={out}",
            f"train.max_steps={steps}", *COMMON, *SHRINK[task], *(["--resume"] if resume else [])]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(args: list[str], *, deepspeed: bool = False, timeout: int = 600) -> str:
    """``accelerate launch`` with 2 CPU processes; returns stdout + stderr (asserts success)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    env.pop("ACCELERATE_USE_CPU", None)
    if deepspeed:  # DeepSpeed with ACCELERATE_USE_CPU silently falls back to DDP; mxr0 picks gloo itself
        launch = ["--num_processes", "2"]
    else:  # the one form that starts 2 synchronised gloo ranks (see accelerate_configs/README.md)
        env["ACCELERATE_USE_CPU"] = "1"
        launch = ["--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
                  "--dynamo_backend", "no"]
    cmd = [sys.executable, "-m", "accelerate.commands.launch", *launch, "--main_process_port", str(_free_port()), *args]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-6000:]
    return out


def _driver(runs: list[list[str]], spec: Path, config: str | None = None) -> str:
    """One launch running several ``mxr0 train`` command lines (DeepSpeed when ``config`` names its yaml)."""
    spec.write_text(json.dumps(runs))
    pre = ["--config_file", str(CONFIGS / config)] if config else []
    return _launch([*pre, str(DRIVER), str(spec)], deepspeed=config is not None)


def _results(run: Path) -> dict:
    return json.loads((run / "results.json").read_text())


def _ckpts(run: Path) -> list[str]:
    return sorted(p.name for p in (run / "checkpoints").iterdir() if not p.name.startswith("."))


def _safetensors(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    out: dict[str, torch.Tensor] = {}
    for f in sorted(folder.glob("*.safetensors")):
        out.update(load_file(str(f)))
    return out


def _assert_same_weights(a: dict, b: dict, atol: float = 1e-5) -> None:
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k].float(), b[k].float(), rtol=1e-4, atol=atol, msg=lambda m: f"{k}: {m}")


# ---------------------------------------------------------------------------------------------------------
# DDP on 2 CPU processes: every task
# ---------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ddp(phantom_small, tmp_path_factory):
    root = tmp_path_factory.mktemp("launch_ddp")
    runs = {task: root / task for task in RECIPES}
    first = _driver([_argv(task, phantom_small, run, 4) for task, run in runs.items()], root / "first.json")
    after_first = {}
    for task, run in runs.items():
        after_first[task] = {"results": _results(run), "ckpts": _ckpts(run)}
        shutil.copytree(run / "export", root / f"{task}-export-step4")
    second = _driver([_argv(task, phantom_small, run, 6, resume=True) for task, run in runs.items()],
                     root / "second.json")
    return {"root": root, "runs": runs, "first": first, "second": second, "after_first": after_first}


@pytest.mark.parametrize("task", list(RECIPES))
def test_ddp_two_ranks_in_sync_checkpoint_and_resume(ddp, task):
    run = ddp["runs"][task]
    first = ddp["after_first"][task]
    r = first["results"]
    assert r["num_processes"] == 2 and r["distributed_type"] == "MULTI_CPU" and r["state"]["step"] == 4
    sums = r["rank_param_checksums"]
    assert len(sums) == 2 and sums[0] == sums[1], f"ranks out of sync: {sums}"
    assert first["ckpts"] == ["step-00000002", "step-00000004"]
    # the second launch continued from step 4, not from scratch, and finished
    assert f"resumed from {run / 'checkpoints' / 'step-00000004'}" in ddp["second"]
    r2 = _results(run)
    assert r2["num_processes"] == 2 and r2["state"]["step"] == 6 and not r2["interrupted"]
    assert r2["rank_param_checksums"][0] == r2["rank_param_checksums"][1]
    assert _ckpts(run) == ["step-00000004", "step-00000006"]
    steps = [json.loads(x).get("step") for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert 6 in steps


def test_ddp_exports_load_with_plain_transformers(ddp):
    from transformers import AutoModel, AutoModelForImageClassification, AutoModelForImageTextToText

    runs = ddp["runs"]
    assert type(AutoModelForImageClassification.from_pretrained(runs["classify"] / "export")).__name__ == \
        "Dinov2WithRegistersForImageClassification"
    assert type(AutoModel.from_pretrained(runs["ssl"] / "export")).__name__ == "Dinov2WithRegistersModel"
    assert (runs["ssl"] / "export" / "ssl_heads.safetensors").exists()
    assert type(AutoModel.from_pretrained(runs["align"] / "export")).__name__ == "VisionTextDualEncoderModel"
    vlm = AutoModelForImageTextToText.from_pretrained(runs["report"] / "export")
    assert type(vlm).__name__ == "LlavaForConditionalGeneration"
    assert not any("lora" in n for n, _ in vlm.named_parameters())
    assert (runs["report"] / "export" / "adapter" / "adapter_model.safetensors").exists()


# ---------------------------------------------------------------------------------------------------------
# DeepSpeed ZeRO-2 / ZeRO-3 on 2 CPU processes (gloo)
# ---------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def zero(ddp, phantom_small):
    pytest.importorskip("deepspeed")
    root, data = ddp["root"], phantom_small
    z2 = root / "classify-zero2"
    out2 = _launch(["--config_file", str(CONFIGS / "deepspeed_zero2.yaml"), "-m", "mxr0",
                    *_argv("classify", data, z2, 4)], deepspeed=True)
    z3 = {"classify": root / "classify-zero3", "report": root / "report-zero3"}
    out3 = _driver([_argv("classify", data, z3["classify"], 4), _argv("classify", data, z3["classify"], 6, resume=True),
                    _argv("report", data, z3["report"], 4)], root / "zero3.json", config="deepspeed_zero3.yaml")
    return {"z2": z2, "z3": z3, "out2": out2, "out3": out3}


@pytest.mark.slow
def test_zero2_classify_matches_ddp(zero, ddp):
    r = _results(zero["z2"])
    assert r["num_processes"] == 2 and r["distributed_type"] == "DEEPSPEED" and r["zero_stage"] == 2
    assert r["rank_param_checksums"][0] == r["rank_param_checksums"][1]
    assert (zero["z2"] / "checkpoints" / "step-00000004" / "pytorch_model").is_dir()  # DeepSpeed's own layout
    _assert_same_weights(_safetensors(zero["z2"] / "export"), _safetensors(ddp["root"] / "classify-export-step4"))


@pytest.mark.slow
def test_zero3_classify_resumes_and_exports_full_weights(zero, ddp):
    run = zero["z3"]["classify"]
    r = _results(run)
    assert r["num_processes"] == 2 and r["zero_stage"] == 3 and r["state"]["step"] == 6
    assert f"resumed from {run / 'checkpoints' / 'step-00000004'}" in zero["out3"]
    assert _ckpts(run) == ["step-00000004", "step-00000006"]
    # 4 steps, a checkpoint, a resume to 6 under ZeRO-3 == the same under DDP (gathered, full-size weights)
    _assert_same_weights(_safetensors(run / "export"), _safetensors(ddp["runs"]["classify"] / "export"))


@pytest.mark.slow
def test_zero3_lora_adapters_have_trained_values_after_save_reload_merge(zero, ddp):
    from peft import PeftModel
    from transformers import AutoModelForImageTextToText

    run = zero["z3"]["report"]
    r = _results(run)
    assert r["num_processes"] == 2 and r["zero_stage"] == 3 and r["state"]["step"] == 4
    adapter = _safetensors(run / "export" / "adapter")
    lora_b = {k: v for k, v in adapter.items() if "lora_B" in k}
    assert lora_b and all(v.ndim == 2 and v.numel() > 0 for v in lora_b.values())  # full, not shards
    assert all(float(v.abs().max()) > 0 for v in lora_b.values()), "LoRA B saved at its initial zeros"
    # the same adapter as 4 steps under DDP
    _assert_same_weights(adapter, _safetensors(ddp["root"] / "report-export-step4" / "adapter"), atol=1e-4)
    merged = AutoModelForImageTextToText.from_pretrained(run / "export").eval()
    assert not any("lora" in n for n, _ in merged.named_parameters())
    _assert_same_weights(merged.state_dict(), AutoModelForImageTextToText.from_pretrained(
        ddp["root"] / "report-export-step4").state_dict(), atol=1e-4)
    # the adapter reloads with peft with its trained B matrices
    reloaded = PeftModel.from_pretrained(merged, str(run / "export" / "adapter"))
    got = {n: p for n, p in reloaded.named_parameters() if "lora_B" in n}
    assert len(got) == len(lora_b) and all(float(p.abs().max()) > 0 for p in got.values())


def test_deepspeed_with_use_cpu_is_an_error(monkeypatch):
    from mxr0.config import load_recipe
    from mxr0.train.launch import make_accelerator

    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    monkeypatch.setenv("ACCELERATE_USE_CPU", "1")
    from mxr0.config import ConfigError

    with pytest.raises(ConfigError, match="silently runs plain DDP"):
        make_accelerator(load_recipe(REPO / RECIPES["classify"]), Path("unused"))


def _fake_deepspeed_accelerator(ds_config: dict):
    import types

    from accelerate.utils import DistributedType

    plugin = types.SimpleNamespace(deepspeed_config=ds_config, gradient_accumulation_steps="auto",
                                   gradient_clipping="auto", zero3_save_16bit_model=False)
    return types.SimpleNamespace(distributed_type=DistributedType.DEEPSPEED,
                                 state=types.SimpleNamespace(deepspeed_plugin=plugin))


def test_deepspeed_config_takes_accumulation_and_clipping_from_the_recipe():
    from mxr0.config import ConfigError, load_recipe
    from mxr0.distributed import _configure_deepspeed, shards_parameters, zero_stage

    recipe = load_recipe(REPO / RECIPES["ssl"], ["train.grad_accum=4"])  # max_grad_norm 3.0
    acc = _fake_deepspeed_accelerator({"gradient_accumulation_steps": "auto", "gradient_clipping": "auto",
                                       "zero_optimization": {"stage": 3}})
    _configure_deepspeed(acc, recipe)
    cfg = acc.state.deepspeed_plugin.deepspeed_config
    assert cfg["gradient_accumulation_steps"] == 4 and cfg["gradient_clipping"] == 3.0  # not accelerate's 1.0
    assert cfg["zero_optimization"]["stage3_gather_16bit_weights_on_model_save"] is True
    assert zero_stage(acc) == 3 and shards_parameters(acc)
    for bad, match in (({"gradient_accumulation_steps": 2}, "gradient_accumulation_steps=2"),
                       ({"gradient_clipping": 1.0}, "gradient_clipping=1.0"),
                       ({"bf16": {"enabled": True}}, "enables bf16")):
        with pytest.raises(ConfigError, match=match):
            _configure_deepspeed(_fake_deepspeed_accelerator({"zero_optimization": {"stage": 2}, **bad}), recipe)


def test_ssl_refuses_deepspeed(phantom_small, tmp_path):
    from mxr0.config import ConfigError, load_recipe
    from mxr0.tasks.ssl import SSLTask

    task = SSLTask(load_recipe(REPO / RECIPES["ssl"], ["data.source=records", f"data.path={phantom_small}"]))
    with pytest.raises(ConfigError, match="does not run under DeepSpeed"):
        task.setup(10, 5, _fake_deepspeed_accelerator({"zero_optimization": {"stage": 2}}))


# ---------------------------------------------------------------------------------------------------------
# The launcher configs
# ---------------------------------------------------------------------------------------------------------

WRAP = {"Dinov2WithRegistersLayer", "Dinov2Layer", "BertLayer", "LlamaDecoderLayer", "Qwen2DecoderLayer"}


def test_every_accelerate_config_loads_and_leaves_precision_and_accumulation_to_the_recipe():
    from accelerate.commands.config.config_args import load_config_from_file

    files = sorted(CONFIGS.glob("*.yaml"))
    names = {f.name for f in files}
    assert {"cpu.yaml", "single_gpu.yaml", "ddp.yaml", "fsdp.yaml", "deepspeed_zero2.yaml", "deepspeed_zero3.yaml",
            "deepspeed_zero3_offload.yaml", "multinode.yaml"} <= names
    readme = (CONFIGS / "README.md").read_text()
    for f in files:
        cfg = load_config_from_file(str(f))
        assert cfg.mixed_precision == "no", f.name
        assert f.name in readme, f"{f.name} is not described in accelerate_configs/README.md"
        raw = f.read_text()
        assert "gradient_accumulation_steps:" not in raw and "gradient_clipping:" not in raw, f.name
        ds = cfg.deepspeed_config or {}
        assert "gradient_accumulation_steps" not in ds and "gradient_clipping" not in ds, f.name
    fsdp = load_config_from_file(str(CONFIGS / "fsdp.yaml"))
    assert str(fsdp.distributed_type).endswith("FSDP")
    fc = fsdp.fsdp_config
    assert fc["fsdp_version"] == 2 and fc["fsdp_auto_wrap_policy"] == "TRANSFORMER_BASED_WRAP"
    assert set(fc["fsdp_transformer_layer_cls_to_wrap"].split(",")) == WRAP
    assert fc["fsdp_reshard_after_forward"] is True  # FULL_SHARD
    assert fc["fsdp_state_dict_type"] == "FULL_STATE_DICT"
    for name, stage, offload in (("deepspeed_zero2", 2, "none"), ("deepspeed_zero3", 3, "none"),
                                 ("deepspeed_zero3_offload", 3, "cpu")):
        c = load_config_from_file(str(CONFIGS / f"{name}.yaml"))
        assert str(c.distributed_type).endswith("DEEPSPEED"), name
        d = c.deepspeed_config
        assert d["zero_stage"] == stage and d["offload_optimizer_device"] == offload, name
        assert d["offload_param_device"] == offload and d["zero3_init_flag"] is False, name
        if stage == 3:
            assert d["zero3_save_16bit_model"] is True, name
    multi = load_config_from_file(str(CONFIGS / "multinode.yaml"))
    assert multi.num_machines > 1 and multi.main_process_ip and multi.main_process_port
    cpu = (CONFIGS / "cpu.yaml").read_text()
    assert "ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes" in cpu


def test_fsdp_wrap_classes_name_real_transformers_blocks():
    from transformers.models.bert.modeling_bert import BertLayer  # noqa: F401
    from transformers.models.dinov2.modeling_dinov2 import Dinov2Layer  # noqa: F401
    from transformers.models.dinov2_with_registers.modeling_dinov2_with_registers import (  # noqa: F401
        Dinov2WithRegistersLayer,
    )
    from transformers.models.llama.modeling_llama import LlamaDecoderLayer  # noqa: F401
    from transformers.models.qwen2.modeling_qwen2 import Qwen2DecoderLayer  # noqa: F401


# ---------------------------------------------------------------------------------------------------------
# GPUs: FSDP and ZeRO-3 (what a CPU cannot show)
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.slow
@pytest.mark.parametrize("config", ["fsdp.yaml", "deepspeed_zero3.yaml", "deepspeed_zero3_offload.yaml"])
def test_sharded_matrix_on_gpus(config, phantom_small, tmp_path):
    """Every task under FSDP / ZeRO-3 on the GPUs of this machine (2 at most): trains, checkpoints, resumes, and
    exports full weights (ssl is refused under DeepSpeed with a ConfigError)."""
    n = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if n == 0:
        pytest.skip("needs a CUDA GPU")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("ACCELERATE_USE_CPU", None)
    for task in RECIPES:
        run = tmp_path / f"{task}-{config}"
        for steps, resume in ((4, False), (6, True)):
            cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(CONFIGS / config),
                   "--num_processes", str(min(n, 2)), "--main_process_port", str(_free_port()), "-m", "mxr0",
                   *_argv(task, phantom_small, run, steps, resume)]
            proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
            if task == "ssl" and "deepspeed" in config:
                assert proc.returncode != 0 and "does not run under DeepSpeed" in proc.stderr
                break
            assert proc.returncode == 0, (proc.stdout + proc.stderr)[-6000:]
        else:
            r = _results(run)
            assert r["num_processes"] == min(n, 2) and r["state"]["step"] == 6
            assert (run / "export").is_dir()
            if task == "report":
                lora_b = [v for k, v in _safetensors(run / "export" / "adapter").items() if "lora_B" in k]
                assert lora_b and all(float(v.abs().max()) > 0 for v in lora_b)
