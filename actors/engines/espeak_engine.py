"""espeak-ng Mandarin through the `espeakng-loader` wheel (libespeak-ng 1.52 with its data).

Real, robotic Mandarin speech on a CPU, about 1,000x faster than real time: the TTS engine
of tests and the demo. The voice is derived from the matched speaker so that it is
constant within a dialogue and plausible for the patient:

* variant: `cmn+f1..f5` for a female speaker, `cmn+m1..m7` for a male one, any of the
  twelve for a random timbre; which one is drawn from the dialogue's voice seed;
* pitch (espeak's 0-100 scale) by age group, children highest, with a small per-voice
  offset from the same seed.

Two things make libespeak-ng's output vary from call to call, both measured: the breathy
variants (f2, f3, f5) draw noise from a generator it seeds from the clock at
initialisation, and globals that outlive an utterance (waveform phase, flutter) make the
same text a few milliseconds longer or shorter depending on what was spoken before;
`espeak_Terminate` does not reset them. So each call seeds the generator with its `seed`
(`espeak_ng_SetRandSeed`), each engine loads a private copy of the library, and
`begin_dialogue` replaces that copy with a fresh one (about 20 ms). A dialogue's audio is
then a function of the dialogue alone, identical to the sample whatever was synthesised
before it, in a clean run or a resumed one.
"""

from __future__ import annotations

import _ctypes
import ctypes
import shutil
import tempfile
import threading
from pathlib import Path

import numpy as np

from actors.engines.tts import DialogueVoice, TTSConfig, TTSEngine
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
    def __init__(self, config: TTSConfig):
        self.config = config
        self._lock = threading.Lock()
        self._dir = tempfile.TemporaryDirectory(prefix="speechmed-espeak-")
        self._loads = 0
        self._lib = self._load()
        self._chunks: list[np.ndarray] = []
        self._callback = _CALLBACK(self._collect)  # kept referenced: the library calls it later

    def _load(self) -> ctypes.CDLL:
        """A private copy of libespeak-ng, initialised: its own, fresh global state."""
        import espeakng_loader

        self._loads += 1
        copy = Path(self._dir.name) / f"libespeak-ng-{self._loads}.so"
        shutil.copyfile(espeakng_loader.get_library_path(), copy)
        lib = ctypes.CDLL(str(copy))
        copy.unlink()  # mapped; the name is not needed any more
        lib.espeak_Initialize.restype = ctypes.c_int
        self.sample_rate = lib.espeak_Initialize(_SYNCHRONOUS, 0, espeakng_loader.get_data_path().encode(), 0)
        if self.sample_rate <= 0:
            raise RuntimeError(f"espeak-ng failed to initialise (code {self.sample_rate})")
        return lib

    def _unload(self) -> None:
        self._lib.espeak_Terminate()
        _ctypes.dlclose(self._lib._handle)

    def begin_dialogue(self) -> None:
        with self._lock:
            self._unload()
            self._lib = self._load()

    def close(self) -> None:
        with self._lock:
            self._unload()
        self._dir.cleanup()

    def _collect(self, wav: ctypes.POINTER(ctypes.c_short), count: int, events: ctypes.c_void_p) -> int:
        if count > 0:
            self._chunks.append(np.ctypeslib.as_array(wav, shape=(count,)).copy())
        return 0

    def synthesize(self, text: str, voice: VoiceChoice, seed: int = 0,
                   dialogue: DialogueVoice | None = None) -> tuple[np.ndarray, int]:
        # The voice fixes the timbre: `dialogue` is accepted for the interface. `seed`
        # drives the breath noise of the breathy variants.
        variant, pitch = espeak_voice(voice)
        data = text.encode("utf-8")
        with self._lock:
            self._chunks = []
            self._lib.espeak_SetSynthCallback(self._callback)  # the library has one callback, set it ours
            if self._lib.espeak_SetVoiceByName(variant.encode()) != 0:
                raise RuntimeError(f"espeak-ng has no voice {variant}")
            self._lib.espeak_SetParameter(_PITCH, pitch, 0)
            self._lib.espeak_SetParameter(_RATE, self.config.rate_wpm, 0)
            self._lib.espeak_ng_SetRandSeed(ctypes.c_long(seed))
            code = self._lib.espeak_Synth(data, len(data) + 1, 0, _POS_CHARACTER, 0, _CHARS_UTF8, None, None)
            self._lib.espeak_Synchronize()
            chunks, self._chunks = self._chunks, []
        if code != 0:
            raise RuntimeError(f"espeak-ng could not synthesise {text[:40]!r} (code {code})")
        samples = np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.int16)
        return (samples.astype(np.float32) / 32768.0), self.sample_rate
