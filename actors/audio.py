"""Audio transformations, as small pure functions over numpy arrays.

Everything the pipeline stores is 16 kHz mono float32 in [-1, 1] until it is encoded as
FLAC (16-bit) in the Hugging Face `Audio` layout.

Recordings read from outside (cough and noise clips, reference voices) go through
`load_audio`, which refuses what cannot be used with a reason code (`BadAudio`) instead of
passing it on: not audio, cut off short of the length its header gives (`truncation`), no
samples, longer than the caller allows (judged from the header, before decoding), or
samples that are NaN or infinite (float WAVs can hold them; one NaN spreads through
resampling, loudness matching and mixing, and 16-bit FLAC cannot store it). Non-finite samples are refused rather than zeroed: a file holding them is
broken, and silently repairing it would hide that.
"""

from __future__ import annotations

import io
import struct
from dataclasses import dataclass
from typing import BinaryIO
from pathlib import Path

import numpy as np
import soundfile
import soxr

RATE = 16_000


def to_mono_16k(samples: np.ndarray, rate: int) -> np.ndarray:
    """Mono (channels averaged), resampled to 16 kHz (soxr, high quality), float32."""
    x = np.asarray(samples, dtype=np.float32)
    if x.ndim == 2:
        x = x.mean(axis=1)
    if rate != RATE and len(x):
        x = soxr.resample(x, rate, RATE, quality="HQ").astype(np.float32, copy=False)
    return x


def flac_bytes(samples: np.ndarray, rate: int = RATE) -> bytes:
    """16-bit FLAC of the samples, clipped to [-1, 1] first (PCM_16 wraps otherwise).
    ValueError for NaN or infinite samples (libsndfile fails on them with a bare assertion)."""
    if not np.isfinite(samples).all():
        raise ValueError(f"{int(np.size(samples) - np.isfinite(samples).sum())} of {np.size(samples)} samples are NaN "
                         "or infinite; such audio cannot be encoded")
    buffer = io.BytesIO()
    soundfile.write(buffer, np.clip(samples, -1.0, 1.0), rate, format="FLAC", subtype="PCM_16")
    return buffer.getvalue()


def decode(data: bytes) -> tuple[np.ndarray, int]:
    samples, rate = soundfile.read(io.BytesIO(data), dtype="float32", always_2d=False)
    return samples, rate


