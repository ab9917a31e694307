"""Each task declares its model-card details (`Task.card_info`); the card renderer keeps no per-task tables."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from mxr0.tasks import TASKS, get_task_class


def _fake_run(root: Path, task: str, export_files: dict | None = None) -> Path:
    """A run folder with a recipe and an export holding a config (no weights: the card needs none)."""
    run = root / f"run-{task}"
    (run / "export").mkdir(parents=True)
    (run / "recipe.yaml").write_text(yaml.safe_dump({"name": f"tiny-{task}", "task": task, "model": {},
                                                     "data": {"source": "phantom"}}))
    (run / "export" / "config.json").write_text(json.dumps({"model_type": "llava", "architectures": ["X"]}))
    for name, text in (export_files or {}).items():
        (run / "export" / name).write_text(text)
    return run


def _card(run: Path) -> tuple[dict, str]:
    from mxr0.hub import render_model_card

    card = render_model_card(run, repo_id="my-org/m")
    _, front, body = card.split("---\n", 2)
    return yaml.safe_load(front), body


def test_instruct_card_is_an_image_text_to_text_model(tmp_path):
    run = _fake_run(tmp_path, "instruct", {"mxr0_report.json": json.dumps({"tasks": {"vqa": 1.0, "grounding": 0.5}})})
    meta, body = _card(run)
    assert meta["pipeline_tag"] == "image-text-to-text"
    assert "AutoModelForImageTextToText.from_pretrained(repo)" in body and 'repo = "my-org/m"' in body
    assert "AutoModel.from_pretrained" not in body  # the bare AutoModel drops the LM head
    assert "vqa, grounding" in body and "mxr0 generate --task" in body
    assert "Boxes are text the model writes" in body and "hallucination" in body


@pytest.mark.parametrize("task", sorted(TASKS))
def test_every_task_declares_a_tag_and_a_loading_snippet(tmp_path, task):
    from mxr0.tasks.base import Task

    cls = get_task_class(task)
    assert "card_info" in {k for c in cls.__mro__[:-1] if c is not Task for k in vars(c)}, f"{task} keeps the default"
    meta, body = _card(_fake_run(tmp_path, task))
    info = cls.card_info("my-org/m", tmp_path)
    assert meta["pipeline_tag"] == info.pipeline_tag and meta["pipeline_tag"] != "feature-extraction"
    assert "```python" in body and ".from_pretrained(" in body and "my-org/m" in body
    assert f"Task `{task}`: {info.summary}." in body


def test_expected_pipeline_tags():
    tags = {t: get_task_class(t).card_info("o/m", Path(".")).pipeline_tag for t in TASKS}
    assert tags == {"classify": "image-classification", "ssl": "image-feature-extraction",
                    "align": "zero-shot-image-classification", "report": "image-text-to-text",
                    "instruct": "image-text-to-text"}


def test_unknown_task_gets_the_generic_card(tmp_path):
    meta, body = _card(_fake_run(tmp_path, "somethingnew"))
    assert meta["pipeline_tag"] == "feature-extraction" and "AutoModel.from_pretrained" in body


def test_renderer_keeps_no_per_task_tables():
    import mxr0.hub as hub

    src = "\n".join(p.read_text() for p in Path(hub.__file__).parent.glob("*.py"))
    assert "PIPELINE_TAGS" not in src and "task_words" not in src and 'task == "' not in src
