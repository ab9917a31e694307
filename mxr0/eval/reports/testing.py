"""Tiny random models in the official file layouts, for tests, smoke runs and benchmarks (no Hub).

* :func:`write_wordpiece_vocab` writes a deterministic WordPiece ``vocab.txt`` from local text.
* :func:`save_tiny_chexbert` writes ``chexbert.pth`` exactly as the official checkpoint is laid out
  (``{"model_state_dict": {"module.bert....", "module.linear_heads.N...."}}``) plus ``vocab.txt``.
* :func:`save_tiny_radgraph` writes a RadGraph model folder as in ``radgraph.tar.gz`` (``config.json``
  in the allennlp/DyGIE format, ``weights.th`` with the DyGIE parameter names -- coreference and
  event parameters included, so the radgraph package itself can load it -- and ``vocabulary/``),
  with weights drawn from a seeded numpy generator so the same archive can be rebuilt anywhere.
* :func:`random_chexbert` builds a labeler in memory (e.g. bert-base-uncased dimensions for timing).
"""

from __future__ import annotations

import json
import re
import string
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

__all__ = ["SAMPLE_REPORTS", "write_wordpiece_vocab", "save_tiny_chexbert", "save_tiny_radgraph", "random_chexbert",
           "RADGRAPH_NER_LABELS", "RADGRAPH_RELATION_LABELS"]

SAMPLE_REPORTS = (
    "The heart is normal in size. The mediastinum is unremarkable. The lungs are clear.",
    "No pleural effusion or pneumothorax. No focal consolidation.",
    "Mild cardiomegaly. Small left pleural effusion with adjacent atelectasis.",
    "Right lower lobe opacity concerning for pneumonia. Possible small effusion.",
    "Endotracheal tube terminates 3 cm above the carina. Nasogastric tube in the stomach.",
    "Moderate pulmonary edema, increased from prior. Bilateral pleural effusions.",
    "Old healed left rib fractures. No acute cardiopulmonary abnormality.",
    "Enlarged cardiomediastinal silhouette. Calcified granuloma in the right upper lobe.",
    "Interval removal of the right internal jugular central venous catheter.",
    "Hyperexpanded lungs consistent with emphysema. Biapical pleural thickening.",
)
RADGRAPH_NER_LABELS = ("", "Anatomy::definitely present", "Observation::definitely present",
                       "Observation::definitely absent", "Observation::uncertain")
RADGRAPH_RELATION_LABELS = ("modify", "located_at", "suggestive_of")


def write_wordpiece_vocab(texts: Iterable[str], folder: str | Path, vocab_size: int | None = None) -> Path:
    """A deterministic lower-cased WordPiece ``vocab.txt`` (no training, so it is the same with every
    library version): special tokens, printable ASCII characters, their ``##`` continuations, then
    the words of ``texts`` (most frequent first, up to ``vocab_size`` entries in all)."""
    from collections import Counter

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    chars = string.ascii_lowercase + string.digits + string.punctuation
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + list(chars) + ["##" + c for c in chars]
    counts = Counter(w for t in texts for w in re.findall(r"[a-z]+", t.lower()) if len(w) > 1)
    words = [w for w, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))]
    vocab += words[: None if vocab_size is None else max(0, vocab_size - len(vocab))]
    path = folder / "vocab.txt"
    path.write_text("".join(t + "\n" for t in vocab), encoding="utf-8")
    return path


def _bert_config(vocab_size: int, hidden: int, layers: int, heads: int, intermediate: int, max_pos: int = 512):
    from transformers import BertConfig

    return BertConfig(vocab_size=vocab_size, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                      intermediate_size=intermediate, max_position_embeddings=max_pos)


def random_chexbert(config=None, tokenizer=None, seed: int = 0, device: str = "cpu"):
    """A :class:`~mxr0.eval.reports.chexbert.CheXbert` with random weights (bert-base-uncased shape by
    default: hidden 768, 12 layers, 12 heads, vocab 30522)."""
    import torch

    from .chexbert import CheXbert, _labeler_class

    config = config or _bert_config(30522, 768, 12, 12, 3072)
    torch.manual_seed(seed)
    model = _labeler_class()(config).to(device).eval()
    return CheXbert(model, tokenizer, device)


