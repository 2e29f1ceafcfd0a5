"""Loss masks cover exactly the assistant text and its end-of-turn token, for every format and template."""

import copy

import numpy as np
import pytest

from dataprep.sft.chat_template import TEMPLATES, HFChatTemplate, TemplateError, encode_conversation, get_renderer
from dataprep.sft.conversations import to_conversation
from dataprep.tokenization.tokenizers import _flatten

RECORDS = {
    "alpaca": {"instruction": "把下面的句子翻译成英文", "input": "你好，世界", "output": "Hello, world!",
               "system": "You translate.", "history": [["Say hi", "Hi there."]]},
    "messages": {"messages": [{"role": "user", "content": "What is 2+2?"},
                              {"role": "assistant", "content": "4"},
                              {"role": "user", "content": "And in code?"},
                              {"role": "assistant", "content": "def add():\n    return 2 + 2\n"}]},
    "sharegpt": {"conversations": [{"from": "human", "value": "Name a colour."},
                                   {"from": "gpt", "value": "Blue 🔵"}]},
}

CHATML_JINJA = (
    "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")


def encoder(hf):
    return lambda texts: _flatten([hf(t, add_special_tokens=False).input_ids for t in texts])


@pytest.fixture(scope="module")
def templated(reference_tokenizer):
    """The DeepSeek tokenizer given ChatML tokens and a ChatML Jinja template, as a Qwen tokenizer has."""
    tok = copy.deepcopy(reference_tokenizer)
    tok.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    tok.chat_template = CHATML_JINJA
    return tok


def _check(hf, renderer, record, end_of_turn):
    turns = to_conversation(record)
    ids, mask = encode_conversation(turns, renderer, encoder(hf), hf.eos_token)
    assert ids.shape == mask.shape
    # the trained tokens, turn by turn, decode to each assistant text + its end of turn
    runs = np.split(ids, np.flatnonzero(np.diff(mask.astype(np.int8))) + 1)
    starts_trained = bool(mask[0])
    trained = [hf.decode(r.tolist()) for i, r in enumerate(runs) if (i % 2 == 0) == starts_trained]
    assert trained == [t.content + end_of_turn for t in turns if t.role == "assistant"]
    return turns, ids, mask


@pytest.mark.parametrize("fmt", RECORDS)
def test_deepseek_template_on_the_real_tokenizer(reference_tokenizer, fmt):
    hf = reference_tokenizer
    turns, ids, mask = _check(hf, TEMPLATES["deepseek"], RECORDS[fmt], "<｜end▁of▁sentence｜>")
    text = hf.decode(ids.tolist())
    assert text.startswith("<｜begin▁of▁sentence｜>")
    for turn in turns:
        assert turn.content in text
    assert not mask[0]  # the BOS is not trained


@pytest.mark.parametrize("name", ["chatml", "qwen", "llama3", "alpaca-plain"])
@pytest.mark.parametrize("fmt", RECORDS)
def test_named_templates_train_only_the_answers(reference_tokenizer, name, fmt):
    end = {"alpaca-plain": reference_tokenizer.eos_token, "llama3": "<|eot_id|>"}.get(name, "<|im_end|>")
    _check(reference_tokenizer, TEMPLATES[name], RECORDS[fmt], end)


@pytest.mark.parametrize("fmt", RECORDS)
def test_tokenizer_own_template_trains_answer_and_end_of_turn_only(templated, fmt):
    renderer = get_renderer("auto", templated, default="deepseek")
    assert isinstance(renderer, HFChatTemplate)
    turns, ids, mask = _check(templated, renderer, RECORDS[fmt], "<|im_end|>")
    # the rendered whole equals the template's own rendering: nothing lost or added by the cut
    whole = templated.apply_chat_template([{"role": t.role, "content": t.content} for t in turns], tokenize=False)
    assert templated.decode(ids.tolist()) == whole
    # the newline after <|im_end|> is not trained
    im_end = templated.convert_tokens_to_ids("<|im_end|>")
    after = np.flatnonzero(ids == im_end) + 1
    assert not mask[after[after < len(ids)]].any()


def test_auto_uses_the_registry_default_without_a_tokenizer_template(reference_tokenizer):
    assert get_renderer("auto", reference_tokenizer, default="deepseek") is TEMPLATES["deepseek"]
    with pytest.raises(TemplateError, match="no chat_template"):
        get_renderer("tokenizer", reference_tokenizer)
    with pytest.raises(TemplateError, match="unknown chat template 'vicuna'"):
        get_renderer("vicuna", reference_tokenizer)


def test_prefix_unstable_template_is_refused(templated):
    tok = copy.deepcopy(templated)
    tok.chat_template = "{{ messages|length }}" + CHATML_JINJA  # earlier turns render differently later
    with pytest.raises(TemplateError, match="not prefix-stable"):
        encode_conversation(to_conversation(RECORDS["messages"]), HFChatTemplate(tok), encoder(tok), tok.eos_token)


def test_template_that_rewrites_the_answer_is_refused(templated):
    tok = copy.deepcopy(templated)
    tok.chat_template = CHATML_JINJA.replace("m['content']", "(m['content'] | upper)")
    with pytest.raises(TemplateError, match="changes the assistant's text"):
        encode_conversation(to_conversation(RECORDS["sharegpt"]), HFChatTemplate(tok), encoder(tok), tok.eos_token)
