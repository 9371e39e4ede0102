"""A stage that passes records through after a simulated engine latency.

It stands in for a GPU engine where none can run: for benchmarking and calibrating the
scheduler (its latency has the shape of a GPU engine's, a fixed cost per call plus a cost
per item: `base + per_item * n`), and for fault injection (an engine that cannot load,
that raises on some records, or that hangs: on every call, or only on the first few so
that a retry succeeds).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from pydantic import Field, model_validator

from actors.base import Stage, StageParams, StageResult
from schemas import SourceDialogue


class SimulateParams(StageParams):
    latency_base_s: float = 0.0
    latency_per_item_s: float = 0.0
    load_s: float = 0.0
    """Simulated engine load time, paid once per actor in setup()."""
    load_error: str | None = None
    """If set, setup() fails with this message (an engine that cannot load)."""
    fail_ids: tuple[str, ...] = ()
    """Records whose processing raises (a bad row)."""
    hang_ids: tuple[str, ...] = ()
    """Records whose processing sleeps for `hang_s` (a hung engine)."""
    hang_s: float = 3600.0
    hang_times: int = Field(0, ge=0)
    """With `trace_dir`: hang only on the first `hang_times` calls that hold a record of
    `hang_ids` (0: on every call), so a retried micro-batch can succeed. Calls are counted
    in the trace files, which outlive the actor the scheduler restarts after a timeout."""
    trace_dir: str | None = None
    """If set, every call appends its record ids to <trace_dir>/<pid>.txt before working,
    so a benchmark can count work started but never committed (lost to a crash)."""

    @model_validator(mode="after")
    def _counted_hangs_need_a_trace(self) -> "SimulateParams":
        if self.hang_times and not self.trace_dir:
            raise ValueError("hang_times counts calls in trace_dir: set trace_dir too")
        return self


class SimulatedEngineStage(Stage[SourceDialogue, SourceDialogue]):
    kind = "simulate"
    input_model = SourceDialogue
    output_model = SourceDialogue
    Params = SimulateParams
    params: SimulateParams

    def setup(self) -> None:
        time.sleep(self.params.load_s)
        if self.params.load_error:
            raise RuntimeError(self.params.load_error)

    def process(self, batch: list[SourceDialogue]) -> StageResult[SourceDialogue]:
        ids = {d.id for d in batch}
        if self.params.trace_dir:
            with open(os.path.join(self.params.trace_dir, f"{os.getpid()}.txt"), "a", encoding="utf-8") as trace:
                trace.write("".join(f"{i}\n" for i in sorted(ids)))
        if self._hangs(ids & set(self.params.hang_ids)):
            time.sleep(self.params.hang_s)
        bad = ids & set(self.params.fail_ids)
        if bad:
            raise ValueError(f"simulated engine error on {sorted(bad)[0]}")
        time.sleep(self.params.latency_base_s + self.params.latency_per_item_s * len(batch))
        return StageResult(accepted=list(batch))

    def _hangs(self, hung: set[str]) -> bool:
        """Whether this call hangs; `hung`: its records among `hang_ids`."""
        if not hung or not self.params.hang_times:
            return bool(hung)
        one = min(hung)  # a record is always called with the rest of its micro-batch
        calls = sum(trace.read_text(encoding="utf-8").splitlines().count(one)  # this call included
                    for trace in Path(str(self.params.trace_dir)).glob("*.txt"))
        return calls <= self.params.hang_times
