"""Model cards and ``mxr0 push``: the real huggingface_hub client against a local fake Hub on 127.0.0.1."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest
import yaml

from _fake_hub import FakeHub
from test_train_loop import TINY, tiny_overrides

TOKEN = "hf_" + "FakeTokenForTests0123456789abcdefgh"


def _train(data_dir: Path, out: Path, **extra):
    from mxr0.config import load_recipe
    from mxr0.train.loop import train

    o = {"train.max_steps": 3, "train.eval_every": 0, "train.save_every": 0, "train.log_every": 1,
         "train.trackers": "[jsonl]"}
    o.update(extra)
    return train(load_recipe(TINY, tiny_overrides(data_dir, out, **o)))


@pytest.fixture(scope="module")
def tiny_run(phantom_small, tmp_path_factory) -> Path:
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        out = tmp_path_factory.mktemp("hub") / "tiny-run"
        _train(phantom_small.parent, out)
    finally:
        torch.set_num_threads(old)
    return out


@pytest.fixture
def online(monkeypatch):
    """conftest turns the Hub client offline; the fake Hub is local, so let the client talk to it."""
    from huggingface_hub import constants
    from huggingface_hub.utils import _detect_agent

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    # the client's user-agent telemetry would fetch {huggingface.co}/api/agent-harnesses once: keep it local
    monkeypatch.setattr(_detect_agent, "_registry", {"standardEnvVars": [], "harnesses": {}}, raising=False)
    for var in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_ENDPOINT"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")


def _split_card(card: str) -> tuple[dict, str]:
    assert card.startswith("---\n")
    _, fm, body = card.split("---\n", 2)
    return yaml.safe_load(fm), body


def _vision_result(data: str) -> dict:
    fair = {"sex": {"groups": {"F": {"value": 0.61, "n": 40}, "M": {"value": 0.7, "n": 44}}, "gap": 0.09, "worst": "F"},
            "age": {"groups": {"<40": {"value": 0.66, "n": 20}, "75+": {"value": 0.58, "n": 21}}, "gap": 0.08,
                    "worst": "75+"}}
    return {"data": data, "n_studies": {"train": 192, "test": 84},
            "encoders": {"tiny": {"probe": {"features": "cls+mean", "policy": "uncertain=ones", "mean_auroc": 0.655,
                                            "mean_auroc_ci95": [0.601, 0.712], "auroc": {"Cardiomegaly": 0.7},
                                            "fairness": fair}}}}


def _reports_result() -> dict:
    return {"n_studies": 23, "metrics_requested": ["bleu"],
            "metrics": {"bleu_4": {"value": 0.1234, "median": 0.1201, "ci_low": 0.0811, "ci_high": 0.1555}},
            "settings": {"uncertain": "ones", "rouge_stemmer": False, "seed": 0},
            "conventions": {"bleu": "corpus BLEU"}, "bootstrap": {"n_resamples": 500, "seed": 0}}


# ----------------------------------------------------------------------------------------------
# The card
# ----------------------------------------------------------------------------------------------


def test_card_front_matter_sections_and_redaction(tiny_run):
    from mxr0.hub import render_model_card

    card = render_model_card(tiny_run, repo_id="my-org/tiny")
    meta, body = _split_card(card)
    assert meta["library_name"] == "transformers" and meta["pipeline_tag"] == "image-classification"
    assert meta["license"] == "other"
    assert {"radiology", "x-ray", "medical", "mxr0"} <= set(meta["tags"])
    assert "base_model" not in meta  # a new ViT: no base checkpoint
    for h in ("## Model summary", "## How to use", "## Training data", "## Training procedure", "## Evaluation",
              "### Fairness", "## Intended use", "## Limitations", "## How it was made"):
        assert h in body, h
    assert "Research use only" in body and "Not a medical device" in body
    assert "synthetic" in body.lower() and "phantom" in body.lower()  # phantom records detected
    assert "AutoModelForImageClassification.from_pretrained(repo)" in body and '"my-org/tiny"' in body
    assert "trust_remote_code=True" not in body
    assert "| **mean_auroc** (main) |" in body and "| Cardiomegaly |" in body
    assert "45.90k" in body or "parameters" in body
    # the recipe is there, but no local absolute path: not the run folder, not the data folder
    recipe = yaml.safe_load(body.split("```yaml\n", 1)[1].split("```", 1)[0])
    assert recipe["train"]["output_dir"] == "<redacted>"
    assert recipe["data"]["path"] == f"<local>/{Path(yaml.safe_load((tiny_run / 'recipe.yaml').read_text())['data']['path']).name}"
    assert str(tiny_run) not in card and str(tiny_run.parent) not in card and "/tmp/" not in card
    assert str(Path.home()) + "/" not in card
    # checkpoints are neither uploaded nor listed
    files_line = next(line for line in body.splitlines() if line.startswith("Files: "))
    assert "optimizer" not in files_line and "checkpoints" not in files_line and "model.safetensors" in files_line


def test_card_renders_as_markdown(tiny_run):
    from mxr0.hub import render_model_card

    _, body = _split_card(render_model_card(tiny_run))
    try:
        import markdown
    except ImportError:  # structural check only
        assert body.count("\n## ") >= 7 and "|---|" in body and body.count("```") % 2 == 0
        return
    html = markdown.markdown(body, extensions=["tables", "fenced_code"])
    assert html.count("<h2") >= 7 and html.count("<table>") >= 4
    assert '<code class="language-python">' in html and '<code class="language-yaml">' in html
    assert "|---|" not in html  # every table was parsed as a table
    assert "<blockquote>" in html  # the disclaimer


def test_card_eval_tables_fairness_and_base_models(tiny_run, tmp_path):
    from mxr0.hub import render_model_card

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    raw = yaml.safe_load((run / "recipe.yaml").read_text())
    raw["model"]["encoder"] = "microsoft/rad-dino"
    (run / "recipe.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    (run / "eval-vision").mkdir()
    (run / "eval-vision" / "results.json").write_text(json.dumps(_vision_result(str(tmp_path / "records"))))
    reports = tmp_path / "elsewhere" / "reports.json"
    reports.parent.mkdir()
    reports.write_text(json.dumps(_reports_result()))
    note = tmp_path / "extra.md"
    note.write_text("# Reader study\n\n| reader | agree |\n|---|---|\n| A | 0.9 |\n")

    card = render_model_card(run, extra_eval=[reports, note])
    meta, body = _split_card(card)
    assert meta["base_model"] == ["microsoft/rad-dino"]
    assert "https://huggingface.co/microsoft/rad-dino" in body
    ev = body.split("## Evaluation", 1)[1].split("## Intended use", 1)[0]
    # vision suite (found in the run folder): mean AUROC with its bootstrap interval, fairness slices
    assert "0.655 [0.601, 0.712]" in ev
    assert "#### Fairness" in ev and "| sex |" in ev.replace("| probe mean AUROC | sex |", "| sex |")
    assert "Per-subgroup results" in ev
    # reports (passed): median and 95% CI
    assert "median [95% CI]" in ev and "0.1201 [0.0811, 0.1555]" in ev
    assert "### extra.md" in ev and "#### Reader study" in ev
    assert str(tmp_path) not in card


def test_redaction_helpers():
    from mxr0.hub.run_folder import redact_recipe
    from mxr0.models.download import is_hub_id, scrub_tokens

    assert is_hub_id("microsoft/rad-dino") and not is_hub_id("runs/xr0") and not is_hub_id("/abs/x")
    assert not is_hub_id("runs/xr0/export") and not is_hub_id("")
    r = redact_recipe({"data": {"path": "/home/alice/data/mimic/records.parquet", "source": "records"},
                       "model": {"vision": "/home/alice/runs/xr0/export", "text": "microsoft/BiomedVLP-CXR-BERT-general",
                                 "llm": "C:\\Users\\bob\\llm"},
                       "train": {"output_dir": "runs/x", "lr": 1e-3}})
    assert r["data"]["path"] == "<local>/records.parquet" and r["model"]["vision"] == "<local>/export"
    assert r["model"]["text"] == "microsoft/BiomedVLP-CXR-BERT-general" and r["model"]["llm"] == "<local>/llm"
    assert r["train"] == {"output_dir": "<redacted>", "lr": 1e-3}
    assert TOKEN not in scrub_tokens(f"token={TOKEN} end") and "end" in scrub_tokens(f"{TOKEN} end")
    assert scrub_tokens("secret-xyz here", ["secret-xyz"]) == "<redacted> here"


# ----------------------------------------------------------------------------------------------
# Push, against the fake Hub
# ----------------------------------------------------------------------------------------------


def test_push_run_to_fake_hub(tiny_run, tmp_path, online, monkeypatch, caplog, capsys):
    from mxr0.hub import push_run

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    raw = yaml.safe_load((run / "recipe.yaml").read_text())
    raw["name"] = f"tiny {TOKEN}"  # a token pasted in the wrong place never reaches the card
    (run / "recipe.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    caplog.set_level(logging.DEBUG)
    with FakeHub() as hub:
        url = push_run(run, "my-org/tiny", endpoint=hub.url)
        assert not hub.unexpected, hub.unexpected
        repo = hub.repos["my-org/tiny"]
        assert repo["visibility"] == "private" and repo["type"] == "model"
        files = hub.files("my-org/tiny")
        assert {"config.json", "model.safetensors", "README.md", "mxr0_labels.json", "preprocessor_config.json"} <= set(files)
        assert not any(f.startswith("checkpoints") or "optimizer" in f for f in files)
        assert files["model.safetensors"] == (run / "export" / "model.safetensors").read_bytes()
        card = files["README.md"].decode()
        meta, _ = _split_card(card)
        assert meta["pipeline_tag"] == "image-classification" and '"my-org/tiny"' in card
        assert url == f"{hub.url}/my-org/tiny/commit/{repo['commits'][-1]['oid']}"
        assert repo["commits"][-1]["branch"] == "main"
        # the token went as a Bearer header on every call, and nowhere else
        assert hub.authorizations and all(a == f"Bearer {TOKEN}" for a in hub.authorizations)
        paths = [r["path"] for r in hub.requests]
        assert "/api/repos/create" in paths and "/api/models/my-org/tiny/preupload/main" in paths

        # a second push to a new branch: the branch is created, the existing repository keeps its visibility
        url2 = push_run(run, "my-org/tiny", private=False, revision="exp-1", token=TOKEN, endpoint=hub.url,
                        commit_message="second")
        assert not hub.unexpected, hub.unexpected
        assert repo["visibility"] == "private"
        assert "/api/models/my-org/tiny/branch/exp-1" in [r["path"] for r in hub.requests]
        assert repo["commits"][-1] == {**repo["commits"][-1], "branch": "exp-1", "summary": "second"}
        assert "README.md" in hub.files("my-org/tiny", "exp-1") and url2.endswith(repo["commits"][-1]["oid"])

        # the same through the command line, with the endpoint from HF_ENDPOINT
        from mxr0.cli import main

        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        assert main(["push", str(run), "--repo-id", "my-org/cli", "--revision", "v2"]) == 0
        assert hub.repos["my-org/cli"]["visibility"] == "private"
        assert "README.md" in hub.files("my-org/cli", "v2")
        assert not hub.unexpected, hub.unexpected
    out = capsys.readouterr()
    assert "[mxr0] pushed: " in out.out
    for text in (card, out.out, out.err, caplog.text, "\n".join(str(r.__dict__) for r in caplog.records)):
        assert TOKEN not in text
    assert any("my-org/tiny" in r.getMessage() for r in caplog.records if r.name == "mxr0.hub")


def test_pushed_card_parses_and_carries_the_model_index(tiny_run, tmp_path, online, monkeypatch):
    from huggingface_hub import ModelCard, metadata_load

    from mxr0.hub import push_run

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    vision = _vision_result("records")
    vision["encoders"]["tiny"]["spec"] = str(run / "export")
    vision["encoders"]["random"] = {"spec": f"random:{run / 'export'}", "probe": {"mean_auroc": 0.5}}
    (run / "eval-vision").mkdir()
    (run / "eval-vision" / "results.json").write_text(json.dumps(vision))
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    with FakeHub() as hub:
        push_run(run, "my-org/tiny", endpoint=hub.url)
        assert not hub.unexpected, hub.unexpected
        assert "/api/validate-yaml" in [r["path"] for r in hub.requests]  # upload_folder checked the card
        readme = tmp_path / "README.md"
        readme.write_bytes(hub.files("my-org/tiny")["README.md"])

    card = ModelCard.load(readme)
    assert card.data.pipeline_tag == "image-classification" and "## Evaluation" in card.text
    meta = metadata_load(readme)
    assert meta["library_name"] == "transformers" and "mxr0" in meta["tags"]
    (index,) = meta["model-index"]
    assert index["name"] == yaml.safe_load((run / "recipe.yaml").read_text())["name"]
    by_split = {r["dataset"].get("split"): r for r in index["results"]}
    assert {r["task"]["type"] for r in index["results"]} == {"image-classification"}
    assert by_split["validation"]["dataset"]["type"] == "phantom"
    final = json.loads((run / "results.json").read_text())["metrics"]
    val = {m["type"]: m for m in by_split["validation"]["metrics"]}
    assert set(val) == {k for k in final if "/" not in k} and "mean_auroc" in val  # per-class values stay in tables
    for k, m in val.items():
        assert m["value"] == pytest.approx(final[k]) and m["name"] == f"{k} (final validation)"
    test = {m["type"]: m for m in by_split["test"]["metrics"]}
    assert test == {"probe_mean_auroc": {"type": "probe_mean_auroc", "value": 0.655,
                                         "name": "probe_mean_auroc (eval-vision/results.json)"}}  # not the baseline
    # the same numbers as eval_results once loaded
    assert {(r.metric_type, r.dataset_split) for r in card.data.eval_results} == \
        {(k, "validation") for k in val} | {("probe_mean_auroc", "test")}
    assert str(tmp_path) not in readme.read_text() and TOKEN not in readme.read_text()


def test_card_only_and_no_token(tiny_run, tmp_path, online, monkeypatch, capsys):
    import huggingface_hub

    from mxr0.cli import main
    from mxr0.hub import HubError, push_run

    out = tmp_path / "card.md"
    assert main(["push", str(tiny_run), "--repo-id", "my-org/tiny", "--card-only", str(out)]) == 0
    assert out.read_text().startswith("---\n") and "my-org/tiny" in out.read_text()

    monkeypatch.setattr(huggingface_hub, "get_token", lambda: None)
    with pytest.raises(HubError, match="login"):
        push_run(tiny_run, "my-org/tiny", endpoint="http://127.0.0.1:9")
    assert main(["push", str(tiny_run), "--repo-id", "my-org/tiny", "--endpoint", "http://127.0.0.1:9"]) == 1
    assert "hf auth login" in capsys.readouterr().err


def test_push_to_hub_from_recipe(phantom_small, tmp_path, online, monkeypatch, caplog, one_thread):
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    with FakeHub() as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        result = _train(phantom_small.parent, tmp_path / "run", **{"train.push_to_hub": "true",
                                                                    "train.hub_repo_id": "my-org/auto",
                                                                    "train.hub_revision": "trained"})
        assert result["hub_url"].startswith(f"{hub.url}/my-org/auto/commit/")
        assert hub.repos["my-org/auto"]["visibility"] == "private"
        assert {"config.json", "model.safetensors", "README.md"} <= set(hub.files("my-org/auto", "trained"))
        assert not hub.unexpected


def test_failed_push_keeps_the_export(tiny_run, caplog):
    from mxr0.config import load_recipe
    from mxr0.train.finish import push_after_training

    recipe = load_recipe(tiny_run / "recipe.yaml", ["train.push_to_hub=true", "train.hub_repo_id=my-org/x"])
    caplog.set_level(logging.ERROR)
    result: dict = {}
    # offline (conftest): the push fails, training's result stands, the log says where the model is
    push_after_training(recipe, tiny_run, tiny_run / "export", result)
    assert "hub_url" not in result
    msg = caplog.text
    assert "push to the Hub failed" in msg and str(tiny_run / "export") in msg
    assert f"mxr0 push {tiny_run} --repo-id my-org/x" in msg
