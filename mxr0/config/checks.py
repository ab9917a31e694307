"""Recipe checking primitives: the error types, range / choice / format checks that the config sections' ``__post_init__`` use, and the key check of free-form Hugging Face config dicts."""

from __future__ import annotations

import difflib
import functools
import inspect
import math
import re
import typing
from typing import Any

SEED_MAX = 2**31 - 1
"""Largest seed (numpy's seeding takes < 2**32; ranks add their index)."""
TRACKERS = ("jsonl", "tensorboard", "wandb", "mlflow", "trackio", "comet_ml", "aim", "clearml", "dvclive", "swanlab")
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
