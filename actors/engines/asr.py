"""ASR engines for the round-trip check: what a listener would hear in a synthesised turn.

`ASREngine.transcribe(list of 16 kHz mono float32 arrays) -> list[str]`, one plain
transcript per input, in order. Two implementations, both loaded lazily and only from a
local checkpoint folder (a missing folder is refused, never taken for a hub id that would
download; ../shared/ENGINES.md §4):

* `sensevoice`: SenseVoiceSmall through FunASR, `AutoModel(model=<dir>, disable_update=True)`,
  `generate(input=[arrays], cache={}, language="zh", use_itn=True, batch_size=N)`: without
  VAD and for clips under 30 s (turns are) this is real batched inference. Its raw text
  carries tags (`<|zh|><|NEUTRAL|><|Speech|><|withitn|>...`); they are cut with a regex,
  not FunASR's `rich_transcription_postprocess`, which turns emotion and event tags into
  emoji that would count as errors.
* `whisper`: a Whisper checkpoint through the transformers ASR pipeline, inputs
  `{"raw": array, "sampling_rate": 16000}`, `generate_kwargs={"language": "zh",
  "task": "transcribe"}`. Whisper may answer in Traditional characters; the CER
  (`actors.audio_qc.cer`) folds them to Simplified.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

RATE = 16_000  # both models take 16 kHz input, the rate the synthesize stage stores
# SenseVoice's language, emotion, event and ITN tags: <|zh|>, <|NEUTRAL|>, <|Speech|>, <|withitn|>.
_TAG = re.compile(r"<\|[^|]*\|>")


class ASRConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["sensevoice", "whisper"]
    model_dir: str = Field(description="local checkpoint folder (SenseVoiceSmall, or a Whisper model); never a hub id")
    device: str = Field("cuda:0", description="torch device, e.g. cuda:0 (the actor's GPU) or cpu")
    batch_size: int = Field(16, ge=1, description="clips per forward pass")
    # Only Mandarin is synthesised; a fixed literal also keeps out typos such as SpeechMedAssist's
    # "zn", which SenseVoice silently treats as auto-detect.
    language: Literal["zh"] = "zh"
    fp16: bool = Field(False, description="whisper: half-precision weights (GPU)")


class ASREngine(ABC):
    @abstractmethod
    def transcribe(self, clips: list[np.ndarray]) -> list[str]:
        """One transcript per 16 kHz mono float32 clip, in order."""

    def close(self) -> None:
        """Release what the engine holds."""


def _local_dir(config: ASRConfig) -> str:
    if not Path(config.model_dir).is_dir():
        raise FileNotFoundError(f"{config.kind}: model_dir {config.model_dir!r} is not a folder; point it at a "
                                "downloaded checkpoint (hub ids are refused: nothing is downloaded at run time)")
    return config.model_dir


class SenseVoiceEngine(ASREngine):
    def __init__(self, config: ASRConfig):
        model_dir = _local_dir(config)
        from funasr import AutoModel

        self.config = config
        self.model = AutoModel(model=model_dir, device=config.device, disable_update=True)

    def transcribe(self, clips: list[np.ndarray]) -> list[str]:
        if not clips:
            return []
        out = self.model.generate(input=[np.asarray(c, dtype=np.float32) for c in clips], cache={},
                                  language=self.config.language, use_itn=True, batch_size=self.config.batch_size,
                                  fs=RATE)
        if len(out) != len(clips):
            raise RuntimeError(f"sensevoice returned {len(out)} results for {len(clips)} clips")
        return [_TAG.sub("", item["text"]).strip() for item in out]

    def close(self) -> None:
        self.model = None
        _free_gpu_cache()


class WhisperEngine(ASREngine):
    def __init__(self, config: ASRConfig):
        model_dir = _local_dir(config)
        import torch
        from transformers import pipeline

        self.config = config
        self.pipe = pipeline("automatic-speech-recognition", model=model_dir, device=config.device,
                             dtype=torch.float16 if config.fp16 else torch.float32)

    def transcribe(self, clips: list[np.ndarray]) -> list[str]:
        if not clips:
            return []
        inputs = [{"raw": np.asarray(c, dtype=np.float32), "sampling_rate": RATE} for c in clips]
        out = self.pipe(inputs, batch_size=self.config.batch_size, return_timestamps=False,
                        generate_kwargs={"language": self.config.language, "task": "transcribe"})
        return [item["text"].strip() for item in out]

    def close(self) -> None:
        self.pipe = None
        _free_gpu_cache()


def _free_gpu_cache() -> None:
    # Both engines run on torch (FunASR brings it); the stage's TTS engine shares the GPU.
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def build_asr(config: ASRConfig) -> ASREngine:
    if config.kind == "sensevoice":
        return SenseVoiceEngine(config)
    if config.kind == "whisper":
        return WhisperEngine(config)
    raise ValueError(f"unknown ASR engine kind {config.kind!r}")
