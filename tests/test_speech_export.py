"""SpeechMedDataset: the synthesize stage's turns exported as an HF-loadable Parquet dataset
whose `audio` column is an `Audio` feature, plus the ShareGPT JSON(L) layout with audio
files, for the session's shared real run (`spoken_run` in conftest: sample consultations and
MedDG dialogues → prefilter → normalize → voice_match → synthesize with espeak, doctor turns
too, the real AISHELL-1 clips as reference voices)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from actors.audio import decode
from pipeline.config import parse_config
from pipeline.export import NotExported, read_export, sharegpt_records
from schemas import SourceDialogue, from_table
from storage.rundir import RunDir
from storage.verify import verify
from tests.conftest import REPO


def _torchcodec_decodes() -> bool:
    """`datasets` decodes Audio only through torchcodec, which needs FFmpeg's shared
    libraries; the CPU install here has neither (ENVIRONMENT.md)."""
    try:
        from torchcodec.decoders import AudioDecoder  # noqa: F401
    except Exception:  # noqa: BLE001 - an ImportError or FFmpeg's missing libraries (RuntimeError/OSError)
        return False
    return True


def _dialogues(run: Path) -> list[SourceDialogue]:
    rundir = RunDir(str(run))
    return [d for shard, seal in sorted(rundir.seals("voice").items())
            for d in from_table(rundir.read_output("voice", shard, seal.parts), SourceDialogue)]


def test_loads_with_datasets_as_an_audio_column(spoken_run: Path) -> None:
    import datasets

    base = spoken_run / "datasets" / "SpeechMedDataset"
    files = sorted(str(p) for p in (base / "data").glob("*.parquet"))
    ds = datasets.load_dataset("parquet", data_files=files, split="train")
    assert ds.features["audio"] == datasets.Audio(sampling_rate=16_000)
    dialogues = _dialogues(spoken_run)
    assert len(ds) == sum(len(d.turns) for d in dialogues)  # doctor turns spoken too
    assert set(ds["role"]) == {"patient", "doctor"}
    folder = datasets.load_dataset(str(base), split="train")
    assert folder.features["audio"] == datasets.Audio(sampling_rate=16_000) and len(folder) == len(ds)

    if _torchcodec_decodes():
        sample = ds[0]["audio"].get_all_samples()
        assert sample.sample_rate == 16_000 and sample.data.shape[-1] > 1_000
    else:
        # What `datasets` would hand torchcodec: the stored FLAC, decoded here with soundfile.
        raw = ds.cast_column("audio", datasets.Audio(sampling_rate=16_000, decode=False))
        for row in raw.select(range(min(len(raw), 12))):
            samples, rate = decode(row["audio"]["bytes"])
            assert rate == 16_000 and samples.std() > 0.01
            assert row["audio"]["path"] == f"{row['id']}.flac"
            assert abs(len(samples) / rate - row["duration_s"]) < 1e-3


def test_sharegpt_layout_with_audio_files(spoken_run: Path) -> None:
    base = spoken_run / "datasets" / "SpeechMedDataset" / "sharegpt"
    lines = [json.loads(line) for line in (base / "train.jsonl").read_text(encoding="utf-8").splitlines()]
    assert json.loads((base / "train.json").read_text(encoding="utf-8")) == lines
    dialogues = {d.id: d for d in _dialogues(spoken_run)}
    assert sorted(r["id"] for r in lines) == sorted(dialogues)
    for record in lines:
        dialogue = dialogues[record["id"]]
        convo = record["conversations"]
        assert [c["from"] for c in convo] == ["human" if t.role == "patient" else "gpt" for t in dialogue.turns]
        assert [c["value"] for c in convo] == [t.text for t in dialogue.turns]
        for index, entry in enumerate(convo):
            assert entry["speech"] == f"audio/{dialogue.id}-{index}.flac"
            samples, rate = decode((base / entry["speech"]).read_bytes())
            assert rate == 16_000 and samples.std() > 0.01
    marker_files = json.loads((spoken_run / "datasets" / "SpeechMedDataset" / "_EXPORTED.json").read_text())["files"]
    audio_files = [f for f in marker_files if f["path"].endswith(".flac")]
    assert len(audio_files) == sum(len(r["conversations"]) for r in lines)
    assert verify(RunDir(str(spoken_run))) == []


def test_card_and_read_export_checks_files(spoken_run: Path) -> None:
    base = spoken_run / "datasets" / "SpeechMedDataset"
    card = (base / "README.md").read_text(encoding="utf-8")
    assert "## Speech" in card and "| audio hours |" in card and "| espeak |" in card
    rundir = RunDir(str(spoken_run))
    table = read_export(rundir, "SpeechMedDataset")
    assert table.num_rows == pq.read_table(base / "data").num_rows
    assert read_export(rundir, "TextMedDataset").num_rows == len(_dialogues(spoken_run))
    with pytest.raises(NotExported, match="no exported Nope"):
        read_export(rundir, "Nope")


def test_read_export_refuses_a_changed_file(spoken_run: Path, tmp_path: Path) -> None:
    import shutil

    copy = tmp_path / "run"
    shutil.copytree(spoken_run, copy)
    victim = sorted((copy / "datasets" / "TextMedDataset" / "data").glob("*.parquet"))[0]
    victim.write_bytes(victim.read_bytes()[:-10] + b"0123456789")
    with pytest.raises(NotExported, match="does not match"):
        read_export(RunDir(str(copy)), "TextMedDataset")


def test_sharegpt_records_skip_rejected_dialogues_and_carry_units() -> None:
    dialogues = [{"id": "a", "turns": [{"role": "patient", "text": "咳嗽<cough>三天"}, {"role": "doctor", "text": "多喝水。"}]},
                 {"id": "b", "turns": [{"role": "patient", "text": "头疼"}, {"role": "doctor", "text": "休息。"}]}]
    turns = [{"id": "a-0", "dialogue_id": "a", "turn_index": 0, "units": None},
             {"id": "a-1", "dialogue_id": "a", "turn_index": 1, "units": [5, 6561 - 1]}]
    assert sharegpt_records(dialogues, turns) == [{"id": "a", "conversations": [
        {"from": "human", "value": "咳嗽<cough>三天", "speech": "audio/a-0.flac"},
        {"from": "gpt", "value": "多喝水。", "speech": "audio/a-1.flac", "unit": [5, 6560]}]}]


def test_sharegpt_only_for_spoken_turns() -> None:
    cfg = {"sources": [{"name": "s", "format": "sharegpt", "path": str(REPO / "pipeline" / "demo" / "sample_consultations.json")}],
           "stages": [{"name": "normalize", "kind": "normalize"}],
           "exports": [{"name": "X", "stage": "normalize", "sharegpt": True}]}
    with pytest.raises(Exception, match="sharegpt needs a stage of spoken turns"):
        parse_config(cfg, base_dir=None, origin="test")


def test_audio_feature_survives_an_empty_float_check() -> None:
    # The exported audio column is exactly the `Audio` storage type, nullable.
    from pipeline.export import AUDIO_TYPE, with_audio_features
    import pyarrow as pa

    table = pa.table({"id": ["x"], "audio": pa.array([{"bytes": b"\x00", "path": "x.flac"}],
                                                     pa.struct([pa.field("bytes", pa.binary(), nullable=False),
                                                                pa.field("path", pa.string())]))})
    out = with_audio_features(table)
    assert out.schema.field("audio").type == AUDIO_TYPE
    assert json.loads(out.schema.metadata[b"huggingface"]) == {"info": {"features": {"audio": {"sampling_rate": 16000, "_type": "Audio"}}}}
    assert np.array_equal(out.column("id").to_pylist(), ["x"])
