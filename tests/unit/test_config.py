import dataclasses
from pathlib import Path

import pytest
import yaml

from mxr0.config import (
    ConfigError,
    DataConfig,
    PhantomConfig,
    Recipe,
    TrainConfig,
    build_recipe,
    dump_recipe,
    field_docs,
    load_recipe,
    parse_override,
)
from mxr0.tasks import TASKS, get_task_class

REPO = Path(__file__).resolve().parents[2]
RECIPES = sorted((REPO / "recipes").rglob("*.yaml"))


def test_there_are_recipes():
    assert any(p.parent.name == "tiny" for p in RECIPES)


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: str(p.relative_to(REPO)))
def test_every_recipe_parses_and_round_trips(path):
    recipe = load_recipe(path)
    again = build_recipe(yaml.safe_load(dump_recipe(recipe)))
    assert again == recipe


def test_every_field_is_documented():
    classes = [Recipe, DataConfig, PhantomConfig, TrainConfig] + [get_task_class(t).ModelConfig for t in TASKS]
    for cls in classes:
        docs = field_docs(cls)
        missing = [f.name for f in dataclasses.fields(cls) if not docs.get(f.name)]
        assert not missing, f"{cls.__name__} fields without a docstring: {missing}"


def test_overrides_are_typed():
    r = load_recipe(REPO / "recipes/tiny/classify.yaml",
                    ["train.lr=1e-4", "model.freeze_encoder=true", "data.anatomies=[chest, hand]", "train.epochs=3"])
    assert r.train.lr == pytest.approx(1e-4) and isinstance(r.train.lr, float)
    assert r.model.freeze_encoder is True
    assert r.data.anatomies == ["chest", "hand"]
    assert r.train.epochs == 3.0 and isinstance(r.train.epochs, float)


@pytest.mark.parametrize(
    "override, fragment",
    [
        ("train.lrr=1", "Did you mean 'lr'"),
        ("train.lr=abc", "expected a number"),
        ("train.batch_size=2.5", "expected an integer"),
        ("model.uncertain=maybe", "'ones' | 'zeros' | 'ignore'"),
        ("data.phantom.n=3", "Valid keys of data.phantom: n_studies, image_size, seed"),
        ("nosection.x=1", "unknown key"),
        ("train.mixed_precision=fp32", "'no' | 'bf16' | 'fp16'"),
        ("train.lr", "expected KEY=VALUE"),
    ],
)
def test_bad_keys_and_values_are_errors_that_name_them(override, fragment):
    with pytest.raises(ConfigError) as e:
        load_recipe(REPO / "recipes/tiny/classify.yaml", [override])
    assert fragment in str(e.value)


def test_unknown_task_lists_the_valid_ones():
    with pytest.raises(ConfigError, match="available: align, classify, instruct, report, ssl"):
        build_recipe({"task": "segmentt"})


def test_scientific_notation_without_dot_is_a_float():
    keys, value = parse_override("train.lr=1e-4")
    assert keys == ["train", "lr"] and value == pytest.approx(1e-4)


def test_missing_recipe_file_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_recipe(tmp_path / "nope.yaml")
