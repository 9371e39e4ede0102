"""manifest.parquet: one row per committed part, derived from the commit markers.

The markers are the truth; the manifest is a compact index of them that can be rebuilt at
any time (`speechmed manifest RUN`) and read by any Parquet tool.
"""

from __future__ import annotations

from collections.abc import Collection

import pyarrow as pa

from storage.markers import PartCommit
from storage.rundir import MANIFEST, RunDir, parquet_bytes

MANIFEST_SCHEMA = pa.schema([
    ("stage", pa.string()), ("shard", pa.int32()), ("part", pa.int32()),
    ("rows_in", pa.int64()), ("rows_out", pa.int64()), ("rows_rejected", pa.int64()),
    ("path", pa.string()), ("bytes", pa.int64()), ("sha256", pa.string()),
    ("rejected_path", pa.string()), ("fingerprint", pa.string()), ("sealed", pa.bool_()),
    ("committed_at", pa.float64()), ("elapsed_s", pa.float64()),
    ("worker", pa.string()), ("session", pa.string()),
])


def manifest_rows(stage: str, commits: dict[tuple[int, int], PartCommit], sealed: Collection[int]) -> list[dict]:
    """The manifest's rows of one stage, from its commit markers and its sealed shards."""
    return [{
        "stage": stage, "shard": shard, "part": part,
        "rows_in": c.rows_in, "rows_out": c.rows_out, "rows_rejected": c.rows_rejected,
        "path": c.output.path, "bytes": c.output.bytes, "sha256": c.output.sha256,
        "rejected_path": c.rejected.path if c.rejected else None,
        "fingerprint": c.fingerprint, "sealed": shard in sealed,
        "committed_at": c.committed_at, "elapsed_s": c.elapsed_s,
        "worker": c.worker, "session": c.session,
    } for (shard, part), c in sorted(commits.items())]


def build_manifest(rundir: RunDir, stages: list[str]) -> pa.Table:
    rows = [row for stage in stages for row in manifest_rows(stage, rundir.commits(stage), rundir.seals(stage))]
    return pa.Table.from_pylist(rows, schema=MANIFEST_SCHEMA)


def write_manifest(rundir: RunDir, stages: list[str]) -> pa.Table:
    table = build_manifest(rundir, stages)
    rundir.write_bytes_rel(MANIFEST, parquet_bytes(table))
    return table
