"""Record types (pydantic) and the Arrow schemas derived from them."""

from schemas.arrow import arrow_schema, arrow_type, from_table, to_table
from schemas.ids import content_key, record_id, rng_for, seed_for, shard_of
from schemas.records import (
    AgeGroup,
    AudioData,
    CoughSplice,
    Gender,
    NoisyCopy,
    QCScores,
    Record,
    Rejection,
    Role,
    SourceDialogue,
    SynthesizedTurn,
    Treatment,
    Turn,
    VoiceChoice,
    VoiceReference,
    age_group_of,
)

__all__ = [
    "AgeGroup", "AudioData", "CoughSplice", "Gender", "NoisyCopy", "QCScores", "Record", "Rejection", "Role", "SourceDialogue",
    "SynthesizedTurn", "Treatment", "Turn", "VoiceChoice", "VoiceReference", "age_group_of", "arrow_schema",
    "arrow_type", "content_key", "from_table",
    "record_id", "rng_for", "seed_for", "shard_of", "to_table",
]
