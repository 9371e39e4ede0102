"""Aishell-2 (iOS) and Aishell-3 metadata: speakers, transcripts and clip paths.

The metadata half of the reference-voice pool (SOURCES.md §11); no audio is opened here.
Like the source adapters, every reader streams (UTF-8 with or without BOM, or GBK, through
`actors.sources.common.text_lines`) and never raises on bad input: a line it cannot map is
a `SourceItem` failure (reason `ingest.<code>`) whose location is `<file> line <n>`.

Corpora (`corpus` argument, anything else is a caller error → ValueError):

* `aishell2`: `<root>/iOS/data/spk_info.txt`, `<root>/iOS/data/trans.txt`, clips at
  `<root>/iOS/data/wav/<SPK>/<UTT>.wav`. UTT is `IC0001W0001`: channel letter, speaker
  (`C0001`, some `D####`), `W` + utterance number; the speaker is `UTT[1:6]`.
* `aishell3`: `<root>/spk-info.txt`, `<root>/<train|test>/content.txt`, clips at
  `<root>/<train|test>/wav/<SPK>/<UTT>.wav`. UTT is `SSB00050001`; the speaker is `UTT[:7]`.

Speaker files (`read_speakers`), both corpora: `spk_id, age_group, gender, accent`,
tab-separated (a line without a tab is split on whitespace, the accent keeping any inner
spaces); lines starting with `#` and blank lines are skipped, as is a header row (gender
cell literally `gender`) before the first speaker. The accent column may be missing or
empty (→ None); it is kept as written (Aishell-2 `North`, Aishell-3 `north`).

* gender: English (`female`/`male`, any case, also `f`/`m`) or Chinese (`女`/`男`), via
  `GENDER_WORDS`. Anything else is `ingest.bad_gender`, never guessed. (The official
  Aishell-2 script maps `'female'` → 女 and *anything else* → 男, so a file written in
  Chinese labels every speaker male there; here both spellings are read.)
* age group: see `AGE_GROUPS`. A letter outside A–D (any case accepted) is kept as age
  group `unknown` and the speaker is still read: not a failure, because the voice is
  usable for prompts that do not ask for an age. (The official scripts keep the raw letter
  as its own age key instead.)

Failure codes: `ingest.malformed` (a speaker line with too few / too many columns or no
speaker id), `ingest.bad_gender`, `ingest.duplicate_speaker`
(a speaker id seen earlier in the same file; the first line wins), `ingest.bad_utterance_id`
(an id that does not have its corpus's shape, so no speaker or clip path can be derived
from it), `ingest.empty_transcript`, plus the encoding codes of `text_lines`
(`ingest.bad_encoding`, `ingest.unreadable_file`).

Transcripts (`read_transcripts`) yield `(utt_id, text)`, utt_id without `.wav`:

* Aishell-2 `trans.txt`, `<UTT>\\t<text>`: the text as written, stripped. It is *not*
  reduced to U+4E00–U+9FFF as the official script does: the prompt text should say what
  the clip says, English words and full-width letters included.
* Aishell-3 `content.txt`, `<UTT>.wav\\t<hanzi> <pinyin> <hanzi> <pinyin> ...`: the
  tone-numbered pinyin tokens (ASCII letters or ü then a tone digit 1–5, e.g. `nv3`, `er5`)
  are removed and the remaining tokens joined without spaces, in order. Tokens are
  classified by shape, not by position, so a line that is only pinyin is empty rather than
  keeping every other syllable; Latin letters without a tone digit (`B` in B超) are kept.
* An empty text after that is `ingest.empty_transcript`.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

from actors.sources.common import GENDER_WORDS, SourceItem, failure, text_lines
from schemas import AgeGroup, Gender

Corpus = Literal["aishell2", "aishell3"]
CORPORA: tuple[Corpus, ...] = ("aishell2", "aishell3")

# Age-group letters → AgeGroup, as the official SpeechMedAssist scripts map them
# (`dataset/ref_audio/Aishell{2,3}/spk_info.py`: A → 少年, B → 青年, C → 成年, D → 老年;
# SOURCES.md §11.1/§11.2). The Aishell-3 ranges (SOURCES.md §11.2, [U]): A under 14,
# B 14–25, C 26–40, D over 40; so "elderly" here means over 40, as in the official pool.
AGE_GROUPS: dict[str, AgeGroup] = {
    "A": "child",        # 少年, < 14
    "B": "young_adult",  # 青年, 14–25
    "C": "adult",        # 成年, 26–40
    "D": "elderly",      # 老年, > 40
}

# An utterance id, capturing its speaker (SOURCES.md §11: Aishell-2 `filename[1:6]`,
# Aishell-3 `filename[:7]`).
_UTTERANCE = {
    "aishell2": re.compile(r"[A-Z]([A-Z]\d{4})W\d{4}"),  # IC0001W0001 → C0001
    "aishell3": re.compile(r"([A-Z]{3}\d{4})\d{4}"),      # SSB00050001 → SSB0005
}
_PINYIN = re.compile(r"[a-zü:]+[1-5]", re.IGNORECASE)
_RAW_LIMIT = 2_000


@dataclass(frozen=True)
class Speaker:
    """One speaker of a corpus's speaker file."""

    speaker_id: str
    corpus: Corpus
    gender: Gender
    age_group: AgeGroup
    accent: str | None = None


def _check(corpus: str) -> None:
    if corpus not in CORPORA:
        raise ValueError(f"unknown voice corpus {corpus!r}; known: {', '.join(CORPORA)}")


