"""Audio quality checks of one synthesised turn: pure functions over its samples.

Scores: seconds per spoken character (too fast means words were skipped, too slow means
babbling or long pauses), the share of clipped samples, and the silence before the first
and after the last sound. `qc_problems` names every bound a turn breaks; the synthesize
stage re-synthesises such a turn with a new seed and rejects the dialogue with the
scores when no attempt passes.
"""

from __future__ import annotations

import re

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from schemas import QCScores

# What is not spoken: punctuation, symbols, spaces, the cough placeholder.
_NOT_SPOKEN = re.compile(r"<cough>|[\s\W_]", re.UNICODE)


class QCParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    min_s_per_char: float = Field(0.08, ge=0, description="Mandarin speech runs at about 0.2-0.3 s a character")
    max_s_per_char: float = Field(0.8, gt=0)
    max_clipped: float = Field(0.001, ge=0, le=1, description="share of samples at full scale")
    max_edge_silence_s: float = Field(1.5, gt=0, description="silence before the first / after the last sound")
    silence_db: float = Field(-45, lt=0, description="frames quieter than this (dBFS) are silence")
    max_attempts: int = Field(3, ge=1, description="syntheses tried per turn before the dialogue is rejected")


def spoken_chars(text: str) -> int:
    return len(_NOT_SPOKEN.sub("", text))


def qc_scores(samples: np.ndarray, rate: int, text: str, *, inserted_s: float = 0.0, silence_db: float = -45.0) -> QCScores:
    """Scores of one turn; `inserted_s` (spliced coughs) is not counted as speech time, and
    20 ms frames quieter than `silence_db` are silence."""
    chars = spoken_chars(text)
    duration = len(samples) / rate
    frame = max(1, int(0.02 * rate))
    frames = len(samples) // frame
    loud = np.zeros(0, dtype=bool)
    if frames:
        energy = np.square(samples[: frames * frame].reshape(frames, frame), dtype=np.float64).mean(axis=1)
        loud = 10 * np.log10(np.maximum(energy, 1e-12)) > silence_db
    if loud.any():
        first, last = int(np.argmax(loud)), int(len(loud) - 1 - np.argmax(loud[::-1]))
        leading, trailing = first * frame / rate, max(duration - (last + 1) * frame / rate, 0.0)
    else:
        leading = trailing = duration
    return QCScores(duration_s=round(duration, 4), spoken_chars=chars,
                    s_per_char=round((duration - inserted_s) / chars, 4) if chars else None,
                    clipped=round(float(np.mean(np.abs(samples) >= 0.999)) if len(samples) else 0.0, 6),
                    leading_silence_s=round(leading, 3), trailing_silence_s=round(trailing, 3))


def qc_problems(scores: QCScores, params: QCParams) -> list[str]:
    """Every bound the turn breaks; empty = it passes."""
    problems = []
    if scores.duration_s == 0:
        return ["empty: no samples"]
    if scores.s_per_char is not None and not params.min_s_per_char <= scores.s_per_char <= params.max_s_per_char:
        problems.append(f"pace: {scores.s_per_char:.3f} s per character, allowed "
                        f"{params.min_s_per_char}-{params.max_s_per_char}")
    if scores.clipped > params.max_clipped:
        problems.append(f"clipping: {scores.clipped:.2%} of samples at full scale, max {params.max_clipped:.2%}")
    for edge, seconds in (("leading", scores.leading_silence_s), ("trailing", scores.trailing_silence_s)):
        if seconds > params.max_edge_silence_s:
            problems.append(f"silence: {seconds:.2f} s {edge}, max {params.max_edge_silence_s}")
    return problems
