"""Typed recipes: dataclasses are the schema, YAML only serialises them.

A recipe is a YAML file with the sections ``task``, ``data``, ``model`` and ``train``. ``model`` is
typed by the task (each task declares its own ``ModelConfig``). Every field carries a docstring (the
string literal under it), shown by ``mxr0 config show``. Command-line overrides use dotted keys:
``train.lr=1e-4 model.freeze_encoder=true``. An unknown or mistyped key is an error that lists the
valid keys; the resolved recipe is written into the run folder as ``recipe.yaml``. Each section checks its
values in ``__post_init__`` (finite numbers in range, cross-field rules, the keys of free-form Hugging Face
config dicts) and raises a `FieldError` that `build` prefixes with the section's dotted path, so a bad recipe
is refused by ``mxr0 config show`` before any data or model is built.

Precision and gradient accumulation live here and only here (``train.mixed_precision``,
``train.grad_accum``): a launcher that sets something else is an error (see ``mxr0.distributed`` / ``mxr0.train.launch``).
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
import functools
import inspect
import os
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from mxr0.config.checks import (  # noqa: F401 (re-exported: mxr0.config is the public face)
    SEED_MAX, TRACKERS, ConfigError, FieldError, check_choices, check_ranges, check_text,
)
from mxr0.config.tasks import TASK_MODEL_CONFIGS
from mxr0.data.records import ANATOMIES, SPLITS, VIEWS


@dataclass
class PhantomConfig:
    """Arguments of the procedurally drawn phantom dataset (used when ``data.source == 'phantom'``)."""

    n_studies: int = 2000
    """Number of studies to draw (train/validation/test split 80/10/10)."""
    image_size: int = 128
    """Side of the square phantom images in pixels."""
    seed: int = 0
    """Seed of the drawing; the same seed gives byte-identical data."""

    def __post_init__(self):
        check_ranges(self, {"n_studies": "[1, inf)", "image_size": "[32, inf)", "seed": f"[0, {SEED_MAX}]"})


@dataclass
class DataConfig:
    """Where the study records come from and which of them a task sees."""

    source: Literal["records", "phantom"] = "phantom"
    """``phantom``: draw the embedded phantom set into ``path`` if it is not there yet;
    ``records``: read canonical records (JSONL / Parquet, made by ``mxr0 prepare``) from ``path``."""
    path: str = "data_cache/phantom"
    """A records file or a folder holding ``records.jsonl`` / ``records.parquet``."""
    extra_paths: list[str] = field(default_factory=list)
    """More records files / folders read after ``path`` and joined with it (a multi-source task mixture:
    MIMIC-CXR reports + MS-CXR boxes + Medical-Diff-VQA questions, …); study ids must be unique across them."""
    phantom: PhantomConfig = field(default_factory=PhantomConfig)
    """Phantom generation arguments (ignored unless ``source == 'phantom'``)."""
    train_split: str = "train"
    """Split trained on."""
    eval_split: str = "validation"
    """Split evaluated during and after training."""
    anatomies: list[str] | None = None
    """Keep only studies of these anatomies (e.g. ``[chest]``); ``null`` keeps all."""
    views: list[str] | None = None
    """Keep only images of these view positions (e.g. ``[PA, AP]``); ``null`` keeps all."""
    max_train_studies: int | None = None
    """Cap on training studies (first N after filtering), for quick runs."""
    max_eval_studies: int | None = None
    """Cap on evaluation studies."""
    num_workers: int = 0
    """DataLoader worker processes per rank (0 = load in the main process)."""
    max_bad_samples: int = 20
    """Unreadable training samples (corrupt or missing images) that are skipped, counted and named in the
    run folder's ``bad_samples.txt`` before the run stops with an error; 0 tolerates none."""

    def __post_init__(self):

        check_text(self, "path", "a records file or folder")
        for i, p in enumerate(self.extra_paths):
            if not p.strip():
                raise FieldError(f"extra_paths[{i}]", "expected a records file or folder, got an empty value", p)
        for name in ("train_split", "eval_split"):
            if getattr(self, name) not in SPLITS:
                raise FieldError(name, f"expected one of {list(SPLITS)}", getattr(self, name))
        check_choices(self, "anatomies", ANATOMIES, empty_ok=False, note="; null keeps every anatomy")
        check_choices(self, "views", VIEWS, empty_ok=False, note="; null keeps every view")
        check_ranges(self, {"max_train_studies": "[1, inf)", "max_eval_studies": "[1, inf)", "num_workers": "[0, inf)",
                            "max_bad_samples": "[0, inf)"})


