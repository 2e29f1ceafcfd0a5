"""Conversations → token ids and a loss mask: the one registry of chat templates.

The loss covers each assistant turn's tokens including its end-of-turn token, and nothing else:
not the system or user turns, not the template's role headers (the assistant header belongs to
the prompt, as in a generation prompt), not whitespace the template puts after the end of turn.

A conversation is rendered as segments ``(text, trained)``; each segment is tokenized on its own
(``add_special_tokens=False``) and the ids are concatenated, as Pai's SFT encoder tokenizes
prompt and answer separately. Two sources of segments:

* ``HFChatTemplate``: the tokenizer's own Jinja ``chat_template``. Assistant turn i is the text
  that rendering the first i+1 turns adds to rendering the first i turns with a generation prompt;
  the template must be prefix-stable (each rendering extends the previous one), or it is refused
  with a message naming --template. After the assistant's content, the trained part ends with the
  first special token (its end of turn); what follows is not trained.
* ``ChatTemplate``: a named template from `TEMPLATES` (chatml/qwen, deepseek, llama3,
  alpaca-plain), written as plain format strings, for tokenizers without a template or by choice.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np

from dataprep.sft.conversations import Turn


class TemplateError(ValueError):
    """A template that cannot render this conversation with a clean loss mask."""


@dataclass(frozen=True)
class ChatTemplate:
    """A chat format as format strings; ``{content}`` is the turn's text, ``{eos}`` the tokenizer's eos."""

    name: str
    begin: str
    """Text at the very start (a BOS token), not trained."""
    system: str
    user: str
    """The user turn and the assistant header that follows it (the generation prompt)."""
    assistant: str
    """The trained part: the assistant's content and its end-of-turn token."""
    after_assistant: str = ""
    """Untrained text after each assistant turn (e.g. a newline)."""
    default_system: str | None = None
    """System text used when the conversation has none."""

    def segments(self, turns: list[Turn], eos: str) -> list[tuple[str, bool]]:
        out: list[tuple[str, bool]] = [(self.begin, False)] if self.begin else []
        if self.default_system is not None and turns[0].role != "system":
            turns = [Turn("system", self.default_system), *turns]
        for turn in turns:
            if turn.role == "assistant":
                out.append((self.assistant.format(content=turn.content, eos=eos), True))
                if self.after_assistant:
                    out.append((self.after_assistant, False))
            else:
                template = self.system if turn.role == "system" else self.user
                out.append((template.format(content=turn.content, eos=eos), False))
        return out


_CHATML = ChatTemplate(
    name="chatml", begin="",
    system="<|im_start|>system\n{content}<|im_end|>\n",
    user="<|im_start|>user\n{content}<|im_end|>\n<|im_start|>assistant\n",
    assistant="{content}<|im_end|>", after_assistant="\n")

TEMPLATES: dict[str, ChatTemplate] = {
    "chatml": _CHATML,
    "qwen": ChatTemplate(**{**_CHATML.__dict__, "name": "qwen"}),
    "deepseek": ChatTemplate(
        name="deepseek", begin="<｜begin▁of▁sentence｜>", system="{content}",
        user="<｜User｜>{content}<｜Assistant｜>", assistant="{content}<｜end▁of▁sentence｜>"),
    "llama3": ChatTemplate(
        name="llama3", begin="<|begin_of_text|>",
        system="<|start_header_id|>system<|end_header_id|>\n\n{content}<|eot_id|>",
        user="<|start_header_id|>user<|end_header_id|>\n\n{content}<|eot_id|>"
             "<|start_header_id|>assistant<|end_header_id|>\n\n",
        assistant="{content}<|eot_id|>"),
    "alpaca-plain": ChatTemplate(
        name="alpaca-plain", begin="", system="{content}",
        user="\n\n### Instruction:\n{content}\n\n### Response:\n", assistant="{content}{eos}",
        default_system="Below is an instruction that describes a task. "
                       "Write a response that appropriately completes the request."),
}


class Renderer(Protocol):
    name: str

    def segments(self, turns: list[Turn], eos: str) -> list[tuple[str, bool]]: ...


