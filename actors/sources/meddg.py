"""MedDG (lwgkzl/MedDG): gastroenterology consultations, in two on-disk formats chosen by
file extension.

* `.txt` (what SpeechMedAssist's `dataset/MedDG/predata.py` reads): a line starting with
  `dialog` opens a dialogue; each utterance is one JSON object per line, `id` ("Patients"
  is the patient, anything else the doctor) and `Sentence`; blank lines are skipped. A
  line that is not valid JSON (or not an utterance object) quarantines its whole dialogue,
  naming the line, rather than reading the dialogue with a turn missing. The last dialogue
  of a file is read like every other (upstream drops its gender/age keys).
* `.pk` / `.pkl` (the upstream release, `train.pk` etc.): a pickled list of dialogues, each
  a list of dicts with `id` ("dis" patient, "doc" doctor) and `sentence` (entity lists are
  ignored). The pickle is read with an unpickler that refuses every global, so a file
  can only build lists, dicts, strings and numbers: a malicious file cannot run code, it
  is one `ingest.unreadable_file` item. A pickle cannot be streamed: the file's object is
  built in memory (the MedDG pickles are tens of MB).

Consecutive utterances of one speaker are merged into one turn (joined by a newline);
MedDG itself does not merge them. Gender and age come from an explicit "（男，32岁）"
pattern in the first patient utterance (full-width or ASCII brackets and comma, 岁
optional); the text is left as it is. Dialogue numbers restart in every split, so the key
is `<file stem>:<number in the file>` (`train:0`, `test:0`), never colliding; the same
split read from `.txt` or `.pk` gives the same keys.

A path that names a file is read whatever its name. A folder is searched (recursively,
the shallowest file wins) for the configured `splits`, as `<split>.txt` or
`<split>.pk`/`.pkl`; other files (`gen_*.pk`, notes) are not MedDG dialogue files and are
not read. When a split exists in both formats, `prefer` picks one and the other is
reported once as `ingest.not_selected`.
"""

from __future__ import annotations

import io
import json
import pickle
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import Field

from actors.sources.common import (
    GENDER_WORDS,
    SourceFormat,
    SourceItem,
    SourceOptions,
    SourceRef,
    basename,
    dialogue_from_utterances,
    failure,
    files_under,
    is_file,
    reports_empty_file,
    stem,
    text_lines,
)
from schemas import Gender
from storage.fs import resolve

TXT_SUFFIXES = (".txt",)
PICKLE_SUFFIXES = (".pk", ".pkl")
SPLITS = ("train", "dev", "test")
# "（男，32岁）": full-width or ASCII brackets and comma (mixed too), 岁 optional.
AGE_GENDER = re.compile(r"[（(]\s*([男女])\s*[，,]\s*(\d{1,3})\s*岁?\s*[）)]")
MAX_AGE = 130
_PATIENT_IDS = frozenset({"patients", "patient"})
_PICKLE_ROLES = {"dis": "patient", "patients": "patient", "patient": "patient", "doc": "doctor", "doctor": "doctor"}
_PREAMBLE_RAW_LINES = 20


def age_gender(text: str) -> tuple[Gender, int | None]:
    """Gender and age from the first "（男，32岁）"-style mention in `text`."""
    match = AGE_GENDER.search(text)
    if match is None:
        return "unknown", None
    age = int(match.group(2))
    return GENDER_WORDS[match.group(1)], age if age <= MAX_AGE else None


# -- MedDG ---------------------------------------------------------------------------------

def _meddg_dialogue(ref: SourceRef, where: str, key: str, utterances: list[tuple[str, str]], raw: Any) -> SourceItem:
    first_patient = next((text for role, text in utterances if role == "patient"), "")
    gender, age = age_gender(first_patient)
    return dialogue_from_utterances(ref, where, key, utterances, raw, gender=gender, age=age)


@dataclass
class _TxtDialogue:
    number: int
    line: int
    where: str
    lines: list[str] = field(default_factory=list)
    utterances: list[tuple[str, str]] = field(default_factory=list)
    problem: tuple[str, str] | None = None  # (reason, detail): the first one found

    def fail(self, reason: str, detail: str) -> None:
        if self.problem is None:
            self.problem = (reason, detail)


def _utterance(obj: Any, number: int) -> tuple[str, str] | str:
    """One txt utterance object → (role, text), or what is wrong with it."""
    if not isinstance(obj, dict):
        return f"line {number} is a JSON {type(obj).__name__}, not an utterance object {{id, Sentence}}"
    speaker, text = obj.get("id"), obj.get("Sentence", obj.get("sentence"))
    if not isinstance(speaker, str) or not speaker.strip():
        return f"line {number} has no speaker 'id' (\"Patients\" or \"Doctor\")"
    if not isinstance(text, str):
        return f"line {number} has no string 'Sentence'"
    return ("patient" if speaker.strip().lower() in _PATIENT_IDS else "doctor"), text


