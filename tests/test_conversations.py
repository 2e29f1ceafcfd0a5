"""SFT record formats → one list of turns, and the reasons bad records are refused."""

import pytest

from dataprep.sft.conversations import RecordError, Turn, detect_format, to_conversation


def roles(turns):
    return [(t.role, t.content) for t in turns]


def test_alpaca_joins_instruction_and_input_with_a_newline():
    record = {"instruction": "把下面的句子翻译成英文", "input": "你好，世界", "output": "Hello, world"}
    assert roles(to_conversation(record)) == [("user", "把下面的句子翻译成英文\n你好，世界"),
                                              ("assistant", "Hello, world")]


def test_alpaca_empty_input_system_and_history():
    record = {"instruction": "And now?", "input": "", "output": "Done.", "system": "Be brief.",
              "history": [["First question", "First answer"], ["Second", "Second answer"]]}
    assert roles(to_conversation(record)) == [
        ("system", "Be brief."), ("user", "First question"), ("assistant", "First answer"),
        ("user", "Second"), ("assistant", "Second answer"), ("user", "And now?"), ("assistant", "Done.")]


def test_messages_and_sharegpt_give_the_same_turns():
    messages = {"messages": [{"role": "system", "content": "S"}, {"role": "user", "content": "U1"},
                             {"role": "assistant", "content": "A1"}, {"role": "user", "content": "U2"},
                             {"role": "assistant", "content": "A2"}]}
    sharegpt = {"system": "S", "conversations": [{"from": "human", "value": "U1"}, {"from": "gpt", "value": "A1"},
                                                 {"from": "user", "value": "U2"},
                                                 {"from": "assistant", "value": "A2"}]}
    assert to_conversation(messages) == to_conversation(sharegpt)
    assert to_conversation(messages)[0] == Turn("system", "S")


def test_default_system_only_when_the_record_has_none():
    plain = {"instruction": "Q", "output": "A"}
    assert roles(to_conversation(plain, system="You are helpful."))[0] == ("system", "You are helpful.")
    own = {"messages": [{"role": "system", "content": "Mine"}, {"role": "user", "content": "Q"},
                        {"role": "assistant", "content": "A"}]}
    assert roles(to_conversation(own, system="You are helpful."))[0] == ("system", "Mine")


@pytest.mark.parametrize("record, fmt", [
    ({"instruction": "Q", "output": "A"}, "alpaca"),
    ({"messages": []}, "messages"),
    ({"conversations": []}, "sharegpt"),
])
def test_detect_format(record, fmt):
    assert detect_format(record) == fmt


@pytest.mark.parametrize("record, reason", [
    ([1, 2], "not a JSON object (got array)"),
    ({"text": "pretraining data"}, "cannot tell the format"),
    ({"instruction": "Q"}, "alpaca: missing key 'output'"),
    ({"instruction": "Q", "output": 3}, "alpaca: 'output' is not a string (got int)"),
    ({"instruction": "Q", "output": "A", "history": [["only one"]]}, "history item 0"),
    ({"messages": [{"role": "user", "content": "Q"}]}, "does not end with an assistant turn"),
    ({"messages": [{"role": "assistant", "content": "A"}]}, "turn 0 is 'assistant', expected 'user'"),
    ({"messages": [{"role": "user", "content": "Q"}, {"role": "tool", "content": "x"}]}, "unknown role 'tool'"),
    ({"messages": [{"role": "user", "content": None}]}, "missing key 'content'"),
    ({"messages": [{"role": "user", "content": "Q"}, {"role": "system", "content": "S"},
                   {"role": "assistant", "content": "A"}]}, "a system turn after the first turn"),
    ({"conversations": [{"from": "bot", "value": "x"}]}, "unknown speaker 'bot'"),
    ({"messages": [{"role": "system", "content": "S"}]}, "no user and assistant turns"),
])
def test_bad_records_name_the_reason(record, reason):
    with pytest.raises(RecordError, match=None) as caught:
        to_conversation(record)
    assert reason in str(caught.value)


def test_forced_format_must_match():
    with pytest.raises(RecordError, match="expected a sharegpt record, found the keys of alpaca format"):
        to_conversation({"instruction": "Q", "output": "A"}, fmt="sharegpt")
    with pytest.raises(ValueError, match="unknown SFT format 'chatml'"):
        to_conversation({"instruction": "Q", "output": "A"}, fmt="chatml")
