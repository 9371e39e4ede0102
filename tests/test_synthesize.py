"""The synthesize stage with the real espeak-ng engine: patient turns spoken in the matched
voice at 16 kHz FLAC, `<cough>` placeholders replaced by cough recordings (clip and
offset recorded), whole-dialogue rejections, and the fan-out stage under Ray."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import soundfile

from actors.audio import RATE, decode, write_cough_like_clips
from actors.registry import build_stage
from actors.worker import check_reconciles
from pipeline.config import parse_config
from pipeline.driver import execute
from schemas import SourceDialogue, SynthesizedTurn, Turn, VoiceChoice, from_table
from storage.rundir import RunDir
from tests.conftest import REPO

VOICE = VoiceChoice(engine="zero_shot", match="gender_age", seed=5, speaker_gender="female", speaker_age_group="adult")


@pytest.fixture(scope="module")
def cough_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Cough-like clips: shaped noise bursts (no cough recordings ship with any package)."""
    folder = write_cough_like_clips(tmp_path_factory.mktemp("coughs"), [(44_100, 0.35), (16_000, 0.5), (22_050, 0.3)])
    (folder / "notes.txt").write_text("not audio, ignored")
    return folder


def dialogue(i: int, *patient_texts: str, voice: VoiceChoice | None = VOICE) -> SourceDialogue:
    turns = []
    for text in patient_texts:
        turns += [Turn(role="patient", text=text, speech_text=text), Turn(role="doctor", text="好的，多休息。", speech_text="好的，多休息。")]
    return SourceDialogue(id=f"d{i}", source="s", source_key=str(i), treatment="cough", turns=turns, voice=voice)


def stage(**params: object):
    s = build_stage("synthesize", "speak", params, 9)
    s.setup()
    return s


def test_patient_turns_with_coughs(cough_dir: Path) -> None:
    s = stage(cough_dir=str(cough_dir))
    batch = [dialogue(1, "医生，我<cough>嗓子疼了三天。", "晚上更厉害<cough>，睡不好<cough>"), dialogue(2, "我头疼。")]
    result = s.process(batch)
    check_reconciles(s, batch, result)
    turns = {t.id: t for t in result.accepted}
    assert sorted(turns) == ["d1-0", "d1-2", "d2-0"]  # patient turns only
    first = turns["d1-0"]
    samples, rate = decode(first.audio.bytes)
    assert rate == RATE == first.sample_rate and first.duration_s == pytest.approx(len(samples) / RATE, abs=1e-3)
    assert first.voice == VOICE and first.role == "patient" and first.engine == "espeak"
    (cough,) = first.coughs
    assert cough.clip_id in {"cough-0.wav", "cough-1.wav", "cough-2.wav"}
    assert 0.2 < cough.offset_s < first.duration_s - cough.duration_s
    assert len(turns["d1-2"].coughs) == 2 and turns["d2-0"].coughs == []
    # The same dialogue alone in another actor: the same cough clips and offsets, the same audio.
    again = {t.id: t for t in stage(cough_dir=str(cough_dir)).process(batch[:1]).accepted}
    for key in ("d1-0", "d1-2"):
        assert again[key].coughs == turns[key].coughs and again[key].audio == turns[key].audio


def test_doctor_turns_in_one_assistant_voice() -> None:
    result = stage(doctor_turns=True).process([dialogue(3, "我胃疼。"), dialogue(4, "我牙疼。")])
    roles = Counter(t.role for t in result.accepted)
    assert roles == {"patient": 2, "doctor": 2}
    assert len({t.voice for t in result.accepted if t.role == "doctor"}) == 1


def test_dialogues_that_cannot_be_spoken_are_rejected_whole() -> None:
    s = stage()
    batch = [dialogue(5, "好的", "我<cough>嗓子疼"), dialogue(6, "我头疼", voice=None)]
    result = s.process(batch)
    check_reconciles(s, batch, result)
    assert result.accepted == []
    reasons = {r.id: r.reason for r in result.rejected}
    assert reasons == {"d5": "synthesize.no_cough_clips", "d6": "synthesize.no_voice"}