def _fields(line: str, maxsplit: int) -> list[str]:
    """Tab-separated cells if the line has a tab, else whitespace-separated (at most maxsplit splits)."""
    if "\t" in line:
        return [c.strip() for c in line.split("\t")]
    return line.split(None, maxsplit)


def age_group(letter: str) -> AgeGroup:
    """The age group of an A–D letter (any case); `unknown` for anything else."""
    return AGE_GROUPS.get(letter.strip().upper(), "unknown")


def read_speakers(path: str, corpus: Corpus) -> Iterator[Speaker | SourceItem]:
    """Every speaker of an Aishell-2 `spk_info.txt` / Aishell-3 `spk-info.txt`, in file order."""
    _check(corpus)
    seen: dict[str, str] = {}
    for entry in text_lines(path):
        if isinstance(entry, SourceItem):
            yield entry
            continue
        where, line = entry
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        # Only trailing blanks and leading spaces go: a leading tab is an empty speaker id.
        cells = _fields(line.rstrip().lstrip(" "), 3)
        if not seen and len(cells) >= 3 and cells[2].lower() == "gender":
            continue  # a header row
        if not 3 <= len(cells) <= 4:
            yield failure(where, "malformed", f"expected 4 tab-separated columns (spk_id, age_group, gender, accent), "
                          f"got {len(cells)}; fix the line or mark it a comment with '#'", line[:_RAW_LIMIT])
            continue
        speaker_id, letter, gender_word = cells[0], cells[1], cells[2]
        accent = cells[3] if len(cells) == 4 and cells[3] else None
        if not speaker_id:
            yield failure(where, "malformed", "the speaker id (first column) is empty", line[:_RAW_LIMIT])
            continue
        gender = GENDER_WORDS.get(gender_word.lower())
        if gender is None:
            yield failure(where, "bad_gender", f"speaker {speaker_id} has gender {gender_word!r}; expected "
                          f"female/male or 女/男. Correct the file; the speaker is left out of the voice pool",
                          line[:_RAW_LIMIT])
            continue
        if speaker_id in seen:
            yield failure(where, "duplicate_speaker", f"speaker {speaker_id} is already listed at {seen[speaker_id]}; "
                          f"the first entry is used, remove or correct this one", line[:_RAW_LIMIT])
            continue
        seen[speaker_id] = where
        yield Speaker(speaker_id, corpus, gender, age_group(letter), accent)


def read_transcripts(path: str, corpus: Corpus) -> Iterator[tuple[str, str] | SourceItem]:
    """(utt_id, text) of every line of an Aishell-2 `trans.txt` / Aishell-3 `content.txt`."""
    _check(corpus)
    pattern = _UTTERANCE[corpus]
    for entry in text_lines(path):
        if isinstance(entry, SourceItem):
            yield entry
            continue
        where, line = entry
        stripped = line.strip()
        if not stripped:
            continue
        parts = stripped.split("\t", 1) if "\t" in stripped else stripped.split(None, 1)
        utt_id, body = parts[0].strip(), parts[1] if len(parts) > 1 else ""
        if utt_id.lower().endswith(".wav"):
            utt_id = utt_id[:-4]
        if not pattern.fullmatch(utt_id):
            yield failure(where, "bad_utterance_id", f"{utt_id!r} is not an {corpus} utterance id (like "
                          f"{'IC0001W0001' if corpus == 'aishell2' else 'SSB00050001'}), so its speaker and clip "
                          f"are unknown; check that the file belongs to {corpus}", line[:_RAW_LIMIT])
            continue
        text = clean_text(body, corpus)
        if not text:
            yield failure(where, "empty_transcript", f"utterance {utt_id} has no transcript text"
                          f"{' left once its pinyin is removed' if corpus == 'aishell3' and body else ''}; "
                          f"the clip cannot serve as a prompt without it", line[:_RAW_LIMIT])
            continue
        yield utt_id, text


def clean_text(body: str, corpus: Corpus) -> str:
    """A transcript's text: Aishell-2 as written (stripped), Aishell-3 without its pinyin tokens."""
    if corpus == "aishell3":
        return "".join(t for t in body.split() if not _PINYIN.fullmatch(t))
    return body.strip()


def speaker_of(corpus: Corpus, utt_id: str) -> str:
    """The speaker id an utterance id starts with (ValueError for an id of another shape)."""
    _check(corpus)
    utt = utt_id[:-4] if utt_id.lower().endswith(".wav") else utt_id
    match = _UTTERANCE[corpus].fullmatch(utt)
    if match is None:
        raise ValueError(f"{utt_id!r} is not an {corpus} utterance id")
    return match.group(1)


def clip_path(root: str, corpus: Corpus, utt_id: str, *, split: str = "train") -> str:
    """Where an utterance's wav lies under a corpus root (a local path or URI), by convention.

    Aishell-2: `<root>/iOS/data/wav/<SPK>/<UTT>.wav`; Aishell-3:
    `<root>/<split>/wav/<SPK>/<UTT>.wav` (`split` is `train` or `test`; Aishell-2 has none).
    Nothing is checked on disk. ValueError for an id `read_transcripts` would not yield.
    """
    speaker = speaker_of(corpus, utt_id)
    utt = utt_id[:-4] if utt_id.lower().endswith(".wav") else utt_id
    base = root.rstrip("/")
    if corpus == "aishell2":
        return f"{base}/iOS/data/wav/{speaker}/{utt}.wav"
    if split not in ("train", "test"):
        raise ValueError(f"unknown aishell3 split {split!r}; expected train or test")
    return f"{base}/{split}/wav/{speaker}/{utt}.wav"