class BadAudio(ValueError):
    """Audio that cannot be used: `code` is the reason code, the message names the file."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code


def _wav_shortfall(head: bytes, size: int) -> str | None:
    """For a RIFF/RIFX WAVE file: why its `data` chunk is cut off ("" when it is whole);
    None when `head` is not a WAVE header."""
    if len(head) < 12 or head[:4] not in (b"RIFF", b"RIFX") or head[8:12] != b"WAVE":
        return None
    order, pos = ("<" if head[:4] == b"RIFF" else ">"), 12
    while pos + 8 <= len(head):
        chunk, length = head[pos:pos + 4], struct.unpack(f"{order}I", head[pos + 4:pos + 8])[0]
        if chunk == b"data":
            missing = pos + 8 + length - size
            # 0 and 0xFFFFFFFF: a streaming writer that did not know the length.
            if length in (0, 0xFFFFFFFF) or missing <= 0:
                return ""
            return f"its data chunk holds {length:,} bytes but the file ends {missing:,} bytes short of them"
        pos += 8 + length + (length & 1)
    return ""


def truncation(f: BinaryIO) -> str | None:
    """Why an encoded audio file ends short of the length its header gives, or None.

    libsndfile reads a cut-off WAV quietly (as many frames as are there), so a WAV's `data`
    chunk is checked against the file's size; any other format (FLAC) must be able to seek
    to its last frame and read it. Cheap: the header and one frame, never the whole file."""
    f.seek(0)
    head, size = f.read(1 << 16), f.seek(0, io.SEEK_END)
    wav = _wav_shortfall(head, size)
    if wav is not None:
        return wav or None
    f.seek(0)
    try:
        with soundfile.SoundFile(f) as sound:
            if sound.frames > 0:
                sound.seek(sound.frames - 1)
                if len(sound.read(1)) != 1:
                    return f"its header gives {sound.frames:,} frames but the last cannot be read"
    except (soundfile.LibsndfileError, RuntimeError) as exc:
        return f"its last frame cannot be read ({exc})"
    return None


def load_audio(data: bytes, where: str, *, max_s: float | None = None) -> np.ndarray:
    """Encoded audio (WAV, FLAC, OGG; any rate, any number of channels) as checked 16 kHz
    mono float32. BadAudio, naming `where`, with code `unreadable_audio` (not audio
    soundfile reads, or cut off inside its frames), `empty_audio` (no samples), `too_long`
    (over `max_s` seconds) or `non_finite` (NaN or infinite samples)."""
    try:
        info = soundfile.info(io.BytesIO(data))
        if max_s is not None and info.samplerate and info.frames / info.samplerate > max_s:
            raise BadAudio("too_long", f"{where}: {info.frames / info.samplerate:.1f} s, over the {max_s:g} s allowed "
                           "here; cut it or remove it")
        # The decode below fails on other formats cut off (FLAC loses sync); a WAV it would
        # read short without a word, so only its data chunk needs checking here.
        cut = _wav_shortfall(data[:1 << 16], len(data))
        if cut:
            raise BadAudio("unreadable_audio", f"{where}: cut off: {cut}; the file is incomplete, copy it again or "
                           "remove it")
        samples, rate = decode(data)
    except (soundfile.LibsndfileError, RuntimeError) as exc:
        raise BadAudio("unreadable_audio", f"{where}: not readable audio ({exc}); replace or remove the file") from None
    if not samples.size:
        raise BadAudio("empty_audio", f"{where}: the file holds no samples; replace or remove it")
    bad = int(samples.size - np.isfinite(samples).sum())
    if bad:
        raise BadAudio("non_finite", f"{where}: {bad} of {samples.size} samples are NaN or infinite (a broken float "
                       "recording); replace or remove the file")
    return to_mono_16k(samples, rate)


def rms_db(samples: np.ndarray) -> float:
    """Loudness as RMS in dBFS (-120 for silence)."""
    if not len(samples):
        return -120.0
    rms = float(np.sqrt(np.mean(np.square(samples, dtype=np.float64))))
    return 20 * np.log10(max(rms, 1e-6))


@dataclass(frozen=True)
class Splice:
    """Where one inserted clip lies in the spliced result, in seconds."""

    offset_s: float
    duration_s: float


def splice(pieces: list[np.ndarray], inserts: list[np.ndarray], crossfade_s: float = 0.01,
           rate: int = RATE) -> tuple[np.ndarray, list[Splice]]:
    """pieces[0] + inserts[0] + pieces[1] + ... + pieces[-1], each insert scaled to the
    loudness of the speech around it and joined with short linear crossfades.

    `len(pieces) == len(inserts) + 1`; empty pieces are allowed (a cough at the start or
    the end of a turn)."""
    if len(pieces) != len(inserts) + 1:
        raise ValueError(f"{len(pieces)} pieces need {len(pieces) - 1} inserts, got {len(inserts)}")
    if not inserts:  # most turns: nothing to splice
        return np.asarray(pieces[0], dtype=np.float32), []
    speech = np.concatenate([p for p in pieces if len(p)]) if any(len(p) for p in pieces) else np.zeros(0, np.float32)
    target = rms_db(speech) if len(speech) else -20.0
    fade = max(1, int(crossfade_s * rate))
    out = np.asarray(pieces[0], dtype=np.float32)
    spans = []
    for insert, piece in zip(inserts, pieces[1:]):
        gain = 10 ** ((target - rms_db(insert)) / 20) if len(insert) else 1.0
        scaled = np.clip(np.asarray(insert, dtype=np.float32) * gain, -1.0, 1.0)
        start = max(len(out) - min(fade, len(out), len(scaled)), 0)
        out = _join(out, scaled, fade)
        spans.append(Splice(offset_s=start / rate, duration_s=len(scaled) / rate))
        out = _join(out, np.asarray(piece, dtype=np.float32), fade)
    return out, spans


def _join(a: np.ndarray, b: np.ndarray, fade: int) -> np.ndarray:
    """a then b, overlapping by up to `fade` samples with a linear crossfade."""
    n = min(fade, len(a), len(b))
    if n == 0:
        return np.concatenate([a, b])
    ramp = np.linspace(0.0, 1.0, n, dtype=np.float32)
    mixed = a[-n:] * (1 - ramp) + b[:n] * ramp
    return np.concatenate([a[:-n], mixed, b[n:]])


def mix_at_snr(speech: np.ndarray, noise: np.ndarray, snr_db: float, offset: int = 0) -> np.ndarray:
    """Speech plus noise scaled to `snr_db` below it; the noise is read from `offset` on
    and looped to the speech's length. Clipped to [-1, 1]."""
    if not len(speech) or not len(noise):
        return np.asarray(speech, dtype=np.float32)
    reps = -(-(offset % len(noise) + len(speech)) // len(noise))
    bed = np.tile(noise, reps)[offset % len(noise): offset % len(noise) + len(speech)]
    speech_power = float(np.mean(np.square(speech, dtype=np.float64)))
    noise_power = float(np.mean(np.square(bed, dtype=np.float64)))
    if noise_power == 0:
        return np.asarray(speech, dtype=np.float32)
    gain = np.sqrt(speech_power / (noise_power * 10 ** (snr_db / 10)))
    return np.clip(speech + gain * bed, -1.0, 1.0).astype(np.float32)


def write_cough_like_clips(folder: str | Path, clips: list[tuple[int, float]], seed: int = 0,
                           subtype: str | None = None) -> Path:
    """Cough-like clips (a decaying noise burst with a fast attack), one WAV per (rate,
    seconds), `cough-<i>.wav`: no cough recordings ship with any package, so the demo, the
    tests and the benchmarks make these; real runs read SoundDr / CoughVid files."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i, (rate, seconds) in enumerate(clips):
        n = int(rate * seconds)
        envelope = np.exp(-np.linspace(0, 8, n)) * np.minimum(1, np.linspace(0, 40, n))
        soundfile.write(folder / f"cough-{i}.wav", 0.8 * envelope * rng.standard_normal(n), rate, subtype=subtype)
    return folder
