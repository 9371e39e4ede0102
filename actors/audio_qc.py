"""Audio quality checks of one synthesised turn: pure functions over its samples.

Scores: seconds per spoken character (too fast means words were skipped, too slow means
babbling or long pauses), the share of clipped samples, and the silence before the first
and after the last sound. `qc_problems` names every bound a turn breaks; the synthesize
stage re-synthesises such a turn with a new seed and rejects the dialogue with the
scores when no attempt passes.

Optionally (`QCParams.asr`, a GPU ASR model) the round trip: the turn's audio is
transcribed and its character error rate (`cer`) against the text must stay within
`max_cer`, which catches what the signal checks cannot (skipped, repeated or garbled words).
"""

from __future__ import annotations

import functools
import re
import unicodedata

import numpy as np
import opencc
from pydantic import BaseModel, ConfigDict, Field
from rapidfuzz.distance import Levenshtein

from actors.engines.asr import ASRConfig
from actors.rewrite_rules import COUGH
from actors.speech_text import normalize_for_speech
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
    asr: ASRConfig | None = Field(None, description="ASR round trip (SenseVoice or Whisper); None: no CER check")
    max_cer: float = Field(0.15, ge=0, le=1, description="highest character error rate of the ASR round trip")


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
        framed = samples[: frames * frame].reshape(frames, frame)
        # Mean power per frame against the threshold as a power (no log per frame): one pass.
        loud = np.einsum("ij,ij->i", framed, framed) / frame > max(10 ** (silence_db / 10), 1e-12)
    if loud.any():
        first, last = int(np.argmax(loud)), int(len(loud) - 1 - np.argmax(loud[::-1]))
        leading, trailing = first * frame / rate, max(duration - (last + 1) * frame / rate, 0.0)
    else:
        leading = trailing = duration
    return QCScores(duration_s=round(duration, 4), spoken_chars=chars,
                    s_per_char=round((duration - inserted_s) / chars, 4) if chars else None,
                    clipped=round(np.count_nonzero((samples >= 0.999) | (samples <= -0.999)) / len(samples)
                                  if len(samples) else 0.0, 6),
                    leading_silence_s=round(leading, 4), trailing_silence_s=round(trailing, 4))


def signal_problems(samples: np.ndarray) -> list[str]:
    """What makes samples unusable whatever their scores: NaN or infinite values (an engine
    in half precision can emit them; no score is meaningful then and FLAC cannot hold them)."""
    if np.isfinite(np.sum(samples, dtype=np.float64)):  # a float64 sum of finite float32 samples cannot overflow
        return []
    bad = int(np.size(samples) - np.isfinite(samples).sum())
    return [f"non_finite: {bad} of {np.size(samples)} samples are NaN or infinite"] if bad else []


def qc_problems(scores: QCScores, params: QCParams) -> list[str]:
    """Every bound the turn breaks; empty = it passes."""
    problems = []
    if scores.duration_s == 0:
        return ["empty: no samples"]
    if scores.leading_silence_s >= scores.duration_s:
        return [f"silent: no frame above {params.silence_db} dBFS in {scores.duration_s:.2f} s"]
    if scores.s_per_char is not None and not params.min_s_per_char <= scores.s_per_char <= params.max_s_per_char:
        problems.append(f"pace: {scores.s_per_char:.3f} s per character, allowed "
                        f"{params.min_s_per_char}-{params.max_s_per_char}")
    if scores.clipped > params.max_clipped:
        problems.append(f"clipping: {scores.clipped:.2%} of samples at full scale, max {params.max_clipped:.2%}")
    for edge, seconds in (("leading", scores.leading_silence_s), ("trailing", scores.trailing_silence_s)):
        if seconds > params.max_edge_silence_s:
            problems.append(f"silence: {seconds:.2f} s {edge}, max {params.max_edge_silence_s}")
    if scores.cer is not None and scores.cer > params.max_cer:
        problems.append(f"asr: CER {scores.cer:.3f}, max {params.max_cer} (heard {scores.asr_text!r})")
    return problems


def with_asr(scores: QCScores, text: str, heard: str) -> QCScores:
    """`scores` with the ASR round trip of the turn: what was heard and its CER against `text`."""
    return scores.model_copy(update={"cer": round(cer(text, heard), 4), "asr_text": heard})


@functools.cache
def _to_simplified() -> opencc.OpenCC:
    return opencc.OpenCC("t2s")


def comparable(text: str) -> str:
    """The characters of `text` that a CER compares, in one canonical form.

    Both sides go through the same steps, so that only what was said differently counts:
    the cough placeholder out; NFKC (full-width letters and digits to half-width);
    Traditional to Simplified (Whisper writes either); the speech-text normaliser of the
    TTS input (ASR writes "38.5度" or "3天" where the spoken text has 三十八点五度, 三天);
    lowercase; punctuation, symbols and spaces out (ASR punctuates as it likes).
    """
    text = unicodedata.normalize("NFKC", text.replace(COUGH, " "))
    text = normalize_for_speech(_to_simplified().convert(text))
    return _NOT_SPOKEN.sub("", text.lower())


def cer(reference: str, hypothesis: str) -> float:
    """Character error rate: edits (substitutions, insertions, deletions) to turn the
    hypothesis into the reference, over the reference's length, both `comparable`. May
    exceed 1 (insertions). A reference with nothing to say scores 0 when nothing was
    heard and 1 when anything was (the rate itself is undefined there)."""
    ref, hyp = comparable(reference), comparable(hypothesis)
    if not ref:
        return 0.0 if not hyp else 1.0
    return Levenshtein.distance(ref, hyp) / len(ref)
