"""The reference-voice pool: every usable Aishell-2/3 clip with its speaker's attributes.

`pool_entries(corpus, root)` streams a corpus: speakers first (a small file), then each
transcript line, whose clip is probed (header only: soundfile reads the frame count and
rate, not the samples). A clip becomes a `VoiceReference`, or a `Rejection` (stage
`voices`) saying why it cannot prompt a zero-shot TTS engine:

  voices.missing_clip      no wav where the corpus layout puts it
  voices.unreadable_clip   the file is not audio soundfile can read
  voices.empty_audio       no samples
  voices.too_long          over `MAX_CLIP_S` (CosyVoice2 prompts are a few seconds; long
                           prompts cost time and the official scripts skip them too)
  voices.non_finite        a float recording with NaN or infinite samples (only float
                           WAVs can hold them, so only those are read whole)
  voices.outside_root      the clip is a link to a file outside the corpus root (the rule
                           of `storage.fs.walk_files`: data found under a folder lies in it)
  voices.unknown_speaker   the utterance's speaker is not in the speaker file
  voices.<code>            a metadata line the Aishell readers quarantined (bad_gender,
                           empty_transcript, bad_utterance_id, malformed, ...)
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import soundfile

from actors.audio import BadAudio, load_audio, truncation
from actors.sources.common import SourceItem
from actors.voices.aishell import Corpus, Speaker, clip_path, read_speakers, read_transcripts, speaker_of
from schemas import Rejection, VoiceReference
from storage.fs import exists, leads_outside, read_bytes, resolve

MAX_CLIP_S = 30.0
_FLOAT_SUBTYPES = frozenset({"FLOAT", "DOUBLE"})
STAGE = "voices"


def _layout(corpus: Corpus, root: str) -> tuple[str, list[tuple[str, str]]]:
    """The speaker file and the (split, transcript file) pairs of a corpus root.
    FileNotFoundError naming what is missing when the root does not have the corpus's layout
    (a pool of nothing would look built)."""
    base = root.rstrip("/")
    loc = resolve(base)
    if corpus == "aishell2":
        speakers, splits = f"{base}/iOS/data/spk_info.txt", [("train", f"{base}/iOS/data/trans.txt")]
        expected = "iOS/data/spk_info.txt and iOS/data/trans.txt"
    else:
        speakers = f"{base}/spk-info.txt"
        splits = [(s, f"{base}/{s}/content.txt") for s in ("train", "test") if exists(loc, loc.path(s, "content.txt"))]
        expected = "spk-info.txt and train/content.txt or test/content.txt"
    missing = [f for f in (speakers, *(t for _, t in splits)) if not exists(loc, resolve(f).root)]
    if missing or not splits:
        raise FileNotFoundError(f"{corpus} root {root}: {', '.join(missing) or 'no transcript file'} not found; "
                                f"an {corpus} root holds {expected}: name that folder")
    return speakers, splits


def _excluded(clip_id: str, reason: str, detail: str, record: dict | None = None) -> Rejection:
    return Rejection(id=clip_id, stage=STAGE, reason=f"{STAGE}.{reason}", detail=detail,
                     record_json=json.dumps(record or {}, ensure_ascii=False))


def _from_item(corpus: str, item: SourceItem) -> Rejection:
    code = item.reason.removeprefix("ingest.")
    return _excluded(f"{corpus}:{item.location}", code, item.detail, {"line": item.raw})


def probe(path: str) -> Any:
    """A clip's header (soundfile's info: frames, rate, subtype), a local path or a URI."""
    loc = resolve(path)
    with loc.fs.open_input_file(loc.root) as f:
        return soundfile.info(f)


def probe_whole(path: str) -> tuple[Any, str | None]:
    """A clip's header and why the file is cut off short of it (`audio.truncation`), or None."""
    loc = resolve(path)
    with loc.fs.open_input_file(loc.root) as f:
        info = soundfile.info(f)
        return info, truncation(f)


def probe_seconds(path: str) -> float:
    """A clip's duration from its header (a local path or a URI)."""
    info = probe(path)
    return info.frames / info.samplerate if info.samplerate else 0.0


def _clip(corpus: Corpus, root: str, split: str, utt: str, text: str, speaker: Speaker) -> VoiceReference | Rejection:
    clip_id = f"{corpus}:{utt}"
    path = clip_path(root, corpus, utt, split=split)
    record = {"path": path, "speaker_id": speaker.speaker_id, "transcript": text}
    loc = resolve(path)
    if not exists(loc, loc.root):
        return _excluded(clip_id, "missing_clip", f"{path}: no such file (the transcript lists it)", record)
    target = leads_outside(root, path)
    if target is not None:
        return _excluded(clip_id, "outside_root", f"{path}: a symbolic link to {target}, outside the corpus root "
                         f"{root}; not used. Copy the clip into the corpus folder", record)
    try:
        info, cut = probe_whole(path)
    except (soundfile.LibsndfileError, RuntimeError, OSError) as exc:
        return _excluded(clip_id, "unreadable_clip", f"{path}: not readable audio ({exc})", record)
    if cut:
        return _excluded(clip_id, "unreadable_clip", f"{path}: cut off: {cut}; copy the clip again", record)
    seconds = info.frames / info.samplerate if info.samplerate else 0.0
    if seconds <= 0:
        return _excluded(clip_id, "empty_audio", f"{path}: the clip has no samples", record)
    if seconds > MAX_CLIP_S:
        return _excluded(clip_id, "too_long", f"{path}: {seconds:.1f} s, over the {MAX_CLIP_S:.0f} s a prompt may be",
                         record)
    if info.subtype in _FLOAT_SUBTYPES:  # PCM cannot hold NaN; float recordings are read whole
        try:
            load_audio(read_bytes(loc, loc.root), path)
        except BadAudio as exc:
            return _excluded(clip_id, exc.code if exc.code == "non_finite" else "unreadable_clip", str(exc), record)
    return VoiceReference(clip_id=clip_id, speaker_id=speaker.speaker_id, corpus=corpus, gender=speaker.gender,
                          age_group=speaker.age_group, accent=speaker.accent, duration_s=round(seconds, 3),
                          transcript=text, path=path)


def pool_entries(corpus: Corpus, root: str) -> Iterator[VoiceReference | Rejection]:
    """Every clip of one corpus as a pool entry or an exclusion, in transcript order."""
    speaker_file, transcripts = _layout(corpus, root)
    speakers: dict[str, Speaker] = {}
    for item in read_speakers(speaker_file, corpus):
        if isinstance(item, SourceItem):
            yield _from_item(corpus, item)
        else:
            speakers[item.speaker_id] = item
    for split, transcript_file in transcripts:
        for entry in read_transcripts(transcript_file, corpus):
            if isinstance(entry, SourceItem):
                yield _from_item(corpus, entry)
                continue
            utt, text = entry
            speaker = speakers.get(speaker_of(corpus, utt))
            if speaker is None:
                yield _excluded(f"{corpus}:{utt}", "unknown_speaker",
                                f"{transcript_file}: speaker {speaker_of(corpus, utt)} of {utt} is not in {speaker_file} "
                                "(or its line there was quarantined), so its gender and age are unknown")
                continue
            yield _clip(corpus, root, split, utt, text, speaker)
