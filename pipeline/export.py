"""Exports: a stage's sealed shards as a Hugging Face-loadable Parquet dataset.

    RUN/datasets/<name>/data/train-00003-of-00008.parquet   one file per shard
    RUN/datasets/<name>/README.md                           dataset card (YAML header + stats)
    RUN/datasets/<name>/_EXPORTED.json                      ExportMarker, written last

`datasets.load_dataset("parquet", data_files="RUN/datasets/<name>/data/*.parquet")` and
`datasets.load_dataset("RUN/datasets/<name>")` both load it with no custom code.
"""

from __future__ import annotations

import time
from collections import Counter

import pyarrow as pa
import pyarrow.compute as pc

from storage.markers import ExportMarker, FileEntry, ShardSeal
from storage.rundir import DATASETS, RunDir, parquet_bytes, sha256

EXPORTED = "_EXPORTED.json"


def export_dir(name: str) -> str:
    return f"{DATASETS}/{name}"


def _dialogue_stats(table: pa.Table, stats: Counter) -> None:
    """Accumulate turn and character counts when the rows are dialogues."""
    if "turns" not in table.column_names or table.num_rows == 0:
        return
    turns = table.column("turns")
    stats["dialogues"] += table.num_rows
    stats["turns"] += pc.sum(pc.list_value_length(turns)).as_py() or 0
    texts = pc.struct_field(pc.list_flatten(turns), "text")
    stats["characters"] += pc.sum(pc.utf8_length(texts)).as_py() or 0


def _card(name: str, stage: str, rows: int, stats: Counter, seals: dict[str, dict[int, ShardSeal]]) -> str:
    rejected: Counter = Counter()
    for stage_seals in seals.values():
        for seal in stage_seals.values():
            rejected.update(seal.rejected_by_reason)
    lines = [
        "---",
        "configs:",
        "- config_name: default",
        "  data_files:",
        "  - split: train",
        "    path: data/*.parquet",
        "---",
        f"# {name}",
        "",
        f"Exported by speechmed from stage `{stage}`: {rows} rows.",
        "",
    ]
    if stats["dialogues"]:
        lines += [
            "| statistic | value |",
            "|---|---|",
            f"| dialogues | {stats['dialogues']} |",
            f"| turns per dialogue | {stats['turns'] / stats['dialogues']:.2f} |",
            f"| characters per turn | {stats['characters'] / max(stats['turns'], 1):.1f} |",
            "",
        ]
    if rejected:
        lines += ["Rejected upstream, by reason:", "", "| reason | rows |", "|---|---|"]
        lines += [f"| {reason} | {n} |" for reason, n in sorted(rejected.items())]
        lines.append("")
    return "\n".join(lines)


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
    files, stats, rows = [], Counter(), 0
    for shard in range(num_shards):
        table = rundir.read_output(stage, shard, seals[shard].parts, schema)
        rel = f"{base}/data/train-{shard:05d}-of-{num_shards:05d}.parquet"
        data = parquet_bytes(table)
        rundir.write_bytes_rel(rel, data)
        files.append(FileEntry(path=rel, rows=table.num_rows, bytes=len(data), sha256=sha256(data)))
        _dialogue_stats(table, stats)
        rows += table.num_rows
    rundir.write_bytes_rel(f"{base}/README.md", _card(name, stage, rows, stats, all_seals).encode())
    marker = ExportMarker(name=name, stage=stage, fingerprint=fingerprint, files=files, rows=rows, exported_at=time.time())
    rundir.write_model(f"{base}/{EXPORTED}", marker)
    return marker
