"""The run directory: committed parts, shard seals, stage stamps, run.json.

Layout (any pyarrow.fs URI):

    RUN/run.json                                       RunInfo
    RUN/_LOCK                                          the driver's lock (storage.lock)
    RUN/<stage>/_STAGE.json                            StageStamp: fingerprint of the contents
    RUN/<stage>/shard-00042/part-00003.parquet         accepted rows of one micro-batch
    RUN/<stage>/rejected/shard-00042/part-00003.parquet  its quarantined rows (if any)
    RUN/<stage>/shard-00042/part-00003.commit.json     PartCommit, written after both files
    RUN/<stage>/shard-00042/_SEALED                    ShardSeal, written after every part
    RUN/manifest.parquet                               derived index (storage.manifest)
    RUN/datasets/<name>/...                            exports

A part is committed exactly when its commit marker exists and names files that exist with
the recorded sizes. Names are deterministic, so redoing a part overwrites it.
"""

from __future__ import annotations

import hashlib
import os
import re
import socket
import time
from collections.abc import Iterator
from typing import TypeVar

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
from pydantic import BaseModel

from storage.fs import Location, exists, is_temp, list_files, read_bytes, resolve, write_bytes
from storage.lock import RunLock, holds_lock
from storage.markers import FileEntry, PartCommit, RunInfo, ShardSeal, StageStamp

RUN_JSON = "run.json"
STAGE_STAMP = "_STAGE.json"
SEALED = "_SEALED"
COMMIT_SUFFIX = ".commit.json"
MANIFEST = "manifest.parquet"
DATASETS = "datasets"

_PART_RE = re.compile(r"(?:^|/)(?:rejected/)?shard-(\d{5})/part-(\d{5})(\.parquet|\.commit\.json)$")
M = TypeVar("M", bound=BaseModel)


class CommitRefused(RuntimeError):
    """A worker tried to commit for a driver that no longer holds the run lock."""


def _leaf_columns(field: pa.Field, prefix: str = "") -> Iterator[tuple[str, pa.DataType]]:
    """(Parquet column path, type) of every leaf under `field` (`audio.bytes`, `coughs.list.element.clip_id`)."""
    name, kind = prefix + field.name, field.type
    if pa.types.is_struct(kind):
        for child in kind:
            yield from _leaf_columns(child, f"{name}.")
    elif pa.types.is_list(kind) or pa.types.is_large_list(kind):
        yield from _leaf_columns(kind.value_field, f"{name}.list.")
    else:
        yield name, kind


