"""SFT records → conversations: the three record formats our users have, as one list of turns.

* alpaca   ``{"instruction", "input", "output"}`` with optional ``system`` and ``history``
           (``[[user, assistant], ...]``, earlier turns first). The user turn is the instruction,
           then a newline and the input when the input is not empty (Pai's convention).
* messages ``{"messages": [{"role", "content"}, ...]}`` (OpenAI style; a system turn may come first).
* sharegpt ``{"conversations": [{"from", "value"}, ...]}`` (``human``/``gpt``, also ``user``/
           ``assistant``/``system``), with an optional top-level ``system``.

With ``format="auto"`` each record's format is told by its keys. A conversation is valid when it
has at most one system turn, first; then user and assistant turns alternating, starting with the
user and ending with the assistant. Every problem raises `RecordError` with a reason that names
the field, the way bad pretrain records are reported.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from dataprep.io.records import type_name

FORMATS = ("alpaca", "messages", "sharegpt")
SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                  "system": "system"}


class RecordError(ValueError):
    """An SFT record that cannot become a conversation; the message is the reason."""


@dataclass(frozen=True)
class Turn:
    role: str
    """system, user or assistant."""
    content: str


def _string(record: dict, key: str, where: str, required: bool = True) -> str | None:
    if key not in record or record[key] is None:
        if required:
            raise RecordError(f"{where}: missing key {key!r}")
        return None
    value = record[key]
    if not isinstance(value, str):
        raise RecordError(f"{where}: {key!r} is not a string (got {type_name(value)})")
    return value


def detect_format(record: Any) -> str:
    if not isinstance(record, dict):
        raise RecordError(f"not a JSON object (got {type_name(record)})")
    if "messages" in record:
        return "messages"
    if "conversations" in record:
        return "sharegpt"
    if "instruction" in record or "output" in record:
        return "alpaca"
    raise RecordError("cannot tell the format: expected instruction/output (alpaca), "
                      "messages, or conversations (sharegpt)")


def _alpaca(record: dict) -> list[Turn]:
    instruction = _string(record, "instruction", "alpaca")
    output = _string(record, "output", "alpaca")
    extra = _string(record, "input", "alpaca", required=False)
    system = _string(record, "system", "alpaca", required=False)
    turns = [Turn("system", system)] if system else []
    history = record.get("history") or []
    if not isinstance(history, list):
        raise RecordError(f"alpaca: 'history' is not an array (got {type_name(history)})")
    for n, pair in enumerate(history):
        if not (isinstance(pair, list) and len(pair) == 2 and all(isinstance(x, str) for x in pair)):
            raise RecordError(f"alpaca: history item {n} is not a [user, assistant] pair of strings")
        turns += [Turn("user", pair[0]), Turn("assistant", pair[1])]
    user = f"{instruction}\n{extra}" if extra else instruction
    return turns + [Turn("user", user), Turn("assistant", output)]


def _messages(record: dict) -> list[Turn]:
    messages = record["messages"]
    if not isinstance(messages, list):
        raise RecordError(f"messages: 'messages' is not an array (got {type_name(messages)})")
    turns = []
    for n, message in enumerate(messages):
        if not isinstance(message, dict):
            raise RecordError(f"messages: item {n} is not an object (got {type_name(message)})")
        role = _string(message, "role", f"messages item {n}")
        if role not in ("system", "user", "assistant"):
            raise RecordError(f"messages item {n}: unknown role {role!r} (system, user or assistant)")
        turns.append(Turn(role, _string(message, "content", f"messages item {n}")))
    return turns


def _sharegpt(record: dict) -> list[Turn]:
    conversations = record["conversations"]
    if not isinstance(conversations, list):
        raise RecordError(f"sharegpt: 'conversations' is not an array (got {type_name(conversations)})")
    system = _string(record, "system", "sharegpt", required=False)
    turns = [Turn("system", system)] if system else []
    for n, message in enumerate(conversations):
        if not isinstance(message, dict):
            raise RecordError(f"sharegpt: item {n} is not an object (got {type_name(message)})")
        speaker = _string(message, "from", f"sharegpt item {n}")
        if speaker not in SHAREGPT_ROLES:
            raise RecordError(f"sharegpt item {n}: unknown speaker {speaker!r} "
                              f"({', '.join(SHAREGPT_ROLES)})")
        turns.append(Turn(SHAREGPT_ROLES[speaker], _string(message, "value", f"sharegpt item {n}")))
    return turns


_READERS = {"alpaca": _alpaca, "messages": _messages, "sharegpt": _sharegpt}


def check_turns(turns: list[Turn]) -> None:
    """System first (at most one), then user/assistant alternating, ending with the assistant."""
    body = turns[1:] if turns and turns[0].role == "system" else turns
    if not body:
        raise RecordError("the conversation has no user and assistant turns")
    for n, turn in enumerate(body):
        expected = "user" if n % 2 == 0 else "assistant"
        if turn.role != expected:
            where = "a system turn after the first turn" if turn.role == "system" else \
                f"turn {n + len(turns) - len(body)} is {turn.role!r}, expected {expected!r}"
            raise RecordError(f"the conversation is out of order: {where}")
    if body[-1].role != "assistant":
        raise RecordError("the conversation does not end with an assistant turn (nothing to train on)")
    for n, turn in enumerate(turns):
        try:
            turn.content.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise RecordError(f"turn {n} ({turn.role}) cannot be encoded as UTF-8: lone surrogate "
                              f"\\u{ord(turn.content[exc.start]):04x} at character {exc.start}") from None


def to_conversation(record: Any, fmt: str = "auto", system: str | None = None) -> list[Turn]:
    """One record as checked turns; `system` is used when the record has no system turn."""
    if fmt not in ("auto", *FORMATS):
        raise ValueError(f"unknown SFT format {fmt!r}; known: auto, {', '.join(FORMATS)}")
    detected = detect_format(record)
    if fmt != "auto" and detected != fmt:
        raise RecordError(f"expected a {fmt} record, found the keys of {detected} format")
    turns = _READERS[detected](record)
    if system and not (turns and turns[0].role == "system"):
        turns.insert(0, Turn("system", system))
    check_turns(turns)
    return turns
