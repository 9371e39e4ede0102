"""Voice matching stage: gives each dialogue's patient a voice from the reference pool.

Rules (SpeechMedAssist): gender and age group known → a speaker matching both; only one
known → a speaker matching that one; both unknown → a random timbre (FishSpeech), no
clip. When the pool has no speaker for a known combination, the match falls back to the
gender alone, then the age group alone, and `match` records what was used.

Choices are drawn from the record's own generator (run seed, stage, id): a speaker
uniformly among the candidates, then one of that speaker's clips. So a resumed or re-run
stage picks the same voice for every dialogue whatever the batching, and speakers are used
evenly in expectation (uniform over speakers, not over clips: a speaker with many clips is
not favoured).
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from pydantic import Field

from actors.base import Stage, StageParams, StageResult
from schemas import SourceDialogue, VoiceChoice, VoiceReference


class VoiceMatchParams(StageParams):
    pool: str = Field(description="a voice pool folder (`speechmed voices build`), local path or URI")
    min_clip_s: float = Field(1.0, ge=0, description="shorter clips make poor prompts")
    max_clip_s: float = Field(30.0, gt=0)


class VoiceMatchStage(Stage[SourceDialogue, SourceDialogue]):
    kind = "voice_match"
    input_model = SourceDialogue
    output_model = SourceDialogue
    Params = VoiceMatchParams
    params: VoiceMatchParams

    def setup(self) -> None:
        from pipeline.voices import voices

        usable = [v for v in voices(self.params.pool) if self.params.min_clip_s <= v.duration_s <= self.params.max_clip_s]
        if not usable:
            raise ValueError(f"voice pool {self.params.pool}: no clip between {self.params.min_clip_s} and "
                             f"{self.params.max_clip_s} s; rebuild the pool or widen min_clip_s/max_clip_s")
        self.clips: dict[str, list[VoiceReference]] = defaultdict(list)
        for clip in usable:
            self.clips[clip.speaker_id].append(clip)
        # Candidate speakers per key, sorted so that the draw does not depend on pool order.
        self.speakers: dict[tuple[str | None, str | None], list[str]] = defaultdict(list)
        for speaker, clips in sorted(self.clips.items()):
            g, a = clips[0].gender, clips[0].age_group
            for key in ((g, a), (g, None), (None, a)):
                self.speakers[key].append(speaker)

    def fingerprint_extra(self) -> dict[str, Any]:
        from pipeline.voices import read_pool_info

        info = read_pool_info(self.params.pool)
        return {"pool": [f.sha256 for f in info.files]}

    def _candidates(self, gender: str, age: str) -> tuple[str, list[str]]:
        known_g, known_a = gender != "unknown", age != "unknown"
        tries = []
        if known_g and known_a:
            tries.append(("gender_age", (gender, age)))
        if known_g:
            tries.append(("gender", (gender, None)))
        if known_a:
            tries.append(("age_group", (None, age)))
        for match, key in tries:
            if self.speakers.get(key):
                return match, self.speakers[key]
        return "none", []

    def choose(self, dialogue: SourceDialogue) -> VoiceChoice:
        rng = self.rng(dialogue.id)
        seed = int(rng.integers(2**31))
        match, candidates = self._candidates(dialogue.gender, dialogue.age_group)
        if not candidates:
            return VoiceChoice(engine="random_timbre", match="none", seed=seed)
        speaker = candidates[int(rng.integers(len(candidates)))]
        clips = self.clips[speaker]
        clip = clips[int(rng.integers(len(clips)))]
        return VoiceChoice(engine="zero_shot", match=match, seed=seed, speaker_id=speaker, clip_id=clip.clip_id,
                           clip_path=clip.path, clip_transcript=clip.transcript, speaker_gender=clip.gender,
                           speaker_age_group=clip.age_group)

    def process(self, batch: list[SourceDialogue]) -> StageResult[SourceDialogue]:
        return StageResult(accepted=[d.model_copy(update={"voice": self.choose(d)}) for d in batch])