def save_tiny_chexbert(folder: str | Path, texts: Sequence[str] = SAMPLE_REPORTS, hidden: int = 32, layers: int = 2,
                       heads: int = 2, intermediate: int = 64, seed: int = 0, vocab_size: int = 600) -> Path:
    """``folder/chexbert.pth`` (official layout, random weights), ``folder/vocab.txt`` and the BERT
    ``folder/config.json`` (without it the loader assumes 64-dimensional attention heads, as in
    bert-base-uncased)."""
    import torch

    from .chexbert import _labeler_class

    folder = Path(folder)
    vocab = write_wordpiece_vocab(texts, folder, vocab_size)
    n_vocab = len(vocab.read_text(encoding="utf-8").splitlines())
    config = _bert_config(n_vocab, hidden, layers, heads, intermediate)
    config.save_pretrained(str(folder))  # heads cannot be read off the weights; bert-base's 12 = hidden / 64
    torch.manual_seed(seed)
    model = _labeler_class()(config).eval()
    # A random encoder gives nearly the same [CLS] vector for every report: centre and scale the heads
    # on the sample reports so that the predicted classes differ from report to report.
    from transformers import BertTokenizer

    from .chexbert import encode_report

    tok = BertTokenizer.from_pretrained(str(folder), do_lower_case=True)
    with torch.no_grad():
        z = []
        for t in texts:
            ids = torch.tensor([encode_report(t, tok)])
            z.append(model.bert(ids, attention_mask=torch.ones_like(ids))[0][0, 0])
        z = torch.stack(z)
        mu = z.mean(0)
        gen = torch.Generator().manual_seed(seed)
        for head in model.linear_heads:
            w = torch.randn(head.weight.shape, generator=gen)
            w *= 2.0 / ((z - mu) @ w.T).std().clamp_min(1e-6)
            head.weight.copy_(w)
            head.bias.copy_(-(mu @ w.T) + 0.5 * torch.randn(head.bias.shape, generator=gen))
    state = {"module." + k: v for k, v in model.state_dict().items()}
    torch.save({"epoch": 0, "model_state_dict": state, "optimizer_state_dict": {}}, folder / "chexbert.pth")
    return folder


def _dygie_shapes(hidden: int, feature: int, max_w: int, ff_hidden: int, ff_layers: int, n_ner: int, n_rel: int,
                  ner_ns: str, rel_ns: str) -> dict[str, tuple]:
    span = 2 * hidden + feature
    shapes: dict[str, tuple] = {"_endpoint_span_extractor._span_width_embedding.weight": (max_w, feature)}

    def ff(prefix, d_in):
        dims = [d_in] + [ff_hidden] * ff_layers
        for i in range(ff_layers):
            shapes[f"{prefix}_linear_layers.{i}.weight"] = (dims[i + 1], dims[i])
            shapes[f"{prefix}_linear_layers.{i}.bias"] = (dims[i + 1],)

    def lin(prefix, d_in, d_out):
        shapes[f"{prefix}weight"] = (d_out, d_in)
        shapes[f"{prefix}bias"] = (d_out,)

    ff(f"_ner._ner_scorers.{ner_ns}.0._module.", span)
    lin(f"_ner._ner_scorers.{ner_ns}.1._module.", ff_hidden, n_ner - 1)
    # coreference and event parameters exist in every DyGIE checkpoint even when unused
    shapes["_coref._distance_embedding.weight"] = (10, feature)
    ff("_coref._antecedent_feedforward._module.", 3 * span + feature)
    ff("_coref._mention_pruner._scorer.0._module.", span)
    lin("_coref._mention_pruner._scorer.1._module.", ff_hidden, 1)
    lin("_coref._antecedent_scorer._module.", ff_hidden, 1)
    lin("_coref._f_network._linear_layers.0.", 2 * span, span)
    ff(f"_relation._mention_pruners.{rel_ns}._scorer.0._module.", span)
    lin(f"_relation._mention_pruners.{rel_ns}._scorer.1._module.", ff_hidden, 1)
    ff(f"_relation._relation_feedforwards.{rel_ns}.", 3 * span)
    lin(f"_relation._relation_scorers.{rel_ns}.", ff_hidden, n_rel)
    shapes["_events._distance_embedding.weight"] = (10, feature)
    return shapes


