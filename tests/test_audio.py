"""Audio transformations: 16 kHz mono resampling, FLAC, loudness-matched cough splicing."""

from __future__ import annotations

import numpy as np
import pytest

from actors.audio import RATE, decode, flac_bytes, rms_db, splice, to_mono_16k


def sine(freq: float, seconds: float, rate: int, amp: float = 0.3) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def peak_hz(x: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(x))
    return float(np.argmax(spectrum) * rate / len(x))


def test_stereo_44k_to_mono_16k_keeps_the_pitch() -> None:
    left = sine(1000, 2.0, 44_100)
    stereo = np.stack([left, left], axis=1)
    mono = to_mono_16k(stereo, 44_100)
    assert mono.dtype == np.float32 and mono.ndim == 1
    assert abs(len(mono) - 2 * RATE) <= 2
    assert abs(peak_hz(mono, RATE) - 1000) < 2
    assert to_mono_16k(np.zeros(0), 24_000).size == 0


def test_flac_round_trip_and_clipping() -> None:
    x = sine(440, 0.5, RATE)
    back, rate = decode(flac_bytes(x))
    assert rate == RATE and np.max(np.abs(back - x)) < 1 / 16_000
    loud, _ = decode(flac_bytes(np.array([2.0, -3.0, 0.5], dtype=np.float32)))
    assert loud.max() <= 1.0 and loud.min() >= -1.0 and loud[0] > 0.99 and loud[1] < -0.99


def test_splice_matches_loudness_and_records_offsets() -> None:
    speech = [sine(200, 1.0, RATE, 0.2), sine(250, 0.5, RATE, 0.2)]
    cough = sine(900, 0.3, RATE, 0.9)  # much louder than the speech
    out, spans = splice(speech, [cough], crossfade_s=0.01)
    fade = int(0.01 * RATE)
    assert len(out) == RATE + int(0.3 * RATE) + RATE // 2 - 2 * fade
    (span,) = spans
    assert span.offset_s == pytest.approx(1.0 - 0.01) and span.duration_s == pytest.approx(0.3)
    start = int(span.offset_s * RATE) + fade
    inserted = out[start:start + int(0.3 * RATE) - 2 * fade]
    assert abs(rms_db(inserted) - rms_db(np.concatenate(speech))) < 1.0
    assert abs(peak_hz(inserted, RATE) - 900) < 10


def test_splice_at_the_edges_and_wrong_counts() -> None:
    cough = sine(900, 0.2, RATE)
    out, spans = splice([np.zeros(0, np.float32), sine(200, 0.5, RATE)], [cough])
    assert spans[0].offset_s == 0.0 and len(out) == int(0.7 * RATE) - int(0.01 * RATE)
    with pytest.raises(ValueError, match="2 pieces need 1 inserts"):
        splice([cough, cough], [])


def test_qc_scores_and_problems() -> None:
    from actors.audio_qc import QCParams, qc_problems, qc_scores

    params = QCParams()
    speech = np.concatenate([np.zeros(RATE // 5, np.float32), sine(200, 2.0, RATE), np.zeros(RATE // 10, np.float32)])
    good = qc_scores(speech, RATE, "我头疼了三天，晚上睡不好。")  # 11 spoken characters
    assert good.spoken_chars == 11 and good.s_per_char == pytest.approx(2.3 / 11, abs=1e-3)
    assert good.leading_silence_s == pytest.approx(0.2, abs=0.02) and good.trailing_silence_s == pytest.approx(0.1, abs=0.02)
    assert qc_problems(good, params) == []

    rushed = qc_scores(sine(200, 0.3, RATE), RATE, "我头疼了三天，晚上睡不好。")
    assert [p.split(":")[0] for p in qc_problems(rushed, params)] == ["pace"]
    clipped = qc_scores(np.clip(sine(200, 2.0, RATE, 3.0), -1, 1), RATE, "我头疼了三天，晚上睡不好。")
    assert any(p.startswith("clipping") for p in qc_problems(clipped, params))
    padded = np.concatenate([np.zeros(3 * RATE, np.float32), sine(200, 2.0, RATE)])
    assert any(p.startswith("silence: 3.00 s leading") for p in qc_problems(qc_scores(padded, RATE, "我头疼了"), params))
    # A spliced cough is not speech time: 2.3 s of audio of which 1.5 s cough → 0.8 s for 11 characters.
    assert qc_scores(speech, RATE, "我<cough>头疼了三天，晚上睡不好。", inserted_s=1.5).s_per_char == pytest.approx(0.8 / 11, abs=1e-3)
    assert qc_problems(qc_scores(np.zeros(0, np.float32), RATE, "好"), params) == ["empty: no samples"]
    # Sound-free audio (an engine that spoke nothing, or a turn of only punctuation) is no speech.
    silent = qc_problems(qc_scores(np.full(RATE // 2, 1e-4, np.float32), RATE, "……"), params)
    assert silent == ["silent: no frame above -45 dBFS in 0.50 s"]


@pytest.mark.parametrize("snr", [0.0, 10.0, 20.0])
def test_noise_is_mixed_at_the_asked_snr(snr: float) -> None:
    from actors.audio import mix_at_snr

    speech = sine(300, 1.0, RATE, 0.2)
    noise = np.random.default_rng(1).standard_normal(RATE // 3).astype(np.float32) * 0.05  # shorter: looped
    mixed = mix_at_snr(speech, noise, snr, offset=1234)
    added = mixed - speech
    measured = 10 * np.log10(np.mean(speech.astype(np.float64) ** 2) / np.mean(added.astype(np.float64) ** 2))
    assert len(mixed) == len(speech) and abs(measured - snr) < 0.2
    assert np.array_equal(mix_at_snr(speech, np.zeros(100, np.float32), snr), speech)
