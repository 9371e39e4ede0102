"""espeak-ng Mandarin through the `espeakng-loader` wheel (libespeak-ng 1.52 with its data).

Real, robotic Mandarin speech on a CPU, about 1,000x faster than real time: the TTS engine
of tests and the demo. The voice is derived from the matched speaker so that it is
constant within a dialogue and plausible for the patient:

* variant: `cmn+f1..f5` for a female speaker, `cmn+m1..m7` for a male one, any of the
  twelve for a random timbre; which one is drawn from the dialogue's voice seed;
* pitch (espeak's 0-100 scale) by age group, children highest, with a small per-voice
  offset from the same seed.

libespeak-ng is one global synthesiser per process, so calls are serialised by a lock. It
is not bit-reproducible: the same text in the same voice varies by a few samples (well
under a millisecond) from call to call, and `espeak_ng_SetRandSeed` does not remove it
(measured). Voice, pitch and every choice the pipeline makes are reproducible; sample
counts, and so cough offsets, agree to within that jitter.
"""

from __future__ import annotations

import ctypes
import threading

import numpy as np

from actors.engines.tts import TTSConfig, TTSEngine
from schemas import VoiceChoice

_SYNCHRONOUS = 2  # AUDIO_OUTPUT_SYNCHRONOUS: synthesise into the callback, return when done
_RATE, _PITCH = 1, 3  # espeak_PARAMETER
_POS_CHARACTER, _CHARS_UTF8 = 1, 1
_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)
_PITCH_BY_AGE = {"child": 80, "young_adult": 60, "adult": 50, "elderly": 38, None: 50, "unknown": 50}
_FEMALE = [f"cmn+f{i}" for i in range(1, 6)]
_MALE = [f"cmn+m{i}" for i in range(1, 8)]


def espeak_voice(voice: VoiceChoice) -> tuple[str, int]:
    """(variant name, pitch) for a voice choice; a pure function of the choice."""
    rng = np.random.default_rng(voice.seed)
    gender = voice.speaker_gender
    variants = _FEMALE if gender == "female" else _MALE if gender == "male" else _FEMALE + _MALE
    variant = variants[int(rng.integers(len(variants)))]
    pitch = _PITCH_BY_AGE[voice.speaker_age_group] + int(rng.integers(-6, 7))
    return variant, pitch


class EspeakEngine(TTSEngine):
    _lock = threading.Lock()  # one synthesiser per process, whatever the number of engines

    def __init__(self, config: TTSConfig):
        import espeakng_loader

        self.config = config
        self._lib = ctypes.CDLL(espeakng_loader.get_library_path())
        self._lib.espeak_Initialize.restype = ctypes.c_int
        self.sample_rate = self._lib.espeak_Initialize(_SYNCHRONOUS, 0, espeakng_loader.get_data_path().encode(), 0)
        if self.sample_rate <= 0:
            raise RuntimeError(f"espeak-ng failed to initialise (code {self.sample_rate})")
        self._chunks: list[np.ndarray] = []
        self._callback = _CALLBACK(self._collect)  # kept referenced: the library calls it later

    def _collect(self, wav: ctypes.POINTER(ctypes.c_short), count: int, events: ctypes.c_void_p) -> int:
        if count > 0:
            self._chunks.append(np.ctypeslib.as_array(wav, shape=(count,)).copy())
        return 0

    def synthesize(self, text: str, voice: VoiceChoice, seed: int = 0) -> tuple[np.ndarray, int]:
        # espeak has no sampling to seed; `seed` is accepted for the interface.
        variant, pitch = espeak_voice(voice)
        data = text.encode("utf-8")
        with self._lock:
            self._chunks = []
            self._lib.espeak_SetSynthCallback(self._callback)  # the library has one callback, set it ours
            if self._lib.espeak_SetVoiceByName(variant.encode()) != 0:
                raise RuntimeError(f"espeak-ng has no voice {variant}")
            self._lib.espeak_SetParameter(_PITCH, pitch, 0)
            self._lib.espeak_SetParameter(_RATE, self.config.rate_wpm, 0)
            code = self._lib.espeak_Synth(data, len(data) + 1, 0, _POS_CHARACTER, 0, _CHARS_UTF8, None, None)
            self._lib.espeak_Synchronize()
            chunks, self._chunks = self._chunks, []
        if code != 0:
            raise RuntimeError(f"espeak-ng could not synthesise {text[:40]!r} (code {code})")
        samples = np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.int16)
        return (samples.astype(np.float32) / 32768.0), self.sample_rate
