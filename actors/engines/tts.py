"""The TTS engine interface and its configuration.

`TTSEngine.synthesize(text, voice, seed, dialogue) -> (samples, sample_rate)`: one utterance,
mono float32 in [-1, 1], in the voice the voice_match stage chose for the dialogue
(`VoiceChoice`: a reference clip for zero-shot engines, or a seed for a random timbre).
The same voice gives the same timbre for every turn of a dialogue; `seed` drives the
engine's sampling, so a retry with another seed says the same thing differently.

Where the choice alone cannot fix the timbre (FishSpeech draws one at random and keeps it
only by being prompted with speech it made), the engine keeps it in the dialogue's
`DialogueVoice`, which the caller creates per dialogue and voice and passes with every
utterance; engines whose voice the choice fixes ignore it. Implementations: `espeak` (CPU,
tests and the demo, `actors.engines.espeak_engine`); the GPU engines come with their own
adapters (`cosyvoice_engine`, `fishspeech_engine`).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from schemas import VoiceChoice


class TTSConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["espeak", "cosyvoice2", "fishspeech"] = "espeak"
    rate_wpm: int = Field(160, ge=80, le=450, description="espeak: speaking rate, words per minute")
    # cosyvoice2 / fishspeech: a checkpoint folder (CosyVoice2-0.5B; openaudio-s1-mini) and,
    # unless the package is installed, the repository checkout to import it from (CosyVoice:
    # pin a commit after 622a3a1, prompt_wav is a path; fish-speech: pin d3df505, before S2).
    model_dir: str | None = None
    repo_path: str | None = None
    fp16: bool = False
    load_jit: bool = False
    load_trt: bool = False
    # fishspeech: torch.compile the token decoder (slow first request, about 10x tokens/s
    # after), and the LM's dtype (fp16 for GPUs without bf16).
    compile: bool = False
    precision: Literal["bf16", "fp16"] = "bf16"


class DialogueVoice:
    """One dialogue's voice across its turns, for engines that fix a timbre by prompting.

    A random-timbre engine speaks the dialogue's first utterance without a prompt and
    `offer`s what it made (for FishSpeech: the text and its codes); every later utterance
    of the dialogue is spoken with `prompt`. The caller brackets each attempt at a turn:
    `begin_attempt()` before it, `keep_attempt()` once the turn is kept. An offer becomes
    the dialogue's prompt only when its attempt is kept, so a first turn synthesised
    again after failing its checks replaces it: the prompt is always speech that is in
    the dataset. Within an attempt the offer is already the prompt, so the pieces of a
    turn split at a cough share the timbre.
    """

    __slots__ = ("_kept", "_offered")

    def __init__(self) -> None:
        self._kept: Any = None
        self._offered: Any = None

    @property
    def prompt(self) -> Any:
        """What fixes the timbre, engine-specific; None before anything was offered."""
        return self._kept if self._kept is not None else self._offered

    def offer(self, prompt: Any) -> None:
        """Propose `prompt` (taken only while there is none)."""
        if self.prompt is None:
            self._offered = prompt

    def begin_attempt(self) -> None:
        self._offered = None  # an earlier attempt that was not kept

    def keep_attempt(self) -> None:
        if self._kept is None:
            self._kept = self._offered
        self._offered = None


class TTSEngine(ABC):
    @abstractmethod
    def synthesize(self, text: str, voice: VoiceChoice, seed: int,
                   dialogue: DialogueVoice | None = None) -> tuple[np.ndarray, int]:
        """One utterance of `text` in `voice`: (mono float32 samples in [-1, 1], sample rate).
        `dialogue`: the voice state of the dialogue the utterance belongs to (see `DialogueVoice`)."""

    def begin_dialogue(self) -> None:
        """A new dialogue starts. Engines whose output depends on what they spoke before
        reset that state here, so a dialogue sounds the same in a clean and a resumed run."""

    def speech_units(self, samples: np.ndarray) -> list[int]:
        """The speech tokens of 16 kHz mono `samples` (Stage II-b targets), for engines that
        carry a speech tokenizer; the others cannot."""
        raise NotImplementedError(f"{type(self).__name__} has no speech tokenizer; speech units need cosyvoice2 "
                                  "as the synthesize stage's `engine`")

    def close(self) -> None:
        """Release what the engine holds."""


def build_tts(config: TTSConfig) -> TTSEngine:
    if config.kind == "espeak":
        from actors.engines.espeak_engine import EspeakEngine

        return EspeakEngine(config)
    if config.kind == "cosyvoice2":
        from actors.engines.cosyvoice_engine import CosyVoice2Engine

        return CosyVoice2Engine(config)
    if config.kind == "fishspeech":
        from actors.engines.fishspeech_engine import FishSpeechEngine

        return FishSpeechEngine(config)
    raise ValueError(f"unknown TTS engine kind {config.kind!r}")