def save_tiny_radgraph(folder: str | Path, dataset: str = "radgraph", texts: Sequence[str] = SAMPLE_REPORTS,
                       seed: int = 0, hidden: int = 32, layers: int = 2, heads: int = 2, intermediate: int = 64,
                       feature_size: int = 8, max_span_width: int = 4, ff_hidden: int = 16, ff_layers: int = 2,
                       spans_per_word: float = 0.5, max_length: int | None = 16, scale: float = 0.5,
                       transformer_name: str | None = None, vocab_size: int = 400) -> Path:
    """A RadGraph model folder ``folder/<dataset>`` in the official layout, and its transformer
    (config + tokenizer) in ``folder/<dataset>/transformer``. ``config.json`` names the transformer
    by ``transformer_name`` (default: the absolute path of that folder, which the radgraph package can
    also load; pass a Hub-style id to exercise the lookup of ``transformer/``)."""
    import torch
    from transformers import BertModel

    folder = Path(folder)
    model_dir = folder / dataset
    tdir = model_dir / "transformer"
    vocab = write_wordpiece_vocab(list(texts) + [t.lower() for t in texts], tdir, vocab_size)
    # vocab.txt + a minimal tokenizer_config.json: loadable by transformers 4 and 5 alike
    (tdir / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "BertTokenizer", "do_lower_case": True, "model_max_length": 512}))
    n_vocab = len(vocab.read_text(encoding="utf-8").splitlines())
    cfg = _bert_config(n_vocab, hidden, layers, heads, intermediate)
    cfg.save_pretrained(str(tdir))
    name = transformer_name or str(tdir.resolve())
    vdir = model_dir / "vocabulary"
    vdir.mkdir(parents=True, exist_ok=True)
    (vdir / "non_padded_namespaces.txt").write_text("*tags\n*labels\n")
    (vdir / f"{dataset}__ner_labels.txt").write_text("\n".join(RADGRAPH_NER_LABELS) + "\n")
    (vdir / f"{dataset}__relation_labels.txt").write_text("\n".join(RADGRAPH_RELATION_LABELS) + "\n")
    bert = {"type": "pretrained_transformer_mismatched", "model_name": name, "max_length": max_length}
    config = {
        "dataset_reader": {"type": "dygie", "max_span_width": max_span_width, "token_indexers": {"bert": bert}},
        "model": {"type": "dygie", "embedder": {"token_embedders": {"bert": bert}}, "feature_size": feature_size,
                  "max_span_width": max_span_width, "target_task": "relation",
                  "feedforward_params": {"num_layers": ff_layers, "hidden_dims": ff_hidden, "dropout": 0.4},
                  "loss_weights": {"ner": 1.0, "relation": 1.0, "coref": 0.0, "events": 0.0},
                  "modules": {"coref": {"spans_per_word": 0.3, "max_antecedents": 100, "coref_prop": 0},
                              "ner": {}, "relation": {"spans_per_word": spans_per_word},
                              "events": {"trigger_spans_per_word": 0.3, "argument_spans_per_word": 0.8,
                                         "loss_weights": {"trigger": 1.0, "arguments": 0.5}}},
                  "initializer": {}, "module_initializer": {}}}
    (model_dir / "config.json").write_text(json.dumps(config, indent=2))
    rng = np.random.default_rng(seed)
    state: dict = {}
    prefix = "_embedder.token_embedder_bert._matched_embedder.transformer_model."
    for k, v in BertModel(cfg).state_dict().items():
        if k.endswith("position_ids") or k.endswith("token_type_ids"):
            continue
        if "LayerNorm.weight" in k:
            arr = 1.0 + 0.1 * rng.standard_normal(tuple(v.shape))
        else:
            arr = scale * rng.standard_normal(tuple(v.shape))
        state[prefix + k] = torch.tensor(arr, dtype=torch.float32)
    ner_ns, rel_ns = f"{dataset}__ner_labels", f"{dataset}__relation_labels"
    for k, shape in _dygie_shapes(hidden, feature_size, max_span_width, ff_hidden, ff_layers,
                                  len(RADGRAPH_NER_LABELS), len(RADGRAPH_RELATION_LABELS), ner_ns, rel_ns).items():
        state[k] = torch.tensor(scale * rng.standard_normal(shape), dtype=torch.float32)
    torch.save(state, model_dir / "weights.th")
    # Random features give every span nearly the same label scores; move the output biases so that
    # about 15% of the spans of the sample reports are entities and 15% of the candidate pairs relations.
    from .radgraph import RadGraph, preprocess_report

    rg = RadGraph.load(model_dir, device="cpu")
    ner_s, rel_s = [], []
    with torch.inference_mode():
        for t in texts:
            words = preprocess_report(t, rg.model_type)
            _, ner, _, rel = rg._scores(words, rg._embed_words([words], 8)[0])
            ner_s.append(ner[:, 1:] - rg.model.ner_out.bias)
            rel_s.append((rel[..., 1:] - rg.model.rel_out.bias).reshape(-1, rel.shape[-1] - 1))
    # rounded, so that float noise between machines cannot move the thresholds
    ner_b = torch.round(-torch.quantile(torch.cat(ner_s), 0.96, dim=0), decimals=2)
    rel_b = torch.round(-torch.quantile(torch.cat(rel_s), 0.85, dim=0), decimals=2)
    state[f"_ner._ner_scorers.{ner_ns}.1._module.bias"] = ner_b.float()
    state[f"_relation._relation_scorers.{rel_ns}.bias"] = rel_b.float()
    torch.save(state, model_dir / "weights.th")
    return model_dir
