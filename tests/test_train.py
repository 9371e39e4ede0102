"""`speechmed train` on a tiny randomly initialised SpeechLM of the real shape (Whisper
encoder, projector, Qwen2 core, unit generator), on CPU, from the session's shared real run
(`spoken_run` in conftest: sample consultations and MedDG dialogues → prefilter → normalize →
voice_match → synthesize with espeak, doctor turns too), exported as TextMedDataset and
SpeechMedDataset.

Each stage trains a few steps through the Hugging Face Trainer; its frozen parts stay
bitwise equal, its trainable ones change, and the loss falls over 20 steps on a repeated
batch. Refusals (no export, a stale or altered one), the CLI with --json, resumption from
the Trainer's checkpoints and the Ray Train path run too.

Test double: doctor `units` (CosyVoice2 25 Hz speech tokens, made by its speech tokenizer
on a GPU) are random tokens at 25 per second of the doctor's audio, committed into the
synthesize stage's parts through the run's commit protocol and exported by the real export
(`with_doctor_units`)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from pipeline.export import export_dir, export_stage, read_export
from pipeline.plan import INGEST
from schemas import SynthesizedTurn, arrow_schema, from_table, to_table
from storage.manifest import write_manifest
from storage.markers import ShardSeal
from storage.rundir import RUN_JSON, RunDir
from storage.verify import verify
from tests.conftest import REPO
from training.chat import Message, encode_dialogue
from training.data import Collator, DataOptions, StageDataset, StageRefused, load_stage_data
from training.freeze import TRAINABLE
from training.model import (
    IGNORE_INDEX,
    PARTS,
    SPEECH_TOKEN,
    assemble_speechlm,
    load_speechlm,
    make_tiny_speechlm,
    stream_layout,
    tiny_whisper_config,
)
from training.run import TrainOptions, fit, preflight, train

UTTERANCE = 300  # LLM positions per utterance: 1500 Whisper frames / k=5


@pytest.fixture(scope="module")
def speechlm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_speechlm(tmp_path_factory.mktemp("speechlm") / "tiny")


def with_doctor_units(run: Path, to: Path) -> Path:
    """A copy of `run` whose synthesize stage committed doctor units (see the module's test
    double), and SpeechMedDataset exported again from it."""
    shutil.copytree(run, to)
    rundir = RunDir(str(to))
    info = rundir.run_info()
    fingerprint = info.fingerprints["speak"]
    for shard, seal in rundir.seals("speak").items():
        for (_, part), commit in sorted(rundir.commits("speak", shard).items()):
            turns = from_table(pq.read_table(rundir.abs(commit.output.path)), SynthesizedTurn)
            rng = np.random.default_rng(shard * 1000 + part)
            turns = [t.model_copy(update={"units": rng.integers(0, 6561, round(t.duration_s * 25)).tolist()})
                     if t.role == "doctor" else t for t in turns]
            rejected = pq.read_table(rundir.abs(commit.rejected.path)) if commit.rejected else None
            rundir.commit_part("speak", shard, part, to_table(turns, SynthesizedTurn), rejected,
                               fingerprint=fingerprint, rows_in=commit.rows_in,
                               rejected_by_reason=commit.rejected_by_reason, elapsed_s=0.0, session="units", fence=None)
        commits = [c for _, c in sorted(rundir.commits("speak", shard).items())]
        rundir.seal(ShardSeal.from_commits("speak", shard, fingerprint, commits))
    # Exported again as the run's config says (with its ShareGPT layout, whose dialogues come
    # from the stage before synthesize), and the manifest rebuilt from the new markers.
    stages = [stage["name"] for stage in info.config["stages"]]
    (export,) = [e for e in info.config["exports"] if e["name"] == "SpeechMedDataset"]
    upstream = stages[stages.index("speak") - 1]
    rundir.invalidate(export_dir("SpeechMedDataset"))
    export_stage(rundir, "SpeechMedDataset", "speak", arrow_schema(SynthesizedTurn), fingerprint,
                 info.config["num_shards"], {stage: rundir.seals(stage) for stage in stages},
                 sharegpt_from=upstream if export.get("sharegpt") else None)
    write_manifest(rundir, [INGEST, *stages])
    assert verify(rundir) == []
    return to


@pytest.fixture(scope="module")
def units_run(spoken_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return with_doctor_units(spoken_run, tmp_path_factory.mktemp("units") / "run")


def options(stage: str, run: Path, model: Path, out: Path, *, examples: int = 2, **kwargs: object) -> TrainOptions:
    """Small runs: `examples` examples in one batch, a loss logged every step."""
    settings = {"learning_rate": 1e-3, "lr_scheduler": "constant", "logging_steps": 1, "save_steps": 1000, **kwargs}
    return TrainOptions(stage=stage, run=str(run), model=str(model), out=str(out), batch_size=examples,
                        data=DataOptions(max_examples=examples), **settings)


def label_runs(labels: list[int]) -> list[tuple[int, int]]:
    """[start, end) of each run of learnt positions."""
    runs: list[tuple[int, int]] = []
    for i, label in enumerate(labels):
        if label == IGNORE_INDEX:
            continue
        if runs and runs[-1][1] == i:
            runs[-1] = (runs[-1][0], i + 1)
        else:
            runs.append((i, i + 1))
    return runs


# -- the model ---------------------------------------------------------------------------

def test_stream_layout_reads_then_writes_like_inference() -> None:
    # 7 text tokens, 25 units, (3, 10): 3 text, 10 units, 3 text, 10 units, last text, <sep>, rest, eos.
    assert stream_layout(7, 25, 3, 10) == [("text", 0, 3), ("units", 0, 10), ("text", 3, 6), ("units", 10, 20),
                                           ("text", 6, 7), ("sep", 0, 1), ("units", 20, 25), ("eos", 0, 1)]
    # Fewer units than the text would stream: they run out, the text goes on.
    assert stream_layout(7, 4, 3, 10) == [("text", 0, 3), ("units", 0, 4), ("text", 3, 6), ("text", 6, 7),
                                          ("sep", 0, 1), ("eos", 0, 1)]


def test_speech_is_spliced_in_place_of_its_token(speechlm: Path) -> None:
    model, tokenizer = load_speechlm(speechlm)
    encoded = encode_dialogue(tokenizer, [Message(role="user", content=SPEECH_TOKEN),
                                          Message(role="assistant", content="多休息。")])
    ids = torch.tensor([encoded.input_ids])
    labels = torch.tensor([encoded.labels])
    mask = torch.ones_like(ids)
    features = torch.randn(1, 128, 3000)
    embeds, out_mask, out_labels, _ = model.splice(ids, mask, labels, features)
    where = encoded.input_ids.index(tokenizer.convert_tokens_to_ids(SPEECH_TOKEN))
    assert embeds.shape[1] == len(encoded.input_ids) - 1 + UTTERANCE and int(out_mask.sum()) == embeds.shape[1]
    assert (out_labels[0, where : where + UTTERANCE] == IGNORE_INDEX).all()
    assert out_labels[0, where + UTTERANCE :].tolist() == encoded.labels[where + 1 :]
    with torch.no_grad():
        spliced = model.encode_speech(features)[0]
    assert torch.allclose(embeds[0, where : where + UTTERANCE], spliced)
    with pytest.raises(ValueError, match="1 <speech> placeholder"):
        model.splice(ids, mask, labels, None)


def test_assembled_from_checkpoints(tmp_path: Path, tiny_model: Path) -> None:
    """The production path: a Qwen2 chat checkpoint + a Whisper checkpoint + a Qwen2
    checkpoint as the unit LM (its vocabulary extended by 6561 units and <sep>)."""
    from transformers import WhisperModel

    whisper = WhisperModel(tiny_whisper_config())
    whisper.save_pretrained(tmp_path / "whisper")
    path = assemble_speechlm(tiny_model, tmp_path / "speechlm", speech_encoder=tmp_path / "whisper",
                             speech_generator=tiny_model, projector_hidden=32)
    model, tokenizer = load_speechlm(path)
    assert SPEECH_TOKEN in tokenizer.get_vocab() and model.config.speech_token_id == len(tokenizer) - 1
    for name, value in whisper.encoder.state_dict().items():
        assert torch.equal(model.model.speech_encoder.state_dict()[name], value), name
    text_vocab = model.config.vocab_size
    assert model.config.unit_offset == text_vocab and model.config.unit_sep_id == text_vocab + 6561
    assert model.speech_generator.model.config.vocab_size == text_vocab + 6561 + 1


# -- the data ----------------------------------------------------------------------------

def test_examples_and_labels(spoken_run: Path, units_run: Path, speechlm: Path) -> None:
    _, tokenizer = load_speechlm(speechlm)
    text = load_stage_data(RunDir(str(spoken_run)), "1", tokenizer, DataOptions(), speech_embeddings=UTTERANCE)
    rows = read_export(RunDir(str(spoken_run)), "TextMedDataset").to_pylist()
    assert text.counts == {"text": len(rows)} and len(rows) >= 2 and text.skipped == {}
    for example, row in zip(text.examples, rows, strict=True):
        # Learnt: each doctor reply up to its end-of-turn token; nothing of the system
        # prompt, the patient or the role headers.
        replies = [tokenizer.decode(example.input_ids[a:b]) for a, b in label_runs(example.labels)]
        assert replies == [t["text"] + "<|im_end|>" for t in row["turns"] if t["role"] == "doctor"]
    batch = Collator(tokenizer.pad_token_id)([StageDataset(text)[i] for i in range(2)])
    assert batch["attention_mask"][1].sum() < batch["attention_mask"].shape[1] or batch["attention_mask"][0].sum() < batch["attention_mask"].shape[1]
    assert (batch["labels"][batch["attention_mask"] == 0] == IGNORE_INDEX).all()  # padding is never learnt

    mixed = load_stage_data(RunDir(str(spoken_run)), "2a", tokenizer, DataOptions(), speech_embeddings=UTTERANCE)
    spoken_dialogues = len(set(read_export(RunDir(str(spoken_run)), "SpeechMedDataset", ["dialogue_id"])
                               .column("dialogue_id").to_pylist()))
    assert mixed.counts == {"speech": spoken_dialogues, "text": spoken_dialogues} and mixed.skipped == {}
    kinds = ["speech" if e.speech else "text" for e in mixed.examples]
    assert kinds == ["speech", "text"] * spoken_dialogues  # 1:1, alternating
    item = StageDataset(mixed)[0]
    speech_id = tokenizer.convert_tokens_to_ids(SPEECH_TOKEN)
    assert item["speech"].shape == (item["input_ids"].count(speech_id), 128, 3000)
    assert np.isfinite(item["speech"]).all() and item["speech"].std() > 0.1

    spoken = load_stage_data(RunDir(str(units_run)), "2b", tokenizer, DataOptions(), speech_embeddings=UTTERANCE)
    example = spoken.examples[0]
    assistant_turns = len(label_runs(example.labels))
    assert len(example.units) == assistant_turns and all(u and max(u) < 6561 for u in example.units)
    targets = Collator(tokenizer.pad_token_id)([StageDataset(spoken)[0]])["unit_targets"]
    assert targets.shape[0] == assistant_turns and int((targets >= 0).sum()) == sum(map(len, example.units))


# -- training ----------------------------------------------------------------------------

@pytest.mark.parametrize("stage", ["1", "2a", "2b"])
def test_stage_trains_its_parts_only(stage: str, spoken_run: Path, units_run: Path, speechlm: Path,
                                     tmp_path: Path) -> None:
    run = units_run if stage == "2b" else spoken_run
    # One batch of the stage's first examples, 20 times (2a: one spoken, one text dialogue).
    examples = 1 if stage == "2b" else 2
    report = train(options(stage, run, speechlm, tmp_path / "out", max_steps=20, examples=examples,
                           learning_rate=3e-3 if stage == "2b" else 1e-3), local=True)
    assert report.steps == 20 and len(report.losses) == 20
    first, last = report.losses[0], report.losses[-1]
    assert last < first - 0.5 and np.mean(report.losses[10:]) < np.mean(report.losses[:10]), report.losses

    before, _ = load_speechlm(speechlm)
    after, _ = load_speechlm(tmp_path / "out")
    trained = dict(after.named_parameters())
    for name, part, param in before.parts():
        same = torch.equal(param, trained[name])
        assert same == (part not in TRAINABLE[stage]), f"{name} ({part}) {'unchanged' if same else 'changed'}"
    counts = {part: sum(p.numel() for _, q, p in before.parts() if q == part) for part in PARTS}
    for part in PARTS:
        expected = counts[part] if part in TRAINABLE[stage] else 0
        assert report.parts[part].trainable == expected and report.parts[part].frozen == counts[part] - expected


def test_resumes_from_the_trainers_checkpoints(spoken_run: Path, speechlm: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    with pytest.raises(ValueError, match="no checkpoint"):
        preflight(options("1", spoken_run, speechlm, out, resume="latest"))
    first = train(options("1", spoken_run, speechlm, out, max_steps=4, save_steps=2), local=True)
    assert first.steps == 4 and {p.name for p in out.glob("checkpoint-*")} >= {"checkpoint-2", "checkpoint-4"}
    again = train(options("1", spoken_run, speechlm, out, max_steps=6, save_steps=2, resume="latest"), local=True)
    # Steps 5-6 only, after the restored state: the logged losses are the first run's plus two.
    assert again.steps == 6 and again.losses[:4] == first.losses and len(again.losses) == 6


# -- refusals ----------------------------------------------------------------------------

def test_refuses_without_sealed_current_exports(spoken_run: Path, speechlm: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(spoken_run, run)
    # An export whose marker was never written (the run was stopped before): refused, named.
    (run / "datasets" / "SpeechMedDataset" / "_EXPORTED.json").unlink()
    for stage in ("2a", "2b"):
        with pytest.raises(StageRefused, match=rf"stage {stage} needs the sealed export SpeechMedDataset .*speechmed resume"):
            preflight(options(stage, run, speechlm, tmp_path / "out"))
    preflight(options("1", run, speechlm, tmp_path / "out"))  # Stage I reads TextMedDataset only

    # Dialogues that cannot be used are counted by reason; none left is a refusal too.
    _, tokenizer = load_speechlm(speechlm)
    with pytest.raises(StageRefused, match=r"no usable example \(left out: \{'text.too_long': \d+\}\)"):
        load_stage_data(RunDir(str(spoken_run)), "1", tokenizer, DataOptions(max_length=16), speech_embeddings=UTTERANCE)

    # A data file that no longer matches its marker: refused when the data is read.
    data = next((run / "datasets" / "TextMedDataset" / "data").glob("*.parquet"))
    data.write_bytes(data.read_bytes()[:-10])
    with pytest.raises(StageRefused, match="does not match TextMedDataset's export marker"):
        load_stage_data(RunDir(str(run)), "1", tokenizer, DataOptions(), speech_embeddings=UTTERANCE)

    # An export made before the run's config changed its stage: stale.
    info = json.loads((run / RUN_JSON).read_text())
    info["fingerprints"]["normalize"] = "0" * 16
    (run / RUN_JSON).write_text(json.dumps(info))
    with pytest.raises(StageRefused, match="earlier version of stage 'normalize'.*speechmed resume"):
        preflight(options("1", run, speechlm, tmp_path / "out"))

    # Stage II-b on doctor turns without units.
    with pytest.raises(StageRefused, match="no usable example.*no_units.*doctor_units"):
        fit(options("2b", spoken_run, speechlm, tmp_path / "out"))
    with pytest.raises(StageRefused, match="not a speechmed run"):
        preflight(options("1", tmp_path / "nothing", speechlm, tmp_path / "out"))


# -- entry points ------------------------------------------------------------------------

def test_cli_json_and_refusal(spoken_run: Path, speechlm: Path, tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    base = ["speechmed", "train", "--run", str(spoken_run), "--model", str(speechlm), "--local"]
    done = subprocess.run([*base, "--stage", "2a", "--out", str(tmp_path / "out"), "--max-steps", "2",
                           "--batch-size", "2", "--max-examples", "2", "--logging-steps", "1", "--json"],
                          env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout)  # stdout is the report alone (the Trainer's logs go to stderr)
    assert report["steps"] == 2 and len(report["losses"]) == 2 and report["examples"] == {"speech": 1, "text": 1}
    assert report["parts"]["speech_projector"]["trainable"] > 0 and report["parts"]["speech_encoder"]["trainable"] == 0
    assert report["parts"]["llm"]["frozen"] == 0 and report["parts"]["speech_generator"]["trainable"] == 0
    assert (tmp_path / "out" / "model.safetensors").is_file() and (tmp_path / "out" / "checkpoint-2").is_dir()

    refused = subprocess.run([*base, "--stage", "2a", "--speech-dataset", "Missing"], env=env, capture_output=True,
                             text=True, timeout=120)
    assert refused.returncode == 2 and "needs the sealed export Missing" in refused.stderr
    assert not (Path(f"{speechlm}-stage2a")).exists()  # nothing was written


def test_ray_train_path(spoken_run: Path, speechlm: Path, tmp_path: Path, ray_connected: str) -> None:
    """Ray Train's TorchTrainer with one CPU worker on the session's cluster."""
    report = train(options("2a", spoken_run, speechlm, tmp_path / "out", max_steps=2, save_steps=2), local=False)
    assert report.ray and report.workers == 1 and report.steps == 2 and len(report.losses) == 2
    assert (tmp_path / "out" / "checkpoint-2").is_dir() and (tmp_path / "out" / "ray").is_dir()
    load_speechlm(tmp_path / "out")
