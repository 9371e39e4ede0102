"""A dialogue as the model's token ids and labels, through the tokenizer's chat template.

Labels are -100 everywhere except the assistant's content and the end-of-turn token that
closes it: the system prompt, user turns, role headers and padding are never learnt (the
SpeechMedAssist scripts pad labels with a real token id, `<|im_end|>`, which teaches the
model to emit it after padding; here padding is -100, see data.Collator).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel
from transformers import PreTrainedTokenizerBase

from training.model import IGNORE_INDEX

DEFAULT_SYSTEM_PROMPT = ("你是一名经验丰富的全科医生，正在通过语音为患者提供咨询。"
                         "请用简洁、口语化的中文回答，必要时追问病情，并给出就医建议。")


class Message(BaseModel):
    role: Literal["system", "user", "assistant"]
    content: str


class Encoded(BaseModel):
    input_ids: list[int]
    labels: list[int]


class TemplateError(ValueError):
    """The chat template does not render a conversation as a prefix of its continuation."""


def _ids(tokenizer: PreTrainedTokenizerBase, messages: list[Message], *, prompt: bool) -> list[int]:
    text = tokenizer.apply_chat_template([m.model_dump() for m in messages], tokenize=False,
                                         add_generation_prompt=prompt)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def encode_dialogue(tokenizer: PreTrainedTokenizerBase, messages: list[Message]) -> Encoded:
    """Token ids of the whole conversation; labels on each assistant reply.

    A reply's tokens are what its rendering adds to the conversation before it plus the
    generation prompt, up to and including the end-of-turn (eos) token."""
    ids = _ids(tokenizer, messages, prompt=False)
    labels = [IGNORE_INDEX] * len(ids)
    for i, message in enumerate(messages):
        if message.role != "assistant":
            continue
        start = _ids(tokenizer, messages[:i], prompt=True)
        upto = _ids(tokenizer, messages[: i + 1], prompt=False)
        if ids[: len(start)] != start or ids[: len(upto)] != upto:
            raise TemplateError("the tokenizer's chat template does not render a conversation as a prefix of its "
                                "continuation (e.g. it rewrites earlier turns); labels cannot be placed")
        end = len(upto)
        if tokenizer.eos_token_id in ids[len(start) : end]:
            end = ids.index(tokenizer.eos_token_id, len(start)) + 1  # not the newline after it
        labels[len(start) : end] = ids[len(start) : end]
    return Encoded(input_ids=ids, labels=labels)
