"""The DyGIE network of :mod:`.radgraph`: its modules, loading from a model folder, segmenting and decoding."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np
import torch

from mxr0.precision import top2_margin

from .weights import MissingWeightsError, hf_cached_file


def _read_vocab(path: Path) -> list[str]:
    lines = re.split(r"\n|\r\n", path.read_text(encoding="utf-8"))
    if lines and lines[-1] == "":
        lines = lines[:-1]
    return [ln.replace("@@NEWLINE@@", "\n") for ln in lines]


def _transformer_source(model_dir: Path, name: str) -> str:
    for cand in (model_dir / "transformer", model_dir / Path(name).name, Path(name),
                 Path(os.environ["MXR0_RADGRAPH_TRANSFORMER"]) if os.environ.get("MXR0_RADGRAPH_TRANSFORMER") else None):
        if cand is not None and (cand / "config.json").is_file():
            return str(cand)
    if hf_cached_file(name, "config.json") is not None:
        return name
    raise MissingWeightsError("radgraph", (
        f"The RadGraph model in {model_dir} uses the transformer '{name}'; its config.json and tokenizer files "
        f"are not here. Put them in {model_dir / 'transformer'} (or set MXR0_RADGRAPH_TRANSFORMER=DIR), or have "
        f"'{name}' in the Hugging Face cache (`hf download {name} config.json vocab.txt tokenizer_config.json` "
        "where there is internet). Or pass --skip-missing to report the other metrics."))


def _build_modules(cfg: dict, transformer_config, n_ner: int, n_rel: int):
    from torch import nn
    from transformers import AutoModel

    model_cfg = cfg["model"]
    ff = model_cfg["feedforward_params"]
    layers = int(ff["num_layers"])
    hidden = ff["hidden_dims"]
    hidden = list(hidden) if isinstance(hidden, list) else [int(hidden)] * layers

    class FeedForward(nn.Module):  # allennlp FeedForward: Linear + ReLU on every layer (dropout off)
        def __init__(self, d_in):
            super().__init__()
            dims = [d_in] + hidden
            self._linear_layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:]))

        def forward(self, x):
            for lin in self._linear_layers:
                x = torch.relu(lin(x))
            return x

    class DyGIE(nn.Module):
        def __init__(self):
            super().__init__()
            self.transformer = AutoModel.from_config(transformer_config)
            h = transformer_config.hidden_size
            feat = int(model_cfg["feature_size"])
            self.width = nn.Embedding(int(model_cfg["max_span_width"]), feat)
            span = 2 * h + feat
            self.ner_ff, self.ner_out = FeedForward(span), nn.Linear(hidden[-1], n_ner - 1)
            self.prune_ff, self.prune_out = FeedForward(span), nn.Linear(hidden[-1], 1)
            self.rel_ff, self.rel_out = FeedForward(3 * span), nn.Linear(hidden[-1], n_rel)

    return DyGIE()


def _official_key(ours: str, ner_ns: str, rel_ns: str) -> str:
    head, _, rest = ours.partition(".")
    return {"transformer": "_embedder.token_embedder_bert._matched_embedder.transformer_model.",
            "width": "_endpoint_span_extractor._span_width_embedding.",
            "ner_ff": f"_ner._ner_scorers.{ner_ns}.0._module.",
            "ner_out": f"_ner._ner_scorers.{ner_ns}.1._module.",
            "prune_ff": f"_relation._mention_pruners.{rel_ns}._scorer.0._module.",
            "prune_out": f"_relation._mention_pruners.{rel_ns}._scorer.1._module.",
            "rel_ff": f"_relation._relation_feedforwards.{rel_ns}.",
            "rel_out": f"_relation._relation_scorers.{rel_ns}."}[head] + rest


def _label_vocabularies(vocab_dir: Path) -> tuple[str, str, list[str], list[str]]:
    """(NER namespace, relation namespace, NER labels with the null label first, relation labels)."""
    ner_ns = sorted(p.stem for p in vocab_dir.glob("*__ner_labels.txt"))
    rel_ns = sorted(p.stem for p in vocab_dir.glob("*__relation_labels.txt"))
    if len(ner_ns) != 1 or len(rel_ns) != 1:
        raise ValueError(f"{vocab_dir}: expected one *__ner_labels.txt and one *__relation_labels.txt, found "
                         f"{ner_ns} and {rel_ns}")
    ner_labels = _read_vocab(vocab_dir / f"{ner_ns[0]}.txt")
    rel_labels = _read_vocab(vocab_dir / f"{rel_ns[0]}.txt")
    if not ner_labels or ner_labels[0] != "":
        raise ValueError(f"{vocab_dir}/{ner_ns[0]}.txt: the first NER label must be the empty null label")
    return ner_ns[0], rel_ns[0], ner_labels, rel_labels


def _load_weights(net, model_dir: Path, ner_ns: str, rel_ns: str) -> None:
    """The official ``weights.th`` into ``net`` (ValueError naming missing tensors)."""
    state = torch.load(str(model_dir / "weights.th"), map_location="cpu", weights_only=True)
    ours = {}
    missing = []
    for k in net.state_dict():
        ok = _official_key(k, ner_ns, rel_ns)
        if ok in state:
            ours[k] = state[ok]
        elif k.endswith("position_ids") or k.endswith("token_type_ids"):
            ours[k] = net.state_dict()[k]  # buffers some transformers versions do not save
        else:
            missing.append(ok)
    if missing:
        raise ValueError(f"{model_dir / 'weights.th'}: missing {len(missing)} tensors, e.g. {missing[:5]}")
    net.load_state_dict(ours, strict=True)


def load_dygie(model_dir: Path, device: str | None = None) -> tuple:
    """``(net, tokenizer, cfg, ner_labels, rel_labels, model_type, device)`` of a RadGraph model folder: the
    arguments of ``RadGraph``; the network in eval mode on ``device`` (cuda when available by default)."""
    from transformers import AutoConfig, AutoTokenizer

    cfg = json.loads((model_dir / "config.json").read_text())
    ner_ns, rel_ns, ner_labels, rel_labels = _label_vocabularies(model_dir / "vocabulary")
    model_type = ner_ns.split("__")[0]
    mc = cfg["model"]
    lw = mc.get("loss_weights", {})
    if float(lw.get("coref", 0)) > 0 or float(lw.get("events", 0)) > 0 or \
            float(mc.get("modules", {}).get("coref", {}).get("coref_prop", 0) or 0) > 0:
        raise ValueError(f"{model_dir}: coreference/event modules are active in this model; only NER + "
                         "relation models (all RadGraph releases) are supported")
    name = mc["embedder"]["token_embedders"]["bert"]["model_name"]
    src = _transformer_source(model_dir, name)
    tcfg = AutoConfig.from_pretrained(src, local_files_only=True)
    tokenizer = AutoTokenizer.from_pretrained(src, local_files_only=True)
    net = _build_modules(cfg, tcfg, len(ner_labels), len(rel_labels))
    _load_weights(net, model_dir, ner_ns, rel_ns)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    net.to(device).eval()
    return net, tokenizer, cfg, ner_labels, rel_labels, model_type, device


def special_tokens(tokenizer) -> tuple[list[int], list[int]]:
    """The special token ids before and after one sequence, found the way allennlp does (encode a probe word)."""
    plain = list(tokenizer("a", add_special_tokens=False)["input_ids"])
    full = list(tokenizer("a", add_special_tokens=True)["input_ids"])
    at = next(i for i in range(len(full) - len(plain) + 1) if full[i:i + len(plain)] == plain)
    return full[:at], full[at + len(plain):]


def segment_documents(docs: list[list[str]], wordpieces, eff: int, prefix: list[int], suffix: list[int]) -> tuple:
    """Documents folded into transformer rows of at most ``eff`` word pieces between ``prefix`` and ``suffix``:
    ``(rows, piece_row, piece_col, piece_word, n_words)``, where each word piece of every document has its row,
    its column and its global word index, and ``n_words`` counts the words of each document."""
    seg_rows: list[list[int]] = []
    piece_row: list[int] = []
    piece_col: list[int] = []
    piece_word: list[int] = []
    n_words = []
    w_global = 0
    for words in docs:
        first = len(seg_rows)
        wp: list[int] = []
        for w in words:
            ids = wordpieces(w)
            for j in range(len(ids)):
                t = len(wp) + j
                piece_row.append(first + t // eff)
                piece_col.append(len(prefix) + t % eff)
                piece_word.append(w_global)
            wp.extend(ids)
            w_global += 1
        for i in range(0, max(len(wp), 1), eff):
            seg_rows.append(prefix + wp[i:i + eff] + suffix)
        n_words.append(len(words))
    return seg_rows, piece_row, piece_col, piece_word, n_words


def decision_margin(ner, rel, mention, k: int, n_spans: int) -> float:
    """The smallest decision margin of one document: top-two NER score gap of any span, top-two relation score
    gap of any kept pair, and the pruner's gap between the last kept and the first dropped span."""
    margin = float(top2_margin(ner).min())
    if rel.shape[0]:
        margin = min(margin, float(top2_margin(rel).min()))
    if k < n_spans:
        v = torch.topk(mention, k + 1).values
        margin = min(margin, float(v[k - 1] - v[k]))
    return margin


