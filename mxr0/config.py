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
``train.grad_accum``): a launcher that sets something else is an error (see ``mxr0.train.loop``).
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
import functools
import inspect
import math
import os
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml


SEED_MAX = 2**31 - 1
"""Largest seed (numpy's seeding takes < 2**32; ranks add their index)."""
TRACKERS = ("jsonl", "tensorboard", "wandb")
"""Loggers known to ``train.trackers`` (`mxr0.train.trackers`)."""


class ConfigError(ValueError):
    """A recipe or override that does not fit the schema; the message names the key and the fix."""


class FieldError(ConfigError):
    """A bad value of one field, raised by a section's ``__post_init__`` with the key relative to the section;
    `build` puts the section's dotted path in front (``lr`` → ``train.lr``), so the message names the full key."""

    def __init__(self, key: str, text: str, value: Any = ...):
        self.key, self.text, self.value = key, text, value
        super().__init__(f"{key}: {text}" if value is ... else f"{key}={value!r}: {text}")

    def __reduce__(self):  # picklable across processes despite the extra constructor arguments
        return type(self), (self.key, self.text, self.value)

    def under(self, where: str) -> FieldError:
        return FieldError(f"{where}.{self.key}" if where else self.key, self.text, self.value)


def _interval(spec: str) -> tuple[float, bool, float, bool]:
    """``"[0, 1)"`` → (0.0, True, 1.0, False): bounds and whether each is included."""
    lo, hi = (float(v) for v in spec[1:-1].split(","))
    return lo, spec[0] == "[", hi, spec[-1] == "]"


def _allowed(spec: str, integer: bool) -> str:
    lo, lo_in, hi, hi_in = _interval(spec)
    kind = "an integer" if integer else "a finite number"
    num = (lambda v: str(int(v)) if float(v).is_integer() else repr(v))
    if math.isinf(lo) and math.isinf(hi):
        return kind
    if math.isinf(hi):
        return f"{kind} {'>=' if lo_in else '>'} {num(lo)}"
    if math.isinf(lo):
        return f"{kind} {'<=' if hi_in else '<'} {num(hi)}"
    return f"{kind} in {spec}"


def check_value(key: str, value: Any, spec: str, note: str = "") -> None:
    """`FieldError` unless ``value`` is a finite number in the interval ``spec`` (``"(0, inf)"``, ``"[0, 1]"``, …)."""
    integer = isinstance(value, int) and not isinstance(value, bool)
    lo, lo_in, hi, hi_in = _interval(spec)
    ok = (isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
          and (lo < value or (lo_in and lo == value)) and (value < hi or (hi_in and value == hi)))
    if not ok:
        raise FieldError(key, f"expected {_allowed(spec, integer)}{note}", value)


def check_ranges(obj: Any, ranges: dict[str, str]) -> None:
    """Check numeric fields of a section against intervals; ``None`` (an optional field left unset) passes, a
    list is checked element by element (``image_std[1]``)."""
    for name, spec in ranges.items():
        value = getattr(obj, name)
        if value is None:
            continue
        if isinstance(value, (list, tuple)):
            for i, v in enumerate(value):
                check_value(f"{name}[{i}]", v, spec)
        else:
            check_value(name, value, spec)


def check_choices(obj: Any, name: str, choices: typing.Iterable, empty_ok: bool = True, note: str = "") -> None:
    """Every element of list field ``name`` is one of ``choices`` (and the list is not empty unless ``empty_ok``)."""
    values, choices = getattr(obj, name), list(choices)
    if values is None:
        return
    bad = [v for v in values if v not in choices]
    if bad or (not values and not empty_ok):
        hint = ""
        if bad and isinstance(bad[0], str):
            close = difflib.get_close_matches(bad[0], [str(c) for c in choices], n=1)
            hint = f" (did you mean {close[0]!r} for {bad[0]!r}?)" if close else ""
        what = ("a non-empty " if not empty_ok else "a ") + ("mapping with keys from" if isinstance(values, dict) else "list of")
        raise FieldError(name, f"expected {what} {choices}{hint}{note}", values)


def check_text(obj: Any, name: str, what: str = "a non-empty string") -> None:
    """A string field that may not be empty or whitespace."""
    value = getattr(obj, name)
    if value is not None and not str(value).strip():
        raise FieldError(name, f"expected {what}, got an empty value", value)


def check_pair(obj: Any, name: str, spec: str) -> None:
    """A ``[low, high]`` range field: two numbers in ``spec`` with low <= high."""
    v = getattr(obj, name)
    if len(v) != 2:
        raise FieldError(name, "expected [low, high] (two numbers)", v)
    for i, x in enumerate(v):
        check_value(f"{name}[{i}]", x, spec)
    if v[0] > v[1]:
        raise FieldError(name, "expected [low, high] with low <= high", v)


def check_mean_std(obj: Any, mean: str = "image_mean", std: str = "image_std") -> None:
    """Normalisation mean / std: 1 or 3 values (grey or RGB), finite means, std > 0."""
    for name, spec in ((mean, "(-inf, inf)"), (std, "(0, inf)")):
        v = getattr(obj, name)
        if len(v) not in (1, 3):
            raise FieldError(name, "expected 1 or 3 values (one per channel)", v)
        check_ranges(obj, {name: spec})


