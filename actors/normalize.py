"""Adds the speakable form of every turn (`Turn.speech_text`) for TTS.

A dialogue is rejected `empty_speech_text` when a turn has nothing to say once normalised:
no letter, digit or Chinese character (only punctuation, emoji, control characters or a
`<cough>` placeholder). Such a turn would reach the TTS engine as silence and fail its
audio checks on every attempt; the rewrite stage holds its own turns to the same rule.
"""

from __future__ import annotations

from typing import Any

from actors.audio_qc import spoken_chars
from actors.base import Stage, StageResult
from actors.speech_text import NORMALIZER_VERSION, normalize_for_speech
from schemas import SourceDialogue


class NormalizeStage(Stage[SourceDialogue, SourceDialogue]):
    kind = "normalize"
    # 2: a turn with nothing speakable (only symbols) is rejected, not passed on.
    version = "2"
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
            silent = [i for i, t in enumerate(turns) if not spoken_chars(t.speech_text or "")]
            if silent:
                i = silent[0]
                result.rejected.append(self.reject(dialogue, "empty_speech_text", f"turn {i} has nothing to say once "
                                                   f"normalised ({turns[i].text[:40]!r} -> {turns[i].speech_text!r})"))
            else:
                result.accepted.append(spoken)
        return result
