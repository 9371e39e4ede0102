"""Exports: a stage's sealed shards as a Hugging Face-loadable Parquet dataset.

    RUN/datasets/<name>/data/train-00003-of-00008.parquet   one file per shard with rows
    RUN/datasets/<name>/README.md                           dataset card (YAML header + stats)
    RUN/datasets/<name>/plots/*.png                         the card's plots (pipeline.plots)
    RUN/datasets/<name>/sharegpt/train.jsonl, train.json    (spoken datasets, `sharegpt: true`)
    RUN/datasets/<name>/sharegpt/audio/<turn id>.flac       the audio those files point to
    RUN/datasets/<name>/_EXPORTED.json                      ExportMarker, written last

`datasets.load_dataset("parquet", data_files="RUN/datasets/<name>/data/*.parquet")` and
`datasets.load_dataset("RUN/datasets/<name>")` both load it with no custom code: an `audio`
column in the HF `Audio` layout carries the `Audio(sampling_rate=16000)` feature in the
Parquet schema metadata, so it comes back as an `Audio` column.

The ShareGPT files are for the SpeechMedAssist training scripts: one dialogue a record,
`conversations` alternating `human` / `gpt`, each spoken turn with a `speech` path
(relative to the `sharegpt` folder) and doctor turns with their `unit`s when present.
`train.json` holds the same records as one JSON array, the form those scripts `json.load`.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from actors.audio import RATE
from pipeline.card import DialogueStats, Sizes, SpeechStats, render_card
from pipeline.plots import card_plots, render
from storage.markers import ExportMarker, FileEntry, ShardSeal
from storage.rundir import DATASETS, RunDir, parquet_bytes, sha256

EXPORTED = "_EXPORTED.json"
SHAREGPT = "sharegpt"
# The `datasets` Audio feature's storage type; a column of exactly this type is declared
# an Audio column in the file's metadata (from_arrow_schema compares the field itself).
AUDIO_TYPE = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
_AUDIO_FIELDS = {"bytes", "path"}


class NotExported(Exception):
    """A dataset a consumer needs has not been exported (and sealed) in the run."""


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
    *,
    sharegpt_from: str | None = None,
) -> ExportMarker:
    """Write (or keep, if already exported from the same fingerprint) one dataset.

    `sharegpt_from`: the stage whose dialogues the spoken turns of `stage` were made from;
    given, the ShareGPT files are written too."""
    base = export_dir(name)
    fingerprint = f"{fingerprint}+{SHAREGPT}" if sharegpt_from else fingerprint
    existing = rundir.read_model(f"{base}/{EXPORTED}", ExportMarker)
    if existing is not None and existing.fingerprint == fingerprint:
        return existing
    rundir.invalidate(base)
    seals = all_seals[stage]
    files: list[FileEntry] = []
    stats, speech = DialogueStats(), SpeechStats()
    rows = arrow_bytes = 0
    sharegpt: list[dict[str, Any]] = []
    # One file per shard that has rows: `datasets` refuses to read an empty Parquet file.
    shards = [shard for shard in range(num_shards) if seals[shard].rows_out]
    for index, shard in enumerate(shards):
        table = with_audio_features(rundir.read_output(stage, shard, seals[shard].parts, schema))
        files.append(_write(rundir, f"{base}/data/train-{index:05d}-of-{len(shards):05d}.parquet",
                            parquet_bytes(table), table.num_rows))
        if "turns" in schema.names:
            stats.add(table.select([c for c in ("source", "treatment", "gender", "age_group", "rewrite_prompt", "turns")
                                    if c in schema.names]).to_pylist())
        if "audio" in schema.names:
            speech.add(table.drop_columns([c for c in ("audio", "noisy") if c in schema.names]).to_pylist())
        if sharegpt_from:
            turns = table.drop_columns([c for c in ("noisy",) if c in schema.names]).to_pylist()
            for turn in turns:
                files.append(_write(rundir, f"{base}/{SHAREGPT}/{_audio_path(turn)}", turn["audio"]["bytes"], 1))
            dialogues = rundir.read_output(sharegpt_from, shard, all_seals[sharegpt_from][shard].parts)
            sharegpt.extend(sharegpt_records(dialogues.select(["id", "turns"]).to_pylist(), turns))
        rows += table.num_rows
        arrow_bytes += table.nbytes
    if sharegpt_from:
        lines = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in sharegpt)
        files.append(_write(rundir, f"{base}/{SHAREGPT}/train.jsonl", lines.encode(), len(sharegpt)))
        files.append(_write(rundir, f"{base}/{SHAREGPT}/train.json",
                            json.dumps(sharegpt, ensure_ascii=False, indent=1).encode(), len(sharegpt)))
    rejected = {st: sum((Counter(seal.rejected_by_reason) for seal in st_seals.values()), Counter())
                for st, st_seals in all_seals.items()}
    parquet_size = sum(f.bytes for f in files if f.path.endswith(".parquet"))
    plots = card_plots(stats, speech, rejected)
    for plot in plots:
        files.append(_write(rundir, f"{base}/{plot.path}", render(plot), 1))
    card = render_card(name, stage, Sizes(rows, arrow_bytes, parquet_size), stats, rejected, speech,
                       {plot.file: plot.alt for plot in plots})
    files.append(_write(rundir, f"{base}/README.md", card.encode(), 1))  # checksummed too: `speechmed verify`
    marker = ExportMarker(name=name, stage=stage, fingerprint=fingerprint, files=files, rows=rows, exported_at=time.time())
    rundir.write_model(f"{base}/{EXPORTED}", marker)
    return marker


def _write(rundir: RunDir, rel: str, data: bytes, rows: int) -> FileEntry:
    rundir.write_bytes_rel(rel, data)
    return FileEntry(path=rel, rows=rows, bytes=len(data), sha256=sha256(data))


def with_audio_features(table: pa.Table) -> pa.Table:
    """Declare the top-level HF-`Audio`-layout columns as `Audio(sampling_rate=16000)`.

    They are cast to the feature's own storage type (nullable fields), which `datasets`
    requires before it trusts the metadata."""
    audio = [f.name for f in table.schema
             if pa.types.is_struct(f.type) and {c.name for c in f.type} == _AUDIO_FIELDS]
    if not audio:
        return table
    fields = [pa.field(f.name, AUDIO_TYPE) if f.name in audio else f for f in table.schema]
    features = {name: {"sampling_rate": RATE, "_type": "Audio"} for name in audio}
    metadata = {**(table.schema.metadata or {}), b"huggingface": json.dumps({"info": {"features": features}}).encode()}
    return table.cast(pa.schema(fields, metadata=metadata))


def _audio_path(turn: dict[str, Any]) -> str:
    return f"audio/{turn['id']}.flac"


def sharegpt_records(dialogues: list[dict[str, Any]], turns: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """ShareGPT records of the dialogues that have spoken turns (the others were rejected).

    The text is the dialogue's written turn; a spoken turn adds `speech` (its audio file)
    and, for a doctor turn with units, `unit`. Patient turns are `human`, doctor turns `gpt`."""
    spoken: dict[str, dict[int, dict[str, Any]]] = {}
    for turn in turns:
        spoken.setdefault(turn["dialogue_id"], {})[turn["turn_index"]] = turn
    records = []
    for dialogue in dialogues:
        by_index = spoken.get(dialogue["id"])
        if not by_index:
            continue
        conversations = []
        for index, turn in enumerate(dialogue["turns"]):
            entry: dict[str, Any] = {"from": "human" if turn["role"] == "patient" else "gpt", "value": turn["text"]}
            if index in by_index:
                entry["speech"] = _audio_path(by_index[index])
                if by_index[index].get("units") is not None:
                    entry["unit"] = by_index[index]["units"]
            conversations.append(entry)
        records.append({"id": dialogue["id"], "conversations": conversations})
    return records


def read_export(rundir: RunDir, name: str, columns: list[str] | None = None) -> pa.Table:
    """The rows of an exported dataset, after checking every data file against its marker;
    with `columns`, only those of them the dataset has (audio-free reads skip `noisy`).

    Raises `NotExported` when the run has no sealed export of that name (the marker is
    written last, so a half-written export has none) or a file does not match."""
    marker = rundir.read_model(f"{export_dir(name)}/{EXPORTED}", ExportMarker)
    if marker is None:
        raise NotExported(f"{rundir.uri} has no exported {name} (no {export_dir(name)}/{EXPORTED}); run or resume "
                          f"the pipeline with an `exports` entry for {name} until every stage is sealed")
    tables = []
    for entry in marker.files:
        if not entry.path.endswith(".parquet"):
            continue
        data = rundir.read_bytes_rel(entry.path)
        if len(data) != entry.bytes or sha256(data) != entry.sha256:
            raise NotExported(f"{rundir.abs(entry.path)} does not match {name}'s export marker (size or checksum); "
                              "run `speechmed verify` and re-export by resuming the run")
        parquet = pq.ParquetFile(pa.BufferReader(data))
        wanted = None if columns is None else [c for c in columns if c in parquet.schema_arrow.names]
        tables.append(parquet.read(columns=wanted))
    return pa.concat_tables(tables) if tables else pa.table({})
