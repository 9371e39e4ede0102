"""The input plan: read every source once, give each record its stable id and shard, and
commit the result as the `ingest` stage (sorted by id within a shard).

Planning streams: records are spilled per shard to local temporary Parquet files while
the sources are read, then each shard (small by construction) is sorted and committed.
A plan that completed is never redone; an interrupted one is redone, skipping shards it
already sealed.
"""

from __future__ import annotations

import json
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from actors.sources import SOURCE_FORMATS, SourceItem
from pipeline.config import PipelineConfig
from schemas import Rejection, SourceDialogue, record_id, shard_of, to_table
from storage.markers import ShardSeal
from storage.rundir import RunDir

INGEST = "ingest"
_SPILL_SCHEMA = pa.schema([("id", pa.string()), ("order", pa.int64()), ("rejected", pa.bool_()), ("payload", pa.string())])


def _spill_row(item: SourceItem, source: str) -> tuple[str, bool, str]:
    """(id, rejected?, JSON payload) of one item: the dialogue, or a rejection of it."""
    if item.dialogue is not None:
        return item.dialogue.id, False, item.dialogue.model_dump_json()
    rid = record_id(source, item.location)
    rejection = Rejection(id=rid, stage=INGEST, reason=item.reason, detail=item.detail, record_json=item.raw)
    return rid, True, rejection.model_dump_json()


class _Spill:
    """Per-shard temporary Parquet files, written in bounded batches."""

    def __init__(self, folder: Path, num_shards: int, flush_rows: int = 2048):
        self.folder, self.num_shards, self.flush_rows = folder, num_shards, flush_rows
        self.buffers: dict[int, list[tuple[str, int, bool, str]]] = defaultdict(list)
        self.writers: dict[int, pq.ParquetWriter] = {}
        self.buffered = 0

    def add(self, shard: int, row: tuple[str, int, bool, str]) -> None:
        self.buffers[shard].append(row)
        self.buffered += 1
        if self.buffered >= self.flush_rows:
            self.flush()

    def flush(self) -> None:
        for shard, rows in self.buffers.items():
            if not rows:
                continue
            if shard not in self.writers:
                self.writers[shard] = pq.ParquetWriter(self.folder / f"{shard}.parquet", _SPILL_SCHEMA)
            self.writers[shard].write_table(pa.Table.from_pylist(
                [dict(zip(_SPILL_SCHEMA.names, r)) for r in rows], schema=_SPILL_SCHEMA))
        self.buffers.clear()
        self.buffered = 0

    def close(self) -> None:
        self.flush()
        for writer in self.writers.values():
            writer.close()

    def read(self, shard: int) -> pa.Table:
        path = self.folder / f"{shard}.parquet"
        return pq.read_table(path) if path.exists() else _SPILL_SCHEMA.empty_table()


def _duplicates_rejected(rows: list[dict]) -> list[dict]:
    """Rows sorted by (id, read order); a repeated id is rejected, the first one kept."""
    out, previous = [], None
    for row in rows:
        if not row["rejected"] and row["id"] == previous:
            dialogue = SourceDialogue.model_validate_json(row["payload"])
            rejection = Rejection(
                id=row["id"], stage=INGEST, reason="ingest.duplicate_id",
                detail=f"{dialogue.source} key {dialogue.source_key!r} appears more than once; the first is kept",
                record_json=row["payload"],
            )
            row = {**row, "rejected": True, "payload": rejection.model_dump_json()}
        elif not row["rejected"]:
            previous = row["id"]
        out.append(row)
    return out


def plan_ingest(run_uri: str, config: PipelineConfig, fingerprint: str, session: str, fence: str | None) -> dict[int, ShardSeal]:
    """Commit and seal every ingest shard not sealed yet; return all seals."""
    rundir = RunDir(run_uri)
    sealed = rundir.seals(INGEST)
    if len(sealed) == config.num_shards:
        return sealed
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="speechmed-plan-") as folder:
        spill = _Spill(Path(folder), config.num_shards)
        order = 0
        for source in config.sources:
            for item in SOURCE_FORMATS[source.format](source.name, source.path, source.treatment):
                rid, rejected, payload = _spill_row(item, source.name)
                spill.add(shard_of(rid, config.num_shards), (rid, order, rejected, payload))
                order += 1
        spill.close()
        committed = rundir.commits(INGEST)
        for shard in range(config.num_shards):
            if shard in sealed:
                continue
            rows = sorted(spill.read(shard).to_pylist(), key=lambda r: (r["id"], r["order"]))
            rows = _duplicates_rejected(rows)
            size = config.ingest_part_size
            parts = [rows[i : i + size] for i in range(0, len(rows), size)]
            commits = []
            for part, chunk in enumerate(parts):
                if (shard, part) in committed:
                    commits.append(committed[(shard, part)])
                    continue
                accepted = [SourceDialogue.model_validate_json(r["payload"]) for r in chunk if not r["rejected"]]
                rejections = [Rejection.model_validate_json(r["payload"]) for r in chunk if r["rejected"]]
                reasons: dict[str, int] = defaultdict(int)
                for r in rejections:
                    reasons[r.reason] += 1
                commits.append(rundir.commit_part(
                    INGEST, shard, part, to_table(accepted, SourceDialogue),
                    to_table(rejections, Rejection) if rejections else None,
                    fingerprint=fingerprint, rows_in=len(chunk), rejected_by_reason=dict(reasons),
                    elapsed_s=time.perf_counter() - started, session=session, fence=fence,
                ))
            sealed[shard] = seal_from_commits(INGEST, shard, fingerprint, commits)
            rundir.seal(sealed[shard])
    rundir.write_bytes_rel("plan/plan.json", json.dumps({
        "num_shards": config.num_shards,
        "fingerprint": fingerprint,
        "rows_per_shard": {s: seal.rows_in for s, seal in sorted(sealed.items())},
    }, indent=2).encode())
    return sealed


def seal_from_commits(stage: str, shard: int, fingerprint: str, commits: list) -> ShardSeal:
    """A shard's seal: the sums of its part commits."""
    reasons: dict[str, int] = defaultdict(int)
    for c in commits:
        for reason, n in c.rejected_by_reason.items():
            reasons[reason] += n
    return ShardSeal(
        stage=stage, shard=shard, fingerprint=fingerprint, parts=len(commits),
        rows_in=sum(c.rows_in for c in commits), rows_out=sum(c.rows_out for c in commits),
        rows_rejected=sum(c.rows_rejected for c in commits), rejected_by_reason=dict(reasons),
        sealed_at=time.time(),
    )
