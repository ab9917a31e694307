"""Chat formatting for the generation tasks: prompts from study records, the chat template, the
assistant-only loss mask, and a byte-level BPE tokenizer trained on reports for tiny CPU LLMs.

A training example is ``[system?] user: <image>… + instruction (+ indication / technique / comparison)``
and ``assistant: <report>``. The prompt is rendered by the tokenizer's chat template (the processor's at
inference, identical), the answer is appended, and only the answer tokens and the end-of-turn marker are
labelled, so the loss never trains the model to predict prompts or image placeholders.

The end-of-turn token is read from the tokenizer, in one place (`end_of_turn_token`): the special token its
chat template writes after an assistant message (``<|end|>`` for the tiny tokenizers, ``<|im_end|>`` for
Qwen2, ``<|eot_id|>`` for Llama 3), else its eos. Training ends answers with it (`answer_terminator_ids`),
generation stops at it (`stop_token_ids`), and `visible_special_tokens` / `mxr0.generate.clean_generation`
drop the special tokens from generated text except the box tokens of grounding answers.
"""

from __future__ import annotations

import os
import re
import weakref
from collections.abc import Iterable, Sequence
from pathlib import Path
from mxr0.data.records import prior_report

IMAGE_TOKEN = "<image>"

TINY_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>\n' }}"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}{{ '<image>' }}{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}"
    "{{ '<|end|>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
)
"""The chat template of tiny tokenizers (a role marker per turn, ``<|end|>`` closes a turn)."""

TINY_SPECIAL_TOKENS = ["<pad>", "<s>", "</s>", "<unk>", IMAGE_TOKEN, "<|system|>", "<|user|>", "<|assistant|>", "<|end|>"]

VIEW_NAMES = {"PA": "frontal", "AP": "frontal", "AP_SUPINE": "frontal", "LATERAL": "lateral", "LL": "lateral",
              "RL": "lateral"}


