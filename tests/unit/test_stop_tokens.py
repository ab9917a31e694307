"""End-of-turn and stop tokens come from the tokenizer: a Qwen2-style chat template (``<|im_end|>`` ends a turn,
``<|endoftext|>`` is the eos) trains answers ending with ``<|im_end|>``, generation stops there, and the
decoded text keeps no special tokens except the box tokens."""

from __future__ import annotations

import pytest
import torch

from mxr0.data.boxes_text import box_special_tokens
from mxr0.data.chat import (answer_terminator_ids, encode_example, end_of_turn_token, ensure_image_token,
                            stop_token_ids, study_messages, train_chat_tokenizer)

QWEN2_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\n' }}"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}{{ '<image>' }}{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}"
    "{{ '<|im_end|>\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
TEXTS = ["Findings: Small left pleural effusion.", "Findings: No acute process.", "Locate the effusion.",
         "Write the report.", "You are a helpful assistant.", "user assistant system"] * 10
ANSWER = "<box><x12><y30><x45><y62></box> left effusion"


@pytest.fixture(scope="module")
def qwen_tok():
    """A tiny BPE tokenizer set up like Qwen2's: no bos, eos and pad ``<|endoftext|>``, ChatML specials."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(TEXTS, trainers.BpeTrainer(vocab_size=300, special_tokens=specials, show_progress=False,
                                                       initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", pad_token="<|endoftext|>",
                                   additional_special_tokens=specials[1:])
    fast.chat_template = QWEN2_TEMPLATE
    ensure_image_token(fast)  # as ReportTask does for a Hub LLM
    fast.add_tokens(box_special_tokens(), special_tokens=True)  # box_format: tokens
    return fast


def test_end_of_turn_comes_from_the_chat_template(qwen_tok):
    im_end, eot = qwen_tok.convert_tokens_to_ids(["<|im_end|>", "<|endoftext|>"])
    assert end_of_turn_token(qwen_tok) == "<|im_end|>"
    assert answer_terminator_ids(qwen_tok) == [im_end]
    assert set(stop_token_ids(qwen_tok)) == {im_end, eot}


def test_training_labels_end_with_im_end(qwen_tok):
    msgs = study_messages({}, ["frontal"], "Locate the effusion.", [])
    ids, labels = encode_example(qwen_tok, msgs, ANSWER, n_image_tokens=3)
    answer = [t for t in labels if t != -100]
    assert answer[-1] == qwen_tok.convert_tokens_to_ids("<|im_end|>")
    assert qwen_tok.convert_tokens_to_ids("<|endoftext|>") not in answer
    assert qwen_tok.decode(answer) == ANSWER + "<|im_end|>"
    # the prompt + answer is what the chat template writes for the whole conversation (up to the final newline)
    full = qwen_tok.apply_chat_template(msgs + [{"role": "assistant", "content": ANSWER}], tokenize=False)
    assert qwen_tok.decode(ids).replace("<image>" * 3, "<image>") == full.rstrip("\n")


def test_tiny_tokenizer_terminator_is_unchanged():
    tok = train_chat_tokenizer(TEXTS, vocab_size=300)
    assert end_of_turn_token(tok) == "<|end|>"
    msgs = study_messages({}, ["frontal"], "Write the report.", [])
    _, labels = encode_example(tok, msgs, "Findings: No acute process.", n_image_tokens=2)
    before = tok("Findings: No acute process.<|end|>", add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    assert [t for t in labels if t != -100] == before
    assert set(stop_token_ids(tok)) == set(tok.convert_tokens_to_ids(["</s>", "<|end|>"]))


def test_clean_generation_drops_special_tokens_but_keeps_box_tokens(qwen_tok):
    from mxr0.models.decoding import clean_generation

    text = "<|im_start|>" + ANSWER + "<image><|im_end|>\n<|im_start|>user\nmore<|endoftext|>"
    assert clean_generation(text, qwen_tok) == ANSWER
    tiny = train_chat_tokenizer(TEXTS, vocab_size=300)
    assert clean_generation("Findings: <image>clear.<|end|>\nmore</s>", tiny) == "Findings: clear."


@pytest.fixture(scope="module")
def overfit_vlm(qwen_tok):
    """A tiny LLaVA (DINOv2 tower + Qwen2 LM from configs) overfit on one example whose answer is followed, after
    ``<|im_end|>``, by a next turn: it only stops after the answer if generation stops at ``<|im_end|>``."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from mxr0.models.encoder import new_encoder
    from mxr0.models.vlm import build_vlm, image_token_count
    from mxr0.data.report_dataset import ChatCollator

    torch.manual_seed(0)
    vision = new_encoder(28, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, mlp_ratio=2, patch_size=14,
                         num_register_tokens=0)
    lm = Qwen2ForCausalLM(Qwen2Config(vocab_size=len(qwen_tok), hidden_size=64, intermediate_size=128,
                                      num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2,
                                      max_position_embeddings=256, tie_word_embeddings=True,
                                      eos_token_id=qwen_tok.eos_token_id, pad_token_id=qwen_tok.pad_token_id))
    image_id = qwen_tok.convert_tokens_to_ids("<image>")
    model = build_vlm(vision, lm, image_id, 28)
    n = image_token_count(vision.config, 28, "default")
    msgs = study_messages({}, ["frontal"], "Locate the effusion.", [])
    ids, labels = encode_example(qwen_tok, msgs, ANSWER, n_image_tokens=n)
    tail = qwen_tok("\n<|im_start|>user\nWrite the report.<|im_end|>", add_special_tokens=False)["input_ids"]
    px = torch.zeros(1, 3, 28, 28)
    item = {"input_ids": ids + tail, "labels": labels + tail, "pixel_values": px, "index": 0}
    batch = ChatCollator(qwen_tok.pad_token_id)([item])
    batch.pop("index")
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(150):
        loss = model(**batch).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        if loss.item() < 0.01:
            break
    model.eval()
    prompt, _ = encode_example(qwen_tok, msgs, None, n_image_tokens=n)
    return model, {"input_ids": prompt, "labels": [-100] * len(prompt), "pixel_values": px, "index": 0}


def test_generation_stops_at_im_end_and_keeps_box_tokens(qwen_tok, overfit_vlm):
    from mxr0.models.decoding import generate_batch

    model, item = overfit_vlm
    # without the end-of-turn stop the overfit model writes the next turn after <|im_end|>
    with torch.no_grad():
        raw = model.generate(input_ids=torch.tensor([item["input_ids"]]), pixel_values=item["pixel_values"],
                             max_new_tokens=40, do_sample=False, eos_token_id=[qwen_tok.eos_token_id],
                             pad_token_id=qwen_tok.pad_token_id)
    assert "<|im_end|>\n<|im_start|>user" in qwen_tok.decode(raw[0, len(item["input_ids"]):])
    assert generate_batch(model, qwen_tok, [item, item], max_new_tokens=40) == [ANSWER, ANSWER]
