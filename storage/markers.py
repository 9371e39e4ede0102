"""The small JSON files that record what a run has committed.

They are the source of truth of a run directory: the manifest is derived from them.
"""

from __future__ import annotations

import time
from collections import Counter

from pydantic import BaseModel, ConfigDict, Field


class _Marker(BaseModel):
    model_config = ConfigDict(extra="forbid")


class FileEntry(_Marker):
    """One committed data file: enough to verify it byte for byte."""

    path: str = Field(description="relative to the run root")
    rows: int
    bytes: int
    sha256: str


class PartCommit(_Marker):
    """Written after the part's data files: its existence is the commit point."""

    stage: str
    shard: int
    part: int
    fingerprint: str
    rows_in: int
    rows_out: int
    rows_rejected: int
    rejected_by_reason: dict[str, int] = {}
    output: FileEntry
    rejected: FileEntry | None = None
    committed_at: float
    elapsed_s: float
    worker: str = Field(description="host:pid of the process that committed the part")
    session: str = Field(description="id of the driver session that dispatched it")
    num_gpus: float | None = Field(None, description="GPUs its actor held (None: not recorded, markers of "
                                   "earlier versions)")

    def files(self) -> list[FileEntry]:
        return [self.output] + ([self.rejected] if self.rejected else [])


class ShardSeal(_Marker):
    """Written last, when every part of a shard is committed."""

    stage: str
    shard: int
    fingerprint: str
    parts: int
    rows_in: int
    rows_out: int
    rows_rejected: int
    rejected_by_reason: dict[str, int] = {}
    sealed_at: float

    @classmethod
    def from_commits(cls, stage: str, shard: int, fingerprint: str, commits: list[PartCommit]) -> "ShardSeal":
        """A shard's seal: the sums of its part commits (in part order)."""
        reasons: Counter[str] = Counter()
        for c in commits:
            reasons.update(c.rejected_by_reason)
        return cls(
            stage=stage, shard=shard, fingerprint=fingerprint, parts=len(commits),
            rows_in=sum(c.rows_in for c in commits), rows_out=sum(c.rows_out for c in commits),
            rows_rejected=sum(c.rows_rejected for c in commits), rejected_by_reason=dict(reasons),
            sealed_at=time.time(),
        )


class StageStamp(_Marker):
    """What produced a stage directory's contents; a different fingerprint invalidates it."""

    stage: str
    kind: str
    fingerprint: str
    shards: int = Field(description="number of shards the stage will seal")
    created_at: float


class ExportMarker(_Marker):
    """Written after every file of an exported dataset."""

    name: str
    stage: str
    fingerprint: str
    files: list[FileEntry]
    rows: int
    exported_at: float


class PoolInfo(_Marker):
    """pool.json of a reference-voice pool, written after its Parquet files."""

    corpora: dict[str, str]  # corpus → root it was built from
    files: list[FileEntry]
    clips: int
    speakers: int
    excluded_by_reason: dict[str, int]
    built_at: float


class RunInfo(_Marker):
    """run.json: everything needed to resume a run without the original config file."""

    config: dict = Field(description="the validated config, secrets excluded")
    seed: int
    fingerprints: dict[str, str] = Field(description="stage name → fingerprint, in run order")
    code_version: str
    created_at: float
    updated_at: float
