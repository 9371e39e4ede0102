"""A stage that passes records through after a simulated engine latency.

It stands in for a GPU engine where none can run: for benchmarking and calibrating the
scheduler (its latency has the shape of a GPU engine's, a fixed cost per call plus a cost
per item: `base + per_item * n`), and for fault injection (an engine that cannot load,
that raises on some records, or that hangs).
"""

from __future__ import annotations

import os
import time

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
    trace_dir: str | None = None
    """If set, every call appends its record ids to <trace_dir>/<pid>.txt before working,
    so a benchmark can count work started but never committed (lost to a crash)."""


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
        if ids & set(self.params.hang_ids):
            time.sleep(self.params.hang_s)
        bad = ids & set(self.params.fail_ids)
        if bad:
            raise ValueError(f"simulated engine error on {sorted(bad)[0]}")
        time.sleep(self.params.latency_base_s + self.params.latency_per_item_s * len(batch))
        return StageResult(accepted=list(batch))
