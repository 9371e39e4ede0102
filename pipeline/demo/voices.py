"""The demo's reference voices and cough clips, made once into the user's cache.

No speech corpus can ship with the package, so the demo makes an Aishell-3-shaped folder
whose speakers are espeak-ng voices (one per gender and age-group letter, two sentences
each), builds a real voice pool from it with the same code as `speechmed voices build`,
and makes cough-like clips (shaped noise bursts). The pipeline then runs exactly as on a
cluster: voice_match draws from the pool, synthesize splices the clips. Real runs point
`pool` at a pool built from Aishell-2/3 and `cough_dir` at SoundDr / CoughVid recordings.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import soundfile

from actors.audio import RATE, to_mono_16k, write_cough_like_clips
from actors.engines.tts import TTSConfig, build_tts
from schemas import VoiceChoice

# Bump when what is made changes: an older cache folder is then left alone, not reused.
VERSION = "v1"
SENTENCES = ("今天天气不错，我们一起出去走走吧。", "请把桌子上的那本书递给我，谢谢。")
# Aishell-3 age-group letters and the age groups they stand for (actors.voices.aishell).
AGE_LETTERS = {"A": "child", "B": "young_adult", "C": "adult", "D": "elderly"}


def demo_voice_assets(cache: Path | None = None) -> tuple[Path, Path]:
    """(pool folder, cough folder) in the cache, made on first use."""
    from pipeline.voices import build_pool

    base = (cache or _cache()) / f"demo-voices-{VERSION}"
    if not base.exists():
        partial = base.with_name(f"{base.name}.partial-{os.getpid()}")
        _make(partial)
        try:
            partial.rename(base)  # whole or not at all, should two demos start at once
        except OSError:
            shutil.rmtree(partial)
    if not (base / "pool" / "pool.json").exists():  # pool.json is written last
        # Built where it stays: the pool records its clips' paths.
        build_pool({"aishell3": str(base / "aishell3")}, str(base / "pool"))
    return base / "pool", base / "coughs"


def _cache() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "speechmed"


def _make(folder: Path) -> None:
    """The espeak speakers' Aishell-3-shaped folder and the cough clips."""
    corpus = folder / "aishell3"
    engine = build_tts(TTSConfig())
    info, content = [], []
    try:
        for n, (gender, (letter, group)) in enumerate(
                (g, item) for g in ("female", "male") for item in AGE_LETTERS.items()):
            speaker = f"SSB{n + 1:04d}"
            info.append(f"{speaker}\t{letter}\t{gender}\tdemo")
            voice = VoiceChoice(engine="zero_shot", match="gender_age", seed=n, speaker_gender=gender,
                                speaker_age_group=group)
            for i, sentence in enumerate(SENTENCES, start=1):
                engine.begin_dialogue()
                samples, rate = engine.synthesize(sentence, voice, seed=i)
                utt = f"{speaker}{i:04d}"
                path = corpus / "train" / "wav" / speaker / f"{utt}.wav"
                path.parent.mkdir(parents=True, exist_ok=True)
                soundfile.write(path, to_mono_16k(samples, rate), RATE, subtype="PCM_16")
                content.append(f"{utt}.wav\t" + " ".join(f"{ch} x1" for ch in sentence if ch.isalnum()))
    finally:
        engine.close()
    (corpus / "spk-info.txt").write_text("\n".join(info) + "\n", encoding="utf-8")
    (corpus / "train" / "content.txt").write_text("\n".join(content) + "\n", encoding="utf-8")
    write_cough_like_clips(folder / "coughs", [(RATE, s) for s in (0.3, 0.45, 0.6)], subtype="PCM_16")