class HFChatTemplate:
    """The tokenizer's own chat template, cut into prompt and trained segments."""

    name = "tokenizer"

    def __init__(self, hf_tokenizer) -> None:
        self._tok = hf_tokenizer
        added = getattr(hf_tokenizer, "get_added_vocab", lambda: {})()
        self._specials = sorted((t for t in added if t.strip()), key=len, reverse=True)

    def _render(self, turns: list[Turn], generation_prompt: bool) -> str:
        messages = [{"role": t.role, "content": t.content} for t in turns]
        return self._tok.apply_chat_template(messages, tokenize=False,
                                             add_generation_prompt=generation_prompt)

    def _end_of_turn(self, tail: str) -> int:
        """Length of the trained part of `tail` (what follows the content): up to the first special token."""
        best = None
        for special in self._specials:
            at = tail.find(special)
            if at >= 0 and (best is None or at < best[0]):
                best = (at, at + len(special))
        return best[1] if best else len(tail)

    def segments(self, turns: list[Turn], eos: str) -> list[tuple[str, bool]]:
        out: list[tuple[str, bool]] = []
        done = ""
        for i, turn in enumerate(turns):
            if turn.role != "assistant":
                continue
            prompt = self._render(turns[:i], generation_prompt=True)
            full = self._render(turns[:i + 1], generation_prompt=False)
            if not (prompt.startswith(done) and full.startswith(prompt)):
                raise TemplateError("the tokenizer's chat template is not prefix-stable (an earlier turn "
                                    "renders differently later); choose a named one with --template")
            answer = full[len(prompt):]
            at = answer.find(turn.content)
            if at < 0:
                raise TemplateError("the tokenizer's chat template changes the assistant's text; "
                                    "choose a named one with --template")
            cut = at + len(turn.content) + self._end_of_turn(answer[at + len(turn.content):])
            out += [(prompt[len(done):], False), (answer[:cut], True)]
            done = prompt + answer[:cut]
            if answer[cut:]:
                out.append((answer[cut:], False))
                done += answer[cut:]
        return out


def get_renderer(name: str, hf_tokenizer=None, default: str = "chatml") -> Renderer:
    """`auto`: the tokenizer's own template when it has one, else the named `default` (the
    tokenizer registry's choice for its family)."""
    if name == "auto":
        if hf_tokenizer is not None and getattr(hf_tokenizer, "chat_template", None):
            return HFChatTemplate(hf_tokenizer)
        name = default
    if name == "tokenizer":
        if hf_tokenizer is None or not getattr(hf_tokenizer, "chat_template", None):
            raise TemplateError("the tokenizer has no chat_template; choose one with --template: "
                                + ", ".join(TEMPLATES))
        return HFChatTemplate(hf_tokenizer)
    if name not in TEMPLATES:
        raise TemplateError(f"unknown chat template {name!r}; known: auto, tokenizer, {', '.join(TEMPLATES)}")
    return TEMPLATES[name]


def encode_segments(conversations: list[list[tuple[str, bool]]], encode
                    ) -> list[tuple[np.ndarray, np.ndarray]]:
    """Token ids (int64) and loss mask (bool, True where trained) of each rendered conversation.

    `encode(list_of_texts) -> (ids, offsets)` is a dataprep engine's batch call: one call
    tokenizes every segment of every conversation (engines are fastest on large batches).
    """
    texts: list[str] = []
    trained: list[bool] = []
    counts: list[int] = []
    for segments in conversations:
        kept = [(text, flag) for text, flag in segments if text]
        texts += [text for text, _ in kept]
        trained += [flag for _, flag in kept]
        counts.append(len(kept))
    ids, offsets = encode(texts)
    ids = ids.astype(np.int64)
    mask = np.repeat(np.array(trained, dtype=bool), np.diff(offsets))
    out, seg = [], 0
    for n in counts:
        lo, hi = int(offsets[seg]), int(offsets[seg + n])
        out.append((ids[lo:hi], mask[lo:hi]))
        seg += n
    return out


def encode_conversation(turns: list[Turn], renderer: Renderer, encode, eos: str
                        ) -> tuple[np.ndarray, np.ndarray]:
    """Token ids (int64) and loss mask (bool, True where trained) of one conversation."""
    return encode_segments([renderer.segments(turns, eos)], encode)[0]