def read_txt(ref: SourceRef, path: str) -> Iterator[SourceItem]:
    """Dialogues of one MedDG txt file (UTF-8 or GBK), the last one included."""
    key_stem = stem(path)
    current: _TxtDialogue | None = None
    preamble: list[str] = []
    preamble_first = preamble_count = 0
    number = count = 0
    broken = False

    def finish(d: _TxtDialogue) -> SourceItem:
        raw = "\n".join(d.lines)
        if d.problem is not None:
            return failure(d.where, d.problem[0], d.problem[1], raw)
        if not d.utterances:
            return failure(d.where, "malformed", f"the dialogue opened at line {d.line} has no utterance lines; "
                           f"check the file around that line", raw)
        return _meddg_dialogue(ref, d.where, f"{key_stem}:{d.number}", d.utterances, raw)

    for entry in text_lines(path):
        if isinstance(entry, SourceItem):
            if entry.reason == "ingest.unreadable_file":  # the rest of the file cannot be decoded
                broken = True
                if current is not None:  # may be cut off: held back, and the file's item follows
                    current.fail("unreadable_file", f"the file cannot be decoded after line {number}, so this "
                                 f"dialogue may be cut off; fix the file's encoding and rerun")
                    yield finish(current)
                    current = None
                yield entry
                break
            number += 1  # a line that is neither UTF-8 nor the file's encoding
            if current is None:
                preamble_count += 1
                preamble_first = preamble_first or number
            else:
                current.lines.append(entry.raw)
                current.fail("bad_encoding", f"line {number} cannot be decoded ({entry.detail}); re-save the file "
                             f"as UTF-8 and rerun, the whole dialogue is held back so it is not read with a turn missing")
            continue
        number += 1
        line = entry[1].strip()
        if not line:
            continue
        if line.startswith("dialog"):
            if current is not None:
                yield finish(current)
            elif preamble_count:
                yield failure(f"{path} line {preamble_first}", "malformed",
                              f"{preamble_count} line(s) from line {preamble_first} come before the first 'dialog' "
                              f"line and belong to no dialogue; delete them or add a 'dialog' line", "\n".join(preamble))
            current = _TxtDialogue(count, number, f"{path} dialogue {count} (line {number})", [line])
            count += 1
            continue
        if current is None:
            preamble_count += 1
            preamble_first = preamble_first or number
            if len(preamble) < _PREAMBLE_RAW_LINES:
                preamble.append(line)
            continue
        current.lines.append(line)
        if current.problem is not None:
            continue
        try:
            parsed = _utterance(json.loads(line), number)
        except json.JSONDecodeError as exc:
            parsed = (f"line {number} is not valid JSON ({exc}); fix or delete that line and rerun, the whole "
                      f"dialogue is held back so it is not read with a turn missing")
        if isinstance(parsed, str):
            current.fail("malformed", parsed)
        else:
            current.utterances.append(parsed)

    if current is not None:
        yield finish(current)  # the last dialogue of the file, like every other
    elif preamble_count and not broken:
        yield failure(path, "unsupported_file", f"no line starts with 'dialog', so this is not a MedDG txt file "
                      f"({preamble_count} non-blank lines); point the source at train.txt/dev.txt/test.txt",
                      "\n".join(preamble))


class _NoGlobals(pickle.Unpickler):
    """An unpickler that can only build builtin containers and scalars: every global
    (class, function) is refused, so a pickle cannot call anything (os.system, eval, ...)."""

    def find_class(self, module: str, name: str) -> Any:
        raise pickle.UnpicklingError(f"refused to load the global {module}.{name}: MedDG pickles hold only lists, "
                                     f"dicts, strings and numbers")


def load_pickle(path: str) -> Any:
    """The object of a pickle file, through `_NoGlobals`; raises on a refused or corrupt file."""
    loc = resolve(path)
    with loc.fs.open_input_stream(loc.root) as stream:
        # buffered: the arrow stream has no readline, which protocol-0 pickles need
        return _NoGlobals(io.BufferedReader(stream, 1 << 16), encoding="utf-8").load()


def _pickle_dialogue(ref: SourceRef, where: str, key: str, dialogue: Any) -> SourceItem:
    if not isinstance(dialogue, list):
        return failure(where, "malformed", f"expected a list of utterance dicts, got {type(dialogue).__name__}", dialogue)
    utterances: list[tuple[str, str]] = []
    for i, utt in enumerate(dialogue):
        if not isinstance(utt, dict):
            return failure(where, "malformed", f"utterance {i} is a {type(utt).__name__}, not a dict {{id, sentence}}",
                           dialogue)
        speaker, text = utt.get("id"), utt.get("sentence", utt.get("Sentence"))
        role = _PICKLE_ROLES.get(speaker.strip().lower()) if isinstance(speaker, str) else None
        if role is None:
            return failure(where, "bad_role", f"utterance {i} has speaker id {speaker!r}; expected 'dis' (patient) "
                           f"or 'doc' (doctor)", dialogue)
        if not isinstance(text, str):
            return failure(where, "malformed", f"utterance {i} has no string 'sentence'", dialogue)
        utterances.append((role, text))
    return _meddg_dialogue(ref, where, key, utterances, dialogue)