def check_format(obj: Any, name: str, fields: tuple[str, ...], required: tuple[str, ...] = ()) -> None:
    """A prompt template filled with ``str.format(**fields)``: only those placeholders, ``required`` ones present."""
    import string

    value = getattr(obj, name)
    try:
        used = {f for _, f, _, _ in string.Formatter().parse(value) if f is not None}
    except ValueError as e:
        raise FieldError(name, f"expected a str.format template ({e}); write literal braces as {{{{ }}}}", value) from None
    bad = sorted(used - set(fields))
    missing = [f for f in required if f not in used]
    if bad or missing:
        what = f"unknown placeholder(s) {['{' + f + '}' for f in bad]}" if bad else \
            f"missing placeholder(s) {['{' + f + '}' for f in missing]}"
        raise FieldError(name, f"{what}; allowed: {['{' + f + '}' for f in fields]}", value)


def check_regex(obj: Any, name: str) -> None:
    value = getattr(obj, name)
    try:
        re.compile(value)
    except re.error as e:
        raise FieldError(name, f"expected a valid regular expression ({e})", value) from None


@functools.cache
def hf_config_keys(class_name: str) -> tuple[frozenset[str], dict[str, Any]]:
    """(known keys, defaults) of a ``transformers`` config class: its ``to_dict()`` keys, the arguments of its
    and its parents' ``__init__`` and its ``attribute_map`` aliases (imported lazily: transformers is heavy)."""
    import transformers

    cls = getattr(transformers, class_name)
    defaults = cls().to_dict()
    keys = set(defaults) | set(getattr(cls, "attribute_map", {}) or {})
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is not None:
            try:
                keys |= {p for p in inspect.signature(init).parameters if p not in ("self", "kwargs", "args")}
            except (TypeError, ValueError):
                pass
    keys |= {k.lstrip("_") for k in keys if k.startswith("_")}  # _out_features → out_features
    keys.add("torch_dtype")  # transformers' backward-compatible spellings, still honoured
    if "rope_parameters" in keys:
        keys |= {"rope_theta", "rope_scaling"}
    keys -= {"transformers_version", "_name_or_path", "name_or_path", "model_type"}
    return frozenset(keys), defaults


_HF_INT_KEYS = ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "patch_size",
                "num_key_value_heads", "head_dim", "max_position_embeddings", "num_channels")
_HF_PROB_KEYS = ("hidden_dropout_prob", "attention_probs_dropout_prob", "attention_dropout", "drop_path_rate",
                 "classifier_dropout")


def check_hf_config(obj: Any, name: str, class_name: str, aliases: tuple[str, ...] = (),
                    reserved: dict[str, str] | None = None) -> dict[str, Any]:
    """Check a free-form ``transformers`` config dict (``model.encoder_config``, …): every key is one the config
    class knows (a typo is named, with the closest key), keys the task sets itself (``reserved``: key → what to
    set instead) are refused, sizes are integers >= 1, dropouts in [0, 1), and a hidden_size / head count set
    together divide. Returns the merged settings (class defaults, then the dict). An empty dict costs no import."""
    d = getattr(obj, name)
    if not d:
        return {}
    known, defaults = hf_config_keys(class_name)
    known = known | set(aliases)
    for key in d:
        if reserved and key in reserved:
            raise FieldError(f"{name}.{key}", f"set by the task; {reserved[key]}", d[key])
        if key not in known:
            close = difflib.get_close_matches(str(key), sorted(known), n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise FieldError(f"{name}.{key}", f"unknown key of transformers.{class_name}.{hint} Known keys: "
                             f"{', '.join(sorted(k for k in known if not k.startswith('_')))}")
    merged = {**defaults, **d}
    for key in _HF_INT_KEYS:
        if key in d and d[key] is not None:
            if not isinstance(d[key], int) or isinstance(d[key], bool):
                raise FieldError(f"{name}.{key}", "expected an integer >= 1", d[key])
            check_value(f"{name}.{key}", d[key], "[1, inf)")
    for key in _HF_PROB_KEYS:
        if key in d and d[key] is not None:
            check_value(f"{name}.{key}", d[key], "[0, 1)")
    if "mlp_ratio" in d:
        check_value(f"{name}.mlp_ratio", d["mlp_ratio"], "(0, inf)")
    # cross-checks only between keys the recipe sets (the task may use other defaults than the class)
    h, heads, kv = (d.get(k) for k in ("hidden_size", "num_attention_heads", "num_key_value_heads"))
    if isinstance(h, int) and isinstance(heads, int) and heads > 0 and h % heads and not d.get("head_dim"):
        raise FieldError(f"{name}.hidden_size", f"must be divisible by num_attention_heads={heads}", h)
    if isinstance(kv, int) and isinstance(heads, int) and kv > 0 and heads % kv:
        raise FieldError(f"{name}.num_key_value_heads", f"must divide num_attention_heads={heads}", kv)
    return merged


# ----------------------------------------------------------------------------------------------
# Schema
# ----------------------------------------------------------------------------------------------


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
        from mxr0.data.records import ANATOMIES, SPLITS, VIEWS

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
    """Loggers: ``jsonl`` (metrics.jsonl in the run folder), ``tensorboard``, ``wandb`` (if installed)."""
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
    """Build a `Recipe` from a raw mapping; ``model`` is typed by the task's ``ModelConfig``."""
    from mxr0.tasks import get_task_class

    raw = dict(raw)
    task_name = raw.get("task", Recipe.task)
    try:
        task_cls = get_task_class(task_name)
    except KeyError as e:
        raise ConfigError(f"{where}: task: {e.args[0]}") from None
    model_raw = raw.pop("model", None) or {}
    try:
        recipe = build(Recipe, raw)
        recipe.model = _coerce(model_raw, task_cls.ModelConfig, "model")
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
