"""Synthesize stage: every patient turn of a dialogue spoken in its matched voice.

A fan-out stage: one dialogue in, one `SynthesizedTurn` per spoken turn out (parent id
`dialogue_id`). Patient turns use the dialogue's `VoiceChoice`, spoken by `engine` for a
matched reference clip (CosyVoice2 on GPU) or by `random_timbre_engine` when no attribute
was known (FishSpeech on GPU); on a CPU espeak serves both. Doctor turns, when
`doctor_turns` is on, one fixed assistant voice. The text spoken is the turn's
`speech_text` (the normalize stage's); a `<cough>` in it splits the turn: the pieces are
synthesised, and a cough recording from `cough_dir`, drawn from the dialogue's generator,
is spliced in at each placeholder, matched in loudness, with short crossfades. Which clip
and where it lies are recorded. Audio is resampled to 16 kHz mono and stored as FLAC in
the Hugging Face `Audio` layout.

With `noise_dir` and `noise_snrs_db`, each turn also gets one noisy copy per SNR: a noise
recording (drawn per turn, from a drawn offset, looped) mixed in at that SNR, recorded
with its clip and offset, for robustness sets.

Every turn passes the audio checks of `actors.audio_qc` (pace, clipping, edge silence) or
is synthesised again with a new seed, up to `qc.max_attempts`; the scores and the number
of attempts are kept with the turn.

A dialogue whose audio cannot be made (a cough placeholder with no cough clips configured,
an engine error on its text) is rejected whole with the reason, so a dialogue is never
half spoken.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from pydantic import Field, model_validator

from actors.audio import RATE, decode, flac_bytes, mix_at_snr, splice, to_mono_16k
from actors.audio_qc import QCParams, qc_problems, qc_scores
from actors.base import Stage, StageParams, StageResult
from actors.engines.tts import TTSConfig, TTSEngine, build_tts
from actors.rewrite_rules import COUGH
from schemas import AudioData, CoughSplice, NoisyCopy, SourceDialogue, SynthesizedTurn, VoiceChoice
from storage.fs import list_files, read_bytes, resolve

AUDIO_SUFFIXES = (".wav", ".flac", ".ogg")
# The doctor is a medical assistant with one voice across the dataset.
ASSISTANT_VOICE = VoiceChoice(engine="random_timbre", match="none", seed=20_250_301, speaker_gender="female",
                              speaker_age_group="adult")


class SynthesizeParams(StageParams):
    engine: TTSConfig = Field(TTSConfig(), description="speaks zero-shot voices (a matched reference clip)")
    random_timbre_engine: TTSConfig | None = Field(None, description="speaks random-timbre voices; default: `engine`")
    doctor_turns: bool = Field(False, description="also speak doctor turns, in one fixed assistant voice")
    cough_dir: str | None = Field(None, description="folder of cough recordings (SoundDr / CoughVid clips)")
    crossfade_s: float = Field(0.01, ge=0, le=0.2)
    qc: QCParams = QCParams()
    noise_dir: str | None = Field(None, description="folder of noise recordings (MS-SNSD layout: noise_*/*.wav)")
    noise_snrs_db: list[float] = Field([], description="one noisy copy of every turn per SNR (needs noise_dir)")

    @model_validator(mode="after")
    def _noise_needs_a_folder(self) -> "SynthesizeParams":
        if self.noise_snrs_db and not self.noise_dir:
            raise ValueError("noise_snrs_db needs noise_dir, the folder of noise recordings")
        return self


class SynthesizeStage(Stage[SourceDialogue, SynthesizedTurn]):
    kind = "synthesize"
    input_model = SourceDialogue
    output_model = SynthesizedTurn
    parent_id_field = "dialogue_id"
    Params = SynthesizeParams
    params: SynthesizeParams
    engines: dict[str, tuple[str, TTSEngine]]

    def setup(self) -> None:
        zero_shot = (self.params.engine.kind, build_tts(self.params.engine))
        random = self.params.random_timbre_engine
        self.engines = {"zero_shot": zero_shot,
                        "random_timbre": (random.kind, build_tts(random)) if random else zero_shot}
        self.coughs = load_clips(self.params.cough_dir, "cough_dir") if self.params.cough_dir else []
        self.noises = load_clips(self.params.noise_dir, "noise_dir") if self.params.noise_dir else []

    def fingerprint_extra(self) -> dict[str, Any]:
        extra = {}
        for name, folder in (("coughs", self.params.cough_dir), ("noises", self.params.noise_dir)):
            if folder:
                loc = resolve(folder)
                extra[name] = sorted((loc.rel(p), size) for p, size in list_files(loc, loc.root).items())
        return extra

    def close(self) -> None:
        # The two roles may share one engine: close each once.
        for engine in {id(e): e for _, e in self.engines.values()}.values():
            engine.close()

    def _speak(self, text: str, voice: VoiceChoice, seed: int) -> np.ndarray:
        if not text.strip():
            return np.zeros(0, dtype=np.float32)
        samples, rate = self.engines[voice.engine][1].synthesize(text, voice, seed)
        return to_mono_16k(samples, rate)

    def _turn(self, dialogue: SourceDialogue, index: int, voice: VoiceChoice, rng: np.random.Generator) -> SynthesizedTurn:
        turn = dialogue.turns[index]
        text = turn.speech_text if turn.speech_text is not None else turn.text
        pieces = text.split(COUGH)
        if len(pieces) > 1 and not self.coughs:
            raise _Unspeakable("no_cough_clips", f"turn {index} has {len(pieces) - 1} {COUGH} but no cough_dir is "
                               "configured; set params.cough_dir to a folder of cough recordings")
        # Drawn before any attempt, so retries and resumes keep the same clips and offsets.
        chosen = [self.coughs[int(rng.integers(len(self.coughs)))] for _ in pieces[1:]]
        beds = [(snr, self.noises[int(rng.integers(len(self.noises)))], float(rng.random()))
                for snr in self.params.noise_snrs_db]
        qc = self.params.qc
        for attempt in range(qc.max_attempts):
            seed = (voice.seed + 1_000_003 * index + attempt) % 2**31
            audio, spans = splice([self._speak(p, voice, seed) for p in pieces], [c for _, c in chosen],
                                  self.params.crossfade_s)
            scores = qc_scores(audio, RATE, text, inserted_s=sum(s.duration_s for s in spans), silence_db=qc.silence_db)
            problems = qc_problems(scores, qc)
            if not problems:
                break
        else:
            raise _Unspeakable("qc_failed", f"turn {index} failed the audio checks {qc.max_attempts} times; last: "
                               f"{'; '.join(problems)}; scores {scores.model_dump_json()}")
        coughs = [CoughSplice(clip_id=clip_id, offset_s=round(s.offset_s, 4), duration_s=round(s.duration_s, 4))
                  for (clip_id, _), s in zip(chosen, spans, strict=True)]
        noisy = []
        for snr, (noise_id, noise), where in beds:
            offset = int(where * len(noise))
            noisy.append(NoisyCopy(snr_db=snr, noise_clip_id=noise_id, noise_offset_s=round(offset / RATE, 4),
                                   audio=AudioData(bytes=flac_bytes(mix_at_snr(audio, noise, snr, offset)),
                                                   path=f"{dialogue.id}-{index}-snr{snr:g}.flac")))
        return SynthesizedTurn(
            id=f"{dialogue.id}-{index}", dialogue_id=dialogue.id, turn_index=index, role=turn.role, text=text,
            audio=AudioData(bytes=flac_bytes(audio), path=f"{dialogue.id}-{index}.flac"), sample_rate=RATE,
            duration_s=round(len(audio) / RATE, 4), engine=self.engines[voice.engine][0], voice=voice, coughs=coughs,
            qc=scores, attempts=attempt + 1, noisy=noisy)

    def process(self, batch: list[SourceDialogue]) -> StageResult[SynthesizedTurn]:
        result: StageResult[SynthesizedTurn] = StageResult()
        for dialogue in batch:
            if dialogue.voice is None:
                result.rejected.append(self.reject(dialogue, "no_voice", "the dialogue has no voice; run voice_match first"))
                continue
            rng = self.rng(dialogue.id)
            try:
                turns = [self._turn(dialogue, i, dialogue.voice if t.role == "patient" else ASSISTANT_VOICE, rng)
                         for i, t in enumerate(dialogue.turns) if t.role == "patient" or self.params.doctor_turns]
            except _Unspeakable as exc:
                result.rejected.append(self.reject(dialogue, exc.code, exc.detail))
                continue
            result.accepted.extend(turns)
        return result


def load_clips(folder: str, what: str) -> list[tuple[str, np.ndarray]]:
    """Every audio file under `folder` (sorted by path), as (path relative to it, 16 kHz mono)."""
    loc = resolve(folder)
    clips = []
    for path in sorted(p for p in list_files(loc, loc.root) if p.lower().endswith(AUDIO_SUFFIXES)):
        samples, rate = decode(read_bytes(loc, path))
        clips.append((loc.rel(path), to_mono_16k(samples, rate)))
    if not clips:
        raise ValueError(f"{what} {folder}: no {'/'.join(AUDIO_SUFFIXES)} files")
    return clips


class _Unspeakable(Exception):
    def __init__(self, code: str, detail: str):
        super().__init__(detail)
        self.code, self.detail = code, detail