def train_chat_tokenizer(texts: Iterable[str], vocab_size: int = 2000, model_max_length: int = 1024,
                         save_dir: str | os.PathLike | None = None):
    """A byte-level BPE ``PreTrainedTokenizerFast`` trained on ``texts`` with the chat specials, the
    ``<image>`` placeholder and `TINY_CHAT_TEMPLATE`; deterministic for the same texts."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=TINY_SPECIAL_TOKENS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), min_frequency=2)
    tok.train_from_iterator(list(texts), trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                   pad_token="<pad>", model_max_length=model_max_length,
                                   extra_special_tokens={"image_token": IMAGE_TOKEN},
                                   additional_special_tokens=TINY_SPECIAL_TOKENS[4:])
    fast.chat_template = TINY_CHAT_TEMPLATE
    if save_dir is not None:
        Path(save_dir).mkdir(parents=True, exist_ok=True)
        fast.save_pretrained(str(save_dir))
    return fast


_ANSWER_SENTINEL = "MXR0ANSWERSENTINEL"
_END_OF_TURN_CACHE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
BOX_TOKEN = re.compile(r"</?(?:box|obj)>|<[xy]\d+>")
"""The box tokens of the ``tokens`` box format (`mxr0.data.boxes_text`): special tokens kept in generated text."""


def special_token_ids(tokenizer) -> set[int]:
    """Every special token id: bos / eos / pad / unk / additional specials and added tokens marked special
    (in transformers 5 ``all_special_ids`` leaves the additional special tokens out)."""
    ids = {int(i) for i in tokenizer.all_special_ids if i is not None}
    ids |= {int(i) for i, t in getattr(tokenizer, "added_tokens_decoder", {}).items() if t.special}
    return ids


def end_of_turn_token(tokenizer) -> str | None:
    """The token that closes an assistant turn: the first special token the tokenizer's chat template writes
    after an assistant message's content, else (no template, or one that writes none) the eos token.

    The one place mxr0 decides it: training answers end with it (`answer_terminator_ids`), generation stops at
    it (`stop_token_ids`). Cached per tokenizer and chat template."""
    template = getattr(tokenizer, "chat_template", None)
    cached = _END_OF_TURN_CACHE.get(tokenizer)
    if cached is not None and cached[0] == template:
        return cached[1]
    token = tokenizer.eos_token
    if template:
        messages = [{"role": "user", "content": "Hi."}, {"role": "assistant", "content": _ANSWER_SENTINEL}]
        try:
            text = tokenizer.apply_chat_template(messages, tokenize=False)
        except Exception:  # a template that rejects this conversation: fall back to eos
            text = ""
        if isinstance(text, str) and _ANSWER_SENTINEL in text:
            tail = text.split(_ANSWER_SENTINEL, 1)[1]
            special = special_token_ids(tokenizer)
            ids = tokenizer(tail, add_special_tokens=False, verbose=False)["input_ids"]
            found = next((i for i in ids if i in special), None)
            if found is not None:
                token = tokenizer.convert_ids_to_tokens(found)
    try:
        _END_OF_TURN_CACHE[tokenizer] = (template, token)
    except TypeError:  # not weak-referenceable
        pass
    return token


def end_of_turn_id(tokenizer) -> int | None:
    token = end_of_turn_token(tokenizer)
    return None if token is None else int(tokenizer.convert_tokens_to_ids(token))


def answer_terminator_ids(tokenizer) -> list[int]:
    """The labelled ids after an answer: the end-of-turn token, then the eos when it is another token and the
    tokenizer frames sequences with a bos (``<s> … <|end|></s>``: mxr0's tiny tokenizers, as `encode_example`
    prepends the bos); a tokenizer without a bos (Qwen2) ends at the end-of-turn, as its chat template does."""
    ids = [i for i in (end_of_turn_id(tokenizer),) if i is not None]
    eos = tokenizer.eos_token_id
    if eos is not None and eos not in ids and (not ids or tokenizer.bos_token_id is not None):
        ids.append(int(eos))
    return ids


def stop_token_ids(tokenizer, generation_config=None) -> list[int]:
    """Generation stops at any of: the tokenizer's eos, its end-of-turn token, and the ``eos_token_id``(s) of
    the model's generation config (e.g. a Hub LLM's ``[<|im_end|>, <|endoftext|>]``)."""
    ids: list[int] = []
    cfg_eos = getattr(generation_config, "eos_token_id", None) if generation_config is not None else None
    cfg_eos = cfg_eos if isinstance(cfg_eos, (list, tuple)) else [cfg_eos]
    for i in [tokenizer.eos_token_id, end_of_turn_id(tokenizer), *cfg_eos]:
        if isinstance(i, int) and i not in ids and i != tokenizer.unk_token_id:
            ids.append(int(i))
    return ids


def visible_special_tokens(tokenizer) -> set[str]:
    """The special tokens that stay in generated text: the box tokens (``<box>``, ``<x12>``, …)."""
    return {t for t in tokenizer.convert_ids_to_tokens(sorted(special_token_ids(tokenizer)))
            if isinstance(t, str) and BOX_TOKEN.fullmatch(t)}


def ensure_image_token(tokenizer) -> int:
    """The id of ``<image>``, added as a special token when the tokenizer lacks it (Hub LLMs)."""
    ids = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
    if ids is None or ids == tokenizer.unk_token_id:
        tokenizer.add_special_tokens({"additional_special_tokens": [IMAGE_TOKEN]})
        ids = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return int(ids)


def study_messages(record: dict, image_views: Sequence[str], instruction: str, sections: Sequence[str],
                   system: str = "") -> list[dict]:
    """The user turn of a study: one image part per view (``image_views`` names them, e.g. ["frontal",
    "lateral", "prior frontal"]), the instruction, then the prior report when a prior image is shown, then the
    chosen context sections (indication, …).

    With a prior this is MAIRA-2's order: current frontal, current lateral, prior frontal, prior report,
    indication / technique / comparison (`mxr0.data.instruct.study_images` puts the prior image last). The prior
    report is `mxr0.data.records.prior_report` of the record (its ``prior_findings`` / ``prior_impression``), or
    a plain ``prior_report`` text for a dict that is not a record (`mxr0.serve`). Without a prior image the
    prompt is exactly what it was before priors existed."""

    content: list[dict] = []
    for view in image_views:
        content += [{"type": "text", "text": f"{view.capitalize()} view: "}, {"type": "image"}, {"type": "text", "text": "\n"}]
    context = [f"{s.capitalize()}: {record[s].strip()}" for s in sections if (record.get(s) or "").strip()]
    if any(v.startswith("prior") for v in image_views):
        prior = prior_report(record) or (record.get("prior_report") or "").strip()
        if prior:
            context.insert(0, f"Prior report: {prior}")
    text = instruction + ("\n" + "\n".join(context) if context else "")
    content.append({"type": "text", "text": text})
    messages = [{"role": "system", "content": system}] if system else []
    messages.append({"role": "user", "content": content})
    return messages


def expand_image_tokens(prompt: str, n_tokens: int) -> str:
    """Each ``<image>`` placeholder repeated to the number of features its image yields."""
    return prompt.replace(IMAGE_TOKEN, IMAGE_TOKEN * n_tokens)


def encode_example(tokenizer, messages: list[dict], answer: str | None, n_image_tokens: int,
                   max_length: int | None = None) -> tuple[list[int], list[int]]:
    """(input_ids, labels) of a chat example; labels are -100 except on the answer and its end marker.

    With ``answer=None`` only the prompt with the generation prefix is encoded (for generation)."""
    prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    ids = tokenizer(expand_image_tokens(prompt, n_image_tokens), add_special_tokens=False, verbose=False)["input_ids"]
    if tokenizer.bos_token_id is not None and (not ids or ids[0] != tokenizer.bos_token_id):
        ids = [tokenizer.bos_token_id] + ids
    if answer is None:
        return ids, [-100] * len(ids)
    ans = tokenizer(answer.strip(), add_special_tokens=False, verbose=False)["input_ids"] + answer_terminator_ids(tokenizer)
    if max_length is not None and len(ids) + len(ans) > max_length:
        keep = max_length - len(ids)
        if keep < 8:
            raise ValueError(f"the prompt alone has {len(ids)} tokens, over the limit {max_length} "
                             "(fewer images or context sections, or a larger model.max_length)")
        ans = ans[:keep]
    return ids + ans, [-100] * len(ids) + ans
