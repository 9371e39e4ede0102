"""LLM judge stage: keeps a dialogue when the model says it is worth rewriting.

The prompt variant is chosen by the record's treatment (prompts/filter.yaml); treatments
the family does not judge (exam questions, safety demonstrations) pass through untouched.
The answer is constrained to `FilterAnswer` JSON; an answer that still does not parse is
asked again with a new seed, then rejected with the raw output kept.
"""

from __future__ import annotations

from typing import Any, get_args

from pydantic import Field, ValidationError

from actors.base import Stage, StageParams, StageResult
from actors.engines.llm import EngineConfig, LLMEngine, LLMRequest, Sampling, build_engine
from prompts import Prompt, load_prompt, render_dialogue
from schemas import SourceDialogue, Treatment
from schemas.llm import FilterAnswer


class FilterParams(StageParams):
    engine: EngineConfig
    sampling: Sampling = Sampling(temperature=0.2, max_tokens=256)  # room for a 60-character reason
    max_attempts: int = Field(3, ge=1, description="answers tried per record before it is rejected as unparseable")


class LLMFilterStage(Stage[SourceDialogue, SourceDialogue]):
    kind = "llm_filter"
    input_model = SourceDialogue
    output_model = SourceDialogue
    Params = FilterParams
    params: FilterParams
    engine: LLMEngine

    def setup(self) -> None:
        self.engine = build_engine(self.params.engine)

    def _prompt(self, dialogue: SourceDialogue) -> Prompt | None:
        return load_prompt("filter", dialogue.treatment)

    def fingerprint_extra(self) -> dict[str, Any]:
        prompts = {t: p.fingerprint for t in get_args(Treatment) if (p := load_prompt("filter", t))}
        return {"prompts": prompts, "engine": self.params.engine.output_fields()}

    def process(self, batch: list[SourceDialogue]) -> StageResult[SourceDialogue]:
        result: StageResult[SourceDialogue] = StageResult()
        pending: dict[str, tuple[SourceDialogue, Prompt]] = {}
        for dialogue in batch:
            prompt = self._prompt(dialogue)
            if prompt is None:
                result.accepted.append(dialogue)
            else:
                pending[dialogue.id] = (dialogue, prompt)
        last_raw: dict[str, str] = {}
        schema = FilterAnswer.model_json_schema()
        for attempt in range(self.params.max_attempts):
            if not pending:
                break
            order = list(pending)
            requests = [
                LLMRequest(messages=pending[i][1].messages(render_dialogue(pending[i][0].turns)),
                           seed=self.seed(i) + attempt, sampling=self.params.sampling, json_schema=schema)
                for i in order
            ]
            for record_id, response in zip(order, self.engine.generate(requests)):
                dialogue, _ = pending[record_id]
                try:
                    answer = FilterAnswer.model_validate_json(response.text)
                except ValidationError:
                    last_raw[record_id] = response.text
                    continue
                del pending[record_id]
                if answer.keep:
                    result.accepted.append(dialogue)
                else:
                    result.rejected.append(self.reject(dialogue, "judged_out", answer.reason, raw_output=response.text))
        for record_id, (dialogue, _) in pending.items():
            result.rejected.append(self.reject(dialogue, "unparseable", f"no valid answer in {self.params.max_attempts} attempts",
                                               raw_output=last_raw.get(record_id)))
        return result
