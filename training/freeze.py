"""Which SpeechLM parts each training stage updates: one table, applied in one place.

    Stage I    LLM core only; every speech module frozen        (text dialogues)
    Stage II-a speech projector + LLM core                      (speech in, text out; 1:1 with text Q&A)
    Stage II-b speech generator only                            (speech in, response units out)

The Whisper encoder is frozen in every stage (as in SpeechMedAssist and LLaMA-Omni2).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel

from training.model import PARTS, Part, SpeechLMForCausalLM

Stage = Literal["1", "2a", "2b"]

TRAINABLE: dict[Stage, frozenset[Part]] = {
    "1": frozenset({"llm"}),
    "2a": frozenset({"speech_projector", "llm"}),
    "2b": frozenset({"speech_generator"}),
}


class PartCount(BaseModel):
    trainable: int
    frozen: int


def apply_freeze(model: SpeechLMForCausalLM, stage: Stage) -> dict[Part, PartCount]:
    """Set `requires_grad` by the stage's policy; parameter counts per part (tied weights once).

    A stage whose trainable part the model lacks (Stage II-b on a model without a speech
    generator) is refused: it would train nothing."""
    trainable = TRAINABLE[stage]
    counts = {part: [0, 0] for part in PARTS}
    for _, part, param in model.parts():
        learn = part in trainable
        param.requires_grad_(learn)
        counts[part][0 if learn else 1] += param.numel()
    missing = sorted(part for part in trainable if not counts[part][0])
    if missing:
        raise ValueError(f"stage {stage} trains {', '.join(missing)}, which this model does not have")
    return {part: PartCount(trainable=t, frozen=f) for part, (t, f) in counts.items()}
