"""The loop every LLM stage shares: prompt by treatment, constrained answer, check, retry.

A subclass names its prompt family (a file in prompts/) and its answer model; the engine
decodes under that model's JSON schema (or the subclass's `json_schema` for a prompt), an
answer that does not parse is `Invalid("unparseable")`, and the subclass reads a parsed
answer into one of three things:

* the record to pass on (accepted),
* a `Rejection` (a valid answer that says no, e.g. the judge rejects the dialogue),
* `Invalid(code, detail)`: the answer breaks a rule. The record is asked again with a new
  seed, up to `max_attempts` answers in all, then rejected as `<kind>.<code>` with the last
  raw output kept, so a reader can see what the model said.

Treatments the family has no prompt for pass through untouched (`passthrough`).
"""

from __future__ import annotations

from abc import abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar, get_args

from pydantic import BaseModel, Field, ValidationError

from actors.base import Stage, StageParams, StageResult
from actors.engines.llm import EngineConfig, LLMEngine, LLMRequest, LLMResponse, Sampling, build_engine
from prompts import Prompt, load_prompt, render_dialogue
from schemas import Rejection, SourceDialogue, Treatment


class LLMParams(StageParams):
    engine: EngineConfig
    sampling: Sampling = Sampling()
    max_attempts: int = Field(3, ge=1, description="answers tried per record before it is rejected")


@dataclass(frozen=True)
class Invalid:
    """An answer that breaks a rule: `code` names the rule (a reason code), `detail` says how."""

    code: str
    detail: str


Reading = SourceDialogue | Rejection | Invalid


class LLMStage(Stage[SourceDialogue, SourceDialogue]):
    family: ClassVar[str]
    answer_model: ClassVar[type[BaseModel]]
    input_model = SourceDialogue
    output_model = SourceDialogue
    # Several micro-batches may be in the engine at once (see PartRunner): both engines
    # take concurrent `generate` calls and batch them together.
    concurrent = True
    Params = LLMParams
    params: LLMParams
    engine: LLMEngine

    @classmethod
    def gpus_per_actor(cls, params: StageParams) -> float:
        # A tensor-parallel vLLM engine runs its shards as processes of the actor, so the
        # actor holds all their GPUs (one resource request: Ray keeps it on one node).
        engine = params.engine  # type: ignore[attr-defined]
        return float(engine.tensor_parallel_size) if engine.kind == "vllm" and engine.tensor_parallel_size > 1 else 0.0

    def setup(self) -> None:
        self.engine = build_engine(self.params.engine)

    def close(self) -> None:
        if getattr(self, "engine", None) is not None:
            self.engine.close()

    def prompt_for(self, record: SourceDialogue) -> Prompt | None:
        """The prompt that handles this record, or None to pass it through."""
        return load_prompt(self.family, record.treatment)

    def passthrough(self, record: SourceDialogue) -> SourceDialogue:
        return record

    def json_schema(self, prompt: Prompt) -> dict[str, Any]:
        """The JSON schema the engine constrains this prompt's answers to."""
        return self.answer_model.model_json_schema()

    @abstractmethod
    def read(self, record: SourceDialogue, prompt: Prompt, answer: Any, raw: str) -> Reading:
        """What one parsed answer (an `answer_model`; `raw` its text) means for the record."""

    def fingerprint_extra(self) -> dict[str, Any]:
        prompts = {t: p.fingerprint for t in get_args(Treatment) if (p := load_prompt(self.family, t))}
        return {"prompts": prompts, "engine": self.params.engine.output_fields()}

    def request(self, record: SourceDialogue, prompt: Prompt, attempt: int) -> LLMRequest:
        seed = (self.seed(record.id) + attempt) % 2**63  # a new seed per attempt, still a valid int64
        return LLMRequest(messages=prompt.messages(render_dialogue(record.turns)), seed=seed,
                          sampling=self.params.sampling, json_schema=self.json_schema(prompt))

    def process(self, batch: list[SourceDialogue]) -> StageResult[SourceDialogue]:
        result: StageResult[SourceDialogue] = StageResult()
        pending: dict[str, tuple[SourceDialogue, Prompt]] = {}
        for record in batch:
            prompt = self.prompt_for(record)
            if prompt is None:
                result.accepted.append(self.passthrough(record))
            else:
                pending[record.id] = (record, prompt)
        last: dict[str, tuple[Invalid, str]] = {}
        for attempt in range(self.params.max_attempts):
            if not pending:
                break
            order = list(pending)
            responses = self.engine.generate([self.request(*pending[i], attempt) for i in order])
            for record_id, response in zip(order, responses, strict=True):
                record, prompt = pending[record_id]
                reading = self._read(record, prompt, response)
                if isinstance(reading, Invalid):
                    last[record_id] = (reading, response.text)
                    continue
                del pending[record_id]
                if isinstance(reading, Rejection):
                    result.rejected.append(reading)
                else:
                    result.accepted.append(reading)
        for record_id, (record, _) in pending.items():
            invalid, raw = last[record_id]
            detail = f"{invalid.detail} (last of {self.params.max_attempts} answers)"
            result.rejected.append(self.reject(record, invalid.code, detail, raw_output=raw))
        return result

    def _read(self, record: SourceDialogue, prompt: Prompt, response: LLMResponse) -> Reading:
        if response.finish_reason == "length":
            return Invalid("truncated", f"the answer hit max_tokens={self.params.sampling.max_tokens} before it ended")
        try:
            answer = self.answer_model.model_validate_json(response.text)
        except ValidationError as exc:
            return Invalid("unparseable", f"not a {self.answer_model.__name__}: {exc.errors()[0]['msg']}")
        return self.read(record, prompt, answer, response.text)
