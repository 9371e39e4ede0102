"""Versioned prompt templates (YAML data files in this folder) and their loader.

A file holds one prompt family: shared text `blocks`, one `variant` per kind of input, and
which variant serves which `treatment`. Templates use `${name}` placeholders: the blocks,
and `${dialogue}` for the record being judged or rewritten. A prompt's fingerprint is a
hash of its rendered text and rules plus its version, so editing a prompt re-runs the
stages that use it (and only those).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from functools import cache
from importlib.resources import files
from string import Template
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict

from schemas import Treatment, Turn

SPEAKERS = {"patient": "患者", "doctor": "医生"}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Variant(_Strict):
    system: str
    user: str
    rules: dict[str, Any] = {}


class PromptFile(_Strict):
    name: str
    version: int
    answer: Literal["filter", "rewrite", "demographics"]
    blocks: dict[str, str] = {}
    treatments: dict[Treatment, str]
    variants: dict[str, Variant]


@dataclass(frozen=True)
class Prompt:
    """One variant of a prompt family, its blocks filled in."""

    name: str
    version: int
    variant: str
    answer: str
    system: str
    user: str
    rules: dict[str, Any] = field(default_factory=dict)

    @property
    def fingerprint(self) -> str:
        text = json.dumps([self.system, self.user, self.rules], ensure_ascii=False, sort_keys=True)
        return f"{self.name}.{self.variant}-v{self.version}-{hashlib.sha256(text.encode()).hexdigest()[:12]}"

    def messages(self, dialogue: str) -> list[dict[str, str]]:
        """Chat messages for one record (`dialogue` already rendered as text)."""
        return [
            {"role": "system", "content": self.system},
            {"role": "user", "content": Template(self.user).substitute(dialogue=dialogue)},
        ]


def render_dialogue(turns: list[Turn]) -> str:
    """Turns as the text the prompts show: one `患者：…` / `医生：…` line per turn."""
    return "\n".join(f"{SPEAKERS[t.role]}：{t.text}" for t in turns)


@cache
def load_file(name: str) -> PromptFile:
    text = files("prompts").joinpath(f"{name}.yaml").read_text(encoding="utf-8")
    prompt_file = PromptFile.model_validate(yaml.safe_load(text))
    missing = set(prompt_file.treatments.values()) - set(prompt_file.variants)
    if missing:
        raise ValueError(f"prompts/{name}.yaml: treatments name unknown variants {sorted(missing)}")
    return prompt_file


def load_prompt(name: str, treatment: Treatment) -> Prompt | None:
    """The variant of prompt family `name` for `treatment`, or None if the family does not
    handle it (e.g. exam questions are not rewritten)."""
    prompt_file = load_file(name)
    variant_name = prompt_file.treatments.get(treatment)
    if variant_name is None:
        return None
    variant = prompt_file.variants[variant_name]
    # Blocks are filled now; `${dialogue}` stays for `messages` (safe_substitute keeps it).
    system = Template(variant.system).substitute(prompt_file.blocks).strip()
    user = Template(variant.user).safe_substitute(prompt_file.blocks).strip()
    return Prompt(prompt_file.name, prompt_file.version, variant_name, prompt_file.answer, system, user, variant.rules)


PROMPT_FAMILIES = ("filter", "rewrite", "demographics")
