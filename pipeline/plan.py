"""The input plan: read every source once, sample, deduplicate, give each record its
stable id and shard, and commit the result as the `ingest` stage.

Planning streams with bounded memory, in two spills to local temporary Parquet files:

1. read the sources; keep a record if a hash of (seed, id) falls under its source's
   `sample_ratio`; spill it to a bucket by hash of its normalised content;
2. per content bucket: records with the same content are duplicates (the smallest id is
   kept, the others rejected naming it); a source's `limit` keeps the lowest sampling
   hashes; then spill each record to its shard by hash of its id;
3. per shard: sort by id, reject repeated ids, commit in parts, seal.

Quarantined items of the adapters are never sampled out: a broken input is always shown.
Counts per source go to plan/plan.json: read = sampled_out + written + rejected + duplicates.
A plan that completed is never redone; an interrupted one is redone, skipping shards it
already sealed.
"""

from __future__ import annotations

import hashlib
import heapq
import json
import re
import tempfile
import time
import unicodedata
from collections import Counter, defaultdict
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from actors.sources import source_format
from pipeline.config import PipelineConfig
from schemas import Rejection, SourceDialogue, shard_of, to_table
from storage.markers import ShardSeal
from storage.rundir import RunDir

INGEST = "ingest"
_SPILL = pa.schema([("id", pa.string()), ("order", pa.int64()), ("source", pa.string()),
                    ("sample", pa.float64()), ("content", pa.string()), ("rejected", pa.bool_()),
                    ("payload", pa.string())])
_NOT_WORD = re.compile(r"[\W_]+", re.UNICODE)


