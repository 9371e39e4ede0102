"""LLM judge stage: keeps a dialogue when the model says it is worth rewriting.

The prompt variant is chosen by the record's treatment (prompts/filter.yaml): the full
criteria for consultations, a lighter check for single-turn Q&A; treatments the family
does not judge (exam questions, safety demonstrations) pass through untouched.
"""

from __future__ import annotations

from actors.engines.llm import Sampling
from actors.llm_stage import LLMParams, LLMStage, Reading
from prompts import Prompt
from schemas import SourceDialogue
from schemas.llm import FilterAnswer


class FilterParams(LLMParams):
    sampling: Sampling = Sampling(temperature=0.2, max_tokens=256)  # room for a 60-character reason


class LLMFilterStage(LLMStage):
    kind = "llm_filter"
    family = "filter"
    Params = FilterParams
    answer_model = FilterAnswer

    def read(self, record: SourceDialogue, prompt: Prompt, answer: FilterAnswer, raw: str) -> Reading:
        if answer.keep:
            return record
        return self.reject(record, "judged_out", answer.reason, raw_output=raw)
