"""Runs one stage over committed micro-batches: read input, process, commit.

`PartRunner` holds no Ray code, so the shard and commit logic is testable in-process; the
scheduler wraps it in a Ray actor (`pipeline.scheduler`).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections import OrderedDict
from typing import Any

import pyarrow as pa
from pydantic import BaseModel, ConfigDict

from actors.base import Stage, StageResult
from actors.engines import EngineUnavailable
from actors.registry import build_stage
from schemas import Record, Rejection, from_table, to_table
from storage.markers import PartCommit
from storage.rundir import RunDir

log = logging.getLogger(__name__)


class StageSpec(BaseModel):
    """Everything a worker needs to run its stage, as sent by the driver."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    kind: str
    params: dict[str, Any]
    run_seed: int
    upstream: str
    fingerprint: str
    micro_batch_size: int
    max_row_retries: int
    num_gpus: float = 0.0  # what the actor holds; recorded in each commit marker (GPU-hours)


class ReconcileError(RuntimeError):
    """A stage lost or invented records: a bug in the stage, never committed."""


def process_with_retries(stage: Stage, batch: list[Record], max_row_retries: int) -> StageResult:
    """Process a batch; if it raises, isolate the bad rows.

    Each row is retried alone up to `max_row_retries` times, then rejected with the error,
    so one bad row never fails its shard.
    """
    try:
        return stage.process(batch)
    except EngineUnavailable:
        raise  # not the rows' fault: the micro-batch fails and is redone later
    except Exception:  # noqa: BLE001 - any stage error is handled row by row below
        log.warning("%s: batch of %d failed; retrying row by row", stage.name, len(batch), exc_info=True)
    result: StageResult = StageResult()
    for record in batch:
        error: Exception | None = None
        for _ in range(max_row_retries + 1):
            try:
                one = stage.process([record])
            except EngineUnavailable:
                raise
            except Exception as exc:  # noqa: BLE001
                error = exc
                continue
            result.accepted.extend(one.accepted)
            result.rejected.extend(one.rejected)
            break
        else:
            result.rejected.append(stage.reject(record, "error", detail=f"{type(error).__name__}: {error}"))
    return result


def check_reconciles(stage: Stage, batch: list[Record], result: StageResult) -> None:
    """in = out + rejected, by record id: every input accounted for exactly once."""
    ids_in = [r.id for r in batch]  # type: ignore[attr-defined]
    out_ids = {getattr(r, stage.parent_id_field) for r in result.accepted}
    rej_ids = [r.id for r in result.rejected]
    problems = []
    if len(set(rej_ids)) != len(rej_ids):
        problems.append("a record was rejected twice")
    if out_ids & set(rej_ids):
        problems.append(f"both output and rejected: {sorted(out_ids & set(rej_ids))[:3]}")
    missing = set(ids_in) - out_ids - set(rej_ids)
    if missing:
        problems.append(f"neither output nor rejected: {sorted(missing)[:3]}")
    extra = (out_ids | set(rej_ids)) - set(ids_in)
    if extra:
        problems.append(f"not in the input: {sorted(extra)[:3]}")
    if stage.parent_id_field == "id" and len(result.accepted) != len(out_ids):
        problems.append("a 1:1 stage emitted two rows for one record")
    if problems:
        raise ReconcileError(f"stage {stage.name} ({stage.kind}): " + "; ".join(problems))


class PartRunner:
    """One worker of a stage: loads the stage once, then runs parts on request."""

    def __init__(self, run_uri: str, spec: StageSpec, fence: str | None, session: str):
        self.rundir = RunDir(run_uri)
        self.spec = spec
        self.fence = fence
        self.session = session
        self.stage = build_stage(spec.kind, spec.name, spec.params, spec.run_seed)
        self.stage.setup()
        self._inputs: OrderedDict[int, pa.Table] = OrderedDict()
        self._inputs_lock = threading.Lock()  # concurrent stages run parts on several threads

    def ready(self) -> str:
        return f"{socket.gethostname()}:{os.getpid()}"

    def close(self) -> None:
        self.stage.close()

    def _input(self, shard: int, upstream_parts: int) -> pa.Table:
        # Consecutive parts of one shard read the same upstream output: keep the last few.
        with self._inputs_lock:
            if shard not in self._inputs:
                self._inputs[shard] = self.rundir.read_output(self.spec.upstream, shard, upstream_parts)
                while len(self._inputs) > 2:
                    self._inputs.popitem(last=False)
            self._inputs.move_to_end(shard)
            return self._inputs[shard]

    def run_part(self, shard: int, part: int, upstream_parts: int) -> PartCommit:
        started = time.perf_counter()
        size = self.spec.micro_batch_size
        rows = self._input(shard, upstream_parts).slice(part * size, size)
        batch = from_table(rows, self.stage.input_model)
        result = process_with_retries(self.stage, batch, self.spec.max_row_retries)
        check_reconciles(self.stage, batch, result)
        reasons: dict[str, int] = {}
        for r in result.rejected:
            reasons[r.reason] = reasons.get(r.reason, 0) + 1
        return self.rundir.commit_part(
            self.spec.name,
            shard,
            part,
            to_table(result.accepted, self.stage.output_model),
            to_table(result.rejected, Rejection) if result.rejected else None,
            fingerprint=self.spec.fingerprint,
            rows_in=len(batch),
            rejected_by_reason=reasons,
            elapsed_s=time.perf_counter() - started,
            session=self.session,
            fence=self.fence,
            num_gpus=self.spec.num_gpus,
        )
