"""The TTS engine interface and its configuration.

`TTSEngine.synthesize(text, voice, seed) -> (samples, sample_rate)`: one utterance, mono
float32 in [-1, 1], in the voice the voice_match stage chose for the dialogue
(`VoiceChoice`: a reference clip for zero-shot engines, or a seed for a random timbre).
The same voice gives the same timbre for every turn of a dialogue; `seed` drives the
engine's sampling, so a retry with another seed says the same thing differently. Implementations: `espeak` (CPU, tests and
the demo, `actors.engines.espeak_engine`); the GPU engines come with their own adapters.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from schemas import VoiceChoice


class TTSConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["espeak", "cosyvoice2"] = "espeak"
    rate_wpm: int = Field(160, ge=80, le=450, description="espeak: speaking rate, words per minute")
    # cosyvoice2: a checkpoint folder (CosyVoice2-0.5B) and, unless the package is installed,
    # the repository checkout to import it from (pin a commit after 622a3a1: prompt_wav is a path).
    model_dir: str | None = None
    repo_path: str | None = None
    fp16: bool = False
    load_jit: bool = False
    load_trt: bool = False


class TTSEngine(ABC):
    @abstractmethod
    def synthesize(self, text: str, voice: VoiceChoice, seed: int) -> tuple[np.ndarray, int]:
        """One utterance of `text` in `voice`: (mono float32 samples in [-1, 1], sample rate)."""

    def close(self) -> None:
        """Release what the engine holds."""


def build_tts(config: TTSConfig) -> TTSEngine:
    if config.kind == "espeak":
        from actors.engines.espeak_engine import EspeakEngine

        return EspeakEngine(config)
    if config.kind == "cosyvoice2":
        from actors.engines.cosyvoice_engine import CosyVoice2Engine

        return CosyVoice2Engine(config)
    raise ValueError(f"unknown TTS engine kind {config.kind!r}")