@dataclass
class TrainConfig:
    """The one training loop's settings: optimisation, precision, cadence, checkpoints."""

    output_dir: str = "runs/default"
    """Run folder: resolved recipe, logs, checkpoints and the exported model go here."""
    seed: int = 0
    """Global seed (model init, data order, augmentation)."""
    batch_size: int = 32
    """Micro-batch size per process."""
    grad_accum: int = 1
    """Gradient accumulation steps: effective batch = batch_size x grad_accum x processes."""
    max_steps: int = 0
    """Optimiser steps to train; 0 means ``epochs`` x steps per epoch."""
    epochs: float = 1.0
    """Passes over the training set (used when ``max_steps`` is 0)."""
    optimizer: Literal["adamw"] = "adamw"
    """Optimiser (AdamW, decoupled weight decay; biases and norms get no decay)."""
    lr: float = 1e-3
    """Peak learning rate, reached after warmup."""
    min_lr: float = 0.0
    """Learning rate at the end of the cosine schedule."""
    schedule: Literal["cosine", "linear", "constant"] = "cosine"
    """Learning-rate shape after warmup."""
    warmup_steps: int = 0
    """Linear warmup length in optimiser steps."""
    weight_decay: float = 0.05
    """Weight decay at the start of training."""
    weight_decay_end: float | None = None
    """Weight decay at the end (cosine schedule from ``weight_decay``); ``null`` keeps it constant."""
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    """AdamW betas."""
    max_grad_norm: float = 1.0
    """Gradient clipping by global norm; 0 disables clipping."""
    mixed_precision: Literal["no", "bf16", "fp16"] = "no"
    """Autocast precision; the only place it is set (a launcher that disagrees is an error)."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass to save memory (for models that support it)."""
    log_every: int = 10
    """Log losses, learning rate and throughput every N optimiser steps."""
    eval_every: int = 0
    """Evaluate every N optimiser steps; 0 evaluates only at the end."""
    save_every: int = 0
    """Write a full checkpoint every N optimiser steps; 0 writes only the final one."""
    keep_last: int = 2
    """Checkpoints kept (older ones are deleted after a newer one is complete); 0 keeps all."""
    max_nonfinite: int = 5
    """Consecutive optimiser steps with a non-finite loss that are skipped before training stops."""
    trackers: list[str] = field(default_factory=lambda: ["jsonl", "tensorboard"])
    """Loggers: ``jsonl`` (metrics.jsonl in the run folder) and accelerate's trackers: ``tensorboard``, ``wandb``,
    ``mlflow``, ``trackio``, ... (their package must be installed; a missing one is a clear error)."""
    progress: bool = True
    """Show a tqdm progress bar (loss, learning rate, samples/s) on the main process."""
    push_to_hub: bool = False
    """After training, upload the export and a model card to ``hub_repo_id`` (as ``mxr0 push`` does); a failed
    push is logged and leaves the export in the run folder."""
    hub_repo_id: str = ""
    """Hub repository ``OWNER/NAME`` for ``push_to_hub`` (token: ``HF_TOKEN`` or the stored Hub login)."""
    hub_private: bool = True
    """Create the Hub repository private (an existing repository keeps its visibility)."""
    hub_revision: str | None = None
    """Branch to push to (created when missing); ``null`` is the default branch."""

    def __post_init__(self):
        check_text(self, "output_dir", "a run folder (an empty one would write into the working directory)")
        check_ranges(self, {
            "seed": f"[0, {SEED_MAX}]", "batch_size": "[1, inf)", "grad_accum": "[1, inf)", "max_steps": "[0, inf)",
            "epochs": "[0, inf)", "lr": "(0, inf)", "min_lr": "[0, inf)", "warmup_steps": "[0, inf)",
            "weight_decay": "[0, inf)", "weight_decay_end": "[0, inf)", "betas": "[0, 1)", "max_grad_norm": "[0, inf)",
            "log_every": "[1, inf)", "eval_every": "[0, inf)", "save_every": "[0, inf)", "keep_last": "[0, inf)",
            "max_nonfinite": "[0, inf)",
        })
        if self.max_steps == 0 and self.epochs <= 0:
            raise FieldError("epochs", "expected a number > 0 when max_steps is 0 (the run length is epochs x steps "
                             "per epoch); or set train.max_steps", self.epochs)
        if self.min_lr > self.lr:
            raise FieldError("min_lr", f"must be <= lr={self.lr!r} (the schedule decays from lr to min_lr)", self.min_lr)
        # warmup_steps >= max_steps is allowed: the schedule caps warmup at the run length, and a short smoke run
        # (train.max_steps=3 on a recipe with warmup) must stay possible.
        if len(self.betas) != 2:
            raise FieldError("betas", "expected two numbers [beta1, beta2] in [0, 1)", self.betas)
        check_choices(self, "trackers", TRACKERS)
        if self.push_to_hub and not re.fullmatch(r"[^/\s]+/[^/\s]+", self.hub_repo_id):
            raise FieldError("hub_repo_id", "push_to_hub=true needs hub_repo_id=OWNER/NAME", self.hub_repo_id)
        check_text(self, "hub_revision", "a branch name, or null for the default branch")


