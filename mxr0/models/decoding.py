"""Decoding primitives shared by training-time evaluation, `mxr0.generate` and `mxr0.eval`: batched generation
with the stop tokens the tokenizer and generation config define, cleaning generated text (special tokens removed,
box tokens kept), and ranking closed-question options by their likelihood."""

from __future__ import annotations

import re

import torch

from mxr0.data.chat import encode_example, special_token_ids, stop_token_ids, visible_special_tokens
from mxr0.data.report_dataset import ChatCollator
from mxr0.precision import autocast, model_precision


def clean_generation(text: str, tokenizer, generation_config=None) -> str:
    """Generated text (decoded with its special tokens) up to the first stop token, without special tokens
    except the box tokens (``<box>``, ``<x12>``, …) of grounding answers.

    The stop and special tokens are the ``tokenizer``'s (`mxr0.data.chat.stop_token_ids`: eos, end-of-turn,
    ``generation_config.eos_token_id``)."""

    stops = tokenizer.convert_ids_to_tokens(stop_token_ids(tokenizer, generation_config))
    keep = visible_special_tokens(tokenizer)
    drop = [t for t in tokenizer.convert_ids_to_tokens(sorted(special_token_ids(tokenizer))) if t and t not in keep]
    for stop in stops:
        if stop:
            text = text.split(stop)[0]
    if drop:
        text = re.sub("|".join(re.escape(t) for t in sorted(drop, key=len, reverse=True)), "", text)
    return text.strip()


@torch.no_grad()
def generate_batch(model, tokenizer, items: list[dict], max_new_tokens: int = 160, num_beams: int = 1,
                   do_sample: bool = False, temperature: float = 1.0, top_p: float = 1.0) -> list[str]:
    """Reports for prompt-only dataset items (``input_ids`` and ``pixel_values`` each), left-padded."""

    batch = ChatCollator(tokenizer.pad_token_id, "left")(items)
    device = next(model.parameters()).device
    gen_cfg = getattr(model, "generation_config", None)
    end_ids = stop_token_ids(tokenizer, gen_cfg)
    kwargs = dict(max_new_tokens=max_new_tokens, num_beams=num_beams, do_sample=do_sample, eos_token_id=end_ids,
                  pad_token_id=tokenizer.pad_token_id, use_cache=True)
    if do_sample:
        kwargs.update(temperature=temperature, top_p=top_p)

    with autocast(model_precision(model), device):  # a no-op in fp32 and with bf16 weights
        out = model.generate(input_ids=batch["input_ids"].to(device), attention_mask=batch["attention_mask"].to(device),
                             pixel_values=batch["pixel_values"].to(device, dtype=next(model.parameters()).dtype),
                             **kwargs)
    new = out[:, batch["input_ids"].shape[1]:]
    return [clean_generation(t, tokenizer, gen_cfg) for t in tokenizer.batch_decode(new, skip_special_tokens=False)]


@torch.no_grad()
def rank_options(model, tokenizer, ds, indices, batch_size: int = 32) -> list[str | None]:
    """Closed questions answered by ranking their options: each option scored as the assistant's answer by its mean
    token log-likelihood (teacher-forced, answer tokens and end marker), the best one returned (lm-eval style
    multiple choice, length-normalised). None for examples without options (open questions)."""

    device = next(model.parameters()).device
    dtype = next(model.parameters()).dtype
    jobs = []  # (position in indices, option, item)
    for k, i in enumerate(indices):
        ex = ds.examples[i]
        for opt in ex.meta.get("options") or []:
            ids, labels = encode_example(tokenizer, ds.messages(i), str(opt), ds.n_image_tokens, ds.cfg.max_length)
            jobs.append((k, str(opt), {"input_ids": ids, "labels": labels, "pixel_values": ds.pixel_values(i), "index": i}))
    best: dict[int, tuple[float, str]] = {}
    collate = ChatCollator(tokenizer.pad_token_id, "right")
    for s in range(0, len(jobs), batch_size):
        chunk = jobs[s:s + batch_size]
        b = collate([it for _, _, it in chunk])
        logits = model(input_ids=b["input_ids"].to(device), attention_mask=b["attention_mask"].to(device),
                       pixel_values=b["pixel_values"].to(device, dtype=dtype)).logits.float()
        labels = b["labels"][:, 1:].to(device)
        logp = torch.log_softmax(logits[:, :-1], dim=-1)
        mask = labels != -100
        tok = logp.gather(-1, labels.clamp_min(0)[..., None])[..., 0] * mask
        score = (tok.sum(1) / mask.sum(1).clamp_min(1)).tolist()
        for (k, opt, _), sc in zip(chunk, score):
            if k not in best or sc > best[k][0]:
                best[k] = (sc, opt)
    return [best[k][1] if k in best else None for k in range(len(indices))]
