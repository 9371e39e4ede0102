"""What a pipeline stage is: typed records in, accepted records and rejections out.

A stage is pure with respect to storage: it never writes files (the worker that holds it
commits its results) and knows nothing of shards or Ray. Engines (LLM, TTS) are loaded in
`setup()`, once per actor.
"""

from __future__ import annotations

import hashlib
import json
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar, Generic, TypeVar

import numpy as np
from pydantic import BaseModel, ConfigDict

from schemas import Record, Rejection, rng_for, seed_for

In = TypeVar("In", bound=Record)
Out = TypeVar("Out", bound=Record)


class StageParams(BaseModel):
    """Base of every stage's parameters: unknown keys are errors, not silently ignored."""

    model_config = ConfigDict(extra="forbid", frozen=True)


@dataclass
class StageResult(Generic[Out]):
    accepted: list[Out] = field(default_factory=list)
    rejected: list[Rejection] = field(default_factory=list)


class Stage(ABC, Generic[In, Out]):
    """One kind of pipeline stage.

    Subclasses set the class attributes and implement `process`. `version` is part of the
    fingerprint: bump it whenever the same parameters would now give different output.
    """

    kind: ClassVar[str]
    version: ClassVar[str] = "1"
    input_model: ClassVar[type[Record]]
    output_model: ClassVar[type[Record]]
    Params: ClassVar[type[StageParams]] = StageParams
    # The output field naming the input record a row came from. "id" for 1:1 stages; a
    # fan-out stage (one dialogue → many utterances) names its parent-id field instead.
    parent_id_field: ClassVar[str] = "id"
    # True when `process` may run on several micro-batches at once in one actor (its
    # engine batches concurrent calls together); the actor then runs up to
    # `parts_in_flight_per_actor` of them concurrently instead of queueing them.
    concurrent: ClassVar[bool] = False

    def __init__(self, name: str, params: StageParams, run_seed: int):
        self.name = name
        self.params = params
        self.run_seed = run_seed

    @classmethod
    def gpus_per_actor(cls, params: StageParams) -> float:
        """The GPUs one actor must hold for these parameters; the config check compares it
        with `resources.num_gpus`."""
        return 0.0

    def setup(self) -> None:
        """Load engines and other expensive state; called once per actor."""

    def close(self) -> None:
        """Release what `setup` loaded (engine processes, GPU memory); called when the run
        is over, before the actor is killed."""

    @abstractmethod
    def process(self, batch: list[In]) -> StageResult[Out]:
        """Turn a micro-batch into accepted rows and rejections.

        Every input record must come out either as output (named by `parent_id_field`) or
        as a rejection, never both and never neither; the worker checks this.
        """

    def fingerprint_extra(self) -> dict[str, Any]:
        """Anything else that changes the output (prompt text, model id); override."""
        return {}

    def rng(self, record_id: str) -> np.random.Generator:
        return rng_for(self.run_seed, self.name, record_id)

    def seed(self, record_id: str) -> int:
        return seed_for(self.run_seed, self.name, record_id)

    def reject(self, record: Record, reason: str, detail: str = "", raw_output: str | None = None) -> Rejection:
        """A rejection of `record` by this stage; `reason` is a short code, prefixed here."""
        return Rejection(
            id=getattr(record, "id"),
            stage=self.name,
            reason=f"{self.kind}.{reason}",
            detail=detail,
            raw_output=raw_output,
            record_json=record.model_dump_json(),
        )


def fingerprint(payload: dict[str, Any]) -> str:
    """A short, stable hash of a JSON-able description of what produces some output."""
    text = json.dumps(payload, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]