@pytest.mark.usefixtures("ray_connected")
def test_match_and_speak_in_the_pipeline(tmp_path: Path, voice_pool: str) -> None:
    cfg = {"seed": 3, "num_shards": 2, "ingest_part_size": 8, "sources": [
        {"name": "sample", "format": "sharegpt", "path": str(REPO / "pipeline" / "demo" / "sample_consultations.json"),
         "limit": 5}],
        "stages": [{"name": "normalize", "kind": "normalize", "resources": {"actors": 1, "num_cpus": 0.25}},
                   {"name": "voice", "kind": "voice_match", "params": {"pool": voice_pool}, "resources": {"actors": 1, "num_cpus": 0.25}},
                   {"name": "speak", "kind": "synthesize", "micro_batch_size": 2, "resources": {"actors": 2, "num_cpus": 0.25}}]}
    run = tmp_path / "run"
    execute(parse_config(cfg, base_dir=None, origin="test"), str(run), command="pytest")
    rundir = RunDir(str(run))
    dialogues = [d for shard, seal in rundir.seals("voice").items()
                 for d in from_table(rundir.read_output("voice", shard, seal.parts), SourceDialogue)]
    spoken = [t for shard, seal in rundir.seals("speak").items()
              for t in from_table(rundir.read_output("speak", shard, seal.parts), SynthesizedTurn)]
    expected = {f"{d.id}-{i}" for d in dialogues for i, t in enumerate(d.turns) if t.role == "patient"}
    assert {t.id for t in spoken} == expected and len(spoken) == len(expected)
    for t in spoken:
        samples, rate = decode(t.audio.bytes)
        assert rate == 16_000 and samples.std() > 0.01
    seals = rundir.seals("speak")
    assert sum(s.rows_in for s in seals.values()) == len(dialogues)


def test_audio_checks_retry_then_reject_with_scores() -> None:
    # Bounds no real speech meets: every attempt fails, the dialogue is rejected with the scores.
    s = stage(qc={"min_s_per_char": 5.0, "max_attempts": 2})
    (rejection,) = s.process([dialogue(7, "我头疼了三天。")]).rejected
    assert rejection.reason == "synthesize.qc_failed" and "2 times" in rejection.detail and '"s_per_char"' in rejection.detail
    ok = stage().process([dialogue(8, "我头疼了三天。")]).accepted[0]
    assert ok.attempts == 1 and ok.qc.spoken_chars == 6 and 0.08 <= ok.qc.s_per_char <= 0.8


def test_noisy_copies_per_snr(tmp_path: Path) -> None:
    noise_dir = tmp_path / "MS-SNSD" / "noise_test"
    noise_dir.mkdir(parents=True)
    rng = np.random.default_rng(2)
    for name in ("Babble_1.wav", "AirConditioner_2.wav"):
        soundfile.write(noise_dir / name, 0.1 * rng.standard_normal(16_000), 16_000)
    s = stage(noise_dir=str(tmp_path / "MS-SNSD"), noise_snrs_db=[5, 15])
    (turn,) = s.process([dialogue(9, "我最近总是头疼。")]).accepted
    clean, _ = decode(turn.audio.bytes)
    assert [c.snr_db for c in turn.noisy] == [5, 15]
    for copy in turn.noisy:
        assert copy.noise_clip_id in {"noise_test/Babble_1.wav", "noise_test/AirConditioner_2.wav"}
        noisy, rate = decode(copy.audio.bytes)
        added = noisy[: len(clean)] - clean
        measured = 10 * np.log10(np.mean(clean.astype(np.float64) ** 2) / np.mean(added.astype(np.float64) ** 2))
        assert rate == 16_000 and len(noisy) == len(clean) and abs(measured - copy.snr_db) < 0.5
    with pytest.raises(ValueError, match="noise_snrs_db needs noise_dir"):
        build_stage("synthesize", "speak", {"noise_snrs_db": [5]}, 1)
