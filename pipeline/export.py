"""Exports: a stage's sealed shards as a Hugging Face-loadable Parquet dataset.

    RUN/datasets/<name>/data/train-00003-of-00008.parquet   one file per shard with rows
    RUN/datasets/<name>/README.md                           dataset card (YAML header + stats)
    RUN/datasets/<name>/_EXPORTED.json                      ExportMarker, written last

`datasets.load_dataset("parquet", data_files="RUN/datasets/<name>/data/*.parquet")` and
`datasets.load_dataset("RUN/datasets/<name>")` both load it with no custom code.
"""

from __future__ import annotations

import time
from collections import Counter

import pyarrow as pa

from pipeline.card import DialogueStats, Sizes, render_card
from storage.markers import ExportMarker, FileEntry, ShardSeal
from storage.rundir import DATASETS, RunDir, parquet_bytes, sha256

EXPORTED = "_EXPORTED.json"


def export_dir(name: str) -> str:
    return f"{DATASETS}/{name}"


def export_stage(
    rundir: RunDir,
    name: str,
    stage: str,
    schema: pa.Schema,
    fingerprint: str,
    num_shards: int,
    all_seals: dict[str, dict[int, ShardSeal]],
) -> ExportMarker:
    """Write (or keep, if already exported from the same fingerprint) one dataset."""
    base = export_dir(name)
    existing = rundir.read_model(f"{base}/{EXPORTED}", ExportMarker)
    if existing is not None and existing.fingerprint == fingerprint:
        return existing
    rundir.invalidate(base)
    seals = all_seals[stage]
    files, stats, rows, arrow_bytes = [], DialogueStats(), 0, 0
    dialogues = "turns" in schema.names
    # One file per shard that has rows: `datasets` refuses to read an empty Parquet file.
    shards = [shard for shard in range(num_shards) if seals[shard].rows_out]
    for index, shard in enumerate(shards):
        table = rundir.read_output(stage, shard, seals[shard].parts, schema)
        rel = f"{base}/data/train-{index:05d}-of-{len(shards):05d}.parquet"
        data = parquet_bytes(table)
        rundir.write_bytes_rel(rel, data)
        files.append(FileEntry(path=rel, rows=table.num_rows, bytes=len(data), sha256=sha256(data)))
        if dialogues:
            stats.add(table.select([c for c in ("source", "treatment", "gender", "age_group", "rewrite_prompt", "turns")
                                    if c in schema.names]).to_pylist())
        rows += table.num_rows
        arrow_bytes += table.nbytes
    rejected = {st: sum((Counter(seal.rejected_by_reason) for seal in st_seals.values()), Counter())
                for st, st_seals in all_seals.items()}
    rundir.write_bytes_rel(f"{base}/README.md", render_card(name, stage, Sizes(rows, arrow_bytes, sum(f.bytes for f in files)), stats, rejected).encode())
    marker = ExportMarker(name=name, stage=stage, fingerprint=fingerprint, files=files, rows=rows, exported_at=time.time())
    rundir.write_model(f"{base}/{EXPORTED}", marker)
    return marker