def parquet_bytes(table: pa.Table) -> bytes:
    """Serialise a table, zstd-compressed except binary columns (FLAC audio): encoded audio
    does not compress (0.3% of its bytes), and zstd over it was two thirds of the write's
    CPU. Dictionary encoding is off for them too, where it costs time and saves nothing."""
    dictionary = [f.name for f in table.schema if "binary" not in str(f.type)]
    compression = {path: "none" if pa.types.is_binary(kind) or pa.types.is_large_binary(kind) else "zstd"
                   for field in table.schema for path, kind in _leaf_columns(field)}
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, use_dictionary=dictionary, compression=compression)
    return sink.getvalue().to_pybytes()


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class RunDir:
    """All reads and writes of one run directory go through here."""

    def __init__(self, uri: str):
        self.loc: Location = resolve(uri)

    @property
    def uri(self) -> str:
        return self.loc.uri

    # -- paths (relative to the run root) --------------------------------------------
    @staticmethod
    def shard_dir(stage: str, shard: int) -> str:
        return f"{stage}/shard-{shard:05d}"

    def part_path(self, stage: str, shard: int, part: int) -> str:
        return f"{self.shard_dir(stage, shard)}/part-{part:05d}.parquet"

    def rejected_path(self, stage: str, shard: int, part: int) -> str:
        return f"{stage}/rejected/shard-{shard:05d}/part-{part:05d}.parquet"

    def commit_path(self, stage: str, shard: int, part: int) -> str:
        return f"{self.shard_dir(stage, shard)}/part-{part:05d}{COMMIT_SUFFIX}"

    def seal_path(self, stage: str, shard: int) -> str:
        return f"{self.shard_dir(stage, shard)}/{SEALED}"

    def abs(self, rel: str) -> str:
        return self.loc.path(rel)

    # -- small JSON documents ----------------------------------------------------------
    def read_model(self, rel: str, model: type[M]) -> M | None:
        try:
            return model.model_validate_json(read_bytes(self.loc, self.abs(rel)))
        except FileNotFoundError:
            return None

    def write_model(self, rel: str, value: BaseModel) -> None:
        write_bytes(self.loc, self.abs(rel), value.model_dump_json(indent=2).encode())

    def write_bytes_rel(self, rel: str, data: bytes) -> None:
        write_bytes(self.loc, self.abs(rel), data)

    def delete_rel(self, rel: str) -> None:
        """Delete one file of the run if it is there."""
        if exists(self.loc, self.abs(rel)):
            self.loc.fs.delete_file(self.abs(rel))

    def read_bytes_rel(self, rel: str) -> bytes:
        return read_bytes(self.loc, self.abs(rel))

    def exists(self) -> bool:
        return self.read_model(RUN_JSON, RunInfo) is not None

    def run_info(self) -> RunInfo | None:
        return self.read_model(RUN_JSON, RunInfo)

    def lock(self, **kwargs: float) -> RunLock:
        return RunLock(self.loc, **kwargs)

    # -- stage stamps ------------------------------------------------------------------
    def stamp(self, stage: str) -> StageStamp | None:
        return self.read_model(f"{stage}/{STAGE_STAMP}", StageStamp)

    def write_stamp(self, stamp: StageStamp) -> None:
        self.write_model(f"{stamp.stage}/{STAGE_STAMP}", stamp)

    def invalidate(self, stage: str) -> None:
        """Delete a stage's outputs (its fingerprint changed)."""
        path = self.abs(stage)
        if list_files(self.loc, path):
            self.loc.fs.delete_dir(path)

    # -- parts -------------------------------------------------------------------------
    def _write_data(self, rel: str, table: pa.Table) -> FileEntry:
        data = parquet_bytes(table)
        write_bytes(self.loc, self.abs(rel), data)
        return FileEntry(path=rel, rows=table.num_rows, bytes=len(data), sha256=sha256(data))

    def commit_part(
        self,
        stage: str,
        shard: int,
        part: int,
        output: pa.Table,
        rejected: pa.Table | None,
        *,
        fingerprint: str,
        rows_in: int,
        rejected_by_reason: dict[str, int],
        elapsed_s: float,
        session: str,
        fence: str | None,
        num_gpus: float | None = None,
    ) -> PartCommit:
        """Write a micro-batch's accepted and rejected rows, then its commit marker.

        Until the marker exists the part does not count; a crash before it leaves only
        leftovers that `clean_uncommitted` removes. With `fence`, nothing is written unless
        that token holds the run lock, and the marker only if it still does after the data:
        a stale worker must not overwrite a part the lock's new holder has committed.
        """
        self._check_fence(stage, shard, part, fence)
        out_entry = self._write_data(self.part_path(stage, shard, part), output)
        rej_entry = None
        if rejected is not None and rejected.num_rows:
            rej_entry = self._write_data(self.rejected_path(stage, shard, part), rejected)
        else:
            # An earlier attempt of this part may have rejected rows; its file is not ours.
            stale = self.abs(self.rejected_path(stage, shard, part))
            if exists(self.loc, stale):
                self.loc.fs.delete_file(stale)
        commit = PartCommit(
            stage=stage,
            shard=shard,
            part=part,
            fingerprint=fingerprint,
            rows_in=rows_in,
            rows_out=output.num_rows,
            rows_rejected=rej_entry.rows if rej_entry else 0,
            rejected_by_reason=rejected_by_reason,
            output=out_entry,
            rejected=rej_entry,
            committed_at=time.time(),
            elapsed_s=elapsed_s,
            worker=f"{socket.gethostname()}:{os.getpid()}",
            session=session,
            num_gpus=num_gpus,
        )
        self._check_fence(stage, shard, part, fence)
        self.write_model(self.commit_path(stage, shard, part), commit)
        return commit

    def _check_fence(self, stage: str, shard: int, part: int, fence: str | None) -> None:
        if fence is not None and not holds_lock(self.loc, fence):
            raise CommitRefused(
                f"{stage} shard {shard} part {part}: the driver that dispatched it no longer "
                f"holds the lock of {self.uri}; not committing"
            )

    def commits(self, stage: str, shard: int | None = None) -> dict[tuple[int, int], PartCommit]:
        """Valid commit markers of a stage (or one shard): {(shard, part): commit}."""
        base = self.abs(self.shard_dir(stage, shard) if shard is not None else stage)
        files = list_files(self.loc, base)
        if shard is not None:
            files |= list_files(self.loc, self.abs(f"{stage}/rejected/shard-{shard:05d}"))
        found: dict[tuple[int, int], PartCommit] = {}
        for path in files:
            if not path.endswith(COMMIT_SUFFIX) or is_temp(path):
                continue
            commit = self._valid_commit(path, files)
            if commit is not None:
                found[(commit.shard, commit.part)] = commit
        return found

    def _valid_commit(self, path: str, files: dict[str, int]) -> PartCommit | None:
        try:
            commit = PartCommit.model_validate_json(read_bytes(self.loc, path))
        except (FileNotFoundError, ValueError):
            return None
        for entry in commit.files():
            if files.get(self.abs(entry.path)) != entry.bytes:
                return None
        return commit

    def read_output(self, stage: str, shard: int, parts: int, schema: pa.Schema | None = None) -> pa.Table:
        """A sealed shard's accepted rows, in part order (`schema` for a shard of no parts)."""
        tables = [
            pq.read_table(self.abs(self.part_path(stage, shard, p)), filesystem=self.loc.fs)
            for p in range(parts)
        ]
        if not tables:
            return (schema or pa.schema([])).empty_table()
        return pa.concat_tables(tables)

    def read_rejected(self, stage: str) -> pa.Table | None:
        tables = [
            pq.read_table(self.abs(c.rejected.path), filesystem=self.loc.fs)
            for _, c in sorted(self.commits(stage).items())
            if c.rejected is not None
        ]
        return pa.concat_tables(tables) if tables else None

    # -- seals -------------------------------------------------------------------------
    def seal(self, seal: ShardSeal) -> None:
        self.write_model(self.seal_path(seal.stage, seal.shard), seal)

    def seals(self, stage: str) -> dict[int, ShardSeal]:
        found = {}
        for path in list_files(self.loc, self.abs(stage)):
            if path.endswith(f"/{SEALED}"):
                seal = ShardSeal.model_validate_json(read_bytes(self.loc, path))
                found[seal.shard] = seal
        return found

    # -- leftovers -----------------------------------------------------------------------
    def clean_uncommitted(self, stage: str) -> list[str]:
        """Delete a stage's temp files, data files no valid marker names, and invalid
        markers. Only run while holding the lock: a live writer's temp file looks the same."""
        files = list_files(self.loc, self.abs(stage))
        keep: set[str] = set()
        for c in self.commits(stage).values():
            keep.add(self.abs(self.commit_path(stage, c.shard, c.part)))
            keep.update(self.abs(f.path) for f in c.files())
        removed = []
        for path in files:
            rel = self.loc.rel(path)
            if is_temp(path) or (_PART_RE.search(rel) is not None and path not in keep):
                self.loc.fs.delete_file(path)
                removed.append(rel)
        return removed

    def clean_temp_files(self) -> list[str]:
        """Delete every temporary file in the run (a driver killed mid-write leaves them,
        e.g. beside run.json or in an export). Only run while holding the lock."""
        removed = []
        for path in list_files(self.loc, self.loc.root):
            if is_temp(path):
                self.loc.fs.delete_file(path)
                removed.append(self.loc.rel(path))
        return removed

    def stages_on_disk(self) -> list[str]:
        """Top-level directories that carry a stage stamp."""
        selector = pafs.FileSelector(self.loc.root, allow_not_found=True)
        dirs = [i.base_name for i in self.loc.fs.get_file_info(selector) if i.type == pafs.FileType.Directory]
        return sorted(d for d in dirs if self.stamp(d) is not None)
