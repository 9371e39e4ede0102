"""What the LLM stages ask the model to return, as pydantic models.

Structured outputs (a JSON schema given to the engine) are how answers are parsed: the
rewrite returns rounds of {patient, doctor}, so alternation and "the doctor speaks last"
hold by construction. Bounds that depend on the prompt family (round counts, turn
lengths) are added to the schema by `rewrite_schema`.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from schemas.records import AgeGroup, Gender


class _Answer(BaseModel):
    model_config = ConfigDict(extra="forbid")


class FilterAnswer(_Answer):
    keep: bool
    reason: str = Field(max_length=60)


class Round(_Answer):
    patient: str
    doctor: str


class RewriteAnswer(_Answer):
    rounds: list[Round]


class DemographicsAnswer(_Answer):
    gender: Gender
    age_group: AgeGroup


def rewrite_schema(min_rounds: int, max_rounds: int, turn_schemas: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The rewrite answer's JSON schema with a family's bounds: the round count, and per
    role the string constraints (`maxLength`, `pattern`, ...) of a turn."""
    schema = RewriteAnswer.model_json_schema()
    round_schema = schema["$defs"]["Round"]
    for role in ("patient", "doctor"):
        round_schema["properties"][role].update(minLength=1, **turn_schemas[role])
    schema["properties"]["rounds"].update(minItems=min_rounds, maxItems=max_rounds)
    return schema
