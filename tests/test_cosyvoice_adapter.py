"""The CosyVoice2 adapter against a test double of the `cosyvoice` package.

CosyVoice2 cannot load here (no weights, no GPU, not on PyPI in usable form), so a fake
`cosyvoice.cli.cosyvoice.CosyVoice2` is put at the import boundary. It records how it is
constructed and called, and yields what the real one yields (per-sentence-chunk dicts of
(1, n) tensors at 24 kHz). What this does NOT exercise: the real model's loading, its
text frontend, the speech it makes, and GPU memory per copy; those need a GPU run.
The synthesize stage runs for real around it (routing, resampling, FLAC, checks)."""

from __future__ import annotations

import sys
import types
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch

from actors.audio import decode
from actors.registry import build_stage
from schemas import SourceDialogue, Turn, VoiceChoice


class FakeFrontend:
    """Test double of CosyVoiceFrontEnd's speech tokenizer: `_extract_speech_token(path)`
    loads a 16 kHz file of at most 30 s (the real one asserts it) and returns (1, T) int32
    tokens at 25 Hz; these encode the file's loudness so a test can tell windows apart."""

    def __init__(self) -> None:
        self.files: list[tuple[int, float]] = []

    def _extract_speech_token(self, prompt_wav):
        samples, rate = soundfile.read(prompt_wav, dtype="float32")
        assert rate == 16_000 and len(samples) / rate <= 30, "the real tokenizer takes 16 kHz audio of at most 30 s"
        self.files.append((len(samples), float(np.abs(samples).max())))
        count = max(1, len(samples) * 25 // rate)
        level = round(float(np.abs(samples).max()) * 1000) % 6561
        tokens = torch.full((1, count), level, dtype=torch.int32)
        return tokens, torch.tensor([count], dtype=torch.int32)


class FakeCosyVoice2:
    """Test double of cosyvoice.cli.cosyvoice.CosyVoice2 (post-622a3a1 API)."""

    instances: list["FakeCosyVoice2"] = []

    def __init__(self, model_dir, load_jit=False, load_trt=False, load_vllm=False, fp16=False, trt_concurrent=1):
        self.args = {"model_dir": model_dir, "load_jit": load_jit, "load_trt": load_trt, "load_vllm": load_vllm,
                     "fp16": fp16}
        self.sample_rate = 24_000
        self.calls: list[dict] = []
        self.frontend = FakeFrontend()
        FakeCosyVoice2.instances.append(self)

    def inference_zero_shot(self, tts_text, prompt_text, prompt_wav, zero_shot_spk_id="", stream=False, speed=1.0,
                            text_frontend=True):
        assert Path(prompt_wav).is_file(), "prompt_wav must be a local file path"
        self.calls.append({"text": tts_text, "prompt_text": prompt_text, "prompt_wav": prompt_wav, "stream": stream,
                           "seed": torch.initial_seed()})
        t = torch.arange(12_000) / 24_000
        for freq in (220.0, 330.0):  # two sentence chunks, 0.5 s each
            yield {"tts_speech": (0.3 * torch.sin(2 * torch.pi * freq * t)).unsqueeze(0)}


@pytest.fixture
def fake_cosyvoice(monkeypatch: pytest.MonkeyPatch):
    FakeCosyVoice2.instances.clear()
    package, cli, module = (types.ModuleType(n) for n in ("cosyvoice", "cosyvoice.cli", "cosyvoice.cli.cosyvoice"))
    module.CosyVoice2 = FakeCosyVoice2
    for name, mod in (("cosyvoice", package), ("cosyvoice.cli", cli), ("cosyvoice.cli.cosyvoice", module)):
        monkeypatch.setitem(sys.modules, name, mod)
    return FakeCosyVoice2


def test_zero_shot_turns_go_to_cosyvoice_random_timbre_to_the_other_engine(tmp_path: Path, fake_cosyvoice) -> None:
    model_dir = tmp_path / "CosyVoice2-0.5B"
    model_dir.mkdir()
    clip = tmp_path / "SSB00050001.wav"
    soundfile.write(clip, np.zeros(16_000, np.float32), 16_000)
    stage = build_stage("synthesize", "speak", {
        "engine": {"kind": "cosyvoice2", "model_dir": str(model_dir), "fp16": True},
        "random_timbre_engine": {"kind": "espeak"}}, 4)
    stage.setup()
    (cv,) = fake_cosyvoice.instances
    assert cv.args == {"model_dir": str(model_dir), "load_jit": False, "load_trt": False, "load_vllm": False, "fp16": True}

    matched = VoiceChoice(engine="zero_shot", match="gender_age", seed=77, speaker_id="SSB0005",
                          clip_id="aishell3:SSB00050001", clip_path=str(clip), clip_transcript="胃不舒服",
                          speaker_gender="female", speaker_age_group="adult")
    random = VoiceChoice(engine="random_timbre", match="none", seed=78)
    turns = [Turn(role="patient", text="我胃疼了两天。", speech_text="我胃疼了两天。"), Turn(role="doctor", text="吃东西了吗？")]
    batch = [SourceDialogue(id="a", source="s", source_key="a", turns=turns, voice=matched),
             SourceDialogue(id="b", source="s", source_key="b", turns=turns, voice=random)]
    out = {t.dialogue_id: t for t in stage.process(batch).accepted}

    (call,) = cv.calls  # only the matched dialogue went to CosyVoice2
    assert (call["text"], call["prompt_text"], call["prompt_wav"], call["stream"]) == ("我胃疼了两天。", "胃不舒服", str(clip), False)
    assert out["a"].engine == "cosyvoice2" and out["b"].engine == "espeak"
    samples, rate = decode(out["a"].audio.bytes)
    assert rate == 16_000 and abs(len(samples) - 16_000) <= 2  # both 0.5 s chunks kept, 24 kHz → 16 kHz
    second_half = np.abs(np.fft.rfft(samples[8_000:]))
    assert abs(np.argmax(second_half) * 16_000 / 8_000 - 330) < 5  # the second chunk is there
    stage.close()


def test_cosyvoice_refuses_a_missing_checkpoint_and_a_voice_without_clip(tmp_path: Path, fake_cosyvoice) -> None:
    from actors.engines.tts import TTSConfig, build_tts

    with pytest.raises(FileNotFoundError, match="ModelScope"):
        build_tts(TTSConfig(kind="cosyvoice2", model_dir=str(tmp_path / "missing")))
    (tmp_path / "m").mkdir()
    engine = build_tts(TTSConfig(kind="cosyvoice2", model_dir=str(tmp_path / "m")))
    with pytest.raises(ValueError, match="reference clip"):
        engine.synthesize("你好", VoiceChoice(engine="random_timbre", match="none", seed=1), 0)


def test_doctor_turns_in_a_reference_voice_with_speech_units(tmp_path: Path, fake_cosyvoice) -> None:
    """Doctor turns spoken zero-shot from `doctor_voice`, and their units taken from the
    audio that was kept, through the frontend's tokenizer in windows of at most 30 s."""
    model_dir = tmp_path / "CosyVoice2-0.5B"
    model_dir.mkdir()
    doctor_clip = tmp_path / "doctor.wav"
    soundfile.write(doctor_clip, np.zeros(16_000, np.float32), 16_000)
    stage = build_stage("synthesize", "speak", {
        "engine": {"kind": "cosyvoice2", "model_dir": str(model_dir)}, "random_timbre_engine": {"kind": "espeak"},
        "doctor_turns": True, "doctor_units": True,
        "doctor_voice": {"path": str(doctor_clip), "transcript": "您好，我是医生。"}}, 4)
    stage.setup()
    (cv,) = fake_cosyvoice.instances
    turns = [Turn(role="patient", text="我胃疼了两天。"), Turn(role="doctor", text="吃东西了吗？")]
    batch = [SourceDialogue(id="a", source="s", source_key="a", turns=turns,
                            voice=VoiceChoice(engine="random_timbre", match="none", seed=3))]
    patient, doctor = stage.process(batch).accepted
    assert patient.engine == "espeak" and patient.units is None
    assert doctor.engine == "cosyvoice2" and doctor.voice.clip_path == str(doctor_clip)
    assert cv.calls[-1]["prompt_wav"] == str(doctor_clip) and cv.calls[-1]["prompt_text"] == "您好，我是医生。"
    samples, _ = decode(doctor.audio.bytes)
    assert len(doctor.units) == len(samples) * 25 // 16_000 == 25  # 1 s of kept audio at 25 Hz
    assert cv.frontend.files == [(len(samples), pytest.approx(float(np.abs(samples).max()), abs=1e-3))]

    # Longer than the tokenizer's 30 s: windows of 30 s, units concatenated in order.
    engine = stage.engines["zero_shot"][1]
    long = np.concatenate([np.full(30 * 16_000, 0.1, np.float32), np.full(5 * 16_000, 0.2, np.float32)])
    units = engine.speech_units(long)
    assert len(units) == 30 * 25 + 5 * 25 and units[0] == 100 and units[-1] == 200
    stage.close()


def test_doctor_units_need_cosyvoice_and_doctor_turns() -> None:
    with pytest.raises(Exception, match="doctor_units needs doctor_turns"):
        build_stage("synthesize", "speak", {"doctor_units": True, "doctor_turns": True}, 4)
    with pytest.raises(Exception, match="doctor_units needs doctor_turns"):
        build_stage("synthesize", "speak", {"doctor_units": True, "engine": {"kind": "cosyvoice2", "model_dir": "/m"}}, 4)
