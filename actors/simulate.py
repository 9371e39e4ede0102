"""A stage that passes records through after a simulated engine latency.

For benchmarking and calibrating the scheduler: its latency follows the shape of a GPU
engine's, a fixed cost per call plus a cost per item (`base + per_item * n`).
"""

from __future__ import annotations

import time

from actors.base import Stage, StageParams, StageResult
from schemas import SourceDialogue


class SimulateParams(StageParams):
    latency_base_s: float = 0.0
    latency_per_item_s: float = 0.0


class SimulatedEngineStage(Stage[SourceDialogue, SourceDialogue]):
    kind = "simulate"
    input_model = SourceDialogue
    output_model = SourceDialogue
    Params = SimulateParams
    params: SimulateParams

    def process(self, batch: list[SourceDialogue]) -> StageResult[SourceDialogue]:
        time.sleep(self.params.latency_base_s + self.params.latency_per_item_s * len(batch))
        return StageResult(accepted=list(batch))