def sample_point(seed: int, record_id: str) -> float:
    """A record's position in [0, 1) for sampling: by id, so independent of file order."""
    digest = hashlib.blake2b(f"{seed}\x00sample\x00{record_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def content_hash(dialogue: SourceDialogue) -> str:
    """Hash of the dialogue's text with case, width, spaces and punctuation normalised."""
    h = hashlib.blake2b(digest_size=12)
    for turn in dialogue.turns:
        text = _NOT_WORD.sub("", unicodedata.normalize("NFKC", turn.text).lower())
        h.update(f"{turn.role}\x00{text}\x00".encode())
    return h.hexdigest()


class _Spill:
    """Rows partitioned into temporary Parquet files, written in bounded batches."""

    def __init__(self, folder: Path, name: str, flush_rows: int = 4096):
        self.folder, self.name, self.flush_rows = folder, name, flush_rows
        self.buffers: dict[int, list[dict]] = defaultdict(list)
        self.writers: dict[int, pq.ParquetWriter] = {}
        self.buffered = 0

    def add(self, bucket: int, row: dict) -> None:
        self.buffers[bucket].append(row)
        self.buffered += 1
        if self.buffered >= self.flush_rows:
            self.flush()

    def flush(self) -> None:
        for bucket, rows in self.buffers.items():
            if bucket not in self.writers:
                self.writers[bucket] = pq.ParquetWriter(self.folder / f"{self.name}-{bucket}.parquet", _SPILL)
            self.writers[bucket].write_table(pa.Table.from_pylist(rows, schema=_SPILL))
        self.buffers.clear()
        self.buffered = 0

    def close(self) -> None:
        self.flush()
        for writer in self.writers.values():
            writer.close()

    def read(self, bucket: int) -> list[dict]:
        path = self.folder / f"{self.name}-{bucket}.parquet"
        return pq.read_table(path).to_pylist() if path.exists() else []


def _rejection_row(row: dict, reason: str, detail: str) -> dict:
    rejection = Rejection(id=row["id"], stage=INGEST, reason=reason, detail=detail, record_json=row["payload"])
    return {**row, "rejected": True, "payload": rejection.model_dump_json()}


class _Counts:
    def __init__(self) -> None:
        self.by_source: dict[str, Counter] = defaultdict(Counter)

    def add(self, source: str, what: str, n: int = 1) -> None:
        self.by_source[source][what] += n


def _read_and_sample(config: PipelineConfig, spill: _Spill, counts: _Counts, limits: dict[str, list]) -> None:
    order = 0
    for source in config.sources:
        ref = source.ref()
        for item in source_format(source.format)().items(ref):
            counts.add(ref.name, "read")
            if item.dialogue is None:
                rejection = item.rejection(ref.name)
                row = {"id": rejection.id, "order": order, "source": ref.name, "sample": 0.0, "content": rejection.id,
                       "rejected": True, "payload": rejection.model_dump_json()}
            else:
                point = sample_point(config.seed, item.dialogue.id)
                if point >= source.sample_ratio:
                    counts.add(ref.name, "sampled_out")
                    continue
                if source.limit is not None:
                    heap = limits[ref.name]  # the `limit` lowest points seen, as a max-heap
                    entry = (-point, item.dialogue.id)
                    if len(heap) < source.limit:
                        heapq.heappush(heap, entry)
                    elif entry > heap[0]:
                        heapq.heapreplace(heap, entry)
                row = {"id": item.dialogue.id, "order": order, "source": ref.name, "sample": point,
                       "content": content_hash(item.dialogue), "rejected": False,
                       "payload": item.dialogue.model_dump_json()}
            spill.add(shard_of(row["content"], config.num_shards), row)
            order += 1


def _dedup_and_limit(config: PipelineConfig, buckets: _Spill, shards: _Spill, counts: _Counts, cutoffs: dict[str, tuple]) -> None:
    for bucket in range(config.num_shards):
        rows = sorted(buckets.read(bucket), key=lambda r: (r["content"], r["id"], r["order"]))
        kept_by_content: dict[str, str] = {}
        for row in rows:
            if not row["rejected"]:
                cutoff = cutoffs.get(row["source"])
                if cutoff is not None and (row["sample"], row["id"]) > cutoff:
                    counts.add(row["source"], "sampled_out")
                    continue
                first = kept_by_content.setdefault(row["content"], row["id"])
                if first != row["id"]:
                    row = _rejection_row(row, "ingest.duplicate_content", f"same content as {first}")
            shards.add(shard_of(row["id"], config.num_shards), row)


_DUPLICATE_REASONS = ("ingest.duplicate_id", "ingest.duplicate_content")


def _finalise_shard(rows: list[dict], counts: _Counts) -> list[dict]:
    """Sort a shard's rows by id, reject repeated ids (the first read is kept), count."""
    rows = sorted(rows, key=lambda r: (r["id"], r["order"]))
    previous = None
    for i, row in enumerate(rows):
        if not row["rejected"] and row["id"] == previous:
            dialogue = SourceDialogue.model_validate_json(row["payload"])
            rows[i] = _rejection_row(row, "ingest.duplicate_id",
                                     f"{dialogue.source} key {dialogue.source_key!r} appears more than once; the first is kept")
        elif not row["rejected"]:
            previous = row["id"]
    for row in rows:
        if not row["rejected"]:
            counts.add(row["source"], "written")
        else:
            duplicate = json.loads(row["payload"])["reason"] in _DUPLICATE_REASONS
            counts.add(row["source"], "duplicates" if duplicate else "rejected")
    return rows


def _commit_shard(rundir: RunDir, config: PipelineConfig, shard: int, rows: list[dict], fingerprint: str,
                  session: str, fence: str | None, started: float) -> ShardSeal:
    committed = rundir.commits(INGEST, shard)
    size = config.ingest_part_size
    commits = []
    for part, start in enumerate(range(0, len(rows), size)):
        if (shard, part) in committed:
            commits.append(committed[(shard, part)])
            continue
        chunk = rows[start : start + size]
        accepted = [SourceDialogue.model_validate_json(r["payload"]) for r in chunk if not r["rejected"]]
        rejections = [Rejection.model_validate_json(r["payload"]) for r in chunk if r["rejected"]]
        commits.append(rundir.commit_part(
            INGEST, shard, part, to_table(accepted, SourceDialogue),
            to_table(rejections, Rejection) if rejections else None,
            fingerprint=fingerprint, rows_in=len(chunk),
            rejected_by_reason=dict(Counter(r.reason for r in rejections)),
            elapsed_s=time.perf_counter() - started, session=session, fence=fence,
        ))
    seal = ShardSeal.from_commits(INGEST, shard, fingerprint, commits)
    rundir.seal(seal)
    return seal


def plan_ingest(run_uri: str, config: PipelineConfig, fingerprint: str, session: str, fence: str | None) -> dict[int, ShardSeal]:
    """Commit and seal every ingest shard not sealed yet; return all seals."""
    rundir = RunDir(run_uri)
    sealed = rundir.seals(INGEST)
    if len(sealed) == config.num_shards:
        return sealed
    started = time.perf_counter()
    counts = _Counts()
    with tempfile.TemporaryDirectory(prefix="speechmed-plan-") as folder:
        buckets = _Spill(Path(folder), "content")
        limits: dict[str, list] = defaultdict(list)
        _read_and_sample(config, buckets, counts, limits)
        buckets.close()
        cutoffs = {s.name: (-limits[s.name][0][0], limits[s.name][0][1])
                   for s in config.sources if s.limit is not None and len(limits[s.name]) >= s.limit}
        shards = _Spill(Path(folder), "shard")
        _dedup_and_limit(config, buckets, shards, counts, cutoffs)
        shards.close()
        for shard in range(config.num_shards):
            rows = _finalise_shard(shards.read(shard), counts)
            if shard not in sealed:
                sealed[shard] = _commit_shard(rundir, config, shard, rows, fingerprint, session, fence, started)
    rundir.write_bytes_rel("plan/plan.json", json.dumps({
        "num_shards": config.num_shards,
        "fingerprint": fingerprint,
        "sources": {name: dict(c) for name, c in counts.by_source.items()},
        "rows_per_shard": {s: seal.rows_in for s, seal in sorted(sealed.items())},
    }, indent=2).encode())
    return sealed
