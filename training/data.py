"""A training stage's examples, from a run's sealed exports only.

    Stage I    TextMedDataset dialogues: system prompt, patient → user, doctor → assistant.
    Stage II-a SpeechMedDataset dialogues (each patient turn its audio, a `<speech>` user
               turn; the doctor's text from TextMedDataset), mixed 1:1 with TextMedDataset
               text dialogues (alternating, the text ones drawn by the seed).
    Stage II-b the same speech dialogues, each doctor turn with its `units` (CosyVoice2
               25 Hz tokens) as the speech generator's target.

Doctor replies are the dialogue's written `text`, what the LLM learns to say; the units are
of its spoken form (`speech_text`), so the generator learns that reading. A dialogue that
cannot be used is left out and counted by reason (`speech.no_units`, `text.too_long`, ...);
an unanswered last patient turn is dropped.

An export counts only when its marker (`datasets/<name>/_EXPORTED.json`, written after every
file) exists, was made from the run's current fingerprint of its stage, and every data
file matches its size and checksum: a partial or stale run is refused, never half-read.

Audio is decoded with soundfile (FLAC) and turned into Whisper log-mel features (128 bins,
the 30 s window Whisper-large-v3 and LLaMA-Omni2 use; longer audio is cut there) one
example at a time, in the DataLoader; the patient audio stays in memory as Arrow (FLAC
bytes), one copy per training worker.
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch
from pydantic import BaseModel
from transformers import PreTrainedTokenizerBase, WhisperFeatureExtractor

from actors.audio import RATE, BadAudio, load_audio
from pipeline.export import EXPORTED, NotExported, export_dir, read_export
from storage.markers import ExportMarker
from storage.rundir import RunDir
from training.chat import DEFAULT_SYSTEM_PROMPT, Message, encode_dialogue
from training.freeze import Stage
from training.model import IGNORE_INDEX, SPEECH_TOKEN

N_MELS = 128
# The speech dataset's columns a stage reads (never `noisy`: its copies are not used here).
SPEECH_COLUMNS = ["id", "dialogue_id", "turn_index", "role", "audio", "units"]
TEXT_COLUMNS = ["id", "turns"]


class StageRefused(Exception):
    """A stage cannot start: the run lacks a sealed, current export it needs."""


class DataOptions(BaseModel):
    text_dataset: str = "TextMedDataset"
    speech_dataset: str = "SpeechMedDataset"
    system_prompt: str = DEFAULT_SYSTEM_PROMPT
    max_length: int = 4096  # tokens after each <speech> became its embeddings; longer dialogues are skipped
    max_examples: int | None = None  # the first N of the stage's examples (after mixing)
    seed: int = 0


def needed(stage: Stage, options: DataOptions) -> list[str]:
    """The exports a stage reads."""
    return [options.text_dataset] if stage == "1" else [options.speech_dataset, options.text_dataset]


def check_exports(rundir: RunDir, stage: Stage, options: DataOptions) -> dict[str, ExportMarker]:
    """The markers of the exports the stage needs; StageRefused naming what is missing and
    how to make it when one is absent or older than the run's current stage."""
    info = rundir.run_info()
    if info is None:
        raise StageRefused(f"{rundir.uri} is not a speechmed run (no run.json)")
    markers = {}
    for name in needed(stage, options):
        marker = rundir.read_model(f"{export_dir(name)}/{EXPORTED}", ExportMarker)
        if marker is None:
            raise StageRefused(
                f"stage {stage} needs the sealed export {name} of {rundir.uri}, which it does not have "
                f"(no {export_dir(name)}/{EXPORTED}): add `exports: [{{name: {name}, stage: ...}}]` to the run's "
                f"config and run it (`speechmed run CONFIG --run {rundir.uri}`), or `speechmed resume {rundir.uri}` "
                "until every stage is sealed and the export written")
        current = info.fingerprints.get(marker.stage)
        # The export's fingerprint is its stage's, with a `+...` suffix for extra layouts.
        if current is None or marker.fingerprint.partition("+")[0] != current:
            raise StageRefused(
                f"stage {stage}: the export {name} of {rundir.uri} was made from an earlier version of stage "
                f"{marker.stage!r} (the run's config changed since); `speechmed resume {rundir.uri}` to finish the "
                "run and export it again")
        markers[name] = marker
    return markers


@dataclass
class Example:
    """One dialogue, encoded: the rows of its utterances' audio, and per assistant turn
    its units (Stage II-b; None where a turn has none)."""

    input_ids: list[int]
    labels: list[int]
    speech: list[int] = field(default_factory=list)  # rows of the speech dataset, one per <speech>
    units: list[list[int] | None] | None = None