def decode_annotation(words: list[str], scores, ner_labels: list[str], rel_labels: list[str]) -> dict:
    """The radgraph package's annotation of one document from its ``(spans, ner, top, rel)`` scores."""
    spans, ner, top, rel = scores[:4]
    if ner is None:
        return {"text": " ".join(words), "entities": {}, "data_source": None, "data_split": "inference"}
    ner_lab = ner.argmax(-1).tolist()
    rel_lab = (rel.argmax(-1) - 1).cpu().numpy()
    top_spans = [spans[i] for i in top]
    ner_list = [spans[i] for i, lab in enumerate(ner_lab) if lab != 0]
    ner_label = [ner_labels[lab] for lab in ner_lab if lab != 0]
    rels = [(top_spans[i], top_spans[j], rel_labels[rel_lab[i, j]])
            for i, j in zip(*np.nonzero(rel_lab >= 0))]
    first_entity: dict[tuple, int] = {}
    for idx, (s, e) in enumerate(ner_list):
        first_entity.setdefault((s, e), idx + 1)
    by_subject: dict[tuple, list] = {}
    for subj, obj, rl in rels:  # relation order as predicted (row-major over kept spans)
        by_subject.setdefault(subj, []).append((obj, rl))
    entities = {}
    for idx, ((s, e), lab) in enumerate(zip(ner_list, ner_label)):
        rel_out = [[rl, str(first_entity[obj])] for obj, rl in by_subject.get((s, e), ()) if obj in first_entity]
        entities[str(idx + 1)] = {"tokens": " ".join(words[s:e + 1]), "label": lab, "start_ix": s,
                                  "end_ix": e, "relations": rel_out}
    return {"text": " ".join(words), "entities": entities, "data_source": None, "data_split": "inference"}
