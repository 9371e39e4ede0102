"""Adds the speakable form of every turn (`Turn.speech_text`) for TTS."""

from __future__ import annotations

from typing import Any

from actors.base import Stage, StageResult
from actors.speech_text import NORMALIZER_VERSION, normalize_for_speech
from schemas import SourceDialogue


class NormalizeStage(Stage[SourceDialogue, SourceDialogue]):
    kind = "normalize"
    input_model = SourceDialogue
    output_model = SourceDialogue

    def setup(self) -> None:
        normalize_for_speech("体温38.5℃")  # load the wetext rules once per actor, not on the first row

    def fingerprint_extra(self) -> dict[str, Any]:
        return {"normalizer": NORMALIZER_VERSION}

    def process(self, batch: list[SourceDialogue]) -> StageResult[SourceDialogue]:
        result: StageResult[SourceDialogue] = StageResult()
        for dialogue in batch:
            turns = [t.model_copy(update={"speech_text": normalize_for_speech(t.text)}) for t in dialogue.turns]
            spoken = dialogue.model_copy(update={"turns": turns})
            if any(not t.speech_text for t in turns):
                result.rejected.append(self.reject(dialogue, "empty_speech_text", "a turn normalised to nothing"))
            else:
                result.accepted.append(spoken)
        return result