def read_pickle(ref: SourceRef, path: str) -> Iterator[SourceItem]:
    """Dialogues of one MedDG pickle (`train.pk` ...), loaded without running any code."""
    try:
        data = load_pickle(path)
    except Exception as exc:  # noqa: BLE001 - any refused, corrupt or unreadable pickle is one item
        yield failure(path, "unreadable_file", f"cannot load this pickle safely: {type(exc).__name__}: {exc}. Only "
                      f"plain lists/dicts/strings are accepted; re-download the upstream file (or export it as "
                      f"MedDG txt) and rerun")
        return
    if not isinstance(data, list) or (data and all(isinstance(d, dict) for d in data)):
        what = type(data).__name__ if not isinstance(data, list) else "a list of dicts (e.g. gen_*.pk generation samples)"
        yield failure(path, "unsupported_file", f"holds {what}, not a list of dialogues; point the source at "
                      f"train.pk/dev.pk/test.pk")
        return
    key_stem = stem(path)
    for number, dialogue in enumerate(data):
        yield _pickle_dialogue(ref, f"{path} dialogue {number}", f"{key_stem}:{number}", dialogue)


@reports_empty_file
def read_meddg_file(ref: SourceRef, path: str) -> Iterator[SourceItem]:
    """One MedDG file, by extension; never raises on a bad or unreadable file."""
    suffix = "." + basename(path).rsplit(".", 1)[-1].lower() if "." in basename(path) else ""
    try:
        if suffix in TXT_SUFFIXES:
            yield from read_txt(ref, path)
        elif suffix in PICKLE_SUFFIXES:
            yield from read_pickle(ref, path)
        else:
            yield failure(path, "unsupported_file", f"MedDG files end in {', '.join(TXT_SUFFIXES + PICKLE_SUFFIXES)}, "
                          f"this one in {suffix or 'nothing'}; point the source at a .txt or .pk file (or their folder)")
    except OSError as exc:
        yield failure(path, "unreadable_file", f"{exc}; check that the file exists and can be read, then rerun")


class MedDGOptions(SourceOptions):
    splits: tuple[Literal["train", "dev", "test"], ...] = Field(
        SPLITS, min_length=1, description="in a folder, the splits to read, in this order (SpeechMedAssist trains on "
        "train+dev and keeps test for evaluation); a path naming a file is read whatever this says")
    prefer: Literal["txt", "pickle"] = Field(
        "txt", description="in a folder holding a split as both <split>.txt and <split>.pk, the one to read")


class MedDG(SourceFormat):
    """MedDG consultations (txt export or upstream pickles)."""

    format = "meddg"
    default_treatment = "consultation"
    Options = MedDGOptions

    def read(self, ref: SourceRef) -> Iterator[SourceItem]:
        options = self.options_of(ref)
        try:
            single = is_file(ref.path)
            found = {} if single else self._by_split(ref.path)
        except OSError as exc:
            yield failure(ref.path, "unreadable_file", f"{exc}; check the path and rerun")
            return
        if single:
            yield from read_meddg_file(ref, ref.path)
            return
        for split in dict.fromkeys(options.splits):
            txt, pk = found.get((split, "txt")), found.get((split, "pickle"))
            if txt is None and pk is None:
                yield failure(f"{ref.path} [{split}]", "missing_file",
                              f"no {split}.txt or {split}.pk in this folder or its subfolders; add it, or drop "
                              f"{split!r} from the source's `splits` option")
                continue
            chosen, other = (txt, pk) if (options.prefer == "txt" and txt) or not pk else (pk, txt)
            if other is not None:
                option = "pickle" if other is pk else "txt"
                yield failure(other, "not_selected", f"holds the same split ({split}) as {basename(chosen)}, which is "
                              f"read instead; set the source option `prefer: {option}` to read this file")
            yield from read_meddg_file(ref, chosen)

    @staticmethod
    def _by_split(folder: str) -> dict[tuple[str, str], str]:
        found: dict[tuple[str, str], str] = {}
        for path in sorted(files_under(folder, TXT_SUFFIXES + PICKLE_SUFFIXES), key=lambda p: (p.count("/"), p)):
            name = basename(path).lower()
            for split in SPLITS:
                for kind, suffixes in (("txt", TXT_SUFFIXES), ("pickle", PICKLE_SUFFIXES)):
                    if name in {split + s for s in suffixes}:
                        found.setdefault((split, kind), path)
        return found