@dataclass
class StageData:
    examples: list[Example]
    audio: pa.ChunkedArray | None  # encoded audio (FLAC bytes) by speech-dataset row
    counts: dict[str, int]  # examples by kind: speech (has utterances) or text
    skipped: dict[str, int]  # dialogues left out, by reason


def _read(rundir: RunDir, name: str, columns: list[str], stage: Stage) -> pa.Table:
    try:
        return read_export(rundir, name, columns)
    except NotExported as exc:
        raise StageRefused(f"stage {stage}: {exc}") from exc


def load_stage_data(rundir: RunDir, stage: Stage, tokenizer: PreTrainedTokenizerBase, options: DataOptions,
                    *, speech_embeddings: int) -> StageData:
    """The stage's examples. `speech_embeddings`: how many LLM positions one utterance takes."""
    check_exports(rundir, stage, options)
    builder = _Builder(tokenizer, options, speech_embeddings)
    text = _read(rundir, options.text_dataset, TEXT_COLUMNS, stage)
    if "turns" not in text.column_names:
        raise StageRefused(f"{options.text_dataset} of {rundir.uri} has no `turns`: it is not a dialogue dataset")
    dialogues = {row["id"]: row["turns"] for row in text.to_pylist()}
    if stage == "1":
        examples = [e for turns in dialogues.values() if (e := builder.text(turns))]
        return builder.done(examples, None, stage, rundir)
    speech = _read(rundir, options.speech_dataset, SPEECH_COLUMNS, stage)
    if not {"dialogue_id", "audio"} <= set(speech.column_names):
        raise StageRefused(f"{options.speech_dataset} of {rundir.uri} has no spoken turns (`dialogue_id`, `audio`)")
    if stage == "2b" and "units" not in speech.column_names:
        raise StageRefused(f"stage 2b needs doctor `units` in {options.speech_dataset} of {rundir.uri}; synthesize "
                           "doctor turns with units (doctor_turns and doctor_units) and export again")
    spoken = builder.spoken_examples(speech.drop_columns(["audio"]).to_pylist(), dialogues, units=stage == "2b")
    # Only patient audio is model input: doctor rows' bytes are dropped (about half the memory).
    patient = pc.equal(speech.column("role"), "patient")
    audio = pc.if_else(patient, pc.struct_field(speech.column("audio"), "bytes"), pa.scalar(None, pa.binary()))
    if stage == "2b":
        return builder.done(spoken, audio, stage, rundir)
    texts = [e for turns in dialogues.values() if (e := builder.text(turns))]
    if spoken and not texts:
        raise StageRefused(f"stage 2a mixes speech with text Q&A 1:1, but {options.text_dataset} of {rundir.uri} "
                           "has no usable text dialogue")
    random.Random(options.seed).shuffle(texts)
    mixed = [e for i, s in enumerate(spoken) for e in (s, texts[i % len(texts)])]
    return builder.done(mixed, audio, stage, rundir)


