"""The record types that flow between stages, one pydantic model each.

Their Arrow schemas are derived (`schemas.arrow.arrow_schema`), never written by hand.
Vocabulary: a *dialogue* is a list of turns between a patient and a doctor; roles are
normalised at ingest (ShareGPT's human/user → patient, gpt/assistant → doctor).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

Role = Literal["patient", "doctor"]
Gender = Literal["male", "female", "unknown"]
# Age groups follow the reference-voice corpora (Aishell-3's A-D): child < 14,
# young_adult 14-25, adult 26-40, elderly > 40.
AgeGroup = Literal["child", "young_adult", "adult", "elderly", "unknown"]
# What happens to a source record downstream; the LLM stages pick their prompt by it.
#   knowledge_qa   exam questions (CMB, CMExam): kept as they are
#   encyclopedia   encyclopedia / book Q&A (HuatuoGPT2 pretraining): one concise spoken Q&A
#   single_turn_qa single-turn Q&A (HuatuoGPT2-SFT): multi-turn with doctor follow-ups
#   consultation   multi-turn consultations (CMtMedQA, MedDG): shorter spoken multi-turn
#   safety         English safety demonstrations (MedSafetyBench): spoken Chinese
#   cough          cough-related consultations (MedDialog-CN): `<cough>` placeholders
Treatment = Literal["knowledge_qa", "encyclopedia", "single_turn_qa", "consultation", "safety", "cough"]


class Record(BaseModel):
    """Base of every stored record: immutable, unknown fields refused."""

    model_config = ConfigDict(frozen=True, extra="forbid")


class Turn(Record):
    role: Role
    text: str
    # The same turn made speakable for TTS (units, digits, symbols → Chinese words);
    # None until the normalise stage has run.
    speech_text: str | None = None


def age_group_of(age: int | None) -> AgeGroup:
    """The voice-pool age group of an age in years."""
    if age is None or age < 0:
        return "unknown"
    if age < 14:
        return "child"
    if age <= 25:
        return "young_adult"
    if age <= 40:
        return "adult"
    return "elderly"


class VoiceChoice(Record):
    """The patient voice a dialogue is synthesised with, chosen by the voice_match stage.

    `zero_shot`: a reference clip of a pool speaker matching the patient (CosyVoice2
    prompt); `random_timbre`: no attribute known, a random voice fixed by `seed`
    (FishSpeech). `match` says which attributes the speaker was chosen on.
    """

    engine: Literal["zero_shot", "random_timbre"]
    match: Literal["gender_age", "gender", "age_group", "none"]
    seed: int
    speaker_id: str | None = None
    clip_id: str | None = None
    clip_path: str | None = None
    clip_transcript: str | None = None
    speaker_gender: Gender | None = None
    speaker_age_group: AgeGroup | None = None


class SourceDialogue(Record):
    """One dialogue, from its source corpus through the text stages, with a stable id.

    The text stages fill in what they learn: `rewrite_prompt` once the turns are the
    rewritten spoken version, `age_group` and `demographics_by` once the patient's
    voice attributes are known.
    """

    id: str = Field(description="stable id derived from (source, source_key), never a position")
    source: str
    source_key: str = Field(description="the record's key in its corpus (upstream id, file:line, ...)")
    treatment: Treatment = "consultation"
    category: str | None = None
    subcategory: str | None = None
    gender: Gender = "unknown"
    age: int | None = None
    age_group: AgeGroup = "unknown"
    demographics_by: Literal["source", "llm", "source+llm"] | None = Field(
        None, description="where gender and age_group came from; None until the demographics stage")
    rewrite_prompt: str | None = Field(None, description="fingerprint of the prompt that rewrote the turns; None = as read")
    voice: VoiceChoice | None = Field(None, description="the patient's voice; None until the voice_match stage")
    turns: list[Turn]


class VoiceReference(Record):
    """One reference clip of the voice pool (Aishell-2/3)."""

    clip_id: str
    speaker_id: str
    corpus: str
    gender: Gender
    age_group: AgeGroup
    accent: str | None = None
    duration_s: float
    transcript: str
    path: str


class AudioData(Record):
    """The Hugging Face `Audio` storage layout: encoded bytes plus an optional path."""

    bytes: bytes
    path: str | None = None


class CoughSplice(Record):
    """A cough recording spliced into a turn's audio where its text had `<cough>`."""

    clip_id: str
    offset_s: float
    duration_s: float


class NoisyCopy(Record):
    """The turn's audio with a noise recording mixed in, for robustness sets."""

    snr_db: float
    noise_clip_id: str
    noise_offset_s: float
    audio: AudioData


class QCScores(Record):
    """Audio quality scores of one synthesised turn (actors.audio_qc)."""

    duration_s: float
    spoken_chars: int
    s_per_char: float | None = Field(description="speech seconds per spoken character; None if none")
    clipped: float = Field(description="share of samples at full scale")
    leading_silence_s: float
    trailing_silence_s: float
    cer: float | None = Field(None, description="character error rate of the ASR round trip against the spoken "
                              "text (actors.audio_qc.cer); None when no ASR is configured or nothing is to be said")
    asr_text: str | None = Field(None, description="what the ASR heard, as it wrote it")


class SynthesizedTurn(Record):
    """One spoken turn of a dialogue (the synthesize stage fans a dialogue out into these)."""

    id: str = Field(description="<dialogue id>-<turn index>")
    dialogue_id: str
    turn_index: int
    role: Role
    text: str = Field(description="what was spoken (the turn's speech_text), `<cough>` where a cough was spliced")
    audio: AudioData
    sample_rate: int
    duration_s: float
    engine: str = Field(description="the TTS engine kind that spoke it")
    voice: VoiceChoice
    coughs: list[CoughSplice] = []
    qc: QCScores
    attempts: int = Field(1, description="syntheses it took to pass the audio checks")
    noisy: list[NoisyCopy] = Field([], description="noisy copies, one per configured SNR")
    units: list[int] | None = Field(None, description="doctor turns with `doctor_units`: the CosyVoice2 25 Hz speech "
                                    "tokens of this audio, in [0, 6561) (Stage II-b targets)")


class Rejection(Record):
    """A record a stage would not pass on, kept with why (nothing is silently dropped)."""

    id: str
    stage: str
    reason: str = Field(description="a stable reason code, e.g. 'prefilter.too_short'")
    detail: str = ""
    raw_output: str | None = None
    record_json: str = Field(description="the input record as JSON, so it can be inspected or re-fed")
