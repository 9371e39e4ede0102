"""Building and reading a reference-voice pool folder (`speechmed voices build / show`).

    POOL/voices.parquet     one VoiceReference per usable clip, in corpus and transcript order
    POOL/excluded.parquet   one Rejection per clip or metadata line left out, with the reason
    POOL/pool.json          PoolInfo: sources, counts, checksums; written last

The pool is built once and named by runs' configs; a local path or any pyarrow.fs URI.
"""

from __future__ import annotations

import io
import time
from collections import Counter

import pyarrow as pa
import pyarrow.parquet as pq

from actors.voices.aishell import Corpus
from actors.voices.pool import pool_entries
from schemas import Rejection, VoiceReference, arrow_schema, from_table, to_table
from storage.fs import read_bytes, resolve, write_bytes
from storage.markers import FileEntry, PoolInfo
from storage.rundir import parquet_bytes, sha256

VOICES, EXCLUDED, INFO = "voices.parquet", "excluded.parquet", "pool.json"
_BATCH = 10_000


def build_pool(corpora: dict[Corpus, str], out: str) -> PoolInfo:
    """Read every corpus root given, write the pool folder, return its PoolInfo."""
    loc = resolve(out)
    voices: list[pa.Table] = []
    excluded: list[Rejection] = []
    pending: list[VoiceReference] = []
    for corpus, root in corpora.items():
        for entry in pool_entries(corpus, root):
            if isinstance(entry, Rejection):
                excluded.append(entry)
                continue
            pending.append(entry)
            if len(pending) == _BATCH:  # Arrow holds a million clips in tens of MB; models would not
                voices.append(to_table(pending, VoiceReference))
                pending = []
    voices.append(to_table(pending, VoiceReference))
    table = pa.concat_tables(voices)
    files = []
    for name, data in ((VOICES, parquet_bytes(table)), (EXCLUDED, parquet_bytes(to_table(excluded, Rejection)))):
        write_bytes(loc, loc.path(name), data)
        files.append(FileEntry(path=name, rows=table.num_rows if name == VOICES else len(excluded), bytes=len(data),
                               sha256=sha256(data)))
    info = PoolInfo(corpora=dict(corpora), files=files, clips=table.num_rows,
                    speakers=len(set(table.column("speaker_id").to_pylist())),
                    excluded_by_reason=dict(Counter(r.reason for r in excluded)), built_at=time.time())
    write_bytes(loc, loc.path(INFO), info.model_dump_json(indent=2).encode())
    return info


def read_pool_info(pool: str) -> PoolInfo:
    loc = resolve(pool)
    try:
        return PoolInfo.model_validate_json(read_bytes(loc, loc.path(INFO)))
    except FileNotFoundError:
        raise FileNotFoundError(f"{pool}: not a voice pool (no {INFO}); build one with `speechmed voices build`") from None


def read_voices(pool: str) -> pa.Table:
    """The pool's clips as an Arrow table (checked against pool.json)."""
    info = read_pool_info(pool)
    loc = resolve(pool)
    data = read_bytes(loc, loc.path(VOICES))
    entry = next(f for f in info.files if f.path == VOICES)
    if sha256(data) != entry.sha256:
        raise ValueError(f"{pool}/{VOICES}: checksum differs from pool.json; rebuild the pool")
    return pq.read_table(io.BytesIO(data), schema=arrow_schema(VoiceReference))


def voices(pool: str) -> list[VoiceReference]:
    return from_table(read_voices(pool), VoiceReference)
