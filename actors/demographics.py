"""Patient demographics stage: the gender and age group a reference voice is matched on.

What the source states wins: MedDG's "（男，32岁）" gives both, and then the model is not
asked. Otherwise the model infers what is missing (prompts/demographics.yaml), answering
enums only, with "unknown" when unsure; an unknown attribute later means "do not match on
it" (and both unknown means a random timbre). Treatments the family does not cover
(encyclopedia, safety, exam questions) pass through with whatever the source gave.
"""

from __future__ import annotations

from actors.engines.llm import Sampling
from actors.llm_stage import LLMParams, LLMStage, Reading
from prompts import Prompt
from schemas import SourceDialogue, age_group_of
from schemas.llm import DemographicsAnswer


class DemographicsParams(LLMParams):
    sampling: Sampling = Sampling(temperature=0.0, max_tokens=64)


def from_source(record: SourceDialogue) -> SourceDialogue:
    """The record with the age group its stated age implies."""
    group = age_group_of(record.age) if record.age_group == "unknown" else record.age_group
    return record.model_copy(update={"age_group": group})


class DemographicsStage(LLMStage):
    kind = "demographics"
    family = "demographics"
    Params = DemographicsParams
    answer_model = DemographicsAnswer

    def prompt_for(self, record: SourceDialogue) -> Prompt | None:
        stated = from_source(record)
        if stated.gender != "unknown" and stated.age_group != "unknown":
            return None  # the source says it all; nothing to ask
        return super().prompt_for(record)

    def passthrough(self, record: SourceDialogue) -> SourceDialogue:
        stated = from_source(record)
        known = stated.gender != "unknown" or stated.age_group != "unknown"
        return stated.model_copy(update={"demographics_by": "source" if known else None})

    def read(self, record: SourceDialogue, prompt: Prompt, answer: DemographicsAnswer, raw: str) -> Reading:
        stated = from_source(record)
        gender = stated.gender if stated.gender != "unknown" else answer.gender
        age_group = stated.age_group if stated.age_group != "unknown" else answer.age_group
        stated_any = stated.gender != "unknown" or stated.age_group != "unknown"
        return stated.model_copy(update={"gender": gender, "age_group": age_group,
                                         "demographics_by": "source+llm" if stated_any else "llm"})
