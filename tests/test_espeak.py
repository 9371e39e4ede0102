"""The espeak-ng engine (the real library from the espeakng-loader wheel): Mandarin
speech of a plausible length, the same voice for the same choice, female and child
voices higher than male and elderly ones."""

from __future__ import annotations

import numpy as np
import pytest

from actors.engines.espeak_engine import espeak_voice
from actors.engines.tts import TTSConfig, build_tts
from schemas import VoiceChoice


def voice(gender: str | None, age: str | None, seed: int = 7) -> VoiceChoice:
    engine = "random_timbre" if gender is None and age is None else "zero_shot"
    return VoiceChoice(engine=engine, match="none" if engine == "random_timbre" else "gender_age", seed=seed,
                       speaker_gender=gender, speaker_age_group=age)


def f0(samples: np.ndarray, rate: int) -> float:
    """Median fundamental frequency of the voiced frames, by autocorrelation."""
    frame, hop, found = int(0.04 * rate), int(0.01 * rate), []
    lo, hi = rate // 400, rate // 60
    for start in range(0, len(samples) - frame, hop):
        x = samples[start:start + frame] - samples[start:start + frame].mean()
        if np.sqrt(np.mean(x ** 2)) < 0.02:
            continue
        ac = np.correlate(x, x, "full")[frame - 1:]
        lag = lo + int(np.argmax(ac[lo:hi]))
        if ac[lag] > 0.3 * ac[0]:
            found.append(rate / lag)
    return float(np.median(found))


@pytest.fixture(scope="module")
def engine():
    return build_tts(TTSConfig())


def test_speech_of_plausible_length(engine) -> None:
    samples, rate = engine.synthesize("医生，我头疼三天了，体温三十八度。", voice("female", "adult"), 0)
    assert rate == 22_050 and samples.dtype == np.float32
    seconds = len(samples) / rate
    assert 1.5 < seconds < 8 and np.abs(samples).max() <= 1.0 and samples.std() > 0.02
    short, _ = engine.synthesize("好。", voice("female", "adult"), 0)
    assert len(short) < len(samples) / 3


def test_same_voice_same_sound_and_variants_by_gender(engine) -> None:
    # libespeak-ng carries state from one utterance to the next (see the engine's docstring):
    # the same text differs after other speech, and is identical again after begin_dialogue.
    engine.begin_dialogue()
    a, rate = engine.synthesize("我嗓子疼，咳嗽三天了", voice("male", "adult", seed=3), 0)
    engine.synthesize("别的话", voice("female", "child", seed=9), 0)
    b, _ = engine.synthesize("我嗓子疼，咳嗽三天了", voice("male", "adult", seed=3), 0)
    assert abs(len(a) - len(b)) < 0.02 * rate and abs(f0(a, rate) - f0(b, rate)) < 5
    engine.begin_dialogue()
    again, _ = engine.synthesize("我嗓子疼，咳嗽三天了", voice("male", "adult", seed=3), 0)
    assert np.array_equal(again, a)
    assert espeak_voice(voice("female", "adult"))[0].startswith("cmn+f")
    assert espeak_voice(voice("male", "child"))[0].startswith("cmn+m")
    picks = {espeak_voice(voice(None, None, seed=s))[0] for s in range(60)}
    assert any(p.startswith("cmn+f") for p in picks) and any(p.startswith("cmn+m") for p in picks)


def test_pitch_follows_gender_and_age(engine) -> None:
    text = "医生您好，我最近总是咳嗽，晚上睡不好觉。"
    pitch = {key: f0(*engine.synthesize(text, voice(*key, seed=11), 0)) for key in
             [("female", "child"), ("female", "adult"), ("male", "adult"), ("male", "elderly")]}
    assert pitch[("female", "child")] > pitch[("female", "adult")]
    assert pitch[("female", "adult")] > pitch[("male", "adult")] > pitch[("male", "elderly")]