class _Builder:
    def __init__(self, tokenizer: PreTrainedTokenizerBase, options: DataOptions, speech_embeddings: int):
        self.tokenizer, self.options, self.speech_embeddings = tokenizer, options, speech_embeddings
        self.skipped: Counter[str] = Counter()

    def _encode(self, kind: str, messages: list[Message], speech: list[int],
                units: list[list[int] | None] | None = None) -> Example | None:
        """The encoded example, or None with the reason counted as `<kind>.<reason>`."""
        while messages and messages[-1].role == "user":
            messages = messages[:-1]  # an unanswered last turn teaches nothing
            speech = speech[: sum(m.content == SPEECH_TOKEN for m in messages)]
        if not any(m.role == "assistant" for m in messages):
            self.skipped[f"{kind}.no_doctor_turn"] += 1
            return None
        encoded = encode_dialogue(self.tokenizer, [Message(role="system", content=self.options.system_prompt), *messages])
        if encoded.input_ids.count(self.tokenizer.convert_tokens_to_ids(SPEECH_TOKEN)) != len(speech):
            self.skipped[f"{kind}.speech_token_in_text"] += 1  # the placeholder must mean audio only
            return None
        if len(encoded.input_ids) + len(speech) * (self.speech_embeddings - 1) > self.options.max_length:
            self.skipped[f"{kind}.too_long"] += 1
            return None
        return Example(encoded.input_ids, encoded.labels, speech, units)

    def text(self, turns: list[dict[str, Any]]) -> Example | None:
        messages = [Message(role="user" if t["role"] == "patient" else "assistant", content=t["text"]) for t in turns]
        return self._encode("text", messages, [])

    def spoken_examples(self, rows: list[dict[str, Any]], dialogues: dict[str, list[dict[str, Any]]],
                        *, units: bool) -> list[Example]:
        """Speech dialogues: patient turns are their audio rows; doctor turns the dialogue's text."""
        by_dialogue: dict[str, dict[int, tuple[int, dict[str, Any]]]] = {}
        for row_index, row in enumerate(rows):
            by_dialogue.setdefault(row["dialogue_id"], {})[row["turn_index"]] = (row_index, row)
        examples = []
        for dialogue_id, spoken in by_dialogue.items():
            turns = dialogues.get(dialogue_id)
            if turns is None:
                self.skipped["speech.not_in_text_dataset"] += 1
                continue
            if any(t["role"] == "patient" and i not in spoken for i, t in enumerate(turns)):
                # The synthesize stage speaks a dialogue whole or rejects it: a gap is another run's data.
                self.skipped["speech.patient_turn_not_spoken"] += 1
                continue
            messages, speech, targets = [], [], []
            for index, turn in enumerate(turns):
                row_index, row = spoken.get(index, (None, None))
                if turn["role"] == "patient":
                    messages.append(Message(role="user", content=SPEECH_TOKEN))
                    speech.append(row_index)
                else:
                    messages.append(Message(role="assistant", content=turn["text"]))
                    targets.append(row.get("units") if row is not None else None)
            if units and not any(targets):
                self.skipped["speech.no_units"] += 1
                continue
            example = self._encode("speech", messages, speech, targets if units else None)
            if example is not None:
                examples.append(example)
        return examples

    def done(self, examples: list[Example], audio: pa.ChunkedArray | None, stage: Stage, rundir: RunDir) -> StageData:
        if not examples:
            hint = ("; synthesize doctor turns with units (the synthesize stage's doctor_turns and doctor_units) "
                    "and export again") if self.skipped.get("speech.no_units") else ""
            raise StageRefused(f"stage {stage}: the exports of {rundir.uri} give no usable example "
                               f"(left out: {dict(self.skipped) or 'none'}){hint}")
        if self.options.max_examples is not None:
            examples = examples[: self.options.max_examples]
        counts = Counter("speech" if e.speech else "text" for e in examples)
        return StageData(examples, audio, dict(counts), dict(self.skipped))


class StageDataset(torch.utils.data.Dataset):
    """Examples with their utterances' log-mel features, computed when an item is read."""

    def __init__(self, data: StageData):
        self.data = data
        # Constructed, not downloaded: Whisper-large-v3's front end (128 mel bins, 16 kHz, 30 s).
        self.features = WhisperFeatureExtractor(feature_size=N_MELS, sampling_rate=RATE)

    def __len__(self) -> int:
        return len(self.data.examples)

    def log_mel(self, row: int) -> np.ndarray:
        try:
            samples = load_audio(self.data.audio[row].as_py(), f"speech dataset row {row}")  # type: ignore[index]
        except BadAudio as exc:
            # The export matched its marker, so this is what the synthesize stage stored.
            raise ValueError(f"{str(exc).split('; ')[0]} [{exc.code}]: the export matches its checksums, so the run "
                             "stored it this way; run `speechmed verify` and re-run the synthesize stage") from None
        return self.features(samples, sampling_rate=RATE, return_tensors="np")["input_features"][0]

    def __getitem__(self, index: int) -> dict[str, Any]:
        example = self.data.examples[index]
        item: dict[str, Any] = {"input_ids": example.input_ids, "labels": example.labels}
        if example.speech:
            item["speech"] = np.stack([self.log_mel(row) for row in example.speech])
        if example.units is not None:
            item["units"] = example.units
        return item


@dataclass
class Collator:
    """Pads right: input ids with the pad token, labels with -100 (never a real token id);
    stacks every utterance of the batch in example order; unit targets one row per
    assistant turn, padded with -1 (a row of -1: a turn with no units)."""

    pad_id: int

    def __call__(self, items: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        length = max(len(i["input_ids"]) for i in items)
        ids = torch.full((len(items), length), self.pad_id, dtype=torch.long)
        labels = torch.full((len(items), length), IGNORE_INDEX, dtype=torch.long)
        mask = torch.zeros((len(items), length), dtype=torch.long)
        for b, item in enumerate(items):
            n = len(item["input_ids"])
            ids[b, :n], labels[b, :n], mask[b, :n] = torch.tensor(item["input_ids"]), torch.tensor(item["labels"]), 1
        batch = {"input_ids": ids, "attention_mask": mask, "labels": labels}
        speech = [item["speech"] for item in items if "speech" in item]
        if speech:
            batch["speech"] = torch.from_numpy(np.concatenate(speech))
        if any("units" in item for item in items):
            rows = [u or [] for item in items for u in item.get("units", [])]
            targets = torch.full((len(rows), max(map(len, rows), default=0) or 1), -1, dtype=torch.long)
            for r, units in enumerate(rows):
                targets[r, : len(units)] = torch.tensor(units, dtype=torch.long)
            batch["unit_targets"] = targets
        return batch