@dataclass
class Recipe:
    """A whole training recipe."""

    task: str = "classify"
    """Which task trains: one of ``mxr0.tasks.TASKS`` (``classify``, ``ssl``, ``align``, ``report``)."""
    data: DataConfig = field(default_factory=DataConfig)
    """Records and their filtering."""
    model: Any = None
    """The task's model settings (typed by the task's ``ModelConfig``)."""
    train: TrainConfig = field(default_factory=TrainConfig)
    """Training loop settings."""
    name: str = ""
    """A short human-readable name (shown in logs and model cards)."""


# ----------------------------------------------------------------------------------------------
# Field docs (attribute docstrings)
# ----------------------------------------------------------------------------------------------


@functools.cache
def field_docs(cls: type) -> dict[str, str]:
    """The docstring under each field of a dataclass (the string literal that follows it)."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        try:
            tree = ast.parse(inspect.cleandoc("\n" + inspect.getsource(klass)))
        except (OSError, TypeError, SyntaxError):
            continue
        body = tree.body[0].body if tree.body and isinstance(tree.body[0], ast.ClassDef) else []
        for node, nxt in zip(body, body[1:]):
            if (
                isinstance(node, ast.AnnAssign)
                and isinstance(node.target, ast.Name)
                and isinstance(nxt, ast.Expr)
                and isinstance(nxt.value, ast.Constant)
                and isinstance(nxt.value.value, str)
            ):
                docs[node.target.id] = " ".join(nxt.value.value.split())
    return docs


# ----------------------------------------------------------------------------------------------
# Building dataclasses from plain data, with type checks
# ----------------------------------------------------------------------------------------------


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " | ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is not None:
        return f"{origin.__name__}[{', '.join(_type_name(a) for a in typing.get_args(tp))}]"
    return "null" if tp is type(None) else getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Check ``value`` against type ``tp`` (int→float widening only) and build nested dataclasses."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if dataclasses.is_dataclass(tp):
        if value is None:
            return tp()
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping of {tp.__name__} fields, got {value!r}")
        return build(tp, value, where)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, where)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(f"{where}: {value!r} is not a valid {_type_name(tp)}")
    if origin is Literal:
        if value not in typing.get_args(tp):
            raise ConfigError(f"{where}: {value!r} is not one of {_type_name(tp)}")
        return value
    if origin in (list, tuple) or tp in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        (inner, *_) = typing.get_args(tp) or (Any,)
        return [_coerce(v, inner, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        key_tp, value_tp = typing.get_args(tp) or (Any, Any)
        return {_coerce(k, key_tp, f"{where} key {k!r}"): _coerce(v, value_tp, f"{where}.{k}") for k, v in value.items()}
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, got {value!r}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    return value


def build(cls: type, data: dict, where: str = "") -> Any:
    """Build dataclass ``cls`` from a mapping; unknown keys and wrong types are `ConfigError`s."""
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in data.items():
        path = f"{where}.{key}" if where else key
        if key not in names:
            close = difflib.get_close_matches(str(key), names, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise ConfigError(f"{path}: unknown key.{hint} Valid keys{' of ' + where if where else ''}: {', '.join(names)}")
        kwargs[key] = _coerce(value, hints[key], path)
    try:
        return cls(**kwargs)
    except FieldError as e:  # a range / cross-field check of the section: name the full dotted key
        raise e.under(where) from None


def to_dict(obj: Any) -> Any:
    """A dataclass tree as plain data (for YAML)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj


# ----------------------------------------------------------------------------------------------
# Overrides and recipe loading
# ----------------------------------------------------------------------------------------------


def parse_override(text: str) -> tuple[list[str], Any]:
    """``a.b.c=value`` → (["a", "b", "c"], value parsed as YAML)."""
    if "=" not in text:
        raise ConfigError(f"override {text!r}: expected KEY=VALUE with a dotted key, e.g. train.lr=1e-4")
    key, raw = text.split("=", 1)
    keys = key.strip().split(".")
    if not all(keys):
        raise ConfigError(f"override {text!r}: empty part in the dotted key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as e:
        raise ConfigError(f"override {text!r}: value is not valid YAML ({e})") from e
    if isinstance(value, str) and _looks_numeric(value):
        value = float(value)  # PyYAML reads 1e-4 (no dot) as a string
    return keys, value


def _looks_numeric(s: str) -> bool:
    try:
        float(s)
    except ValueError:
        return False
    return s.strip().lower() not in ("nan", "inf", "-inf", "infinity", "-infinity")


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    """Set dotted overrides into a raw recipe mapping (types are checked when the recipe is built)."""
    for text in overrides:
        keys, value = parse_override(text)
        node = raw
        for k in keys[:-1]:
            nxt = node.get(k)
            if nxt is None:
                nxt = node[k] = {}
            if not isinstance(nxt, dict):
                raise ConfigError(f"override {text!r}: {k!r} is not a section")
            node = nxt
        node[keys[-1]] = value
    return raw


def _fix_yaml_floats(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _fix_yaml_floats(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_fix_yaml_floats(v) for v in obj]
    if isinstance(obj, str) and _looks_numeric(obj) and any(c in obj.lower() for c in "e."):
        return float(obj)
    return obj


def load_yaml(path: str | os.PathLike) -> dict:
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"recipe {path} not found (recipes live under recipes/, e.g. recipes/tiny/classify.yaml)")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"recipe {path}: not valid YAML: {e}") from e
    if not isinstance(raw, dict):
        raise ConfigError(f"recipe {path}: expected a mapping at the top level")
    return _fix_yaml_floats(raw)


def build_recipe(raw: dict, where: str = "recipe") -> Recipe:
    """Build a `Recipe` from a raw mapping; ``model`` is typed by the task's model config
    (`mxr0.config.tasks.TASK_MODEL_CONFIGS`)."""
    raw = dict(raw)
    task_name = raw.get("task", Recipe.task)
    if task_name not in TASK_MODEL_CONFIGS:
        raise ConfigError(f"{where}: task: unknown task {task_name!r}; available: {', '.join(sorted(TASK_MODEL_CONFIGS))}")
    model_raw = raw.pop("model", None) or {}
    try:
        recipe = build(Recipe, raw)
        recipe.model = _coerce(model_raw, TASK_MODEL_CONFIGS[task_name], "model")
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}") from None
    return recipe


def load_recipe(path: str | os.PathLike, overrides: list[str] | None = None) -> Recipe:
    """Load a YAML recipe, apply dotted overrides, and check everything against the schema."""
    raw = apply_overrides(load_yaml(path), list(overrides or []))
    return build_recipe(raw, where=str(path))


def dump_recipe(recipe: Recipe) -> str:
    return yaml.safe_dump(to_dict(recipe), sort_keys=False)


def write_recipe(recipe: Recipe, path: str | os.PathLike) -> None:
    """Write the resolved recipe atomically (the run folder's ``recipe.yaml``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(dump_recipe(recipe))
    os.replace(tmp, path)


def describe(obj: Any, prefix: str = "") -> list[str]:
    """``key = value  # doc`` lines for every field of a config tree (``mxr0 config show``)."""
    lines = []
    docs = field_docs(type(obj))
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        key = f"{prefix}{f.name}"
        if dataclasses.is_dataclass(value):
            lines.append(f"{key}:  # {docs.get(f.name, '')}")
            lines.extend(describe(value, key + "."))
        else:
            lines.append(f"{key} = {value!r}  # {docs.get(f.name, '')}")
    return lines
