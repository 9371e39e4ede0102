"""Synthesize stage: every patient turn of a dialogue spoken in its matched voice.

A fan-out stage: one dialogue in, one `SynthesizedTurn` per spoken turn out (parent id
`dialogue_id`). Patient turns use the dialogue's `VoiceChoice`, spoken by `engine` for a
matched reference clip (CosyVoice2 on GPU) or by `random_timbre_engine` when no attribute
was known (FishSpeech on GPU); on a CPU espeak serves both. Doctor turns, when
`doctor_turns` is on, one fixed assistant voice. Each voice of a dialogue has a
`DialogueVoice` for the dialogue's duration: a random-timbre engine fixes the timbre on the
first turn it speaks and prompts every later turn with it; the attempt at a turn that
passes the checks is the one whose timbre is kept. The text spoken is the turn's
`speech_text` (the normalize stage's); a `<cough>` in it splits the turn: the pieces are
synthesised, and a cough recording from `cough_dir`, drawn from the dialogue's generator,
is spliced in at each placeholder, matched in loudness, with short crossfades. Which clip
and where it lies are recorded. Audio is resampled to 16 kHz mono and stored as FLAC in
the Hugging Face `Audio` layout.

With `noise_dir` and `noise_snrs_db`, each turn also gets one noisy copy per SNR: a noise
recording (drawn per turn, from a drawn offset, looped) mixed in at that SNR, recorded
with its clip and offset, for robustness sets.

Every turn passes the audio checks of `actors.audio_qc` (pace, clipping, edge silence and,
with `qc.asr`, an ASR round trip whose CER is at most `qc.max_cer`) or is synthesised
again with a new seed, up to `qc.max_attempts`; the scores and the number
of attempts are kept with the turn.

With `doctor_units`, every doctor turn also keeps the CosyVoice2 speech tokens of its
audio (25 Hz, 6,561 values): the speech-response targets of training Stage II-b. They are
taken from the audio that was kept, not sampled separately, so units and audio agree.

A dialogue whose audio cannot be made (a cough placeholder with no cough clips configured,
an engine error on its text) is rejected whole with the reason, so a dialogue is never
half spoken. An attempt whose audio holds NaN or infinite samples (a half-precision engine
can emit them) fails its checks like any other and is synthesised again.

Cough and noise folders are checked when the stage loads (`load_clips`): every audio file
in them must decode, hold finite samples and, for coughs, last at most `MAX_COUGH_S`; a
link leading out of the folder is not followed. A folder breaking these rules stops the
run with every bad file named, rather than splicing a broken or minutes-long "cough" into
turns or leaving files out unseen. The doctor's reference clip is checked the same way.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from actors.audio import RATE, BadAudio, flac_bytes, load_audio, mix_at_snr, splice, to_mono_16k
from actors.audio_qc import QCParams, qc_problems, qc_scores, signal_problems, with_asr
from actors.base import Stage, StageParams, StageResult
from actors.engines.asr import build_asr
from actors.engines.tts import DialogueVoice, TTSConfig, TTSEngine, build_tts
from actors.rewrite_rules import COUGH
from schemas import AudioData, CoughSplice, NoisyCopy, SourceDialogue, SynthesizedTurn, VoiceChoice
from actors.voices.pool import MAX_CLIP_S
from storage.fs import read_bytes, resolve, walk_files

AUDIO_SUFFIXES = (".wav", ".flac", ".ogg")
# A cough lasts a second or two and COUGHVID clips are at most about 10 s: a longer "cough"
# is the wrong file, and spliced in whole it would fill a turn with minutes of it.
MAX_COUGH_S = 20.0
# Noise beds are looped to each turn's length, so a long one costs only memory (16 kHz
# float32, about 4 MB a minute, per actor): an hour is the bound.
MAX_NOISE_S = 3600.0
# The doctor is a medical assistant: by default a random timbre fixed by this seed.
ASSISTANT_VOICE = VoiceChoice(engine="random_timbre", match="none", seed=20_250_301, speaker_gender="female",
                              speaker_age_group="adult")


class ReferenceClip(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    path: str = Field(description="a clean recording of at most 30 s (local or object-store URI)")
    transcript: str = Field(min_length=1, description="what is said in it")


class SynthesizeParams(StageParams):
    engine: TTSConfig = Field(TTSConfig(), description="speaks zero-shot voices (a matched reference clip)")
    random_timbre_engine: TTSConfig | None = Field(None, description="speaks random-timbre voices; default: `engine`")
    doctor_turns: bool = Field(False, description="also speak doctor turns, in one fixed assistant voice")
    doctor_voice: ReferenceClip | None = Field(None, description="the assistant voice, spoken zero-shot by `engine` "
                                               "from this clip; default: a fixed random timbre")
    doctor_units: bool = Field(False, description="keep the CosyVoice2 speech tokens of every doctor turn's audio "
                               "(Stage II-b targets); needs doctor_turns and cosyvoice2 as `engine`")
    cough_dir: str | None = Field(None, description="folder of cough recordings (SoundDr / CoughVid clips)")
    crossfade_s: float = Field(0.01, ge=0, le=0.2)
    qc: QCParams = QCParams()
    noise_dir: str | None = Field(None, description="folder of noise recordings (MS-SNSD layout: noise_*/*.wav)")
    noise_snrs_db: list[float] = Field([], description="one noisy copy of every turn per SNR (needs noise_dir)")

    @model_validator(mode="after")
    def _consistent(self) -> "SynthesizeParams":
        if self.noise_snrs_db and not self.noise_dir:
            raise ValueError("noise_snrs_db needs noise_dir, the folder of noise recordings")
        if self.doctor_units and not (self.doctor_turns and self.engine.kind == "cosyvoice2"):
            raise ValueError("doctor_units needs doctor_turns: true and engine.kind: cosyvoice2 (its speech tokenizer "
                             "makes the units)")
        return self

    def assistant_voice(self) -> VoiceChoice:
        if self.doctor_voice is None:
            return ASSISTANT_VOICE
        return ASSISTANT_VOICE.model_copy(update={
            "engine": "zero_shot", "clip_id": "doctor_voice", "clip_path": self.doctor_voice.path,
            "clip_transcript": self.doctor_voice.transcript})


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
        self.coughs = load_clips(self.params.cough_dir, "cough_dir", MAX_COUGH_S) if self.params.cough_dir else []
        self.noises = load_clips(self.params.noise_dir, "noise_dir", MAX_NOISE_S) if self.params.noise_dir else []
        if self.params.doctor_voice is not None:
            check_clip(self.params.doctor_voice.path, "doctor_voice")
        self.asr = build_asr(self.params.qc.asr) if self.params.qc.asr else None

    def fingerprint_extra(self) -> dict[str, Any]:
        extra = {}
        for name, folder in (("coughs", self.params.cough_dir), ("noises", self.params.noise_dir)):
            if folder:
                loc = resolve(folder)
                extra[name] = sorted((loc.rel(p), size) for p, size in walk_files(loc, loc.root).files.items())
        return extra

    def close(self) -> None:
        for engine in self._distinct_engines():
            engine.close()
        if self.asr is not None:
            self.asr.close()

    def _distinct_engines(self) -> list[TTSEngine]:
        # The two roles may share one engine.
        return list({id(e): e for _, e in self.engines.values()}.values())

    def _speak(self, text: str, voice: VoiceChoice, seed: int, dialogue_voice: DialogueVoice) -> np.ndarray:
        if not text.strip():
            return np.zeros(0, dtype=np.float32)
        samples, rate = self.engines[voice.engine][1].synthesize(text, voice, seed, dialogue_voice)
        return to_mono_16k(samples, rate)

    def _turn(self, dialogue: SourceDialogue, index: int, voice: VoiceChoice, rng: np.random.Generator,
              dialogue_voice: DialogueVoice) -> SynthesizedTurn:
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
            dialogue_voice.begin_attempt()
            audio, spans = splice([self._speak(p, voice, seed, dialogue_voice) for p in pieces], [c for _, c in chosen],
                                  self.params.crossfade_s)
            scores = qc_scores(audio, RATE, text, inserted_s=sum(s.duration_s for s in spans), silence_db=qc.silence_db)
            problems = signal_problems(audio) or qc_problems(scores, qc)
            if not problems and self.asr is not None and scores.spoken_chars:
                # The spliced audio, coughs included, is what users get; `cer` drops the
                # placeholders from the text. Only audio that passed the cheap checks is heard.
                (heard,) = self.asr.transcribe([audio])
                scores = with_asr(scores, text, heard)
                problems = qc_problems(scores, qc)
            if not problems:
                break
        else:
            raise _Unspeakable("qc_failed", f"turn {index} failed the audio checks {qc.max_attempts} times; last: "
                               f"{'; '.join(problems)}; scores {scores.model_dump_json()}")
        dialogue_voice.keep_attempt()  # this turn is kept: a timbre it fixed holds for the dialogue
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
            qc=scores, attempts=attempt + 1, noisy=noisy, units=self._units(turn.role, audio))

    def _units(self, role: str, audio: np.ndarray) -> list[int] | None:
        if not (self.params.doctor_units and role == "doctor"):
            return None
        return self.engines["zero_shot"][1].speech_units(audio)

    def process(self, batch: list[SourceDialogue]) -> StageResult[SynthesizedTurn]:
        result: StageResult[SynthesizedTurn] = StageResult()
        for dialogue in batch:
            if dialogue.voice is None:
                result.rejected.append(self.reject(dialogue, "no_voice", "the dialogue has no voice; run voice_match first"))
                continue
            rng = self.rng(dialogue.id)
            # One per voice speaking in this dialogue (the patient's, the assistant's); a
            # dialogue is spoken whole in this call, so a timbre fixed in it never leaks out.
            voices: dict[VoiceChoice, DialogueVoice] = {}
            for engine in self._distinct_engines():
                engine.begin_dialogue()
            try:
                turns = []
                for i, t in enumerate(dialogue.turns):
                    if t.role == "patient" or self.params.doctor_turns:
                        voice = dialogue.voice if t.role == "patient" else self.params.assistant_voice()
                        turns.append(self._turn(dialogue, i, voice, rng, voices.setdefault(voice, DialogueVoice())))
            except _Unspeakable as exc:
                result.rejected.append(self.reject(dialogue, exc.code, exc.detail))
                continue
            result.accepted.extend(turns)
        return result


def load_clips(folder: str, what: str, max_s: float | None = None) -> list[tuple[str, np.ndarray]]:
    """Every audio file under `folder` (sorted by path), as (path relative to it, 16 kHz mono).

    ValueError naming every file that breaks the rules (`load_audio`'s, at most `max_s`
    seconds when given, no link out of the folder) and what to do: a folder of clips is all used or
    not at all."""
    loc = resolve(folder)
    walk = walk_files(loc, loc.root)
    clips, bad = [], [f"{loc.rel(link)}: a symbolic link to {target}, outside {what} (not followed)"
                      for link, target in walk.escaped.items()]
    for path in (p for p in walk.files if p.lower().endswith(AUDIO_SUFFIXES)):
        try:
            clips.append((loc.rel(path), load_audio(read_bytes(loc, path), loc.rel(path), max_s=max_s)))
        except BadAudio as exc:
            bad.append(f"[{exc.code}] {exc}")
    if bad:
        shown = "; ".join(bad[:10]) + (f"; and {len(bad) - 10} more" if len(bad) > 10 else "")
        limit = f", at most {max_s:g} s each" if max_s is not None else ""
        raise ValueError(f"{what} {folder}: {len(bad)} file(s) cannot be used: {shown}. Remove or replace them (every "
                         f"audio file in {what} is used{limit})")
    if not clips:
        raise ValueError(f"{what} {folder}: no {'/'.join(AUDIO_SUFFIXES)} files")
    return clips


def check_clip(path: str, what: str) -> None:
    """ValueError naming `path` if the reference clip cannot prompt a voice (`load_audio`'s
    rules, at most the pool's MAX_CLIP_S)."""
    loc = resolve(path)
    try:
        load_audio(read_bytes(loc, loc.root), f"{what} {path}", max_s=MAX_CLIP_S)
    except FileNotFoundError:
        raise ValueError(f"{what} {path}: no such file") from None
    except BadAudio as exc:
        raise ValueError(f"[{exc.code}] {exc}") from None


class _Unspeakable(Exception):
    def __init__(self, code: str, detail: str):
        super().__init__(detail)
        self.code, self.detail = code, detail

