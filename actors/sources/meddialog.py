"""MedDialog (Chinese, haodf.com; UCSD-AI4H/Medical-Dialogue-System), read for its
cough-related consultations. Two layouts, chosen by file extension:

* raw `<year>.txt`: a block starts with a line `id=<n>`, then a URL line and sections, each
  under a title line: `Doctor faculty` (the department: the dialogue's category),
  `Description` (fields such as 疾病：, 病情描述：, 希望获得的帮助：, each with its text on
  the next line or after the colon), `Dialogue` (speaker lines 病人：/医生： with a
  full-width or ASCII colon, each followed by the utterance on the next line or after the
  colon; further lines continue the utterance) and an optional `Diagnosis and
  suggestions` (not a turn, not read). Blank lines separate sections and blocks; a block
  ends where the next `id=` line starts, or at the end of the file. The 病情描述 text is the
  patient's first turn (option `include_description`), as in the HF `medical_dialog`
  loader; a first patient utterance repeating it word for word is not repeated.
  The key is the dialogue id.
* processed (`processed.zh`): `{"utterances": ["病人：…", "医生：…"]}` records (or a
  bare list of such strings), as a JSON array or JSON lines. The key is a content hash.

Speaker prefixes are stripped and consecutive turns of one speaker merged (joined by a
newline). With `cough_only` (the default), a dialogue whose patient text mentions none of
`cough_keywords` is one `ingest.not_selected` item with a small raw (its id and the start
of the patient's text), not a silent skip. Nothing else is dropped: a block the parser
cannot map is an item with a reason and its line.

In a folder every `.txt`, `.json` and `.jsonl` file is read (sorted). When it holds both
layouts, the raw files are read and each processed file is one `ingest.not_selected`
item (they carry the same consultations); name the processed files' folder to read them.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from pydantic import Field, field_validator

from actors.sources.common import (
    SourceFormat,
    SourceItem,
    SourceOptions,
    SourceRef,
    basename,
    dialogue_from_utterances,
    failure,
    files_under,
    is_file,
    json_records,
    reports_empty_file,
    stem,
    text_lines,
)
from schemas import content_key

RAW_SUFFIXES = (".txt",)
PROCESSED_SUFFIXES = (".json", ".jsonl")
DEFAULT_COUGH_KEYWORDS = ("咳嗽", "干咳", "咳痰", "咳了", "一直咳")
_ID_LINE = re.compile(r"id\s*=\s*(\d+)")
_SPEAKER = re.compile(r"(病人|患者|医生)\s*[：:]\s*(.*)")
_DESCRIPTION = re.compile(r"病情描述\s*[：:]\s*(.*)")
_SECTIONS = {"doctor faculty": "faculty", "description": "description", "dialogue": "dialogue",
             "diagnosis and suggestions": "diagnosis"}
_ROLE = {"病人": "patient", "患者": "patient", "医生": "doctor"}
_RAW_SNIPPET = 200


class MedDialogOptions(SourceOptions):
    cough_only: bool = Field(True, description="keep only dialogues whose patient text mentions one of cough_keywords; "
                             "the others are ingest.not_selected items")
    cough_keywords: tuple[str, ...] = Field(DEFAULT_COUGH_KEYWORDS, min_length=1,
                                            description="substrings of the patient's text that select a dialogue")
    include_description: bool = Field(True, description="raw layout: the 病情描述 text is the patient's first turn")

    @field_validator("cough_keywords")
    @classmethod
    def _non_blank(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        words = tuple(dict.fromkeys(w.strip() for w in value if w.strip()))
        if not words:
            raise ValueError("give at least one non-blank keyword")
        return words


def _selected(options: MedDialogOptions, patient_texts: list[str]) -> bool:
    return not options.cough_only or any(k in t for t in patient_texts for k in options.cough_keywords)


def _not_selected(where: str, options: MedDialogOptions, patient_texts: list[str], key: str | None) -> SourceItem:
    snippet = next((t for t in patient_texts if t.strip()), "").strip()[:_RAW_SNIPPET]
    raw = {"id": key, "patient": snippet} if key is not None else {"patient": snippet}
    return failure(where, "not_selected", f"the patient never mentions a cough keyword "
                   f"({', '.join(options.cough_keywords)}); set the source option `cough_only: false` (or widen "
                   f"`cough_keywords`) to read it", raw)


# -- raw <year>.txt ------------------------------------------------------------------------

@dataclass
class _Block:
    key: str
    line: int
    where: str
    lines: list[str] = field(default_factory=list)
    faculty: str = ""
    description: str = ""
    utterances: list[tuple[str, str]] = field(default_factory=list)
    section: str = "header"
    awaiting: str | None = None  # "description" | "patient" | "doctor": whose text the next line is
    open_utterance: bool = False  # a further plain line continues the last utterance
    unattributed: list[str] = field(default_factory=list)  # dialogue text with no speaker line before it
    problem: tuple[str, str] | None = None

    def fail(self, reason: str, detail: str) -> None:
        if self.problem is None:
            self.problem = (reason, detail)

    def take(self, text: str, number: int) -> None:
        """One non-blank line inside the block (not an `id=` line)."""
        section = _SECTIONS.get(text.lower())
        if section is not None:
            self.section, self.awaiting, self.open_utterance = section, None, False
            return
        if self.awaiting in ("patient", "doctor"):
            speaker = _SPEAKER.fullmatch(text)
            if speaker is not None and not speaker.group(2):  # a bare speaker line: the last utterance was empty
                self.awaiting = _ROLE[speaker.group(1)]
                return
            self.utterances.append((self.awaiting, text))
            self.awaiting, self.open_utterance = None, True
            return
        if self.awaiting == "description":
            self.description, self.awaiting = text, None
            return
        if self.section == "faculty" and not self.faculty:
            self.faculty = text
        elif self.section == "description":
            match = _DESCRIPTION.fullmatch(text)
            if match is not None:
                if match.group(1):
                    self.description = match.group(1)
                else:
                    self.awaiting = "description"
        elif self.section == "dialogue":
            speaker = _SPEAKER.fullmatch(text)
            if speaker is not None:
                role = _ROLE[speaker.group(1)]
                if speaker.group(2):
                    self.utterances.append((role, speaker.group(2)))
                    self.open_utterance = True
                else:
                    self.awaiting, self.open_utterance = role, False
            elif self.open_utterance:
                role, previous = self.utterances[-1]
                self.utterances[-1] = (role, f"{previous}\n{text}")
            else:
                self.unattributed.append(text)
                self.fail("malformed", f"line {number} in the Dialogue section comes before any 病人：/医生： speaker "
                          f"line; add the speaker line or delete it, then rerun")

    def patient_texts(self, include_description: bool) -> list[str]:
        """What the cough selection looks at: the patient's text, and text of unknown speaker (so a
        broken block that may be about a cough is reported as broken, not as not selected)."""
        texts = [self.description] if include_description and self.description else []
        return texts + [text for role, text in self.utterances if role == "patient"] + self.unattributed


def _finish_block(ref: SourceRef, options: MedDialogOptions, block: _Block) -> SourceItem:
    raw = "\n".join(block.lines)
    text_missing = block.problem is not None and block.problem[0] in ("unreadable_file", "bad_encoding")
    patient = block.patient_texts(options.include_description)
    if not text_missing and not _selected(options, patient):  # (text it cannot read might mention a cough)
        return _not_selected(block.where, options, patient, block.key)
    if block.problem is not None:
        return failure(block.where, block.problem[0], block.problem[1], raw)
    utterances = list(block.utterances)
    if options.include_description and block.description:
        if utterances and utterances[0] == ("patient", block.description):
            utterances = utterances[1:]
        utterances.insert(0, ("patient", block.description))
    if not block.utterances:
        if block.description:
            return failure(block.where, "no_doctor_turn", f"the block opened at line {block.line} has a description "
                           f"but no Dialogue utterances (no doctor reply); nothing to fix unless the file lost them", raw)
        return failure(block.where, "malformed", f"the block opened at line {block.line} has neither a 病情描述 nor "
                       f"Dialogue utterances; check the file around that line", raw)
    return dialogue_from_utterances(ref, block.where, block.key, utterances, raw, category=block.faculty or None)


def read_raw(ref: SourceRef, options: MedDialogOptions, path: str) -> Iterator[SourceItem]:
    """Consultations of one raw MedDialog `<year>.txt` file (UTF-8 or GBK), the last one included."""
    block: _Block | None = None
    stray: list[str] = []
    stray_first = stray_count = 0
    number = 0
    broken = False
    for entry in text_lines(path):
        if isinstance(entry, SourceItem):
            if entry.reason == "ingest.unreadable_file":  # the rest of the file cannot be decoded
                broken = True
                if block is not None:  # may be cut off: held back, and the file's item follows
                    block.fail("unreadable_file", f"the file cannot be decoded after line {number}, so this block "
                               f"may be cut off; fix the file's encoding and rerun")
                    yield _finish_block(ref, options, block)
                    block = None
                yield entry
                break
            number += 1
            if block is not None:
                block.lines.append(entry.raw)
                block.fail("bad_encoding", f"line {number} cannot be decoded ({entry.detail}); re-save the file as "
                           f"UTF-8 and rerun, the block is held back so it is not read with text missing")
            else:
                stray_count += 1
                stray_first = stray_first or number
            continue
        number += 1
        text = entry[1].strip()
        if not text:
            continue
        opened = _ID_LINE.fullmatch(text)
        if opened is not None:
            if block is not None:
                yield _finish_block(ref, options, block)
            elif stray_count:
                yield failure(f"{path} line {stray_first}", "malformed",
                              f"{stray_count} line(s) from line {stray_first} come before the first 'id=' line and "
                              f"belong to no consultation; delete them or add an 'id=' line", "\n".join(stray))
            key = f"{stem(path)}:{opened.group(1)}"  # ids may restart in each year's file
            block = _Block(key, number, f"{path} dialogue id={opened.group(1)} (line {number})", [text])
            continue
        if block is None:
            stray_count += 1
            stray_first = stray_first or number
            if len(stray) < 20:
                stray.append(text)
            continue
        block.lines.append(text)
        block.take(text, number)
    if block is not None:
        yield _finish_block(ref, options, block)  # the last block of the file, like every other
    elif stray_count and not broken:
        yield failure(path, "unsupported_file", f"no line is an 'id=<n>' block start, so this is not a raw MedDialog "
                      f"file ({stray_count} non-blank lines); point the source at the <year>.txt files",
                      "\n".join(stray))


# -- processed.zh --------------------------------------------------------------------------

def map_processed(ref: SourceRef, options: MedDialogOptions, obj: Any, where: str) -> SourceItem:
    utterances_raw = obj.get("utterances") if isinstance(obj, dict) else obj
    if not isinstance(utterances_raw, list) or not utterances_raw:
        return failure(where, "malformed", "expected {\"utterances\": [\"病人：…\", \"医生：…\", ...]} (or a bare list "
                       "of such strings)", obj)
    utterances: list[tuple[str, str]] = []
    unattributed: list[str] = []  # text of unknown speaker counts for the selection (see _Block.patient_texts)
    problem: tuple[str, str] | None = None
    for i, item in enumerate(utterances_raw):
        speaker = _SPEAKER.fullmatch(item.strip()) if isinstance(item, str) else None
        if speaker is None:
            unattributed.append(item if isinstance(item, str) else json.dumps(item, ensure_ascii=False, default=str))
            problem = problem or (("malformed", f"utterance {i} is not a string") if not isinstance(item, str) else
                                  ("bad_role", f"utterance {i} does not start with 病人： or 医生： ({item[:40]!r})"))
            continue
        utterances.append((_ROLE[speaker.group(1)], speaker.group(2)))
    patient = [text for role, text in utterances if role == "patient"] + unattributed
    if not _selected(options, patient):
        return _not_selected(where, options, patient, None)
    if problem is not None:
        return failure(where, problem[0], problem[1] + "; fix the record or drop it from the file", obj)
    key = content_key(json.dumps(utterances_raw, ensure_ascii=False))
    return dialogue_from_utterances(ref, where, key, utterances, obj)


def read_processed(ref: SourceRef, options: MedDialogOptions, path: str) -> Iterator[SourceItem]:
    for entry in json_records(path):
        yield entry if isinstance(entry, SourceItem) else map_processed(ref, options, entry[1], entry[0])


# -- the format ----------------------------------------------------------------------------

@reports_empty_file
def read_meddialog_file(ref: SourceRef, options: MedDialogOptions, path: str) -> Iterator[SourceItem]:
    name = basename(path).lower()
    try:
        if name.endswith(RAW_SUFFIXES):
            yield from read_raw(ref, options, path)
        elif name.endswith(PROCESSED_SUFFIXES):
            yield from read_processed(ref, options, path)
        else:
            yield failure(path, "unsupported_file", "MedDialog files are raw <year>.txt or processed .json/.jsonl; "
                          "point the source at one of those (or their folder)")
    except OSError as exc:
        yield failure(path, "unreadable_file", f"{exc}; check that the file exists and can be read, then rerun")


class MedDialog(SourceFormat):
    """MedDialog-CN consultations, cough-related ones by default."""

    format = "meddialog"
    default_treatment = "cough"
    Options = MedDialogOptions

    def read(self, ref: SourceRef) -> Iterator[SourceItem]:
        options = self.options_of(ref)
        try:
            paths = [ref.path] if is_file(ref.path) else files_under(ref.path, RAW_SUFFIXES + PROCESSED_SUFFIXES)
        except OSError as exc:
            yield failure(ref.path, "unreadable_file", f"{exc}; check the path and rerun")
            return
        if not paths:
            yield failure(ref.path, "no_input", "no MedDialog .txt/.json/.jsonl file under this folder; point the "
                          "source at the raw <year>.txt files or the processed files")
            return
        has_raw = any(basename(p).lower().endswith(RAW_SUFFIXES) for p in paths)
        for path in paths:
            if has_raw and len(paths) > 1 and basename(path).lower().endswith(PROCESSED_SUFFIXES):
                yield failure(path, "not_selected", "this folder also holds raw <year>.txt files, which are read "
                              "instead (the processed files carry the same consultations); name this file, or a "
                              "folder of processed files only, as the source path to read it")
                continue
            yield from read_meddialog_file(ref, options, path)
